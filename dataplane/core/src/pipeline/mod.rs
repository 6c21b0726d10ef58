//! The packet path: one fixed sequence of stages over a burst.
//!
//! A worker hands [`Pipeline::run`] a [`Burst`]: up to [`BURST_SIZE`](crate::BURST_SIZE)
//! frames, each with a small record whose [`Next`] names the stage that
//! takes it next. The stages run in one fixed order; each looks only at the
//! packets marked for it, does its work for all of them, and writes its
//! decision back into their records. No stage calls back into an earlier
//! one, and none has another way out than the records (and the counters).
//!
//! ```text
//!  parse ─► admit ─► decrypt ─► local ─► flow ─► dpi ─► policy ─► route ─► encrypt ─► rewrite ─► out
//!             │         │         │                                 │         │
//!             │         │         └─ replies ───────────────────────┤         └─ datagrams to their uplink
//!             │         └─ inner packets, parsed and admitted again, in the same pass
//!             └─ tunnel datagrams
//! ```
//!
//! Packets enter where they belong: frames from a port at `parse`; inner
//! packets another worker handed over at `encrypt`, datagrams at `decrypt`;
//! datagrams the tunnel engine originated at `encrypt`'s outer headers. What
//! leaves is in each slot's final [`Next`]: [`Next::Transmit`] (headers
//! ready), [`Next::Resolve`] (waiting for a next hop's MAC) or [`Next::Gone`]
//! (consumed, handed to another worker, or dropped and counted); the worker
//! carries that out.
//!
//! Read before editing: RFC 1812 (IPv4 routers), RFC 826 (ARP), RFC 4861
//! (Neighbor Discovery), RFC 4443 (ICMPv6), RFC 1624 (incremental checksum).

mod admit;
mod burst;
mod decrypt;
mod dpi;
mod encrypt;
mod flow;
mod icmp;
mod local;
mod neighbor_msgs;
mod parse;
mod paths;
mod policy;
mod rewrite;
mod route;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;

use crate::config::Snapshot;
use crate::dpi::counters::DpiCounters;
use crate::flow::table::FlowTable;
use crate::frame::Frame;
use crate::neighbor::{NeighborEvent, NeighborSnapshot};
use crate::paths::{SharedUplinks, UPLINK_BFD_WORKER};
use crate::stats::{Counter, Counters, DropReason, PathsReport, PolicyCounters};
use crate::tunnel::noise::ReceivedInitiation;
use crate::tunnel::{Outcome, TunnelEnv, Tunnels, Work};

pub use burst::{Burst, Next, Shaping};
pub use neighbor_msgs::write_solicitation;
use route::Hop;

const NS_PER_S: u64 = 1_000_000_000;

/// What one pass over a burst reads besides the burst.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The configuration in force.
    pub cfg: &'a Snapshot,
    /// The neighbour table in force.
    pub neighbors: &'a NeighborSnapshot,
    /// Changes whenever either of the above does; cached forwarding decisions
    /// from another generation are ignored. Never 0.
    pub fwd_generation: u32,
    /// The time now (ns on the data-plane clock).
    pub now_ns: u64,
}

/// Every worker's queue of tunnel work: a worker that meets a packet of a
/// peer another worker owns pushes it onto that worker's queue.
pub type Inboxes<F> = Arc<[ArrayQueue<Handoff<F>>]>;

/// Work for another worker: tunnel work for the worker that owns its peer
/// (with what the pipeline knew of it that the engine does not carry), or
/// a Control packet for the worker that runs the uplinks' BFD sessions.
#[derive(Debug)]
pub struct Handoff<F> {
    /// What is handed over.
    pub work: Handed<F>,
    /// A packet's steering: the policy rule that routes its flow and the
    /// flow's hash ([`Burst::push_encrypt`]); 0 for none.
    pub steer: u64,
    /// The uplink a datagram arrived by; `u8::MAX` when unknown.
    pub uplink: u8,
    /// How a packet's egress shaper queues it.
    pub shaping: Shaping,
}

