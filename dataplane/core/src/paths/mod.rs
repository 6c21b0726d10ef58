//! SD-WAN paths: the ways to a peer (a local uplink and a remote endpoint),
//! how each is measured, and which one a peer's packets take.
//!
//! A site has one or more WAN uplinks ([`Uplink`]); a peer one or more
//! endpoints. A [`Path`] is one (uplink, endpoint) pair of one peer; all
//! paths of a peer share its WireGuard session, so a path only decides the
//! underlay: the outer source address, the egress port and next hop, and the
//! outer destination. The [`PathTable`] is part of the configuration
//! snapshot; the measurements ([`sla`] from probes, [`passive`] from
//! WireGuard's handshakes for peers that take none) and the choice live in the worker
//! that owns the peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub mod bfd;
pub mod passive;
pub mod probe;
pub mod select;
pub mod sla;

use sla::MeterSettings;

/// Most paths a gateway keeps (uplinks × endpoints, over every peer).
pub const MAX_PATHS: usize = 1024;
/// Most uplinks a site has (at most 32: [`SharedUplinks`] has a bit each).
pub const MAX_UPLINKS: usize = 16;

/// A WAN uplink of this site, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    /// Its name (a DNS label), part of every path id over it.
    pub name: String,
    /// The port it leaves by.
    pub port: u16,
    /// The outer source address, when the port has several of a family;
    /// otherwise the port's address toward the endpoint.
    pub address: Option<IpAddr>,
    /// The router the uplink's datagrams go to; `None`: endpoints are on-link.
    pub next_hop: Option<IpAddr>,
    /// BFD with its router (or an address beyond it), when configured: a
    /// session that leaves Up takes every path over the uplink out.
    pub bfd: Option<UplinkBfd>,
    /// What a GB over it costs (any currency; only compared).
    pub cost_per_gb: f64,
    /// Nominal bandwidth (Mbit/s; 0 when unknown).
    pub bandwidth_mbps: u32,
    /// A label such as mpls, internet or lte.
    pub color: String,
}

/// BFD with an uplink's router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkBfd {
    /// The session's name in the metrics' `path_id`:
    /// `site:uplink->address`.
    pub id: Arc<str>,
    /// Its ends, timers and key.
    pub ends: bfd::BfdEnds,
}

/// What every worker knows of the site's uplinks, shared between them:
/// which ones BFD says are down, and what all workers sent over each.
#[derive(Debug, Default)]
pub struct SharedUplinks {
    /// A bit per uplink: written by the worker that runs the uplinks'
    /// sessions ([`UPLINK_BFD_WORKER`]), read by every worker at each round.
    down: AtomicU32,
    /// Bytes sent over each uplink (by index) since the start, by every
    /// worker: each adds its own at its evaluations and measures the
    /// uplink's load from the total.
    sent: [AtomicU64; MAX_UPLINKS],
}

impl SharedUplinks {
    /// The uplinks BFD says are down, a bit each.
    #[inline]
    pub fn down(&self) -> u32 {
        self.down.load(Ordering::Relaxed)
    }

    /// Replaces the bits of the uplinks BFD says are down.
    pub fn set_down(&self, bits: u32) {
        self.down.store(bits, Ordering::Relaxed);
    }

