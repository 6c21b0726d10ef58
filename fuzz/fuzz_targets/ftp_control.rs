//! Fuzzes the reader of FTP control messages that announce data connections
//! (227 and 229 replies, PORT and EPRT commands).
//!
//! `cargo +nightly fuzz run ftp_control corpus/ftp_control seeds/ftp_control`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::dpi::ftp::announcements;

fuzz_target!(|data: &[u8]| {
    let mut found = 0;
    announcements(data, |a| {
        found += 1;
        assert_ne!(a.port, 0, "port 0 is never announced");
    });
    // At most one announcement per line.
    assert!(found <= data.iter().filter(|&&b| b == b'\n').count() + 1);
});
