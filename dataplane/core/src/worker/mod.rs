//! The poll-mode worker: one per lcore, a thin loop that moves bursts
//! between its queues and the [`Pipeline`], and time into it.
//!
//! The worker owns receive queue *i* and transmit queue *i* of every port,
//! so no queue, flow table or counter is ever shared. It reaches them
//! through [`PacketRx`] and [`PacketTx`], and buffers, the clock and entropy
//! through [`Host`]: DPDK's queues, mempool and TSC in the gateway, memory
//! queues and a hand-driven clock in tests (`memory`, with the
//! `test-support` feature). Each [`Worker::round`]:
//!
//! 1. picks up a new configuration or neighbour snapshot if one was
//!    published (between bursts, so a burst never sees a mix), releasing
//!    packets whose next hop resolved;
//! 2. runs one burst from every receive queue through the pipeline;
//! 3. runs the tunnel work other workers handed over, the tunnel's due
//!    timers, and what the tunnel engine originated;
//! 4. asks for next hops (new, stale, retransmitted);
//! 5. queues the packets other workers handed to the egress shapers it
//!    runs, and sends what those shapers release (`shaping`: a packet out
//!    of a shaped port goes through its shaper, not straight to the
//!    transmit queue);
//! 6. flushes every transmit queue, ages a few flows, and publishes its
//!    counters about once a millisecond (tunnel, path and shaper figures
//!    ten times a second).
//!
//! Nothing in a round locks, allocates or makes a system call (unless
//! `idle_sleep_us` is set and the worker is idle, a handshake draws
//! entropy, or figures are published).

#[cfg(any(test, feature = "test-support"))]
pub mod memory;
mod shaping;

pub use shaping::{shaper_inboxes, ShaperInboxes, ToShape, SHAPER_INBOX_CAPACITY};

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;

use crate::config::Snapshot;
use crate::frame::Frame;
use crate::neighbor::{NeighborEvent, NeighborShared, NeighborSnapshot};
use crate::paths::SharedUplinks;
use crate::pending::{Held, PendingQueue};
use crate::pipeline::{Burst, Context, Handed, Inboxes, Next, Pipeline, PipelineSetup, Shaping};
use crate::published::Published;
use crate::stats::{
    Counter, DropReason, SharedCounters, SharedQosStats, SharedTunnelStats, MAX_TUNNEL_PEERS,
};
use crate::tunnel::outer::ETHERNET_LEN;
use crate::tunnel::{PeerId, PeerStats, TunnelEnv, Work};
use crate::BURST_SIZE;
use shaping::Shapers;

/// Tunnel work one worker can queue for another.
pub const INBOX_CAPACITY: usize = 1024;
/// Owned tunnel peers whose timers are checked per round.
const TIMER_BUDGET: usize = 16;
/// Flow-table slots examined for expiry per round.
const EXPIRE_BUDGET: usize = 64;
/// Idle rounds before an idle worker starts sleeping (when configured to).
const IDLE_ROUNDS_BEFORE_SLEEP: u32 = 64;
/// Most next hops a worker asks for in one round; the rest are asked by the
/// pending queue's retransmission timer.
const PROBES_PER_ROUND: usize = 16;

/// One receive queue of one port, as a worker polls it.
pub trait PacketRx {
    /// The buffers it fills.
    type Frame: Frame;
    /// Receives frames into `burst` (as arriving on `port`) while it has
    /// room. Frames that cannot be used (a chained buffer that cannot be
    /// made contiguous) are freed and counted in the result, not added.
    fn rx_burst(&mut self, port: u16, burst: &mut Burst<Self::Frame>) -> Received;
}

/// What one [`PacketRx::rx_burst`] took off the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Frames added to the burst.
    pub frames: usize,
    /// Frames freed because they could not be used.
    pub unusable: usize,
}

