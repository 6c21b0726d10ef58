//! The primitives of `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` as WireGuard
//! uses them (whitepaper section 5.4), each a thin call into a maintained
//! library: BLAKE2s, its keyed MAC and HMAC from RustCrypto's `blake2` and
//! `hmac`, ChaCha20-Poly1305 from `ring`, XChaCha20-Poly1305 (cookies) from
//! `chacha20poly1305`, X25519 from `x25519-dalek`.
//!
//! Functions take their input as a list of parts so that callers hash a
//! concatenation without building it.

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::XChaCha20Poly1305;
use hmac::SimpleHmac;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Length of keys, hashes and chaining keys.
pub const KEY_LEN: usize = 32;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of a MAC1/MAC2 field and of a cookie.
pub const MAC_LEN: usize = 16;

/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; KEY_LEN]>;

/// The AEAD failed to authenticate its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed;

/// BLAKE2s-256 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut h = Blake2s256::default();
    for part in parts {
        Update::update(&mut h, part);
    }
    h.finalize_fixed().into()
}

/// Keyed BLAKE2s with a 16-byte output (WireGuard's `MAC`), over `parts`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(key)
        .expect("BLAKE2s takes keys of up to 32 bytes; every caller passes 16 or 32");
    for part in parts {
        m.update(part);
    }
    m.finalize_fixed().into()
}

/// HMAC-BLAKE2s-256 of the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Secret {
    let mut m = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    for part in parts {
        m.update(part);
    }
    Zeroizing::new(m.finalize_fixed().into())
}

/// HKDF with one output: the new chaining key.
pub fn kdf1(chaining_key: &[u8; KEY_LEN], input: &[u8]) -> Secret {
    let prk = hmac(chaining_key, &[input]);
    hmac(&prk[..], &[&[1]])
}

/// HKDF with two outputs.
pub fn kdf2(chaining_key: &[u8; KEY_LEN], input: &[u8]) -> (Secret, Secret) {
    let prk = hmac(chaining_key, &[input]);
    let t1 = hmac(&prk[..], &[&[1]]);
    let t2 = hmac(&prk[..], &[&t1[..], &[2]]);
    (t1, t2)
}

/// HKDF with three outputs.
pub fn kdf3(chaining_key: &[u8; KEY_LEN], input: &[u8]) -> (Secret, Secret, Secret) {
    let prk = hmac(chaining_key, &[input]);
    let t1 = hmac(&prk[..], &[&[1]]);
    let t2 = hmac(&prk[..], &[&t1[..], &[2]]);
    let t3 = hmac(&prk[..], &[&t2[..], &[3]]);
    (t1, t2, t3)
}

/// A ChaCha20-Poly1305 key for `ring`.
pub fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("ChaCha20-Poly1305 keys are 32 bytes"),
    )
}

/// The 96-bit nonce of WireGuard's AEAD: 32 zero bits, then the counter in little endian.
#[inline]
pub fn aead_nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals `plaintext` under `key` and `counter` with associated data `aad`
/// into `out`, which must be exactly `plaintext.len() + TAG_LEN` long.
pub fn aead_seal(key: &[u8; KEY_LEN], counter: u64, plaintext: &[u8], aad: &[u8], out: &mut [u8]) {
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let tag = aead_key(key)
        .seal_in_place_separate_tag(aead_nonce(counter), Aad::from(aad), body)
        .expect("handshake messages are far below ChaCha20-Poly1305's length limit");
    tag_out.copy_from_slice(tag.as_ref());
}

/// Opens `sealed` (ciphertext and tag) into `out`, which must be exactly
/// `sealed.len() - TAG_LEN` long.
pub fn aead_open(
    key: &[u8; KEY_LEN],
    counter: u64,
    sealed: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> Result<(), AuthFailed> {
    let mut buf = Zeroizing::new([0u8; 64]);
    let buf = buf
        .get_mut(..sealed.len())
        .expect("handshake fields are at most 48 bytes");
    buf.copy_from_slice(sealed);
    let plain = aead_key(key)
        .open_in_place(aead_nonce(counter), Aad::from(aad), buf)
        .map_err(|_| AuthFailed)?;
    out.copy_from_slice(plain);
    Ok(())
}

/// XChaCha20-Poly1305 seal of a cookie: `out` = ciphertext ‖ tag.
pub fn xaead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; 24],
    plaintext: &[u8; MAC_LEN],
    aad: &[u8],
    out: &mut [u8; MAC_LEN + TAG_LEN],
) {
    let cipher = XChaCha20Poly1305::new(key.into());
    let (body, tag_out) = out.split_at_mut(MAC_LEN);
    body.copy_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(nonce.into(), aad, body.into())
        .expect("a cookie is far below XChaCha20-Poly1305's length limit");
    tag_out.copy_from_slice(&tag);
}

/// XChaCha20-Poly1305 open of a sealed cookie.
pub fn xaead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; 24],
    sealed: &[u8; MAC_LEN + TAG_LEN],
    aad: &[u8],
) -> Result<Zeroizing<[u8; MAC_LEN]>, AuthFailed> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut body = Zeroizing::new([0u8; MAC_LEN]);
    body.copy_from_slice(&sealed[..MAC_LEN]);
    let tag = chacha20poly1305::Tag::try_from(&sealed[MAC_LEN..]).map_err(|_| AuthFailed)?;
    cipher
        .decrypt_inout_detached(nonce.into(), aad, body.as_mut_slice().into(), &tag)
        .map_err(|_| AuthFailed)?;
    Ok(body)
}

