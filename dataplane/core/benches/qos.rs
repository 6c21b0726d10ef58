//! QoS scheduler benchmarks: one enqueue and one dequeue per packet over
//! 4 096 tunnels and five classes, with rates too high to bind and with
//! the egress rate binding (the simulated clock advancing by what each
//! burst takes on the wire), in bursts of 32; and over 16 tunnels, where
//! everything stays in cache.
//!
//! Run with `cargo bench -p patronus-core --bench qos`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use patronus_core::qos::{Class, Layout, Released, Scheduler, ShaperConfig};
use patronus_core::BURST_SIZE;

const TUNNELS: usize = 4_096;
const WIRE_BYTES: u32 = 64;

/// xorshift64, for flow hashes and tunnels without a lookup table.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn scheduler(tunnels: usize, rate_bps: u64) -> Scheduler<u32> {
    let layout = Layout {
        tunnels,
        flow_queues: 16,
        packets: 65_536,
    };
    Scheduler::new(layout, ShaperConfig::new(rate_bps), 0).expect("valid")
}

/// Enqueues packet `id` for a random tunnel, class and flow.
fn offer(shaper: &mut Scheduler<u32>, tunnels: usize, rng: &mut Rng, id: u32, now: u64) {
    let r = rng.next();
    let tunnel = (r as usize) % tunnels;
    let class = Class::ALL[(r >> 16) as usize % Class::COUNT];
    // A handful of flows per tunnel and class.
    let flow = (r >> 32) as u32 & 7;
    let _ = shaper.enqueue(id, tunnel, class, flow, WIRE_BYTES, now);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("qos");
    group.throughput(Throughput::Elements(BURST_SIZE as u64));

    // Not binding: every burst queued is released at once.
    for tunnels in [TUNNELS, 16] {
        let mut shaper = scheduler(tunnels, 1_000_000_000_000);
        let mut rng = Rng(0x5EED_0905);
        let mut now = 0u64;
        let name = format!("enqueue_dequeue_unbound_{tunnels}_tunnels");
        group.bench_function(name, |b| {
            b.iter(|| {
                now += 1_000;
                for id in 0..BURST_SIZE as u32 {
                    offer(&mut shaper, tunnels, &mut rng, id, now);
                }
                let mut released = 0;
                shaper.dequeue(now, BURST_SIZE, |r| {
                    if let Released::Sent { packet, .. } = r {
                        released += black_box(packet) as usize & 1;
                    }
                });
                released
            })
        });
    }

    // Binding at 10 Gbit/s: 65 536 packets held, the clock advancing by
    // one burst's wire time per iteration, what leaves queued again.
    let rate_bps = 10_000_000_000u64;
    let mut shaper = scheduler(TUNNELS, rate_bps);
    let mut rng = Rng(0x5EED_0906);
    for id in 0..60_000 {
        offer(&mut shaper, TUNNELS, &mut rng, id, 0);
    }
    let burst_ns = BURST_SIZE as u64 * u64::from(WIRE_BYTES + 38) * 8 * 1_000_000_000 / rate_bps;
    let mut now = 0u64;
    let mut sent = Vec::with_capacity(BURST_SIZE);
    group.bench_function("enqueue_dequeue_binding_4096_tunnels", |b| {
        b.iter(|| {
            now += burst_ns;
            sent.clear();
            shaper.dequeue(now, BURST_SIZE, |r| match r {
                Released::Sent { packet, .. } => sent.push(packet),
                Released::Dropped { packet, .. } => sent.push(packet),
            });
            for &id in &sent {
                offer(&mut shaper, TUNNELS, &mut rng, id, now);
            }
            sent.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
