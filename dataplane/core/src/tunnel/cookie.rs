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
pub struct CookieChecker {
    secret: Secret,
    secret_born_ns: Option<u64>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieChecker(..)")
    }
}

impl Default for CookieChecker {
    fn default() -> Self {
        CookieChecker {
            secret: Zeroizing::new([0; 32]),
            secret_born_ns: None,
        }
    }
}

impl CookieChecker {
    /// Whether `msg`'s MAC1 is right for a message addressed to `local`.
    pub fn mac1_valid(local: &StaticKeys, msg: &[u8]) -> bool {
        let at = mac1_offset(msg.len());
        let expected = mac(&local.mac1_key, &[&msg[..at]]);
        bool::from(expected.ct_eq(&msg[at..at + MAC_LEN]))
    }

    /// Whether `msg`'s MAC2 is right for a sender at `source`; false while no
    /// cookie has been handed out in the last two minutes.
    pub fn mac2_valid(&self, msg: &[u8], source: SocketAddr, now_ns: u64) -> bool {
        let Some(born) = self.secret_born_ns else {
            return false;
        };
        if now_ns.saturating_sub(born) >= COOKIE_REFRESH_NS {
            return false;
        }
        let cookie = self.cookie_for(source);
        let at = mac1_offset(msg.len()) + MAC_LEN;
        let expected = mac(&cookie[..], &[&msg[..at]]);
        bool::from(expected.ct_eq(&msg[at..at + MAC_LEN]))
    }

    fn cookie_for(&self, source: SocketAddr) -> Zeroizing<[u8; MAC_LEN]> {
        let mut addr = [0u8; 18];
        Zeroizing::new(mac(&self.secret[..], &[address_bytes(source, &mut addr)]))
    }

    /// A cookie reply to handshake message `msg` from `source`. `fresh`
    /// supplies 32 random bytes for a new secret when the old one is two
    /// minutes old, and `nonce` is random.
    pub fn reply(
        &mut self,
        local: &StaticKeys,
        msg: &[u8],
        source: SocketAddr,
        now_ns: u64,
        nonce: [u8; 24],
        fresh: impl FnOnce() -> [u8; 32],
    ) -> [u8; COOKIE_REPLY_LEN] {
        let expired = self
            .secret_born_ns
            .is_none_or(|born| now_ns.saturating_sub(born) >= COOKIE_REFRESH_NS);
        if expired {
            self.secret = Zeroizing::new(fresh());
            self.secret_born_ns = Some(now_ns);
        }
        let cookie = self.cookie_for(source);
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

        let mut m = initiation(&alice, &bob_at_alice);
        jar.stamp(&bob_at_alice, &mut m, 0);
        assert!(!checker.mac2_valid(&m, source, 0), "no cookie yet");
        let reply = checker.reply(&bob, &m, source, 10, [3; 24], || [8; 32]);
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
        assert!(checker.mac2_valid(&again, source, 40));
        // Bound to the source address and port.
        assert!(!checker.mac2_valid(&again, "192.0.2.8:51820".parse().unwrap(), 40));
        assert!(!checker.mac2_valid(&again, "192.0.2.7:51821".parse().unwrap(), 40));
        // The secret expires, and so does the initiator's cookie.
        assert!(!checker.mac2_valid(&again, source, 10 + COOKIE_REFRESH_NS));
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
        let reply = checker.reply(&alice, &m, source, 0, [1; 24], || [2; 32]);
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
