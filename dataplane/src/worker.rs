//! The poll-mode worker: one per lcore, a thin loop that moves bursts
//! between its queues and the [`Gateway`].
//!
//! Each worker owns receive queue *i* and transmit queue *i* of every port,
//! so no queue, flow table or counter is ever shared. Per round it:
//! picks up a new config or neighbour snapshot if one was published, polls
//! every receive queue once, flushes every transmit queue, releases packets
//! whose next hop resolved, sends due resolution requests, ages a few flows,
//! and publishes its counters about once a millisecond. Nothing in the loop
//! locks, allocates or makes a system call (unless `idle_sleep_us` is set
//! and the worker is idle).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::Snapshot;
use crate::dpdk::{rdtsc, Mbuf, Mempool, RxBurst, RxQueue, TxQueue, BURST_SIZE};
use crate::gateway::{Context, Gateway, Verdict};
use crate::neighbor::{NeighborEvent, NeighborShared};
use crate::pending::{Held, PendingQueue};
use crate::published::Published;
use crate::stats::{Counter, DropReason, SharedCounters};

/// Flow-table slots examined for expiry per loop round.
const EXPIRE_BUDGET: usize = 64;
/// Idle rounds before an idle worker starts sleeping (when configured to).
const IDLE_ROUNDS_BEFORE_SLEEP: u32 = 64;

/// Converts time-stamp counter readings into nanoseconds since a common
/// start, shared by workers and the control thread.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_tsc: u64,
    hz: u64,
}

impl Clock {
    /// A clock starting now, counting at `hz` ticks per second.
    pub fn new(hz: u64) -> Self {
        Clock {
            base_tsc: rdtsc(),
            hz: hz.max(1),
        }
    }

    /// Nanoseconds since the clock started at TSC reading `tsc`.
    #[inline]
    pub fn ns_at(&self, tsc: u64) -> u64 {
        (u128::from(tsc.saturating_sub(self.base_tsc)) * 1_000_000_000 / u128::from(self.hz)) as u64
    }

    /// Nanoseconds since the clock started.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.ns_at(rdtsc())
    }

    /// Ticks per second.
    pub fn hz(&self) -> u64 {
        self.hz
    }
}

/// Everything one worker owns.
#[derive(Debug)]
pub struct Worker {
    /// Worker number (also its queue index on every port).
    pub index: usize,
    rx: Vec<(u16, RxQueue)>,
    tx: Vec<TxQueue>,
    pool: Arc<Mempool>,
    config: Arc<Published<Snapshot>>,
    neighbors: Arc<NeighborShared>,
    gateway: Gateway,
    pending: PendingQueue<Mbuf>,
    stats: Arc<SharedCounters>,
    stop: Arc<AtomicBool>,
    clock: Clock,
}

/// What a worker is built from.
#[derive(Debug)]
pub struct WorkerSetup {
    /// Worker number.
    pub index: usize,
    /// Its receive queue on each port, with the port index.
    pub rx: Vec<(u16, RxQueue)>,
    /// Its transmit queue on each port, indexed by port index.
    pub tx: Vec<TxQueue>,
    /// Where replies and resolution requests get their buffers.
    pub pool: Arc<Mempool>,
    /// The configuration in force.
    pub config: Arc<Published<Snapshot>>,
    /// The neighbour table in force.
    pub neighbors: Arc<NeighborShared>,
    /// Where neighbour observations go.
    pub events: Sender<NeighborEvent>,
    /// Where counters are published.
    pub stats: Arc<SharedCounters>,
    /// Set to ask the worker to finish.
    pub stop: Arc<AtomicBool>,
    /// The shared clock.
    pub clock: Clock,
    /// Seed for the flow table's keyed hash.
    pub seed: u64,
}

impl Worker {
    /// The worker's classification counters (shared with the metrics endpoint).
    pub fn dpi_counters(&self) -> Arc<crate::dpi::counters::DpiCounters> {
        self.gateway.dpi_counters()
    }

