//! Stage `encrypt`: packets routed into the tunnel are sealed for their
//! peer by the tunnel engine, and every WireGuard datagram (sealed packets,
//! handshake answers from `decrypt`, messages the engine originated) gets
//! its outer Ethernet, IP and UDP headers and the uplink toward its
//! endpoint. A packet of a peer another worker owns goes to that worker.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::paths::{Paths, NO_UPLINK};
use super::route::{self, Hop};
use super::{Burst, Context, Handed, Handoff, Inboxes, Next, Shaping};
use crate::frame::Frame;
use crate::packet::dscp;
use crate::stats::{Counter, Counters, DropReason};
use crate::tunnel::outer::{OuterHeaders, ETHERNET_LEN};
use crate::tunnel::{Outcome, TunnelConfig, TunnelEnv, Tunnels};

/// Endpoints whose outer headers a worker remembers, at least and at most:
/// two slots for each of the site's ways out (paths, or peers without
/// uplinks) in between, so that a hub's do not evict each other.
const ENDPOINT_SLOTS: std::ops::RangeInclusive<usize> = 256..=16_384;

/// The tunnel's share of a worker: the engine, its peers' paths, and how
/// its datagrams leave.
pub(super) struct Tunnel<F> {
    pub engine: Tunnels<F>,
    pub paths: Paths,
    /// Datagrams of ours waiting for a burst (path probes, second copies
    /// of duplicated packets): uplink, endpoint, how the egress treats it,
    /// message.
    pub queued: VecDeque<(u8, SocketAddr, Shaping, F)>,
    /// BFD Control packets for the uplinks' routers, by uplink, their
    /// Ethernet headers still to be written.
    pub to_routers: VecDeque<(u8, F)>,
    /// Frames built whole, with how they leave.
    pub ready: VecDeque<(Next, F)>,
    endpoints: EndpointCache,
    /// IPv4 identification of the next datagram.
    ip_id: u16,
}

impl<F: Frame> Tunnel<F> {
    /// Sizes the endpoint cache for `ways` ways out (emptied when it changes).
    pub(super) fn fit_endpoints(&mut self, ways: usize) {
        let slots = ways
            .saturating_mul(2)
            .next_power_of_two()
            .clamp(*ENDPOINT_SLOTS.start(), *ENDPOINT_SLOTS.end());
        if slots != self.endpoints.slots.len() {
            self.endpoints = EndpointCache::with_slots(slots);
        }
    }

    pub(super) fn new(engine: Tunnels<F>, ip_id: u16) -> Self {
        Tunnel {
            engine,
            paths: Paths::default(),
            queued: VecDeque::new(),
            to_routers: VecDeque::new(),
            ready: VecDeque::new(),
            endpoints: EndpointCache::with_slots(*ENDPOINT_SLOTS.start()),
            ip_id,
        }
    }

    /// Gives the handshake round trips the engine measured to the passive
    /// meters: `arrived` is the uplink and source of the datagram just
    /// received, `None` after the timers ran.
    #[inline]
    pub(super) fn measure_handshakes(&mut self, arrived: Option<(u8, SocketAddr)>, now: u64) {
        while let Some(rt) = self.engine.poll_round_trip() {
            self.paths.handshake_round_trip(rt, arrived, now);
        }
    }

    /// Moves originated datagrams (the engine's, then our own) into
    /// `burst` while it has room, each over its peer's path; true when some
    /// remain queued.
    pub(super) fn take_originated(&mut self, burst: &mut Burst<F>, now: u64) -> bool {
        self.measure_handshakes(None, now);
        while !burst.is_full() {
            if let Some((next, frame)) = self.ready.pop_front() {
                if let Err(frame) = burst.push_ready(next, frame) {
                    unreachable!("room was checked: {}", frame.len());
                }
                continue;
            }
            let (uplink, to, shaping, frame) = match self.engine.poll_transmit() {
                Some((peer, to, frame)) => {
                    let (_, uplink, to) = self.over_path(peer, 0, to, frame.len(), now);
                    (uplink, to, Shaping::CONTROL, frame)
                }
                None => match self.queued.pop_front() {
                    Some(queued) => queued,
                    None => return false,
                },
            };
            if let Err(frame) = burst.push_datagram(to, uplink, shaping, frame) {
                unreachable!("room was checked: {}", frame.len());
            }
        }
        true
    }

    /// The path, uplink and endpoint of a datagram of `len` bytes for `peer`,
    /// steered by `steer`, which the engine would send to `to`: over the
    /// path its selection gives when the peer has paths (counted there),
    /// else by the routes.
    #[inline]
    fn over_path(
        &mut self,
        peer: u32,
        steer: u64,
        to: SocketAddr,
        len: usize,
        now: u64,
    ) -> (Option<usize>, u8, SocketAddr) {
        match self.paths.route(peer, steer, now) {
            Some((path, uplink, endpoint)) => {
                self.paths.count_tx(path, len);
                (Some(path), uplink, endpoint.unwrap_or(to))
            }
            None => (None, NO_UPLINK, to),
        }
    }
}

