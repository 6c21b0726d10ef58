//! Stage `local`: packets addressed to the gateway itself. ARP and
//! Neighbor Discovery are answered and learned from, echo requests
//! answered, datagrams for services it does not offer refused with an ICMP
//! error; replies are built in the received buffer (RFC 826, RFC 4861,
//! RFC 792, RFC 4443, RFC 1122 3.2.2.1).

use std::net::IpAddr;

use crossbeam_channel::Sender;

use super::icmp::{self, reply_to, Errors};
use super::neighbor_msgs;
use super::{Burst, Context, Next};
use crate::frame::Frame;
use crate::neighbor::NeighborEvent;
use crate::packet::parse::{ArpInfo, Fragment, Ipv4Info, Ipv6Info, PacketMeta, L3, L4};
use crate::paths::bfd::{CONTROL_PORT, MULTIHOP_PORT};
use crate::stats::{Counter, Counters, DropReason};

/// Where neighbours learned from ARP and ND go (the control thread keeps
/// the table); a full channel loses the observation, counted, never a packet.
#[derive(Debug)]
pub(super) struct Learned {
    pub events: Sender<NeighborEvent>,
}

impl Learned {
    fn learn(
        &self,
        counters: &mut Counters,
        port: u16,
        ip: IpAddr,
        mac: [u8; 6],
        now_ns: u64,
        create: bool,
    ) {
        let event = NeighborEvent {
            port,
            ip,
            mac,
            now_ns,
            create,
        };
        if self.events.try_send(event).is_err() {
            counters.add(Counter::LearnEventsLost, 1);
        }
    }
}

/// What became of a local packet.
enum Done {
    /// Answered in place.
    Replied(Counter),
    /// Taken in (learned from, or nothing to do).
    Consumed,
    /// Dropped for this reason.
    Drop(DropReason),
    /// Refused with an ICMP error.
    Reject(icmp::ErrorKind, DropReason),
    /// A BFD Control packet for the session of this uplink.
    UplinkBfd(u8),
}

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    learned: &Learned,
    errors: &mut Errors,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
) {
    for i in burst.slots() {
        if !matches!(burst.meta[i].next, Next::Local) {
            continue;
        }
        let in_port = burst.meta[i].in_port;
        let (frame, meta) = burst.frame_and_headers(i);
        let meta = *meta;
        let done = match meta.l3 {
            L3::Arp(arp) => arp_message(learned, counters, ctx, in_port, frame, &arp),
            L3::Ipv4(ip) => local_v4(ctx, in_port, frame, &meta, &ip),
            L3::Ipv6(ip) => local_v6(learned, counters, ctx, in_port, frame, &meta, &ip),
        };
        match done {
            Done::Replied(counter) => {
                counters.add(counter, 1);
                burst.meta[i].next = reply_to(ctx, in_port);
            }
            Done::Consumed => burst.discard(i),
            Done::Drop(reason) => {
                counters.drop(reason);
                burst.discard(i);
            }
            Done::Reject(kind, reason) => errors.reject(counters, ctx, burst, i, kind, reason),
            Done::UplinkBfd(uplink) => burst.meta[i].next = Next::UplinkBfd { uplink },
        }
    }
}

/// A reply built in place, or a drop when it could not be.
fn replied(built: bool, counter: Counter) -> Done {
    if built {
        Done::Replied(counter)
    } else {
        Done::Drop(DropReason::NoBuffer)
    }
}

fn local_v4<F: Frame>(
    ctx: &Context<'_>,
    in_port: u16,
    frame: &mut F,
    meta: &PacketMeta,
    ip: &Ipv4Info,
) -> Done {
    if ip.fragment != Fragment::None {
        // No reassembly for the gateway's own traffic.
        return Done::Drop(DropReason::LocalUnsupported);
    }
    match meta.l4 {
        L4::Icmpv4 {
            icmp_type: 8,
            code: 0,
            ..
        } => replied(
            icmp::echo_reply_v4(ctx.cfg, in_port, frame, meta),
            Counter::EchoReplies,
        ),
        L4::Udp { dst_port, .. } => match uplink_session(ctx, in_port, ip, dst_port) {
            Some(uplink) => Done::UplinkBfd(uplink),
            None => PORT_UNREACHABLE,
        },
        _ => Done::Drop(DropReason::LocalUnsupported),
    }
}

/// The uplink whose BFD session a datagram that arrived on `port` is for:
/// from the session's remote to its address and port.
fn uplink_session(ctx: &Context<'_>, port: u16, ip: &Ipv4Info, dst_port: u16) -> Option<u8> {
    if dst_port != CONTROL_PORT && dst_port != MULTIHOP_PORT {
        return None;
    }
    let uplinks = &ctx.cfg.tunnel.as_ref()?.paths.uplinks;
    let found = uplinks.iter().position(|u| {
        u.port == port
            && u.bfd.as_ref().is_some_and(|b| {
                let e = &b.ends;
                e.remote == ip.src && e.local == ip.dst && e.port() == dst_port
            })
    })?;
    Some(found as u8)
}

