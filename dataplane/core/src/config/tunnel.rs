//! `[tunnel]`: the gateway's WireGuard interface, and how it is combined with
//! the site's peers (from the file or the control plane) into the
//! [`TunnelConfig`] workers run and the routes that lead into it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use ipnet::IpNet;
use serde::Deserialize;

use super::dns::HostAddresses;
use super::site::{Peer, SiteState};
use super::ConfigError;
use crate::paths::bfd::{BfdEnds, Hops};
use crate::paths::{path_tag, Choosing, Path, PathTable, Uplink, MAX_PATHS, MAX_PATHS_PER_PEER};
use crate::route::{Route, RouteTable};
use crate::tunnel::noise::{PeerKeys, StaticKeys};
use crate::tunnel::timers::TimerSettings;
use crate::tunnel::{PeerConfig, TunnelConfig};

/// The tunnel interface's name in routes, metrics and logs.
pub const TUNNEL_PORT_NAME: &str = "tunnel";
/// The tunnel interface's MAC address: locally administered, never on a wire.
pub const TUNNEL_MAC: [u8; 6] = [0x02, 0x77, 0x67, 0x00, 0x00, 0x01];

/// `[tunnel]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// File holding the base64 private key, as `wg genkey` writes it; it
    /// must not be readable by group or others.
    pub private_key_file: PathBuf,
    /// UDP port the gateway's addresses accept tunnel traffic on.
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// Largest inner packet (outer headers add 60 bytes over IPv4, 80 over IPv6).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The tunnel interface's own addresses with prefix length (optional).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Handshake messages per second per worker above which senders must
    /// prove their address with a cookie first.
    #[serde(default = "default_cookie_threshold")]
    pub cookie_threshold_per_s: u32,
    /// Protocol timers (the whitepaper's values unless testing).
    #[serde(default)]
    pub timers: TimerSettings,
    /// More prefixes routed to peers, by peer name, added to each peer's
    /// own `allowed_ips`. This is how a managed gateway gives the control
    /// plane's peers their prefixes; names without a peer are ignored.
    #[serde(default)]
    pub allowed_ips: BTreeMap<String, Vec<String>>,
}

fn default_listen_port() -> u16 {
    51820
}

fn default_mtu() -> u16 {
    1420
}

fn default_cookie_threshold() -> u32 {
    1000
}

/// `[tunnel]` validated, with the private key loaded (shared, never
/// copied, by its clones).
#[derive(Clone)]
pub struct TunnelLocal {
    /// The settings as written.
    pub section: TunnelSection,
    /// The identity from `private_key_file`.
    pub keys: Arc<StaticKeys>,
    /// `allowed_ips`, parsed.
    pub routes: BTreeMap<String, Vec<IpNet>>,
    /// The site's uplinks (`[[uplink]]`), validated against the ports.
    pub uplinks: Vec<Uplink>,
    /// How paths are probed and chosen between (`[paths]`).
    pub choosing: Choosing,
}

impl std::fmt::Debug for TunnelLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelLocal")
            .field("section", &self.section)
            .field("keys", &self.keys)
            .finish()
    }
}

/// The tunnel interface as workers see it.
#[derive(Debug)]
pub struct TunnelSnapshot {
    /// Its index among the ports (after the physical ones).
    pub port: u16,
    /// Keys, peers and cryptokey routes.
    pub config: TunnelConfig,
    /// The ways to the peers (empty without `[[uplink]]`).
    pub paths: PathTable,
}

/// Reads a base64 key of 32 bytes from a file that only its owner may read.
fn read_key(path: &std::path::Path, field: &str) -> Result<[u8; 32], ConfigError> {
    let text =
        patronus_proto::secrets::read_secret(path, patronus_proto::secrets::Readers::OwnerOnly)
            .map_err(|e| ConfigError::new(field, format!("{e:#}")))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .map(zeroize::Zeroizing::new)
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .ok_or_else(|| {
            ConfigError::new(
                field,
                format!(
                    "{} does not hold a base64 key of 32 bytes (wg genkey)",
                    path.display()
                ),
            )
        })
}

