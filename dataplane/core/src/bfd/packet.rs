//! The BFD Control packet (RFC 5880 §4.1, §4.4), decoded from and encoded
//! into borrowed bytes. Decoding applies the reception checks of §6.8.6 that
//! need no session (version, lengths, detect multiplier, multipoint bit,
//! discriminators, the authentication section's shape); each failure is a
//! [`Malformed`] reason, counted by the caller.

use crate::labels::labelled_enum;

/// Length of a Control packet without authentication.
pub const HEADER_LEN: usize = 24;
/// Length of a keyed SHA1 authentication section (§4.4).
pub const SHA1_AUTH_LEN: usize = 28;
/// Longest packet this codec writes.
pub const MAX_LEN: usize = HEADER_LEN + SHA1_AUTH_LEN;

const VERSION: u8 = 1;
const AUTH_KEYED_SHA1: u8 = 4;
const AUTH_METICULOUS_KEYED_SHA1: u8 = 5;

/// Session state (§4.1 `Sta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Administratively held down.
    AdminDown,
    /// Down.
    Down,
    /// Coming up: the remote's Down was heard.
    Init,
    /// Up.
    Up,
}

impl State {
    /// Every state, as metrics list them.
    pub const ALL: [State; 4] = [State::AdminDown, State::Down, State::Init, State::Up];

    /// The state's label in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "admin_down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }

    fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }
}

/// Why the local system last changed state (§4.1 `Diag`); values above 8
/// are reserved and kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnostic(pub u8);

impl Diagnostic {
    /// No diagnostic.
    pub const NONE: Diagnostic = Diagnostic(0);
    /// Control detection time expired.
    pub const TIME_EXPIRED: Diagnostic = Diagnostic(1);
    /// The neighbor signaled session down.
    pub const NEIGHBOR_DOWN: Diagnostic = Diagnostic(3);
    /// Administratively down.
    pub const ADMIN_DOWN: Diagnostic = Diagnostic(7);

    /// The diagnostic's label in metrics (§4.1's names; `reserved` above 8).
    pub fn as_str(self) -> &'static str {
        match self.0 {
            0 => "none",
            1 => "control_detection_time_expired",
            2 => "echo_function_failed",
            3 => "neighbor_signaled_session_down",
            4 => "forwarding_plane_reset",
            5 => "path_down",
            6 => "concatenated_path_down",
            7 => "administratively_down",
            8 => "reverse_concatenated_path_down",
            _ => "reserved",
        }
    }
}

/// The authentication section, when the A bit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha1Auth {
    /// Meticulous: the sequence number goes up with every packet.
    pub meticulous: bool,
    /// Which key.
    pub key_id: u8,
    /// The sequence number.
    pub sequence: u32,
    /// The digest as received (or the key, while the digest is computed).
    pub digest: [u8; 20],
}

/// A decoded Control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket {
    /// Diagnostic.
    pub diag: Diagnostic,
    /// The sender's state.
    pub state: State,
    /// Poll: the sender asks for a Final.
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub fin: bool,
    /// Control plane independent.
    pub control_plane_independent: bool,
    /// Demand mode wanted by the sender.
    pub demand: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// The sender's discriminator (never zero).
    pub my_discriminator: u32,
    /// The receiver's discriminator as the sender knows it (0: unknown).
    pub your_discriminator: u32,
    /// Desired minimum transmit interval (µs).
    pub desired_min_tx_us: u32,
    /// Required minimum receive interval (µs); 0: send nothing.
    pub required_min_rx_us: u32,
    /// Required minimum Echo receive interval (µs); 0: no Echo.
    pub required_min_echo_rx_us: u32,
    /// The authentication section, if any.
    pub auth: Option<Sha1Auth>,
}

labelled_enum! {
    /// Why a received Control packet was discarded before any session saw it.
    Malformed {
        /// Shorter than its fixed part or its Length field says.
        Truncated => "truncated";
        /// Version other than 1.
        Version => "version";
        /// Length field below the minimum, or over the datagram.
        Length => "length";
        /// Detect Mult of zero.
        DetectMult => "detect_mult";
        /// The Multipoint bit set.
        Multipoint => "multipoint";
        /// My Discriminator of zero.
        MyDiscriminator => "my_discriminator";
        /// Your Discriminator of zero outside Down and AdminDown.
        YourDiscriminator => "your_discriminator";
        /// An authentication type other than (meticulous) keyed SHA1, or a
        /// section whose length does not match its type.
        Auth => "auth";
    }
}

