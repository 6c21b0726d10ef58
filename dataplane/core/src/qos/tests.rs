//! The scheduler on a simulated clock: sources keep queues backlogged (or
//! offer a fixed rate), the driver dequeues whenever the scheduler says
//! something may leave, and what left is measured over a window after a
//! warm-up.

use super::codel::CodelParams;
use super::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// A test packet: who sent it and what it costs.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    source: usize,
    wire_bytes: u32,
}

/// Offered traffic.
#[derive(Debug, Clone)]
struct Source {
    tunnel: usize,
    class: Class,
    flow_hash: u32,
    /// Packet sizes, used in turn.
    sizes: Vec<u32>,
    /// `None`: keeps `depth` packets queued at all times. `Some(bps)`:
    /// offers that rate.
    rate_bps: Option<u64>,
    depth: usize,
    /// For a paced source: reacts to its drops as TCP Reno would, with
    /// this round trip (ns): halves its rate on a drop (once a round
    /// trip) and adds a full-size packet per round trip otherwise.
    responsive_rtt_ns: Option<u64>,
}

impl Source {
    fn greedy(tunnel: usize, class: Class, flow_hash: u32, sizes: &[u32]) -> Self {
        Source {
            tunnel,
            class,
            flow_hash,
            sizes: sizes.to_vec(),
            rate_bps: None,
            depth: 64,
            responsive_rtt_ns: None,
        }
    }

    fn paced(tunnel: usize, class: Class, flow_hash: u32, size: u32, rate_bps: u64) -> Self {
        Source {
            rate_bps: Some(rate_bps),
            ..Source::greedy(tunnel, class, flow_hash, &[size])
        }
    }
}

/// What a run measured, per source, inside the window.
#[derive(Debug, Default, Clone)]
struct Measured {
    /// Bytes as charged (wire bytes and overhead).
    bytes: Vec<u64>,
    sojourns_ns: Vec<Vec<u64>>,
    dropped: Vec<u64>,
    refused: Vec<u64>,
    window_ns: u64,
}

impl Measured {
    fn rate_bps(&self, source: usize) -> f64 {
        self.bytes[source] as f64 * 8.0 * S as f64 / self.window_ns as f64
    }

    fn total_bps(&self) -> f64 {
        (0..self.bytes.len()).map(|s| self.rate_bps(s)).sum()
    }

    fn sojourn_percentile_ms(&self, source: usize, p: f64) -> f64 {
        let mut all = self.sojourns_ns[source].clone();
        assert!(!all.is_empty(), "source {source} sent nothing");
        all.sort_unstable();
        let rank = ((all.len() - 1) as f64 * p / 100.0).round() as usize;
        all[rank] as f64 / MS as f64
    }
}

