//! MAC1, MAC2 and cookies: WireGuard's defence against handshake floods
//! (whitepaper section 5.4.7).
//!
//! Every handshake message carries MAC1, keyed by the receiver's public
//! key, so that nothing costly is done for a sender who does not even know
//! whom it talks to. Under load, a responder also wants MAC2, keyed by a
//! cookie that only a sender who can receive at its source address learns:
//! without it the responder answers with a cookie reply instead of doing
//! Diffie-Hellman, and a per-source rate limit bounds the rest.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::crypto::{self, mac, Secret, MAC_LEN};
use super::messages::{mac1_offset, CookieReply, COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY};
use super::noise::{PeerKeys, StaticKeys};

/// How long a cookie secret (responder) or a received cookie (initiator) stays valid.
pub const COOKIE_REFRESH_NS: u64 = 120 * 1_000_000_000;

fn address_bytes(source: SocketAddr, out: &mut [u8; 18]) -> &[u8] {
    let port = source.port().to_be_bytes();
    match source.ip() {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            out[4..6].copy_from_slice(&port);
            &out[..6]
        }
        IpAddr::V6(a) => {
            out[..16].copy_from_slice(&a.octets());
            out[16..18].copy_from_slice(&port);
            &out[..18]
        }
    }
}

/// The responder's side: checks MACs and makes cookie replies.
///
/// The cookie secret is the gateway's, not the worker's: a cookie one worker
/// hands out must pass on whichever worker the sender's next message lands.
/// Every worker derives the secret of the current two-minute period of the
/// wall clock from the private key ([`StaticKeys`]), so they agree without
/// sharing anything, and it changes every two minutes as the protocol says.
#[derive(Default)]
pub struct CookieChecker {
    /// The period, the identity it was derived for, and its secret.
    current: Option<(u64, [u8; 32], Secret)>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieChecker(..)")
    }
}

impl CookieChecker {
    /// Whether `msg`'s MAC1 is right for a message addressed to `local`.
    pub fn mac1_valid(local: &StaticKeys, msg: &[u8]) -> bool {
        let at = mac1_offset(msg.len());
        let expected = mac(&local.mac1_key, &[&msg[..at]]);
        bool::from(expected.ct_eq(&msg[at..at + MAC_LEN]))
    }

    /// The cookie secret of the period `unix` (wall-clock time) falls in.
    fn secret(&mut self, local: &StaticKeys, unix: Duration) -> &Secret {
        let period = (unix.as_nanos() / u128::from(COOKIE_REFRESH_NS)) as u64;
        let fresh = self
            .current
            .as_ref()
            .is_some_and(|(p, public, _)| *p == period && public == local.public());
        if !fresh {
            let secret = crypto::kdf1(&local.cookie_secrets, &period.to_le_bytes());
            self.current = Some((period, *local.public(), secret));
        }
        &self.current.as_ref().expect("set above").2
    }

    /// Whether `msg`'s MAC2 is right for a sender at `source`: made with a
    /// cookie from this period's secret.
    pub fn mac2_valid(
        &mut self,
        local: &StaticKeys,
        msg: &[u8],
        source: SocketAddr,
        unix: Duration,
    ) -> bool {
        let cookie = cookie_for(self.secret(local, unix), source);
        let at = mac1_offset(msg.len()) + MAC_LEN;
        let expected = mac(&cookie[..], &[&msg[..at]]);
        bool::from(expected.ct_eq(&msg[at..at + MAC_LEN]))
    }

    /// A cookie reply to handshake message `msg` from `source`, with this
    /// period's cookie; `nonce` is random.
    pub fn reply(
        &mut self,
        local: &StaticKeys,
        msg: &[u8],
        source: SocketAddr,
        unix: Duration,
        nonce: [u8; 24],
    ) -> [u8; COOKIE_REPLY_LEN] {
        let cookie = cookie_for(self.secret(local, unix), source);
        let mac1_at = mac1_offset(msg.len());
        let mut out = [0u8; COOKIE_REPLY_LEN];
        out[0] = TYPE_COOKIE_REPLY;
        out[4..8].copy_from_slice(&msg[4..8]); // the message's sender index
        out[8..32].copy_from_slice(&nonce);
        let sealed: &mut [u8; 32] = (&mut out[32..64]).try_into().expect("32 bytes");
        crypto::xaead_seal(
            &local.cookie_key,
            &nonce,
            &cookie,
            &msg[mac1_at..mac1_at + MAC_LEN],
            sealed,
        );
        out
    }
}

