//! Stage `admit`: what a parsed packet needs, decided from its headers
//! alone, before any state is touched: dropped (foreign unicast, VLAN,
//! martians, RFC 1812's never-forward list), answered with an ICMP error
//! (TTL), handed to the tunnel (a datagram for its listen port), kept for
//! the gateway (ARP, our addresses), or forwarded.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use super::icmp::{self, Errors};
use super::paths::NO_UPLINK;
use super::{Burst, Context, Next};
use crate::config::Snapshot;
use crate::frame::Frame;
use crate::packet::parse::{Fragment, Ipv4Info, Ipv6Info, PacketMeta, L3, L4};
use crate::stats::{Counter, Counters, DropReason};

/// What a packet needs.
enum Step {
    Drop(DropReason),
    Reject(icmp::ErrorKind, DropReason),
    Local,
    Forward { ip_len: u16 },
}

/// Admits the slots of `range` that wait for it (the decrypt stage admits
/// each inner packet on its own).
// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    counters: &mut Counters,
    errors: &mut Errors,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
    range: Range<usize>,
) {
    let mut fragments = 0;
    for i in range {
        if !matches!(burst.meta[i].next, Next::Admit) {
            continue;
        }
        let in_port = burst.meta[i].in_port;
        let Ok(meta) = &burst.headers[i] else {
            unreachable!("only parsed packets are admitted")
        };
        let (step, fragment) = step(ctx, in_port, meta);
        fragments += u64::from(fragment);
        match step {
            Step::Forward { ip_len } => {
                burst.meta[i].ip_len = ip_len;
                burst.meta[i].next = Next::Forward;
            }
            Step::Drop(reason) => {
                counters.drop(reason);
                burst.discard(i);
            }
            Step::Reject(kind, reason) => errors.reject(counters, ctx, burst, i, kind, reason),
            Step::Local => match tunnel_datagram(ctx, in_port, meta) {
                None => burst.meta[i].next = Next::Local,
                Some((from, payload, uplink)) => {
                    let ip_end = usize::from(meta.ip_end);
                    if usize::from(payload) > ip_end || !burst.frame_mut(i).set_len(ip_end) {
                        counters.drop(DropReason::LocalUnsupported);
                        burst.discard(i);
                        continue;
                    }
                    burst.addr[i] = from;
                    burst.uplink[i] = uplink;
                    burst.meta[i].next = Next::Decrypt { payload };
                }
            },
        }
    }
    counters.add(Counter::Fragments, fragments);
}

/// A UDP datagram to one of our addresses on the tunnel's listen port,
/// arriving on a device (the tunnel does not carry itself): its source and
/// the offset of its payload.
fn tunnel_datagram(
    ctx: &Context<'_>,
    in_port: u16,
    meta: &PacketMeta,
) -> Option<(SocketAddr, u16, u8)> {
    let L4::Udp { src_port, dst_port } = meta.l4 else {
        return None;
    };
    let tunnel = ctx.cfg.tunnel.as_ref()?;
    if dst_port != tunnel.config.listen_port || in_port == tunnel.port {
        return None;
    }
    let (src, dst) = match meta.l3 {
        L3::Ipv4(ip) if ip.fragment == Fragment::None => (IpAddr::V4(ip.src), IpAddr::V4(ip.dst)),
        L3::Ipv6(ip) if ip.fragment == Fragment::None && !ip.dst.is_multicast() => {
            (IpAddr::V6(ip.src), IpAddr::V6(ip.dst))
        }
        _ => return None,
    };
    let uplink = tunnel
        .paths
        .arrival_uplink(in_port, dst)
        .unwrap_or(NO_UPLINK);
    Some((SocketAddr::new(src, src_port), meta.l4_offset + 8, uplink))
}

/// What the packet needs, and whether it is a fragment.
#[inline(always)]
fn step(ctx: &Context<'_>, in_port: u16, meta: &PacketMeta) -> (Step, bool) {
    let Some(port) = ctx.cfg.ports.get(usize::from(in_port)) else {
        return (Step::Drop(DropReason::NotForUs), false);
    };
    let broadcast_mac = meta.dst_mac[0] & 1 != 0;
    if meta.dst_mac != port.mac && !broadcast_mac {
        return (Step::Drop(DropReason::NotForUs), false);
    }
    if meta.vlan.is_some() {
        return (Step::Drop(DropReason::VlanUnsupported), false);
    }
    match &meta.l3 {
        L3::Arp(_) => (Step::Local, false),
        L3::Ipv4(ip) => (ipv4(ctx, ip, broadcast_mac), ip.fragment != Fragment::None),
        L3::Ipv6(ip) => {
            let ip_len = (u32::from(meta.ip_end) - u32::from(meta.l3_offset))
                .min(u32::from(u16::MAX)) as u16;
            let step = ipv6(ctx, in_port, ip, broadcast_mac, ip_len);
            (step, ip.fragment != Fragment::None)
        }
    }
}

#[inline(always)]
fn ipv4(ctx: &Context<'_>, ip: &Ipv4Info, broadcast_mac: bool) -> Step {
    let (src, dst) = (u32::from(ip.src), u32::from(ip.dst));
    let multicast = |a: u32| a >> 28 == 0xe;
    let loopback = |a: u32| a >> 24 == 127;
    // RFC 1812 5.3.7: never answer or forward a multicast or broadcast source.
    if multicast(src) || src == u32::MAX {
        return Step::Drop(DropReason::InvalidSourceAddress);
    }
    if ctx.cfg.is_local_v4(ip.dst) {
        return Step::Local;
    }
    // RFC 1812 5.3.4 and 5.3.7: link-layer broadcasts, IP broadcast and
    // multicast, and martian addresses are never forwarded. (Each test is
    // cheap and most packets pass them all: no short-circuit branches.)
    let martian = broadcast_mac
        | (dst == u32::MAX)
        | multicast(dst)
        | (dst == 0)
        | loopback(dst)
        | loopback(src)
        | (src == 0);
    if martian || ctx.cfg.is_directed_broadcast(ip.dst) {
        return Step::Drop(DropReason::NotRoutable);
    }
    if ip.ttl <= 1 {
        return Step::Reject(icmp::ErrorKind::TimeExceeded, DropReason::TtlExceeded);
    }
    Step::Forward {
        ip_len: ip.total_len,
    }
}

#[inline(always)]
fn ipv6(ctx: &Context<'_>, in_port: u16, ip: &Ipv6Info, broadcast_mac: bool, ip_len: u16) -> Step {
    if ip.src.is_multicast() {
        return Step::Drop(DropReason::InvalidSourceAddress);
    }
    let dst = ip.dst;
    if ctx.cfg.is_local_v6(dst) || is_our_multicast(ctx.cfg, in_port, dst) {
        return Step::Local;
    }
    // RFC 4291 2.5.6: link-local traffic stays on its link.
    if broadcast_mac
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
    Step::Forward { ip_len }
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
