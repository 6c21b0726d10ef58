//! The packet path alone, without DPDK: `Pipeline::run` over bursts of 32
//! UDP/IPv4 frames of 4096 flows toward a resolved next hop, the steady
//! state of the forwarding benchmark. Each frame is refilled from its
//! template before the pass; `refill_baseline` measures that (and the trip
//! through the burst) alone.
//!
//! Run with `cargo bench -p patronus-core --bench gateway`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use patronus_core::config::{Config, Snapshot};
use patronus_core::frame::VecFrame;
use patronus_core::neighbor::{NeighborEvent, NeighborManager, NeighborShared, NeighborSnapshot};
use patronus_core::pipeline::{Burst, Context, Next, Pipeline, PipelineSetup};
use patronus_core::tunnel::memory::MemoryIo;
use patronus_core::worker::tunnel_inboxes;

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

fn setup(extra: &str) -> (Snapshot, Arc<NeighborSnapshot>) {
    let mut cfg = Config::from_toml(&format!("{CONFIG}{extra}"))
        .unwrap()
        .validate(1)
        .unwrap();
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

/// The frames of the benchmark going round: refilled from the templates,
/// into the burst, through the pipeline (or not, for the baseline), and
/// back, so that nothing is allocated in the timed loop.
struct Carousel {
    templates: Vec<Vec<u8>>,
    next: usize,
    spare: Vec<VecFrame>,
    burst: Box<Burst<VecFrame>>,
}

impl Carousel {
    fn turn(&mut self, pass: impl FnOnce(&mut Burst<VecFrame>)) {
        for mut frame in self.spare.drain(..) {
            frame.refill(&self.templates[self.next]);
            self.next = (self.next + 1) % self.templates.len();
            let _ = self.burst.push_received(0, frame);
        }
        pass(&mut self.burst);
        let spare = &mut self.spare;
        self.burst.drain(|next, _, frame| {
            debug_assert_eq!(next, Next::Transmit(1));
            spare.push(frame);
        });
    }
}

fn pipeline(cfg: &Snapshot) -> Pipeline<VecFrame> {
    let (events, keep) = crossbeam_channel::bounded(1024);
    // The receiving end lives as long as the benchmark.
    std::mem::forget(keep);
    let setup = PipelineSetup {
        worker: 0,
        inboxes: tunnel_inboxes(1),
        shared_uplinks: std::sync::Arc::default(),
        announcements: patronus_core::dpi::Announcements::new(1),
        events,
        seed: 7,
        now_ns: 0,
    };
    Pipeline::new(cfg, setup)
}

fn bench(c: &mut Criterion) {
    let (cfg, neighbors) = setup("");
    // The same, classification off: the difference is DPI's cost per burst
    // once every flow's verdict is final (these flows' payloads name
    // nothing, so each is inspected to its packet limit first).
    let (cfg_off, neighbors_off) = setup("[dpi]\nenabled = false\n");
    let mut with_dpi = pipeline(&cfg);
    let mut without_dpi = pipeline(&cfg_off);
    let mut env = MemoryIo::seeded(7);
    let templates: Vec<Vec<u8>> = (0..FLOWS).map(frame).collect();
    let mut carousel = Carousel {
        spare: templates[..BURST]
            .iter()
            .map(|f| VecFrame::new(f))
            .collect(),
        templates,
        next: 0,
        burst: Burst::boxed(),
    };
    let ctx = Context {
        cfg: &cfg,
        neighbors: &neighbors,
        fwd_generation: 1,
        now_ns: 1_000_000_000,
    };
    let ctx_off = Context {
        cfg: &cfg_off,
        neighbors: &neighbors_off,
        ..ctx
    };
    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(BURST as u64));
    // The 60-byte copy per frame and the trip through the burst, alone.
    group.bench_function("refill_baseline", |b| b.iter(|| carousel.turn(|_| {})));
    group.bench_function("process_burst_64B_4096_flows", |b| {
        b.iter(|| carousel.turn(|burst| with_dpi.run(&ctx, burst, &mut env)))
    });
    group.bench_function("process_burst_64B_4096_flows_dpi_off", |b| {
        b.iter(|| carousel.turn(|burst| without_dpi.run(&ctx_off, burst, &mut env)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
