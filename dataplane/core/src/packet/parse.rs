//! Zero-copy parser of untrusted Ethernet frames into the compact
//! [`PacketMeta`] the forwarding path works on.
//!
//! All header decoding is done by `etherparse`'s slice types; this module only
//! walks the layers, applies the router's acceptance rules and maps every
//! failure to one [`ParseError`] reason. [`parse`] never panics and never
//! allocates. One fast path reads the commonest frame (untagged Ethernet,
//! option-less unfragmented IPv4, UDP or TCP) at fixed offsets; it gives up
//! on anything else or anything doubtful, and agrees with the general
//! parser on everything it takes (a fuzz target and the tests compare them).
//!
//! Layer choices (the reasons are in the comments at each step):
//! * Ethernet II with at most two VLAN tags (TPID `0x8100` or `0x88a8`);
//!   the outermost VLAN id is reported.
//! * IPv4 is sliced with [`Ipv4HeaderSlice`] (not `Ipv4Slice`) so that an
//!   IPv4 AH (protocol 51) is an opaque upper-layer protocol like ESP or GRE.
//! * IPv6 extension headers are walked with etherparse's per-header slices
//!   (not `Ipv6ExtensionsSlice`), because the latter keeps walking past the
//!   fragment header of a non-first fragment into fragment payload.
//! * L4 checksums are never verified.

#![deny(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    checksum::Sum16BitWords, err, icmpv4, icmpv6, ip_number, ArpHardwareId, ArpPacketSlice,
    EtherPayloadSlice, EtherType, Ethernet2Slice, IcmpEchoHeader, Icmpv4Header, Icmpv4Slice,
    Icmpv6Slice, IpAuthHeaderSlice, IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6Header, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanSlice, TcpHeader, TcpHeaderSlice,
    UdpHeader, UdpHeaderSlice,
};

use super::flow_key::{ip_proto, Direction, FlowKey};
use crate::labels::labelled_enum;

labelled_enum! {
    /// Why a frame was dropped by the parser. Counted per reason by the worker, so it stays a small Copy enum.
    ParseError {
        /// Shorter than the 14-byte Ethernet II header.
        TruncatedEthernet => "truncated_ethernet", "frame shorter than an Ethernet II header";
        /// A VLAN tag's TPID announces 4 more bytes than the frame has.
        TruncatedVlan => "truncated_vlan", "truncated VLAN tag";
        /// Ethertype (after up to two VLAN tags) is not ARP, IPv4 or IPv6.
        UnsupportedEthertype => "unsupported_ethertype", "unsupported ethertype (not ARP, IPv4 or IPv6)";
        /// ARP packet shorter than its fixed part plus the address lengths it declares.
        TruncatedArp => "truncated_arp", "truncated ARP packet";
        /// ARP for something other than Ethernet (htype 1 or 6, hlen 6) / IPv4 (ptype 0x0800, plen 4).
        UnsupportedArp => "unsupported_arp", "ARP for a hardware/protocol other than Ethernet/IPv4";
        /// Fewer than 20 bytes where the IPv4 header should be.
        TruncatedIpv4 => "truncated_ipv4", "truncated IPv4 header";
        /// IP version nibble does not match the ethertype (4 for IPv4, 6 for IPv6).
        BadIpVersion => "bad_ip_version", "IP version does not match the ethertype";
        /// IPv4 IHL below 5, or the options it announces run past the frame.
        BadIpv4HeaderLength => "bad_ipv4_header_length", "IPv4 header length (IHL) below 5 or options run past the frame";
        /// IPv4 total length shorter than the header or longer than the frame.
        BadIpv4TotalLength => "bad_ipv4_total_length", "IPv4 total length smaller than the header or larger than the frame";
        /// IPv4 header checksum does not verify.
        BadIpv4Checksum => "bad_ipv4_checksum", "IPv4 header checksum mismatch";
        /// Fewer than 40 bytes where the IPv6 header should be.
        TruncatedIpv6 => "truncated_ipv6", "truncated IPv6 header";
        /// IPv6 payload length runs past the frame, or is a jumbogram (unsupported).
        BadIpv6PayloadLength => "bad_ipv6_payload_length", "IPv6 payload length larger than the frame, or jumbogram";
        /// An IPv6 extension header is truncated, misplaced or malformed.
        BadIpv6ExtensionHeader => "bad_ipv6_extension_header", "malformed IPv6 extension header chain";
        /// Fewer than 20 bytes of TCP header inside the IP packet.
        TruncatedTcp => "truncated_tcp", "truncated TCP header";
        /// TCP data offset below 5, or the options it announces run past the IP packet.
        BadTcpHeaderLength => "bad_tcp_header_length", "TCP data offset below 5 or options run past the IP packet";
        /// Fewer than 8 bytes of UDP header inside the IP packet.
        TruncatedUdp => "truncated_udp", "truncated UDP header";
        /// UDP length field below 8 or larger than the IP payload.
        BadUdpLength => "bad_udp_length", "UDP length below 8 or larger than the IP payload";
        /// Fewer than 8 bytes of ICMP/ICMPv6 header inside the IP packet.
        TruncatedIcmp => "truncated_icmp", "truncated ICMP header";
        /// Frame longer than 65535 bytes: its offsets would not fit the `u16` fields of [`PacketMeta`].
        FrameTooLong => "frame_too_long", "frame longer than 65535 bytes";
    }
}

impl std::error::Error for ParseError {}

/// Layer-3 summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// Ethernet/IPv4 ARP.
    Arp(ArpInfo),
    /// IPv4.
    Ipv4(Ipv4Info),
    /// IPv6.
    Ipv6(Ipv6Info),
}

/// Ethernet/IPv4 ARP packet contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// ARP operation (1 = request, 2 = reply).
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// IPv4 header summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live (0 is not a parse error).
    pub ttl: u8,
    /// Protocol field of the IPv4 header (an AH is not skipped).
    pub protocol: u8,
    /// Header length in bytes, options included (20..=60).
    pub header_len: u8,
    /// Total length field (header + payload) in bytes.
    pub total_len: u16,
    /// Fragmentation state.
    pub fragment: Fragment,
}

/// IPv6 header summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Info {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Hop limit (0 is not a parse error).
    pub hop_limit: u8,
    /// Upper-layer protocol after the extension headers (for a non-first fragment: the fragment header's next header).
    pub next_header: u8,
    /// Payload length field (extension headers + upper layer) in bytes.
    pub payload_len: u16,
    /// Fragmentation state.
    pub fragment: Fragment,
}

/// Fragmentation state of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not a fragment (an IPv6 atomic fragment, offset 0 without M flag, counts as not fragmented).
    None,
    /// First fragment: offset 0 with More-Fragments set; the L4 header is parsed if it is in this fragment.
    First,
    /// Non-first fragment (offset ≠ 0): no L4 header present.
    Later,
}

/// Layer-4 summary (absent for non-first fragments and for protocols other than these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// No L4 header parsed (non-first fragment, other protocol, or a first fragment too short to hold it).
    None,
    /// TCP header.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// The 8 flag bits CWR..FIN (see [`tcp_flag`]).
        flags: u8,
    },
    /// UDP header.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP (IPv4, protocol 1) header.
    Icmpv4 {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
        /// Echo identifier for echo request/reply, else 0.
        ident: u16,
    },
    /// ICMPv6 (IPv6, next header 58) header.
    Icmpv6 {
        /// ICMPv6 type.
        icmp_type: u8,
        /// ICMPv6 code.
        code: u8,
        /// Echo identifier for echo request/reply, else 0.
        ident: u16,
    },
}

/// Bits of [`L4::Tcp`]'s `flags` byte.
pub mod tcp_flag {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// Everything the forwarding path needs from one frame, by value (68 bytes, see the size test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// Outermost 802.1Q/802.1ad VLAN id (12 bits), if tagged.
    pub vlan: Option<u16>,
    /// Byte offset of the ARP/IP header within the frame.
    pub l3_offset: u16,
    /// Byte offset of the L4 header (after IPv4 options / IPv6 extension headers); payload start when `L4::None`; for ARP the end of the ARP packet.
    pub l4_offset: u16,
    /// Layer-3 summary.
    pub l3: L3,
    /// Layer-4 summary.
    pub l4: L4,
    /// Length of the whole frame in bytes (Ethernet padding included).
    pub frame_len: u16,
    /// Offset one past the last byte of the IP packet (`l3_offset` + IP total length); for ARP `frame_len`.
    pub ip_end: u16,
}

impl PacketMeta {
    /// A placeholder for a slot about to be filled.
    const EMPTY: PacketMeta = PacketMeta {
        dst_mac: [0; 6],
        src_mac: [0; 6],
        vlan: None,
        l3_offset: 0,
        l4_offset: 0,
        l3: L3::Ipv4(Ipv4Info {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            ttl: 0,
            protocol: 0,
            header_len: 0,
            total_len: 0,
            fragment: Fragment::None,
        }),
        l4: L4::None,
        frame_len: 0,
        ip_end: 0,
    };

    /// Canonical flow key and direction; None for ARP. ICMP echo uses ident as both ports; other ICMP and non-first fragments use ports 0.
    #[inline]
    pub fn flow_key(&self) -> Option<(FlowKey, Direction)> {
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            }
            | L4::Udp { src_port, dst_port } => (src_port, dst_port),
            // `ident` is 0 for everything but echo request/reply.
            L4::Icmpv4 { ident, .. } | L4::Icmpv6 { ident, .. } => (ident, ident),
            L4::None => (0, 0),
        };
        match self.l3 {
            L3::Arp(_) => None,
            L3::Ipv4(ip) => Some(FlowKey::v4(ip.src, ip.dst, src_port, dst_port, ip.protocol)),
            L3::Ipv6(ip) => Some(FlowKey::v6(
                ip.src,
                ip.dst,
                src_port,
                dst_port,
                ip.next_header,
            )),
        }
    }
}

