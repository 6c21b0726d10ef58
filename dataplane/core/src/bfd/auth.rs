//! Keyed SHA1 and Meticulous Keyed SHA1 authentication (RFC 5880 §6.7.4):
//! the digest is SHA1 over the whole packet with the key (zero-padded to
//! 20 bytes) in the digest's place; the sequence number guards against
//! replay within a window of 3 × Detect Mult. Simple password and MD5 are
//! not offered: the first sends the key in clear, the second is broken.

use std::path::Path;

use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::packet::{ControlPacket, Sha1Auth, HEADER_LEN};
use crate::labels::labelled_enum;

/// Longest key (the digest's length).
pub const MAX_KEY_LEN: usize = 20;

/// A key and how it is used.
#[derive(Clone)]
pub struct Sha1Key {
    id: u8,
    /// Zero-padded to 20 bytes, as the digest covers it.
    key: Zeroizing<[u8; MAX_KEY_LEN]>,
    meticulous: bool,
}

impl std::fmt::Debug for Sha1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sha1Key")
            .field("id", &self.id)
            .field("meticulous", &self.meticulous)
            .finish_non_exhaustive()
    }
}

/// Two keys are the same key when id, type and secret are (compared in
/// constant time): a reloaded configuration with the same key keeps its
/// sessions as they are.
impl PartialEq for Sha1Key {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.meticulous == other.meticulous
            && bool::from(self.key.as_slice().ct_eq(other.key.as_slice()))
    }
}

impl Eq for Sha1Key {}

impl Sha1Key {
    /// Key `id` with the secret `key` (1-20 bytes).
    pub fn new(id: u8, key: &[u8], meticulous: bool) -> Result<Sha1Key, String> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(format!(
                "a key is 1 to {MAX_KEY_LEN} bytes, not {}",
                key.len()
            ));
        }
        let mut padded = Zeroizing::new([0u8; MAX_KEY_LEN]);
        padded[..key.len()].copy_from_slice(key);
        Ok(Sha1Key {
            id,
            key: padded,
            meticulous,
        })
    }

    /// Key `id` from `path`: its bytes, a final newline left out. The file
    /// must be readable by its owner only.
    pub fn from_file(path: &Path, id: u8, meticulous: bool) -> Result<Sha1Key, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{shown}: readable by group or others (mode {:o}); chmod 600 it",
                meta.permissions().mode() & 0o777
            ));
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?);
        let key = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        Sha1Key::new(id, key, meticulous).map_err(|e| format!("{shown}: {e}"))
    }
}

labelled_enum! {
    /// Why a packet failed authentication.
    AuthError {
        /// Authenticated, to a session that uses none.
        Unexpected => "unexpected";
        /// Not authenticated, to a session that requires it.
        Missing => "missing";
        /// Another key id or type.
        Key => "key";
        /// A sequence number outside the window (a replay).
        Sequence => "sequence";
        /// The digest does not match.
        Digest => "digest";
    }
}

/// A session's authentication state (`bfd.XmitAuthSeq`, `bfd.RcvAuthSeq`).
#[derive(Debug, Clone)]
pub struct Authenticator {
    key: Sha1Key,
    xmit_seq: u32,
    /// The last sequence number accepted, once one was (`bfd.AuthSeqKnown`).
    rcv_seq: Option<u32>,
}

impl Authenticator {
    /// Authentication with `key`, our sequence starting at `first_seq`
    /// (random, so that a restart does not replay).
    pub fn new(key: Sha1Key, first_seq: u32) -> Self {
        Authenticator {
            key,
            xmit_seq: first_seq,
            rcv_seq: None,
        }
    }

