//! The direction-independent 5-tuple that identifies a flow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers the data plane distinguishes.
pub mod ip_proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// Which way a packet travels relative to its flow's canonical key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// The packet's source is the key's `lo` endpoint.
    LoToHi = 0,
    /// The packet's source is the key's `hi` endpoint.
    HiToLo = 1,
}

impl Direction {
    /// 0 or 1, for indexing per-direction arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A flow's 5-tuple in canonical order, so that both directions of a
/// conversation map to the same key.
///
/// The endpoint that sorts lower (address, then port) is `lo`. IPv4 addresses
/// are stored IPv4-mapped (`::ffff:a.b.c.d`) with `family == 4`, so one layout
/// serves both families and the key hashes as 40 plain bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FlowKey {
    /// Address of the lower endpoint.
    pub addr_lo: [u8; 16],
    /// Address of the higher endpoint.
    pub addr_hi: [u8; 16],
    /// Port of the lower endpoint (ICMP echo: the identifier; otherwise 0 when the protocol has none).
    pub port_lo: u16,
    /// Port of the higher endpoint.
    pub port_hi: u16,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding, always zero, so that derived `Hash`/`Eq` see every byte.
    pub pad: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// Builds the canonical key for a packet from `src` to `dst` and tells
    /// which direction the packet travels.
    #[inline]
    pub fn new(
        family: u8,
        src: [u8; 16],
        dst: [u8; 16],
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> (Self, Direction) {
        // Big-endian u128 comparison orders like the byte arrays, in two instructions.
        let forward = (u128::from_be_bytes(src), src_port) <= (u128::from_be_bytes(dst), dst_port);
        let (addr_lo, port_lo, addr_hi, port_hi, dir) = if forward {
            (src, src_port, dst, dst_port, Direction::LoToHi)
        } else {
            (dst, dst_port, src, src_port, Direction::HiToLo)
        };
        let key = FlowKey {
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            proto,
            family,
            pad: [0; 2],
        };
        (key, dir)
    }

    /// Key for an IPv4 packet.
    #[inline]
    pub fn v4(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> (Self, Direction) {
        // The IPv4-mapped form (::ffff:a.b.c.d) computed as one number, not
        // assembled byte by byte: the table reads keys back in wide words.
        let mapped = |a: Ipv4Addr| (0xffff_u128 << 32 | u128::from(a.to_bits())).to_be_bytes();
        Self::new(4, mapped(src), mapped(dst), src_port, dst_port, proto)
    }

    /// Key for an IPv6 packet.
    #[inline]
    pub fn v6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> (Self, Direction) {
        Self::new(6, src.octets(), dst.octets(), src_port, dst_port, proto)
    }

    /// The lower endpoint's address as an `IpAddr`.
    pub fn lo_addr(&self) -> IpAddr {
        self.decode(self.addr_lo)
    }

    /// The higher endpoint's address as an `IpAddr`.
    pub fn hi_addr(&self) -> IpAddr {
        self.decode(self.addr_hi)
    }

    fn decode(&self, octets: [u8; 16]) -> IpAddr {
        let v6 = Ipv6Addr::from(octets);
        match (self.family, v6.to_ipv4_mapped()) {
            (4, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 1, 1);
        let (k1, d1) = FlowKey::v4(a, b, 40000, 80, ip_proto::TCP);
        let (k2, d2) = FlowKey::v4(b, a, 80, 40000, ip_proto::TCP);
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(k1.lo_addr(), IpAddr::V4(a));
        assert_eq!(k1.hi_addr(), IpAddr::V4(b));
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = Ipv6Addr::LOCALHOST;
        let (k, d) = FlowKey::v6(a, a, 9, 7, ip_proto::UDP);
        assert_eq!((k.port_lo, k.port_hi, d), (7, 9, Direction::HiToLo));
        assert_eq!(k.lo_addr(), IpAddr::V6(a));
    }
}
