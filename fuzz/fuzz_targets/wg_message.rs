//! Fuzzes the readers of untrusted tunnel bytes: WireGuard message parsing
//! and its accessors, the MAC1 check, decompression of a peer's
//! compressed packets, and path probes.
//!
//! `cargo +nightly fuzz run wg_message corpus/wg_message seeds/wg_message`

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use patronus_core::frame::{Frame, VecFrame};
use patronus_core::paths::probe::{echo_in_place, Kind, ProbeMessage, PROBE_LEN};
use patronus_core::tunnel::compress::{decompress, SCRATCH_LEN};
use patronus_core::tunnel::cookie::CookieChecker;
use patronus_core::tunnel::messages::{self, Message};
use patronus_core::tunnel::noise::StaticKeys;

fn keys() -> &'static StaticKeys {
    static K: OnceLock<StaticKeys> = OnceLock::new();
    K.get_or_init(|| StaticKeys::new([7; 32]))
}

fuzz_target!(|data: &[u8]| {
    match messages::parse(data) {
        Ok(Message::Initiation(m)) => {
            assert_eq!(data.len(), messages::INITIATION_LEN);
            let _ = (
                m.sender(),
                m.ephemeral(),
                m.encrypted_static(),
                m.encrypted_timestamp(),
            );
            let _ = CookieChecker::mac1_valid(keys(), data);
        }
        Ok(Message::Response(m)) => {
            assert_eq!(data.len(), messages::RESPONSE_LEN);
            let _ = (
                m.sender(),
                m.receiver(),
                m.ephemeral(),
                m.encrypted_nothing(),
            );
            let _ = CookieChecker::mac1_valid(keys(), data);
        }
        Ok(Message::CookieReply(m)) => {
            assert_eq!(data.len(), messages::COOKIE_REPLY_LEN);
            let _ = (m.receiver(), m.nonce(), m.encrypted_cookie());
        }
        Ok(Message::Data(m)) => {
            assert!(data.len() >= messages::DATA_MIN_LEN);
            assert_eq!(m.sealed_len(), data.len() - messages::DATA_HEADER_LEN);
            let _ = (m.receiver(), m.counter());
        }
        Err(_) => {}
    }
    // The same bytes as the plaintext of a data message from a peer.
    let mut frame = VecFrame::new(&data[..data.len().min(2000)]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    if let Ok(true) = decompress(&mut frame, &mut scratch, 1500) {
        assert!(frame.len() <= 1500);
    }
    // ...and as a path probe or echo: what decodes encodes back the same,
    // and echoing changes the kind alone.
    if let Ok(m) = ProbeMessage::parse(data) {
        let mut out = [0u8; PROBE_LEN];
        m.write(&mut out);
        assert_eq!(&out[..], &data[..PROBE_LEN]);
        let mut echoed = data.to_vec();
        if echo_in_place(&mut echoed) {
            assert_eq!(ProbeMessage::parse(&echoed).unwrap().kind, Kind::Echo);
            assert_eq!(echoed[1..], data[1..]);
        }
    }
});