    /// Adds `bytes` sent over `uplink`.
    pub fn add_sent(&self, uplink: usize, bytes: u64) {
        if let Some(sent) = self.sent.get(uplink) {
            sent.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes sent over `uplink` by every worker so far.
    pub fn sent(&self, uplink: usize) -> u64 {
        self.sent
            .get(uplink)
            .map_or(0, |sent| sent.load(Ordering::Relaxed))
    }
}

/// The worker that runs every uplink's BFD session: others hand it the
/// Control packets they receive.
pub const UPLINK_BFD_WORKER: usize = 0;

/// One way to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Stable name, `site:uplink->peer[:endpoint]`: the metrics' `path_id`.
    pub id: Arc<str>,
    /// The peer (its index in the tunnel's peers).
    pub peer: u32,
    /// Index of the local uplink in [`PathTable::uplinks`].
    pub uplink: u8,
    /// The remote endpoint; `None` for a peer with a single endpoint, whose
    /// endpoint is wherever it last spoke from (it may roam).
    pub endpoint: Option<SocketAddr>,
    /// Whether the path is measured by in-band probes (Patronus peers only).
    pub probed: bool,
    /// BFD on the path, when its peer has it.
    pub bfd: Option<bfd::BfdEnds>,
    /// A hash of the id and endpoint: probes carry it, so that an echo of a
    /// path that a new configuration renumbered is not taken for another.
    pub tag: u32,
}

/// Every path of the site, peer by peer, in the site's default order
/// (uplinks in configuration order, then the peer's endpoints in order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathTable {
    /// The site's uplinks in configuration order.
    pub uplinks: Vec<Uplink>,
    /// Every path, those of one peer next to each other.
    pub paths: Vec<Path>,
    /// Each peer's paths, as a range of `paths`.
    by_peer: Vec<Range<u16>>,
    /// The first path of each (peer, uplink, endpoint), for [`PathTable::find`]:
    /// every datagram received looks its path up.
    by_arrival: HashMap<(u32, u8, Option<SocketAddr>), u16, ahash::RandomState>,
    /// How probed paths are probed and judged.
    pub meter: MeterSettings,
    /// How long a better path must stay so before traffic moves to it.
    pub hold_ns: u64,
    /// Whether the site's default order moves back to an earlier path that
    /// recovered (after the hold time).
    pub revertive: bool,
}

impl PathTable {
    /// A table of `uplinks` and `paths` (grouped by peer, peers in order)
    /// for `peers` peers.
    ///
    /// # Panics
    /// When more than [`MAX_PATHS`] paths are given (validation refuses them).
    pub fn new(uplinks: Vec<Uplink>, paths: Vec<Path>, peers: usize, choosing: Choosing) -> Self {
        assert!(paths.len() <= MAX_PATHS, "validation bounds the paths");
        let mut by_peer = vec![0..0; peers];
        let mut by_arrival = HashMap::default();
        for (i, p) in paths.iter().enumerate() {
            by_arrival
                .entry((p.peer, p.uplink, p.endpoint))
                .or_insert(i as u16);
            let r = &mut by_peer[p.peer as usize];
            if r.start == r.end {
                *r = i as u16..i as u16;
            }
            debug_assert_eq!(r.end as usize, i, "a peer's paths are adjacent");
            debug_assert!(
                paths[r.start as usize].endpoint.is_some() == p.endpoint.is_some(),
                "a peer's paths all name an endpoint or none does"
            );
            r.end = i as u16 + 1;
        }
        PathTable {
            uplinks,
            paths,
            by_peer,
            by_arrival,
            meter: choosing.meter,
            hold_ns: choosing.hold_ns,
            revertive: choosing.revertive,
        }
    }

    /// True when the site has no uplinks: datagrams follow the route table.
    pub fn is_empty(&self) -> bool {
        self.uplinks.is_empty()
    }

    /// The indices of `peer`'s paths (empty for an unknown peer).
    #[inline]
    pub fn of_peer(&self, peer: u32) -> Range<usize> {
        self.by_peer
            .get(peer as usize)
            .map_or(0..0, |r| usize::from(r.start)..usize::from(r.end))
    }

    /// The uplink a datagram that arrived on `port` for our address `to`
    /// came in by: one of the port's uplinks, the one with that address if
    /// several share the port.
    pub fn arrival_uplink(&self, port: u16, to: IpAddr) -> Option<u8> {
        let mut on_port = self
            .uplinks
            .iter()
            .enumerate()
            .filter(|(_, u)| u.port == port);
        let first = on_port.next()?;
        let exact = std::iter::once(first)
            .chain(on_port)
            .find(|(_, u)| u.address == Some(to));
        Some(exact.unwrap_or(first).0 as u8)
    }