    /// Allocates the worker's flow table and pending queue.
    pub fn new(setup: WorkerSetup) -> Self {
        let cfg = setup.config.load();
        let gateway = Gateway::new(&cfg, setup.events, setup.seed);
        let pending = PendingQueue::new(
            cfg.neighbors.pending_neighbors as usize,
            cfg.neighbors.pending_per_neighbor as usize,
        );
        Worker {
            index: setup.index,
            rx: setup.rx,
            tx: setup.tx,
            pool: setup.pool,
            config: setup.config,
            neighbors: setup.neighbors,
            gateway,
            pending,
            stats: setup.stats,
            stop: setup.stop,
            clock: setup.clock,
        }
    }

    /// Runs until asked to stop; then flushes, frees what it holds and
    /// publishes its final counters. Returns 0.
    pub fn run(mut self) -> i32 {
        let mut burst = RxBurst::new();
        // Allocated once; `clear` and `drain` keep the capacity, so bursts never allocate.
        let mut batch: Vec<Mbuf> = Vec::with_capacity(BURST_SIZE);
        let mut verdicts = [Verdict::Drop; BURST_SIZE];
        let mut cfg_generation = self.config.generation();
        let mut cfg = self.config.load();
        let mut neigh_generation = self.neighbors.generation();
        let mut neighbors = self.neighbors.load();
        let mut fwd_generation: u32 = 1;
        let mut idle_rounds = 0u32;
        let publish_every = self.clock.hz() / 1000;
        let window = self.clock.hz();
        let mut last_publish = rdtsc();
        let (mut window_start, mut window_busy) = (last_publish, 0u64);
        tracing::info!(
            worker = self.index,
            queues = self.rx.len(),
            "worker started"
        );

        while !self.stop.load(Ordering::Relaxed) {
            let start = rdtsc();
            let now_ns = self.clock.ns_at(start);

            if self.config.generation() != cfg_generation {
                cfg_generation = self.config.generation();
                cfg = self.config.load();
                self.gateway.reconfigure(&cfg);
                fwd_generation = next_generation(fwd_generation);
            }
            if self.neighbors.generation() != neigh_generation {
                neigh_generation = self.neighbors.generation();
                neighbors = self.neighbors.load();
                fwd_generation = next_generation(fwd_generation);
                let (tx, counters, cfg) = (&mut self.tx, &mut self.gateway.counters, &cfg);
                self.pending.release(
                    |port, addr| neighbors.get(port, addr).map(|e| e.mac),
                    |port, mac, mut mbuf| {
                        let Some(out) = cfg.ports.get(usize::from(port)) else {
                            return;
                        };
                        let data = mbuf.data_mut();
                        data[0..6].copy_from_slice(&mac);
                        data[6..12].copy_from_slice(&out.mac);
                        counters.add(Counter::Forwarded, 1);
                        counters.add(Counter::ForwardedBytes, mbuf.len() as u64);
                        tx[usize::from(port)].push(mbuf);
                    },
                );
            }

            let ctx = Context {
                cfg: &cfg,
                neighbors: &neighbors,
                fwd_generation,
                now_ns,
            };
            let mut received = 0;
            for (port, rxq) in &mut self.rx {
                received += rxq.rx_burst(&mut burst);
                batch.clear();
                while let Some(mut mbuf) = burst.pop() {
                    if mbuf.segments() > 1 && !mbuf.linearize() {
                        self.gateway.counters.drop(DropReason::MultiSegment);
                        continue;
                    }
                    batch.push(mbuf);
                }
                self.gateway
                    .process_burst(&ctx, *port, &mut batch, &mut verdicts);
                for (mbuf, verdict) in batch.drain(..).zip(verdicts) {
                    match verdict {
                        Verdict::Transmit(out) => self.tx[usize::from(out)].push(mbuf),
                        Verdict::Resolve { port, next_hop } => match self
                            .pending
                            .hold(port, next_hop, mbuf, now_ns)
                        {
                            Ok(Held::ProbeNow) => solicit(
                                &mut self.gateway,
                                &cfg,
                                &self.pool,
                                &mut self.tx,
                                port,
                                next_hop,
                            ),
                            Ok(Held::Queued) => {}
                            Err(_dropped) => self.gateway.counters.drop(DropReason::PendingFull),
                        },
                        Verdict::Drop | Verdict::Consumed => {}
                    }
                }
            }

            let (gateway, pool, tx) = (&mut self.gateway, &self.pool, &mut self.tx);
            let mut stale = [(0u16, IpAddr::from([0u8; 4])); 8];
            let mut n_stale = 0;
            gateway.take_stale_probes(|port, addr| {
                stale[n_stale] = (port, addr);
                n_stale += 1;
            });
            for &(port, addr) in &stale[..n_stale] {
                solicit(gateway, &cfg, pool, tx, port, addr);
            }
            let retransmit_ns = u64::from(cfg.neighbors.retransmit_ms) * 1_000_000;
            let mut due = [(0u16, IpAddr::from([0u8; 4])); 16];
            let mut n_due = 0;
            let mut unresolved = 0u64;
            self.pending.poll_timers(
                now_ns,
                retransmit_ns,
                cfg.neighbors.max_probes,
                |port, addr| {
                    if n_due < due.len() {
                        due[n_due] = (port, addr);
                        n_due += 1;
                    }
                },
                |_frame| unresolved += 1,
            );
            gateway
                .counters
                .drop_n(DropReason::NeighborUnresolved, unresolved);
            for &(port, addr) in &due[..n_due] {
                solicit(gateway, &cfg, pool, tx, port, addr);
            }
            for txq in tx.iter_mut() {
                txq.flush();
            }
            gateway.expire_flows(now_ns, EXPIRE_BUDGET);

            let end = rdtsc();
            let spent = end.saturating_sub(start);
            gateway.counters.add(Counter::TotalCycles, spent);
            if received > 0 {
                gateway.counters.add(Counter::BusyCycles, spent);
                window_busy += spent;
            }
            if end.saturating_sub(window_start) >= window {
                let ppm = window_busy * 1_000_000 / end.saturating_sub(window_start).max(1);
                gateway.counters.set(Counter::BusyRatioPpm, ppm);
                window_start = end;
                window_busy = 0;
            }
            if end.saturating_sub(last_publish) >= publish_every {
                self.publish();
                last_publish = end;
            }

            if received == 0 {
                idle_rounds = idle_rounds.saturating_add(1);
                let sleep_us = cfg.worker.idle_sleep_us;
                if sleep_us > 0 && idle_rounds > IDLE_ROUNDS_BEFORE_SLEEP {
                    std::thread::sleep(Duration::from_micros(u64::from(sleep_us)));
                }
            } else {
                idle_rounds = 0;
            }
        }

        // Shutdown: send what is queued, free what waits for a next hop.
        for txq in &mut self.tx {
            txq.flush();
        }
        let held = self.pending.packets() as u64;
        self.gateway
            .counters
            .drop_n(DropReason::NeighborUnresolved, held);
        self.pending = PendingQueue::new(0, 0);
        self.publish();
        tracing::info!(worker = self.index, "worker stopped");
        0
    }

    fn publish(&mut self) {
        for (port, txq) in self.tx.iter().enumerate() {
            self.stats.set_port_tx_dropped(port, txq.dropped());
        }
        let tx_dropped: u64 = self.tx.iter().map(TxQueue::dropped).sum();
        self.gateway.counters.set(Counter::TxDropped, tx_dropped);
        self.gateway
            .counters
            .set(Counter::PendingPackets, self.pending.packets() as u64);
        self.stats.publish(&self.gateway.counters);
    }
}

fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// Sends an ARP request or Neighbor Solicitation for `addr` out of `port`.
fn solicit(
    gateway: &mut Gateway,
    cfg: &Snapshot,
    pool: &Mempool,
    tx: &mut [TxQueue],
    port: u16,
    addr: IpAddr,
) {
    let Some(mut mbuf) = Mbuf::alloc(pool) else {
        gateway.counters.drop(DropReason::NoBuffer);
        return;
    };
    if gateway.solicit(cfg, port, addr, &mut mbuf) {
        if let Some(txq) = tx.get_mut(usize::from(port)) {
            txq.push(mbuf);
        }
    }
}
