//! The per-worker forwarding logic, independent of DPDK.
//!
//! [`Gateway::process`] takes one received frame and decides its fate: sent
//! out of a port (forwarded, or rewritten in place into a reply), held for
//! address resolution, or dropped and counted. It never allocates and never
//! blocks; replies (ARP, Neighbor Advertisements, echo replies, ICMP errors)
//! are built in the received buffer itself.
//!
//! Read before editing: RFC 1812 (IPv4 routers: TTL, ICMP errors and their
//! rate limit, martians), RFC 826 (ARP), RFC 4861 (Neighbor Discovery),
//! RFC 4443 (ICMPv6), RFC 1624 (incremental checksum update).

mod icmp;
mod neighbor_msgs;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crossbeam_channel::Sender;

use std::sync::Arc;

use crate::config::Snapshot;
use crate::dpi::counters::DpiCounters;
use crate::dpi::{self, Classification, FlowInspection, Inspector};
use crate::flow::table::{FlowId, FlowTable, ForwardCache, TableFull};
use crate::frame::Frame;
use crate::neighbor::{NeighborEvent, NeighborSnapshot};
use crate::packet::flow_key::{Direction, FlowKey};
use crate::packet::parse::{self, Fragment, Ipv4Info, Ipv6Info, PacketMeta, L3, L4};
use crate::stats::{Counter, Counters, DropReason};
use crate::BURST_SIZE;

pub use neighbor_msgs::write_solicitation;

const NS_PER_S: u64 = 1_000_000_000;

/// Reassembly buffers for a worker: as configured, but never more than flows it can hold.
fn cfg_reassembly_buffers(cfg: &Snapshot) -> usize {
    (cfg.dpi.reassembly_buffers as usize).min(cfg.worker.flow_capacity as usize)
}

/// What to do with a processed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it out of this port index; headers are ready.
    Transmit(u16),
    /// Its IP part is ready, but the MAC of `next_hop` on `port` is unknown:
    /// hold it, and fill in the MACs when it resolves.
    Resolve {
        /// Outgoing port index.
        port: u16,
        /// The address to resolve.
        next_hop: IpAddr,
    },
    /// Encrypt it for tunnel peer `peer`: the IP packet is ready (hop limit
    /// decremented, padding removed) behind its 14-byte Ethernet header.
    Tunnel {
        /// The peer cryptokey routing chose.
        peer: u32,
    },
    /// A datagram for the tunnel's listen port; its UDP payload (a
    /// WireGuard message) starts at offset `payload` and runs to the end.
    TunnelDatagram {
        /// Its source address and port.
        from: SocketAddr,
        /// Offset of the UDP payload.
        payload: u16,
    },
    /// Dropped; the reason has been counted.
    Drop,
    /// Fully handled (e.g. an ARP reply learned from); free it.
    Consumed,
}

/// What a packet needs, decided from its headers before any state is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Drop it for this reason.
    Drop(DropReason),
    /// Drop it for this reason and answer with this ICMP error.
    Reject(icmp::ErrorKind, DropReason),
    /// ARP: answer or learn.
    Arp,
    /// Addressed to the gateway.
    Local,
    /// Route it.
    Forward {
        /// Destination address.
        dst: IpAddr,
        /// IP packet length, for the MTU check and flow accounting.
        ip_len: u16,
    },
}

/// Per-burst working arrays, kept between bursts.
#[derive(Debug)]
struct BurstScratch {
    metas: [Result<PacketMeta, parse::ParseError>; BURST_SIZE],
    steps: [Step; BURST_SIZE],
    keys: [FlowKey; BURST_SIZE],
    dirs: [Direction; BURST_SIZE],
    keyed: [usize; BURST_SIZE],
    flows: [Result<(FlowId, bool), TableFull>; BURST_SIZE],
}

impl Default for BurstScratch {
    fn default() -> Self {
        BurstScratch {
            metas: [Err(parse::ParseError::TruncatedEthernet); BURST_SIZE],
            steps: [Step::Drop(DropReason::NoRoute); BURST_SIZE],
            keys: [FlowKey::default(); BURST_SIZE],
            dirs: [Direction::LoToHi; BURST_SIZE],
            keyed: [usize::MAX; BURST_SIZE],
            flows: [Err(TableFull); BURST_SIZE],
        }
    }
}

/// What one burst of processing reads.
#[derive(Debug)]
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

