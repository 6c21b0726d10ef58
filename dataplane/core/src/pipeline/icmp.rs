//! ICMP and ICMPv6 messages built inside the received buffer: echo replies
//! and the errors a router owes the sender (RFC 792, RFC 1812 4.3, RFC 4443).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::checksum::Sum16BitWords;
use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};

use super::{Burst, Context, Next, NS_PER_S};
use crate::config::Snapshot;
use crate::frame::Frame;
use crate::packet::parse::{Fragment, PacketMeta, L3, L4};
use crate::stats::{Counter, Counters, DropReason};

/// How much of the offending packet an ICMPv4 error quotes: RFC 1812
/// 4.3.2.3 allows up to 576 bytes in all.
const V4_ERROR_MAX: usize = 576;
/// ICMPv6 errors must not exceed the minimum IPv6 MTU (RFC 4443 2.4(c)).
const V6_ERROR_MAX: usize = 1280;
const TTL: u8 = 64;

/// Which error to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TTL / hop limit expired in transit.
    TimeExceeded,
    /// No route to the destination network.
    NoRoute,
    /// Nothing listens on that UDP port of the gateway.
    PortUnreachable,
    /// Larger than the next link's MTU (fragmentation needed / packet too big).
    TooBig {
        /// The MTU to report.
        mtu: u16,
    },
}

impl ErrorKind {
    fn v4_type_code(self) -> (u8, u8) {
        match self {
            ErrorKind::TimeExceeded => (11, 0),
            ErrorKind::NoRoute => (3, 0),
            ErrorKind::PortUnreachable => (3, 3),
            ErrorKind::TooBig { .. } => (3, 4),
        }
    }

    fn v6_type_code(self) -> (u8, u8) {
        match self {
            ErrorKind::TimeExceeded => (3, 0),
            ErrorKind::NoRoute => (1, 0),
            ErrorKind::PortUnreachable => (1, 4),
            ErrorKind::TooBig { .. } => (2, 0),
        }
    }
}

/// Whether an error may be sent about this packet (RFC 1812 4.3.2.7,
/// RFC 4443 2.4(e)): never about an ICMP error, a non-initial fragment, a
/// link-layer or IP broadcast/multicast, or a source that names no single host.
pub fn error_allowed(meta: &PacketMeta) -> bool {
    if meta.dst_mac[0] & 1 != 0 {
        return false;
    }
    match (&meta.l3, &meta.l4) {
        (L3::Ipv4(ip), l4) => {
            let is_error = matches!(
                l4,
                L4::Icmpv4 {
                    icmp_type: 3 | 4 | 5 | 11 | 12,
                    ..
                }
            );
            !is_error
                && ip.fragment != Fragment::Later
                && !ip.dst.is_multicast()
                && !ip.dst.is_broadcast()
                && !ip.src.is_unspecified()
                && !ip.src.is_multicast()
                && !ip.src.is_broadcast()
                && !ip.src.is_loopback()
        }
        (L3::Ipv6(ip), l4) => {
            let is_error = matches!(l4, L4::Icmpv6 { icmp_type, .. } if *icmp_type < 128);
            !is_error
                && ip.fragment != Fragment::Later
                && !ip.dst.is_multicast()
                && !ip.src.is_unspecified()
                && !ip.src.is_multicast()
                && !ip.src.is_loopback()
        }
        (L3::Arp(_), _) => false,
    }
}

/// The ICMPv4 checksum of a message.
fn checksum_v4(msg: &[u8]) -> u16 {
    // etherparse sums native-endian words; `to_be` makes the value big-endian-correct.
    Sum16BitWords::new()
        .add_slice(msg)
        .ones_complement()
        .to_be()
}

/// The ICMPv6 checksum of a message, over the RFC 8200 8.1 pseudo-header.
pub(super) fn checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum = Sum16BitWords::new();
    sum = sum.add_16bytes(src.octets());
    sum = sum.add_16bytes(dst.octets());
    sum = sum.add_4bytes((msg.len() as u32).to_be_bytes());
    sum = sum.add_4bytes([0, 0, 0, 58]);
    sum.add_slice(msg).ones_complement().to_be()
}

/// Writes an IPv4 header for an ICMP message of `payload_len` bytes.
fn write_ipv4_header(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_len: usize,
    id: u16,
) -> bool {
    let Ok(mut h) = Ipv4Header::new(
        payload_len as u16,
        TTL,
        IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    ) else {
        return false;
    };
    h.identification = id;
    h.header_checksum = h.calc_header_checksum();
    let bytes = h.to_bytes();
    out[..bytes.len()].copy_from_slice(&bytes);
    true
}

