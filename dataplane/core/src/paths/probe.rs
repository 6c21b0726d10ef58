//! The in-band path probe: a message of the tunnel's extension (first
//! byte's high nibble [`EXTENSION_VERSION`]), sealed in the peer's session
//! like any packet and sent over the path it measures. The receiving
//! gateway sends it back over the path it arrived by, its kind changed to
//! echo and the rest untouched; the sender matches the echo to the probe.
//!
//! ```text
//!  0      1      2             4                           8
//! +------+------+-------------+---------------------------+
//! | kind | 0    | path number | path tag                  |
//! +------+------+-------------+---------------------------+
//! | sequence number           | sent at (ns, sender's clock)
//! +---------------------------+---------------------------+
//!                             |  (20 bytes; the session pads it)
//! ```
//!
//! Only the sender interprets the path number, tag and times: the echoing
//! side needs no state and no clock agreement. Longer messages are accepted
//! (the encryption pads to 16 bytes, and later versions may append).

use crate::tunnel::EXTENSION_VERSION;

/// Bytes of a probe.
pub const PROBE_LEN: usize = 20;

const KIND_PROBE: u8 = EXTENSION_VERSION << 4;
const KIND_ECHO: u8 = KIND_PROBE | 1;

/// Whether a message asks for an echo or is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent by the measuring gateway.
    Probe,
    /// Sent back by the other one.
    Echo,
}

/// A probe or echo, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeMessage {
    /// Probe or echo.
    pub kind: Kind,
    /// The sender's index of the path in its path table.
    pub path: u16,
    /// The sender's tag of that path.
    pub tag: u32,
    /// The sender's sequence number.
    pub seq: u32,
    /// When the sender sent it (ns on its clock).
    pub sent_ns: u64,
}

/// Why a message is not a probe or echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Shorter than [`PROBE_LEN`].
    #[error("shorter than a probe")]
    Truncated,
    /// A kind this version does not know.
    #[error("unknown extension message")]
    UnknownKind,
}

impl ProbeMessage {
    /// Decodes a message (the plaintext, from its first byte).
    ///
    /// # Errors
    /// Too short, or of another kind.
    pub fn parse(data: &[u8]) -> Result<Self, ProbeError> {
        let Some(b) = data.get(..PROBE_LEN) else {
            return Err(ProbeError::Truncated);
        };
        let kind = match (b[0], b[1]) {
            (KIND_PROBE, 0) => Kind::Probe,
            (KIND_ECHO, 0) => Kind::Echo,
            _ => return Err(ProbeError::UnknownKind),
        };
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(ProbeMessage {
            kind,
            path: u16::from_be_bytes([b[2], b[3]]),
            tag: u32_at(4),
            seq: u32_at(8),
            sent_ns: u64::from(u32_at(12)) << 32 | u64::from(u32_at(16)),
        })
    }

    /// Encodes the message into `out`, which must be [`PROBE_LEN`] long.
    pub fn write(&self, out: &mut [u8; PROBE_LEN]) {
        out[0] = match self.kind {
            Kind::Probe => KIND_PROBE,
            Kind::Echo => KIND_ECHO,
        };
        out[1] = 0;
        out[2..4].copy_from_slice(&self.path.to_be_bytes());
        out[4..8].copy_from_slice(&self.tag.to_be_bytes());
        out[8..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
    }
}

/// Turns the probe in `data` into its echo in place; false (and `data`
/// unchanged) when it is not a probe.
pub fn echo_in_place(data: &mut [u8]) -> bool {
    match ProbeMessage::parse(data) {
        Ok(m) if m.kind == Kind::Probe => {
            data[0] = KIND_ECHO;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_round_trips_and_echoes() {
        let m = ProbeMessage {
            kind: Kind::Probe,
            path: 513,
            tag: 0xdead_beef,
            seq: 7,
            sent_ns: 0x0123_4567_89ab_cdef,
        };
        let mut buf = [0u8; PROBE_LEN];
        m.write(&mut buf);
        assert_eq!(buf[0] >> 4, EXTENSION_VERSION);
        assert_eq!(ProbeMessage::parse(&buf), Ok(m));
        // Padding after the message is ignored.
        let mut padded = buf.to_vec();
        padded.extend([0; 12]);
        assert!(echo_in_place(&mut padded));
        assert_eq!(
            ProbeMessage::parse(&padded),
            Ok(ProbeMessage {
                kind: Kind::Echo,
                ..m
            })
        );
        // An echo is never echoed again.
        assert!(!echo_in_place(&mut padded));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut buf = [0u8; PROBE_LEN];
        ProbeMessage {
            kind: Kind::Probe,
            path: 0,
            tag: 0,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut buf);
        assert_eq!(ProbeMessage::parse(&buf[..19]), Err(ProbeError::Truncated));
        let mut bad = buf;
        bad[1] = 1;
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::UnknownKind));
        bad = buf;
        bad[0] = 0x2f;
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::UnknownKind));
        assert!(!echo_in_place(&mut bad));
    }
}
