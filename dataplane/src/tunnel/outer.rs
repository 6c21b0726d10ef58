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

/// Bytes the outer headers add in front of a WireGuard message toward `dst`.
pub fn overhead(dst: IpAddr) -> usize {
    ETHERNET_LEN
        + UdpHeader::LEN
        + match dst {
            IpAddr::V4(_) => Ipv4Header::MIN_LEN,
            IpAddr::V6(_) => Ipv6Header::LEN,
        }
}

/// Wraps the WireGuard message in `frame` into a UDP datagram from `src` to
/// `dst` inside an Ethernet frame from `src_mac` (the destination MAC is
/// left zero for the caller). False when the families differ, or the
/// headroom or length does not allow it; the frame is then unchanged.
pub fn encapsulate<F: Frame>(
    frame: &mut F,
    src: SocketAddr,
    dst: SocketAddr,
    src_mac: [u8; 6],
    ip_id: u16,
) -> bool {
    let payload_len = frame.len();
    let Ok(udp_len) = u16::try_from(payload_len + UdpHeader::LEN) else {
        return false;
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let Ok(mut ip) = Ipv4Header::new(udp_len, TTL, IpNumber::UDP, s.octets(), d.octets())
            else {
                return false;
            };
            ip.identification = ip_id;
            ip.header_checksum = ip.calc_header_checksum();
            // RFC 768: a zero UDP checksum over IPv4 means "none"; the AEAD
            // authenticates every byte that matters.
            let udp = UdpHeader {
                source_port: src.port(),
                destination_port: dst.port(),
                length: udp_len,
                checksum: 0,
            };
            if !frame.prepend(ETHERNET_LEN + Ipv4Header::MIN_LEN + UdpHeader::LEN) {
                return false;
            }
            let out = frame.data_mut();
            write_ethernet(out, src_mac, EtherType::IPV4);
            out[ETHERNET_LEN..ETHERNET_LEN + Ipv4Header::MIN_LEN].copy_from_slice(&ip.to_bytes());
            out[ETHERNET_LEN + Ipv4Header::MIN_LEN..][..UdpHeader::LEN]
                .copy_from_slice(&udp.to_bytes());
            true
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: udp_len,
                next_header: IpNumber::UDP,
                hop_limit: TTL,
                source: s.octets(),
                destination: d.octets(),
            };
            // Over IPv6 the UDP checksum is mandatory (RFC 8200 8.1).
            let Ok(udp) = UdpHeader::with_ipv6_checksum(src.port(), dst.port(), &ip, frame.data())
            else {
                return false;
            };
            if !frame.prepend(ETHERNET_LEN + Ipv6Header::LEN + UdpHeader::LEN) {
                return false;
            }
            let out = frame.data_mut();
            write_ethernet(out, src_mac, EtherType::IPV6);
            out[ETHERNET_LEN..ETHERNET_LEN + Ipv6Header::LEN].copy_from_slice(&ip.to_bytes());
            out[ETHERNET_LEN + Ipv6Header::LEN..][..UdpHeader::LEN]
                .copy_from_slice(&udp.to_bytes());
            true
        }
        _ => false,
    }
}

fn write_ethernet(out: &mut [u8], src_mac: [u8; 6], ether_type: EtherType) {
    let eth = Ethernet2Header {
        source: src_mac,
        destination: [0; 6],
        ether_type,
    };
    out[..ETHERNET_LEN].copy_from_slice(&eth.to_bytes());
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
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn ipv4_datagrams_parse_back_with_a_valid_header_checksum() {
        let mut frame = VecFrame::new(&[0xab; 48]);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let dst: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        assert!(encapsulate(&mut frame, src, dst, [2, 0, 0, 0, 0, 1], 77));
        assert_eq!(frame.len(), 48 + overhead(dst.ip()));
        let p = SlicedPacket::from_ethernet(frame.data()).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            (h.source, h.destination, h.identification),
            ([192, 0, 2, 1], [198, 51, 100, 7], 77)
        );
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!()
        };
        assert_eq!(
            (udp.source_port(), udp.destination_port(), udp.length()),
            (51820, 40000, 56)
        );
        assert_eq!(udp.payload(), &[0xab; 48][..]);
    }

    #[test]
    fn ipv6_datagrams_carry_a_correct_udp_checksum() {
        let mut frame = VecFrame::new(&[0x5a; 33]);
        let src: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:51821".parse().unwrap();
        assert!(encapsulate(&mut frame, src, dst, [2, 0, 0, 0, 0, 1], 0));
        let p = SlicedPacket::from_ethernet(frame.data()).unwrap();
        let Some(NetSlice::Ipv6(ip)) = p.net else {
            panic!()
        };
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
        let mut frame = VecFrame::new(&[1; 10]);
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:1".parse().unwrap();
        assert!(!encapsulate(&mut frame, v4, v6, [0; 6], 0));
        assert_eq!(frame.data(), &[1; 10]);
        let mut full = VecFrame::new(&[1; 10]);
        assert!(full.prepend(VecFrame::HEADROOM - 20));
        assert!(!encapsulate(&mut full, v4, v4, [0; 6], 0));
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
