//! The DSCP of an IP header (RFC 2474): the top six bits of IPv4's TOS
//! byte or of IPv6's traffic class; the two below them are ECN's (RFC
//! 3168), which a change of DSCP leaves alone.

use super::checksum_adjust;

/// The DSCP of the IP header at the start of `ip`; 0 when it is too short
/// or not IP.
#[inline]
pub fn get(ip: &[u8]) -> u8 {
    match ip {
        [b0, tos, ..] if b0 >> 4 == 4 => tos >> 2,
        [b0, b1, ..] if b0 >> 4 == 6 => (b0 & 0x0f) << 2 | b1 >> 6,
        _ => 0,
    }
}

/// Sets the DSCP (0-63) of the IP header at the start of `ip`, keeping
/// its ECN bits and, for IPv4, a valid header checksum. False, with `ip`
/// unchanged, when it is not a whole enough IP header.
#[inline]
pub fn set(ip: &mut [u8], dscp: u8) -> bool {
    debug_assert!(dscp < 64);
    match ip {
        [b0, tos, _, _, _, _, _, _, _, _, csum_hi, csum_lo, ..] if *b0 >> 4 == 4 => {
            let new_tos = dscp << 2 | (*tos & 0x03);
            let csum = checksum_adjust(
                u16::from_be_bytes([*csum_hi, *csum_lo]),
                u16::from_be_bytes([*b0, *tos]),
                u16::from_be_bytes([*b0, new_tos]),
            );
            *tos = new_tos;
            [*csum_hi, *csum_lo] = csum.to_be_bytes();
            true
        }
        [b0, b1, ..] if *b0 >> 4 == 6 => {
            *b0 = 0x60 | dscp >> 2;
            *b1 = (dscp & 0x03) << 6 | (*b1 & 0x3f);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};

    #[test]
    fn ipv4_keeps_ecn_and_a_valid_checksum() {
        let mut h = Ipv4Header::new(20, 64, IpNumber::UDP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
        h.dscp = 10.try_into().unwrap();
        h.ecn = 2.try_into().unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut bytes = h.to_bytes().to_vec();
        assert_eq!(super::get(&bytes), 10);
        for dscp in [0, 8, 46, 63] {
            assert!(super::set(&mut bytes, dscp));
            let (parsed, _) = Ipv4Header::from_slice(&bytes).unwrap();
            assert_eq!(parsed.dscp.value(), dscp);
            assert_eq!(parsed.ecn.value(), 2, "ECN untouched");
            assert_eq!(parsed.header_checksum, parsed.calc_header_checksum());
            assert_eq!(super::get(&bytes), dscp);
        }
    }

    #[test]
    fn ipv6_keeps_ecn_and_the_flow_label() {
        let h = Ipv6Header {
            traffic_class: 0b1010_0001,
            flow_label: Ipv6FlowLabel::try_new(0xabcde).unwrap(),
            payload_length: 0,
            next_header: IpNumber::UDP,
            hop_limit: 64,
            source: [1; 16],
            destination: [2; 16],
        };
        let mut bytes = h.to_bytes().to_vec();
        assert_eq!(super::get(&bytes), 0b101000);
        assert!(super::set(&mut bytes, 46));
        let (parsed, _) = Ipv6Header::from_slice(&bytes).unwrap();
        assert_eq!(parsed.traffic_class, 46 << 2 | 0b01);
        assert_eq!(parsed.flow_label.value(), 0xabcde);
        assert_eq!(super::get(&bytes), 46);
    }

    #[test]
    fn anything_else_is_left_alone() {
        for bytes in [
            &[][..],
            &[0x45][..],
            &[0x45, 0, 0, 0][..],
            &[0x20, 0xff][..],
        ] {
            let mut copy = bytes.to_vec();
            assert!(!super::set(&mut copy, 46));
            assert_eq!(copy, bytes);
            assert_eq!(super::get(bytes), 0);
        }
    }
}
