//! Stage `route`, and the one route decision of the gateway.
//!
//! [`decide`] answers "where does a packet to this address go": out of an
//! Ethernet port to a next hop (its MAC known or still to be resolved), or
//! into the tunnel to the peer whose allowed IPs hold it (cryptokey
//! routing). It serves forwarded packets, the gateway's own replies and
//! errors, and, through [`decide_underlay`], the tunnel's datagrams.
//!
//! The stage routes forwarded packets (the decision cached in their flow
//! entry per direction, until the forwarding generation changes), checks
//! the outgoing MTU, and decrements TTL or hop limit; the gateway's replies
//! to packets from the tunnel are routed back into it.

use std::net::{IpAddr, SocketAddr};

use super::icmp::{self, Errors};
use super::{Burst, Context, Next, NS_PER_S};
use crate::flow::table::{FlowTable, ForwardCache};
use crate::frame::Frame;
use crate::packet::checksum_adjust;
use crate::packet::parse::{PacketMeta, L3};
use crate::paths::bfd::{BfdEnds, Hops};
use crate::paths::Uplink;
use crate::stats::{Counters, DropReason};

/// Where a packet to some address goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hop {
    /// Out of Ethernet port `port` to the next hop `mac`.
    Port {
        /// Outgoing port.
        port: u16,
        /// The next hop's MAC.
        mac: [u8; 6],
    },
    /// Out of `port`, once `next_hop`'s MAC is known.
    Unresolved {
        /// Outgoing port.
        port: u16,
        /// The next hop.
        next_hop: IpAddr,
    },
    /// Into the tunnel (port `port`), encrypted for `peer`.
    Peer {
        /// The tunnel port.
        port: u16,
        /// The peer whose allowed IPs hold the destination.
        peer: u32,
    },
    /// Nowhere: no route, or a tunnel route no peer claims.
    Unreachable,
}

impl Hop {
    /// The decision as a flow entry caches it (when it can be cached).
    fn cached(self, generation: u32) -> Option<ForwardCache> {
        match self {
            Hop::Port { port, mac } => Some(ForwardCache {
                generation,
                port,
                dst_mac: mac,
            }),
            Hop::Peer { port, peer } => Some(ForwardCache::to_peer(generation, port, peer)),
            Hop::Unresolved { .. } | Hop::Unreachable => None,
        }
    }

    /// A decision a flow entry cached.
    fn from_cache(c: ForwardCache, tunnel_port: Option<u16>) -> Hop {
        if Some(c.port) == tunnel_port {
            Hop::Peer {
                port: c.port,
                peer: c.peer(),
            }
        } else {
            Hop::Port {
                port: c.port,
                mac: c.dst_mac,
            }
        }
    }
}

/// Where packets to `dst` go now.
pub(super) fn decide(ctx: &Context<'_>, stale: &mut StaleProbes, dst: IpAddr) -> Hop {
    let Some(hop) = ctx.cfg.routes.next_hop(dst) else {
        return Hop::Unreachable;
    };
    if Some(hop.port) == ctx.cfg.tunnel_port() {
        // Cryptokey routing: the peer whose allowed IPs hold the destination.
        return match ctx.cfg.tunnel.as_ref().and_then(|t| t.config.route(dst)) {
            Some(peer) => Hop::Peer {
                port: hop.port,
                peer,
            },
            None => Hop::Unreachable,
        };
    }
    neighbor(ctx, stale, hop.port, hop.addr)
}

/// Where the tunnel's datagrams to `to` go: out of an Ethernet port, never
/// through the tunnel itself.
pub(super) fn decide_underlay(ctx: &Context<'_>, stale: &mut StaleProbes, to: SocketAddr) -> Hop {
    match ctx.cfg.routes.next_hop(to.ip()) {
        Some(hop) if Some(hop.port) != ctx.cfg.tunnel_port() => {
            neighbor(ctx, stale, hop.port, hop.addr)
        }
        _ => Hop::Unreachable,
    }
}

/// The way out for a datagram to `to` over `uplink`: its port, to its
/// next hop (or to `to` itself on the link).
pub(super) fn decide_uplink(
    ctx: &Context<'_>,
    stale: &mut StaleProbes,
    uplink: &Uplink,
    to: SocketAddr,
) -> Hop {
    let next_hop = uplink
        .next_hop
        .filter(|hop| hop.is_ipv4() == to.is_ipv4())
        .unwrap_or(to.ip());
    neighbor(ctx, stale, uplink.port, next_hop)
}

/// How a BFD Control packet of `uplink`'s session leaves: to the remote
/// itself on the uplink's link (single hop), else by the uplink's router.
pub(super) fn decide_bfd(
    ctx: &Context<'_>,
    stale: &mut StaleProbes,
    uplink: &Uplink,
    ends: &BfdEnds,
) -> Hop {
    match ends.hops {
        Hops::One => neighbor(ctx, stale, uplink.port, IpAddr::V4(ends.remote)),
        Hops::Many { .. } => decide_uplink(
            ctx,
            stale,
            uplink,
            SocketAddr::new(IpAddr::V4(ends.remote), 0),
        ),
    }
}

/// The next hop `addr` on `port`, resolved or not; a stale entry is used
/// and asked for again.
fn neighbor(ctx: &Context<'_>, stale: &mut StaleProbes, port: u16, addr: IpAddr) -> Hop {
    match ctx.neighbors.get(port, addr) {
        Some(entry) => {
            let reachable_ns = u64::from(ctx.cfg.neighbors.reachable_s) * NS_PER_S;
            if entry.is_stale(ctx.now_ns, reachable_ns) {
                let retransmit_ns = u64::from(ctx.cfg.neighbors.retransmit_ms) * 1_000_000;
                stale.want(port, addr, ctx.now_ns, retransmit_ns);
            }
            Hop::Port {
                port,
                mac: entry.mac,
            }
        }
        None => Hop::Unresolved {
            port,
            next_hop: addr,
        },
    }
}