    /// Encodes `p` authenticated into `out`; returns the length, or `None`
    /// when `out` is too short. The sequence number advances with every
    /// packet when meticulous, and stays otherwise.
    pub fn seal(&mut self, p: &ControlPacket, out: &mut [u8]) -> Option<usize> {
        let p = ControlPacket {
            auth: Some(Sha1Auth {
                meticulous: self.key.meticulous,
                key_id: self.key.id,
                sequence: self.xmit_seq,
                digest: *self.key.key,
            }),
            ..*p
        };
        let len = p.encode(out)?;
        let d = digest(&SHA1_FOR_LEGACY_USE_ONLY, &out[..len]);
        out[DIGEST_AT..DIGEST_AT + MAX_KEY_LEN].copy_from_slice(d.as_ref());
        if self.key.meticulous {
            self.xmit_seq = self.xmit_seq.wrapping_add(1);
        }
        Some(len)
    }

    /// Checks `p`, decoded from `bytes`, against the key and the window.
    pub fn verify(&mut self, bytes: &[u8], p: &ControlPacket) -> Result<(), AuthError> {
        let auth = p.auth.ok_or(AuthError::Missing)?;
        if auth.key_id != self.key.id || auth.meticulous != self.key.meticulous {
            return Err(AuthError::Key);
        }
        if let Some(last) = self.rcv_seq {
            let ahead = auth.sequence.wrapping_sub(last);
            let window = 3 * u32::from(p.detect_mult);
            let least = u32::from(self.key.meticulous);
            if ahead < least || ahead > window {
                return Err(AuthError::Sequence);
            }
        }
        let len = p.len();
        let mut copy = [0u8; HEADER_LEN + super::packet::SHA1_AUTH_LEN];
        let copy = copy.get_mut(..len).ok_or(AuthError::Digest)?;
        copy.copy_from_slice(bytes.get(..len).ok_or(AuthError::Digest)?);
        copy[DIGEST_AT..DIGEST_AT + MAX_KEY_LEN].copy_from_slice(&*self.key.key);
        let expected = digest(&SHA1_FOR_LEGACY_USE_ONLY, copy);
        if !bool::from(expected.as_ref().ct_eq(&auth.digest)) {
            return Err(AuthError::Digest);
        }
        self.rcv_seq = Some(auth.sequence);
        Ok(())
    }

    /// Forgets the remote's sequence, as RFC 5880 §6.8.1 asks after twice
    /// the detection time without a packet.
    pub fn forget_remote(&mut self) {
        self.rcv_seq = None;
    }
}

/// Where the digest sits in a packet.
const DIGEST_AT: usize = HEADER_LEN + 8;

