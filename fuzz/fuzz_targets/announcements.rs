//! Fuzzes the readers of messages that announce other flows: FTP control
//! messages (227 and 229 replies, PORT and EPRT commands) and SIP session
//! descriptions (SDP media lines).
//!
//! `cargo +nightly fuzz run announcements corpus/announcements seeds/announcements`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::dpi::{ftp, sdp, Protocol};

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut found = 0;
    ftp::announcements(data, |a| {
        found += 1;
        assert_ne!(a.port, 0, "port 0 is never announced");
    });
    assert!(found <= lines, "at most one announcement per line");
    let mut streams = 0;
    sdp::streams(data, |s| {
        streams += 1;
        assert_ne!(s.port, 0, "port 0 is a stream turned off");
        assert!(matches!(s.protocol, Protocol::Rtp | Protocol::Rtcp));
        assert!(!s.addr.is_unspecified());
    });
    assert!(streams <= 16, "at most eight streams, each with its RTCP");
});