/// Runs `sources` through `scheduler` from `start_ns` for `warmup_ns` then
/// `window_ns`, measuring the window.
fn run_from(
    scheduler: &mut Scheduler<Packet>,
    sources: &[Source],
    start_ns: u64,
    warmup_ns: u64,
    window_ns: u64,
) -> Measured {
    let overhead = u64::from(scheduler.config().overhead_bytes);
    let mut measured = Measured {
        bytes: vec![0; sources.len()],
        sojourns_ns: vec![Vec::new(); sources.len()],
        dropped: vec![0; sources.len()],
        refused: vec![0; sources.len()],
        window_ns,
    };
    let mut queued = vec![0usize; sources.len()];
    let mut sent = vec![0usize; sources.len()];
    let mut next_arrival: Vec<u64> = vec![start_ns; sources.len()];
    let mut rates: Vec<u64> = sources.iter().map(|s| s.rate_bps.unwrap_or(0)).collect();
    let mut congested = vec![false; sources.len()];
    let mut last_change = vec![start_ns; sources.len()];
    let (from, until) = (start_ns + warmup_ns, start_ns + warmup_ns + window_ns);
    let mut now = start_ns;
    while now < until {
        for (s, source) in sources.iter().enumerate() {
            let mut offer = |scheduler: &mut Scheduler<Packet>, measured: &mut Measured| {
                let wire_bytes = source.sizes[sent[s] % source.sizes.len()];
                sent[s] += 1;
                let packet = Packet {
                    source: s,
                    wire_bytes,
                };
                let accepted = scheduler
                    .enqueue(
                        packet,
                        source.tunnel,
                        source.class,
                        source.flow_hash,
                        wire_bytes,
                        now,
                    )
                    .is_ok();
                if !accepted && now >= from {
                    measured.refused[s] += 1;
                }
                accepted
            };
            match source.rate_bps {
                None => {
                    while queued[s] < source.depth && offer(scheduler, &mut measured) {
                        queued[s] += 1;
                    }
                }
                Some(_) => {
                    while next_arrival[s] <= now {
                        let bits = 8 * u64::from(source.sizes[0]);
                        next_arrival[s] += (bits * S).div_ceil(rates[s]);
                        if offer(scheduler, &mut measured) {
                            queued[s] += 1;
                        } else {
                            congested[s] = true;
                        }
                    }
                }
            }
        }
        let next = scheduler.dequeue(now, 32, |released| match released {
            Released::Sent {
                packet, sojourn_ns, ..
            } => {
                queued[packet.source] -= 1;
                if now >= from {
                    measured.bytes[packet.source] += u64::from(packet.wire_bytes) + overhead;
                    measured.sojourns_ns[packet.source].push(sojourn_ns);
                }
            }
            Released::Dropped { packet, .. } => {
                queued[packet.source] -= 1;
                congested[packet.source] = true;
                if now >= from {
                    measured.dropped[packet.source] += 1;
                }
            }
        });
        for (s, source) in sources.iter().enumerate() {
            let Some(rtt) = source.responsive_rtt_ns else {
                continue;
            };
            if now.saturating_sub(last_change[s]) >= rtt {
                rates[s] = if congested[s] {
                    rates[s] / 2
                } else {
                    rates[s] + 8 * 1_500 * S / rtt
                }
                .max(100_000);
                congested[s] = false;
                last_change[s] = now;
            }
        }
        let arrivals = sources
            .iter()
            .zip(&next_arrival)
            .filter(|(source, _)| source.rate_bps.is_some())
            .map(|(_, at)| *at)
            .min()
            .unwrap_or(u64::MAX);
        let greedy_waiting = sources
            .iter()
            .enumerate()
            .any(|(s, source)| source.rate_bps.is_none() && queued[s] < source.depth);
        now = match next {
            Some(at) if at <= now => now,
            // A greedy source that had to be refused tries again a little
            // later, as an application would.
            _ if greedy_waiting && next.is_none() => now + MS,
            Some(at) => at.min(arrivals),
            None => arrivals,
        }
        .min(until);
        if next.is_some_and(|at| at <= now) && now == until {
            break;
        }
    }
    measured
}

fn run(
    scheduler: &mut Scheduler<Packet>,
    sources: &[Source],
    warmup_ns: u64,
    window_ns: u64,
) -> Measured {
    run_from(scheduler, sources, 0, warmup_ns, window_ns)
}

fn layout(tunnels: usize) -> Layout {
    Layout {
        tunnels,
        flow_queues: 64,
        packets: 8_192,
    }
}

fn scheduler(config: ShaperConfig) -> Scheduler<Packet> {
    Scheduler::new(layout(4), config, 0).expect("valid")
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured / expected - 1.0).abs() <= tolerance
}

/// The window that carries about `packets` packets of `mean_bytes` at
/// `rate_bps`.
fn window_for(packets: u64, mean_bytes: u64, rate_bps: u64) -> u64 {
    packets * mean_bytes * 8 * S / rate_bps
}

#[test]
fn the_egress_rate_is_kept_within_half_a_percent_at_every_speed_and_size() {
    const MIXED: &[u32] = &[64, 576, 1500, 64, 64, 1500, 1500, 40];
    for rate_bps in [64_000, 10_000_000, 1_000_000_000, 10_000_000_000] {
        for sizes in [&[64][..], &[1500][..], MIXED] {
            let mut shaper = scheduler(ShaperConfig::new(rate_bps));
            let mean = sizes.iter().map(|&b| u64::from(b) + 38).sum::<u64>() / sizes.len() as u64;
            let window = window_for(5_000, mean, rate_bps);
            let sources = [Source::greedy(0, Class::Standard, 1, sizes)];
            let measured = run(&mut shaper, &sources, window / 10, window);
            let got = measured.rate_bps(0);
            assert!(
                within(got, rate_bps as f64, 0.005),
                "{rate_bps} bit/s with {sizes:?} B: {got:.0} bit/s"
            );
        }
    }
}

