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

mod egress;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;

use crate::dpdk::{rdtsc, Mbuf, Mempool, RxBurst, RxQueue, TxQueue, BURST_SIZE};
use egress::{Egress, EndpointCache, PROBES_PER_ROUND};
use patronus_core::config::Snapshot;
use patronus_core::gateway::{Context, Gateway, Verdict};
use patronus_core::neighbor::{NeighborEvent, NeighborShared};
use patronus_core::pending::PendingQueue;
use patronus_core::published::Published;
use patronus_core::stats::{
    Counter, DropReason, SharedCounters, SharedTunnelStats, MAX_TUNNEL_PEERS,
};
use patronus_core::tunnel::{PeerId, PeerStats, Tunnels, Work};

/// The worker's [`Egress`], borrowing only the fields it needs, so that
/// the gateway and the tunnel engine stay usable beside it.
macro_rules! egress {
    ($worker:ident, $ctx:expr) => {
        Egress {
            cfg: $ctx.cfg,
            neighbors: $ctx.neighbors,
            pool: &$worker.pool,
            tx: &mut $worker.tx,
            pending: &mut $worker.pending,
            counters: &mut $worker.gateway.counters,
            inboxes: &$worker.inboxes,
            delivered: &mut $worker.delivered,
            probes: &mut $worker.probes,
            ip_id: &mut $worker.ip_id,
            endpoints: &mut $worker.endpoints,
            fwd_generation: $ctx.fwd_generation,
            rng: &$worker.rng,
            now_ns: $ctx.now_ns,
        }
    };
}

/// Tunnel work one worker can queue for another.
pub const INBOX_CAPACITY: usize = 1024;
/// Owned tunnel peers whose timers are checked per loop round.
const TIMER_BUDGET: usize = 16;
/// Queued tunnel work taken per loop round.
const INBOX_BUDGET: usize = BURST_SIZE;

/// One queue of tunnel work per worker, for handing a peer's packets to the
/// worker that owns the peer.
pub fn tunnel_inboxes(workers: usize) -> Arc<[ArrayQueue<Work<Mbuf>>]> {
    (0..workers)
        .map(|_| ArrayQueue::new(INBOX_CAPACITY))
        .collect()
}

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
    workers: usize,
    seed: u64,
    tunnels: Option<Tunnels<Mbuf>>,
    inboxes: Arc<[ArrayQueue<Work<Mbuf>>]>,
    tunnel_stats: Arc<SharedTunnelStats>,
    rng: ring::rand::SystemRandom,
    ip_id: u16,
    /// Decrypted packets waiting to be forwarded (filled by the tunnel engine).
    delivered: Vec<Mbuf>,
    /// The ones being forwarded now.
    decrypted: Vec<Mbuf>,
    tunnel_batch: Vec<Mbuf>,
    tunnel_verdicts: [Verdict; BURST_SIZE],
    /// Next hops to ask for at the end of a stretch of work.
    probes: Vec<(u16, IpAddr)>,
    endpoints: EndpointCache,
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
    /// How many workers there are.
    pub workers: usize,
    /// Every worker's queue of tunnel work (from [`tunnel_inboxes`]).
    pub inboxes: Arc<[ArrayQueue<Work<Mbuf>>]>,
    /// Where tunnel figures are published.
    pub tunnel_stats: Arc<SharedTunnelStats>,
}

impl Worker {
    /// The worker's classification counters (shared with the metrics endpoint).
    pub fn dpi_counters(&self) -> Arc<patronus_core::dpi::counters::DpiCounters> {
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
        let mut worker = Worker {
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
            workers: setup.workers,
            seed: setup.seed,
            tunnels: None,
            inboxes: setup.inboxes,
            tunnel_stats: setup.tunnel_stats,
            rng: ring::rand::SystemRandom::new(),
            ip_id: setup.seed as u16,
            delivered: Vec::with_capacity(2 * BURST_SIZE),
            decrypted: Vec::with_capacity(2 * BURST_SIZE),
            tunnel_batch: Vec::with_capacity(BURST_SIZE),
            tunnel_verdicts: [Verdict::Drop; BURST_SIZE],
            probes: Vec::with_capacity(PROBES_PER_ROUND),
            endpoints: EndpointCache::default(),
        };
        worker.sync_tunnels(&cfg);
        worker
    }