/// One transmit queue of one port.
pub trait PacketTx {
    /// The buffers it sends.
    type Frame: Frame;
    /// Queues `frame`, sending a full buffer of them.
    fn push(&mut self, frame: Self::Frame);
    /// Sends what is queued; what the device refuses is freed and counted.
    fn flush(&mut self);
    /// Frames the device refused so far.
    fn dropped(&self) -> u64;
}

/// What a worker needs from the machine besides its queues.
pub trait Host {
    /// The buffers of its queues.
    type Frame: Frame;
    /// An empty buffer for a packet the worker originates.
    fn alloc(&mut self) -> Option<Self::Frame>;
    /// The cycle counter now.
    fn ticks(&self) -> u64;
    /// Cycle-counter ticks per second.
    fn ticks_per_s(&self) -> u64;
    /// Nanoseconds on the data-plane clock at cycle-counter reading `ticks`.
    fn ns_at(&self, ticks: u64) -> u64;
    /// Fills `out` with cryptographically secure random bytes.
    fn random(&mut self, out: &mut [u8]);
    /// The wall-clock time since the Unix epoch.
    fn unix_time(&self) -> Duration;
    /// Yields the core for `us` microseconds (an idle worker, when configured to).
    fn sleep(&self, us: u32);
}

/// The tunnel engine's view of the host.
struct Env<'a, H>(&'a mut H);

impl<H: Host> TunnelEnv<H::Frame> for Env<'_, H> {
    fn alloc(&mut self) -> Option<H::Frame> {
        self.0.alloc()
    }
    fn random(&mut self, out: &mut [u8]) {
        self.0.random(out);
    }
    fn unix_time(&mut self) -> Duration {
        self.0.unix_time()
    }
}

/// One queue of tunnel work per worker, for handing a peer's packets to the
/// worker that owns the peer.
pub fn tunnel_inboxes<F>(workers: usize) -> Inboxes<F> {
    (0..workers)
        .map(|_| ArrayQueue::new(INBOX_CAPACITY))
        .collect()
}

/// What a worker is built from.
#[derive(Debug)]
pub struct WorkerSetup<H, R, T: PacketTx> {
    /// Worker number (also its queue index on every port).
    pub index: usize,
    /// Its receive queue on each port, with the port index.
    pub rx: Vec<(u16, R)>,
    /// Its transmit queue on each port, indexed by port index.
    pub tx: Vec<T>,
    /// Buffers, time and entropy.
    pub host: H,
    /// The configuration in force.
    pub config: Arc<Published<Snapshot>>,
    /// The neighbour table in force.
    pub neighbors: Arc<NeighborShared>,
    /// Where neighbour observations go.
    pub events: Sender<NeighborEvent>,
    /// Where counters are published.
    pub stats: Arc<SharedCounters>,
    /// Where tunnel figures are published.
    pub tunnel_stats: Arc<SharedTunnelStats>,
    /// Every worker's queue of tunnel work (from [`tunnel_inboxes`]).
    pub inboxes: Inboxes<T::Frame>,
    /// Which uplinks BFD says are down and what was sent over each: one
    /// for every worker.
    pub shared_uplinks: Arc<SharedUplinks>,
    /// Every worker's queue of the flows others announced: one for every worker.
    pub announcements: crate::dpi::Announcements,
    /// Every worker's queue of packets for the shapers it runs (from [`shaper_inboxes`]).
    pub shaper_inboxes: ShaperInboxes<T::Frame>,
    /// Where the figures of the egresses it shapes are published.
    pub qos_stats: Arc<SharedQosStats>,
    /// Set to ask the worker to finish.
    pub stop: Arc<AtomicBool>,
    /// Seed for the flow table's keyed hash.
    pub seed: u64,
}