impl TunnelSection {
    /// Checks the section and loads the private key.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn load(&self) -> Result<TunnelLocal, ConfigError> {
        if self.listen_port == 0 {
            return Err(ConfigError::new("tunnel.listen_port", "must be 1-65535"));
        }
        if !(576..=8920).contains(&self.mtu) {
            return Err(ConfigError::new(
                "tunnel.mtu",
                format!("{} is out of range 576..=8920", self.mtu),
            ));
        }
        if self.cookie_threshold_per_s < 10 {
            return Err(ConfigError::new(
                "tunnel.cookie_threshold_per_s",
                "must be at least 10",
            ));
        }
        self.timers
            .validate()
            .map_err(|m| ConfigError::new("tunnel.timers", m))?;
        let mut routes = BTreeMap::new();
        for (peer, prefixes) in &self.allowed_ips {
            let mut parsed = Vec::with_capacity(prefixes.len());
            for (j, text) in prefixes.iter().enumerate() {
                let field = format!("tunnel.allowed_ips.{peer}[{j}]");
                let net: IpNet = text.trim().parse().map_err(|_| {
                    ConfigError::new(&field, format!("{text:?} is not a prefix (10.2.0.0/24)"))
                })?;
                if net.trunc() != net {
                    return Err(ConfigError::new(
                        field,
                        format!("{net} has host bits set; did you mean {}?", net.trunc()),
                    ));
                }
                parsed.push(net);
            }
            routes.insert(peer.clone(), parsed);
        }
        let secret = read_key(&self.private_key_file, "tunnel.private_key_file")?;
        Ok(TunnelLocal {
            section: self.clone(),
            keys: Arc::new(StaticKeys::new(secret)),
            routes,
            uplinks: Vec::new(),
            choosing: Choosing::default(),
        })
    }
}

/// Where an endpoint is: its address, or what its host name resolved to
/// (the resolver looked it up beforehand; nothing is resolved here).
fn resolve(
    host: &str,
    port: u16,
    field: &str,
    hosts: &HostAddresses,
) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match hosts.get(host) {
        Some(Ok(ip)) => Ok(SocketAddr::new(*ip, port)),
        Some(Err(why)) => Err(ConfigError::new(
            field,
            format!("cannot resolve {host:?}: {why}"),
        )),
        None => Err(ConfigError::new(
            field,
            format!("{host:?} has not been resolved"),
        )),
    }
}

/// The site's paths: each peer's endpoints over each uplink, in that order.
fn paths(
    local: &TunnelLocal,
    site: &SiteState,
    hosts: &HostAddresses,
) -> Result<PathTable, ConfigError> {
    let site_id = site.site.as_ref().map_or("local", |s| s.site_id.as_str());
    // BFD speaks from the tunnel's first IPv4 address.
    let bfd_local = local
        .section
        .addresses
        .iter()
        .filter_map(|a| a.parse::<IpNet>().ok())
        .find_map(|net| match net.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
    let mut paths = Vec::new();
    for (peer, p) in site.peers.iter().enumerate() {
        let field = format!("peer[{}]", p.name);
        let bfd = match (&p.bfd, bfd_local) {
            (None, _) => None,
            (Some(b), Some(local)) if b.remote != local => Some(BfdEnds {
                local,
                remote: b.remote,
                hops: Hops::One,
                timers: b.timers,
                auth: b.auth.clone(),
            }),
            (Some(_), Some(local)) => {
                return Err(ConfigError::new(
                    format!("{field}.tunnel_address"),
                    format!("{local} is this gateway's own tunnel address"),
                ))
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    format!("{field}.bfd_enabled"),
                    "BFD speaks from the tunnel's address: give [tunnel] an IPv4 address",
                ))
            }
        };
        if local.uplinks.is_empty() {
            if bfd.is_some() {
                return Err(ConfigError::new(
                    format!("{field}.bfd_enabled"),
                    "BFD runs on the peer's paths, which need [[uplink]] sections",
                ));
            }
            if p.endpoints.len() > 1 {
                return Err(ConfigError::new(
                    format!("{field}.endpoints"),
                    "several endpoints make several paths, which need [[uplink]] sections",
                ));
            }
            if p.sla_probes {
                return Err(ConfigError::new(
                    format!("{field}.sla_probes"),
                    "paths are probed per uplink; configure [[uplink]] sections",
                ));
            }
            continue;
        }
        // A peer with one endpoint (or none) roams: its paths follow it.
        let mut ends: Vec<(Option<&str>, Option<SocketAddr>)> = Vec::new();
        match p.endpoints.as_slice() {
            [] => ends.push((None, None)),
            [(name, _, _)] => ends.push((Some(name), None)),
            several => {
                for (j, (name, host, port)) in several.iter().enumerate() {
                    let at = format!("{field}.endpoints[{j}].address");
                    ends.push((Some(name), Some(resolve(host, *port, &at, hosts)?)));
                }
            }
        }
        if local.uplinks.len() * ends.len() > MAX_PATHS_PER_PEER {
            return Err(ConfigError::new(
                format!("{field}.endpoints"),
                format!("more than {MAX_PATHS_PER_PEER} paths to one peer (uplinks × endpoints)"),
            ));
        }
        for (u, uplink) in local.uplinks.iter().enumerate() {
            for (name, endpoint) in &ends {
                let id = match name {
                    Some(e) => format!("{site_id}:{}->{}:{e}", uplink.name, p.name),
                    None => format!("{site_id}:{}->{}", uplink.name, p.name),
                };
                if paths.len() == MAX_PATHS {
                    return Err(ConfigError::new(
                        format!("{field}.endpoints"),
                        format!("more than {MAX_PATHS} paths (uplinks × endpoints of every peer)"),
                    ));
                }
                paths.push(Path {
                    tag: path_tag(&id, *endpoint),
                    id: id.into(),
                    peer: peer as u32,
                    uplink: u as u8,
                    endpoint: *endpoint,
                    probed: p.sla_probes,
                    bfd: bfd.clone(),
                });
            }
        }
    }
    let mut uplinks = local.uplinks.clone();
    for u in &mut uplinks {
        if let Some(b) = &mut u.bfd {
            b.id = format!("{site_id}:{}->{}", u.name, b.ends.remote).into();
        }
    }
    Ok(PathTable::new(
        uplinks,
        paths,
        site.peers.len(),
        local.choosing,
    ))
}