/// RFC 5880 §6.8.6's authentication rule for a session with `auth`, or
/// none: a packet's A bit must match, and an authenticated one must verify.
pub fn check(
    auth: Option<&mut Authenticator>,
    bytes: &[u8],
    p: &ControlPacket,
) -> Result<(), AuthError> {
    match (auth, p.auth.is_some()) {
        (None, false) => Ok(()),
        (None, true) => Err(AuthError::Unexpected),
        (Some(a), _) => a.verify(bytes, p),
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::{example, State, MAX_LEN};
    use super::*;

    fn packet() -> ControlPacket {
        ControlPacket {
            my_discriminator: 1,
            your_discriminator: 2,
            ..example(State::Up)
        }
    }

    fn pair(meticulous: bool) -> (Authenticator, Authenticator) {
        let key = Sha1Key::new(5, b"correct horse", meticulous).unwrap();
        (
            Authenticator::new(key.clone(), 100),
            Authenticator::new(key, 0),
        )
    }

    fn send(a: &mut Authenticator) -> ([u8; MAX_LEN], ControlPacket) {
        let mut buf = [0u8; MAX_LEN];
        let len = a.seal(&packet(), &mut buf).unwrap();
        let p = ControlPacket::parse(&buf[..len]).unwrap();
        (buf, p)
    }

    #[test]
    fn a_sealed_packet_verifies_and_a_flipped_bit_does_not() {
        let (mut tx, mut rx) = pair(false);
        let (buf, p) = send(&mut tx);
        assert_eq!(rx.verify(&buf, &p), Ok(()));
        for at in [0, 10, 30, 51] {
            let (mut buf, _) = send(&mut tx);
            buf[at] ^= 0x01;
            let verdict = ControlPacket::parse(&buf)
                .map_err(|_| AuthError::Digest)
                .and_then(|p| rx.verify(&buf, &p));
            assert!(verdict.is_err(), "byte {at} flipped");
        }
        let other = Sha1Key::new(5, b"battery staple", false).unwrap();
        let (buf, p) = send(&mut Authenticator::new(other, 100));
        assert_eq!(rx.verify(&buf, &p), Err(AuthError::Digest));
    }

    #[test]
    fn the_digest_is_sha1_over_the_packet_with_the_key_in_its_place() {
        let (mut tx, _) = pair(false);
        let (buf, _) = send(&mut tx);
        let mut with_key = buf;
        with_key[DIGEST_AT..DIGEST_AT + 20].copy_from_slice(&*tx.key.key);
        let d = digest(&SHA1_FOR_LEGACY_USE_ONLY, &with_key);
        assert_eq!(&buf[DIGEST_AT..DIGEST_AT + 20], d.as_ref());
        assert_eq!(&buf[24..28], &[4, 28, 5, 0], "type, length, key id");
    }

    #[test]
    fn meticulous_sequence_numbers_must_advance_within_the_window() {
        let (mut tx, mut rx) = pair(true);
        let (first, p1) = send(&mut tx);
        let (second, p2) = send(&mut tx);
        assert_eq!(p2.auth.unwrap().sequence, p1.auth.unwrap().sequence + 1);
        assert_eq!(rx.verify(&first, &p1), Ok(()));
        assert_eq!(rx.verify(&second, &p2), Ok(()));
        assert_eq!(
            rx.verify(&second, &p2),
            Err(AuthError::Sequence),
            "a replay"
        );
        // Up to 3 × Detect Mult ahead is a gap of lost packets; beyond, not.
        for _ in 0..8 {
            send(&mut tx);
        }
        let (ninth, p9) = send(&mut tx);
        assert_eq!(rx.verify(&ninth, &p9), Ok(()));
        for _ in 0..9 {
            send(&mut tx);
        }
        let (far, pf) = send(&mut tx);
        assert_eq!(rx.verify(&far, &pf), Err(AuthError::Sequence));
        rx.forget_remote();
        assert_eq!(rx.verify(&far, &pf), Ok(()), "after a long silence");
    }

    #[test]
    fn keyed_sha1_accepts_the_same_sequence_again() {
        let (mut tx, mut rx) = pair(false);
        let (buf, p) = send(&mut tx);
        assert_eq!(rx.verify(&buf, &p), Ok(()));
        let (again, p2) = send(&mut tx);
        assert_eq!(rx.verify(&again, &p2), Ok(()));
    }

    #[test]
    fn the_a_bit_must_match_the_session() {
        let (mut tx, mut rx) = pair(false);
        let (buf, p) = send(&mut tx);
        assert_eq!(check(None, &buf, &p), Err(AuthError::Unexpected));
        let mut plain = [0u8; MAX_LEN];
        let len = packet().encode(&mut plain).unwrap();
        let pp = ControlPacket::parse(&plain[..len]).unwrap();
        assert_eq!(check(None, &plain, &pp), Ok(()));
        assert_eq!(check(Some(&mut rx), &plain, &pp), Err(AuthError::Missing));
        let wrong_type = Sha1Key::new(5, b"correct horse", true).unwrap();
        let (buf, p) = send(&mut Authenticator::new(wrong_type, 1));
        assert_eq!(rx.verify(&buf, &p), Err(AuthError::Key));
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused_and_its_debug_hides_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("patronus-auth-bfd-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bfd.key");
        std::fs::write(&path, b"s3cret-key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Sha1Key::from_file(&path, 1, true).unwrap_err();
        assert!(err.contains("mode 640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = Sha1Key::from_file(&path, 1, true).unwrap();
        assert_eq!(&key.key[..10], b"s3cret-key");
        assert_eq!(key.key[10], 0, "the newline is not part of the key");
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!(Sha1Key::new(1, &[7; 21], false).is_err());
        assert!(Sha1Key::new(1, b"", false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
