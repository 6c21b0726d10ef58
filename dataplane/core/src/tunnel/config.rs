//! The tunnel settings workers read: this gateway's key, its peers with
//! their precomputed keys and endpoints, and the cryptokey routing table.
//! Built once per configuration snapshot, immutable afterwards.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::noise::{PeerKeys, StaticKeys};
use super::timers::TimerSettings;
use super::PeerId;

/// Cryptokey routing: which peer owns an address (whitepaper section 2).
/// Longest-prefix match in a compressed trie, so thousands of peers cost a
/// trie walk, not a scan.
#[derive(Clone)]
pub struct AllowedIps {
    v4: PrefixMap<Ipv4Net, PeerId>,
    v6: PrefixMap<Ipv6Net, PeerId>,
    /// Drawn anew at every change, so that a [`SourceRoutes`] cache can
    /// tell its answers from those of another table.
    version: u64,
}

impl Default for AllowedIps {
    fn default() -> Self {
        AllowedIps {
            v4: PrefixMap::default(),
            v6: PrefixMap::default(),
            version: next_version(),
        }
    }
}

/// A version no table had before (never 0, which a cache slot starts with).
fn next_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl std::fmt::Debug for AllowedIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.v4.iter().map(|(p, r)| (IpNet::V4(p), r)))
            .entries(self.v6.iter().map(|(p, r)| (IpNet::V6(p), r)))
            .finish()
    }
}

impl AllowedIps {
    /// Gives `prefix` (host bits ignored) to `peer`; the previous owner, if any, is returned.
    pub fn insert(&mut self, prefix: IpNet, peer: PeerId) -> Option<PeerId> {
        self.version = next_version();
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.insert(p, peer),
            IpNet::V6(p) => self.v6.insert(p, peer),
        }
    }

    /// The peer whose most specific prefix covers `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match addr {
            IpAddr::V4(a) => self
                .v4
                .get_lpm(&Ipv4Net::new(a, 32).expect("/32 is valid"))
                .map(|(_, &p)| p),
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::new(a, 128).expect("/128 is valid"))
                .map(|(_, &p)| p),
        }
    }

    /// Every prefix with its peer.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, PeerId)> + '_ {
        self.v4
            .iter()
            .map(|(p, &id)| (IpNet::V4(p), id))
            .chain(self.v6.iter().map(|(p, &id)| (IpNet::V6(p), id)))
    }
}

/// One worker's cache of cryptokey routing for the IPv4 sources of the
/// packets it decrypts (checked against the allowed IPs, one trie walk of
/// a few hundred instructions each): direct-mapped, an answer kept with
/// the version of the table that gave it.
pub(crate) struct SourceRoutes {
    slots: Box<[CachedRoute]>,
}

#[derive(Clone, Copy, Default)]
struct CachedRoute {
    version: u64,
    addr: u32,
    peer: Option<PeerId>,
}

/// Slots of a [`SourceRoutes`] (a power of two).
const SOURCE_ROUTE_SLOTS: usize = 1024;

impl Default for SourceRoutes {
    fn default() -> Self {
        SourceRoutes {
            slots: vec![CachedRoute::default(); SOURCE_ROUTE_SLOTS].into_boxed_slice(),
        }
    }
}

impl SourceRoutes {
    /// [`TunnelConfig::route`] of `addr` in `cfg`, from the cache when it
    /// holds the answer of that table.
    #[inline]
    pub(crate) fn route(&mut self, cfg: &TunnelConfig, addr: IpAddr) -> Option<PeerId> {
        let IpAddr::V4(v4) = addr else {
            return cfg.route(addr);
        };
        let a = u32::from(v4);
        let version = cfg.allowed.version;
        // Fibonacci hashing: the top bits of the product index the slots.
        let slot =
            (a.wrapping_mul(0x9e37_79b9) >> (32 - SOURCE_ROUTE_SLOTS.trailing_zeros())) as usize;
        let cached = &mut self.slots[slot];
        if cached.version == version && cached.addr == a {
            return cached.peer;
        }
        let peer = cfg.route(addr);
        *cached = CachedRoute {
            version,
            addr: a,
            peer,
        };
        peer
    }
}