/// What a [`Handoff`] carries.
#[derive(Debug)]
pub enum Handed<F> {
    /// A packet to send or a datagram received, for the tunnel engine.
    Tunnel(Work<F>),
    /// A BFD Control packet (its Ethernet frame, the IPv4 header at
    /// `l3_offset`) for the session of `uplink`.
    UplinkBfd {
        /// The uplink, by its index in the path table.
        uplink: u8,
        /// Where its IPv4 header starts.
        l3_offset: u16,
        /// The frame.
        frame: F,
    },
}

impl<F> From<Work<F>> for Handed<F> {
    fn from(work: Work<F>) -> Self {
        Handed::Tunnel(work)
    }
}

/// One worker's packet-path state: its flow table, classification state,
/// rate limits, tunnel engine and counters. Nothing in it is shared.
pub struct Pipeline<F> {
    /// What this worker counted.
    pub counters: Counters,
    worker: usize,
    flows: FlowTable,
    dpi: dpi::State,
    policy: policy::State,
    errors: icmp::Errors,
    learned: local::Learned,
    route: route::State,
    tunnel: Option<encrypt::Tunnel<F>>,
    inboxes: Inboxes<F>,
    shared_uplinks: Arc<SharedUplinks>,
    seed: u64,
}

impl<F> std::fmt::Debug for Pipeline<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("worker", &self.worker)
            .field("flows", &self.flows.len())
            .field("tunnel", &self.tunnel.is_some())
            .finish_non_exhaustive()
    }
}

/// What a pipeline is built from.
#[derive(Debug)]
pub struct PipelineSetup<F> {
    /// This worker's number.
    pub worker: usize,
    /// Every worker's queue of tunnel work, by worker (its length is the
    /// number of workers).
    pub inboxes: Inboxes<F>,
    /// Where neighbours learned from ARP and ND go.
    pub events: Sender<NeighborEvent>,
    /// Which uplinks BFD says are down and what was sent over each, shared
    /// by every worker.
    pub shared_uplinks: Arc<SharedUplinks>,
    /// Every worker's queue of the flows other workers' FTP and SIP sessions
    /// announced (one [`crate::dpi::Announcements`] for all workers).
    pub announcements: crate::dpi::Announcements,
    /// Keys the flow table's hash and seeds the tunnel engine's limiter.
    pub seed: u64,
    /// The time now (ns on the data-plane clock): path meters start then.
    pub now_ns: u64,
}

impl<F: Frame> Pipeline<F> {
    /// A pipeline with its tables sized from `cfg`. All memory is allocated here.
    pub fn new(cfg: &Snapshot, setup: PipelineSetup<F>) -> Self {
        let mut pipeline = Pipeline {
            counters: Counters::default(),
            worker: setup.worker,
            flows: FlowTable::new(
                cfg.worker.flow_capacity as usize,
                u64::from(cfg.worker.flow_idle_timeout_s) * NS_PER_S,
                setup.seed,
            ),
            dpi: dpi::State::new(cfg, setup.worker, setup.announcements.clone()),
            policy: policy::State::new(cfg),
            errors: icmp::Errors::new(cfg, setup.seed),
            learned: local::Learned {
                events: setup.events,
            },
            route: route::State::default(),
            tunnel: None,
            inboxes: setup.inboxes,
            shared_uplinks: setup.shared_uplinks,
            seed: setup.seed,
        };
        pipeline.sync_tunnel(cfg, setup.now_ns);
        pipeline
    }

    /// Applies a new snapshot at `now_ns`: the settings that can change at
    /// run time, and the tunnel engine and its paths started, reconfigured
    /// or stopped to match.
    pub fn reconfigure(&mut self, cfg: &Snapshot, now_ns: u64) {
        self.dpi.reconfigure(cfg, &mut self.flows);
        self.errors.reconfigure(cfg);
        self.flows
            .set_idle_timeout(u64::from(cfg.worker.flow_idle_timeout_s) * NS_PER_S);
        self.sync_tunnel(cfg, now_ns);
    }