/// The route stage's own state.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Neighbours to re-probe.
    pub stale: StaleProbes,
}

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    state: &mut State,
    errors: &mut Errors,
    flows: &mut FlowTable,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
) {
    for i in burst.slots() {
        if matches!(burst.meta[i].next, Next::Forward) {
            forward(state, errors, flows, counters, ctx, burst, i);
        }
        // The gateway's replies to the tunnel's packets, and errors about
        // forwarded packets that came out of it.
        if matches!(burst.meta[i].next, Next::Route) {
            reply(state, counters, ctx, burst, i);
        }
    }
}

fn forward<F: Frame>(
    state: &mut State,
    errors: &mut Errors,
    flows: &mut FlowTable,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
    i: usize,
) {
    let meta = burst.meta[i];
    let Ok(headers) = &burst.headers[i] else {
        unreachable!("only parsed packets are forwarded")
    };
    let cached = meta.flow.and_then(|f| {
        Some(flows.get(f.id).forward[f.dir.index()]).filter(|c| c.generation == ctx.fwd_generation)
    });
    let hop = match cached {
        Some(c) => Hop::from_cache(c, ctx.cfg.tunnel_port()),
        None => {
            let hop = decide(ctx, &mut state.stale, destination(headers));
            if let (Some(c), Some(f)) = (hop.cached(ctx.fwd_generation), meta.flow) {
                flows.get_mut(f.id).forward[f.dir.index()] = c;
            }
            hop
        }
    };
    let out_port = match hop {
        Hop::Port { port, .. } | Hop::Unresolved { port, .. } | Hop::Peer { port, .. } => port,
        Hop::Unreachable => {
            let kind = icmp::ErrorKind::NoRoute;
            return errors.reject(counters, ctx, burst, i, kind, DropReason::NoRoute);
        }
    };
    let mtu = ctx
        .cfg
        .ports
        .get(usize::from(out_port))
        .map_or(0, |p| p.mtu);
    if meta.ip_len > mtu {
        let kind = icmp::ErrorKind::TooBig { mtu };
        return errors.reject(counters, ctx, burst, i, kind, DropReason::TooBig);
    }
    let (frame, headers) = burst.frame_and_headers(i);
    decrement_ttl(frame.data_mut(), headers);
    let ip_end = usize::from(headers.ip_end);
    burst.meta[i].next = match hop {
        Hop::Port { port, mac } => {
            // Ethernet padding the next link may not want goes.
            if ip_end >= 60 && ip_end < frame.len() {
                frame.set_len(ip_end);
            }
            Next::Rewrite { port, dst_mac: mac }
        }
        Hop::Unresolved { port, next_hop } => Next::Resolve { port, next_hop },
        Hop::Peer { peer, .. } => {
            // What the tunnel seals is the IP packet, without padding.
            if ip_end < frame.len() {
                frame.set_len(ip_end);
            }
            Next::Encrypt { peer }
        }
        Hop::Unreachable => unreachable!("handled above"),
    };
}

/// Routes a packet the gateway built (no flow, no TTL to spend).
fn reply<F: Frame>(
    state: &mut State,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
    i: usize,
) {
    let Some(dst) = burst.frame(i).data().get(14..).and_then(ip_destination) else {
        counters.drop(DropReason::NoRoute);
        return burst.discard(i);
    };
    burst.meta[i].next = match decide(ctx, &mut state.stale, dst) {
        Hop::Port { port, mac } => Next::Rewrite { port, dst_mac: mac },
        Hop::Unresolved { port, next_hop } => Next::Resolve { port, next_hop },
        Hop::Peer { peer, .. } => Next::Encrypt { peer },
        Hop::Unreachable => {
            counters.drop(DropReason::NoRoute);
            return burst.discard(i);
        }
    };
}

/// The destination of a parsed IP packet.
fn destination(headers: &PacketMeta) -> IpAddr {
    match headers.l3 {
        L3::Ipv4(ip) => IpAddr::V4(ip.dst),
        L3::Ipv6(ip) => IpAddr::V6(ip.dst),
        L3::Arp(_) => unreachable!("ARP is never forwarded"),
    }
}

/// The destination address of the IP packet that `packet` starts with.
fn ip_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let a: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        6 => {
            let a: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

/// Neighbours a worker wants re-probed because their entry went stale,
/// with a small direct-mapped memory of recent probes so that a busy flow
/// does not trigger one per packet.
#[derive(Debug)]
pub(super) struct StaleProbes {
    wanted: [(u16, IpAddr); 8],
    len: usize,
    recent: [(u16, IpAddr, u64); 64],
}

impl Default for StaleProbes {
    fn default() -> Self {
        let none = IpAddr::from([0u8; 4]);
        StaleProbes {
            wanted: [(0, none); 8],
            len: 0,
            recent: [(u16::MAX, none, 0); 64],
        }
    }
}

impl StaleProbes {
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

    /// The next neighbour to probe, if any.
    pub(super) fn pop(&mut self) -> Option<(u16, IpAddr)> {
        self.len = self.len.checked_sub(1)?;
        Some(self.wanted[self.len])
    }
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
            // Admission checked TTL > 1; wrapping keeps this total anyway.
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