/// A token bucket for ICMP error generation.
#[derive(Debug, Clone)]
struct TokenBucket {
    per_s: u64,
    burst_nano: u64,
    nano_tokens: u64,
    last_ns: u64,
}

impl TokenBucket {
    fn new(per_s: u32, burst: u32) -> Self {
        let burst_nano = u64::from(burst) * NS_PER_S;
        TokenBucket {
            per_s: u64::from(per_s),
            burst_nano,
            nano_tokens: burst_nano,
            last_ns: 0,
        }
    }

    fn take(&mut self, now_ns: u64) -> bool {
        // A clock that steps backwards earns nothing rather than underflowing.
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.nano_tokens = self
            .nano_tokens
            .saturating_add(elapsed.saturating_mul(self.per_s))
            .min(self.burst_nano);
        if self.nano_tokens >= NS_PER_S {
            self.nano_tokens -= NS_PER_S;
            true
        } else {
            false
        }
    }
}

/// Neighbours a worker wants re-probed because their entry went stale,
/// with a small direct-mapped memory of recent probes so that a busy flow
/// does not trigger one per packet.
#[derive(Debug)]
struct StaleProbes {
    wanted: [(u16, IpAddr); 8],
    len: usize,
    recent: [(u16, IpAddr, u64); 64],
}

impl StaleProbes {
    fn new() -> Self {
        let none = IpAddr::from([0u8; 4]);
        StaleProbes {
            wanted: [(0, none); 8],
            len: 0,
            recent: [(u16::MAX, none, 0); 64],
        }
    }

    fn want(&mut self, port: u16, addr: IpAddr, now_ns: u64, interval_ns: u64) {
        let slot = {
            let h = match addr {
                IpAddr::V4(a) => u32::from(a) as usize,
                IpAddr::V6(a) => (u128::from(a) as usize) ^ ((u128::from(a) >> 64) as usize),
            };
            (h ^ (h >> 7) ^ usize::from(port)) % self.recent.len()
        };
        let (p, a, at) = self.recent[slot];
        if p == port && a == addr && now_ns.saturating_sub(at) < interval_ns {
            return;
        }
        if self.len == self.wanted.len() {
            return; // more next time
        }
        self.recent[slot] = (port, addr, now_ns);
        self.wanted[self.len] = (port, addr);
        self.len += 1;
    }
}

/// One worker's forwarding state: flow table, counters, rate limits.
#[derive(Debug)]
pub struct Gateway {
    /// What this worker counted.
    pub counters: Counters,
    flows: FlowTable,
    icmp_bucket: TokenBucket,
    events: Sender<NeighborEvent>,
    ip_id: u16,
    stale: StaleProbes,
    /// `Some` between bursts; moved out (not reallocated) while one runs.
    scratch: Option<Box<BurstScratch>>,
    dpi: FlowClassification,
}

/// Per-worker classification state: the inspector and one inspection state per flow-table entry.
#[derive(Debug)]
struct FlowClassification {
    inspector: Inspector,
    /// Indexed by [`FlowId::index`]; reset when the entry starts a new flow.
    states: Vec<FlowInspection>,
    counters: Arc<DpiCounters>,
}

impl Gateway {
    /// A gateway with its flow table sized from `cfg`, reporting neighbour
    /// observations on `events`. All memory is allocated here.
    pub fn new(cfg: &Snapshot, events: Sender<NeighborEvent>, seed: u64) -> Self {
        Gateway {
            counters: Counters::default(),
            flows: FlowTable::new(
                cfg.worker.flow_capacity as usize,
                u64::from(cfg.worker.flow_idle_timeout_s) * NS_PER_S,
                seed,
            ),
            icmp_bucket: TokenBucket::new(cfg.icmp.errors_per_s, cfg.icmp.errors_burst),
            events,
            ip_id: (seed as u16) | 1,
            stale: StaleProbes::new(),
            scratch: Some(Box::default()),
            dpi: FlowClassification {
                inspector: Inspector::new(cfg.dpi.limits, cfg_reassembly_buffers(cfg)),
                states: vec![FlowInspection::default(); cfg.worker.flow_capacity as usize],
                counters: Arc::default(),
            },
        }
    }

    /// This worker's classification counters (shared with the metrics endpoint).
    pub fn dpi_counters(&self) -> Arc<DpiCounters> {
        self.dpi.counters.clone()
    }