/// Parses one Ethernet frame. Never panics; never allocates.
pub fn parse(frame: &[u8]) -> Result<PacketMeta, ParseError> {
    let mut out = Err(ParseError::TruncatedEthernet);
    parse_into(frame, &mut out);
    out
}

/// Parses one Ethernet frame into `out`, which burst processing keeps in
/// place: the result is written once, field by field, instead of being
/// returned by value and copied (a copy whose wide loads stall on the
/// parser's narrow stores).
#[inline(never)]
pub fn parse_into(frame: &[u8], out: &mut Result<PacketMeta, ParseError>) {
    if !common_ipv4(frame, out) {
        *out = parse_general(frame);
    }
}

/// [`parse`] without its fast path: what every frame the fast path takes
/// must also give here (the `parse_fast_path` fuzz target and the tests
/// compare the two).
#[cfg(any(test, feature = "test-support"))]
pub fn parse_without_fast_path(frame: &[u8]) -> Result<PacketMeta, ParseError> {
    parse_general(frame)
}

/// Length of the fixed part the fast path reads: Ethernet, a 20-byte IPv4
/// header and the 8 bytes that start any TCP or UDP header.
const COMMON_LEN: usize = 14 + 20 + 8;

/// The bulk of forwarded traffic, read at fixed offsets: an untagged
/// Ethernet frame holding an option-less, unfragmented IPv4 packet with a
/// valid header checksum that carries a complete UDP or TCP header. Any
/// other frame, and any frame where one of those checks fails, is left to
/// the general parser (false, `out` untouched), which then decides and
/// names what is wrong. On every frame it takes, the result is exactly the
/// general parser's.
///
/// The result is stored field by field into the slot (a burst's slots hold
/// a parsed frame from the last pass), never built aside and copied: the
/// copy's wide loads would wait for the narrow stores that built it.
#[inline(always)]
fn common_ipv4(frame: &[u8], out: &mut Result<PacketMeta, ParseError>) -> bool {
    let Some(h) = frame.first_chunk::<COMMON_LEN>() else {
        return false;
    };
    let Ok(frame_len) = u16::try_from(frame.len()) else {
        return false;
    };
    // IPv4, version 4 and IHL 5.
    if h[12..14] != [0x08, 0x00] || h[14] != 0x45 {
        return false;
    }
    let [ip @ .., a, b, c, d] = *h[14..34].first_chunk::<20>().expect("20 of 42 bytes");
    let ip: [u8; 16] = ip;
    let sum = Sum16BitWords::new()
        .add_16bytes(ip)
        .add_4bytes([a, b, c, d]);
    let total_len = u16::from_be_bytes([h[16], h[17]]);
    let ip_end = 14 + u32::from(total_len);
    // More fragments, or an offset: a fragment.
    let fragment = h[20] & 0x3f != 0 || h[21] != 0;
    if sum.ones_complement() != 0 || total_len < 20 || ip_end > u32::from(frame_len) || fragment {
        return false;
    }
    let l4_len = total_len - 20;
    let src_port = u16::from_be_bytes([h[34], h[35]]);
    let dst_port = u16::from_be_bytes([h[36], h[37]]);
    let protocol = h[23];
    let l4 = match protocol {
        ip_proto::UDP => {
            let udp_len = u16::from_be_bytes([h[38], h[39]]);
            if l4_len < 8 || udp_len < 8 || udp_len > l4_len {
                return false;
            }
            L4::Udp { src_port, dst_port }
        }
        ip_proto::TCP => {
            // Data offset and flags are bytes 12 and 13 of the TCP header.
            let Some(&[offset, flags]) = frame.get(46..48).and_then(|b| b.first_chunk()) else {
                return false;
            };
            let header_len = u16::from(offset >> 4) * 4;
            if header_len < 20 || header_len > l4_len {
                return false;
            }
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            }
        }
        _ => return false,
    };
    if out.is_err() {
        // The slot held an error: give it a packet to overwrite.
        *out = Ok(PacketMeta::EMPTY);
    }
    let Ok(meta) = out else {
        unreachable!("made a packet just above")
    };
    meta.dst_mac = *h[0..6].first_chunk().expect("6 of 42 bytes");
    meta.src_mac = *h[6..12].first_chunk().expect("6 of 42 bytes");
    meta.vlan = None;
    meta.l3_offset = 14;
    meta.l4_offset = 34;
    meta.l3 = L3::Ipv4(Ipv4Info {
        src: Ipv4Addr::new(h[26], h[27], h[28], h[29]),
        dst: Ipv4Addr::new(h[30], h[31], h[32], h[33]),
        ttl: h[22],
        protocol,
        header_len: 20,
        total_len,
        fragment: Fragment::None,
    });
    meta.l4 = l4;
    meta.frame_len = frame_len;
    meta.ip_end = ip_end as u16;
    true
}

#[inline(always)]
fn parse_general(frame: &[u8]) -> Result<PacketMeta, ParseError> {
    // Every offset below is <= frame.len(), so this makes the u16 casts lossless.
    if frame.len() > usize::from(u16::MAX) {
        return Err(ParseError::FrameTooLong);
    }
    let eth =
        Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| ParseError::TruncatedEthernet)?;
    let mut l3_offset = eth.header_len();
    let mut payload: EtherPayloadSlice<'_> = eth.payload();

    // Up to two tags (QinQ). A third tag leaves a VLAN ethertype behind and
    // ends up as UnsupportedEthertype below.
    let mut vlan = None;
    for _ in 0..2 {
        if !matches!(
            payload.ether_type,
            EtherType::VLAN_TAGGED_FRAME | EtherType::PROVIDER_BRIDGING
        ) {
            break;
        }
        let tag =
            SingleVlanSlice::from_slice(payload.payload).map_err(|_| ParseError::TruncatedVlan)?;
        vlan = vlan.or(Some(tag.vlan_identifier().value()));
        l3_offset += tag.header_len();
        payload = tag.payload();
    }

    let frame_len = frame.len() as u16;
    let l3_off = l3_offset as u16;
    let (l3, l4, l4_offset, ip_end) = match payload.ether_type {
        EtherType::IPV4 => {
            let (info, l4) = parse_ipv4(payload.payload)?;
            (
                L3::Ipv4(info),
                l4,
                l3_off + u16::from(info.header_len),
                l3_off + info.total_len,
            )
        }
        EtherType::IPV6 => {
            let (info, l4, l4_rel) = parse_ipv6(payload.payload)?;
            (
                L3::Ipv6(info),
                l4,
                l3_off + l4_rel,
                l3_off + Ipv6Header::LEN as u16 + info.payload_len,
            )
        }
        EtherType::ARP => {
            let (info, arp_len) = parse_arp(payload.payload)?;
            (L3::Arp(info), L4::None, l3_off + arp_len, frame_len)
        }
        _ => return Err(ParseError::UnsupportedEthertype),
    };

    Ok(PacketMeta {
        dst_mac: eth.destination(),
        src_mac: eth.source(),
        vlan,
        l3_offset: l3_off,
        l4_offset,
        l3,
        l4,
        frame_len,
        ip_end,
    })
}

/// ARP (Ethernet/IPv4 only). Returns the summary and the ARP packet length.
#[cold]
fn parse_arp(data: &[u8]) -> Result<(ArpInfo, u16), ParseError> {
    // etherparse checks the 8-byte fixed part and the address lengths it declares.
    let arp = ArpPacketSlice::from_slice(data).map_err(|_| ParseError::TruncatedArp)?;
    // Like Linux (arp_rcv), accept hardware type IEEE 802 (6) next to Ethernet (1).
    let hw_ok = matches!(
        arp.hw_addr_type(),
        ArpHardwareId::ETHERNET | ArpHardwareId::IEEE802
    );
    if !hw_ok || arp.proto_addr_type() != EtherType::IPV4 {
        return Err(ParseError::UnsupportedArp);
    }
    // Fail on any size other than 6/4 (try_into checks the lengths).
    let (Ok(sender_mac), Ok(sender_ip), Ok(target_mac), Ok(target_ip)) = (
        <[u8; 6]>::try_from(arp.sender_hw_addr()),
        <[u8; 4]>::try_from(arp.sender_protocol_addr()),
        <[u8; 6]>::try_from(arp.target_hw_addr()),
        <[u8; 4]>::try_from(arp.target_protocol_addr()),
    ) else {
        return Err(ParseError::UnsupportedArp);
    };
    let info = ArpInfo {
        operation: arp.operation().0,
        sender_mac,
        sender_ip: Ipv4Addr::from(sender_ip),
        target_mac,
        target_ip: Ipv4Addr::from(target_ip),
    };
    Ok((info, arp.slice().len() as u16))
}