impl ControlPacket {
    /// Decodes and checks `bytes`, a UDP payload.
    pub fn parse(bytes: &[u8]) -> Result<ControlPacket, Malformed> {
        let fixed: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Malformed::Truncated)?;
        if fixed[0] >> 5 != VERSION {
            return Err(Malformed::Version);
        }
        let flags = fixed[1];
        let auth_present = flags & 0x04 != 0;
        let length = usize::from(fixed[3]);
        let least = if auth_present {
            HEADER_LEN + 2
        } else {
            HEADER_LEN
        };
        if length < least {
            return Err(Malformed::Length);
        }
        if length > bytes.len() {
            return Err(Malformed::Truncated);
        }
        let detect_mult = fixed[2];
        if detect_mult == 0 {
            return Err(Malformed::DetectMult);
        }
        if flags & 0x01 != 0 {
            return Err(Malformed::Multipoint);
        }
        let word = |at: usize| {
            u32::from_be_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let state = State::from_bits(flags >> 6);
        let my_discriminator = word(4);
        let your_discriminator = word(8);
        if my_discriminator == 0 {
            return Err(Malformed::MyDiscriminator);
        }
        if your_discriminator == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(Malformed::YourDiscriminator);
        }
        let auth = if auth_present {
            Some(parse_auth(&bytes[HEADER_LEN..length])?)
        } else {
            None
        };
        Ok(ControlPacket {
            diag: Diagnostic(fixed[0] & 0x1f),
            state,
            poll: flags & 0x20 != 0,
            fin: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult,
            my_discriminator,
            your_discriminator,
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
            auth,
        })
    }

    /// The encoded length.
    pub fn len(&self) -> usize {
        HEADER_LEN
            + if self.auth.is_some() {
                SHA1_AUTH_LEN
            } else {
                0
            }
    }

    /// Never empty: a Control packet has its fixed part.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the packet at the start of `out` (at least [`ControlPacket::len`]
    /// bytes); returns its length, or `None` when `out` is too short.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.len();
        let out = out.get_mut(..len)?;
        out[0] = (VERSION << 5) | (self.diag.0 & 0x1f);
        out[1] = (self.state.bits() << 6)
            | u8::from(self.poll) << 5
            | u8::from(self.fin) << 4
            | u8::from(self.control_plane_independent) << 3
            | u8::from(self.auth.is_some()) << 2
            | u8::from(self.demand) << 1;
        out[2] = self.detect_mult;
        out[3] = len as u8;
        for (at, value) in [
            (4, self.my_discriminator),
            (8, self.your_discriminator),
            (12, self.desired_min_tx_us),
            (16, self.required_min_rx_us),
            (20, self.required_min_echo_rx_us),
        ] {
            out[at..at + 4].copy_from_slice(&value.to_be_bytes());
        }
        if let Some(auth) = &self.auth {
            let a = &mut out[HEADER_LEN..];
            a[0] = if auth.meticulous {
                AUTH_METICULOUS_KEYED_SHA1
            } else {
                AUTH_KEYED_SHA1
            };
            a[1] = SHA1_AUTH_LEN as u8;
            a[2] = auth.key_id;
            a[3] = 0;
            a[4..8].copy_from_slice(&auth.sequence.to_be_bytes());
            a[8..28].copy_from_slice(&auth.digest);
        }
        Some(len)
    }
}

/// A packet from discriminator 9 to our 1 in `state`, at 50 ms × 3, for tests.
#[cfg(test)]
pub(crate) fn example(state: State) -> ControlPacket {
    ControlPacket {
        diag: Diagnostic::NONE,
        state,
        poll: false,
        fin: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: 9,
        your_discriminator: 1,
        desired_min_tx_us: 50_000,
        required_min_rx_us: 50_000,
        required_min_echo_rx_us: 0,
        auth: None,
    }
}

