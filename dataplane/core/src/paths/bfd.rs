//! BFD on a tunnel path: single-hop BFD (RFC 5881) between the two ends'
//! addresses inside the tunnel, one session per path, its packets sealed
//! for the peer and sent over that path's underlay, so that a path whose
//! underlay stops carrying is declared down after Detect Mult × the agreed
//! interval, however the rest of the tunnel fares.
//!
//! Inside the tunnel a Control packet is an IPv4 datagram from our tunnel
//! address to the peer's, UDP from a source port of 49152-65535 (one per
//! session, §4) to 3784, TTL 255; one that arrives with another TTL did not
//! come from the neighbour (§5) and is dropped. Sessions are demultiplexed
//! by Your Discriminator, and before the remote knows it by the path the
//! packet arrived over (the uplink and the outer source), which is the
//! remote's path in the other direction.

use std::net::Ipv4Addr;

use crate::bfd::auth::{self, AuthError, Authenticator, Sha1Key};
use crate::bfd::packet::{ControlPacket, Diagnostic, Malformed, State, MAX_LEN};
use crate::bfd::session::{Session, StateChange, Timers};
use crate::labels::labelled_enum;

/// The destination port of single-hop Control packets (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;
/// The destination port of multihop Control packets (RFC 5883 §5).
pub const MULTIHOP_PORT: u16 = 4784;
/// The first of the source ports a session may use (RFC 5881 §4).
const FIRST_SOURCE_PORT: u16 = 49152;
/// What a Control packet leaves with and must arrive with (RFC 5881 §5).
const TTL: u8 = 255;
/// IPv4 and UDP headers.
const HEADERS_LEN: usize = 28;
/// The longest datagram a session sends.
pub const MAX_DATAGRAM_LEN: usize = HEADERS_LEN + MAX_LEN;
/// DSCP CS6 (network control), as routers mark their BFD.
const TOS_CS6: u8 = 48 << 2;

/// A session's settings: the two ends' addresses (inside the tunnel for a
/// path, on the underlay for an uplink), how far apart they are, the timers
/// and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdEnds {
    /// Ours (a path's: the first IPv4 address of `[tunnel]`).
    pub local: Ipv4Addr,
    /// The remote's (a path's: the peer's `tunnel_address`).
    pub remote: Ipv4Addr,
    /// Single hop or multihop.
    pub hops: Hops,
    /// Our timers.
    pub timers: Timers,
    /// Keyed SHA1 authentication (RFC 5880 §6.7.4), if configured.
    pub auth: Option<Sha1Key>,
}

/// How far the remote is, which decides the port and the TTL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hops {
    /// On the link (RFC 5881): port 3784, packets must arrive with TTL 255.
    One,
    /// Beyond a router (RFC 5883): port 4784, packets must arrive with a
    /// TTL of at least `min_ttl` (RFC 5883 leaves the check to
    /// configuration; FRR's default is 254).
    Many {
        /// The least TTL accepted.
        min_ttl: u8,
    },
}

impl BfdEnds {
    /// The UDP port Control packets go to.
    pub fn port(&self) -> u16 {
        match self.hops {
            Hops::One => CONTROL_PORT,
            Hops::Many { .. } => MULTIHOP_PORT,
        }
    }

    /// Whether a packet that arrived with `ttl` may be the remote's.
    pub fn accepts_ttl(&self, ttl: u8) -> bool {
        match self.hops {
            Hops::One => ttl == TTL,
            Hops::Many { min_ttl } => ttl >= min_ttl,
        }
    }
}

labelled_enum! {
    /// Why a well-formed Control packet was dropped.
    BfdDrop {
        /// It arrived with a TTL other than 255: not from the neighbour.
        Ttl => "ttl";
        /// No path of the peer it came from matches it.
        NoSession => "no_session";
        /// Its Your Discriminator names none of our sessions.
        UnknownDiscriminator => "unknown_discriminator";
        /// It failed the session's authentication: none where a key is
        /// configured or the reverse, another key, a replayed sequence
        /// number, a wrong digest.
        Auth => "auth_failed";
    }
}

/// One worker's Control packet counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BfdCounters {
    /// Sent.
    pub tx: u64,
    /// Received and taken by a session.
    pub rx: u64,
    /// Dropped for their shape, by [`Malformed::index`].
    pub malformed: [u64; Malformed::COUNT],
    /// Dropped well-formed, by [`BfdDrop::index`].
    pub dropped: [u64; BfdDrop::COUNT],
}

/// What [`PathBfd::take_changes`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// The session changed state.
    pub any: bool,
    /// It left Up: it just went down.
    pub left_up: bool,
}

