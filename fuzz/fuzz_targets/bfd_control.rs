//! Fuzzes the BFD Control packet decoder: it never panics, and whatever it
//! accepts encodes back to a packet that decodes the same.
//!
//! `cargo +nightly fuzz run bfd_control corpus/bfd_control seeds/bfd_control`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::bfd::packet::{ControlPacket, MAX_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ControlPacket::parse(data) {
        let mut buf = [0u8; MAX_LEN];
        let len = p.encode(&mut buf).expect("room for any packet");
        assert_eq!(ControlPacket::parse(&buf[..len]), Ok(p));
    }
});