/// Builds what workers run from the local settings and the site's peers,
/// and the routes: `base` plus every allowed-IPs prefix into the tunnel port.
///
/// # Errors
/// A peer the tunnel cannot carry, by field.
pub fn compile(
    local: &TunnelLocal,
    peers: &SiteState,
    port: u16,
    base: &RouteTable,
    hosts: &HostAddresses,
) -> Result<(TunnelSnapshot, RouteTable), ConfigError> {
    let allowed = |p: &Peer| -> Vec<IpNet> {
        let local = local.routes.get(&p.name).into_iter().flatten();
        p.allowed_ips.iter().chain(local).copied().collect()
    };
    let mut configs = Vec::with_capacity(peers.peers.len());
    for p in &peers.peers {
        let psk = match &p.preshared_key_file {
            None => None,
            Some(path) => Some(read_key(
                path,
                &format!("peer[{}].wireguard.preshared_key_file", p.name),
            )?),
        };
        configs.push(PeerConfig {
            name: p.name.clone(),
            keys: PeerKeys::new(&local.keys, p.public_key, psk),
            endpoint: match &p.endpoint {
                None => None,
                Some((host, port)) => Some(resolve(
                    host,
                    *port,
                    &format!("peer[{}].endpoint.address", p.name),
                    hosts,
                )?),
            },
            allowed_ips: allowed(p),
            persistent_keepalive_s: p.persistent_keepalive_s,
            compression: p.compression,
        });
    }
    let s = &local.section;
    let config = TunnelConfig::new(
        local.keys.clone(),
        s.listen_port,
        s.mtu,
        s.timers,
        s.cookie_threshold_per_s,
        configs,
    )
    .map_err(|e| ConfigError::new(e.field, e.message))?;
    let mut routes = base.clone();
    for p in &peers.peers {
        for (j, prefix) in allowed(p).iter().enumerate() {
            if base.get(*prefix).is_some() {
                let field = match j.checked_sub(p.allowed_ips.len()) {
                    None => format!("peer[{}].allowed_ips[{j}]", p.name),
                    Some(k) => format!("tunnel.allowed_ips.{}[{k}]", p.name),
                };
                return Err(ConfigError::new(
                    field,
                    format!("{prefix} is also a route of the file (remove one of them)"),
                ));
            }
            routes.insert(*prefix, Route { port, via: None });
        }
    }
    for p in &peers.peers {
        let Some(bfd) = &p.bfd else { continue };
        if !allowed(p)
            .iter()
            .any(|net| net.contains(&IpAddr::V4(bfd.remote)))
        {
            return Err(ConfigError::new(
                format!("peer[{}].tunnel_address", p.name),
                format!(
                    "{} is outside the peer's allowed IPs: the tunnel would drop its BFD packets",
                    bfd.remote
                ),
            ));
        }
    }
    let paths = paths(local, peers, hosts)?;
    Ok((
        TunnelSnapshot {
            port,
            config,
            paths,
        },
        routes,
    ))
}