    fn sync_tunnel(&mut self, cfg: &Snapshot, now_ns: u64) {
        match (&cfg.tunnel, &mut self.tunnel) {
            (None, tunnel) => *tunnel = None,
            (Some(t), Some(tunnel)) => tunnel.engine.reconfigure(&t.config),
            (Some(t), tunnel @ None) => {
                let mut seed = [0u8; 16];
                seed[..8].copy_from_slice(&self.seed.to_le_bytes());
                seed[8..].copy_from_slice(&(self.worker as u64).to_le_bytes());
                let engine = Tunnels::new(self.worker, self.inboxes.len(), &t.config, seed);
                *tunnel = Some(encrypt::Tunnel::new(engine, self.seed as u16));
            }
        }
        if let Some(tunnel) = &mut self.tunnel {
            let workers = self.inboxes.len();
            let at = (self.worker, workers);
            tunnel
                .paths
                .reconfigure(cfg, at, &self.shared_uplinks, now_ns);
            if let Some(t) = &cfg.tunnel {
                tunnel.fit_endpoints(t.paths.paths.len().max(t.config.peers.len()));
            }
        }
    }

    /// Runs every stage, in order, over `burst`. Afterwards each slot is
    /// [`Next::Transmit`], [`Next::Resolve`] or [`Next::Gone`].
    // Out of line (one call per burst), so that profiles attribute the pass to it.
    #[inline(never)]
    pub fn run(&mut self, ctx: &Context<'_>, burst: &mut Burst<F>, env: &mut impl TunnelEnv<F>) {
        let counters = &mut self.counters;
        parse::run(counters, burst);
        admit::run(counters, &mut self.errors, ctx, burst, burst.slots());
        if let Some(tunnel) = &mut self.tunnel {
            decrypt::run(
                tunnel,
                &self.inboxes,
                &mut self.errors,
                counters,
                ctx,
                burst,
                env,
            );
        }
        local::run(&self.learned, &mut self.errors, counters, ctx, burst);
        if let Some(tunnel) = &mut self.tunnel {
            uplink_bfd(tunnel, &self.inboxes, self.worker, counters, ctx, burst);
        }
        flow::run(
            &mut self.flows,
            &mut self.dpi,
            &mut self.policy,
            counters,
            ctx,
            burst,
        );
        dpi::run(&mut self.dpi, &mut self.flows, ctx, burst);
        policy::run(&mut self.policy, &self.flows, counters, ctx, burst);
        let route = &mut self.route;
        route::run(
            route,
            &mut self.errors,
            &mut self.flows,
            counters,
            ctx,
            burst,
        );
        match &mut self.tunnel {
            Some(tunnel) => {
                let stale = &mut route.stale;
                encrypt::run(tunnel, stale, &self.inboxes, counters, ctx, burst, env)
            }
            None => encrypt::refuse(counters, burst),
        }
        rewrite::run(counters, ctx, burst);
    }

    /// Moves the engine's originated datagrams (handshake messages,
    /// keepalives, packets a completed handshake released) into `burst`, as
    /// many as fit, entering at the outer headers. True when some remain.
    pub fn take_originated(&mut self, burst: &mut Burst<F>, now_ns: u64) -> bool {
        self.tunnel
            .as_mut()
            .is_some_and(|tunnel| tunnel.take_originated(burst, now_ns))
    }