/// X25519; `None` when the result is all zeros (a low-order public key),
/// which WireGuard refuses.
pub fn dh(secret: &StaticSecret, public: &PublicKey) -> Option<Secret> {
    let shared = secret.diffie_hellman(public);
    shared
        .was_contributory()
        .then(|| Zeroizing::new(*shared.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn blake2s_matches_rfc_7693() {
        // RFC 7693 appendix B: BLAKE2s-256("abc").
        assert_eq!(
            hash(&[b"ab", b"c"]).to_vec(),
            hex("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
        );
    }

    #[test]
    fn keyed_blake2s_matches_the_reference_vectors() {
        // blake2s-kat.txt of the BLAKE2 reference: key 00..1f, empty input, then input 00.
        let key: Vec<u8> = (0u8..32).collect();
        let mut m = Blake2sMac::<blake2::digest::consts::U32>::new_from_slice(&key).unwrap();
        m.update(&[]);
        assert_eq!(
            m.finalize_fixed().to_vec(),
            hex("48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49")
        );
        // The 16-byte variant is a different function (the output length is a parameter), not a prefix.
        assert_ne!(
            mac(&key, &[]).to_vec(),
            hex("48a8997da407876b3d79c0d92325ad3b")
        );
    }

    #[test]
    fn hmac_blake2s_is_the_rfc_2104_construction() {
        // HMAC by hand: H((K ^ opad) || H((K ^ ipad) || m)), BLAKE2s block = 64 bytes.
        let key = [0x0bu8; 32];
        let msg = b"Hi There";
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        let inner = hash(&[&ipad, msg]);
        let expected = hash(&[&opad, &inner]);
        assert_eq!(*hmac(&key, &[msg]), expected);
    }

    #[test]
    fn kdf_outputs_chain_as_the_whitepaper_defines() {
        let ck = hash(&[b"chaining key"]);
        let input = b"input key material";
        let prk = hmac(&ck, &[input]);
        let t1 = hmac(&prk[..], &[&[1]]);
        let t2 = hmac(&prk[..], &[&t1[..], &[2]]);
        let t3 = hmac(&prk[..], &[&t2[..], &[3]]);
        assert_eq!(*kdf1(&ck, input), *t1);
        let (a, b) = kdf2(&ck, input);
        assert_eq!((*a, *b), (*t1, *t2));
        let (a, b, c) = kdf3(&ck, input);
        assert_eq!((*a, *b, *c), (*t1, *t2, *t3));
    }

    #[test]
    fn chacha20_poly1305_matches_rfc_8439() {
        // RFC 8439 section 2.8.2.
        let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let nonce = hex("070000004041424344454647");
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut buf = plaintext.to_vec();
        let tag = aead_key(&key)
            .seal_in_place_separate_tag(
                Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Aad::from(&aad),
                &mut buf,
            )
            .unwrap();
        assert_eq!(&buf[..16], &hex("d31a8d34648e60db7b86afbc53ef7ec2")[..]);
        assert_eq!(tag.as_ref(), &hex("1ae10b594f09e26a7e902ecbd0600691")[..]);
    }

    #[test]
    fn aead_roundtrip_and_tamper_detection() {
        let key = [7u8; 32];
        let mut sealed = [0u8; 48];
        aead_seal(&key, 3, &[9u8; 32], b"ad", &mut sealed);
        let mut out = [0u8; 32];
        aead_open(&key, 3, &sealed, b"ad", &mut out).unwrap();
        assert_eq!(out, [9u8; 32]);
        assert_eq!(
            aead_open(&key, 4, &sealed, b"ad", &mut out),
            Err(AuthFailed)
        );
        assert_eq!(
            aead_open(&key, 3, &sealed, b"da", &mut out),
            Err(AuthFailed)
        );
        sealed[0] ^= 1;
        assert_eq!(
            aead_open(&key, 3, &sealed, b"ad", &mut out),
            Err(AuthFailed)
        );
    }

    #[test]
    fn xchacha20_poly1305_matches_the_draft_vector() {
        // draft-irtf-cfrg-xchacha-03 appendix A.3.1 (first 16 bytes of its plaintext).
        let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let nonce: [u8; 24] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plaintext: [u8; 16] = b"Ladies and Gentl".to_owned();
        let mut out = [0u8; 32];
        xaead_seal(&key, &nonce, &plaintext, &aad, &mut out);
        assert_eq!(&out[..16], &hex("bd6d179d3e83d43b9576579493c0e939")[..]);
        assert_eq!(*xaead_open(&key, &nonce, &out, &aad).unwrap(), plaintext);
        out[20] ^= 1;
        assert!(xaead_open(&key, &nonce, &out, &aad).is_err());
    }

    #[test]
    fn x25519_matches_rfc_7748_and_refuses_low_order_points() {
        // RFC 7748 section 6.1.
        let alice: [u8; 32] =
            hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .try_into()
                .unwrap();
        let bob_public: [u8; 32] =
            hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .try_into()
                .unwrap();
        let shared = dh(&StaticSecret::from(alice), &PublicKey::from(bob_public)).unwrap();
        assert_eq!(
            shared.to_vec(),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
        assert_eq!(
            PublicKey::from(&StaticSecret::from(alice))
                .as_bytes()
                .to_vec(),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert!(dh(&StaticSecret::from(alice), &PublicKey::from([0u8; 32])).is_none());
    }
}