#[inline(always)]
fn parse_ipv4(data: &[u8]) -> Result<(Ipv4Info, L4), ParseError> {
    use err::ipv4::{HeaderError, HeaderSliceError};

    // Length (>= 20), version, IHL >= 5 and options within the data.
    let hdr = Ipv4HeaderSlice::from_slice(data).map_err(|e| match e {
        HeaderSliceError::Len(l) if l.len < Ipv4Header::MIN_LEN => ParseError::TruncatedIpv4,
        HeaderSliceError::Len(_) => ParseError::BadIpv4HeaderLength,
        HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => {
            ParseError::BadIpVersion
        }
        HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
            ParseError::BadIpv4HeaderLength
        }
    })?;
    let header = hdr.slice();

    // RFC 1812 5.2.2: the one's complement sum over the header, checksum
    // included, must be 0xffff, i.e. its complement must be 0.
    let sum = match <&[u8; 20]>::try_from(header) {
        // The usual header without options, in two wide additions.
        Ok([words @ .., a, b, c, d]) => Sum16BitWords::new()
            .add_16bytes(*words)
            .add_4bytes([*a, *b, *c, *d]),
        Err(_) => Sum16BitWords::new().add_slice(header),
    };
    if sum.ones_complement() != 0 {
        return Err(ParseError::BadIpv4Checksum);
    }

    // total_len >= header length (payload_len() checks that) and <= bytes
    // present; anything after total_len is Ethernet padding.
    let total_len = hdr.total_len();
    if hdr.payload_len().is_err() {
        return Err(ParseError::BadIpv4TotalLength);
    }
    let ip_payload = data
        .get(header.len()..usize::from(total_len))
        .ok_or(ParseError::BadIpv4TotalLength)?;

    let fragment = if hdr.fragments_offset().value() != 0 {
        Fragment::Later
    } else if hdr.more_fragments() {
        Fragment::First
    } else {
        Fragment::None
    };
    let protocol = hdr.protocol().0;
    let l4 = parse_l4(protocol, ip_proto::ICMP, ip_payload, fragment)?;

    let info = Ipv4Info {
        src: hdr.source_addr(),
        dst: hdr.destination_addr(),
        ttl: hdr.ttl(),
        protocol,
        header_len: header.len() as u8,
        total_len,
        fragment,
    };
    Ok((info, l4))
}

/// Returns the summary, the L4 header and the L4 offset relative to the IPv6 header.
#[inline(always)]
fn parse_ipv6(data: &[u8]) -> Result<(Ipv6Info, L4, u16), ParseError> {
    use err::ipv6::HeaderSliceError;

    let hdr = Ipv6HeaderSlice::from_slice(data).map_err(|e| match e {
        HeaderSliceError::Len(_) => ParseError::TruncatedIpv6,
        HeaderSliceError::Content(_) => ParseError::BadIpVersion,
    })?;

    // Payload length 0 with a hop-by-hop header is a jumbogram (RFC 2675):
    // unsupported. (Without jumbo option such a packet is malformed anyway, as
    // the hop-by-hop header cannot fit in an empty payload.)
    let payload_len = hdr.payload_length();
    if payload_len == 0 && hdr.next_header() == ip_number::IPV6_HOP_BY_HOP {
        return Err(ParseError::BadIpv6PayloadLength);
    }
    // Anything after the payload is Ethernet padding.
    let ip_payload = data
        .get(Ipv6Header::LEN..Ipv6Header::LEN + usize::from(payload_len))
        .ok_or(ParseError::BadIpv6PayloadLength)?;

    let (next_header, ext_len, fragment) = walk_ipv6_extensions(hdr.next_header(), ip_payload)?;
    let upper = ip_payload.get(ext_len..).unwrap_or_default();
    let l4 = parse_l4(next_header.0, ip_proto::ICMPV6, upper, fragment)?;

    let info = Ipv6Info {
        src: hdr.source_addr(),
        dst: hdr.destination_addr(),
        hop_limit: hdr.hop_limit(),
        next_header: next_header.0,
        payload_len,
        fragment,
    };
    Ok((info, l4, (Ipv6Header::LEN + ext_len) as u16))
}

/// Walks the IPv6 extension headers (hop-by-hop, routing, fragment,
/// destination options, AH) at the start of `payload`.
///
/// Returns the upper-layer protocol, the total length of the extension
/// headers and the fragmentation state. This is `Ipv6ExtensionsSlice::from_slice`
/// except that the walk stops after the fragment header of a non-first
/// fragment, whose following bytes are fragment payload, not headers
/// (etherparse 0.21 would try to decode them and reject or misreport valid
/// fragments).
#[inline(always)]
fn walk_ipv6_extensions(
    first: IpNumber,
    payload: &[u8],
) -> Result<(IpNumber, usize, Fragment), ParseError> {
    const BAD: ParseError = ParseError::BadIpv6ExtensionHeader;
    let mut next = first;
    let mut rest = payload;
    let mut fragment = Fragment::None;
    let mut at_start = true;
    loop {
        let len = match next {
            // RFC 8200 4.1: hop-by-hop only directly after the IPv6 header.
            ip_number::IPV6_HOP_BY_HOP if !at_start => return Err(BAD),
            ip_number::IPV6_HOP_BY_HOP | ip_number::IPV6_ROUTE | ip_number::IPV6_DEST_OPTIONS => {
                let ext = Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| BAD)?;
                next = ext.next_header();
                ext.slice().len()
            }
            ip_number::IPV6_FRAG => {
                let frag = Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| BAD)?;
                next = frag.next_header();
                if frag.fragment_offset().value() != 0 {
                    fragment = Fragment::Later;
                    rest = rest.get(frag.slice().len()..).unwrap_or_default();
                    break;
                }
                if frag.more_fragments() {
                    fragment = Fragment::First;
                }
                frag.slice().len()
            }
            ip_number::AUTH => {
                let auth = IpAuthHeaderSlice::from_slice(rest).map_err(|_| BAD)?;
                next = auth.next_header();
                auth.slice().len()
            }
            _ => break,
        };
        // Each header is at least 8 bytes, so the loop is bounded by the payload length.
        rest = rest.get(len..).unwrap_or_default();
        at_start = false;
    }
    Ok((next, payload.len() - rest.len(), fragment))
}

/// L4 header of an IP payload. `icmp` is the ICMP protocol number of the IP
/// version (1 for IPv4, 58 for IPv6); the other ICMP flavour is an opaque protocol.
#[inline(always)]
fn parse_l4(protocol: u8, icmp: u8, payload: &[u8], fragment: Fragment) -> Result<L4, ParseError> {
    use err::tcp::HeaderSliceError;

    // In a first fragment the IP payload is only a prefix of the upper-layer
    // datagram: an L4 header that does not fit is "not present" (L4::None),
    // and the UDP length (which covers the whole datagram) is not compared
    // with the fragment.
    let first = match fragment {
        Fragment::None => false,
        Fragment::First => true,
        Fragment::Later => return Ok(L4::None),
    };
    match protocol {
        ip_proto::TCP => match TcpHeaderSlice::from_slice(payload) {
            Ok(tcp) => Ok(L4::Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                flags: tcp_flags(&tcp),
            }),
            Err(HeaderSliceError::Content(_)) => Err(ParseError::BadTcpHeaderLength),
            Err(HeaderSliceError::Len(_)) if first => Ok(L4::None),
            Err(HeaderSliceError::Len(l)) if l.len < TcpHeader::MIN_LEN => {
                Err(ParseError::TruncatedTcp)
            }
            Err(HeaderSliceError::Len(_)) => Err(ParseError::BadTcpHeaderLength),
        },
        ip_proto::UDP => match UdpHeaderSlice::from_slice(payload) {
            Ok(udp) => {
                // UdpSlice would accept length 0 (jumbograms, unsupported here).
                let len = usize::from(udp.length());
                if len < UdpHeader::LEN || (!first && len > payload.len()) {
                    return Err(ParseError::BadUdpLength);
                }
                Ok(L4::Udp {
                    src_port: udp.source_port(),
                    dst_port: udp.destination_port(),
                })
            }
            Err(_) if first => Ok(L4::None),
            Err(_) => Err(ParseError::TruncatedUdp),
        },
        p if p == icmp && payload.len() < Icmpv4Header::MIN_LEN => {
            if first {
                Ok(L4::None)
            } else {
                Err(ParseError::TruncatedIcmp)
            }
        }
        ip_proto::ICMP if icmp == ip_proto::ICMP => Ok(icmpv4(payload)),
        ip_proto::ICMPV6 if icmp == ip_proto::ICMPV6 => Ok(icmpv6(payload)),
        _ => Ok(L4::None),
    }
}

/// The 8 flag bits CWR..FIN (byte 13 of the TCP header).
#[inline(always)]
fn tcp_flags(tcp: &TcpHeaderSlice<'_>) -> u8 {
    (u8::from(tcp.cwr()) << 7)
        | (u8::from(tcp.ece()) << 6)
        | (u8::from(tcp.urg()) << 5)
        | (u8::from(tcp.ack()) << 4)
        | (u8::from(tcp.psh()) << 3)
        | (u8::from(tcp.rst()) << 2)
        | (u8::from(tcp.syn()) << 1)
        | u8::from(tcp.fin())
}

/// ICMPv4 summary of a payload of at least 8 bytes.
#[inline(always)]
fn icmpv4(payload: &[u8]) -> L4 {
    match Icmpv4Slice::from_slice(payload) {
        Ok(icmp) => {
            let icmp_type = icmp.type_u8();
            let ident = match icmp_type {
                icmpv4::TYPE_ECHO_REQUEST | icmpv4::TYPE_ECHO_REPLY => {
                    IcmpEchoHeader::from_bytes(icmp.bytes5to8()).id
                }
                _ => 0,
            };
            L4::Icmpv4 {
                icmp_type,
                code: icmp.code_u8(),
                ident,
            }
        }
        // etherparse additionally insists that timestamp (request/reply,
        // code 0) messages are exactly 20 bytes; that is the only way to get
        // here with >= 8 bytes. Not our rule to enforce: report type and code.
        Err(_) => match payload {
            [icmp_type, code, ..] => L4::Icmpv4 {
                icmp_type: *icmp_type,
                code: *code,
                ident: 0,
            },
            [..] => L4::None,
        },
    }
}