/// The authentication section (`section`: from its type to the packet's Length).
fn parse_auth(section: &[u8]) -> Result<Sha1Auth, Malformed> {
    let meticulous = match section.first() {
        Some(&AUTH_KEYED_SHA1) => false,
        Some(&AUTH_METICULOUS_KEYED_SHA1) => true,
        _ => return Err(Malformed::Auth),
    };
    if section.len() != SHA1_AUTH_LEN || usize::from(section[1]) != SHA1_AUTH_LEN {
        return Err(Malformed::Auth);
    }
    Ok(Sha1Auth {
        meticulous,
        key_id: section[2],
        sequence: u32::from_be_bytes([section[4], section[5], section[6], section[7]]),
        digest: section[8..28].try_into().expect("length checked"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            poll: true,
            my_discriminator: 0x0102_0304,
            your_discriminator: 0x0a0b_0c0d,
            desired_min_tx_us: 300_000,
            required_min_rx_us: 300_000,
            ..example(State::Up)
        }
    }

    #[test]
    fn a_packet_round_trips_with_every_field_where_rfc_5880_puts_it() {
        let p = sample();
        let mut buf = [0u8; MAX_LEN];
        assert_eq!(p.encode(&mut buf), Some(24));
        assert_eq!(
            buf[..24],
            [
                0x20, 0xe0, 3, 24, 1, 2, 3, 4, 10, 11, 12, 13, 0x00, 0x04, 0x93, 0xe0, 0x00, 0x04,
                0x93, 0xe0, 0, 0, 0, 0
            ]
        );
        assert_eq!(ControlPacket::parse(&buf[..24]), Ok(p));
    }

    #[test]
    fn a_keyed_sha1_section_round_trips() {
        for meticulous in [false, true] {
            let p = ControlPacket {
                auth: Some(Sha1Auth {
                    meticulous,
                    key_id: 7,
                    sequence: 0xdead_beef,
                    digest: [0x5a; 20],
                }),
                ..sample()
            };
            let mut buf = [0u8; MAX_LEN];
            assert_eq!(p.encode(&mut buf), Some(52));
            assert_eq!(buf[1] & 0x04, 0x04, "the A bit");
            assert_eq!(buf[24], if meticulous { 5 } else { 4 });
            assert_eq!(ControlPacket::parse(&buf), Ok(p));
        }
    }

    #[test]
    fn every_check_of_section_6_8_6_has_its_reason() {
        let mut good = [0u8; MAX_LEN];
        sample().encode(&mut good).unwrap();
        let with = |f: &dyn Fn(&mut [u8; MAX_LEN])| {
            let mut b = good;
            f(&mut b);
            ControlPacket::parse(&b[..24])
        };
        assert_eq!(ControlPacket::parse(&good[..23]), Err(Malformed::Truncated));
        assert_eq!(with(&|b| b[0] = 0x40), Err(Malformed::Version));
        assert_eq!(with(&|b| b[3] = 23), Err(Malformed::Length));
        assert_eq!(with(&|b| b[3] = 25), Err(Malformed::Truncated));
        assert_eq!(with(&|b| b[2] = 0), Err(Malformed::DetectMult));
        assert_eq!(with(&|b| b[1] |= 0x01), Err(Malformed::Multipoint));
        assert_eq!(with(&|b| b[4..8].fill(0)), Err(Malformed::MyDiscriminator));
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Err(Malformed::YourDiscriminator)
        );
        // Down, with the remote's discriminator not known yet, is fine.
        let down = with(&|b| {
            b[8..12].fill(0);
            b[1] = (b[1] & 0x3f) | (1 << 6);
        });
        assert_eq!(down.map(|p| p.state), Ok(State::Down));
        // The A bit set: at least 26 bytes, and a SHA1 section of 28.
        assert_eq!(with(&|b| b[1] |= 0x04), Err(Malformed::Length));
        let mut auth = good;
        auth[1] |= 0x04;
        auth[3] = 26;
        auth[24] = 1; // simple password: not supported
        assert_eq!(ControlPacket::parse(&auth[..26]), Err(Malformed::Auth));
        auth[24] = 4;
        auth[25] = 28;
        assert_eq!(ControlPacket::parse(&auth[..26]), Err(Malformed::Auth));
    }

    #[test]
    fn no_input_makes_the_decoder_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut b = [0u8; MAX_LEN + 4];
            for byte in b.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            // Mostly well formed at the front, so that the later checks run.
            b[0] = 0x20;
            b[3] %= 60;
            let len = (state % (b.len() as u64 + 1)) as usize;
            let _ = ControlPacket::parse(&b[..len]);
        }
    }
}
