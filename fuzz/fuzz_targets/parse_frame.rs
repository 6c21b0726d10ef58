//! Fuzzes `packet::parse::parse` with arbitrary frames and checks the
//! invariants the forwarding path relies on.
//!
//! Run from the `fuzz/` directory (nightly toolchain, cargo-fuzz):
//! `cargo +nightly fuzz run parse_frame corpus/parse_frame seeds/parse_frame`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::packet::parse::{parse, Fragment, PacketMeta, ParseError, L3, L4};

fuzz_target!(|data: &[u8]| {
    let meta = match parse(data) {
        Ok(meta) => meta,
        Err(e) => {
            assert_eq!(ParseError::ALL[e.index()], e);
            return;
        }
    };

    // Offsets are ordered and inside the frame.
    assert_eq!(usize::from(meta.frame_len), data.len());
    assert!(meta.l3_offset <= meta.l4_offset, "{meta:?}");
    assert!(meta.l4_offset <= meta.ip_end, "{meta:?}");
    assert!(meta.ip_end <= meta.frame_len, "{meta:?}");
    assert!(matches!(meta.l3_offset, 14 | 18 | 22), "{meta:?}");
    assert_eq!(meta.vlan.is_some(), meta.l3_offset > 14);
    assert_eq!(data[..6], meta.dst_mac);
    assert_eq!(data[6..12], meta.src_mac);

    // A flow key exactly for IP, and building it is deterministic.
    let key = meta.flow_key();
    match meta.l3 {
        L3::Arp(_) => {
            assert!(key.is_none());
            assert_eq!(meta.l4, L4::None);
            assert_eq!(meta.ip_end, meta.frame_len);
        }
        L3::Ipv4(ip) => {
            assert!(key.is_some());
            assert_eq!(meta.l4_offset - meta.l3_offset, u16::from(ip.header_len));
            assert_eq!(meta.ip_end - meta.l3_offset, ip.total_len);
            if ip.fragment == Fragment::Later {
                assert_eq!(meta.l4, L4::None);
            }
        }
        L3::Ipv6(ip) => {
            assert!(key.is_some());
            assert_eq!(meta.ip_end - meta.l3_offset, 40 + ip.payload_len);
            if ip.fragment == Fragment::Later {
                assert_eq!(meta.l4, L4::None);
            }
        }
    }
    assert_eq!(key, meta.flow_key());

    // Trailing bytes after the packet (Ethernet padding) never change the result.
    let end = match meta.l3 {
        L3::Arp(_) => meta.l4_offset,
        L3::Ipv4(_) | L3::Ipv6(_) => meta.ip_end,
    };
    let trimmed = PacketMeta {
        frame_len: end,
        ip_end: end,
        ..meta
    };
    assert_eq!(parse(&data[..usize::from(end)]), Ok(trimmed));
});