    /// The path of `peer` over `uplink` that ends at `from` (or the one to
    /// a peer with a single endpoint). A peer has paths of named endpoints
    /// (several endpoints) or of none (one, wherever it is), never both.
    #[inline]
    pub fn find(&self, peer: u32, uplink: u8, from: SocketAddr) -> Option<usize> {
        // A peer's paths all name an endpoint, or none does.
        let named = self.paths.get(self.of_peer(peer).start)?.endpoint.is_some();
        let key = (peer, uplink, named.then_some(from));
        self.by_arrival.get(&key).map(|&i| usize::from(i))
    }
}

/// How paths are measured and chosen between (`[paths]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Choosing {
    /// The meters' settings.
    pub meter: MeterSettings,
    /// See [`PathTable::hold_ns`].
    pub hold_ns: u64,
    /// See [`PathTable::revertive`].
    pub revertive: bool,
}

/// Most paths one peer has (uplinks × its endpoints).
pub const MAX_PATHS_PER_PEER: usize = 64;

/// A stable 32-bit tag for a path (FNV-1a of its id and endpoint).
pub fn path_tag(id: &str, endpoint: Option<SocketAddr>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_default();
    for b in id.bytes().chain([0]).chain(endpoint.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink(name: &str, port: u16, address: Option<&str>) -> Uplink {
        Uplink {
            name: name.into(),
            port,
            address: address.map(|a| a.parse().unwrap()),
            next_hop: None,
            bfd: None,
            cost_per_gb: 0.0,
            bandwidth_mbps: 0,
            color: String::new(),
        }
    }

    fn path(peer: u32, uplink: u8, endpoint: Option<&str>) -> Path {
        let id = format!("a:{uplink}->{peer}");
        let endpoint = endpoint.map(|e| e.parse().unwrap());
        Path {
            tag: path_tag(&id, endpoint),
            id: id.into(),
            peer,
            uplink,
            endpoint,
            probed: true,
            bfd: None,
        }
    }

    #[test]
    fn paths_are_found_by_peer_uplink_and_source() {
        let t = PathTable::new(
            vec![uplink("mpls", 0, None), uplink("inet", 1, None)],
            vec![
                path(1, 0, Some("192.0.2.1:51820")),
                path(1, 0, Some("198.51.100.1:51820")),
                path(1, 1, Some("192.0.2.1:51820")),
                path(2, 1, None),
            ],
            3,
            Choosing::default(),
        );
        assert_eq!(t.of_peer(0), 0..0);
        assert_eq!(t.of_peer(1), 0..3);
        assert_eq!(t.of_peer(2), 3..4);
        assert_eq!(t.of_peer(9), 0..0);
        assert_eq!(t.find(1, 0, "198.51.100.1:51820".parse().unwrap()), Some(1));
        assert_eq!(t.find(1, 1, "198.51.100.1:51820".parse().unwrap()), None);
        // A single-endpoint peer's path matches wherever it speaks from.
        assert_eq!(t.find(2, 1, "203.0.113.9:4000".parse().unwrap()), Some(3));
    }

    #[test]
    fn arrival_uplink_prefers_the_address_among_uplinks_of_a_port() {
        let t = PathTable::new(
            vec![
                uplink("a", 0, Some("192.0.2.2")),
                uplink("b", 0, Some("192.0.2.3")),
                uplink("c", 1, None),
            ],
            vec![],
            0,
            Choosing::default(),
        );
        assert_eq!(t.arrival_uplink(0, "192.0.2.3".parse().unwrap()), Some(1));
        assert_eq!(t.arrival_uplink(0, "192.0.2.9".parse().unwrap()), Some(0));
        assert_eq!(t.arrival_uplink(1, "10.0.0.1".parse().unwrap()), Some(2));
        assert_eq!(t.arrival_uplink(2, "10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn tags_tell_paths_apart() {
        let e = Some("192.0.2.1:51820".parse().unwrap());
        assert_ne!(path_tag("a:x->b", e), path_tag("a:y->b", e));
        assert_ne!(path_tag("a:x->b", e), path_tag("a:x->b", None));
        assert_eq!(path_tag("a:x->b", e), path_tag("a:x->b", e));
    }
}