    /// Applies the settings of a new snapshot that can change at run time.
    pub fn reconfigure(&mut self, cfg: &Snapshot) {
        self.dpi.inspector.set_limits(cfg.dpi.limits);
        self.icmp_bucket = TokenBucket::new(cfg.icmp.errors_per_s, cfg.icmp.errors_burst);
        self.flows
            .set_idle_timeout(u64::from(cfg.worker.flow_idle_timeout_s) * NS_PER_S);
    }

    /// The flow table, for inspection.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
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

    /// Takes the neighbours that went stale under traffic and should be re-probed now.
    pub fn take_stale_probes(&mut self, mut probe: impl FnMut(u16, IpAddr)) {
        for &(port, addr) in &self.stale.wanted[..self.stale.len] {
            probe(port, addr);
        }
        self.stale.len = 0;
    }

    /// Builds an ARP request or Neighbor Solicitation for `target` out of
    /// `port` into an empty frame. False when the port has no address of the
    /// family to ask from.
    pub fn solicit<F: Frame>(
        &mut self,
        cfg: &Snapshot,
        port: u16,
        target: IpAddr,
        frame: &mut F,
    ) -> bool {
        let Some(info) = cfg.ports.get(usize::from(port)) else {
            return false;
        };
        let ok = write_solicitation(info, target, frame);
        if ok {
            self.counters.add(
                if target.is_ipv4() {
                    Counter::ArpRequests
                } else {
                    Counter::NdSolicitations
                },
                1,
            );
        }
        ok
    }

    /// Decides what happens to one frame received on port `in_port`.
    pub fn process<F: Frame>(&mut self, ctx: &Context<'_>, in_port: u16, frame: &mut F) -> Verdict {
        let mut verdict = [Verdict::Drop];
        self.process_burst(ctx, in_port, std::slice::from_mut(frame), &mut verdict);
        verdict[0]
    }