#[test]
fn a_full_size_packet_on_a_64_kbit_tunnel_still_leaves_at_the_right_average_rate() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000_000));
    shaper
        .set_tunnel_rate(
            1,
            Some(TunnelRate {
                rate_bps: 64_000,
                burst_bytes: 200,
            }),
            0,
        )
        .unwrap();
    let sources = [Source::greedy(1, Class::Bulk, 7, &[1500])];
    let window = window_for(2_000, 1538, 64_000);
    let measured = run(&mut shaper, &sources, 10 * S, window);
    let got = measured.rate_bps(0);
    assert!(within(got, 64_000.0, 0.005), "{got:.0} bit/s");
}

#[test]
fn backlogged_classes_share_by_their_weights_within_one_percent() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let sources = [
        Source::greedy(0, Class::Interactive, 1, &[1500, 200]),
        Source::greedy(0, Class::Streaming, 2, &[1200]),
        Source::greedy(0, Class::Standard, 3, &[600, 1500]),
        Source::greedy(0, Class::Bulk, 4, &[1500]),
    ];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    let total = measured.total_bps();
    assert!(within(total, 10e6, 0.005), "total {total:.0}");
    for (s, weight) in [40.0, 30.0, 20.0, 10.0].into_iter().enumerate() {
        let share = measured.rate_bps(s) / total;
        assert!(
            within(share, weight / 100.0, 0.01),
            "{:?}: share {share:.4}",
            sources[s].class
        );
    }
}

#[test]
fn idle_classes_leave_their_share_to_those_with_demand() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let sources = [
        Source::greedy(0, Class::Standard, 3, &[1500]),
        Source::greedy(0, Class::Bulk, 4, &[1500]),
    ];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    assert!(within(measured.total_bps(), 10e6, 0.005));
    // Standard and Bulk weigh 20 and 10.
    let share = measured.rate_bps(0) / measured.total_bps();
    assert!(within(share, 2.0 / 3.0, 0.01), "share {share:.4}");

    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let measured = run(&mut shaper, &sources[1..], S, 20 * S);
    assert!(within(measured.total_bps(), 10e6, 0.005), "Bulk alone");
}

#[test]
fn realtime_goes_first_up_to_its_cap_and_uses_only_spare_capacity_beyond_it() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let sources = [
        Source::greedy(0, Class::RealTime, 1, &[200]),
        Source::greedy(0, Class::Bulk, 2, &[1500]),
    ];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    let realtime = measured.rate_bps(0) / measured.total_bps();
    assert!(within(realtime, 0.30, 0.01), "RealTime share {realtime:.4}");

    // Alone, it may use all of it.
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let measured = run(&mut shaper, &sources[..1], S, 20 * S);
    assert!(within(measured.rate_bps(0), 10e6, 0.005));
}

#[test]
fn a_call_under_its_cap_waits_at_most_a_frame_behind_a_saturating_bulk_transfer() {
    let mut shaper = scheduler(ShaperConfig::new(20_000_000));
    // G.711 at 20 ms: 50 packets of 200 B a second (80 kbit/s) against a
    // transfer keeping 64 full-size packets queued.
    let sources = [
        Source::paced(0, Class::RealTime, 1, 200, 80_000),
        Source::greedy(0, Class::Bulk, 2, &[1500]),
    ];
    let measured = run(&mut shaper, &sources, S, 30 * S);
    // One 1538 B frame at 20 Mbit/s is 0.62 ms; the egress burst another.
    let p99 = measured.sojourn_percentile_ms(0, 99.0);
    assert!(p99 < 1.5, "RealTime p99 sojourn {p99:.3} ms");
    assert_eq!(measured.dropped[0] + measured.refused[0], 0);
    assert!(within(measured.total_bps(), 20e6, 0.005));
}

#[test]
fn a_minimum_is_served_before_the_weights_share_the_rest() {
    let mut config = ShaperConfig::new(10_000_000);
    config.weighted[3].min_percent = 40;
    let mut shaper = scheduler(config);
    let sources = [
        Source::greedy(0, Class::Interactive, 1, &[1500]),
        Source::greedy(0, Class::Bulk, 2, &[1500]),
    ];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    // Bulk: its 40%, then a fifth (10 of 50) of the remaining 60%.
    let bulk = measured.rate_bps(1) / measured.total_bps();
    assert!(
        within(bulk, 0.40 + 0.60 / 5.0, 0.01),
        "Bulk share {bulk:.4}"
    );
}

