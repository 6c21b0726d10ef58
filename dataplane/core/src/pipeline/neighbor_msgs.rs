//! ARP (RFC 826) and IPv6 Neighbor Discovery (RFC 4861) messages.

use std::net::{IpAddr, Ipv6Addr};

use super::icmp::write_ipv6_header;
use crate::config::PortInfo;
use crate::frame::Frame;
use crate::packet::parse::{ArpInfo, Ipv6Info, PacketMeta};

const ETH_HLEN: usize = 14;
const ARP_LEN: usize = 28;
/// Minimum Ethernet frame without FCS; shorter frames are padded.
const ETH_MIN: usize = 60;
const ND_OPT_SOURCE_LINK_ADDR: u8 = 1;
const ND_OPT_TARGET_LINK_ADDR: u8 = 2;

/// Rewrites an ARP request for one of our addresses into the reply.
///
/// Tagged frames never reach this point, so the ARP header follows a plain
/// Ethernet header.
pub fn arp_reply_in_place<F: Frame>(frame: &mut F, our_mac: [u8; 6], req: &ArpInfo) {
    let data = frame.data_mut();
    let arp = &mut data[ETH_HLEN..ETH_HLEN + ARP_LEN];
    arp[6..8].copy_from_slice(&2u16.to_be_bytes());
    arp[8..14].copy_from_slice(&our_mac);
    arp[14..18].copy_from_slice(&req.target_ip.octets());
    arp[18..24].copy_from_slice(&req.sender_mac);
    arp[24..28].copy_from_slice(&req.sender_ip.octets());
    data[0..6].copy_from_slice(&req.sender_mac);
    data[6..12].copy_from_slice(&our_mac);
}

/// Writes an ARP request (IPv4) or a multicast Neighbor Solicitation (IPv6)
/// for `target` into an empty frame. False when the port has no address of
/// that family or the frame lacks room.
pub fn write_solicitation<F: Frame>(port: &PortInfo, target: IpAddr, frame: &mut F) -> bool {
    match target {
        IpAddr::V4(target) => {
            let Some(src) = port.v4_source(target) else {
                return false;
            };
            if !frame.set_len(ETH_MIN) {
                return false;
            }
            let data = frame.data_mut();
            data.fill(0);
            data[0..6].copy_from_slice(&[0xff; 6]);
            data[6..12].copy_from_slice(&port.mac);
            data[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            let arp = &mut data[ETH_HLEN..ETH_HLEN + ARP_LEN];
            arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
            arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
            arp[4] = 6;
            arp[5] = 4;
            arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
            arp[8..14].copy_from_slice(&port.mac);
            arp[14..18].copy_from_slice(&src.octets());
            arp[24..28].copy_from_slice(&target.octets());
            true
        }
        IpAddr::V6(target) => {
            let Some(src) = port.v6_source(target) else {
                return false;
            };
            let t = target.octets();
            let group = Ipv6Addr::from([
                0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, t[13], t[14], t[15],
            ]);
            const MSG: usize = 4 + 4 + 16 + 8;
            let total = ETH_HLEN + 40 + MSG;
            if !frame.set_len(total) {
                return false;
            }
            let data = frame.data_mut();
            data[0..6].copy_from_slice(&[0x33, 0x33, 0xff, t[13], t[14], t[15]]);
            data[6..12].copy_from_slice(&port.mac);
            data[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            write_ipv6_header(&mut data[ETH_HLEN..], src, group, MSG, 255);
            let msg = &mut data[ETH_HLEN + 40..total];
            msg[..8].copy_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
            msg[8..24].copy_from_slice(&t);
            msg[24] = ND_OPT_SOURCE_LINK_ADDR;
            msg[25] = 1;
            msg[26..32].copy_from_slice(&port.mac);
            let csum = super::icmp::checksum_v6(src, group, msg);
            msg[2..4].copy_from_slice(&csum.to_be_bytes());
            true
        }
    }
}

/// The parts of a Neighbor Solicitation or Advertisement the gateway uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdMessage {
    /// The target address.
    pub target: Ipv6Addr,
    /// The source (NS) or target (NA) link-layer address option, if present.
    pub link_addr: Option<[u8; 6]>,
    /// NA only: the Solicited flag.
    pub solicited: bool,
}

/// Validates an NS or NA (RFC 4861 7.1) and extracts what we use. `None` when invalid.
pub fn parse_nd(data: &[u8], meta: &PacketMeta, ip: &Ipv6Info) -> Option<NdMessage> {
    if ip.hop_limit != 255 {
        return None;
    }
    let msg = data.get(usize::from(meta.l4_offset)..usize::from(meta.ip_end))?;
    if msg.len() < 24 || msg[1] != 0 {
        return None;
    }
    let is_na = msg[0] == 136;
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).ok()?);
    if target.is_multicast() {
        return None;
    }
    let solicited = is_na && msg[4] & 0x40 != 0;
    if is_na && solicited && ip.dst.is_multicast() {
        return None;
    }
    let wanted = if is_na {
        ND_OPT_TARGET_LINK_ADDR
    } else {
        ND_OPT_SOURCE_LINK_ADDR
    };
    let mut link_addr = None;
    let mut opts = &msg[24..];
    while !opts.is_empty() {
        let len = usize::from(*opts.get(1)?) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == wanted && len >= 8 {
            link_addr = Some(<[u8; 6]>::try_from(&opts[2..8]).ok()?);
        }
        opts = &opts[len..];
    }
    // A solicitation from the unspecified address (DAD) must not carry one.
    if !is_na && ip.src.is_unspecified() && link_addr.is_some() {
        return None;
    }
    Some(NdMessage {
        target,
        link_addr,
        solicited,
    })
}

/// Rewrites a Neighbor Solicitation for `target` (one of ours) into the
/// advertisement answering it (RFC 4861 7.2.4).
pub fn advertisement_in_place<F: Frame>(
    frame: &mut F,
    our_mac: [u8; 6],
    meta: &PacketMeta,
    ip: &Ipv6Info,
    target: Ipv6Addr,
) -> bool {
    let l2 = usize::from(meta.l3_offset);
    const MSG: usize = 4 + 4 + 16 + 8;
    let total = l2 + 40 + MSG;
    if !frame.set_len(total) {
        return false;
    }
    // DAD probes come from :: and are answered to all-nodes, unsolicited.
    let (dst, dst_mac, solicited) = if ip.src.is_unspecified() {
        (
            Ipv6Addr::from([0xff02, 0, 0, 0, 0, 0, 0, 1]),
            [0x33, 0x33, 0, 0, 0, 1],
            false,
        )
    } else {
        (ip.src, meta.src_mac, true)
    };
    let data = frame.data_mut();
    data[0..6].copy_from_slice(&dst_mac);
    data[6..12].copy_from_slice(&our_mac);
    write_ipv6_header(&mut data[l2..], target, dst, MSG, 255);
    let msg = &mut data[l2 + 40..total];
    // Router, Solicited (unless DAD), Override.
    let flags = 0x80 | if solicited { 0x40 } else { 0 } | 0x20;
    msg[..8].copy_from_slice(&[136, 0, 0, 0, flags, 0, 0, 0]);
    msg[8..24].copy_from_slice(&target.octets());
    msg[24] = ND_OPT_TARGET_LINK_ADDR;
    msg[25] = 1;
    msg[26..32].copy_from_slice(&our_mac);
    let csum = super::icmp::checksum_v6(target, dst, msg);
    msg[2..4].copy_from_slice(&csum.to_be_bytes());
    true
}