/// A datagram for a service the gateway does not offer.
const PORT_UNREACHABLE: Done = Done::Reject(
    icmp::ErrorKind::PortUnreachable,
    DropReason::LocalUnsupported,
);

fn local_v6<F: Frame>(
    learned: &Learned,
    counters: &mut Counters,
    ctx: &Context<'_>,
    in_port: u16,
    frame: &mut F,
    meta: &PacketMeta,
    ip: &Ipv6Info,
) -> Done {
    if ip.fragment != Fragment::None {
        return Done::Drop(DropReason::LocalUnsupported);
    }
    match meta.l4 {
        L4::Icmpv6 {
            icmp_type: 128,
            code: 0,
            ..
        } if !ip.dst.is_multicast() => replied(
            icmp::echo_reply_v6(ctx.cfg, in_port, frame, meta),
            Counter::EchoReplies,
        ),
        L4::Icmpv6 { icmp_type: 135, .. } => {
            neighbor_solicitation(learned, counters, ctx, in_port, frame, meta, ip)
        }
        L4::Icmpv6 { icmp_type: 136, .. } => {
            neighbor_advertisement(learned, counters, ctx, in_port, frame, meta, ip)
        }
        // Router and redirect messages, MLD, and echo to multicast: nothing to do.
        L4::Icmpv6 { .. } => Done::Consumed,
        L4::Udp { .. } if !ip.dst.is_multicast() => PORT_UNREACHABLE,
        _ => Done::Drop(DropReason::LocalUnsupported),
    }
}

fn arp_message<F: Frame>(
    learned: &Learned,
    counters: &mut Counters,
    ctx: &Context<'_>,
    in_port: u16,
    frame: &mut F,
    arp: &ArpInfo,
) -> Done {
    let Some(port) = ctx.cfg.ports.get(usize::from(in_port)) else {
        return Done::Consumed;
    };
    let for_us = port.owns(IpAddr::V4(arp.target_ip));
    let sender_valid = !arp.sender_ip.is_unspecified()
        && arp.sender_mac[0] & 1 == 0
        && !port.owns(IpAddr::V4(arp.sender_ip));
    if sender_valid {
        // RFC 826: merge into an existing entry always; create one only when we are the target.
        let sender = IpAddr::V4(arp.sender_ip);
        learned.learn(
            counters,
            in_port,
            sender,
            arp.sender_mac,
            ctx.now_ns,
            for_us,
        );
    }
    if arp.operation == 1 && for_us {
        neighbor_msgs::arp_reply_in_place(frame, port.mac, arp);
        return Done::Replied(Counter::ArpReplies);
    }
    Done::Consumed
}

fn neighbor_solicitation<F: Frame>(
    learned: &Learned,
    counters: &mut Counters,
    ctx: &Context<'_>,
    in_port: u16,
    frame: &mut F,
    meta: &PacketMeta,
    ip: &Ipv6Info,
) -> Done {
    let Some(ns) = neighbor_msgs::parse_nd(frame.data(), meta, ip) else {
        return Done::Drop(DropReason::BadNeighborDiscovery);
    };
    let Some(port) = ctx.cfg.ports.get(usize::from(in_port)) else {
        return Done::Consumed;
    };
    if !port.owns(IpAddr::V6(ns.target)) {
        return Done::Consumed;
    }
    if let Some(mac) = ns.link_addr {
        if !ip.src.is_unspecified() {
            learned.learn(counters, in_port, IpAddr::V6(ip.src), mac, ctx.now_ns, true);
        }
    }
    let built = neighbor_msgs::advertisement_in_place(frame, port.mac, meta, ip, ns.target);
    replied(built, Counter::NdAdvertisements)
}

fn neighbor_advertisement<F: Frame>(
    learned: &Learned,
    counters: &mut Counters,
    ctx: &Context<'_>,
    in_port: u16,
    frame: &F,
    meta: &PacketMeta,
    ip: &Ipv6Info,
) -> Done {
    let Some(na) = neighbor_msgs::parse_nd(frame.data(), meta, ip) else {
        return Done::Drop(DropReason::BadNeighborDiscovery);
    };
    let mac = na.link_addr.unwrap_or(meta.src_mac);
    if mac[0] & 1 == 0 && !na.target.is_multicast() {
        let target = IpAddr::V6(na.target);
        learned.learn(counters, in_port, target, mac, ctx.now_ns, na.solicited);
    }
    Done::Consumed
}