    /// Decides what happens to each frame of a burst received on `in_port`;
    /// `verdicts[i]` is frame `i`'s. Works in three passes so that the flow
    /// table's cache misses for the whole burst overlap: parse and classify
    /// every frame, look up all flows at once, then act on each frame.
    ///
    /// # Panics
    /// When `verdicts` is shorter than `frames`, or `frames` holds more than
    /// [`BURST_SIZE`] frames.
    pub fn process_burst<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frames: &mut [F],
        verdicts: &mut [Verdict],
    ) {
        assert!(frames.len() <= BURST_SIZE && verdicts.len() >= frames.len());
        // The scratch arrays live in `self` so that a burst neither zeroes
        // nor allocates them; only the prefix this burst uses is written.
        let mut scratch = self
            .scratch
            .take()
            .expect("scratch is returned after every burst");
        let mut n_keys = 0;
        for (i, frame) in frames.iter().enumerate() {
            self.counters.add(Counter::RxPackets, 1);
            self.counters.add(Counter::RxBytes, frame.len() as u64);
            scratch.keyed[i] = usize::MAX;
            // Parsed straight into its slot: no by-value copy of the result,
            // whose wide reads would stall on the parser's narrow stores.
            parse::parse_into(frame.data(), &mut scratch.metas[i]);
            match &scratch.metas[i] {
                Ok(meta) => {
                    let step = self.classify(ctx, in_port, meta);
                    if let Step::Forward { .. } = step {
                        if let Some((key, dir)) = meta.flow_key() {
                            scratch.keys[n_keys] = key;
                            scratch.dirs[n_keys] = dir;
                            scratch.keyed[i] = n_keys;
                            n_keys += 1;
                        }
                    }
                    scratch.steps[i] = step;
                }
                Err(err) => self.counters.parse_drop(*err),
            }
        }
        self.flows.lookup_or_insert_burst(
            &scratch.keys[..n_keys],
            ctx.now_ns,
            &mut scratch.flows[..n_keys],
        );

        for (i, frame) in frames.iter_mut().enumerate() {
            let Ok(meta) = &scratch.metas[i] else {
                verdicts[i] = Verdict::Drop;
                continue;
            };
            let flow = match scratch.keyed[i] {
                usize::MAX => None,
                k => match scratch.flows[k] {
                    Ok((id, created)) => {
                        if created {
                            // A new flow in this entry: inspection starts over,
                            // once (other packets of the burst share this result).
                            self.dpi.states[id.index()] = FlowInspection::default();
                            scratch.flows[k] = Ok((id, false));
                        }
                        Some((id, scratch.dirs[k]))
                    }
                    Err(TableFull) => {
                        self.counters.add(Counter::FlowInsertFailed, 1);
                        None
                    }
                },
            };
            self.act(
                ctx,
                in_port,
                frame,
                meta,
                scratch.steps[i],
                flow,
                &mut verdicts[i],
            );
        }
        self.scratch = Some(scratch);
    }

    /// DPI: inspects the packet while its flow is unclassified, else counts its bytes for the flow's application.
    #[inline]
    fn classify_flow(
        &mut self,
        ctx: &Context<'_>,
        data: &[u8],
        meta: &PacketMeta,
        id: FlowId,
        dir: Direction,
        ip_len: u16,
    ) {
        let settings = &ctx.cfg.dpi;
        if !settings.enabled {
            return;
        }
        let classifier = &*settings.classifier;
        let entry = self.flows.get_mut(id);
        if let Some(done) = Classification::from_flow_app(entry.app) {
            let (label, category) = (classifier.label(&done), classifier.category(&done));
            self.dpi.counters.bytes(label, category, u64::from(ip_len));
            return;
        }
        let (tcp, src_port, dst_port) = match meta.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            } => (true, src_port, dst_port),
            L4::Udp { src_port, dst_port } => (false, src_port, dst_port),
            _ => return,
        };
        let packet = dpi::Packet {
            seq: dpi::tcp_seq(data, meta),
            tcp,
            src_port,
            dst_port,
            dir,
            payload: dpi::l4_payload(data, meta).unwrap_or(&[]),
        };
        let state = &mut self.dpi.states[id.index()];
        if let Some(verdict) = self.dpi.inspector.inspect(classifier, state, &packet) {
            entry.app = verdict.to_flow_app();
            let bytes = entry.bytes[0] + entry.bytes[1] + u64::from(ip_len);
            let (label, category) = (classifier.label(&verdict), classifier.category(&verdict));
            self.dpi
                .counters
                .classified(label, category, bytes, state.packets());
            self.dpi
                .counters
                .set_reassembly_exhausted(self.dpi.inspector.pool_exhausted());
        }
    }

    /// What to do with a parsed packet, decided from its headers alone.
    #[inline]
    fn classify(&self, ctx: &Context<'_>, in_port: u16, meta: &PacketMeta) -> Step {
        let Some(port) = ctx.cfg.ports.get(usize::from(in_port)) else {
            return Step::Drop(DropReason::NotForUs);
        };
        if meta.dst_mac != port.mac && meta.dst_mac[0] & 1 == 0 {
            return Step::Drop(DropReason::NotForUs);
        }
        if meta.vlan.is_some() {
            return Step::Drop(DropReason::VlanUnsupported);
        }
        match meta.l3 {
            L3::Arp(_) => Step::Arp,
            L3::Ipv4(ip) => {
                // RFC 1812 5.3.7: never answer or forward a multicast or broadcast source.
                if ip.src.is_multicast() || ip.src.is_broadcast() {
                    return Step::Drop(DropReason::InvalidSourceAddress);
                }
                if ctx.cfg.is_local_v4(ip.dst) {
                    return Step::Local;
                }
                // RFC 1812 5.3.4 and 5.3.7: link-layer broadcasts, IP broadcast and
                // multicast, and martian addresses are never forwarded.
                if meta.dst_mac[0] & 1 != 0
                    || ip.dst.is_broadcast()
                    || ip.dst.is_multicast()
                    || ip.dst.is_unspecified()
                    || ip.dst.is_loopback()
                    || ip.src.is_loopback()
                    || ip.src.is_unspecified()
                    || ctx.cfg.is_directed_broadcast(ip.dst)
                {
                    return Step::Drop(DropReason::NotRoutable);
                }
                if ip.ttl <= 1 {
                    return Step::Reject(icmp::ErrorKind::TimeExceeded, DropReason::TtlExceeded);
                }
                Step::Forward {
                    dst: IpAddr::V4(ip.dst),
                    ip_len: ip.total_len,
                }
            }
            L3::Ipv6(ip) => {
                if ip.src.is_multicast() {
                    return Step::Drop(DropReason::InvalidSourceAddress);
                }
                let dst = ip.dst;
                if ctx.cfg.is_local_v6(dst) || is_our_multicast(ctx.cfg, in_port, dst) {
                    return Step::Local;
                }
                // RFC 4291 2.5.6: link-local traffic stays on its link.
                if meta.dst_mac[0] & 1 != 0
                    || dst.is_multicast()
                    || dst.is_unspecified()
                    || dst.is_loopback()
                    || is_link_local(dst)
                    || is_link_local(ip.src)
                    || ip.src.is_unspecified()
                {
                    return Step::Drop(DropReason::NotRoutable);
                }
                if ip.hop_limit <= 1 {
                    return Step::Reject(icmp::ErrorKind::TimeExceeded, DropReason::TtlExceeded);
                }
                let ip_len = (u32::from(meta.ip_end) - u32::from(meta.l3_offset))
                    .min(u32::from(u16::MAX)) as u16;
                Step::Forward {
                    dst: IpAddr::V6(dst),
                    ip_len,
                }
            }
        }
    }

    /// Carries out a step for one frame, writing its verdict to `out`.
    ///
    /// The verdict is stored straight into the caller's array rather than
    /// returned: a returned `Verdict` was assembled on the stack by narrow
    /// stores and then copied out with wide loads, which cannot be forwarded
    /// from those stores and stalled every packet (18% of the burst's time).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn act<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        step: Step,
        flow: Option<(FlowId, Direction)>,
        out: &mut Verdict,
    ) {
        let fragment = match meta.l3 {
            L3::Ipv4(ip) => ip.fragment != Fragment::None,
            L3::Ipv6(ip) => ip.fragment != Fragment::None,
            L3::Arp(_) => false,
        };
        if fragment {
            self.counters.add(Counter::Fragments, 1);
        }
        if let Step::Forward { dst, ip_len } = step {
            return self.forward(ctx, in_port, frame, meta, dst, ip_len, flow, out);
        }
        *out = match (step, meta.l3) {
            (Step::Drop(reason), _) => self.drop(reason),
            (Step::Reject(kind, reason), _) => self.reject(ctx, in_port, frame, meta, kind, reason),
            (Step::Arp, L3::Arp(arp)) => self.arp(ctx, in_port, frame, &arp),
            (Step::Local, L3::Ipv4(ip)) => self.local_v4(ctx, in_port, frame, meta, &ip),
            (Step::Local, L3::Ipv6(ip)) => self.local_v6(ctx, in_port, frame, meta, &ip),
            _ => Verdict::Drop,
        };
    }

    #[inline]
    fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.drop(reason);
        Verdict::Drop
    }

    fn learn(&mut self, port: u16, ip: IpAddr, mac: [u8; 6], now_ns: u64, create: bool) {
        let event = NeighborEvent {
            port,
            ip,
            mac,
            now_ns,
            create,
        };
        if self.events.try_send(event).is_err() {
            self.counters.add(Counter::LearnEventsLost, 1);
        }
    }

    /// The common forwarding path: flow accounting, route (cached per flow
    /// and direction), MTU, neighbour, header rewrite. Writes the verdict
    /// to `out` (see [`Gateway::act`]).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn forward<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        dst: IpAddr,
        ip_len: u16,
        flow: Option<(FlowId, Direction)>,
        out: &mut Verdict,
    ) {
        let now = ctx.now_ns;
        if let Some((id, dir)) = flow {
            self.classify_flow(ctx, frame.data(), meta, id, dir, ip_len);
        }
        let cached = flow.and_then(|(id, dir)| {
            let entry = self.flows.get_mut(id);
            entry.touch(dir, u32::from(ip_len), now);
            Some(entry.forward[dir.index()]).filter(|c| c.generation == ctx.fwd_generation)
        });

        let tunnel_port = ctx.cfg.tunnel_port();
        let (out_port, dst_mac) = match cached {
            Some(c) => (c.port, Some(c.dst_mac)),
            None => {
                let Some(hop) = ctx.cfg.routes.next_hop(dst) else {
                    *out = self.unreachable(ctx, in_port, frame, meta);
                    return;
                };
                if Some(hop.port) == tunnel_port {
                    // Cryptokey routing: the peer whose allowed IPs hold the destination.
                    let peer = ctx.cfg.tunnel.as_ref().and_then(|t| t.config.route(dst));
                    let Some(peer) = peer else {
                        *out = self.unreachable(ctx, in_port, frame, meta);
                        return;
                    };
                    let decision = ForwardCache::to_peer(ctx.fwd_generation, hop.port, peer);
                    if let Some((id, dir)) = flow {
                        self.flows.get_mut(id).forward[dir.index()] = decision;
                    }
                    *out = self.toward_tunnel(ctx, in_port, frame, meta, ip_len, decision);
                    return;
                }
                let mac = ctx.neighbors.get(hop.port, hop.addr).map(|entry| {
                    let reachable_ns = u64::from(ctx.cfg.neighbors.reachable_s) * NS_PER_S;
                    if entry.is_stale(now, reachable_ns) {
                        let retransmit_ns = u64::from(ctx.cfg.neighbors.retransmit_ms) * 1_000_000;
                        self.stale.want(hop.port, hop.addr, now, retransmit_ns);
                    }
                    entry.mac
                });
                if let (Some(mac), Some((id, dir))) = (mac, flow) {
                    self.flows.get_mut(id).forward[dir.index()] = ForwardCache {
                        generation: ctx.fwd_generation,
                        port: hop.port,
                        dst_mac: mac,
                    };
                }
                match mac {
                    Some(mac) => (hop.port, Some(mac)),
                    None => {
                        if let Some(v) = self.check_mtu(ctx, in_port, frame, meta, hop.port, ip_len)
                        {
                            *out = v;
                            return;
                        }
                        decrement_ttl(frame.data_mut(), meta);
                        *out = Verdict::Resolve {
                            port: hop.port,
                            next_hop: hop.addr,
                        };
                        return;
                    }
                }
            }
        };
        if Some(out_port) == tunnel_port {
            let decision = ForwardCache {
                generation: ctx.fwd_generation,
                port: out_port,
                dst_mac: dst_mac.unwrap_or_default(),
            };
            *out = self.toward_tunnel(ctx, in_port, frame, meta, ip_len, decision);
            return;
        }
        if let Some(v) = self.check_mtu(ctx, in_port, frame, meta, out_port, ip_len) {
            *out = v;
            return;
        }
        let Some(egress) = ctx.cfg.ports.get(usize::from(out_port)) else {
            *out = self.drop(DropReason::NoRoute);
            return;
        };
        let data = frame.data_mut();
        decrement_ttl(data, meta);
        if let Some(mac) = dst_mac {
            data[0..6].copy_from_slice(&mac);
        }
        data[6..12].copy_from_slice(&egress.mac);
        // Drop Ethernet padding the next link may not want.
        let ip_end = usize::from(meta.ip_end);
        if ip_end >= 60 && ip_end < frame.len() {
            frame.set_len(ip_end);
        }
        self.counters.add(Counter::Forwarded, 1);
        self.counters
            .add(Counter::ForwardedBytes, frame.len() as u64);
        *out = Verdict::Transmit(out_port);
    }

    /// No route to the destination: counted, and answered with an ICMP error.
    fn unreachable<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
    ) -> Verdict {
        let kind = icmp::ErrorKind::NoRoute;
        self.reject(ctx, in_port, frame, meta, kind, DropReason::NoRoute)
    }

    /// The last step toward a tunnel peer: MTU, hop limit, padding.
    fn toward_tunnel<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        ip_len: u16,
        decision: ForwardCache,
    ) -> Verdict {
        if let Some(v) = self.check_mtu(ctx, in_port, frame, meta, decision.port, ip_len) {
            return v;
        }
        decrement_ttl(frame.data_mut(), meta);
        let ip_end = usize::from(meta.ip_end);
        if ip_end < frame.len() {
            frame.set_len(ip_end);
        }
        self.counters.add(Counter::Forwarded, 1);
        self.counters
            .add(Counter::ForwardedBytes, frame.len() as u64);
        Verdict::Tunnel {
            peer: decision.peer(),
        }
    }

    /// A UDP datagram to one of our addresses on the tunnel's listen port,
    /// arriving on a device (the tunnel does not carry itself).
    fn tunnel_datagram<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        src: IpAddr,
    ) -> Option<Verdict> {
        let L4::Udp { src_port, dst_port } = meta.l4 else {
            return None;
        };
        let tunnel = ctx.cfg.tunnel.as_ref()?;
        if dst_port != tunnel.config.listen_port || in_port == tunnel.port {
            return None;
        }
        let payload = usize::from(meta.l4_offset) + 8;
        let ip_end = usize::from(meta.ip_end);
        if payload > ip_end || !frame.set_len(ip_end) {
            return Some(self.drop(DropReason::LocalUnsupported));
        }
        Some(Verdict::TunnelDatagram {
            from: SocketAddr::new(src, src_port),
            payload: payload as u16,
        })
    }

    fn check_mtu<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        out_port: u16,
        ip_len: u16,
    ) -> Option<Verdict> {
        let mtu = ctx
            .cfg
            .ports
            .get(usize::from(out_port))
            .map_or(0, |p| p.mtu);
        if ip_len <= mtu {
            return None;
        }
        Some(self.reject(
            ctx,
            in_port,
            frame,
            meta,
            icmp::ErrorKind::TooBig { mtu },
            DropReason::TooBig,
        ))
    }

    fn local_v4<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        ip: &Ipv4Info,
    ) -> Verdict {
        if ip.fragment != Fragment::None {
            return self.drop(DropReason::LocalUnsupported); // no reassembly for the gateway's own traffic
        }
        match meta.l4 {
            L4::Icmpv4 {
                icmp_type: 8,
                code: 0,
                ..
            } => {
                let built = icmp::echo_reply_v4(ctx.cfg, in_port, frame, meta);
                self.reply(built, in_port, Counter::EchoReplies)
            }
            L4::Udp { .. } => self
                .tunnel_datagram(ctx, in_port, frame, meta, IpAddr::V4(ip.src))
                .unwrap_or_else(|| self.port_unreachable(ctx, in_port, frame, meta)),
            _ => self.drop(DropReason::LocalUnsupported),
        }
    }

    fn local_v6<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        ip: &Ipv6Info,
    ) -> Verdict {
        if ip.fragment != Fragment::None {
            return self.drop(DropReason::LocalUnsupported);
        }
        match meta.l4 {
            L4::Icmpv6 {
                icmp_type: 128,
                code: 0,
                ..
            } if !ip.dst.is_multicast() => {
                let built = icmp::echo_reply_v6(ctx.cfg, in_port, frame, meta);
                self.reply(built, in_port, Counter::EchoReplies)
            }
            L4::Icmpv6 { icmp_type: 135, .. } => {
                self.neighbor_solicitation(ctx, in_port, frame, meta, ip)
            }
            L4::Icmpv6 { icmp_type: 136, .. } => {
                self.neighbor_advertisement(ctx, in_port, frame, meta, ip)
            }
            // Router and redirect messages, MLD, and echo to multicast: nothing to do.
            L4::Icmpv6 { .. } => Verdict::Consumed,
            L4::Udp { .. } if !ip.dst.is_multicast() => self
                .tunnel_datagram(ctx, in_port, frame, meta, IpAddr::V6(ip.src))
                .unwrap_or_else(|| self.port_unreachable(ctx, in_port, frame, meta)),
            _ => self.drop(DropReason::LocalUnsupported),
        }
    }

    /// Sends back out of `in_port` a reply built in place (counting it under
    /// `sent`), or drops the frame when the reply could not be built.
    fn reply(&mut self, built: bool, in_port: u16, sent: Counter) -> Verdict {
        if built {
            self.counters.add(sent, 1);
            Verdict::Transmit(in_port)
        } else {
            self.drop(DropReason::NoBuffer)
        }
    }

    /// A datagram for a service the gateway does not offer (RFC 1122 3.2.2.1).
    fn port_unreachable<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
    ) -> Verdict {
        let kind = icmp::ErrorKind::PortUnreachable;
        self.reject(
            ctx,
            in_port,
            frame,
            meta,
            kind,
            DropReason::LocalUnsupported,
        )
    }

    fn arp<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        arp: &parse::ArpInfo,
    ) -> Verdict {
        let Some(port) = ctx.cfg.ports.get(usize::from(in_port)) else {
            return Verdict::Drop;
        };
        let for_us = port.owns(IpAddr::V4(arp.target_ip));
        let sender_valid = !arp.sender_ip.is_unspecified()
            && arp.sender_mac[0] & 1 == 0
            && !port.owns(IpAddr::V4(arp.sender_ip));
        if sender_valid {
            // RFC 826: merge into an existing entry always; create one only when we are the target.
            self.learn(
                in_port,
                IpAddr::V4(arp.sender_ip),
                arp.sender_mac,
                ctx.now_ns,
                for_us,
            );
        }
        if arp.operation == 1 && for_us {
            neighbor_msgs::arp_reply_in_place(frame, port.mac, arp);
            self.counters.add(Counter::ArpReplies, 1);
            return Verdict::Transmit(in_port);
        }
        Verdict::Consumed
    }

    fn neighbor_solicitation<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        ip: &Ipv6Info,
    ) -> Verdict {
        let Some(ns) = neighbor_msgs::parse_nd(frame.data(), meta, ip) else {
            return self.drop(DropReason::BadNeighborDiscovery);
        };
        let Some(port) = ctx.cfg.ports.get(usize::from(in_port)) else {
            return Verdict::Drop;
        };
        if !port.owns(IpAddr::V6(ns.target)) {
            return Verdict::Consumed;
        }
        if let Some(mac) = ns.link_addr {
            if !ip.src.is_unspecified() {
                self.learn(in_port, IpAddr::V6(ip.src), mac, ctx.now_ns, true);
            }
        }
        let built = neighbor_msgs::advertisement_in_place(frame, port.mac, meta, ip, ns.target);
        self.reply(built, in_port, Counter::NdAdvertisements)
    }

    fn neighbor_advertisement<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &F,
        meta: &PacketMeta,
        ip: &Ipv6Info,
    ) -> Verdict {
        let Some(na) = neighbor_msgs::parse_nd(frame.data(), meta, ip) else {
            return self.drop(DropReason::BadNeighborDiscovery);
        };
        let mac = na.link_addr.unwrap_or(meta.src_mac);
        if mac[0] & 1 == 0 && !na.target.is_multicast() {
            self.learn(
                in_port,
                IpAddr::V6(na.target),
                mac,
                ctx.now_ns,
                na.solicited,
            );
        }
        Verdict::Consumed
    }

    /// Drops the packet for `reason` and, when the RFCs allow an ICMP error
    /// and the rate limit has a token, rewrites the frame into that error
    /// back to its sender.
    fn reject<F: Frame>(
        &mut self,
        ctx: &Context<'_>,
        in_port: u16,
        frame: &mut F,
        meta: &PacketMeta,
        kind: icmp::ErrorKind,
        reason: DropReason,
    ) -> Verdict {
        self.counters.drop(reason);
        if !icmp::error_allowed(meta) {
            return Verdict::Drop;
        }
        if !self.icmp_bucket.take(ctx.now_ns) {
            self.counters.add(Counter::IcmpRateLimited, 1);
            return Verdict::Drop;
        }
        self.ip_id = self.ip_id.wrapping_add(1);
        if icmp::error_in_place(ctx.cfg, in_port, frame, meta, kind, self.ip_id) {
            self.counters.add(Counter::IcmpErrors, 1);
            Verdict::Transmit(in_port)
        } else {
            Verdict::Drop
        }
    }
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// All-nodes, all-routers, or the solicited-node group of one of the port's addresses.
fn is_our_multicast(cfg: &Snapshot, in_port: u16, dst: Ipv6Addr) -> bool {
    if !dst.is_multicast() {
        return false;
    }
    let s = dst.segments();
    if s[0] == 0xff02 && s[1..7] == [0, 0, 0, 0, 0, 0] && (s[7] == 1 || s[7] == 2) {
        return true;
    }
    let o = dst.octets();
    if o[..13] != [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff] {
        return false;
    }
    cfg.ports
        .get(usize::from(in_port))
        .is_some_and(|p| p.v6.iter().any(|n| n.addr().octets()[13..] == o[13..]))
}