    /// Runs the tunnel peers' due timers (up to `budget` peers) and the
    /// path meters that are due; what they send is taken with
    /// [`Pipeline::take_originated`].
    pub fn handle_timeouts(
        &mut self,
        ctx: &Context<'_>,
        budget: usize,
        env: &mut impl TunnelEnv<F>,
    ) {
        if let (Some(tunnel), Some(t)) = (&mut self.tunnel, ctx.cfg.tunnel.as_deref()) {
            tunnel
                .engine
                .handle_timeouts(&t.config, ctx.now_ns, budget, env);
            let queued = &mut tunnel.queued;
            let to_routers = &mut tunnel.to_routers;
            tunnel.paths.handle_timeouts(
                &mut tunnel.engine,
                env,
                ctx.now_ns,
                |uplink, to, frame| queued.push_back((uplink, to, Shaping::CONTROL, frame)),
                |uplink, frame| to_routers.push_back((uplink, frame)),
            );
            while let Some((u, mut frame)) = tunnel.to_routers.pop_front() {
                let Some(uplink) = t.paths.uplinks.get(usize::from(u)) else {
                    continue;
                };
                let Some(bfd) = &uplink.bfd else {
                    continue;
                };
                let (port, mac, next) =
                    match route::decide_bfd(ctx, &mut self.route.stale, uplink, &bfd.ends) {
                        Hop::Port { port, mac } => (port, mac, Next::Transmit(port)),
                        Hop::Unresolved { port, next_hop } => {
                            (port, [0; 6], Next::Resolve { port, next_hop })
                        }
                        Hop::Peer { .. } | Hop::Unreachable => {
                            self.counters.drop(DropReason::NoRoute);
                            continue;
                        }
                    };
                let Some(info) = ctx.cfg.ports.get(usize::from(port)) else {
                    continue;
                };
                // Unresolved: the MACs are written when the next hop answers.
                let data = frame.data_mut();
                data[0..6].copy_from_slice(&mac);
                data[6..12].copy_from_slice(&info.mac);
                data[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                tunnel.ready.push_back((next, frame));
            }
        }
    }

    /// Takes a Control packet another worker received for the session of
    /// `uplink` (this worker runs the uplinks' sessions).
    pub fn take_uplink_bfd(&mut self, ctx: &Context<'_>, uplink: u8, l3_offset: u16, frame: F) {
        if let Some(tunnel) = &mut self.tunnel {
            let datagram = frame.data().get(usize::from(l3_offset)..).unwrap_or(&[]);
            tunnel.paths.handle_uplink_bfd(uplink, datagram, ctx.now_ns);
        }
    }

    /// This worker's paths and failovers, for the metrics endpoint.
    pub fn path_report(&mut self, now_ns: u64) -> PathsReport {
        self.tunnel
            .as_mut()
            .map(|t| t.paths.report(now_ns))
            .unwrap_or_default()
    }

    /// The earliest time a tunnel timer or path meter of this worker is due, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        let t = self.tunnel.as_ref()?;
        let paths = t.paths.poll_timeout();
        t.engine.poll_timeout().into_iter().chain(paths).min()
    }

    /// The next neighbour that went stale under traffic and should be
    /// re-probed now (a few per pass; the rest when they are met again).
    pub fn poll_probe(&mut self) -> Option<(u16, IpAddr)> {
        self.route.stale.pop()
    }

    /// Builds an ARP request or Neighbor Solicitation for `target` out of
    /// `port` into an empty frame. False when the port has no address of the
    /// family to ask from.
    pub fn solicit(&mut self, cfg: &Snapshot, port: u16, target: IpAddr, frame: &mut F) -> bool {
        let Some(info) = cfg.ports.get(usize::from(port)) else {
            return false;
        };
        let ok = write_solicitation(info, target, frame);
        if ok {
            let counter = if target.is_ipv4() {
                Counter::ArpRequests
            } else {
                Counter::NdSolicitations
            };
            self.counters.add(counter, 1);
        }
        ok
    }

    /// Ages out idle flows, examining at most `budget` entries.
    pub fn expire_flows(&mut self, now_ns: u64, budget: usize) {
        self.flows.expire(now_ns, budget);
        let stats = self.flows.stats();
        self.counters.set(Counter::FlowsCreated, stats.inserted);
        self.counters.set(Counter::FlowsExpired, stats.expired);
        self.counters
            .set(Counter::FlowsActive, self.flows.len() as u64);
    }