/// One peer as workers see it.
#[derive(Debug)]
pub struct PeerConfig {
    /// Its name (metrics label, logs).
    pub name: String,
    /// Its keys, precomputed against ours.
    pub keys: PeerKeys,
    /// Where to send until it roams; `None` for a peer that only calls in.
    pub endpoint: Option<SocketAddr>,
    /// The inner addresses it may use, and that are routed to it.
    pub allowed_ips: Vec<IpNet>,
    /// Keepalive interval in seconds when idle (0: off).
    pub persistent_keepalive_s: u16,
    /// Compress packets to it (Patronus peers only).
    pub compression: bool,
}

/// Everything the tunnel engine reads.
#[derive(Debug)]
pub struct TunnelConfig {
    /// Our identity.
    pub keys: Arc<StaticKeys>,
    /// UDP port we listen on.
    pub listen_port: u16,
    /// Largest inner packet.
    pub mtu: u16,
    /// Protocol timers.
    pub timers: TimerSettings,
    /// Handshake messages per second above which cookies are demanded.
    pub cookie_threshold_per_s: u32,
    /// Peers, indexed by [`PeerId`].
    pub peers: Vec<PeerConfig>,
    by_key: HashMap<[u8; 32], PeerId>,
    allowed: AllowedIps,
}