/// The session of one path, with what the metrics show of it.
#[derive(Debug, Clone)]
pub struct PathBfd {
    /// The session.
    pub session: Session,
    /// Its authentication state, with a key.
    auth: Option<Authenticator>,
    ends: BfdEnds,
    source_port: u16,
    /// It has been Up: until then it has no say in whether the path is up.
    ever_up: bool,
    /// State changes, by the state entered and the diagnostic (0-8; 9 for
    /// the reserved ones).
    changes: [[u64; DIAGNOSTICS]; 4],
    /// When the last one happened (ns on the data-plane clock).
    last_change_ns: Option<u64>,
}

/// Diagnostics counted apart: the nine of RFC 5880 and one for the rest.
pub const DIAGNOSTICS: usize = 10;

impl PathBfd {
    /// A session for the path tagged `tag`, Down, starting at `now`.
    pub fn new(ends: BfdEnds, tag: u32, seed: u64, now_ns: u64) -> Self {
        PathBfd {
            // The tag tells the path apart from the peer's others; 0 is
            // not a discriminator.
            session: Session::new(ends.timers, tag.max(1), seed, now_ns),
            // A random first sequence number, so that a restart replays nothing.
            auth: ends
                .auth
                .clone()
                .map(|key| Authenticator::new(key, seed as u32)),
            ends,
            source_port: FIRST_SOURCE_PORT + (tag % 16_384) as u16,
            ever_up: false,
            changes: [[0; DIAGNOSTICS]; 4],
            last_change_ns: None,
        }
    }

    /// The settings it runs with.
    pub fn ends(&self) -> &BfdEnds {
        &self.ends
    }

    /// Whether BFD says the path is down: its session was Up and is not.
    /// A session that never came up (a peer not running BFD yet) has no say.
    pub fn says_down(&self) -> bool {
        self.ever_up && self.session.state() != State::Up
    }

    /// Reads the session's state changes into the counts: whether there
    /// was one, and whether one left Up.
    pub fn take_changes(&mut self) -> Changed {
        let mut changed = Changed::default();
        while let Some(StateChange {
            from,
            to,
            diag,
            at_ns,
        }) = self.session.poll_change()
        {
            self.ever_up |= to == State::Up;
            self.last_change_ns = Some(at_ns);
            changed.left_up |= from == State::Up;
            if to == State::Down {
                // The remote may come back with a new sequence (§6.8.1).
                if let Some(auth) = &mut self.auth {
                    auth.forget_remote();
                }
            }
            self.changes[state_index(to)][diag_index(diag)] += 1;
            changed.any = true;
        }
        changed
    }

    /// When the session last changed state (ns on the data-plane clock).
    pub fn last_change_ns(&self) -> Option<u64> {
        self.last_change_ns
    }

    /// State changes so far, by state entered ([`STATES`] order) and
    /// diagnostic.
    pub fn changes(&self) -> &[[u64; DIAGNOSTICS]; 4] {
        &self.changes
    }

    /// The Control packet due at `now`, if any, written into `out` as the
    /// datagram inside the tunnel; its length.
    pub fn poll_datagram(&mut self, now_ns: u64, out: &mut [u8]) -> Option<usize> {
        let packet = self.session.poll_transmit(now_ns)?;
        write_datagram(
            &self.ends,
            self.source_port,
            &packet,
            self.auth.as_mut(),
            out,
        )
    }

    /// Lets a received packet (`bytes`, parsed as `packet`) through the
    /// session's authentication (RFC 5880 §6.8.6), or says why not.
    pub fn authenticate(&mut self, bytes: &[u8], packet: &ControlPacket) -> Result<(), AuthError> {
        auth::check(self.auth.as_mut(), bytes, packet)
    }
}

/// The states in the order of [`PathBfd::changes`].
pub const STATES: [State; 4] = State::ALL;

fn state_index(s: State) -> usize {
    STATES
        .iter()
        .position(|x| *x == s)
        .expect("every state is listed")
}

fn diag_index(d: Diagnostic) -> usize {
    usize::from(d.0).min(DIAGNOSTICS - 1)
}

