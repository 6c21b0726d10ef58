//! WireGuard's four messages on the wire (whitepaper section 5.4), read
//! from untrusted datagrams without copying.
//!
//! [`parse`] checks a datagram's type, reserved bytes and length, and hands
//! out a view whose accessors cannot fail: every field offset is in bounds
//! by construction.

use super::crypto::{KEY_LEN, MAC_LEN, TAG_LEN};

/// Message type of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Message type of transport data.
pub const TYPE_DATA: u8 = 4;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize =
    4 + 4 + KEY_LEN + (KEY_LEN + TAG_LEN) + (12 + TAG_LEN) + 2 * MAC_LEN;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 4 + 4 + 4 + KEY_LEN + TAG_LEN + 2 * MAC_LEN;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 4 + 4 + 24 + MAC_LEN + TAG_LEN;
/// Length of a transport data header (type, receiver, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Shortest transport data message: a keepalive (header and tag).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;

/// Why a datagram is not a WireGuard message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than any message.
    Truncated,
    /// The type byte is not 1 to 4.
    UnknownType,
    /// The three reserved bytes are not zero.
    Reserved,
    /// Wrong length for its type.
    BadLength,
}

/// A datagram's message, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Type 1.
    Initiation(Initiation<'a>),
    /// Type 2.
    Response(Response<'a>),
    /// Type 3.
    CookieReply(CookieReply<'a>),
    /// Type 4.
    Data(Data<'a>),
}

/// Reads the message in `datagram`.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, Malformed> {
    if datagram.len() < 4 {
        return Err(Malformed::Truncated);
    }
    if datagram[1..4] != [0, 0, 0] {
        return Err(match datagram[0] {
            1..=4 => Malformed::Reserved,
            _ => Malformed::UnknownType,
        });
    }
    let exact = |len: usize| {
        if datagram.len() == len {
            Ok(())
        } else {
            Err(Malformed::BadLength)
        }
    };
    match datagram[0] {
        TYPE_INITIATION => {
            exact(INITIATION_LEN)?;
            Ok(Message::Initiation(Initiation(datagram)))
        }
        TYPE_RESPONSE => {
            exact(RESPONSE_LEN)?;
            Ok(Message::Response(Response(datagram)))
        }
        TYPE_COOKIE_REPLY => {
            exact(COOKIE_REPLY_LEN)?;
            Ok(Message::CookieReply(CookieReply(datagram)))
        }
        TYPE_DATA => {
            if datagram.len() < DATA_MIN_LEN {
                return Err(Malformed::BadLength);
            }
            Ok(Message::Data(Data(datagram)))
        }
        _ => Err(Malformed::UnknownType),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn array<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    b[at..at + N].try_into().expect("length checked by parse")
}

/// A handshake initiation (148 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initiation<'a>(&'a [u8]);

impl<'a> Initiation<'a> {
    /// The initiator's index for this handshake.
    pub fn sender(&self) -> u32 {
        u32_at(self.0, 4)
    }
    /// The initiator's ephemeral public key.
    pub fn ephemeral(&self) -> &'a [u8; KEY_LEN] {
        array(self.0, 8)
    }
    /// The initiator's static public key, sealed.
    pub fn encrypted_static(&self) -> &'a [u8; KEY_LEN + TAG_LEN] {
        array(self.0, 40)
    }
    /// The TAI64N timestamp, sealed.
    pub fn encrypted_timestamp(&self) -> &'a [u8; 12 + TAG_LEN] {
        array(self.0, 88)
    }
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A handshake response (92 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a>(&'a [u8]);

impl<'a> Response<'a> {
    /// The responder's index for the new session.
    pub fn sender(&self) -> u32 {
        u32_at(self.0, 4)
    }
    /// The initiator's index this answers.
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, 8)
    }
    /// The responder's ephemeral public key.
    pub fn ephemeral(&self) -> &'a [u8; KEY_LEN] {
        array(self.0, 12)
    }
    /// The sealed empty payload (a tag).
    pub fn encrypted_nothing(&self) -> &'a [u8; TAG_LEN] {
        array(self.0, 44)
    }
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A cookie reply (64 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieReply<'a>(&'a [u8]);

impl<'a> CookieReply<'a> {
    /// The index of the handshake message this answers.
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, 4)
    }
    /// The XChaCha20 nonce.
    pub fn nonce(&self) -> &'a [u8; 24] {
        array(self.0, 8)
    }
    /// The sealed cookie.
    pub fn encrypted_cookie(&self) -> &'a [u8; MAC_LEN + TAG_LEN] {
        array(self.0, 32)
    }
}

/// Transport data (16-byte header, then the sealed packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a>(&'a [u8]);

impl<'a> Data<'a> {
    /// The receiver's session index.
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, 4)
    }
    /// The nonce counter.
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(*array(self.0, 8))
    }
    /// Length of the sealed packet (ciphertext and tag).
    pub fn sealed_len(&self) -> usize {
        self.0.len() - DATA_HEADER_LEN
    }
}

/// Offset of MAC1 in a handshake message of `len` bytes (MAC2 follows it).
pub fn mac1_offset(len: usize) -> usize {
    len - 2 * MAC_LEN
}

/// Writes a transport data header for `receiver` and `counter`.
pub fn write_data_header(out: &mut [u8; DATA_HEADER_LEN], receiver: u32, counter: u64) {
    out[0..4].copy_from_slice(&[TYPE_DATA, 0, 0, 0]);
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_the_protocols() {
        assert_eq!(INITIATION_LEN, 148);
        assert_eq!(RESPONSE_LEN, 92);
        assert_eq!(COOKIE_REPLY_LEN, 64);
        assert_eq!(DATA_MIN_LEN, 32);
    }

    #[test]
    fn every_type_is_read_at_its_exact_length_only() {
        for (kind, len) in [(1u8, 148usize), (2, 92), (3, 64)] {
            let mut m = vec![0u8; len];
            m[0] = kind;
            assert!(parse(&m).is_ok());
            for bad in [len - 1, len + 1] {
                let mut b = vec![0u8; bad];
                b[0] = kind;
                assert_eq!(parse(&b), Err(Malformed::BadLength));
            }
        }
        let mut data = vec![0u8; 32];
        data[0] = 4;
        assert!(matches!(parse(&data), Ok(Message::Data(_))));
        assert_eq!(parse(&data[..31]), Err(Malformed::BadLength));
    }

    #[test]
    fn garbage_is_classified_not_trusted() {
        assert_eq!(parse(&[]), Err(Malformed::Truncated));
        assert_eq!(parse(&[4, 0, 0]), Err(Malformed::Truncated));
        assert_eq!(parse(&[9, 0, 0, 0, 1]), Err(Malformed::UnknownType));
        assert_eq!(parse(&[0, 0, 0, 0]), Err(Malformed::UnknownType));
        let mut m = vec![0u8; 148];
        m[0] = 1;
        m[2] = 1;
        assert_eq!(parse(&m), Err(Malformed::Reserved));
    }

    #[test]
    fn fields_are_read_little_endian_at_their_offsets() {
        let mut m = vec![0u8; 40];
        m[0] = 4;
        m[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        m[8..16].copy_from_slice(&7u64.to_le_bytes());
        let Ok(Message::Data(d)) = parse(&m) else {
            panic!("data")
        };
        assert_eq!(
            (d.receiver(), d.counter(), d.sealed_len()),
            (0xdead_beef, 7, 24)
        );
        let mut header = [0u8; 16];
        write_data_header(&mut header, 0xdead_beef, 7);
        assert_eq!(&header[..], &m[..16]);
    }
}