/// Hands `work` to the worker that owns its peer, with a packet's steering
/// and shaping or a datagram's arrival uplink; a full queue drops it, counted.
pub(super) fn hand_off<F>(
    inboxes: &Inboxes<F>,
    counters: &mut Counters,
    worker: usize,
    work: impl Into<Handed<F>>,
    (steer, shaping): (u64, Shaping),
    uplink: u8,
) {
    let handoff = Handoff {
        work: work.into(),
        steer,
        uplink,
        shaping,
    };
    let accepted = inboxes.get(worker).map(|inbox| inbox.push(handoff));
    if !matches!(accepted, Some(Ok(()))) {
        counters.drop(DropReason::TunnelHandoffFull);
    }
}

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    tunnel: &mut Tunnel<F>,
    stale: &mut route::StaleProbes,
    inboxes: &Inboxes<F>,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
    env: &mut impl TunnelEnv<F>,
) {
    let Some(t) = ctx.cfg.tunnel.as_deref() else {
        return refuse(counters, burst);
    };
    let mut i = 0;
    loop {
        if i == burst.len() {
            // Handshake messages and packets a handshake released leave in
            // this pass too, as far as the burst has room.
            tunnel.take_originated(burst, ctx.now_ns);
            if i == burst.len() {
                break;
            }
        }
        if let Next::Encrypt { peer } = burst.meta[i].next {
            tunnel.seal(inboxes, counters, ctx, &t.config, burst, i, peer, env);
        }
        if matches!(burst.meta[i].next, Next::Datagram) {
            tunnel.outer_headers(stale, counters, ctx, burst, i);
        }
        i += 1;
    }
}

/// Without a tunnel, nothing can be encrypted (a tunnel removed by a
/// reload leaves such packets behind).
pub(super) fn refuse<F: Frame>(counters: &mut Counters, burst: &mut Burst<F>) {
    for i in burst.slots() {
        if let Next::Encrypt { .. } | Next::Datagram = burst.meta[i].next {
            counters.drop(DropReason::NoRoute);
            burst.discard(i);
        }
    }
}