    /// The flow table, for inspection.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// This worker's classification counters (shared with the metrics endpoint).
    pub fn dpi_counters(&self) -> Arc<DpiCounters> {
        self.dpi.counters.clone()
    }

    /// This worker's drops per policy rule (shared with the metrics endpoint).
    pub fn policy_counters(&self) -> Arc<PolicyCounters> {
        self.policy.counters.clone()
    }

    /// The tunnel engine, when a tunnel is configured.
    pub fn tunnels(&self) -> Option<&Tunnels<F>> {
        self.tunnel.as_ref().map(|t| &t.engine)
    }

    /// The peer of tunnel work another worker queued under its own
    /// configuration, in this worker's (see [`Tunnels::resolve_handed`]).
    pub fn resolve_handed(
        &mut self,
        ctx: &Context<'_>,
        peer: u32,
        public_key: &[u8; 32],
    ) -> Option<u32> {
        let (Some(tunnel), Some(t)) = (&mut self.tunnel, ctx.cfg.tunnel.as_deref()) else {
            // The tunnel was stopped since the work was queued.
            self.counters.drop(DropReason::LocalUnsupported);
            return None;
        };
        tunnel.engine.resolve_handed(&t.config, peer, public_key)
    }

    /// Answers an initiation another worker opened for a peer this worker
    /// owns: the response joins `burst` as a datagram back the way the
    /// initiation came. True when the burst had no room for it.
    pub fn answer_initiation(
        &mut self,
        ctx: &Context<'_>,
        burst: &mut Burst<F>,
        (from, uplink): (SocketAddr, u8),
        frame: F,
        opened: &ReceivedInitiation,
        env: &mut impl TunnelEnv<F>,
    ) -> bool {
        let (Some(tunnel), Some(t)) = (&mut self.tunnel, ctx.cfg.tunnel.as_deref()) else {
            // The tunnel was stopped since the initiation was opened.
            self.counters.drop(DropReason::LocalUnsupported);
            return false;
        };
        let outcome = tunnel
            .engine
            .answer_opened(&t.config, from, frame, opened, ctx.now_ns, env);
        tunnel.measure_handshakes(Some((uplink, from)), ctx.now_ns);
        match outcome {
            Outcome::Transmit { to, frame } => burst
                .push_datagram(to, uplink, Shaping::CONTROL, frame)
                .is_err(),
            // A replay or a removed peer, counted by the engine.
            _ => false,
        }
    }

    /// Gives up the tunnel engine's state (queued packets included), as at shutdown.
    pub fn stop_tunnel(&mut self) {
        self.tunnel = None;
    }
}

#[cfg(test)]
mod tests;

/// The Control packets `local` found for an uplink's BFD session: taken by
/// the session when this worker runs it, else handed to the worker that
/// does.
// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
fn uplink_bfd<F: Frame>(
    tunnel: &mut encrypt::Tunnel<F>,
    inboxes: &Inboxes<F>,
    worker: usize,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
) {
    for i in burst.slots() {
        let Next::UplinkBfd { uplink } = burst.meta[i].next else {
            continue;
        };
        let l3_offset = burst.frame_and_headers(i).1.l3_offset;
        let Some(frame) = burst.take(i) else {
            continue;
        };
        if worker == UPLINK_BFD_WORKER {
            let datagram = frame.data().get(usize::from(l3_offset)..).unwrap_or(&[]);
            tunnel.paths.handle_uplink_bfd(uplink, datagram, ctx.now_ns);
            continue;
        }
        let work = Handed::UplinkBfd {
            uplink,
            l3_offset,
            frame,
        };
        let shaping = (0, Shaping::CONTROL);
        encrypt::hand_off(inboxes, counters, UPLINK_BFD_WORKER, work, shaping, uplink);
    }
}
