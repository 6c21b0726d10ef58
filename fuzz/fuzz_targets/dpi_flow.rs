//! Fuzzes the whole classifier on one flow: the input is split into
//! packets (a length byte before each), alternating direction, fed to an
//! inspector with the built-in catalogue until its verdict is final.
//! Checks that the verdict comes within the inspection bounds and that every
//! reassembly buffer is returned.
//!
//! `cargo +nightly fuzz run dpi_flow corpus/dpi_flow seeds/dpi_flow`

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use patronus_core::dpi::{Classifier, FlowInspection, Inspector, Limits, Packet};
use patronus_core::packet::flow_key::Direction;

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::with_user_apps(&[]).expect("catalogue compiles"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, mut rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_packets: 8,
        max_bytes: 8192,
    };
    let mut inspector = Inspector::new(limits, 2);
    let mut flow = FlowInspection::default();
    let tcp = head & 1 == 1;
    let ports = [443, 53, 5353, 853, 3478, 8801, 1433, 514][usize::from(head >> 1) & 7];
    let mut verdict = None;
    let mut n = 0u32;
    // TCP sequence numbers per direction; the input's top bits jumble some.
    let mut seq = [1_000u32, 9_000u32];
    while let Some((&len, tail)) = rest.split_first() {
        let (payload, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        n += 1;
        let forward = n % 2 == 1;
        let d = usize::from(!forward);
        let this_seq = if len & 0x80 != 0 {
            seq[d].wrapping_sub(u32::from(len))
        } else {
            seq[d]
        };
        seq[d] = seq[d].wrapping_add(payload.len() as u32);
        let packet = Packet {
            seq: if tcp { this_seq } else { 0 },
            tcp,
            src_port: if forward { 40000 } else { ports },
            dst_port: if forward { ports } else { 40000 },
            dir: if forward {
                Direction::LoToHi
            } else {
                Direction::HiToLo
            },
            payload,
        };
        if let Some(v) = inspector.inspect(classifier(), &mut flow, &packet) {
            verdict = Some(v);
            break;
        }
    }
    let v = verdict.unwrap_or_else(|| inspector.finish(&mut flow));
    assert!(flow.is_done());
    assert!(flow.packets() <= limits.max_packets);
    let _ = (classifier().category(&v), classifier().name(&v));
    assert_eq!(inspector.free_buffers(), 2, "reassembly buffers returned");
});