/// Writes an IPv6 header for an ICMPv6 message of `payload_len` bytes.
pub(super) fn write_ipv6_header(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    payload_len: usize,
    hop_limit: u8,
) {
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: payload_len as u16,
        next_header: IpNumber::IPV6_ICMP,
        hop_limit,
        source: src.octets(),
        destination: dst.octets(),
    };
    out[..Ipv6Header::LEN].copy_from_slice(&h.to_bytes());
}

/// Turns the frame into an ICMP error about itself, addressed back to the
/// sender's MAC out of `in_port`. False (frame unspecified) when the port
/// has no address of the family to send from or the buffer lacks headroom.
pub fn error_in_place<F: Frame>(
    cfg: &Snapshot,
    in_port: u16,
    frame: &mut F,
    meta: &PacketMeta,
    kind: ErrorKind,
    ip_id: u16,
) -> bool {
    let Some(port) = cfg.ports.get(usize::from(in_port)) else {
        return false;
    };
    // Family specifics: source address, IP header length, size limit.
    let (src, ip_hlen, max_total) = match meta.l3 {
        L3::Ipv4(ip) => match port.v4_source(ip.src) {
            Some(src) => (IpAddr::V4(src), 20, V4_ERROR_MAX),
            None => return false,
        },
        L3::Ipv6(ip) => match port.v6_source(ip.src) {
            Some(src) => (IpAddr::V6(src), 40, V6_ERROR_MAX),
            None => return false,
        },
        L3::Arp(_) => return false,
    };
    let l2 = usize::from(meta.l3_offset);
    let added = ip_hlen + 8;
    let quote = (usize::from(meta.ip_end) - l2).min(max_total - added);
    let total = l2 + added + quote;
    if !frame.prepend(added) || !frame.set_len(total) {
        return false;
    }
    let data = frame.data_mut();
    // The Ethernet header moves to the front; the original IP packet now
    // starts right after the new IP and ICMP headers.
    data.copy_within(added..added + l2, 0);
    data[0..6].copy_from_slice(&meta.src_mac);
    data[6..12].copy_from_slice(&port.mac);
    let (icmp_type, code, rest) = match (meta.l3, src) {
        (L3::Ipv4(ip), IpAddr::V4(src)) => {
            if !write_ipv4_header(&mut data[l2..], src, ip.src, 8 + quote, ip_id) {
                return false;
            }
            let (t, c) = kind.v4_type_code();
            let rest = match kind {
                ErrorKind::TooBig { mtu } => u32::from(mtu),
                _ => 0,
            };
            (t, c, rest)
        }
        (L3::Ipv6(ip), IpAddr::V6(src)) => {
            write_ipv6_header(&mut data[l2..], src, ip.src, 8 + quote, TTL);
            let (t, c) = kind.v6_type_code();
            let rest = match kind {
                ErrorKind::TooBig { mtu } => u32::from(mtu),
                _ => 0,
            };
            (t, c, rest)
        }
        _ => return false,
    };
    let msg = &mut data[l2 + ip_hlen..total];
    msg[..4].copy_from_slice(&[icmp_type, code, 0, 0]);
    msg[4..8].copy_from_slice(&rest.to_be_bytes());
    let csum = match (meta.l3, src) {
        (L3::Ipv6(ip), IpAddr::V6(src)) => checksum_v6(src, ip.src, msg),
        _ => checksum_v4(msg),
    };
    msg[2..4].copy_from_slice(&csum.to_be_bytes());
    true
}