    /// Starts, reconfigures or stops the tunnel engine to match `cfg`.
    fn sync_tunnels(&mut self, cfg: &Snapshot) {
        match (&cfg.tunnel, &mut self.tunnels) {
            (None, engine) => *engine = None,
            (Some(t), Some(engine)) => engine.reconfigure(&t.config),
            (Some(t), engine @ None) => {
                let mut seed = [0u8; 16];
                seed[..8].copy_from_slice(&self.seed.to_le_bytes());
                seed[8..].copy_from_slice(&(self.index as u64).to_le_bytes());
                *engine = Some(Tunnels::new(self.index, self.workers, &t.config, seed));
            }
        }
    }

    /// Runs until asked to stop; then flushes, frees what it holds and
    /// publishes its final counters. Returns 0.
    pub fn run(mut self) -> i32 {
        let mut burst = RxBurst::new();
        // Allocated once; `clear` and `drain` keep the capacity, so bursts never allocate.
        let mut batch: Vec<Mbuf> = Vec::with_capacity(BURST_SIZE);
        let mut verdicts = [Verdict::Drop; BURST_SIZE];
        // Taken out of `self` so that the loop over them can call `&mut self` methods.
        let mut rx = std::mem::take(&mut self.rx);
        let tunnel_publish_every = self.clock.hz() / 10;
        let mut last_tunnel_publish = rdtsc();
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
        tracing::info!(worker = self.index, queues = rx.len(), "worker started");

        while !self.stop.load(Ordering::Relaxed) {
            let start = rdtsc();
            let now_ns = self.clock.ns_at(start);

            if self.config.generation() != cfg_generation {
                cfg_generation = self.config.generation();
                cfg = self.config.load();
                self.gateway.reconfigure(&cfg);
                self.sync_tunnels(&cfg);
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
            for (port, rxq) in &mut rx {
                received += rxq.rx_burst(&mut burst);
                batch.clear();
                while let Some(mut mbuf) = burst.pop() {
                    if mbuf.segments() > 1 && !mbuf.linearize() {
                        self.gateway.counters.drop(DropReason::MultiSegment);
                        continue;
                    }
                    batch.push(mbuf);
                }
                self.process(&ctx, *port, &mut batch, &mut verdicts);
            }
            if self.tunnels.is_some() {
                received += self.drain_inbox(&ctx);
                self.poll_tunnels(&ctx);
                if rdtsc().saturating_sub(last_tunnel_publish) >= tunnel_publish_every {
                    self.publish_tunnels(&cfg, now_ns);
                    last_tunnel_publish = rdtsc();
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

        // Shutdown: send what is queued, free what waits for a next hop or a
        // handshake, and the tunnel work queued for this worker.
        for txq in &mut self.tx {
            txq.flush();
        }
        self.rx = rx;
        self.tunnels = None;
        while self.inboxes[self.index].pop().is_some() {}
        let held = self.pending.packets() as u64;
        self.gateway
            .counters
            .drop_n(DropReason::NeighborUnresolved, held);
        self.pending = PendingQueue::new(0, 0);
        self.publish();
        tracing::info!(worker = self.index, "worker stopped");
        0
    }

    /// Acts on a burst's verdicts, then forwards what the tunnel decrypted.
    fn process(
        &mut self,
        ctx: &Context<'_>,
        port: u16,
        batch: &mut Vec<Mbuf>,
        verdicts: &mut [Verdict; BURST_SIZE],
    ) {
        self.gateway.process_burst(ctx, port, batch, verdicts);
        {
            let mut egress = egress!(self, ctx);
            for (mbuf, verdict) in batch.drain(..).zip(verdicts.iter()) {
                egress.dispatch(*verdict, mbuf, self.tunnels.as_mut());
            }
        }
        self.forward_decrypted(ctx);
        self.solicit_probes(ctx.cfg);
    }

    /// Forwards decrypted packets as if they had arrived on the tunnel port.
    fn forward_decrypted(&mut self, ctx: &Context<'_>) {
        let Some(tunnel_port) = ctx.cfg.tunnel_port() else {
            return;
        };
        // Forwarding them cannot decrypt more, but loop in case it ever does.
        while !self.delivered.is_empty() {
            std::mem::swap(&mut self.delivered, &mut self.decrypted);
            while !self.decrypted.is_empty() {
                let n = self.decrypted.len().min(BURST_SIZE);
                self.tunnel_batch.clear();
                self.tunnel_batch.extend(self.decrypted.drain(..n));
                self.gateway.process_burst(
                    ctx,
                    tunnel_port,
                    &mut self.tunnel_batch,
                    &mut self.tunnel_verdicts,
                );
                let mut egress = egress!(self, ctx);
                for (mbuf, verdict) in self.tunnel_batch.drain(..).zip(self.tunnel_verdicts.iter())
                {
                    egress.dispatch(*verdict, mbuf, self.tunnels.as_mut());
                }
            }
        }
    }

    /// Asks for the next hops that tunnel datagrams or forwarded packets wait for.
    fn solicit_probes(&mut self, cfg: &Snapshot) {
        for i in 0..self.probes.len() {
            let (port, addr) = self.probes[i];
            solicit(&mut self.gateway, cfg, &self.pool, &mut self.tx, port, addr);
        }
        self.probes.clear();
    }

    /// Runs tunnel work other workers handed to this one. Returns how much.
    fn drain_inbox(&mut self, ctx: &Context<'_>) -> usize {
        let Some(t) = ctx.cfg.tunnel.as_deref() else {
            return 0;
        };
        let mut done = 0;
        while done < INBOX_BUDGET {
            let Some(work) = self.inboxes[self.index].pop() else {
                break;
            };
            done += 1;
            let Some(tunnels) = self.tunnels.as_mut() else {
                continue;
            };
            let mut egress = egress!(self, ctx);
            match work {
                Work::Send { peer, frame } => {
                    tunnels.send(&t.config, peer, frame, ctx.now_ns, &mut egress)
                }
                Work::Receive { from, frame } => {
                    tunnels.receive(&t.config, from, frame, ctx.now_ns, &mut egress)
                }
            }
        }
        if done > 0 {
            self.forward_decrypted(ctx);
            self.solicit_probes(ctx.cfg);
        }
        done
    }

    /// Fires the due timers of a few tunnel peers.
    fn poll_tunnels(&mut self, ctx: &Context<'_>) {
        let (Some(t), Some(tunnels)) = (ctx.cfg.tunnel.as_deref(), self.tunnels.as_mut()) else {
            return;
        };
        let mut egress = egress!(self, ctx);
        tunnels.poll(&t.config, ctx.now_ns, TIMER_BUDGET, &mut egress);
        self.solicit_probes(ctx.cfg);
    }

    /// Copies the tunnel engine's figures out for the metrics endpoint.
    fn publish_tunnels(&self, cfg: &Snapshot, now_ns: u64) {
        let (Some(engine), Some(t)) = (&self.tunnels, cfg.tunnel.as_deref()) else {
            return;
        };
        self.tunnel_stats.publish_counters(engine.counters());
        for peer in 0..t.config.peers.len().min(MAX_TUNNEL_PEERS) {
            let id = peer as PeerId;
            let stats = if engine.owner(id) == self.index {
                engine.peer_stats(id, &t.config, now_ns)
            } else {
                PeerStats::default()
            };
            self.tunnel_stats.publish_peer(peer, &stats);
        }
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
