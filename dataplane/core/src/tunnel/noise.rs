//! The `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` handshake as WireGuard
//! specifies it (whitepaper section 5.4.2 to 5.4.4): message construction
//! and consumption, nothing else. Indices, timestamps' monotonicity, MACs
//! and timers are the caller's (`peer`, [`super::cookie`]).
//!
//! Every intermediate secret (chaining keys, AEAD keys, DH results,
//! ephemeral keys) lives in a wiping container and is gone when the
//! function or handshake state that held it is dropped.

use std::fmt;
use std::sync::LazyLock;

use base64::Engine as _;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::crypto::{aead_open, aead_seal, dh, hash, kdf1, kdf2, kdf3, Secret, KEY_LEN};
use super::messages::{
    Initiation, Response, INITIATION_LEN, RESPONSE_LEN, TYPE_INITIATION, TYPE_RESPONSE,
};

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the key that MAC1 is computed with.
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the key cookies are sealed with.
pub const LABEL_COOKIE: &[u8] = b"cookie--";
/// Label of the key the cookie secrets of every period are derived from
/// (ours, not the protocol's: the secret itself never leaves the gateway).
const LABEL_COOKIE_SECRETS: &[u8] = b"patronus cookie secrets v1";

/// `C0 = HASH(CONSTRUCTION)` and `H0 = HASH(C0 || IDENTIFIER)`.
static INITIAL: LazyLock<([u8; KEY_LEN], [u8; KEY_LEN])> = LazyLock::new(|| {
    let chaining = hash(&[CONSTRUCTION]);
    let h = hash(&[&chaining, IDENTIFIER]);
    (chaining, h)
});

/// Why a handshake message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A sealed field did not open: wrong keys, or tampering.
    Decrypt,
    /// The initiator's static key belongs to no configured peer.
    UnknownPeer,
    /// A public key gave an all-zero Diffie-Hellman result.
    LowOrderKey,
}

/// This gateway's static identity, with the values derived from it.
pub struct StaticKeys {
    secret: StaticSecret,
    public: PublicKey,
    /// `HASH(H0 || our public key)`: where a handshake addressed to us starts.
    own_hash: [u8; KEY_LEN],
    /// `HASH(LABEL_MAC1 || our public key)`.
    pub(super) mac1_key: [u8; KEY_LEN],
    /// `HASH(LABEL_COOKIE || our public key)`.
    pub(super) cookie_key: [u8; KEY_LEN],
    /// `HASH(LABEL_COOKIE_SECRETS || our private key)`: every worker derives
    /// the same cookie secret of each two-minute period from it.
    pub(super) cookie_secrets: Secret,
}

impl StaticKeys {
    /// The identity of private key `secret` (which is wiped with this value).
    pub fn new(secret: [u8; KEY_LEN]) -> Self {
        let cookie_secrets = Zeroizing::new(hash(&[LABEL_COOKIE_SECRETS, &secret]));
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        StaticKeys {
            secret,
            public,
            own_hash: hash(&[&INITIAL.1, public.as_bytes()]),
            mac1_key: hash(&[LABEL_MAC1, public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, public.as_bytes()]),
            cookie_secrets,
        }
    }