/// ICMPv6 summary of a payload of at least 8 bytes.
#[inline(always)]
fn icmpv6(payload: &[u8]) -> L4 {
    match Icmpv6Slice::from_slice(payload) {
        Ok(icmp) => {
            let icmp_type = icmp.type_u8();
            let ident = match icmp_type {
                icmpv6::TYPE_ECHO_REQUEST | icmpv6::TYPE_ECHO_REPLY => {
                    IcmpEchoHeader::from_bytes(icmp.bytes5to8()).id
                }
                _ => 0,
            };
            L4::Icmpv6 {
                icmp_type,
                code: icmp.code_u8(),
                ident,
            }
        }
        // Only fails for fewer than 8 bytes, which the caller excluded.
        Err(_) => L4::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        ArpOperation, ArpPacket, IpAuthHeader, IpFragOffset, IpHeaders, Ipv4Extensions,
        Ipv6Extensions, Ipv6ExtensionsSlice, Ipv6FragmentHeader, Ipv6RawExtHeader, PacketBuilder,
        PacketBuilderStep, VlanId,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [192, 168, 1, 2];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    /// Offset of the IP header in an untagged frame.
    const L3: usize = 14;

    /// Serializes a PacketBuilder step that takes a payload.
    macro_rules! build {
        ($step:expr, $payload:expr) => {{
            let step = $step;
            let payload: &[u8] = $payload;
            let mut v = Vec::with_capacity(step.size(payload.len()));
            step.write(&mut v, payload).unwrap();
            v
        }};
    }

    fn eth() -> PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
    }

    fn v4_info(protocol: u8, total_len: u16) -> Ipv4Info {
        Ipv4Info {
            src: Ipv4Addr::from(A4),
            dst: Ipv4Addr::from(B4),
            ttl: 64,
            protocol,
            header_len: 20,
            total_len,
            fragment: Fragment::None,
        }
    }

    fn v6_info(next_header: u8, payload_len: u16) -> Ipv6Info {
        Ipv6Info {
            src: Ipv6Addr::from(A6),
            dst: Ipv6Addr::from(B6),
            hop_limit: 64,
            next_header,
            payload_len,
            fragment: Fragment::None,
        }
    }

    fn ipv4_tcp() -> Vec<u8> {
        build!(
            eth().ipv4(A4, B4, 64).tcp(40000, 443, 1, 1024).syn(),
            &[0xaa; 10]
        )
    }
    fn ipv4_udp() -> Vec<u8> {
        build!(eth().ipv4(A4, B4, 64).udp(5353, 53), &[1, 2, 3, 4])
    }
    /// An empty TCP RST behind a 28-byte IPv4 header: NOPs, EOL and Router Alert.
    fn ipv4_tcp_with_options() -> Vec<u8> {
        let mut hdr = etherparse::Ipv4Header::new(0, 64, IpNumber(0), A4, B4).unwrap();
        hdr.options = [1u8, 1, 1, 0, 0x94, 4, 0, 0][..].try_into().unwrap();
        build!(
            eth()
                .ip(IpHeaders::Ipv4(hdr, Default::default()))
                .tcp(1, 2, 3, 4)
                .rst(),
            &[]
        )
    }
    fn ipv4_icmp_echo() -> Vec<u8> {
        build!(
            eth().ipv4(A4, B4, 64).icmpv4_echo_request(0x1234, 7),
            &[0; 8]
        )
    }
    fn ipv6_tcp() -> Vec<u8> {
        build!(
            eth().ipv6(A6, B6, 64).tcp(40000, 443, 1, 1024).syn().ack(5),
            &[]
        )
    }
    fn ipv6_udp() -> Vec<u8> {
        build!(eth().ipv6(A6, B6, 64).udp(5353, 53), &[9; 3])
    }
    fn ipv6_icmp_echo() -> Vec<u8> {
        build!(
            eth().ipv6(A6, B6, 64).icmpv6_echo_request(0xbeef, 1),
            &[0; 4]
        )
    }
    fn arp(op: ArpOperation) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            op,
            &SRC_MAC,
            &A4,
            &[0; 6],
            &B4,
        )
        .unwrap();
        let step = eth().arp(arp);
        let mut v = Vec::with_capacity(step.size());
        step.write(&mut v).unwrap();
        v
    }
    /// IPv4 with an arbitrary header and a raw payload of protocol `proto`.
    fn ipv4_raw(hdr: etherparse::Ipv4Header, proto: u8, payload: &[u8]) -> Vec<u8> {
        let step = eth().ip(IpHeaders::Ipv4(hdr, Ipv4Extensions::default()));
        let mut v = Vec::with_capacity(step.size(payload.len()));
        step.write(&mut v, IpNumber(proto), payload).unwrap();
        v
    }
    /// IPv6 with extension headers and a raw payload of protocol `proto`.
    fn ipv6_raw(exts: Ipv6Extensions, proto: u8, payload: &[u8]) -> Vec<u8> {
        let hdr = etherparse::Ipv6Header {
            source: A6,
            destination: B6,
            hop_limit: 64,
            ..Default::default()
        };
        let step = eth().ip(IpHeaders::Ipv6(hdr, exts));
        let mut v = Vec::with_capacity(step.size(payload.len()));
        step.write(&mut v, IpNumber(proto), payload).unwrap();
        v
    }
    fn v4_header() -> etherparse::Ipv4Header {
        etherparse::Ipv4Header::new(0, 64, IpNumber(0), A4, B4).unwrap()
    }

    /// Recomputes the IPv4 header checksum (with etherparse's serializer-side code).
    fn fix_v4_checksum(frame: &mut [u8], l3: usize) {
        let sum = Ipv4HeaderSlice::from_slice(&frame[l3..])
            .unwrap()
            .to_header()
            .calc_header_checksum();
        frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    }
    fn set_u16(frame: &mut [u8], at: usize, v: u16) {
        frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// What the fuzz target asserts on every successful parse.
    fn check_invariants(frame: &[u8], m: &PacketMeta) {
        assert_eq!(usize::from(m.frame_len), frame.len());
        assert!(m.l3_offset <= m.l4_offset, "{m:?}");
        assert!(m.l4_offset <= m.ip_end, "{m:?}");
        assert!(m.ip_end <= m.frame_len, "{m:?}");
        assert_eq!(frame[0..6], m.dst_mac);
        assert_eq!(frame[6..12], m.src_mac);
        let key = m.flow_key();
        assert_eq!(key.is_none(), matches!(m.l3, L3::Arp(_)));
        assert_eq!(key, m.flow_key());
        if let L3::Ipv4(ip) = m.l3 {
            assert_eq!(m.l4_offset - m.l3_offset, u16::from(ip.header_len));
            assert_eq!(m.ip_end - m.l3_offset, ip.total_len);
        }
        if let L3::Ipv6(ip) = m.l3 {
            assert_eq!(m.ip_end - m.l3_offset, 40 + ip.payload_len);
        }
        let later = match m.l3 {
            L3::Ipv4(ip) => ip.fragment == Fragment::Later,
            L3::Ipv6(ip) => ip.fragment == Fragment::Later,
            L3::Arp(_) => false,
        };
        if later {
            assert_eq!(m.l4, L4::None);
        }
        // trailing bytes (Ethernet padding) never change the result
        let end = match m.l3 {
            L3::Arp(_) => m.l4_offset,
            L3::Ipv4(_) | L3::Ipv6(_) => m.ip_end,
        };
        let trimmed = PacketMeta {
            frame_len: end,
            ip_end: end,
            ..*m
        };
        assert_eq!(parse(&frame[..usize::from(end)]), Ok(trimmed));
    }

    // ---------------------------------------------------------------- errors

    #[test]
    fn the_fast_path_agrees_with_the_general_parser() {
        // Valid TCP and UDP frames (with options, padding, flags, fragments)
        // and every one of them with one byte changed or cut short: each
        // parses exactly as without the fast path.
        let mut frames = vec![
            build!(eth().ipv4(A4, B4, 64).udp(1, 2), b"payload"),
            build!(
                eth().ipv4(A4, B4, 1).tcp(3, 4, 5, 6).syn().ack(7).fin(),
                b"data"
            ),
            build!(eth().ipv4(A4, B4, 64).tcp(3, 4, 5, 6), &[0u8; 40]),
            build!(eth().ipv4(A4, B4, 64).icmpv4_echo_request(1, 2), b"ping"),
            build!(eth().ipv6(A6, B6, 64).udp(1, 2), b"v6"),
        ];
        let mut padded = frames[0].clone();
        padded.extend_from_slice(&[0; 9]);
        frames.push(padded);
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut checked = 0;
        for base in &frames {
            assert_eq!(parse(base), parse_without_fast_path(base));
            for _ in 0..4000 {
                let mut f = base.clone();
                let at = next() % f.len();
                f[at] = next() as u8;
                // A changed IPv4 header mostly gets a valid checksum again,
                // so that the change reaches the checks behind it.
                if (14..34).contains(&at) && f[12..14] == [8, 0] && next() % 4 != 0 {
                    f[24..26].fill(0);
                    let sum = Sum16BitWords::new().add_slice(&f[14..34]).ones_complement();
                    f[24..26].copy_from_slice(&sum.to_be().to_be_bytes());
                }
                if next() % 4 == 0 {
                    f.truncate(next() % (f.len() + 1));
                }
                assert_eq!(parse(&f), parse_without_fast_path(&f), "{f:02x?}");
                checked += 1;
            }
        }
        assert!(checked > 20_000);
    }

    #[test]
    fn parse_error_tables_are_consistent() {
        assert_eq!(ParseError::COUNT, 19);
        let mut labels = std::collections::HashSet::new();
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            let s = e.as_str();
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(labels.insert(s), "duplicate label {s}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(ParseError::TruncatedIpv4.as_str(), "truncated_ipv4");
        assert_eq!(ParseError::BadIpv4Checksum.as_str(), "bad_ipv4_checksum");
        assert_eq!(ParseError::FrameTooLong.index(), ParseError::COUNT - 1);
        let _: &dyn std::error::Error = &ParseError::TruncatedTcp;
    }

    #[test]
    fn rejects_frame_shorter_than_ethernet_header() {
        let f = ipv4_tcp();
        assert_eq!(parse(&f[..13]), Err(ParseError::TruncatedEthernet));
        assert_eq!(parse(&[]), Err(ParseError::TruncatedEthernet));
    }

    #[test]
    fn rejects_truncated_vlan_tag() {
        let f = build!(
            eth()
                .single_vlan(VlanId::try_new(10).unwrap())
                .ipv4(A4, B4, 64)
                .udp(1, 2),
            &[]
        );
        assert_eq!(parse(&f[..16]), Err(ParseError::TruncatedVlan));
        // inner tag of a QinQ frame cut short
        let f = build!(
            eth()
                .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
                .ipv4(A4, B4, 64)
                .udp(1, 2),
            &[]
        );
        assert_eq!(parse(&f[..20]), Err(ParseError::TruncatedVlan));
    }

    #[test]
    fn rejects_unsupported_ethertype() {
        let mut f = ipv4_tcp();
        set_u16(&mut f, 12, 0x88cc); // LLDP
        assert_eq!(parse(&f), Err(ParseError::UnsupportedEthertype));
        set_u16(&mut f, 12, 0x0040); // 802.3 length field
        assert_eq!(parse(&f), Err(ParseError::UnsupportedEthertype));
        set_u16(&mut f, 12, 0x9100); // legacy QinQ TPID: not one of the two accepted
        assert_eq!(parse(&f), Err(ParseError::UnsupportedEthertype));
    }

    #[test]
    fn rejects_three_vlan_tags() {
        let mut f = Vec::new();
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        for (tpid, vid) in [(0x88a8u16, 1u16), (0x8100, 2), (0x8100, 3)] {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let ip = ipv4_udp();
        f.extend_from_slice(&ip[12..]); // ethertype + IP packet
        assert_eq!(parse(&f), Err(ParseError::UnsupportedEthertype));
    }

    #[test]
    fn rejects_truncated_arp() {
        let f = arp(ArpOperation::REQUEST);
        assert_eq!(f.len(), 42);
        assert_eq!(parse(&f[..41]), Err(ParseError::TruncatedArp));
        assert_eq!(parse(&f[..L3 + 7]), Err(ParseError::TruncatedArp));
    }

    #[test]
    fn rejects_arp_other_than_ethernet_ipv4() {
        let mut f = arp(ArpOperation::REQUEST);
        set_u16(&mut f, L3, 6); // hardware type IEEE 802: accepted, as Linux does
        assert!(matches!(
            parse(&f).unwrap().l3,
            L3::Arp(ArpInfo { operation: 1, .. })
        ));
        set_u16(&mut f, L3, 7); // ARCNET
        assert_eq!(parse(&f), Err(ParseError::UnsupportedArp));
        let mut f = arp(ArpOperation::REQUEST);
        f[L3 + 4] = 5; // hlen 5: the frame is long enough (42 -> 40 bytes needed)
        assert_eq!(parse(&f), Err(ParseError::UnsupportedArp));

        // IPv6-sized protocol addresses (plen 16), complete packet.
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV6,
            ArpOperation::REQUEST,
            &SRC_MAC,
            &A6,
            &[0; 6],
            &B6,
        )
        .unwrap();
        let step = eth().arp(arp);
        let mut f = Vec::new();
        step.write(&mut f).unwrap();
        assert_eq!(parse(&f), Err(ParseError::UnsupportedArp));
        // same but claiming protocol type IPv4 with plen 16
        set_u16(&mut f, L3 + 2, 0x0800);
        assert_eq!(parse(&f), Err(ParseError::UnsupportedArp));
    }

    #[test]
    fn rejects_ipv4_shorter_than_minimum_header() {
        let f = ipv4_tcp();
        assert_eq!(parse(&f[..L3 + 19]), Err(ParseError::TruncatedIpv4));
        assert_eq!(parse(&f[..L3]), Err(ParseError::TruncatedIpv4));
    }

    #[test]
    fn rejects_ip_version_not_matching_ethertype() {
        let mut f = ipv4_tcp();
        f[L3] = 0x65;
        assert_eq!(parse(&f), Err(ParseError::BadIpVersion));
        let mut f = ipv6_udp();
        f[L3] = 0x45;
        assert_eq!(parse(&f), Err(ParseError::BadIpVersion));
    }

    #[test]
    fn rejects_ipv4_with_ihl_below_five() {
        let mut f = ipv4_tcp();
        f[L3] = 0x44;
        assert_eq!(parse(&f), Err(ParseError::BadIpv4HeaderLength));
    }

    #[test]
    fn rejects_ipv4_options_running_past_the_data() {
        // IHL 15 = 60-byte header, frame has only 40 bytes of IP.
        let mut f = ipv4_tcp();
        f.truncate(L3 + 40);
        f[L3] = 0x4f;
        assert_eq!(parse(&f), Err(ParseError::BadIpv4HeaderLength));
    }

    #[test]
    fn rejects_ipv4_total_length_beyond_frame() {
        let mut f = ipv4_tcp();
        let total = (f.len() - L3) as u16;
        set_u16(&mut f, L3 + 2, total + 1);
        fix_v4_checksum(&mut f, L3);
        assert_eq!(parse(&f), Err(ParseError::BadIpv4TotalLength));
        // a truncated frame (valid header) is the same reason
        let f = ipv4_tcp();
        assert_eq!(
            parse(&f[..f.len() - 1]),
            Err(ParseError::BadIpv4TotalLength)
        );
    }

    #[test]
    fn rejects_ipv4_total_length_below_header_length() {
        let mut f = ipv4_tcp();
        set_u16(&mut f, L3 + 2, 19);
        fix_v4_checksum(&mut f, L3);
        assert_eq!(parse(&f), Err(ParseError::BadIpv4TotalLength));
    }

    #[test]
    fn rejects_ipv4_with_bad_header_checksum() {
        let mut f = ipv4_tcp();
        f[L3 + 11] ^= 0x01;
        assert_eq!(parse(&f), Err(ParseError::BadIpv4Checksum));
        // a changed TTL without checksum update is caught too
        let mut f = ipv4_tcp();
        f[L3 + 8] -= 1;
        assert_eq!(parse(&f), Err(ParseError::BadIpv4Checksum));
    }

    #[test]
    fn the_ipv4_checksum_covers_every_header_byte_with_and_without_options() {
        for (frame, header_len) in [(ipv4_tcp(), 20), (ipv4_tcp_with_options(), 28)] {
            assert!(parse(&frame).is_ok());
            // Identification, flags and fragment offset, TTL, and from the
            // addresses on: bytes whose change no other check notices.
            let covered = (4..6).chain(8..9).chain(12..header_len);
            for byte in covered {
                let mut f = frame.clone();
                f[L3 + byte] ^= 0x10;
                assert_eq!(parse(&f), Err(ParseError::BadIpv4Checksum), "byte {byte}");
            }
        }
    }

    #[test]
    fn rejects_ipv6_shorter_than_header() {
        let f = ipv6_udp();
        assert_eq!(parse(&f[..L3 + 39]), Err(ParseError::TruncatedIpv6));
    }

    #[test]
    fn rejects_ipv6_payload_length_beyond_frame() {
        let f = ipv6_udp();
        assert_eq!(
            parse(&f[..f.len() - 1]),
            Err(ParseError::BadIpv6PayloadLength)
        );
        let mut f = ipv6_udp();
        let plen = (f.len() - L3 - 40) as u16;
        set_u16(&mut f, L3 + 4, plen + 8);
        assert_eq!(parse(&f), Err(ParseError::BadIpv6PayloadLength));
    }

    #[test]
    fn rejects_ipv6_jumbogram() {
        // Hop-by-hop with a Jumbo Payload option (type 0xc2, len 4), payload length 0.
        let hbh = Ipv6RawExtHeader::new_raw(IpNumber(17), &[0xc2, 4, 0, 1, 0, 0]).unwrap();
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(hbh),
            ..Default::default()
        };
        let mut f = ipv6_raw(exts, ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        set_u16(&mut f, L3 + 4, 0);
        assert_eq!(parse(&f), Err(ParseError::BadIpv6PayloadLength));
    }

    #[test]
    fn rejects_ipv6_hop_by_hop_not_first() {
        let dst = Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).unwrap();
        let exts = Ipv6Extensions {
            destination_options: Some(dst),
            ..Default::default()
        };
        // destination options -> (patched) hop-by-hop -> UDP
        let mut f = ipv6_raw(
            exts,
            ip_proto::UDP,
            &[1, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 8, 0, 0],
        );
        assert_eq!(f[L3 + 6], 60);
        f[L3 + 40] = 0; // destination options' next header := hop-by-hop
        f[L3 + 48] = 17;
        assert_eq!(parse(&f), Err(ParseError::BadIpv6ExtensionHeader));
    }

    #[test]
    fn rejects_truncated_ipv6_extension_header() {
        // A routing header whose length runs past the IPv6 payload.
        let rt = Ipv6RawExtHeader::new_raw(IpNumber(17), &[0, 0, 0, 0, 0, 0]).unwrap();
        let exts = Ipv6Extensions {
            routing: Some(etherparse::Ipv6RoutingExtensions {
                routing: rt,
                final_destination_options: None,
            }),
            ..Default::default()
        };
        let mut f = ipv6_raw(exts, ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        assert_eq!(f[L3 + 6], 43);
        f[L3 + 41] = 2; // 24 bytes, only 16 in the payload
        assert_eq!(parse(&f), Err(ParseError::BadIpv6ExtensionHeader));
    }

    #[test]
    fn rejects_ipv6_auth_header_with_zero_length() {
        let ah = IpAuthHeader::new(IpNumber(17), 1, 1, &[0; 4]).unwrap();
        let exts = Ipv6Extensions {
            auth: Some(ah),
            ..Default::default()
        };
        let mut f = ipv6_raw(exts, ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        assert_eq!(
            parse(&f).unwrap().l4,
            L4::Udp {
                src_port: 1,
                dst_port: 2
            }
        );
        f[L3 + 41] = 0; // AH payload length 0 is invalid
        assert_eq!(parse(&f), Err(ParseError::BadIpv6ExtensionHeader));
    }

    #[test]
    fn rejects_truncated_tcp() {
        let mut f = ipv4_raw(v4_header(), ip_proto::TCP, &[0; 19]);
        assert_eq!(parse(&f), Err(ParseError::TruncatedTcp));
        f.extend_from_slice(&[0; 20]); // Ethernet padding does not count
        assert_eq!(parse(&f), Err(ParseError::TruncatedTcp));
        let f = ipv6_raw(Ipv6Extensions::default(), ip_proto::TCP, &[0; 12]);
        assert_eq!(parse(&f), Err(ParseError::TruncatedTcp));
    }

    #[test]
    fn rejects_tcp_data_offset_below_five() {
        let mut f = ipv4_tcp();
        f[34 + 12] = 0x40;
        assert_eq!(parse(&f), Err(ParseError::BadTcpHeaderLength));
    }

    #[test]
    fn rejects_tcp_options_running_past_ip_packet() {
        // data offset 15 (60 bytes) but only 30 bytes of TCP in the packet
        let mut f = ipv4_tcp();
        f[34 + 12] = 0xf0;
        assert_eq!(parse(&f), Err(ParseError::BadTcpHeaderLength));
        // ... even when Ethernet padding would cover it
        let mut f = ipv4_tcp();
        f[34 + 12] = 0x70; // 28 bytes, IP payload 30: fine
        assert!(parse(&f).is_ok());
        f[34 + 12] = 0x80; // 32 bytes
        f.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&f), Err(ParseError::BadTcpHeaderLength));
    }

    #[test]
    fn rejects_truncated_udp() {
        let mut f = ipv4_raw(v4_header(), ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0]);
        assert_eq!(parse(&f), Err(ParseError::TruncatedUdp));
        f.push(0); // one byte of Ethernet padding
        assert_eq!(parse(&f), Err(ParseError::TruncatedUdp));
    }

    #[test]
    fn rejects_udp_length_below_eight_or_zero() {
        let mut f = ipv4_udp();
        set_u16(&mut f, 34 + 4, 7);
        assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
        set_u16(&mut f, 34 + 4, 0);
        assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
        let mut f = ipv6_udp();
        set_u16(&mut f, 54 + 4, 0);
        assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
    }

    #[test]
    fn rejects_udp_length_beyond_ip_payload() {
        let mut f = ipv4_udp();
        set_u16(&mut f, 34 + 4, 13); // 12 bytes present
        f.extend_from_slice(&[0; 10]); // padding is not IP payload
        assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
        // shorter than the IP payload is accepted
        set_u16(&mut f, 34 + 4, 8);
        assert_eq!(
            parse(&f).unwrap().l4,
            L4::Udp {
                src_port: 5353,
                dst_port: 53
            }
        );
    }

    #[test]
    fn rejects_truncated_icmp() {
        let f = ipv4_raw(v4_header(), ip_proto::ICMP, &[8, 0, 0, 0, 0, 1, 0]);
        assert_eq!(parse(&f), Err(ParseError::TruncatedIcmp));
        let f = ipv6_raw(Ipv6Extensions::default(), ip_proto::ICMPV6, &[128, 0, 0, 0]);
        assert_eq!(parse(&f), Err(ParseError::TruncatedIcmp));
    }

    #[test]
    fn source_address_policy_is_left_to_the_gateway() {
        // A multicast or broadcast source is well-formed; routers drop it (RFC 1812 5.3.7), parsers do not.
        let f = build!(eth().ipv4([224, 0, 0, 1], B4, 64).udp(1, 2), &[]);
        assert!(parse(&f).is_ok());
        let mut src = [0u8; 16];
        src[0] = 0xff;
        src[1] = 0x02;
        src[15] = 1;
        let f = build!(eth().ipv6(src, B6, 64).udp(1, 2), &[]);
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn rejects_frame_longer_than_u16() {
        let mut f = ipv4_udp();
        f.resize(65536, 0);
        assert_eq!(parse(&f), Err(ParseError::FrameTooLong));
        f.truncate(65535);
        let m = parse(&f).unwrap();
        assert_eq!((m.frame_len, m.ip_end), (65535, 14 + 32));
    }

    // ----------------------------------------------------------- valid frames

    #[test]
    fn parses_ipv4_tcp() {
        let f = ipv4_tcp();
        let m = parse(&f).unwrap();
        let expected = PacketMeta {
            dst_mac: DST_MAC,
            src_mac: SRC_MAC,
            vlan: None,
            l3_offset: 14,
            l4_offset: 34,
            l3: L3::Ipv4(v4_info(ip_proto::TCP, 50)),
            l4: L4::Tcp {
                src_port: 40000,
                dst_port: 443,
                flags: tcp_flag::SYN,
            },
            frame_len: 64,
            ip_end: 64,
        };
        assert_eq!(m, expected);
        check_invariants(&f, &m);
    }

    #[test]
    fn reports_all_eight_tcp_flags() {
        let f = build!(
            eth()
                .ipv4(A4, B4, 64)
                .tcp(1, 2, 3, 4)
                .fin()
                .syn()
                .rst()
                .psh()
                .ack(1)
                .urg(1)
                .ece()
                .cwr(),
            &[]
        );
        assert!(matches!(parse(&f).unwrap().l4, L4::Tcp { flags: 0xff, .. }));
        let f = build!(eth().ipv4(A4, B4, 64).tcp(1, 2, 3, 4).syn().ack(1), &[]);
        assert!(matches!(parse(&f).unwrap().l4, L4::Tcp { flags: 0x12, .. }));
        let f = build!(eth().ipv4(A4, B4, 64).tcp(1, 2, 3, 4).ns().fin(), &[]);
        assert!(matches!(
            parse(&f).unwrap().l4,
            L4::Tcp {
                flags: tcp_flag::FIN,
                ..
            }
        ));
    }

    #[test]
    fn parses_ipv4_udp() {
        let f = ipv4_udp();
        let m = parse(&f).unwrap();
        assert_eq!(m.l3, L3::Ipv4(v4_info(ip_proto::UDP, 32)));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 5353,
                dst_port: 53
            }
        );
        assert_eq!(
            (m.l3_offset, m.l4_offset, m.ip_end, m.frame_len),
            (14, 34, 46, 46)
        );
        check_invariants(&f, &m);
    }

    #[test]
    fn parses_ipv4_icmp_echo_and_error() {
        let f = ipv4_icmp_echo();
        let m = parse(&f).unwrap();
        assert_eq!(
            m.l4,
            L4::Icmpv4 {
                icmp_type: 8,
                code: 0,
                ident: 0x1234
            }
        );
        assert_eq!(m.l3, L3::Ipv4(v4_info(ip_proto::ICMP, 36)));
        let (key, _) = m.flow_key().unwrap();
        assert_eq!(
            (key.port_lo, key.port_hi, key.proto),
            (0x1234, 0x1234, ip_proto::ICMP)
        );

        // destination unreachable: the rest-of-header bytes are not an ident
        let f = ipv4_raw(v4_header(), ip_proto::ICMP, &[3, 3, 0, 0, 0x12, 0x34, 0, 0]);
        let m = parse(&f).unwrap();
        assert_eq!(
            m.l4,
            L4::Icmpv4 {
                icmp_type: 3,
                code: 3,
                ident: 0
            }
        );
        let (key, _) = m.flow_key().unwrap();
        assert_eq!((key.port_lo, key.port_hi), (0, 0));
    }

    #[test]
    fn accepts_icmp_timestamp_of_any_length_of_at_least_eight() {
        // etherparse's Icmpv4Slice insists on exactly 20 bytes here.
        let f = ipv4_raw(
            v4_header(),
            ip_proto::ICMP,
            &[13, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0],
        );
        assert_eq!(
            parse(&f).unwrap().l4,
            L4::Icmpv4 {
                icmp_type: 13,
                code: 0,
                ident: 0
            }
        );
    }

    #[test]
    fn parses_ipv6_tcp() {
        let f = ipv6_tcp();
        let m = parse(&f).unwrap();
        let expected = PacketMeta {
            dst_mac: DST_MAC,
            src_mac: SRC_MAC,
            vlan: None,
            l3_offset: 14,
            l4_offset: 54,
            l3: L3::Ipv6(v6_info(ip_proto::TCP, 20)),
            l4: L4::Tcp {
                src_port: 40000,
                dst_port: 443,
                flags: tcp_flag::SYN | tcp_flag::ACK,
            },
            frame_len: 74,
            ip_end: 74,
        };
        assert_eq!(m, expected);
        check_invariants(&f, &m);
    }

    #[test]
    fn parses_ipv6_udp() {
        let f = ipv6_udp();
        let m = parse(&f).unwrap();
        assert_eq!(m.l3, L3::Ipv6(v6_info(ip_proto::UDP, 11)));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 5353,
                dst_port: 53
            }
        );
        assert_eq!((m.l4_offset, m.ip_end, m.frame_len), (54, 65, 65));
    }

    #[test]
    fn parses_ipv6_icmpv6_echo() {
        let f = ipv6_icmp_echo();
        let m = parse(&f).unwrap();
        assert_eq!(
            m.l4,
            L4::Icmpv6 {
                icmp_type: 128,
                code: 0,
                ident: 0xbeef
            }
        );
        assert_eq!(m.l3, L3::Ipv6(v6_info(ip_proto::ICMPV6, 12)));
        let (key, _) = m.flow_key().unwrap();
        assert_eq!(
            (key.port_lo, key.port_hi, key.proto, key.family),
            (0xbeef, 0xbeef, 58, 6)
        );
        // neighbour solicitation: ident 0
        let f = ipv6_raw(
            Ipv6Extensions::default(),
            ip_proto::ICMPV6,
            &[135, 0, 0, 0, 0xff, 0xff, 0, 0],
        );
        assert_eq!(
            parse(&f).unwrap().l4,
            L4::Icmpv6 {
                icmp_type: 135,
                code: 0,
                ident: 0
            }
        );
    }

    #[test]
    fn icmp_of_the_other_ip_version_is_opaque() {
        let f = ipv4_raw(v4_header(), ip_proto::ICMPV6, &[128, 0, 0, 0]);
        let m = parse(&f).unwrap();
        assert_eq!(m.l4, L4::None);
        let f = ipv6_raw(Ipv6Extensions::default(), ip_proto::ICMP, &[8, 0, 0, 0]);
        assert_eq!(parse(&f).unwrap().l4, L4::None);
    }

    #[test]
    fn parses_single_vlan_tag() {
        let f = build!(
            eth()
                .single_vlan(VlanId::try_new(100).unwrap())
                .ipv4(A4, B4, 64)
                .udp(1, 2),
            &[]
        );
        let m = parse(&f).unwrap();
        assert_eq!(m.vlan, Some(100));
        assert_eq!((m.l3_offset, m.l4_offset, m.ip_end), (18, 38, 46));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 1,
                dst_port: 2
            }
        );
        check_invariants(&f, &m);
    }

    #[test]
    fn parses_qinq_and_reports_outer_vlan() {
        let f = build!(
            eth()
                .double_vlan(VlanId::try_new(300).unwrap(), VlanId::try_new(7).unwrap())
                .ipv6(A6, B6, 64)
                .udp(1, 2),
            &[]
        );
        assert_eq!(u16::from_be_bytes([f[12], f[13]]), 0x88a8);
        let m = parse(&f).unwrap();
        assert_eq!(m.vlan, Some(300));
        assert_eq!((m.l3_offset, m.l4_offset), (22, 62));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 1,
                dst_port: 2
            }
        );

        // 802.1Q over 802.1Q works too; PCP/DEI bits do not leak into the id
        let mut f = f;
        set_u16(&mut f, 12, 0x8100);
        f[14] |= 0xf0;
        assert_eq!(parse(&f).unwrap().vlan, Some(300));
    }

    #[test]
    fn parses_ipv4_with_options() {
        let f = ipv4_tcp_with_options();
        let m = parse(&f).unwrap();
        let mut info = v4_info(ip_proto::TCP, 48);
        info.header_len = 28;
        assert_eq!(m.l3, L3::Ipv4(info));
        assert_eq!((m.l4_offset, m.ip_end), (42, 62));
        assert_eq!(
            m.l4,
            L4::Tcp {
                src_port: 1,
                dst_port: 2,
                flags: tcp_flag::RST
            }
        );
        check_invariants(&f, &m);
    }

    #[test]
    fn ipv4_ah_is_an_opaque_protocol() {
        let ah = IpAuthHeader::new(IpNumber(17), 1, 1, &[0; 4]).unwrap();
        let hdr = etherparse::Ipv4Header::new(0, 64, IpNumber(0), A4, B4).unwrap();
        let f = build!(
            eth()
                .ip(IpHeaders::Ipv4(hdr, Ipv4Extensions { auth: Some(ah) }))
                .udp(1, 2),
            &[]
        );
        let m = parse(&f).unwrap();
        assert!(matches!(m.l3, L3::Ipv4(Ipv4Info { protocol: 51, .. })));
        assert_eq!((m.l4, m.l4_offset), (L4::None, 34));
    }

    #[test]
    fn parses_ipv6_hop_by_hop_and_first_fragment() {
        let hbh = Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).unwrap();
        let frag = Ipv6FragmentHeader::new(IpNumber(0), IpFragOffset::ZERO, true, 0xabcd);
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(hbh),
            fragment: Some(frag),
            ..Default::default()
        };
        // UDP length covers the whole datagram (1000), beyond this fragment
        let f = ipv6_raw(
            exts,
            ip_proto::UDP,
            &[0x13, 0x88, 0, 53, 0x03, 0xe8, 0, 0, 1, 2, 3, 4],
        );
        assert_eq!((f[L3 + 6], f[L3 + 40], f[L3 + 48]), (0, 44, 17));
        let m = parse(&f).unwrap();
        let mut info = v6_info(ip_proto::UDP, 28);
        info.fragment = Fragment::First;
        assert_eq!(m.l3, L3::Ipv6(info));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 5000,
                dst_port: 53
            }
        );
        assert_eq!((m.l4_offset, m.ip_end), (14 + 40 + 16, 14 + 68));
        check_invariants(&f, &m);
    }

    #[test]
    fn ipv6_atomic_fragment_is_not_fragmented() {
        let frag = Ipv6FragmentHeader::new(IpNumber(0), IpFragOffset::ZERO, false, 1);
        let exts = Ipv6Extensions {
            fragment: Some(frag),
            ..Default::default()
        };
        let f = ipv6_raw(exts, ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        let m = parse(&f).unwrap();
        assert!(matches!(
            m.l3,
            L3::Ipv6(Ipv6Info {
                fragment: Fragment::None,
                next_header: 17,
                ..
            })
        ));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 1,
                dst_port: 2
            }
        );
    }

    #[test]
    fn parses_ipv6_later_fragment_without_walking_its_payload() {
        let frag =
            Ipv6FragmentHeader::new(IpNumber(0), IpFragOffset::try_new(100).unwrap(), true, 7);
        let exts = Ipv6Extensions {
            fragment: Some(frag),
            ..Default::default()
        };
        // The fragmentable part starts with a destination options header, so
        // the fragment header says 60; the bytes here are from its middle.
        let payload = [0x11, 0xff, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let mut f = ipv6_raw(exts, ip_proto::UDP, &payload);
        f[L3 + 40] = 60;
        let m = parse(&f).unwrap();
        let mut info = v6_info(60, 17);
        info.fragment = Fragment::Later;
        assert_eq!(m.l3, L3::Ipv6(info));
        assert_eq!((m.l4, m.l4_offset, m.ip_end), (L4::None, 14 + 48, 14 + 57));
        let (key, _) = m.flow_key().unwrap();
        assert_eq!((key.port_lo, key.port_hi, key.proto), (0, 0, 60));
        // etherparse's own walk reads the fragment payload as a header and fails:
        // this is why walk_ipv6_extensions exists.
        assert!(Ipv6ExtensionsSlice::from_slice(IpNumber(44), &f[L3 + 40..]).is_err());
    }

    #[test]
    fn parses_ipv4_first_fragment() {
        let mut hdr = v4_header();
        hdr.more_fragments = true;
        hdr.dont_fragment = false;
        // UDP header claims the whole 1000-byte datagram
        let f = ipv4_raw(
            hdr,
            ip_proto::UDP,
            &[0x13, 0x88, 0, 53, 0x03, 0xe8, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        );
        let m = parse(&f).unwrap();
        let mut info = v4_info(ip_proto::UDP, 36);
        info.fragment = Fragment::First;
        assert_eq!(m.l3, L3::Ipv4(info));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 5000,
                dst_port: 53
            }
        );
        let (key, dir) = m.flow_key().unwrap();
        assert_eq!(
            (key.port_lo, key.port_hi, dir),
            (5000, 53, Direction::LoToHi)
        );
    }

    #[test]
    fn first_fragment_too_short_for_l4_header_has_no_l4() {
        let mut hdr = v4_header();
        hdr.more_fragments = true;
        let f = ipv4_raw(hdr.clone(), ip_proto::TCP, &[0; 8]); // RFC 791 minimum fragment
        let m = parse(&f).unwrap();
        assert!(matches!(
            m.l3,
            L3::Ipv4(Ipv4Info {
                fragment: Fragment::First,
                ..
            })
        ));
        assert_eq!((m.l4, m.l4_offset), (L4::None, 34));
        // but a TCP data offset below 5 is still malformed
        let mut tcp = [0u8; 20];
        tcp[12] = 0x30;
        let f = ipv4_raw(hdr, ip_proto::TCP, &tcp);
        assert_eq!(parse(&f), Err(ParseError::BadTcpHeaderLength));
    }

    #[test]
    fn parses_ipv4_later_fragment() {
        let mut hdr = v4_header();
        hdr.fragment_offset = IpFragOffset::try_new(185).unwrap();
        // payload that would be an invalid TCP header
        let f = ipv4_raw(hdr.clone(), ip_proto::TCP, &[0; 5]);
        let m = parse(&f).unwrap();
        let mut info = v4_info(ip_proto::TCP, 25);
        info.fragment = Fragment::Later;
        assert_eq!(m.l3, L3::Ipv4(info));
        assert_eq!((m.l4, m.l4_offset, m.ip_end), (L4::None, 34, 39));
        let (key, _) = m.flow_key().unwrap();
        assert_eq!((key.port_lo, key.port_hi, key.proto), (0, 0, 6));
        // last fragment (no MF) with offset is Later too; MF + offset as well
        hdr.more_fragments = true;
        let f = ipv4_raw(hdr, ip_proto::UDP, &[0; 3]);
        assert!(matches!(
            parse(&f).unwrap().l3,
            L3::Ipv4(Ipv4Info {
                fragment: Fragment::Later,
                ..
            })
        ));
    }

    #[test]
    fn accepts_ethernet_padding_after_short_ipv4_packet() {
        let mut f = ipv4_udp(); // 46 bytes
        f.resize(60, 0);
        let m = parse(&f).unwrap();
        assert_eq!((m.frame_len, m.ip_end, m.l4_offset), (60, 46, 34));
        assert_eq!(
            m.l4,
            L4::Udp {
                src_port: 5353,
                dst_port: 53
            }
        );
        check_invariants(&f, &m);
    }

    #[test]
    fn accepts_ethernet_padding_after_short_ipv6_packet() {
        // No Next Header, empty payload, padded to the Ethernet minimum
        let mut f = ipv6_raw(Ipv6Extensions::default(), 59, &[]);
        f.resize(60, 0xee);
        let m = parse(&f).unwrap();
        assert_eq!(m.l3, L3::Ipv6(v6_info(59, 0)));
        assert_eq!(
            (m.l4, m.l4_offset, m.ip_end, m.frame_len),
            (L4::None, 54, 54, 60)
        );
        // payload length 0 + TCP: padding is not a TCP header
        let mut f = ipv6_raw(Ipv6Extensions::default(), ip_proto::TCP, &[]);
        f.resize(100, 0x50);
        assert_eq!(parse(&f), Err(ParseError::TruncatedTcp));
    }

    #[test]
    fn parses_arp_request_and_reply() {
        let f = arp(ArpOperation::REQUEST);
        let m = parse(&f).unwrap();
        let info = ArpInfo {
            operation: 1,
            sender_mac: SRC_MAC,
            sender_ip: Ipv4Addr::from(A4),
            target_mac: [0; 6],
            target_ip: Ipv4Addr::from(B4),
        };
        assert_eq!(m.l3, L3::Arp(info));
        assert_eq!(
            (
                m.vlan,
                m.l3_offset,
                m.l4_offset,
                m.l4,
                m.ip_end,
                m.frame_len
            ),
            (None, 14, 42, L4::None, 42, 42)
        );
        assert_eq!(m.flow_key(), None);

        let mut f = arp(ArpOperation::REPLY);
        f.resize(60, 0); // padded
        let m = parse(&f).unwrap();
        assert_eq!(
            m.l3,
            L3::Arp(ArpInfo {
                operation: 2,
                ..info
            })
        );
        assert_eq!((m.l4_offset, m.ip_end, m.frame_len), (42, 60, 60));
        check_invariants(&f, &m);
    }

    #[test]
    fn other_ip_protocols_parse_with_zero_ports() {
        let f = ipv4_raw(v4_header(), 47, &[0, 0, 0x08, 0x00]); // GRE
        let m = parse(&f).unwrap();
        assert_eq!(m.l3, L3::Ipv4(v4_info(47, 24)));
        assert_eq!((m.l4, m.l4_offset), (L4::None, 34));
        let (key, dir) = m.flow_key().unwrap();
        assert_eq!(
            (key, dir),
            FlowKey::v4(Ipv4Addr::from(A4), Ipv4Addr::from(B4), 0, 0, 47)
        );
        let f = ipv6_raw(Ipv6Extensions::default(), 50, &[0; 16]); // ESP
        let m = parse(&f).unwrap();
        assert_eq!((m.l4, m.l4_offset), (L4::None, 54));
        assert_eq!(m.flow_key().unwrap().0.proto, 50);
    }

    #[test]
    fn accepts_ttl_zero_and_unspecified_source() {
        let f = build!(
            eth()
                .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 0)
                .udp(68, 67),
            &[]
        );
        let m = parse(&f).unwrap();
        assert!(matches!(m.l3, L3::Ipv4(Ipv4Info { ttl: 0, .. })));
        let f = build!(eth().ipv6([0; 16], B6, 0).icmpv6_echo_request(1, 1), &[]);
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn flow_key_is_symmetric_for_replies() {
        let syn = build!(eth().ipv4(A4, B4, 64).tcp(40000, 443, 1, 1024).syn(), &[]);
        let syn_ack = build!(
            PacketBuilder::ethernet2(DST_MAC, SRC_MAC)
                .ipv4(B4, A4, 61)
                .tcp(443, 40000, 9, 1024)
                .syn()
                .ack(2),
            &[]
        );
        let (k1, d1) = parse(&syn).unwrap().flow_key().unwrap();
        let (k2, d2) = parse(&syn_ack).unwrap().flow_key().unwrap();
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(
            (k1.port_lo, k1.port_hi, k1.proto, k1.family),
            (40000, 443, 6, 4)
        );
        assert_eq!(d1, Direction::LoToHi);

        let req = ipv6_icmp_echo();
        let rep = build!(
            PacketBuilder::ethernet2(DST_MAC, SRC_MAC)
                .ipv6(B6, A6, 64)
                .icmpv6_echo_reply(0xbeef, 1),
            &[]
        );
        let (k1, d1) = parse(&req).unwrap().flow_key().unwrap();
        let (k2, d2) = parse(&rep).unwrap().flow_key().unwrap();
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(
            k1,
            FlowKey::v6(Ipv6Addr::from(A6), Ipv6Addr::from(B6), 0xbeef, 0xbeef, 58).0
        );
    }

    #[test]
    fn packet_meta_size() {
        use std::mem::size_of;
        // 2x6 MACs + 4 Option<u16> + 2x2 offsets + 38 L3 + 6 L4 + 2x2 lengths.
        // L3 is as big as Ipv6Info: its tag lives in the niche of `fragment`.
        assert_eq!(size_of::<L3>(), 38);
        assert_eq!(size_of::<L4>(), 6);
        assert_eq!(size_of::<PacketMeta>(), 68);
        // The error rides in a niche too: returning the Result costs nothing extra.
        assert_eq!(size_of::<Result<PacketMeta, ParseError>>(), 68);
        assert_eq!(size_of::<ParseError>(), 1);
    }

    // ------------------------------------------------------------ robustness

    fn sample_frames() -> Vec<Vec<u8>> {
        let hbh = Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).unwrap();
        let frag = Ipv6FragmentHeader::new(IpNumber(0), IpFragOffset::ZERO, true, 1);
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(hbh),
            fragment: Some(frag),
            ..Default::default()
        };
        let mut opts = v4_header();
        opts.options = [0x94u8, 4, 0, 0][..].try_into().unwrap();
        vec![
            ipv4_tcp(),
            ipv4_udp(),
            ipv4_icmp_echo(),
            ipv6_tcp(),
            ipv6_udp(),
            ipv6_icmp_echo(),
            arp(ArpOperation::REQUEST),
            ipv6_raw(
                exts,
                ip_proto::TCP,
                &[
                    0x13, 0x88, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0,
                ],
            ),
            build!(
                eth()
                    .double_vlan(VlanId::try_new(1).unwrap(), VlanId::try_new(2).unwrap())
                    .ipv4(A4, B4, 1)
                    .tcp(1, 2, 3, 4),
                &[7; 3]
            ),
            build!(
                eth()
                    .ip(IpHeaders::Ipv4(opts, Default::default()))
                    .udp(1, 2),
                &[0; 5]
            ),
        ]
    }

    #[test]
    fn every_truncation_prefix_parses_without_panic() {
        for f in sample_frames() {
            let full = parse(&f).unwrap();
            check_invariants(&f, &full);
            for n in 0..f.len() {
                let r = parse(&f[..n]);
                // none of the samples has padding, so any cut loses IP (or ARP) bytes
                assert!(r.is_err(), "prefix {n} of {f:02x?} parsed: {r:?}");
            }
        }
    }

    #[test]
    fn random_mutations_never_panic_and_keep_invariants() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let samples = sample_frames();
        let mut ok = 0;
        for i in 0..100_000 {
            let mut f = samples[i % samples.len()].clone();
            for _ in 0..1 + rnd() % 4 {
                let r = rnd();
                let at = (r >> 8) as usize % f.len();
                match r % 4 {
                    0 => f[at] = (r >> 32) as u8,
                    1 => f[at] ^= 1 << ((r >> 40) % 8),
                    2 => f.truncate(at.max(1)),
                    _ => f.extend_from_slice(&(r >> 16).to_be_bytes()[..(r % 8) as usize]),
                }
            }
            if let Ok(m) = parse(&f) {
                check_invariants(&f, &m);
                ok += 1;
            }
        }
        assert!(ok > 1000, "only {ok} mutated frames parsed");
    }
}