#[test]
fn a_limit_is_never_exceeded_even_with_the_link_idle() {
    let mut config = ShaperConfig::new(10_000_000);
    config.weighted[1].limit_percent = 25;
    let mut shaper = scheduler(config);
    let sources = [Source::greedy(0, Class::Streaming, 1, &[1500])];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    assert!(within(measured.rate_bps(0), 2.5e6, 0.005));
}

#[test]
fn tunnels_share_the_egress_fairly_and_keep_to_their_own_rates() {
    let mut shaper = scheduler(ShaperConfig::new(30_000_000));
    shaper
        .set_tunnel_rate(
            2,
            Some(TunnelRate {
                rate_bps: 4_000_000,
                burst_bytes: 0,
            }),
            0,
        )
        .unwrap();
    let sources = [
        Source::greedy(0, Class::Standard, 1, &[1500]),
        Source::greedy(1, Class::Standard, 1, &[300]),
        Source::greedy(2, Class::Standard, 1, &[1500]),
    ];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    assert!(within(measured.rate_bps(2), 4e6, 0.005));
    // The other two split the remaining 26 Mbit/s in bytes, not packets.
    for s in 0..2 {
        assert!(
            within(measured.rate_bps(s), 13e6, 0.01),
            "tunnel {s}: {:.0}",
            measured.rate_bps(s)
        );
    }
}

/// Jain's fairness index of `rates`: 1 when all are equal.
fn jain(rates: &[f64]) -> f64 {
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|r| r * r).sum();
    sum * sum / (rates.len() as f64 * squares)
}

#[test]
fn sixteen_flows_of_one_class_get_equal_shares() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    // Hashes that land in few sets, so the set-associative lookup matters.
    let sources: Vec<Source> = (0..16u32)
        .map(|flow| {
            let size = if flow % 2 == 0 { 1500 } else { 100 };
            let mut source = Source::greedy(0, Class::Bulk, (flow << 8) | (flow % 2), &[size]);
            source.depth = 16;
            source
        })
        .collect();
    let measured = run(&mut shaper, &sources, S, 20 * S);
    let rates: Vec<f64> = (0..16).map(|s| measured.rate_bps(s)).collect();
    let index = jain(&rates);
    assert!(index >= 0.99, "Jain's index {index:.4}: {rates:?}");
}

#[test]
fn a_sparse_flow_is_not_queued_behind_a_bulk_flow_of_its_class() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let sources = [
        Source::greedy(0, Class::Standard, 1, &[1500]),
        Source::paced(0, Class::Standard, 2, 100, 50_000),
    ];
    let measured = run(&mut shaper, &sources, S, 20 * S);
    let p99 = measured.sojourn_percentile_ms(1, 99.0);
    // The bulk flow's 64 queued packets are 79 ms; the sparse flow waits
    // for the frame on the wire at most.
    assert!(p99 < 2.0, "sparse flow p99 {p99:.3} ms");
}

#[test]
fn codel_keeps_an_overloaded_queue_near_its_target() {
    let overload = |codel: CodelParams| {
        let mut config = ShaperConfig::new(10_000_000);
        config.codel = codel;
        config.weighted[2].queue_packets = 4_096;
        let mut shaper = scheduler(config);
        // A TCP-like transfer with a 50 ms round trip, starting at
        // twice the link's rate.
        let mut source = Source::paced(0, Class::Standard, 1, 1500, 20_000_000);
        source.responsive_rtt_ns = Some(50 * MS);
        run(&mut shaper, &[source], 20 * S, 40 * S)
    };
    let with_codel = overload(CodelParams::default());
    // Deterministic: 16.5 ms at p99, the link 85% busy (Reno halving
    // against a queue of a few packets, on a 62 kB bandwidth-delay product).
    let p99 = with_codel.sojourn_percentile_ms(0, 99.0);
    assert!(p99 < 20.0, "p99 sojourn {p99:.1} ms with CoDel");
    let busy = with_codel.total_bps() / 10e6;
    assert!(busy > 0.8, "link {busy:.2} busy with CoDel");
    assert!(with_codel.dropped[0] > 0);
    assert_eq!(with_codel.refused[0], 0, "CoDel, not the tail, drops");

    let without = overload(CodelParams {
        target_ns: 10 * S,
        interval_ns: 100 * S,
        ..CodelParams::default()
    });
    let median = without.sojourn_percentile_ms(0, 50.0);
    assert!(
        median > 1_000.0,
        "median sojourn {median:.1} ms without CoDel"
    );
}

