//! Fuzzes a path's BFD session as the tunnel feeds it: the input's first
//! byte picks its authentication (none, keyed SHA1, meticulous keyed SHA1),
//! the rest is a script of steps, each moving the clock and then either
//! delivering an inner packet (read as a datagram for our tunnel address,
//! then as a Control packet, checked by the session's authentication, then
//! taken by the session) or asking for what is due.
//! Nothing panics, and the session keeps its invariants: its next deadline
//! never lies in the past of a step that just handled its timeouts, and
//! whatever it sends decodes.
//!
//! `cargo +nightly fuzz run bfd_session corpus/bfd_session seeds/bfd_session`

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use patronus_core::bfd::auth::Sha1Key;
use patronus_core::bfd::packet::ControlPacket;
use patronus_core::bfd::session::Timers;
use patronus_core::paths::bfd::{control_payload, BfdEnds, Hops, PathBfd, MAX_DATAGRAM_LEN};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fuzz_target!(|data: &[u8]| {
    // The first byte picks the authentication: none, keyed SHA1 or
    // meticulous keyed SHA1.
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let auth = match mode % 3 {
        0 => None,
        m => Some(Sha1Key::new(1, b"fuzz key", m == 2).expect("a valid key")),
    };
    let ends = BfdEnds {
        local: LOCAL,
        remote: REMOTE,
        hops: Hops::One,
        timers: Timers {
            desired_min_tx_us: 10_000,
            required_min_rx_us: 10_000,
            detect_mult: 3,
        },
        auth,
    };
    let mut bfd = PathBfd::new(ends, 0x1234_5678, 1, 0);
    let mut now: u64 = 0;
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let mut rest = data;
    // Each step: 2 bytes of clock advance (µs), 1 byte of length, the packet.
    while let [a, b, len, tail @ ..] = rest {
        now += u64::from(u16::from_be_bytes([*a, *b])) * 1_000;
        let len = usize::from(*len).min(tail.len());
        let (inner, next) = tail.split_at(len);
        rest = next;
        if let Some((_, payload)) = control_payload(inner, LOCAL) {
            if let Ok(p) = ControlPacket::parse(payload) {
                if bfd.authenticate(payload, &p).is_ok() {
                    let _ = bfd.session.handle_packet(&p, now);
                }
            }
        }
        bfd.session.handle_timeout(now);
        bfd.take_changes();
        assert!(bfd.session.poll_timeout() > now || bfd.session.transmit_due(now));
        if let Some(n) = bfd.poll_datagram(now, &mut out) {
            let (ttl, payload) = control_payload(&out[..n], REMOTE).expect("ours is BFD");
            assert_eq!(ttl, 255);
            ControlPacket::parse(payload).expect("what we send decodes");
        }
    }
});