/// The cookie of a sender at `source`: `MAC(secret, address || port)`.
fn cookie_for(secret: &Secret, source: SocketAddr) -> Zeroizing<[u8; MAC_LEN]> {
    let mut addr = [0u8; 18];
    Zeroizing::new(mac(&secret[..], &[address_bytes(source, &mut addr)]))
}

/// Why a cookie reply was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// We sent no handshake message it could answer.
    Unexpected,
    /// It did not open with the peer's cookie key and our last MAC1.
    Decrypt,
}

/// The initiator's side, one per peer: stamps MACs on what we send and
/// keeps the cookie a peer gave us.
#[derive(Default)]
pub struct CookieJar {
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, u64)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .finish()
    }
}

impl CookieJar {
    /// Writes MAC1 (and MAC2 when we hold a fresh cookie) into handshake message `msg` for `peer`.
    pub fn stamp(&mut self, peer: &PeerKeys, msg: &mut [u8], now_ns: u64) {
        let at = mac1_offset(msg.len());
        let mac1 = mac(&peer.mac1_key, &[&msg[..at]]);
        msg[at..at + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match &self.cookie {
            Some((cookie, received)) if now_ns.saturating_sub(*received) < COOKIE_REFRESH_NS => {
                mac(&cookie[..], &[&msg[..at + MAC_LEN]])
            }
            _ => [0; MAC_LEN],
        };
        msg[at + MAC_LEN..at + 2 * MAC_LEN].copy_from_slice(&mac2);
    }

    /// Takes the cookie `reply` from `peer` carries.
    pub fn consume(
        &mut self,
        peer: &PeerKeys,
        reply: &CookieReply<'_>,
        now_ns: u64,
    ) -> Result<(), CookieError> {
        let mac1 = self.last_mac1.ok_or(CookieError::Unexpected)?;
        let cookie = crypto::xaead_open(
            &peer.cookie_key,
            reply.nonce(),
            reply.encrypted_cookie(),
            &mac1,
        )
        .map_err(|_| CookieError::Decrypt)?;
        self.cookie = Some((cookie, now_ns));
        // One reply per message: a replayed reply finds nothing to open.
        self.last_mac1 = None;
        Ok(())
    }
}

/// Per-source token buckets for handshakes under load: direct-mapped by a
/// keyed hash of the source address, so memory is fixed and colliding
/// sources share a bucket (which only makes the limit stricter).
pub struct SourceLimiter {
    buckets: Box<[(u64, u64)]>,
    key: [u8; 16],
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter")
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

/// Handshakes per second one source address may have processed under load.
const PER_SOURCE_PER_S: u64 = 20;
/// The burst a source may use at once.
const PER_SOURCE_BURST: u64 = 5;
const NS_PER_S: u64 = 1_000_000_000;

impl SourceLimiter {
    /// A limiter with `buckets` buckets, hashing with `key`.
    pub fn new(buckets: usize, key: [u8; 16]) -> Self {
        SourceLimiter {
            buckets: vec![(0, 0); buckets.max(1)].into_boxed_slice(),
            key,
        }
    }