#[test]
fn what_does_not_fit_comes_back_counted_and_drain_returns_the_rest() {
    let mut config = ShaperConfig::new(1_000_000);
    config.weighted[3].queue_packets = 3;
    let mut shaper = Scheduler::new(
        Layout {
            tunnels: 2,
            flow_queues: 8,
            packets: 5,
        },
        config,
        0,
    )
    .unwrap();
    let packet = |source| Packet {
        source,
        wire_bytes: 100,
    };
    for i in 0..3 {
        shaper
            .enqueue(packet(i), 0, Class::Bulk, 9, 100, 0)
            .unwrap();
    }
    let refused = shaper
        .enqueue(packet(3), 0, Class::Bulk, 9, 100, 0)
        .unwrap_err();
    assert_eq!(
        (refused.packet.source, refused.reason),
        (3, DropReason::QueueFull)
    );
    for i in 4..6 {
        shaper
            .enqueue(packet(i), 1, Class::Standard, 9, 100, 0)
            .unwrap();
    }
    let refused = shaper
        .enqueue(packet(6), 1, Class::Standard, 9, 100, 0)
        .unwrap_err();
    assert_eq!(
        (refused.packet.source, refused.reason),
        (6, DropReason::PoolFull)
    );
    let counters = shaper.counters();
    assert_eq!(counters[Class::Bulk.index()].drops, [1, 0, 0]);
    assert_eq!(counters[Class::Standard.index()].drops, [0, 1, 0]);
    assert_eq!(shaper.held(), 5);

    let mut drained: Vec<usize> = shaper.drain().map(|p| p.source).collect();
    drained.sort_unstable();
    assert_eq!(drained, [0, 1, 2, 4, 5]);
    assert_eq!(shaper.held(), 0);
    assert_eq!(shaper.dequeue(0, 32, |_| panic!("drained")), None);
    // And it works on afterwards.
    shaper
        .enqueue(packet(7), 1, Class::Bulk, 1, 100, 0)
        .unwrap();
    let mut out = Vec::new();
    shaper.dequeue(0, 32, |released| out.push(released));
    assert!(matches!(&out[..], [Released::Sent { packet, .. }] if packet.source == 7));
}

#[test]
fn a_new_rate_applies_at_once_and_nothing_queued_is_lost() {
    // CoDel out of the way: this is about the reload.
    let mut config = ShaperConfig::new(10_000_000);
    config.codel = CodelParams {
        target_ns: 100 * S,
        interval_ns: 1_000 * S,
        ..CodelParams::default()
    };
    let mut shaper = scheduler(config);
    let sources = [Source::greedy(0, Class::Standard, 1, &[1500])];
    run(&mut shaper, &sources, 0, 5 * S);
    let held = shaper.held();
    assert!(held > 60, "{held} held");
    let before = shaper.counters()[Class::Standard.index()];
    shaper
        .reconfigure(
            ShaperConfig {
                rate_bps: 2_000_000,
                ..config
            },
            5 * S,
        )
        .unwrap();
    assert_eq!(shaper.held(), held);
    let measured = run_from(&mut shaper, &sources, 5 * S, S, 20 * S);
    assert!(within(measured.rate_bps(0), 2e6, 0.005));
    let after = shaper.counters()[Class::Standard.index()];
    assert_eq!(after.drops, before.drops, "nothing dropped");

    let mut invalid = config;
    invalid.weighted[0].weight = 0;
    let error = shaper.reconfigure(invalid, 30 * S).unwrap_err();
    assert!(error.contains("classes.Interactive.weight"), "{error}");
    assert_eq!(shaper.config().weighted[0].weight, 40, "old config kept");
}