/// Why a tunnel configuration cannot be built; the text names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfigError {
    /// The field at fault (`peer[hq].allowed_ips[0]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl TunnelConfig {
    /// Indexes `peers` by public key and allowed IPs. Two peers with one key,
    /// a peer with our own key, or one prefix given to two peers is an error.
    pub fn new(
        keys: Arc<StaticKeys>,
        listen_port: u16,
        mtu: u16,
        timers: TimerSettings,
        cookie_threshold_per_s: u32,
        peers: Vec<PeerConfig>,
    ) -> Result<Self, TunnelConfigError> {
        let mut by_key = HashMap::with_capacity(peers.len());
        let mut allowed = AllowedIps::default();
        for (i, peer) in peers.iter().enumerate() {
            let id = i as PeerId;
            let field = |f: &str| format!("peer[{}].{f}", peer.name);
            if peer.keys.public() == keys.public() {
                return Err(TunnelConfigError {
                    field: field("wireguard.public_key"),
                    message: "is this gateway's own public key".into(),
                });
            }
            if let Some(other) = by_key.insert(*peer.keys.public(), id) {
                return Err(TunnelConfigError {
                    field: field("wireguard.public_key"),
                    message: format!("is also the key of peer[{}]", peers[other as usize].name),
                });
            }
            for (j, prefix) in peer.allowed_ips.iter().enumerate() {
                if let Some(other) = allowed.insert(*prefix, id) {
                    if other != id {
                        return Err(TunnelConfigError {
                            field: field(&format!("allowed_ips[{j}]")),
                            message: format!(
                                "{prefix} is also allowed for peer[{}]",
                                peers[other as usize].name
                            ),
                        });
                    }
                }
            }
        }
        Ok(TunnelConfig {
            keys,
            listen_port,
            mtu,
            timers,
            cookie_threshold_per_s,
            peers,
            by_key,
            allowed,
        })
    }

    /// The peer with this public key.
    pub fn peer_by_key(&self, key: &[u8; 32]) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    /// The peer with public key `public_key` in this configuration: at
    /// position `peer` when it has not moved (work queued under another
    /// configuration names both), else wherever it went; `None` when removed.
    #[inline]
    pub fn resolve(&self, peer: PeerId, public_key: &[u8; 32]) -> Option<PeerId> {
        match self.peers.get(peer as usize) {
            Some(p) if p.keys.public() == public_key => Some(peer),
            _ => self.peer_by_key(public_key),
        }
    }

    /// Cryptokey routing: the peer that `addr` belongs to.
    #[inline]
    pub fn route(&self, addr: IpAddr) -> Option<PeerId> {
        self.allowed.lookup(addr)
    }

    /// Every routed prefix with its peer.
    pub fn allowed_ips(&self) -> &AllowedIps {
        &self.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::crypto::hash;

    fn peer(local: &StaticKeys, seed: &[u8], allowed: &[&str]) -> PeerConfig {
        let public = StaticKeys::new(hash(&[seed])).public().to_owned();
        PeerConfig {
            name: String::from_utf8_lossy(seed).into_owned(),
            keys: PeerKeys::new(local, public, None),
            endpoint: None,
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive_s: 0,
            compression: false,
        }
    }

    fn build(peers: Vec<PeerConfig>) -> Result<TunnelConfig, TunnelConfigError> {
        TunnelConfig::new(
            Arc::new(StaticKeys::new(hash(&[b"local"]))),
            51820,
            1420,
            TimerSettings::default(),
            1000,
            peers,
        )
    }

    #[test]
    fn longest_prefix_picks_the_peer() {
        let local = StaticKeys::new(hash(&[b"local"]));
        let cfg = build(vec![
            peer(&local, b"a", &["10.0.0.0/8", "2001:db8::/32"]),
            peer(&local, b"b", &["10.1.0.0/16", "2001:db8:1::/48"]),
        ])
        .unwrap();
        assert_eq!(cfg.route("10.2.3.4".parse().unwrap()), Some(0));
        assert_eq!(cfg.route("10.1.3.4".parse().unwrap()), Some(1));
        assert_eq!(cfg.route("11.0.0.1".parse().unwrap()), None);
        assert_eq!(cfg.route("2001:db8:1::9".parse().unwrap()), Some(1));
        assert_eq!(cfg.route("2001:db8:2::9".parse().unwrap()), Some(0));
        let b = *cfg.peers[1].keys.public();
        assert_eq!(cfg.peer_by_key(&b), Some(1));
    }

    #[test]
    fn the_source_cache_answers_as_the_table_it_was_filled_from() {
        let local = StaticKeys::new(hash(&[b"local"]));
        let one = build(vec![
            peer(&local, b"a", &["10.0.0.0/8", "2001:db8::/32"]),
            peer(&local, b"b", &["10.1.0.0/16"]),
        ])
        .unwrap();
        // The same addresses, given to the other peer.
        let other = build(vec![
            peer(&local, b"a", &["10.1.0.0/16"]),
            peer(&local, b"b", &["10.0.0.0/8", "2001:db8::/32"]),
        ])
        .unwrap();
        let mut cache = SourceRoutes::default();
        let addrs = ["10.2.3.4", "10.1.3.4", "11.0.0.1", "2001:db8::9"];
        for _ in 0..2 {
            for cfg in [&one, &other] {
                for addr in addrs {
                    let addr = addr.parse().unwrap();
                    assert_eq!(cache.route(cfg, addr), cfg.route(addr), "{addr}");
                }
            }
        }
        // Addresses that share a slot each get their own answer.
        let mut cache = SourceRoutes::default();
        for i in 0..4 * SOURCE_ROUTE_SLOTS as u32 {
            let addr = IpAddr::V4((0x0a00_0000 + i * 97).into());
            assert_eq!(cache.route(&one, addr), one.route(addr), "{addr}");
        }
    }

    #[test]
    fn thousands_of_peers_route_without_a_scan() {
        let local = StaticKeys::new(hash(&[b"local"]));
        let peers: Vec<_> = (0..4000u32)
            .map(|i| {
                let net = format!("10.{}.{}.0/24", i / 256, i % 256);
                peer(&local, &i.to_le_bytes(), &[&net])
            })
            .collect();
        let cfg = build(peers).unwrap();
        assert_eq!(
            cfg.route("10.15.159.7".parse().unwrap()),
            Some(15 * 256 + 159)
        );
    }

    #[test]
    fn conflicts_name_the_field() {
        let local = StaticKeys::new(hash(&[b"local"]));
        let err = build(vec![
            peer(&local, b"a", &["10.0.0.0/8"]),
            peer(&local, b"b", &["10.0.0.0/8"]),
        ])
        .unwrap_err();
        assert_eq!(err.field, "peer[b].allowed_ips[0]");
        assert!(err.message.contains("peer[a]"), "{}", err.message);
        let err = build(vec![peer(&local, b"a", &[]), peer(&local, b"a", &[])]).unwrap_err();
        assert_eq!(err.field, "peer[a].wireguard.public_key");
        let err = build(vec![peer(&local, b"local", &[])]).unwrap_err();
        assert!(err.message.contains("own public key"));
    }
}
