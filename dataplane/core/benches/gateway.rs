//! The forwarding logic alone, without DPDK: `Gateway::process_burst` over
//! bursts of 32 UDP/IPv4 frames of 4096 flows toward a resolved next hop,
//! the steady state of the forwarding benchmark. Frames are copied in fresh
//! outside the timed part.
//!
//! Run with `cargo bench -p patronus-core --bench gateway`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use patronus_core::config::{Config, Snapshot};
use patronus_core::frame::VecFrame;
use patronus_core::gateway::{Context, Gateway, Verdict};
use patronus_core::neighbor::{NeighborEvent, NeighborManager, NeighborShared, NeighborSnapshot};

const CONFIG: &str = r#"
[worker]
flow_capacity = 65536
[[port]]
name = "in"
device = "bench0"
addresses = ["10.255.0.1/16"]
[[port]]
name = "out"
device = "bench1"
addresses = ["192.0.2.1/24"]
[[route]]
prefix = "198.18.0.0/15"
via = "192.0.2.2"
"#;
const IN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const FLOWS: u32 = 4096;
const BURST: usize = 32;

fn setup() -> (Snapshot, Arc<NeighborSnapshot>) {
    let mut cfg = Config::from_toml(CONFIG).unwrap().validate(1).unwrap();
    cfg.set_port_macs(&[IN_MAC, [2, 0, 0, 0, 0, 0x22]]);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(NeighborShared::default());
    let mut manager = NeighborManager::new(cfg.neighbors.clone(), shared.clone(), rx);
    tx.send(NeighborEvent {
        port: 1,
        ip: "192.0.2.2".parse().unwrap(),
        mac: [2, 0, 0, 0, 0, 2],
        now_ns: 0,
        create: true,
    })
    .unwrap();
    manager.tick(0);
    (cfg, shared.load())
}

fn frame(i: u32) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], IN_MAC)
        .ipv4(
            [10, 0, (i >> 8) as u8, i as u8],
            [198, 18, 1, 1 + (i % 254) as u8],
            64,
        )
        .udp(1024 + (i % 60000) as u16, 5000)
        .write(&mut out, &[0x5a; 18])
        .unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let (cfg, neighbors) = setup();
    let (events, _keep) = crossbeam_channel::bounded(1024);
    let mut gateway = Gateway::new(&cfg, events, 7);
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(frame).collect();
    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(BURST as u64));
    // One persistent burst, refreshed in place from the templates each time
    // (a 60-byte copy per frame, measured alone as the baseline), so that no
    // allocation or page fault lands in the timed loop.
    let mut burst: Vec<VecFrame> = frames[..BURST].iter().map(|f| VecFrame::new(f)).collect();
    let mut next = 0usize;
    let refill = |burst: &mut [VecFrame], next: &mut usize| {
        for frame in burst.iter_mut() {
            frame.refill(&frames[*next]);
            *next = (*next + 1) % frames.len();
        }
    };
    group.bench_function("refill_baseline", |b| {
        b.iter(|| refill(&mut burst, &mut next))
    });
    group.bench_function("process_burst_64B_4096_flows", |b| {
        b.iter(|| {
            refill(&mut burst, &mut next);
            let ctx = Context {
                cfg: &cfg,
                neighbors: &neighbors,
                fwd_generation: 1,
                now_ns: 1_000_000_000,
            };
            let mut verdicts = [Verdict::Drop; BURST];
            gateway.process_burst(&ctx, 0, &mut burst, &mut verdicts);
            debug_assert_eq!(verdicts[0], Verdict::Transmit(1));
            verdicts
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
