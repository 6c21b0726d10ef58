//! Fuzzes QUIC Initial handling: header parsing and opening, the frame walk
//! over decrypted bytes, and the Google QUIC hello reader.
//!
//! `cargo +nightly fuzz run quic_initial corpus/quic_initial seeds/quic_initial`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::dpi::quic::{
    crypto_frames, gquic_server_name, open_client_initial, version, Initial, MAX_DATAGRAM,
};
use patronus_core::dpi::tls::host_name;

fuzz_target!(|data: &[u8]| {
    let mut scratch = [0u8; MAX_DATAGRAM];
    match open_client_initial(data, &mut scratch) {
        Initial::Opened(v, plain) => {
            assert_eq!(version(data), Some(v));
            assert!(plain.start <= plain.end && plain.end <= data.len().min(MAX_DATAGRAM));
            crypto_frames(&scratch[plain], |_, _| {});
        }
        Initial::Quic(v) => assert_eq!(version(data), Some(v)),
        Initial::NotQuic => assert_eq!(version(data), None),
    }
    // The same bytes as a decrypted payload: every CRYPTO frame lies inside it.
    let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
    crypto_frames(data, |_offset, frame| {
        let at = frame.as_ptr() as usize;
        assert!(frame.is_empty() || (at >= start && at + frame.len() <= end));
    });
    if let Some(name) = gquic_server_name(data) {
        assert_eq!(host_name(name.as_bytes()), Some(name));
    }
});
