//! What the shaper adds to the whole worker loop, without DPDK: rounds of
//! `Worker::round` on memory queues, each taking a burst of 32 UDP/IPv4
//! frames of 4 096 flows from the LAN port and sending them out of the WAN
//! port, with that port unshaped (`unshaped`) and shaped as an uplink at
//! 400 Gbit/s, a rate that never binds (`shaped`): every packet classed,
//! hashed and offered to the scheduler. The clock moves 1 µs a round.
//!
//! `cargo bench -p patronus-core --bench shaper` times both with criterion.
//! With `SHAPER_ROUNDS=N` and `SHAPER_CASE=shaped|unshaped` it runs N rounds
//! of one case and exits instead, for instruction counts under callgrind
//! (`scripts/bench/shaper_instructions.sh`, counting inside `Loop::turn`),
//! which are stable where times on a shared machine are not.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, Throughput};
use etherparse::PacketBuilder;
use patronus_core::config::Config;
use patronus_core::frame::VecFrame;
use patronus_core::neighbor::{NeighborManager, NeighborShared};
use patronus_core::published::Published;
use patronus_core::stats::{SharedCounters, SharedQosStats, SharedTunnelStats};
use patronus_core::worker::memory::{ManualClock, MemoryHost, MemoryQueue, MemoryRx, MemoryTx};
use patronus_core::worker::{shaper_inboxes, tunnel_inboxes, Worker, WorkerSetup};

const CONFIG: &str = r#"
[worker]
flow_capacity = 65536
[[port]]
name = "lan"
device = "bench0"
addresses = ["10.255.0.1/16"]
[[port]]
name = "wan"
device = "bench1"
addresses = ["192.0.2.1/24"]
[[route]]
prefix = "198.18.0.0/15"
via = "192.0.2.2"
[[neighbor]]
ip = "192.0.2.2"
mac = "02:00:00:00:00:02"
port = "wan"
"#;
const SHAPED: &str = r#"
[[uplink]]
name = "wan"
port = "wan"
rate_mbps = 400000
"#;
const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x22];
const FLOWS: u32 = 4096;
const BURST: usize = 32;

type BenchWorker = Worker<MemoryHost, MemoryRx, MemoryTx>;

/// One worker between a LAN queue it reads and a WAN queue it writes, with
/// the frames going round: what left is refilled and offered again.
struct Loop {
    worker: BenchWorker,
    clock: ManualClock,
    lan: MemoryQueue,
    wan: MemoryQueue,
    templates: Vec<Vec<u8>>,
    next: usize,
}

impl Loop {
    fn new(shaped: bool) -> Loop {
        let text = if shaped {
            format!("{CONFIG}{SHAPED}")
        } else {
            CONFIG.to_owned()
        };
        let mut cfg = Config::from_toml(&text).unwrap().validate(1).unwrap();
        cfg.set_port_macs(&[LAN_MAC, WAN_MAC]);
        assert_eq!(cfg.shapers.len(), usize::from(shaped));
        let clock = ManualClock::default();
        clock.set(1_000_000_000);
        let neighbors = Arc::new(NeighborShared::default());
        let (events, learned) = crossbeam_channel::bounded(1024);
        let mut manager = NeighborManager::new(cfg.neighbors.clone(), neighbors.clone(), learned);
        manager.configure(&cfg.neighbors, &cfg.static_neighbors);
        manager.tick(clock.now());
        let (lan, wan) = (MemoryQueue::default(), MemoryQueue::default());
        let worker = Worker::new(WorkerSetup {
            index: 0,
            rx: vec![(0, MemoryRx(lan.clone()))],
            tx: vec![
                MemoryTx::new(MemoryQueue::default()),
                MemoryTx::new(wan.clone()),
            ],
            host: MemoryHost::new(clock.clone(), 7),
            config: Arc::new(Published::new(cfg)),
            neighbors,
            events,
            stats: Arc::new(SharedCounters::default()),
            tunnel_stats: Arc::new(SharedTunnelStats::default()),
            inboxes: tunnel_inboxes(1),
            shared_uplinks: Arc::default(),
            announcements: patronus_core::dpi::Announcements::new(1),
            shaper_inboxes: shaper_inboxes(1),
            qos_stats: Arc::new(SharedQosStats::default()),
            stop: Arc::default(),
            seed: 7,
        });
        let templates: Vec<Vec<u8>> = (0..FLOWS).map(frame).collect();
        for t in &templates[..BURST] {
            lan.push(VecFrame::new(t));
        }
        let mut bench = Loop {
            worker,
            clock,
            lan,
            wan,
            templates,
            next: BURST,
        };
        // Every flow seen and past DPI before anything is measured.
        for _ in 0..2 * FLOWS as usize / BURST {
            bench.turn();
        }
        bench
    }

    /// One round: a burst in, the same burst out, refilled for the next.
    /// Out of line, so that callgrind can count its instructions alone.
    #[inline(never)]
    fn turn(&mut self) {
        self.clock.advance(1_000);
        self.worker.round();
        for mut f in self.wan.drain() {
            f.refill(&self.templates[self.next]);
            self.next = (self.next + 1) % self.templates.len();
            self.lan.push(f);
        }
        assert_eq!(self.lan.len(), BURST, "every frame forwarded");
    }
}

fn frame(i: u32) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], LAN_MAC)
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

fn main() {
    if let Ok(rounds) = std::env::var("SHAPER_ROUNDS") {
        let rounds: usize = rounds.parse().expect("SHAPER_ROUNDS: a number of rounds");
        let case = std::env::var("SHAPER_CASE").unwrap_or_default();
        let mut bench = Loop::new(match case.as_str() {
            "shaped" => true,
            "unshaped" => false,
            other => panic!("SHAPER_CASE: {other:?} is neither shaped nor unshaped"),
        });
        for _ in 0..rounds {
            bench.turn();
        }
        println!("{case}: {rounds} rounds of {BURST} packets");
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("worker_round");
    group.throughput(Throughput::Elements(BURST as u64));
    for (name, shaped) in [("unshaped", false), ("shaped", true)] {
        let mut bench = Loop::new(shaped);
        group.bench_function(name, |b| b.iter(|| bench.turn()));
    }
    group.finish();
    c.final_summary();
}