/// Everything one worker owns.
pub struct Worker<H: Host, R, T> {
    /// Worker number (also its queue index on every port).
    pub index: usize,
    rx: Vec<(u16, R)>,
    tx: Vec<T>,
    host: H,
    pipeline: Pipeline<H::Frame>,
    pending: PendingQueue<H::Frame>,
    burst: Box<Burst<H::Frame>>,
    /// Next hops to ask for at the end of a stretch of work.
    probes: Vec<(u16, IpAddr)>,
    config: Arc<Published<Snapshot>>,
    neighbors: Arc<NeighborShared>,
    stats: Arc<SharedCounters>,
    tunnel_stats: Arc<SharedTunnelStats>,
    shapers: Shapers<H::Frame>,
    qos_stats: Arc<SharedQosStats>,
    inboxes: Inboxes<H::Frame>,
    stop: Arc<AtomicBool>,
    state: LoopState,
}

impl<H: Host, R, T> std::fmt::Debug for Worker<H, R, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("queues", &self.rx.len())
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// What the loop carries from round to round.
struct LoopState {
    cfg: Arc<Snapshot>,
    cfg_generation: u64,
    neighbors: Arc<NeighborSnapshot>,
    neigh_generation: u64,
    /// Changes with either of the above; never 0.
    fwd_generation: u32,
    idle_rounds: u32,
    last_publish: u64,
    /// When the tunnels', paths' and shapers' figures were last published.
    last_report: u64,
    window_start: u64,
    window_busy: u64,
}