/// Turns an ICMP echo request to one of our addresses into the reply.
pub fn echo_reply_v4<F: Frame>(
    cfg: &Snapshot,
    in_port: u16,
    frame: &mut F,
    meta: &PacketMeta,
) -> bool {
    let (L3::Ipv4(ip), Some(port)) = (meta.l3, cfg.ports.get(usize::from(in_port))) else {
        return false;
    };
    if !frame.set_len(usize::from(meta.ip_end)) {
        return false;
    }
    let l3 = usize::from(meta.l3_offset);
    let l4 = usize::from(meta.l4_offset);
    let end = usize::from(meta.ip_end);
    let data = frame.data_mut();
    data[0..6].copy_from_slice(&meta.src_mac);
    data[6..12].copy_from_slice(&port.mac);
    data[l3 + 8] = TTL;
    data[l3 + 12..l3 + 16].copy_from_slice(&ip.dst.octets());
    data[l3 + 16..l3 + 20].copy_from_slice(&ip.src.octets());
    data[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let hcsum = Sum16BitWords::new()
        .add_slice(&data[l3..l4])
        .ones_complement()
        .to_be();
    data[l3 + 10..l3 + 12].copy_from_slice(&hcsum.to_be_bytes());
    let msg = &mut data[l4..end];
    msg[0] = 0; // echo reply
    msg[2..4].copy_from_slice(&[0, 0]);
    let csum = checksum_v4(msg);
    msg[2..4].copy_from_slice(&csum.to_be_bytes());
    true
}

/// Turns an ICMPv6 echo request to one of our addresses into the reply.
pub fn echo_reply_v6<F: Frame>(
    cfg: &Snapshot,
    in_port: u16,
    frame: &mut F,
    meta: &PacketMeta,
) -> bool {
    let (L3::Ipv6(ip), Some(port)) = (meta.l3, cfg.ports.get(usize::from(in_port))) else {
        return false;
    };
    let l2 = usize::from(meta.l3_offset);
    let l4 = usize::from(meta.l4_offset);
    let end = usize::from(meta.ip_end);
    // Extension headers of the request are not echoed: the reply is a bare
    // IPv6 header followed by the ICMPv6 message.
    let msg_len = end - l4;
    {
        let data = frame.data_mut();
        data.copy_within(l4..end, l2 + 40);
    }
    if !frame.set_len(l2 + 40 + msg_len) {
        return false;
    }
    let data = frame.data_mut();
    data[0..6].copy_from_slice(&meta.src_mac);
    data[6..12].copy_from_slice(&port.mac);
    write_ipv6_header(&mut data[l2..], ip.dst, ip.src, msg_len, TTL);
    let msg = &mut data[l2 + 40..];
    msg[0] = 129; // echo reply
    msg[2..4].copy_from_slice(&[0, 0]);
    let csum = checksum_v6(ip.dst, ip.src, msg);
    msg[2..4].copy_from_slice(&csum.to_be_bytes());
    true
}

/// The ICMP errors a worker sends: their rate limit (RFC 1812 4.3.2.8) and
/// IPv4 identification.
#[derive(Debug, Clone)]
pub(super) struct Errors {
    bucket: TokenBucket,
    ip_id: u16,
}

impl Errors {
    pub(super) fn new(cfg: &Snapshot, seed: u64) -> Self {
        Errors {
            bucket: TokenBucket::new(cfg.icmp.errors_per_s, cfg.icmp.errors_burst),
            ip_id: (seed as u16) | 1,
        }
    }

    pub(super) fn reconfigure(&mut self, cfg: &Snapshot) {
        self.bucket = TokenBucket::new(cfg.icmp.errors_per_s, cfg.icmp.errors_burst);
    }

    /// Drops slot `i` for `reason` and, when the RFCs allow an ICMP error
    /// and the rate limit has a token, rewrites it into that error back to
    /// its sender: out of the port it came in by, or, for a packet that came
    /// out of the tunnel, routed back into it.
    pub(super) fn reject<F: Frame>(
        &mut self,
        counters: &mut Counters,
        ctx: &Context<'_>,
        burst: &mut Burst<F>,
        i: usize,
        kind: ErrorKind,
        reason: DropReason,
    ) {
        counters.drop(reason);
        let in_port = burst.meta[i].in_port;
        let (frame, meta) = burst.frame_and_headers(i);
        if !error_allowed(meta) {
            return burst.discard(i);
        }
        if !self.bucket.take(ctx.now_ns) {
            counters.add(Counter::IcmpRateLimited, 1);
            return burst.discard(i);
        }
        self.ip_id = self.ip_id.wrapping_add(1);
        let meta = *meta;
        if !error_in_place(ctx.cfg, in_port, frame, &meta, kind, self.ip_id) {
            return burst.discard(i);
        }
        counters.add(Counter::IcmpErrors, 1);
        burst.meta[i].next = reply_to(ctx, in_port);
    }
}

/// Where a reply built in place goes: straight back out of the Ethernet
/// port the request came in by, or, for a request from the tunnel, through
/// the route stage (into the tunnel, to the peer that owns the address).
pub(super) fn reply_to(ctx: &Context<'_>, in_port: u16) -> Next {
    if Some(in_port) == ctx.cfg.tunnel_port() {
        Next::Route
    } else {
        Next::Transmit(in_port)
    }
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
