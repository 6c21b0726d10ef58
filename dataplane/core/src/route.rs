//! Longest-prefix-match routing for IPv4 and IPv6.
//!
//! The table is built once per configuration snapshot and only read by
//! workers; lookups go through `prefix-trie`'s compressed trie. Workers also
//! cache each flow's result, so the trie is walked once per flow and
//! direction, not once per packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

/// Where a prefix goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Outgoing port index.
    pub port: u16,
    /// Next-hop router; `None` means on-link (the destination itself is the next hop).
    pub via: Option<IpAddr>,
}

/// The result of a lookup: where to send, and whose MAC address to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Outgoing port index.
    pub port: u16,
    /// The address to resolve to a MAC (the router, or the destination when on-link).
    pub addr: IpAddr,
}

/// Routes of both families.
#[derive(Clone, Default)]
pub struct RouteTable {
    v4: PrefixMap<Ipv4Net, Route>,
    v6: PrefixMap<Ipv6Net, Route>,
    len: usize,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.v4.iter().map(|(p, r)| (IpNet::V4(p), r)))
            .entries(self.v6.iter().map(|(p, r)| (IpNet::V6(p), r)))
            .finish()
    }
}

impl RouteTable {
    /// Adds or replaces the route for `prefix` (host bits are ignored).
    pub fn insert(&mut self, prefix: IpNet, route: Route) {
        let replaced = match prefix.trunc() {
            IpNet::V4(p) => self.v4.insert(p, route).is_some(),
            IpNet::V6(p) => self.v6.insert(p, route).is_some(),
        };
        if !replaced {
            self.len += 1;
        }
    }

    /// The route for exactly `prefix`, if there is one.
    pub fn get(&self, prefix: IpNet) -> Option<Route> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.get(&p).copied(),
            IpNet::V6(p) => self.v6.get(&p).copied(),
        }
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no prefix is routed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most specific route covering `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<Route> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// The most specific IPv4 route covering `addr`.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<Route> {
        let host = Ipv4Net::new(addr, 32).expect("32 is a valid IPv4 prefix length");
        self.v4.get_lpm(&host).map(|(_, r)| *r)
    }

    /// The most specific IPv6 route covering `addr`.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<Route> {
        let host = Ipv6Net::new(addr, 128).expect("128 is a valid IPv6 prefix length");
        self.v6.get_lpm(&host).map(|(_, r)| *r)
    }

    /// Route lookup resolved to the address whose MAC the packet needs.
    #[inline]
    pub fn next_hop(&self, dst: IpAddr) -> Option<NextHop> {
        self.lookup(dst).map(|r| NextHop {
            port: r.port,
            addr: r.via.unwrap_or(dst),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.insert(
            "10.0.0.0/8".parse().unwrap(),
            Route {
                port: 1,
                via: Some("192.168.1.1".parse().unwrap()),
            },
        );
        t.insert("10.1.0.0/16".parse().unwrap(), Route { port: 2, via: None });
        t.insert(
            "0.0.0.0/0".parse().unwrap(),
            Route {
                port: 0,
                via: Some("192.168.0.1".parse().unwrap()),
            },
        );
        t.insert(
            "2001:db8::/32".parse().unwrap(),
            Route { port: 3, via: None },
        );
        t.insert(
            "2001:db8:1::/48".parse().unwrap(),
            Route {
                port: 4,
                via: Some("fe80::1".parse().unwrap()),
            },
        );
        t
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.lookup("10.1.2.3".parse().unwrap()).unwrap().port, 2);
        assert_eq!(t.lookup("10.2.0.1".parse().unwrap()).unwrap().port, 1);
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()).unwrap().port, 0);
        assert_eq!(t.lookup("2001:db8:1::5".parse().unwrap()).unwrap().port, 4);
        assert_eq!(t.lookup("2001:db8:2::5".parse().unwrap()).unwrap().port, 3);
        assert_eq!(t.lookup("2001:db9::1".parse().unwrap()), None);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn next_hop_is_router_or_destination() {
        let t = table();
        let dst: IpAddr = "10.1.9.9".parse().unwrap();
        assert_eq!(t.next_hop(dst), Some(NextHop { port: 2, addr: dst }));
        assert_eq!(
            t.next_hop("10.9.9.9".parse().unwrap()),
            Some(NextHop {
                port: 1,
                addr: "192.168.1.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn replacing_a_prefix_keeps_the_count() {
        let mut t = table();
        t.insert("10.1.0.0/16".parse().unwrap(), Route { port: 7, via: None });
        assert_eq!(t.len(), 5);
        assert_eq!(t.lookup("10.1.0.1".parse().unwrap()).unwrap().port, 7);
    }
}