impl<H, R, T> Worker<H, R, T>
where
    H: Host,
    R: PacketRx<Frame = H::Frame>,
    T: PacketTx<Frame = H::Frame>,
{
    /// Allocates the worker's tables and queues.
    pub fn new(setup: WorkerSetup<H, R, T>) -> Self {
        let cfg = setup.config.load();
        let neighbors = setup.neighbors.load();
        let now_ns = setup.host.ns_at(setup.host.ticks());
        let mut pipeline = Pipeline::new(
            &cfg,
            PipelineSetup {
                worker: setup.index,
                inboxes: setup.inboxes.clone(),
                shared_uplinks: setup.shared_uplinks,
                announcements: setup.announcements,
                events: setup.events,
                seed: setup.seed,
                now_ns,
            },
        );
        let mut tx = setup.tx;
        let shapers = Shapers::new(
            setup.index,
            setup.shaper_inboxes,
            &cfg,
            now_ns,
            &mut pipeline.counters,
            &mut tx,
        );
        let pending = PendingQueue::new(
            cfg.neighbors.pending_neighbors as usize,
            cfg.neighbors.pending_per_neighbor as usize,
        );
        let now = setup.host.ticks();
        Worker {
            index: setup.index,
            rx: setup.rx,
            tx,
            pipeline,
            shapers,
            pending,
            burst: Burst::boxed(),
            probes: Vec::with_capacity(PROBES_PER_ROUND),
            state: LoopState {
                cfg_generation: setup.config.generation(),
                cfg,
                neigh_generation: setup.neighbors.generation(),
                neighbors,
                fwd_generation: 1,
                idle_rounds: 0,
                last_publish: now,
                last_report: now,
                window_start: now,
                window_busy: 0,
            },
            host: setup.host,
            config: setup.config,
            neighbors: setup.neighbors,
            stats: setup.stats,
            tunnel_stats: setup.tunnel_stats,
            qos_stats: setup.qos_stats,
            inboxes: setup.inboxes,
            stop: setup.stop,
        }
    }

    /// The worker's pipeline, for inspection.
    pub fn pipeline(&self) -> &Pipeline<H::Frame> {
        &self.pipeline
    }

    /// The host, for inspection.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, for driving its clock in tests.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// Runs rounds until asked to stop; then lets go of what it holds.
    pub fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let received = self.round();
            if received == 0 {
                self.state.idle_rounds = self.state.idle_rounds.saturating_add(1);
                let sleep_us = self.state.cfg.worker.idle_sleep_us;
                // A worker whose shapers hold packets must be there when they are due.
                let holding = self.shapers.held() > 0;
                if sleep_us > 0 && self.state.idle_rounds > IDLE_ROUNDS_BEFORE_SLEEP && !holding {
                    self.host.sleep(sleep_us);
                }
            } else {
                self.state.idle_rounds = 0;
            }
        }
        self.shut_down();
    }

    /// One round of the loop. Returns how many frames and pieces of tunnel
    /// work it took in.
    pub fn round(&mut self) -> usize {
        let start = self.host.ticks();
        let now_ns = self.host.ns_at(start);
        self.pick_up_snapshots(now_ns);
        let cfg = self.state.cfg.clone();
        let neighbors = self.state.neighbors.clone();
        let ctx = Context {
            cfg: &cfg,
            neighbors: &neighbors,
            fwd_generation: self.state.fwd_generation,
            now_ns,
        };

        let mut received = 0;
        for q in 0..self.rx.len() {
            let (port, rxq) = &mut self.rx[q];
            let got = rxq.rx_burst(*port, &mut self.burst);
            self.pipeline
                .counters
                .drop_n(DropReason::MultiSegment, got.unusable as u64);
            received += got.frames + got.unusable;
            self.run_burst(&ctx);
        }
        if cfg.tunnel.is_some() {
            received += self.take_inbox(&ctx);
            let mut env = Env(&mut self.host);
            self.pipeline.handle_timeouts(&ctx, TIMER_BUDGET, &mut env);
            while self.pipeline.take_originated(&mut self.burst, now_ns) {
                self.run_burst(&ctx);
            }
            self.run_burst(&ctx);
        } else {
            // A tunnel removed by a reload leaves its handed-over work behind.
            let stale = std::iter::from_fn(|| self.inboxes[self.index].pop()).count();
            self.pipeline
                .counters
                .drop_n(DropReason::NoRoute, stale as u64);
        }

        self.solicit_due(&cfg, now_ns);
        let counters = &mut self.pipeline.counters;
        received += self.shapers.take_inbox(now_ns, counters, &mut self.tx);
        received += self.shapers.release(now_ns, counters, &mut self.tx);
        for txq in &mut self.tx {
            txq.flush();
        }
        if start.saturating_sub(self.state.last_report) >= self.host.ticks_per_s() / 10 {
            if cfg.tunnel.is_some() {
                self.publish_tunnels(&cfg, now_ns);
            }
            self.qos_stats.publish(self.shapers.report());
            self.state.last_report = start;
        }
        self.pipeline.expire_flows(now_ns, EXPIRE_BUDGET);
        self.account(start, received);
        received
    }

    /// Takes a new configuration or neighbour table if one was published.
    fn pick_up_snapshots(&mut self, now_ns: u64) {
        let s = &mut self.state;
        if self.config.generation() != s.cfg_generation {
            s.cfg_generation = self.config.generation();
            s.cfg = self.config.load();
            self.pipeline.reconfigure(&s.cfg, now_ns);
            self.shapers
                .reconfigure(&s.cfg, now_ns, &mut self.pipeline.counters, &mut self.tx);
            s.fwd_generation = next_generation(s.fwd_generation);
        }
        if self.neighbors.generation() != s.neigh_generation {
            s.neigh_generation = self.neighbors.generation();
            s.neighbors = self.neighbors.load();
            s.fwd_generation = next_generation(s.fwd_generation);
            let (tx, counters, shapers, cfg, neighbors) = (
                &mut self.tx,
                &mut self.pipeline.counters,
                &mut self.shapers,
                &s.cfg,
                &s.neighbors,
            );
            self.pending.release(
                |port, addr| neighbors.get(port, addr).map(|e| e.mac),
                |port, mac, mut frame| {
                    let Some(out) = cfg.ports.get(usize::from(port)) else {
                        return counters.drop(DropReason::NoRoute);
                    };
                    let data = frame.data_mut();
                    data[0..6].copy_from_slice(&mac);
                    data[6..12].copy_from_slice(&out.mac);
                    counters.add(Counter::Forwarded, 1);
                    counters.add(Counter::ForwardedBytes, frame.len() as u64);
                    // The packet's flow is no longer known: it is shaped unclassified.
                    shapers.transmit(port, Shaping::NONE, frame, now_ns, counters, tx);
                },
            );
        }
    }

    /// Runs the burst through the pipeline and carries out what it decided.
    fn run_burst(&mut self, ctx: &Context<'_>) {
        if self.burst.is_empty() {
            return;
        }
        let mut env = Env(&mut self.host);
        self.pipeline.run(ctx, &mut self.burst, &mut env);
        let (tx, pending, probes) = (&mut self.tx, &mut self.pending, &mut self.probes);
        let (shapers, counters) = (&mut self.shapers, &mut self.pipeline.counters);
        self.burst.drain(|next, shaping, frame| match next {
            Next::Transmit(port) => {
                shapers.transmit(port, shaping, frame, ctx.now_ns, counters, tx)
            }
            Next::Resolve { port, next_hop } => {
                match pending.hold(port, next_hop, frame, ctx.now_ns) {
                    Ok(Held::ProbeNow) if probes.len() < PROBES_PER_ROUND => {
                        probes.push((port, next_hop))
                    }
                    Ok(_) => {}
                    Err(_dropped) => counters.drop(DropReason::PendingFull),
                }
            }
            other => unreachable!("the pipeline left a packet at {other:?}"),
        });
    }

    /// Runs tunnel work other workers handed over. Returns how much.
    fn take_inbox(&mut self, ctx: &Context<'_>) -> usize {
        let mut taken = 0;
        while taken < BURST_SIZE {
            let Some(handoff) = self.inboxes[self.index].pop() else {
                break;
            };
            taken += 1;
            let refused = match handoff.work {
                // The inner packet left its Ethernet header behind; the
                // burst's encrypt entry expects room for one.
                Handed::Tunnel(Work::Send {
                    peer,
                    public_key,
                    mut frame,
                }) => {
                    // Queued under the sender's configuration: the peer is
                    // found by its key in ours (moved, or gone since).
                    match self.pipeline.resolve_handed(ctx, peer, &public_key) {
                        // Counted by the tunnel engine.
                        None => false,
                        Some(peer) if frame.prepend(ETHERNET_LEN) => {
                            let (steer, shaping) = (handoff.steer, handoff.shaping);
                            self.burst
                                .push_encrypt(peer, steer, shaping, frame)
                                .is_err()
                        }
                        Some(_) => true,
                    }
                }
                Handed::Tunnel(Work::Receive { from, frame }) => {
                    let uplink = handoff.uplink;
                    self.burst.push_decrypt(from, uplink, frame).is_err()
                }
                Handed::Tunnel(Work::Initiation {
                    from,
                    frame,
                    opened,
                }) => {
                    let mut env = Env(&mut self.host);
                    let uplink = handoff.uplink;
                    self.pipeline.answer_initiation(
                        ctx,
                        &mut self.burst,
                        (from, uplink),
                        frame,
                        &opened,
                        &mut env,
                    )
                }
                Handed::UplinkBfd {
                    uplink,
                    l3_offset,
                    frame,
                } => {
                    self.pipeline.take_uplink_bfd(ctx, uplink, l3_offset, frame);
                    false
                }
            };
            if refused {
                self.pipeline.counters.drop(DropReason::NoBuffer);
            }
        }
        self.run_burst(ctx);
        taken
    }

    /// Asks for next hops: stale entries met by traffic, new ones the
    /// pipeline held packets for, and due retransmissions.
    fn solicit_due(&mut self, cfg: &Snapshot, now_ns: u64) {
        while let Some((port, addr)) = self.pipeline.poll_probe() {
            self.solicit(cfg, port, addr);
        }
        for i in 0..self.probes.len() {
            let (port, addr) = self.probes[i];
            self.solicit(cfg, port, addr);
        }
        self.probes.clear();
        let retransmit_ns = u64::from(cfg.neighbors.retransmit_ms) * 1_000_000;
        let mut unresolved = 0u64;
        let probes = &mut self.probes;
        self.pending.poll_timers(
            now_ns,
            retransmit_ns,
            cfg.neighbors.max_probes,
            |port, addr| {
                if probes.len() < PROBES_PER_ROUND {
                    probes.push((port, addr));
                }
            },
            |_frame| unresolved += 1,
        );
        self.pipeline
            .counters
            .drop_n(DropReason::NeighborUnresolved, unresolved);
        for i in 0..self.probes.len() {
            let (port, addr) = self.probes[i];
            self.solicit(cfg, port, addr);
        }
        self.probes.clear();
    }

    /// Sends an ARP request or Neighbor Solicitation for `addr` out of `port`.
    fn solicit(&mut self, cfg: &Snapshot, port: u16, addr: IpAddr) {
        let Some(mut frame) = self.host.alloc() else {
            return self.pipeline.counters.drop(DropReason::NoBuffer);
        };
        if self.pipeline.solicit(cfg, port, addr, &mut frame) {
            if let Some(txq) = self.tx.get_mut(usize::from(port)) {
                txq.push(frame);
            }
        }
    }

    /// Busy and total cycles, the busy ratio, and a publication of the
    /// counters about once a millisecond.
    fn account(&mut self, start: u64, received: usize) {
        let end = self.host.ticks();
        let spent = end.saturating_sub(start);
        let hz = self.host.ticks_per_s();
        let (counters, s) = (&mut self.pipeline.counters, &mut self.state);
        counters.add(Counter::TotalCycles, spent);
        if received > 0 {
            counters.add(Counter::BusyCycles, spent);
            s.window_busy += spent;
        }
        let window = end.saturating_sub(s.window_start);
        if window >= hz {
            counters.set(
                Counter::BusyRatioPpm,
                s.window_busy * 1_000_000 / window.max(1),
            );
            s.window_start = end;
            s.window_busy = 0;
        }
        if end.saturating_sub(s.last_publish) >= hz / 1000 {
            self.publish();
            self.state.last_publish = end;
        }
    }

    /// Sends what is queued, frees what waits for a next hop, a handshake
    /// or a shaper and the tunnel work queued for this worker, and
    /// publishes the final counters.
    pub fn shut_down(&mut self) {
        for txq in &mut self.tx {
            txq.flush();
        }
        self.shapers.shut_down(&mut self.pipeline.counters);
        self.qos_stats.publish(self.shapers.report());
        self.pipeline.stop_tunnel();
        while self.inboxes[self.index].pop().is_some() {}
        let held = self.pending.packets() as u64;
        self.pipeline
            .counters
            .drop_n(DropReason::NeighborUnresolved, held);
        self.pending = PendingQueue::new(0, 0);
        self.publish();
    }

    /// Copies the tunnel engine's and the paths' figures out for the metrics endpoint.
    fn publish_tunnels(&mut self, cfg: &Snapshot, now_ns: u64) {
        self.tunnel_stats
            .publish_paths(self.pipeline.path_report(now_ns));
        let (Some(engine), Some(t)) = (self.pipeline.tunnels(), cfg.tunnel.as_deref()) else {
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

    /// Copies the counters out for the metrics endpoint.
    pub fn publish(&mut self) {
        for (port, txq) in self.tx.iter().enumerate() {
            self.stats.set_port_tx_dropped(port, txq.dropped());
        }
        let tx_dropped: u64 = self.tx.iter().map(PacketTx::dropped).sum();
        let counters = &mut self.pipeline.counters;
        counters.set(Counter::TxDropped, tx_dropped);
        counters.set(Counter::PendingPackets, self.pending.packets() as u64);
        self.stats.publish(counters);
    }
}

fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests;