#[test]
fn a_new_layout_keeps_every_packet_in_its_flows_order_and_every_rate() {
    let mut shaper = scheduler(ShaperConfig::new(10_000_000));
    let slow = TunnelRate {
        rate_bps: 1_000_000,
        burst_bytes: 0,
    };
    shaper.set_tunnel_rate(1, Some(slow), 0).unwrap();
    // Four flows of ten packets; a packet's source is its sequence number.
    let flows = [
        (0, Class::Standard, 7),
        (1, Class::Bulk, 9),
        (3, Class::RealTime, 11),
        (3, Class::Standard, 7),
    ];
    for seq in 0..40 {
        let (tunnel, class, hash) = flows[seq % 4];
        let packet = Packet {
            source: seq,
            wire_bytes: 1_000,
        };
        shaper
            .enqueue(packet, tunnel, class, hash, 1_000, 0)
            .unwrap();
    }
    let error = shaper
        .resize(
            Layout {
                packets: 39,
                ..layout(2)
            },
            0,
        )
        .unwrap_err();
    assert!(error.starts_with("packets:"), "{error}");
    assert_eq!(
        shaper.layout(),
        layout(4),
        "a refused layout changes nothing"
    );

    // More tunnels and fewer flow queues, then fewer tunnels: tunnel 3's
    // flows move to tunnel 0.
    let grown = Layout {
        tunnels: 16,
        flow_queues: 8,
        packets: 64,
    };
    shaper.resize(grown, 0).unwrap();
    let shrunk = Layout {
        tunnels: 2,
        ..grown
    };
    shaper.resize(shrunk, 0).unwrap();
    assert_eq!(shaper.layout(), shrunk);
    assert_eq!(shaper.held(), 40);
    let queued: u64 = shaper.counters().iter().map(|c| c.queued_packets).sum();
    assert_eq!(queued, 40);

    let mut left = Vec::new();
    let mut now = 0;
    while shaper.held() > 0 && now < S {
        now += MS;
        shaper.dequeue(now, 64, |released| match released {
            Released::Sent { packet, .. } => left.push((now, packet.source)),
            Released::Dropped { packet, .. } => panic!("{packet:?} dropped"),
        });
    }
    assert_eq!(left.len(), 40, "every packet leaves once");
    for flow in 0..4 {
        let order: Vec<usize> = left.iter().map(|l| l.1).filter(|s| s % 4 == flow).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "flow {flow}: {order:?}"
        );
    }
    // Tunnel 1 kept its 1 Mbit/s: its last packet may leave once the
    // nine before it (1 038 B each) less its burst of 3 028 B have come
    // in, 6 314 B, which takes 50.5 ms; the others' 30 packets take 25 ms
    // at the egress's 10 Mbit/s, and all 40 would take 33 ms.
    let last = |flow: usize| left.iter().rev().find(|l| l.1 % 4 == flow).unwrap().0;
    assert!(last(1) >= 50 * MS, "tunnel 1 done at {} ms", last(1) / MS);
    assert!([0, 2, 3].iter().all(|&f| last(f) <= 30 * MS));
}

#[test]
fn invalid_settings_name_the_field_at_fault() {
    let check = |edit: fn(&mut ShaperConfig), field: &str| {
        let mut config = ShaperConfig::new(10_000_000);
        edit(&mut config);
        let error = config.validate().unwrap_err();
        assert!(error.starts_with(field), "{field}: {error}");
    };
    check(|c| c.rate_bps = 1_000, "rate");
    check(
        |c| c.realtime.limit_percent = 101,
        "classes.RealTime.limit_percent:",
    );
    check(
        |c| c.weighted[3].limit_percent = 0,
        "classes.Bulk.limit_percent:",
    );
    check(|c| c.weighted[1].min_percent = 80, "classes");
    check(
        |c| {
            c.weighted[2].min_percent = 30;
            c.weighted[2].limit_percent = 20;
        },
        "classes.Standard.min_percent:",
    );
    check(|c| c.codel.target_ns = c.codel.interval_ns, "codel.target");
    let error = Layout {
        tunnels: 1,
        flow_queues: 48,
        packets: 10,
    }
    .validate()
    .unwrap_err();
    assert!(error.starts_with("flow_queues"), "{error}");
}