impl<F: Frame> Tunnel<F> {
    /// Seals packet `i` for `peer`: it becomes the datagram to send, waits
    /// for a handshake, or goes to the worker that owns the peer.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &mut self,
        inboxes: &Inboxes<F>,
        counters: &mut Counters,
        ctx: &Context<'_>,
        cfg: &TunnelConfig,
        burst: &mut Burst<F>,
        i: usize,
        peer: u32,
        env: &mut impl TunnelEnv<F>,
    ) {
        let Some(mut frame) = burst.take(i) else {
            unreachable!("a slot to encrypt holds its frame")
        };
        if !frame.trim_front(ETHERNET_LEN) {
            return counters.drop(DropReason::NoRoute);
        }
        let steer = burst.steer[i];
        let shaping = Shaping {
            tunnel: ctx.cfg.site.tunnel_slots.of_peer(peer),
            dscp: dscp::get(frame.data()),
            ..burst.shaping[i]
        };
        match self.engine.send(cfg, peer, frame, ctx.now_ns, env) {
            Outcome::Transmit { to, frame } => {
                let (path, uplink, first) =
                    self.over_path(peer, steer, to, frame.len(), ctx.now_ns);
                if let Some((second, uplink2, endpoint)) = self.paths.second_route(peer, steer) {
                    // A pinned flow may be on the path that is second for new ones.
                    if Some(second) != path {
                        let copy_to = (second, uplink2, endpoint.unwrap_or(to));
                        self.duplicate(&frame, copy_to, shaping, counters, env);
                    }
                }
                burst.addr[i] = first;
                burst.uplink[i] = uplink;
                burst.shaping[i] = shaping;
                burst.put(i, frame, Next::Datagram);
            }
            Outcome::HandOff { worker, work } => {
                let shaping = burst.shaping[i];
                hand_off(inboxes, counters, worker, work, (steer, shaping), NO_UPLINK)
            }
            // Sending never delivers; `Done`: staged for a handshake, or dropped and counted.
            Outcome::Deliver { .. } | Outcome::Extension { .. } | Outcome::Done => {}
        }
    }

    /// Queues a copy of the sealed `frame` for `path` (its uplink and
    /// endpoint), shaped as the original.
    fn duplicate(
        &mut self,
        frame: &F,
        (path, uplink, to): (usize, u8, SocketAddr),
        shaping: Shaping,
        counters: &mut Counters,
        env: &mut impl TunnelEnv<F>,
    ) {
        let Some(mut copy) = env.alloc() else {
            return counters.drop(DropReason::NoBuffer);
        };
        if !copy.set_len(frame.len()) {
            return counters.drop(DropReason::NoBuffer);
        }
        copy.data_mut().copy_from_slice(frame.data());
        self.paths.count_tx(path, copy.len());
        self.queued.push_back((uplink, to, shaping, copy));
    }

    /// Puts the outer headers on datagram `i` (to `burst.addr[i]`) and
    /// finds its way out.
    fn outer_headers(
        &mut self,
        stale: &mut route::StaleProbes,
        counters: &mut Counters,
        ctx: &Context<'_>,
        burst: &mut Burst<F>,
        i: usize,
    ) {
        let to = burst.addr[i];
        let uplink = burst.uplink[i];
        let dscp = burst.shaping[i].dscp;
        self.ip_id = self.ip_id.wrapping_add(1);
        let ip_id = self.ip_id;
        if let Some((port, headers)) = self.endpoints.get(to, uplink, ctx.fwd_generation) {
            let frame = burst.frame_mut(i);
            if !headers.apply(frame, ip_id, dscp) {
                counters.drop(DropReason::NoBuffer);
                return burst.discard(i);
            }
            counters.add(Counter::Forwarded, 1);
            counters.add(Counter::ForwardedBytes, frame.len() as u64);
            burst.meta[i].next = Next::Transmit(port);
            return;
        }
        let via = ctx
            .cfg
            .tunnel
            .as_ref()
            .and_then(|t| t.paths.uplinks.get(usize::from(uplink)));
        let hop = match via {
            Some(u) => route::decide_uplink(ctx, stale, u, to),
            None => route::decide_underlay(ctx, stale, to),
        };
        let (port, next_hop_mac, next) = match hop {
            Hop::Port { port, mac } => (port, Some(mac), Next::Transmit(port)),
            Hop::Unresolved { port, next_hop } => (port, None, Next::Resolve { port, next_hop }),
            Hop::Peer { .. } | Hop::Unreachable => {
                counters.drop(DropReason::TunnelEndpointUnreachable);
                return burst.discard(i);
            }
        };
        let source = via.and_then(|u| u.address);
        let Some(headers) = self.headers_toward(ctx, port, source, to, next_hop_mac) else {
            counters.drop(DropReason::TunnelEndpointUnreachable);
            return burst.discard(i);
        };
        let frame = burst.frame_mut(i);
        if !headers.apply(frame, ip_id, dscp) {
            counters.drop(DropReason::NoBuffer);
            return burst.discard(i);
        }
        if next_hop_mac.is_some() {
            self.endpoints
                .put(to, uplink, ctx.fwd_generation, port, headers);
            counters.add(Counter::Forwarded, 1);
            counters.add(Counter::ForwardedBytes, frame.len() as u64);
        }
        // Unresolved: the MACs are filled in when the next hop answers.
        burst.meta[i].next = next;
    }

    /// The outer headers from our address on `port` (`source` when given
    /// and of the family) to `to`.
    fn headers_toward(
        &self,
        ctx: &Context<'_>,
        port: u16,
        source: Option<IpAddr>,
        to: SocketAddr,
        next_hop_mac: Option<[u8; 6]>,
    ) -> Option<OuterHeaders> {
        let info = ctx.cfg.ports.get(usize::from(port))?;
        let source = match (to.ip(), source) {
            (IpAddr::V4(_), Some(s @ IpAddr::V4(_))) | (IpAddr::V6(_), Some(s @ IpAddr::V6(_))) => {
                s
            }
            (IpAddr::V4(d), _) => IpAddr::V4(info.v4_source(d)?),
            (IpAddr::V6(d), _) => IpAddr::V6(info.v6_source(d)?),
        };
        let listen_port = ctx.cfg.tunnel.as_ref()?.config.listen_port;
        let from = SocketAddr::new(source, listen_port);
        OuterHeaders::new(from, to, info.mac, next_hop_mac.unwrap_or_default())
    }
}

/// How tunnel datagrams leave for each endpoint and uplink (port, headers
/// with the next hop's MAC), worked out once per endpoint, uplink and
/// forwarding generation instead of a route and neighbour lookup per
/// datagram. Direct-mapped: one that collides with another is just looked
/// up again.
struct EndpointCache {
    slots: Box<[Option<EndpointRoute>]>,
}

/// One endpoint's way out.
#[derive(Clone, Copy)]
struct EndpointRoute {
    to: SocketAddr,
    uplink: u8,
    generation: u32,
    port: u16,
    headers: OuterHeaders,
}

impl EndpointCache {
    /// A cache of `slots` (a power of two) empty slots.
    fn with_slots(slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two() && slots > 1);
        EndpointCache {
            slots: vec![None; slots].into_boxed_slice(),
        }
    }

    fn slot(&self, to: SocketAddr, uplink: u8) -> usize {
        let ip = match to.ip() {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                (v as u64) ^ ((v >> 64) as u64)
            }
        };
        let h = (ip ^ u64::from(to.port()) ^ u64::from(uplink) << 16)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The top bits of the product are its best mixed.
        (h >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    fn get(&self, to: SocketAddr, uplink: u8, generation: u32) -> Option<(u16, &OuterHeaders)> {
        match &self.slots[self.slot(to, uplink)] {
            Some(r) if r.to == to && r.uplink == uplink && r.generation == generation => {
                Some((r.port, &r.headers))
            }
            _ => None,
        }
    }

    fn put(
        &mut self,
        to: SocketAddr,
        uplink: u8,
        generation: u32,
        port: u16,
        headers: OuterHeaders,
    ) {
        let slot = self.slot(to, uplink);
        self.slots[slot] = Some(EndpointRoute {
            to,
            uplink,
            generation,
            port,
            headers,
        });
    }
}