    /// Whether a handshake from `source` (its address; the port is ignored) may be processed now.
    pub fn allow(&mut self, source: IpAddr, now_ns: u64) -> bool {
        let octets = match source {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let h = mac(&self.key, &[&octets]);
        let slot = (u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
            % self.buckets.len() as u64) as usize;
        // (nano-tokens, last refill): one token is NS_PER_S nano-tokens.
        let (tokens, last) = &mut self.buckets[slot];
        let max = PER_SOURCE_BURST * NS_PER_S;
        let earned = now_ns
            .saturating_sub(*last)
            .saturating_mul(PER_SOURCE_PER_S);
        *tokens = if *last == 0 {
            max
        } else {
            tokens.saturating_add(earned).min(max)
        };
        *last = now_ns.max(1);
        if *tokens >= NS_PER_S {
            *tokens -= NS_PER_S;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::crypto::hash;
    use crate::tunnel::messages::{parse, Message, INITIATION_LEN};
    use crate::tunnel::noise::initiate;

    fn pair() -> (StaticKeys, StaticKeys, PeerKeys) {
        let alice = StaticKeys::new(hash(&[b"a"]));
        let bob = StaticKeys::new(hash(&[b"b"]));
        let bob_at_alice = PeerKeys::new(&alice, *bob.public(), None);
        (alice, bob, bob_at_alice)
    }

    fn initiation(alice: &StaticKeys, bob_at_alice: &PeerKeys) -> [u8; INITIATION_LEN] {
        let mut m = [0u8; INITIATION_LEN];
        initiate(alice, bob_at_alice, 7, hash(&[b"e"]), &[0; 12], &mut m).unwrap();
        m
    }

    #[test]
    fn mac1_binds_the_message_to_its_receiver() {
        let (alice, bob, bob_at_alice) = pair();
        let mut m = initiation(&alice, &bob_at_alice);
        let mut jar = CookieJar::default();
        jar.stamp(&bob_at_alice, &mut m, 0);
        assert!(CookieChecker::mac1_valid(&bob, &m));
        assert!(!CookieChecker::mac1_valid(&alice, &m));
        m[20] ^= 1;
        assert!(!CookieChecker::mac1_valid(&bob, &m));
    }

    #[test]
    fn a_cookie_reply_teaches_the_initiator_a_mac2_the_responder_accepts() {
        let (alice, bob, bob_at_alice) = pair();
        let source: SocketAddr = "192.0.2.7:51820".parse().unwrap();
        let mut checker = CookieChecker::default();
        let mut jar = CookieJar::default();
        // Wall-clock time, 10 s into a period.
        let t = Duration::from_secs(1_800_000_010);

        let mut m = initiation(&alice, &bob_at_alice);
        jar.stamp(&bob_at_alice, &mut m, 0);
        assert!(!checker.mac2_valid(&bob, &m, source, t), "no cookie yet");
        let reply = checker.reply(&bob, &m, source, t, [3; 24]);
        let Ok(Message::CookieReply(r)) = parse(&reply) else {
            panic!("a cookie reply parses")
        };
        assert_eq!(r.receiver(), 7);
        jar.consume(&bob_at_alice, &r, 20).unwrap();
        assert_eq!(
            jar.consume(&bob_at_alice, &r, 20),
            Err(CookieError::Unexpected)
        );

        let mut again = initiation(&alice, &bob_at_alice);
        jar.stamp(&bob_at_alice, &mut again, 30);
        assert!(checker.mac2_valid(&bob, &again, source, t));
        // Another worker's checker derives the same secret.
        assert!(CookieChecker::default().mac2_valid(&bob, &again, source, t));
        // Bound to the source address and port, and to our identity.
        assert!(!checker.mac2_valid(&bob, &again, "192.0.2.8:51820".parse().unwrap(), t));
        assert!(!checker.mac2_valid(&bob, &again, "192.0.2.7:51821".parse().unwrap(), t));
        assert!(!checker.mac2_valid(&alice, &again, source, t));
        // The secret changes with the period, and the initiator's cookie expires.
        let next = Duration::from_secs(1_800_000_000 + 120);
        assert!(checker.mac2_valid(&bob, &again, source, next - Duration::from_nanos(1)));
        assert!(!checker.mac2_valid(&bob, &again, source, next));
        let mut late = initiation(&alice, &bob_at_alice);
        jar.stamp(&bob_at_alice, &mut late, 20 + COOKIE_REFRESH_NS);
        assert_eq!(&late[132..148], &[0u8; 16]);
    }

    #[test]
    fn a_forged_cookie_reply_is_refused() {
        let (alice, bob, bob_at_alice) = pair();
        let source: SocketAddr = "[2001:db8::7]:51820".parse().unwrap();
        let mut jar = CookieJar::default();
        let mut m = initiation(&alice, &bob_at_alice);
        jar.stamp(&bob_at_alice, &mut m, 0);
        let mut checker = CookieChecker::default();
        // Sealed with someone else's cookie key.
        let reply = checker.reply(&alice, &m, source, Duration::ZERO, [1; 24]);
        let Ok(Message::CookieReply(r)) = parse(&reply) else {
            panic!()
        };
        assert_eq!(jar.consume(&bob_at_alice, &r, 0), Err(CookieError::Decrypt));
        let _ = bob;
    }

    #[test]
    fn the_source_limiter_allows_a_burst_then_the_rate() {
        let mut limiter = SourceLimiter::new(64, [1; 16]);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = 1_000_000_000;
        let allowed = (0..20).filter(|_| limiter.allow(a, t0)).count();
        assert_eq!(allowed as u64, PER_SOURCE_BURST);
        // 50 ms later: one more token at 20/s.
        assert!(limiter.allow(a, t0 + 50_000_000));
        assert!(!limiter.allow(a, t0 + 50_000_000));
    }
}
