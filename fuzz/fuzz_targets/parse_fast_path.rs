//! The parser's fast path (untagged Ethernet, option-less unfragmented
//! IPv4, UDP or TCP) against the general parser: on every frame, the same
//! result. The first byte asks for the IPv4 header checksum to be made
//! valid, so that inputs get past it to the checks behind it.
//!
//! Run from the `fuzz/` directory: `cargo +nightly fuzz run parse_fast_path`

#![no_main]

use etherparse::checksum::Sum16BitWords;
use libfuzzer_sys::fuzz_target;
use patronus_core::packet::parse::{parse, parse_without_fast_path};

fuzz_target!(|data: &[u8]| {
    let Some((&fix, frame)) = data.split_first() else {
        return;
    };
    let mut frame = frame.to_vec();
    if fix & 1 == 1 && frame.len() >= 34 {
        frame[24..26].fill(0);
        let sum = Sum16BitWords::new()
            .add_slice(&frame[14..34])
            .ones_complement();
        frame[24..26].copy_from_slice(&sum.to_be().to_be_bytes());
    }
    assert_eq!(parse(&frame), parse_without_fast_path(&frame));
});