    /// The public key.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        self.public.as_bytes()
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("public", &encode_key(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// A peer's public key in WireGuard's text form (base64).
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// What we know of a peer, with the values precomputed from it.
pub struct PeerKeys {
    public: PublicKey,
    preshared: Secret,
    /// `DH(our static, their static)`; `None` for a low-order key, with which no handshake can succeed.
    static_static: Option<Secret>,
    /// `HASH(H0 || their public key)`: where a handshake we start begins.
    their_hash: [u8; KEY_LEN],
    /// `HASH(LABEL_MAC1 || their public key)`.
    pub(super) mac1_key: [u8; KEY_LEN],
    /// `HASH(LABEL_COOKIE || their public key)`.
    pub(super) cookie_key: [u8; KEY_LEN],
}

impl PeerKeys {
    /// A peer with public key `public` and an optional preshared key, as seen by `local`.
    pub fn new(
        local: &StaticKeys,
        public: [u8; KEY_LEN],
        preshared: Option<[u8; KEY_LEN]>,
    ) -> Self {
        let their = PublicKey::from(public);
        PeerKeys {
            public: their,
            preshared: Zeroizing::new(preshared.unwrap_or([0; KEY_LEN])),
            static_static: dh(&local.secret, &their),
            their_hash: hash(&[&INITIAL.1, &public]),
            mac1_key: hash(&[LABEL_MAC1, &public]),
            cookie_key: hash(&[LABEL_COOKIE, &public]),
        }
    }

    /// The peer's public key.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        self.public.as_bytes()
    }
}

impl fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerKeys")
            .field("public", &encode_key(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// The symmetric keys a completed handshake yields.
pub struct TransportKeys {
    /// Key for what we send.
    pub send: Secret,
    /// Key for what we receive.
    pub receive: Secret,
}

impl fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransportKeys(..)")
    }
}

/// An initiation we sent, waiting for its response.
pub struct InitiatorState {
    ephemeral: StaticSecret,
    chaining: Secret,
    hash: [u8; KEY_LEN],
    /// Our index for this handshake (the response's receiver).
    pub local_index: u32,
}

impl fmt::Debug for InitiatorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiatorState")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// Writes a handshake initiation to `peer` into `out` (MAC fields zero; the
/// cookie layer fills them) and returns the state that reads its response.
pub fn initiate(
    local: &StaticKeys,
    peer: &PeerKeys,
    local_index: u32,
    ephemeral: [u8; KEY_LEN],
    timestamp: &[u8; 12],
    out: &mut [u8; INITIATION_LEN],
) -> Result<InitiatorState, HandshakeError> {
    let ephemeral = StaticSecret::from(ephemeral);
    let e_pub = PublicKey::from(&ephemeral);
    let static_static = peer
        .static_static
        .as_ref()
        .ok_or(HandshakeError::LowOrderKey)?;

    out.fill(0);
    out[0] = TYPE_INITIATION;
    out[4..8].copy_from_slice(&local_index.to_le_bytes());
    out[8..40].copy_from_slice(e_pub.as_bytes());

    let mut chaining = kdf1(&INITIAL.0, e_pub.as_bytes());
    let mut h = hash(&[&peer.their_hash, e_pub.as_bytes()]);

    let es = dh(&ephemeral, &peer.public).ok_or(HandshakeError::LowOrderKey)?;
    let (c, key) = kdf2(&chaining, &es[..]);
    chaining = c;
    aead_seal(&key, 0, local.public.as_bytes(), &h, &mut out[40..88]);
    h = hash(&[&h, &out[40..88]]);

    let (c, key) = kdf2(&chaining, &static_static[..]);
    chaining = c;
    aead_seal(&key, 0, timestamp, &h, &mut out[88..116]);
    h = hash(&[&h, &out[88..116]]);

    Ok(InitiatorState {
        ephemeral,
        chaining,
        hash: h,
        local_index,
    })
}

/// An initiation whose sender we identified and whose seals opened.
pub struct ReceivedInitiation {
    /// The initiator's static public key.
    pub initiator: [u8; KEY_LEN],
    /// The initiator's TAI64N timestamp (the caller rejects replays).
    pub timestamp: [u8; 12],
    /// The initiator's index (our response's receiver).
    pub sender: u32,
    their_ephemeral: PublicKey,
    chaining: Secret,
    hash: [u8; KEY_LEN],
}

impl fmt::Debug for ReceivedInitiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedInitiation")
            .field("initiator", &encode_key(&self.initiator))
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// Opens an initiation addressed to `local`. `lookup` finds the peer whose
/// static key the message carries; its answer `P` is returned beside the
/// result, so the caller need not look the peer up twice.
pub fn consume_initiation<'k, P>(
    local: &StaticKeys,
    msg: &Initiation<'_>,
    lookup: impl FnOnce(&[u8; KEY_LEN]) -> Option<(P, &'k PeerKeys)>,
) -> Result<(P, ReceivedInitiation), HandshakeError> {
    let e_pub = PublicKey::from(*msg.ephemeral());
    let chaining = kdf1(&INITIAL.0, e_pub.as_bytes());
    let mut h = hash(&[&local.own_hash, e_pub.as_bytes()]);

    let es = dh(&local.secret, &e_pub).ok_or(HandshakeError::LowOrderKey)?;
    let (chaining, key) = kdf2(&chaining, &es[..]);
    let mut initiator = [0u8; KEY_LEN];
    aead_open(&key, 0, msg.encrypted_static(), &h, &mut initiator)
        .map_err(|_| HandshakeError::Decrypt)?;
    h = hash(&[&h, msg.encrypted_static()]);

    let (found, peer) = lookup(&initiator).ok_or(HandshakeError::UnknownPeer)?;
    let static_static = peer
        .static_static
        .as_ref()
        .ok_or(HandshakeError::LowOrderKey)?;
    let (chaining, key) = kdf2(&chaining, &static_static[..]);
    let mut timestamp = [0u8; 12];
    aead_open(&key, 0, msg.encrypted_timestamp(), &h, &mut timestamp)
        .map_err(|_| HandshakeError::Decrypt)?;
    h = hash(&[&h, msg.encrypted_timestamp()]);

    Ok((
        found,
        ReceivedInitiation {
            initiator,
            timestamp,
            sender: msg.sender(),
            their_ephemeral: e_pub,
            chaining,
            hash: h,
        },
    ))
}

/// Writes the response to `received` into `out` (MAC fields zero) and
/// returns the session's keys.
pub fn respond(
    peer: &PeerKeys,
    received: &ReceivedInitiation,
    local_index: u32,
    ephemeral: [u8; KEY_LEN],
    out: &mut [u8; RESPONSE_LEN],
) -> Result<TransportKeys, HandshakeError> {
    let ephemeral = StaticSecret::from(ephemeral);
    let e_pub = PublicKey::from(&ephemeral);
    out.fill(0);
    out[0] = TYPE_RESPONSE;
    out[4..8].copy_from_slice(&local_index.to_le_bytes());
    out[8..12].copy_from_slice(&received.sender.to_le_bytes());
    out[12..44].copy_from_slice(e_pub.as_bytes());

    let chaining = kdf1(&received.chaining, e_pub.as_bytes());
    let mut h = hash(&[&received.hash, e_pub.as_bytes()]);
    let ee = dh(&ephemeral, &received.their_ephemeral).ok_or(HandshakeError::LowOrderKey)?;
    let chaining = kdf1(&chaining, &ee[..]);
    let se = dh(&ephemeral, &peer.public).ok_or(HandshakeError::LowOrderKey)?;
    let chaining = kdf1(&chaining, &se[..]);
    let (chaining, tau, key) = kdf3(&chaining, &peer.preshared[..]);
    h = hash(&[&h, &tau[..]]);
    aead_seal(&key, 0, &[], &h, &mut out[44..60]);

    let (receive, send) = kdf2(&chaining, &[]);
    Ok(TransportKeys { send, receive })
}

/// Reads the response to the initiation `state` was made for.
pub fn consume_response(
    local: &StaticKeys,
    peer: &PeerKeys,
    state: &InitiatorState,
    msg: &Response<'_>,
) -> Result<TransportKeys, HandshakeError> {
    let e_pub = PublicKey::from(*msg.ephemeral());
    let chaining = kdf1(&state.chaining, e_pub.as_bytes());
    let mut h = hash(&[&state.hash, e_pub.as_bytes()]);
    let ee = dh(&state.ephemeral, &e_pub).ok_or(HandshakeError::LowOrderKey)?;
    let chaining = kdf1(&chaining, &ee[..]);
    let se = dh(&local.secret, &e_pub).ok_or(HandshakeError::LowOrderKey)?;
    let chaining = kdf1(&chaining, &se[..]);
    let (chaining, tau, key) = kdf3(&chaining, &peer.preshared[..]);
    h = hash(&[&h, &tau[..]]);
    aead_open(&key, 0, msg.encrypted_nothing(), &h, &mut [0u8; 0])
        .map_err(|_| HandshakeError::Decrypt)?;

    let (send, receive) = kdf2(&chaining, &[]);
    Ok(TransportKeys { send, receive })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::messages::{parse, Message};

    fn keys(seed: u8) -> [u8; 32] {
        hash(&[&[seed]])
    }

    fn handshake(
        psk_i: Option<[u8; 32]>,
        psk_r: Option<[u8; 32]>,
    ) -> Result<(TransportKeys, TransportKeys), HandshakeError> {
        let alice = StaticKeys::new(keys(1));
        let bob = StaticKeys::new(keys(2));
        let bob_at_alice = PeerKeys::new(&alice, *bob.public(), psk_i);
        let alice_at_bob = PeerKeys::new(&bob, *alice.public(), psk_r);

        let mut init = [0u8; INITIATION_LEN];
        let state = initiate(&alice, &bob_at_alice, 11, keys(3), &[5; 12], &mut init)?;
        let Ok(Message::Initiation(msg)) = parse(&init) else {
            panic!("an initiation parses")
        };
        let ((), received) = consume_initiation(&bob, &msg, |key| {
            (key == alice.public()).then_some(((), &alice_at_bob))
        })?;
        assert_eq!(received.timestamp, [5; 12]);
        assert_eq!(received.sender, 11);

        let mut resp = [0u8; RESPONSE_LEN];
        let bob_keys = respond(&alice_at_bob, &received, 22, keys(4), &mut resp)?;
        let Ok(Message::Response(msg)) = parse(&resp) else {
            panic!("a response parses")
        };
        assert_eq!((msg.sender(), msg.receiver()), (22, 11));
        let alice_keys = consume_response(&alice, &bob_at_alice, &state, &msg)?;
        Ok((alice_keys, bob_keys))
    }

    #[test]
    fn both_sides_derive_mirrored_transport_keys() {
        let (a, b) = handshake(None, None).unwrap();
        assert_eq!(*a.send, *b.receive);
        assert_eq!(*a.receive, *b.send);
        assert_ne!(*a.send, *a.receive);
    }

    #[test]
    fn preshared_keys_must_agree() {
        let psk = Some([9u8; 32]);
        let (a, b) = handshake(psk, psk).unwrap();
        assert_eq!(*a.send, *b.receive);
        assert_eq!(handshake(psk, None).unwrap_err(), HandshakeError::Decrypt);
    }

    #[test]
    fn an_initiation_for_someone_else_or_from_a_stranger_is_refused() {
        let alice = StaticKeys::new(keys(1));
        let bob = StaticKeys::new(keys(2));
        let carol = StaticKeys::new(keys(5));
        let bob_at_alice = PeerKeys::new(&alice, *bob.public(), None);
        let mut init = [0u8; INITIATION_LEN];
        initiate(&alice, &bob_at_alice, 1, keys(3), &[0; 12], &mut init).unwrap();
        let Ok(Message::Initiation(msg)) = parse(&init) else {
            panic!()
        };
        // Carol is not who it was sealed for.
        let r = consume_initiation(&carol, &msg, |_| None::<((), &PeerKeys)>);
        assert_eq!(r.unwrap_err(), HandshakeError::Decrypt);
        // Bob does not know Alice.
        let r = consume_initiation(&bob, &msg, |_| None::<((), &PeerKeys)>);
        assert_eq!(r.unwrap_err(), HandshakeError::UnknownPeer);
        // Every byte of the sealed parts is authenticated.
        let alice_at_bob = PeerKeys::new(&bob, *alice.public(), None);
        for at in [8usize, 45, 100] {
            let mut bad = init;
            bad[at] ^= 0x80;
            let Ok(Message::Initiation(msg)) = parse(&bad) else {
                panic!()
            };
            let r = consume_initiation(&bob, &msg, |_| Some(((), &alice_at_bob)));
            assert!(r.is_err(), "byte {at} flipped");
        }
    }

    #[test]
    fn low_order_peer_keys_never_handshake() {
        let alice = StaticKeys::new(keys(1));
        let zero = PeerKeys::new(&alice, [0; 32], None);
        let mut init = [0u8; INITIATION_LEN];
        assert_eq!(
            initiate(&alice, &zero, 1, keys(3), &[0; 12], &mut init).unwrap_err(),
            HandshakeError::LowOrderKey
        );
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let alice = StaticKeys::new(keys(1));
        let text = format!("{alice:?}");
        assert!(text.contains(&encode_key(alice.public())));
        assert!(!text.contains(&encode_key(&keys(1))));
    }
}
