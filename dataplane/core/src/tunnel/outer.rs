//! The outer headers of tunnel datagrams: Ethernet, IPv4 or IPv6, and UDP
//! prepended into the buffer's headroom in front of a WireGuard message,
//! so the message is never copied.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader,
};

use crate::frame::Frame;

/// Length of an untagged Ethernet header.
pub const ETHERNET_LEN: usize = 14;
/// Hop limit / TTL of tunnel datagrams.
const TTL: u8 = 64;

/// The outer headers toward one endpoint, built once (with etherparse) and
/// stamped onto every datagram with only the lengths, the IPv4
/// identification and the checksums changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHeaders {
    bytes: [u8; ETHERNET_LEN + Ipv6Header::LEN + UdpHeader::LEN],
    len: usize,
    v6: bool,
}

impl OuterHeaders {
    /// Headers of a datagram from `src` (MAC `src_mac`) to `dst` (MAC
    /// `dst_mac`); `None` when the families differ.
    pub fn new(
        src: SocketAddr,
        dst: SocketAddr,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
    ) -> Option<Self> {
        let mut bytes = [0u8; ETHERNET_LEN + Ipv6Header::LEN + UdpHeader::LEN];
        let (ether_type, ip_len) = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ip = Ipv4Header::new(0, TTL, IpNumber::UDP, s.octets(), d.octets()).ok()?;
                bytes[ETHERNET_LEN..][..Ipv4Header::MIN_LEN].copy_from_slice(&ip.to_bytes());
                (EtherType::IPV4, Ipv4Header::MIN_LEN)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: 0,
                    next_header: IpNumber::UDP,
                    hop_limit: TTL,
                    source: s.octets(),
                    destination: d.octets(),
                };
                bytes[ETHERNET_LEN..][..Ipv6Header::LEN].copy_from_slice(&ip.to_bytes());
                (EtherType::IPV6, Ipv6Header::LEN)
            }
            _ => return None,
        };
        let eth = Ethernet2Header {
            source: src_mac,
            destination: dst_mac,
            ether_type,
        };
        bytes[..ETHERNET_LEN].copy_from_slice(&eth.to_bytes());
        let udp = UdpHeader {
            source_port: src.port(),
            destination_port: dst.port(),
            length: 0,
            checksum: 0,
        };
        bytes[ETHERNET_LEN + ip_len..][..UdpHeader::LEN].copy_from_slice(&udp.to_bytes());
        Some(OuterHeaders {
            bytes,
            len: ETHERNET_LEN + ip_len + UdpHeader::LEN,
            v6: ether_type == EtherType::IPV6,
        })
    }

    /// Prepends the headers, with `dscp` (0-63) in the outer IP header, to
    /// the WireGuard message in `frame`. False (the frame unchanged) when
    /// the headroom or the length does not allow it.
    pub fn apply<F: Frame>(&self, frame: &mut F, ip_id: u16, dscp: u8) -> bool {
        let Ok(udp_len) = u16::try_from(frame.len() + UdpHeader::LEN) else {
            return false;
        };
        let ip = ETHERNET_LEN;
        let udp_at = self.len - UdpHeader::LEN;
        let udp_checksum = if self.v6 {
            // Over IPv6 the UDP checksum is mandatory (RFC 8200 8.1).
            let source: [u8; 16] = self.bytes[ip + 8..ip + 24].try_into().expect("16 bytes");
            let destination: [u8; 16] = self.bytes[ip + 24..ip + 40].try_into().expect("16 bytes");
            let udp = UdpHeader {
                source_port: u16::from_be_bytes([self.bytes[udp_at], self.bytes[udp_at + 1]]),
                destination_port: u16::from_be_bytes([
                    self.bytes[udp_at + 2],
                    self.bytes[udp_at + 3],
                ]),
                length: udp_len,
                checksum: 0,
            };
            match udp.calc_checksum_ipv6_raw(source, destination, frame.data()) {
                Ok(sum) => sum,
                Err(_) => return false,
            }
        } else {
            // RFC 768: a zero UDP checksum over IPv4 means "none"; the AEAD
            // authenticates every byte that matters.
            0
        };
        if !frame.prepend(self.len) {
            return false;
        }
        let out = &mut frame.data_mut()[..self.len];
        out.copy_from_slice(&self.bytes[..self.len]);
        // The stored headers carry DSCP 0 and ECN Not-ECT; the DSCP is set
        // with the lengths (IPv4's before its checksum is computed).
        if self.v6 {
            crate::packet::dscp::set(&mut out[ip..], dscp);
            out[ip + 4..ip + 6].copy_from_slice(&udp_len.to_be_bytes());
        } else {
            out[ip + 1] = dscp << 2;
            let total = udp_len + Ipv4Header::MIN_LEN as u16;
            out[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
            out[ip + 4..ip + 6].copy_from_slice(&ip_id.to_be_bytes());
            let checksum = etherparse::checksum::Sum16BitWords::new()
                .add_slice(&out[ip..ip + Ipv4Header::MIN_LEN])
                .ones_complement()
                .to_be();
            out[ip + 10..ip + 12].copy_from_slice(&checksum.to_be_bytes());
        }
        out[udp_at + 4..udp_at + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[udp_at + 6..udp_at + 8].copy_from_slice(&udp_checksum.to_be_bytes());
        true
    }
}

/// Puts an Ethernet header from `mac` to `mac` in front of the IP packet in
/// `frame` (its type from the IP version), so a decrypted packet can be
/// forwarded like a received frame. False when there is no headroom or the
/// packet is not IP.
pub fn add_ethernet<F: Frame>(frame: &mut F, mac: [u8; 6]) -> bool {
    let ether_type = match frame.data().first().map(|b| b >> 4) {
        Some(4) => EtherType::IPV4,
        Some(6) => EtherType::IPV6,
        _ => return false,
    };
    if !frame.prepend(ETHERNET_LEN) {
        return false;
    }
    let eth = Ethernet2Header {
        source: mac,
        destination: mac,
        ether_type,
    };
    frame.data_mut()[..ETHERNET_LEN].copy_from_slice(&eth.to_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::VecFrame;
    use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn ipv4_datagrams_parse_back_with_a_valid_header_checksum() {
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let dst: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let headers = OuterHeaders::new(src, dst, A, B).unwrap();
        // Stamped twice with different lengths and DSCPs: nothing of the
        // first remains.
        for (len, id, dscp) in [(48usize, 77u16, 46u8), (1452, 78, 0)] {
            let mut frame = VecFrame::new(&vec![0xab; len]);
            assert!(headers.apply(&mut frame, id, dscp));
            assert_eq!(frame.len(), len + 14 + 20 + 8);
            let p = SlicedPacket::from_ethernet(frame.data()).unwrap();
            let Some(LinkSlice::Ethernet2(eth)) = p.link else {
                panic!()
            };
            assert_eq!((eth.source(), eth.destination()), (A, B));
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!()
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(
                (h.source, h.destination, h.identification),
                ([192, 0, 2, 1], [198, 51, 100, 7], id)
            );
            assert_eq!((h.dscp.value(), h.ecn.value()), (dscp, 0));
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!()
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (51820, 40000));
            assert_eq!(usize::from(udp.length()), len + 8);
            assert_eq!(udp.payload(), &vec![0xab; len][..]);
        }
    }

    #[test]
    fn ipv6_datagrams_carry_a_correct_udp_checksum() {
        let src: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:51821".parse().unwrap();
        let mut frame = VecFrame::new(&[0x5a; 33]);
        assert!(OuterHeaders::new(src, dst, A, B)
            .unwrap()
            .apply(&mut frame, 0, 34));
        let p = SlicedPacket::from_ethernet(frame.data()).unwrap();
        let Some(NetSlice::Ipv6(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().payload_length(), 41);
        assert_eq!(ip.header().traffic_class(), 34 << 2);
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!()
        };
        let expected = udp
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
            .unwrap();
        assert_ne!(udp.checksum(), 0);
        assert_eq!(udp.checksum(), expected);
    }

    #[test]
    fn mixed_families_and_missing_headroom_are_refused_unchanged() {
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:1".parse().unwrap();
        assert!(OuterHeaders::new(v4, v6, A, B).is_none());
        let mut full = VecFrame::new(&[1; 10]);
        assert!(full.prepend(VecFrame::HEADROOM - 20));
        let before = full.clone();
        assert!(!OuterHeaders::new(v4, v4, A, B)
            .unwrap()
            .apply(&mut full, 0, 0));
        assert_eq!(full, before);
    }

    #[test]
    fn decrypted_packets_get_an_ethernet_header_of_their_family() {
        let mut v4 = VecFrame::new(&[0x45, 0, 0, 20]);
        assert!(add_ethernet(&mut v4, [2, 0, 0, 0, 0, 9]));
        assert_eq!(&v4.data()[12..14], &[0x08, 0x00]);
        let mut v6 = VecFrame::new(&[0x60, 0, 0, 0]);
        assert!(add_ethernet(&mut v6, [2, 0, 0, 0, 0, 9]));
        assert_eq!(&v6.data()[12..14], &[0x86, 0xdd]);
        assert!(!add_ethernet(&mut VecFrame::new(&[0x10]), [0; 6]));
    }
}