/// Decrements TTL (with an RFC 1624 checksum update) or the hop limit.
#[inline]
fn decrement_ttl(data: &mut [u8], meta: &PacketMeta) {
    let l3 = usize::from(meta.l3_offset);
    match meta.l3 {
        L3::Ipv4(_) => {
            // TTL, protocol and checksum as one 4-byte window: one bounds check.
            let Some(window) = data
                .get_mut(l3 + 8..l3 + 12)
                .and_then(|w| <&mut [u8; 4]>::try_from(w).ok())
            else {
                return;
            };
            let [ttl, protocol, csum_hi, csum_lo] = *window;
            // Forwarding checked TTL > 1 before; wrapping keeps this total anyway.
            let new_ttl = ttl.wrapping_sub(1);
            let csum = checksum_adjust(
                u16::from_be_bytes([csum_hi, csum_lo]),
                u16::from_be_bytes([ttl, protocol]),
                u16::from_be_bytes([new_ttl, protocol]),
            );
            let [new_hi, new_lo] = csum.to_be_bytes();
            *window = [new_ttl, protocol, new_hi, new_lo];
        }
        L3::Ipv6(_) => {
            if let Some(hop_limit) = data.get_mut(l3 + 7) {
                *hop_limit = hop_limit.wrapping_sub(1);
            }
        }
        L3::Arp(_) => {}
    }
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), in one's complement arithmetic.
#[inline]
fn checksum_adjust(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests;
