//! One keypair's transport data: sealing packets in place in their buffer
//! with `ring`'s ChaCha20-Poly1305, and opening them against the replay
//! window (whitepaper section 5.4.6).
//!
//! `ring` keeps its expanded ChaCha20 key inside `LessSafeKey`, which it
//! offers no way to wipe; every other copy of the keys (the handshake's
//! outputs) is wiped when dropped.

use ring::aead::{Aad, LessSafeKey, Tag};

use super::crypto::{aead_key, aead_nonce, TAG_LEN};
use super::messages::{write_data_header, DATA_HEADER_LEN};
use super::noise::TransportKeys;
use super::replay::{ReplayWindow, REJECT_AFTER_MESSAGES};
use crate::frame::Frame;

/// Why a packet could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// The session's counter is used up; it must not send again.
    Exhausted,
    /// The buffer has no room for the header, padding or tag.
    NoRoom,
}

/// Why a received data message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Its counter is behind the window.
    Replay,
    /// Its counter is in the window and was already received.
    Duplicate,
    /// It failed authentication.
    Auth,
}

/// A keypair in use: our and the peer's index, the keys, the counters.
pub struct Session {
    /// Our index: data messages to us carry it.
    pub local_index: u32,
    /// The peer's index: our data messages carry it.
    pub remote_index: u32,
    /// When the handshake that made it completed (data-plane clock, ns).
    pub created_ns: u64,
    /// Whether we initiated that handshake (only initiators rekey by age).
    pub initiator: bool,
    send_key: LessSafeKey,
    receive_key: LessSafeKey,
    send_counter: u64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("created_ns", &self.created_ns)
            .field("initiator", &self.initiator)
            .field("sent", &self.send_counter)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session from a completed handshake's keys.
    pub fn new(
        keys: &TransportKeys,
        local_index: u32,
        remote_index: u32,
        created_ns: u64,
        initiator: bool,
    ) -> Self {
        Session {
            local_index,
            remote_index,
            created_ns,
            initiator,
            send_key: aead_key(&keys.send),
            receive_key: aead_key(&keys.receive),
            send_counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Messages sent so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.send_counter
    }

    /// Turns the IP packet that `frame` holds into a transport data
    /// message, in place: zero padding to a multiple of 16 (never past
    /// `mtu`), the sealed packet and its tag, the header in front.
    /// Returns the counter used.
    pub fn seal<F: Frame>(&mut self, frame: &mut F, mtu: usize) -> Result<u64, SealError> {
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::Exhausted);
        }
        let len = frame.len();
        let padded = len.next_multiple_of(16).min(mtu.max(len));
        if !frame.set_len(padded + TAG_LEN) {
            return Err(SealError::NoRoom);
        }
        if !frame.prepend(DATA_HEADER_LEN) {
            frame.set_len(len);
            return Err(SealError::NoRoom);
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        let data = frame.data_mut();
        let (header, rest) = data.split_at_mut(DATA_HEADER_LEN);
        write_data_header(
            header.try_into().expect("16 bytes"),
            self.remote_index,
            counter,
        );
        let (body, tag_out) = rest.split_at_mut(padded);
        body[len..].fill(0);
        let tag: Tag = self
            .send_key
            .seal_in_place_separate_tag(aead_nonce(counter), Aad::empty(), body)
            .expect("a packet is far below ChaCha20-Poly1305's length limit");
        tag_out.copy_from_slice(tag.as_ref());
        Ok(counter)
    }

    /// Whether a message with `counter` could be new, before decrypting it.
    pub fn may_accept(&self, counter: u64) -> bool {
        self.replay.may_accept(counter)
    }

    /// Opens the data message `frame` holds (header included) in place,
    /// leaving only the plaintext (possibly empty: a keepalive).
    pub fn open<F: Frame>(&mut self, frame: &mut F, counter: u64) -> Result<(), OpenError> {
        if !self.replay.may_accept(counter) {
            return Err(self.refusal(counter));
        }
        let data = frame.data_mut();
        let plain_len = self
            .receive_key
            .open_in_place(
                aead_nonce(counter),
                Aad::empty(),
                &mut data[DATA_HEADER_LEN..],
            )
            .map_err(|_| OpenError::Auth)?
            .len();
        // Authenticated: only now may the counter move the window.
        if !self.replay.accept(counter) {
            return Err(self.refusal(counter));
        }
        frame.trim_front(DATA_HEADER_LEN);
        frame.set_len(plain_len);
        Ok(())
    }

    /// Why a message with `counter` cannot be accepted.
    fn refusal(&self, counter: u64) -> OpenError {
        if self.replay.seen(counter) {
            OpenError::Duplicate
        } else {
            OpenError::Replay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::VecFrame;
    use crate::tunnel::crypto::hash;
    use zeroize::Zeroizing;

    fn pair() -> (Session, Session) {
        let a = Zeroizing::new(hash(&[b"a"]));
        let b = Zeroizing::new(hash(&[b"b"]));
        let ours = TransportKeys {
            send: a.clone(),
            receive: b.clone(),
        };
        let theirs = TransportKeys {
            send: b,
            receive: a,
        };
        (
            Session::new(&ours, 1, 2, 0, true),
            Session::new(&theirs, 2, 1, 0, false),
        )
    }

    #[test]
    fn sealed_packets_open_to_the_padded_plaintext_once() {
        let (mut tx, mut rx) = pair();
        let packet: Vec<u8> = (0..37u8).collect();
        let mut frame = VecFrame::new(&packet);
        assert_eq!(tx.seal(&mut frame, 1420), Ok(0));
        assert_eq!(frame.len(), 16 + 48 + 16, "header, padded to 48, tag");
        assert_eq!(&frame.data()[..8], &[4, 0, 0, 0, 2, 0, 0, 0]);
        let sealed = frame.clone();
        rx.open(&mut frame, 0).unwrap();
        assert_eq!(&frame.data()[..37], &packet[..]);
        assert!(frame.data()[37..].iter().all(|&b| b == 0));
        let mut again = sealed;
        assert_eq!(rx.open(&mut again, 0), Err(OpenError::Duplicate));
    }

    #[test]
    fn padding_never_exceeds_the_mtu() {
        let (mut tx, _) = pair();
        let mut frame = VecFrame::new(&[1u8; 1419]);
        tx.seal(&mut frame, 1420).unwrap();
        assert_eq!(frame.len(), 16 + 1420 + 16);
        let mut frame = VecFrame::new(&[1u8; 1420]);
        tx.seal(&mut frame, 1420).unwrap();
        assert_eq!(frame.len(), 16 + 1420 + 16);
    }

    #[test]
    fn a_tampered_or_misdirected_message_is_refused_and_does_not_move_the_window() {
        let (mut tx, mut rx) = pair();
        let mut frame = VecFrame::new(&[7u8; 64]);
        let counter = tx.seal(&mut frame, 1420).unwrap();
        let mut bad = frame.clone();
        bad.data_mut()[30] ^= 1;
        assert_eq!(rx.open(&mut bad, counter), Err(OpenError::Auth));
        // The wrong counter is the wrong nonce.
        let mut wrong = frame.clone();
        assert_eq!(rx.open(&mut wrong, counter + 1), Err(OpenError::Auth));
        rx.open(&mut frame, counter).unwrap();
    }

    #[test]
    fn keepalives_open_to_nothing() {
        let (mut tx, mut rx) = pair();
        let mut frame = VecFrame::empty();
        tx.seal(&mut frame, 1420).unwrap();
        assert_eq!(frame.len(), 32);
        rx.open(&mut frame, 0).unwrap();
        assert!(frame.is_empty());
    }
}
