//! The naming rules the control plane validates requests with and the data
//! plane validates snapshots and files with.

use std::net::IpAddr;

/// A DNS label: 1-63 of a-z, 0-9 and '-', starting with a letter, not ending
/// with '-' (resource names, site ids, regions).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A host name: dot-separated labels of letters, digits and '-', none
/// starting or ending with '-', at most 253 characters.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// An IP protocol as policies name it: `tcp`, `udp`, `icmp`, `icmpv6` (any
/// case), or its number, 0-255.
pub fn ip_protocol(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        n => n.parse().ok(),
    }
}

/// An IP address (v4 or v6 text form) or a host name.
pub fn is_host(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || is_host_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("hq-1"));
        for bad in ["", "1hq", "HQ", "hq-", "h_q", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        assert!(is_host("203.0.113.7") && is_host("2001:db8::1") && is_host("gw.example.com"));
        assert!(!is_host("") && !is_host("bad host") && !is_host("-x.example"));
        assert!(!is_host_name("203.0.113.7:80"));
    }

    #[test]
    fn ip_protocols() {
        for (name, number) in [
            ("tcp", 6),
            ("UDP", 17),
            ("icmp", 1),
            ("icmpv6", 58),
            ("132", 132),
        ] {
            assert_eq!(ip_protocol(name), Some(number), "{name}");
        }
        for bad in ["", "256", "-1", "sctp", "tcp "] {
            assert_eq!(ip_protocol(bad), None, "{bad:?}");
        }
    }
}