#[test]
fn categories_map_to_the_classes_of_the_design() {
    use crate::dpi::Category;
    let class_of = |c| Class::for_category(c);
    assert_eq!(class_of(Category::VoIP), Class::RealTime);
    assert_eq!(class_of(Category::Gaming), Class::RealTime);
    assert_eq!(class_of(Category::DNS), Class::RealTime);
    assert_eq!(class_of(Category::RemoteAccess), Class::Interactive);
    assert_eq!(class_of(Category::Video), Class::Streaming);
    for category in [
        Category::Web,
        Category::Database,
        Category::Email,
        Category::Unknown,
    ] {
        assert_eq!(class_of(category), Class::Standard);
    }
    assert_eq!(class_of(Category::FileTransfer), Class::Bulk);
}

#[test]
fn a_wireguard_message_costs_its_headers_and_padding() {
    // 100 B padded to 112, plus 20 + 8 + 16 + 16.
    assert_eq!(wireguard_wire_bytes(100, false), 172);
    assert_eq!(wireguard_wire_bytes(1420, true), 1420 + 4 + 80);
}

/// Offers 1 500 B packets of `class` at `offered_bps` for `seconds`, each
/// passing through when the scheduler lets it and queued otherwise, with
/// the scheduler dequeued at every arrival; what left in the last second
/// (bit/s, as charged) and how many packets passed through.
fn offer_with_pass_through(
    scheduler: &mut Scheduler<Packet>,
    class: Class,
    offered_bps: u64,
    seconds: u64,
) -> (f64, usize) {
    let cost = u64::from(1_500 + u32::from(scheduler.config().overhead_bytes));
    let interval = cost * 8 * S / offered_bps;
    let (mut bits, mut passed) = (0u64, 0usize);
    let from = (seconds - 1) * S;
    let mut now = 0;
    while now < seconds * S {
        let counted = |bits: &mut u64| {
            if now >= from {
                *bits += cost * 8;
            }
        };
        scheduler.dequeue(now, 32, |released| {
            if let Released::Sent { .. } = released {
                counted(&mut bits);
            }
        });
        if scheduler.pass_through(1, class, 1_500, now) {
            passed += 1;
            counted(&mut bits);
        } else {
            let packet = Packet {
                source: 0,
                wire_bytes: 1_500,
            };
            let _ = scheduler.enqueue(packet, 1, class, 7, 1_500, now);
        }
        now += interval;
    }
    (bits as f64, passed)
}

#[test]
fn an_uncongested_egress_lets_packets_pass_and_a_congested_one_queues_them() {
    let config = |bulk_limit| {
        let mut c = ShaperConfig::new(10_000_000);
        c.weighted[3].limit_percent = bulk_limit;
        c
    };
    // Under the rate: every packet passes, none is queued.
    let mut s = Scheduler::new(layout(4), config(100), 0).unwrap();
    let (rate, passed) = offer_with_pass_through(&mut s, Class::Standard, 5_000_000, 3);
    assert!((rate / 5e6 - 1.0).abs() < 0.005, "{rate}");
    assert_eq!(passed as u64, 3 * 5_000_000 / (1_538 * 8) + 1, "all passed");
    assert_eq!(
        s.counters()[Class::Standard.index()].tx_packets,
        passed as u64
    );

    // Over it: the rate holds, and once a packet waits nothing overtakes it.
    let mut s = Scheduler::new(layout(4), config(100), 0).unwrap();
    let (rate, _) = offer_with_pass_through(&mut s, Class::Standard, 20_000_000, 3);
    assert!((rate / 10e6 - 1.0).abs() < 0.005, "{rate}");
    assert!(s.held() > 0);
    assert!(
        !s.pass_through(2, Class::RealTime, 100, 100 * S),
        "held packets go first"
    );

    // A class's limit binds on the fast path too.
    let mut s = Scheduler::new(layout(4), config(50), 0).unwrap();
    let (rate, _) = offer_with_pass_through(&mut s, Class::Bulk, 8_000_000, 3);
    assert!(
        (rate / 5e6 - 1.0).abs() < 0.005,
        "Bulk at its limit: {rate}"
    );

    // A tunnel's own rate too.
    let mut s = Scheduler::new(layout(4), config(100), 0).unwrap();
    let tunnel_rate = TunnelRate {
        rate_bps: 2_000_000,
        burst_bytes: 0,
    };
    s.set_tunnel_rate(1, Some(tunnel_rate), 0).unwrap();
    let (rate, _) = offer_with_pass_through(&mut s, Class::Standard, 4_000_000, 3);
    assert!(
        (rate / 2e6 - 1.0).abs() < 0.005,
        "the tunnel at its rate: {rate}"
    );
}