/// `packet` as an IPv4/UDP datagram from `ends.local`:`source_port` to
/// `ends.remote` at its port (3784, multihop 4784), TTL 255, in `out`, sealed by `auth` when given; its
/// length.
pub fn write_datagram(
    ends: &BfdEnds,
    source_port: u16,
    packet: &ControlPacket,
    auth: Option<&mut Authenticator>,
    out: &mut [u8],
) -> Option<usize> {
    let body_out = out.get_mut(HEADERS_LEN..)?;
    let body = match auth {
        Some(auth) => auth.seal(packet, body_out)?,
        None => packet.encode(body_out)?,
    };
    let total = HEADERS_LEN + body;
    let (ip, rest) = out.split_at_mut(20);
    ip.copy_from_slice(&[
        0x45, TOS_CS6, 0, 0, 0, 0, 0x40, 0, TTL, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&ends.local.octets());
    ip[16..20].copy_from_slice(&ends.remote.octets());
    let sum = checksum(0, ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp_len = (8 + body) as u16;
    rest[0..2].copy_from_slice(&source_port.to_be_bytes());
    rest[2..4].copy_from_slice(&ends.port().to_be_bytes());
    rest[4..6].copy_from_slice(&udp_len.to_be_bytes());
    rest[6..8].copy_from_slice(&[0, 0]);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&ends.local.octets());
    pseudo[4..8].copy_from_slice(&ends.remote.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let sum = match checksum(ones_sum(0, &pseudo), &rest[..usize::from(udp_len)]) {
        0 => 0xffff, // 0 means "no checksum" in UDP over IPv4
        s => s,
    };
    rest[6..8].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// What an inner packet addressed to `local` is to BFD: `None` when it is
/// not a single-hop Control packet for us (it goes on as any other
/// packet), else its TTL and its UDP payload.
#[inline]
pub fn control_payload(inner: &[u8], local: Ipv4Addr) -> Option<(u8, &[u8])> {
    datagram_payload(inner, local, CONTROL_PORT)
}

/// The TTL and UDP payload of IPv4 packet `inner` when it is a datagram to
/// `local`:`port` (unfragmented), else `None`.
#[inline]
pub fn datagram_payload(inner: &[u8], local: Ipv4Addr, port: u16) -> Option<(u8, &[u8])> {
    let first = *inner.first()?;
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header < 20 || inner.len() < header + 8 {
        return None;
    }
    let fragmented = u16::from_be_bytes([inner[6], inner[7]]) & 0x3fff != 0;
    if inner[9] != 17 || fragmented || inner[16..20] != local.octets() {
        return None;
    }
    let udp = &inner[header..];
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..udp_len.max(8)).unwrap_or(&udp[8..]);
    Some((inner[8], payload))
}

/// The one's complement sum of `bytes` added to `sum`, unfolded.
fn ones_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum of `bytes` after `sum`.
fn checksum(sum: u32, bytes: &[u8]) -> u16 {
    let mut sum = ones_sum(sum, bytes);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn ends() -> BfdEnds {
        BfdEnds {
            local: Ipv4Addr::new(10, 99, 0, 1),
            remote: Ipv4Addr::new(10, 99, 0, 2),
            hops: Hops::One,
            timers: Timers::default(),
            auth: None,
        }
    }

    /// The other end of [`ends`], with `auth`.
    fn far_end(auth: Option<Sha1Key>) -> BfdEnds {
        BfdEnds {
            local: ends().remote,
            remote: ends().local,
            auth,
            ..ends()
        }
    }

    /// Hands `from`'s due packet to `to` as the worker does (authentication,
    /// then the session); whether `to` took it.
    fn deliver(from: &mut PathBfd, to: &mut PathBfd, now: u64) -> bool {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let Some(len) = from.poll_datagram(now, &mut buf) else {
            return false;
        };
        let (_, payload) = control_payload(&buf[..len], to.ends().local).unwrap();
        let p = ControlPacket::parse(payload).unwrap();
        if to.authenticate(payload, &p).is_err() {
            return false;
        }
        to.session.handle_packet(&p, now).unwrap();
        true
    }

    /// Exchanges packets for ten seconds of simulated time; whether both
    /// sessions came Up.
    fn bring_up(a: &mut PathBfd, b: &mut PathBfd) -> bool {
        for step in 0..10u64 {
            let now = step * 1_000_000_000;
            deliver(a, b, now);
            deliver(b, a, now);
        }
        a.take_changes();
        b.take_changes();
        a.session.state() == State::Up && b.session.state() == State::Up
    }

    #[test]
    fn keyed_sha1_sessions_come_up_only_with_the_same_key() {
        let key = |secret: &[u8], meticulous| Some(Sha1Key::new(7, secret, meticulous).unwrap());
        for meticulous in [false, true] {
            let mut a = PathBfd::new(
                BfdEnds {
                    auth: key(b"s3cret", meticulous),
                    ..ends()
                },
                1,
                1,
                0,
            );
            let mut b = PathBfd::new(far_end(key(b"s3cret", meticulous)), 2, 2, 0);
            assert!(
                bring_up(&mut a, &mut b),
                "the same key (meticulous: {meticulous})"
            );
            let mut buf = [0u8; MAX_DATAGRAM_LEN];
            let len = a.poll_datagram(20_000_000_000, &mut buf).unwrap();
            let (_, payload) = control_payload(&buf[..len], ends().remote).unwrap();
            assert!(
                ControlPacket::parse(payload).unwrap().auth.is_some(),
                "sent authenticated"
            );
        }
        // Another key, another key id, or none on one side: never Up.
        let mut a = PathBfd::new(
            BfdEnds {
                auth: key(b"s3cret", false),
                ..ends()
            },
            1,
            1,
            0,
        );
        let mut b = PathBfd::new(far_end(key(b"guess", false)), 2, 2, 0);
        assert!(!bring_up(&mut a, &mut b), "another key");
        let mut a = PathBfd::new(
            BfdEnds {
                auth: key(b"s3cret", false),
                ..ends()
            },
            1,
            1,
            0,
        );
        let mut b = PathBfd::new(far_end(None), 2, 2, 0);
        assert!(!bring_up(&mut a, &mut b), "one side without a key");
        assert_eq!(a.session.state(), State::Down);
    }

    #[test]
    fn a_datagram_is_valid_ipv4_udp_to_3784_with_ttl_255() {
        let mut bfd = PathBfd::new(ends(), 0xdead_beef, 1, 0);
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let len = bfd.poll_datagram(0, &mut buf).expect("a packet at start");
        let p = SlicedPacket::from_ip(&buf[..len]).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            (h.time_to_live, h.source, h.destination),
            (255, [10, 99, 0, 1], [10, 99, 0, 2])
        );
        assert_eq!(h.dscp.value(), 48);
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("UDP")
        };
        assert_eq!(udp.destination_port(), CONTROL_PORT);
        assert!((49152..=65535).contains(&udp.source_port()));
        let expected = udp
            .to_header()
            .calc_checksum_ipv4(&h, udp.payload())
            .unwrap();
        assert_eq!(udp.checksum(), expected, "a valid UDP checksum");
        let control = ControlPacket::parse(udp.payload()).unwrap();
        assert_eq!(control.my_discriminator, 0xdead_beef);
        assert_eq!(control.state, State::Down);

        // Read back as the receiving end does.
        let (ttl, payload) = control_payload(&buf[..len], ends().remote).unwrap();
        assert_eq!((ttl, payload), (255, udp.payload()));
        assert_eq!(
            control_payload(&buf[..len], ends().local),
            None,
            "not to us"
        );
    }

    #[test]
    fn only_udp_to_3784_for_us_is_bfd_and_nothing_panics() {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let mut bfd = PathBfd::new(ends(), 7, 1, 0);
        let len = bfd.poll_datagram(0, &mut buf).unwrap();
        let us = ends().remote;
        let mut tcp = buf;
        tcp[9] = 6;
        assert_eq!(control_payload(&tcp[..len], us), None);
        let mut other_port = buf;
        other_port[23] = 0xc9; // 3784 -> 3785
        assert_eq!(control_payload(&other_port[..len], us), None);
        let mut fragment = buf;
        fragment[7] = 1;
        assert_eq!(control_payload(&fragment[..len], us), None);
        // Truncated anywhere, or with a UDP length beyond the packet.
        for cut in 0..len {
            let _ = control_payload(&buf[..cut], us);
        }
        let mut long = buf;
        long[24..26].copy_from_slice(&u16::MAX.to_be_bytes());
        let (_, payload) = control_payload(&long[..len], us).unwrap();
        assert_eq!(payload.len(), len - 28);
    }

    #[test]
    fn only_a_session_that_was_up_says_the_path_is_down() {
        let mut a = PathBfd::new(ends(), 1, 1, 0);
        let mut b = PathBfd::new(far_end(None), 2, 2, 0);
        assert!(!a.says_down(), "never up: no say");
        assert!(bring_up(&mut a, &mut b));
        let now = 10_000_000_000;
        assert!(!a.says_down());
        // b goes silent: a declares it down after its detection time.
        let detect = a.session.detection_time_ns();
        a.session.handle_timeout(now + detect);
        assert_eq!(
            a.take_changes(),
            Changed {
                any: true,
                left_up: true
            }
        );
        assert!(a.says_down());
        let up = state_index(State::Up);
        let down = state_index(State::Down);
        assert_eq!(a.changes()[up][0], 1);
        assert_eq!(
            a.changes()[down][1],
            1,
            "Down with diagnostic 1 (time expired)"
        );
    }
}
