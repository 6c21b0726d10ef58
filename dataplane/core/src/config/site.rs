//! The site's part of the configuration: its identity, its WireGuard peers
//! and its policies.
//!
//! Standalone, they come from the file's `[site]`, `[[peer]]` and
//! `[[policy]]`; under a control plane, from its snapshots, which
//! the data plane's agent turns into the very same sections. Either
//! way one validation ([`SiteSections::compile`]) decides what runs, so a
//! snapshot the data plane cannot run is refused with the field at fault,
//! exactly as a bad file is.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use ipnet::IpNet;
use patronus_proto::names::{ip_protocol, is_dns_label, is_host};
use serde::Deserialize;

use super::policy::{Match, Rule};
use super::qos::{ClassesSection, TunnelSlots, MAX_RATED_PEERS};
use super::uplinks::{check_settings, UplinkSettings};
use super::ConfigError;
use crate::bfd::auth::Sha1Key;
use crate::bfd::session::Timers;
use crate::dpi::apps::{AppError, AppSpec};
use crate::dpi::{Category, Classifier};
pub use crate::paths::select::{Strategy, Thresholds};
use crate::qos::Class;

/// `[site]`: who this gateway is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// The site's id (a DNS label).
    pub site_id: String,
    /// Human-readable name.
    #[serde(default)]
    pub display_name: String,
    /// Region, such as us-east-1.
    #[serde(default)]
    pub region: String,
    /// Where peers reach this site's tunnels.
    #[serde(default)]
    pub tunnel_endpoint: Option<EndpointSection>,
    /// Sites this site peers with.
    #[serde(default)]
    pub peers: Vec<SitePeerSection>,
}

/// An IP address or host name and a UDP port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// IPv4 or IPv6 address, or a host name.
    pub address: String,
    /// 1-65535.
    pub port: u32,
}

/// One of a peer's `endpoints`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedEndpointSection {
    /// Unique among the peer's endpoints, a DNS label (the remote uplink's name).
    pub name: String,
    /// IPv4 or IPv6 address, or a host name.
    pub address: String,
    /// 1-65535.
    pub port: u32,
}

/// One entry of `site.peers`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SitePeerSection {
    /// The other site's id.
    pub site_id: String,
    /// Its address.
    pub address: String,
}

/// `[[peer]]`: a WireGuard peer of this site.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Unique among the site's peers.
    pub name: String,
    /// Where the peer's tunnel listens; absent for a peer that only calls
    /// in (a road warrior), whose endpoint is learnt from its handshake.
    #[serde(default)]
    pub endpoint: Option<EndpointSection>,
    /// Every endpoint of a peer with several (one per remote uplink), by
    /// name; `endpoint`, if given too, must be one of them and is the
    /// primary. Each makes a path with each of this site's uplinks.
    #[serde(default)]
    pub endpoints: Vec<NamedEndpointSection>,
    /// The peer is a Patronus gateway that answers path probes: measure
    /// every path to it in band (needs `[[uplink]]`).
    #[serde(default)]
    pub sla_probes: bool,
    /// The peer's WireGuard identity.
    pub wireguard: WireGuardSection,
    /// Compress tunnel payloads (Patronus peers only).
    #[serde(default)]
    pub compression: bool,
    /// Run BFD (RFC 5881) inside the tunnel between our tunnel address and
    /// `tunnel_address`: one session per path to a Patronus peer
    /// (`sla_probes`), one per peer over the path in use to a stock one.
    #[serde(default)]
    pub bfd_enabled: bool,
    /// The peer's own address inside the tunnel (IPv4, within its
    /// `allowed_ips`): where BFD sends to.
    #[serde(default)]
    pub tunnel_address: Option<String>,
    /// BFD's timers toward this peer; absent: 300 ms × 3.
    #[serde(default)]
    pub bfd: Option<BfdSection>,
    /// Inner addresses the peer may send from and that are routed to it
    /// (cryptokey routing), as prefixes.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Send a keepalive after this many idle seconds (0: off), to keep NAT
    /// mappings open.
    #[serde(default)]
    pub persistent_keepalive_s: u16,
    /// Shape the peer's tunnel to this rate (Mbit/s, 0.008-400000) on each
    /// shaped uplink; absent: only the uplink's rate applies.
    #[serde(default)]
    pub rate_mbps: Option<f64>,
}

/// `peer.bfd`: a BFD session's timers (RFC 5880 §6.8.1), each optional,
/// and its authentication.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BfdSection {
    /// How often we would like to send (ms, 10-60000; default 300).
    #[serde(default)]
    pub desired_min_tx_ms: Option<u32>,
    /// How often we can take packets (ms, 10-60000; default 300).
    #[serde(default)]
    pub required_min_rx_ms: Option<u32>,
    /// Packets missed before the path is declared down (2-255; default 3).
    #[serde(default)]
    pub detect_multiplier: Option<u8>,
    /// Keyed SHA1 authentication (RFC 5880 §6.7.4); absent: none. File
    /// configuration only: a key never travels through the control plane.
    #[serde(default)]
    pub auth: Option<BfdAuthSection>,
}

/// `peer.bfd.auth`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BfdAuthSection {
    /// `keyed-sha1` or `meticulous-keyed-sha1`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The key's id, the same on both ends (0-255).
    pub key_id: u8,
    /// File holding the key (1-20 bytes; a final newline is left out),
    /// readable by its owner only.
    pub key_file: std::path::PathBuf,
}

/// A peer's BFD, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBfd {
    /// The peer's address inside the tunnel.
    pub remote: Ipv4Addr,
    /// Our timers.
    pub timers: Timers,
    /// The key its Control packets are authenticated with, if any.
    pub auth: Option<Sha1Key>,
}

/// `peer.wireguard`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WireGuardSection {
    /// The peer's Curve25519 public key, base64.
    pub public_key: String,
    /// File with a base64 preshared key shared with this peer (mode 600);
    /// absent: none. File configuration only.
    #[serde(default)]
    pub preshared_key_file: Option<std::path::PathBuf>,
}

/// `[[policy]]`: rules for the flows of this site.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Unique among policies.
    pub name: String,
    /// `[[policy.rule]]`, in any order: the highest priority wins.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleSection>,
}

/// `[[policy.rule]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// What a matching flow gets.
    pub action: RuleAction,
    /// Higher wins; unique within the policy.
    pub priority: u32,
    /// All must match.
    #[serde(default)]
    pub conditions: Vec<ConditionSection>,
    /// Required for `route`, not allowed otherwise.
    #[serde(default)]
    pub path_selection: Option<PathSelection>,
    /// `route` only: send each packet over the two best paths, so that a
    /// loss on one does not lose it (the receiver keeps the first copy).
    #[serde(default)]
    pub duplicate: bool,
    /// The class of matching flows on shaped uplinks, in place of their
    /// category's (`route` and `allow` only).
    #[serde(default)]
    pub qos_class: Option<Class>,
}

/// What a rule does with a matching flow.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    /// Steer it over the path its path selection picks.
    Route,
    /// Forward it normally.
    Allow,
    /// Drop it.
    Deny,
}

/// One condition of a rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConditionSection {
    /// What is compared.
    #[serde(rename = "type")]
    pub kind: ConditionKind,
    /// With what.
    pub value: String,
}

/// What a condition compares.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConditionKind {
    /// An application name as the classifier reports it.
    Application,
    /// One of the ten categories.
    Category,
    /// The flow's source address is in this prefix.
    SourcePrefix,
    /// The flow's destination address is in this prefix.
    DestinationPrefix,
    /// The destination port.
    DestinationPort,
    /// The DSCP value, 0-63.
    Dscp,
    /// The IP protocol: `tcp`, `udp`, `icmp`, `icmpv6` or a number, 0-255.
    Protocol,
}

/// How a `route` rule picks its path.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathSelection {
    /// What "best" means.
    pub strategy: Strategy,
    /// Limits a path must stay within.
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// The site's sections as written (in the file or by the control plane).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteSections {
    /// `[site]`.
    pub site: Option<SiteSection>,
    /// `[[peer]]`.
    pub peers: Vec<PeerSection>,
    /// `[[policy]]`.
    pub policies: Vec<PolicySection>,
    /// User-defined applications from the control plane (a file defines
    /// its own in `[[dpi.application]]`); compiled by [`classifier_with`].
    pub applications: Vec<AppSpec>,
    /// The control plane's settings for the file's uplinks (a file sets
    /// them in `[[uplink]]` itself).
    pub uplinks: Vec<UplinkSettings>,
    /// The control plane's settings for the classes (a file sets them in
    /// `[qos.classes]` itself).
    pub qos_classes: ClassesSection,
}

/// A validated peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Address (IP or host name) and port of its tunnel (the primary one);
    /// `None` when it only calls in.
    pub endpoint: Option<(String, u16)>,
    /// Its named endpoints, when it has several: name, address, port.
    pub endpoints: Vec<(String, String, u16)>,
    /// Measure its paths with in-band probes.
    pub sla_probes: bool,
    /// Its Curve25519 public key.
    pub public_key: [u8; 32],
    /// Where its preshared key is, if it has one.
    pub preshared_key_file: Option<std::path::PathBuf>,
    /// Compress payloads.
    pub compression: bool,
    /// Cryptokey routing prefixes.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval (s; 0: off).
    pub persistent_keepalive_s: u16,
    /// Its tunnel's own rate on shaped uplinks (bit/s).
    pub rate_bps: Option<u64>,
    /// BFD on its paths, when enabled.
    pub bfd: Option<PeerBfd>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The site configuration in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteState {
    /// The control plane's snapshot version (0 in standalone mode).
    pub version: u64,
    /// The site, when one is configured.
    pub site: Option<SiteSection>,
    /// Peers in configuration order.
    pub peers: Vec<Peer>,
    /// Every policy's rules, highest priority first.
    pub rules: Vec<Rule>,
    /// Where each peer's traffic queues in a shaper, and at what rate.
    pub tunnel_slots: TunnelSlots,
    /// The control plane's settings for the file's uplinks.
    pub uplinks: Vec<UplinkSettings>,
    /// The control plane's settings for the file's classes.
    pub qos_classes: ClassesSection,
}

impl SiteState {
    /// The host names (addresses that are not IP addresses) among the
    /// peers' endpoints.
    pub fn host_names(&self) -> std::collections::BTreeSet<String> {
        self.peers
            .iter()
            .flat_map(|p| {
                let primary = p.endpoint.iter().map(|(host, _)| host);
                primary.chain(p.endpoints.iter().map(|(_, host, _)| host))
            })
            .filter(|host| host.parse::<IpAddr>().is_err())
            .cloned()
            .collect()
    }
}

/// What the data plane knows of itself that a site configuration must fit.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities<'a> {
    /// The catalogue policies' application names must come from.
    pub classifier: &'a Classifier,
    /// Some port has an IPv4 address (to reach IPv4 peers from).
    pub has_v4: bool,
    /// Some port has a global IPv6 address.
    pub has_v6: bool,
}

impl<'a> Capabilities<'a> {
    /// What ports with these addresses and this catalogue can run.
    pub fn of(ports: &[crate::config::PortInfo], classifier: &'a Classifier) -> Capabilities<'a> {
        // Peers are reached over the devices, never through the tunnel itself.
        let ports: Vec<_> = ports
            .iter()
            .filter(|p| p.kind == crate::config::PortKind::Ethernet)
            .collect();
        Capabilities {
            classifier,
            has_v4: ports.iter().any(|p| !p.v4.is_empty()),
            has_v6: ports
                .iter()
                .any(|p| p.v6.iter().any(|n| !n.addr().is_unicast_link_local())),
        }
    }
}

impl SiteSections {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.site.is_none()
            && self.peers.is_empty()
            && self.policies.is_empty()
            && self.applications.is_empty()
            && self.uplinks.is_empty()
            && self.qos_classes.is_empty()
    }

    /// Validates and compiles the sections.
    ///
    /// # Errors
    /// The first field the data plane cannot run, by path (`peer[hq].endpoint.port`).
    pub fn compile(&self, caps: Capabilities<'_>) -> Result<SiteState, ConfigError> {
        if let Some(site) = &self.site {
            check_site(site)?;
        }
        check_settings(&self.uplinks)?;
        let mut names = HashSet::new();
        let mut peers = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            let field = if is_dns_label(&p.name) {
                format!("peer[{}]", p.name)
            } else {
                return Err(ConfigError::new(
                    format!("peer[{i}].name"),
                    format!("{:?} must be a DNS label (a-z, 0-9, '-')", p.name),
                ));
            };
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    "used by another peer",
                ));
            }
            let endpoint = match &p.endpoint {
                None => None,
                Some(e) => Some(peer_endpoint(e, &format!("{field}.endpoint"), caps)?),
            };
            let endpoints = named_endpoints(p, &field, caps)?;
            let endpoint = match (endpoint, endpoints.first()) {
                (None, Some((_, host, port))) => Some((host.clone(), *port)),
                (Some(primary), Some(_)) => {
                    if !endpoints
                        .iter()
                        .any(|(_, h, p)| (h, p) == (&primary.0, &primary.1))
                    {
                        return Err(ConfigError::new(
                            format!("{field}.endpoint"),
                            "must be one of `endpoints` (the primary one) when both are given",
                        ));
                    }
                    Some(primary)
                }
                (endpoint, None) => endpoint,
            };
            let mut allowed_ips = Vec::with_capacity(p.allowed_ips.len());
            for (j, text) in p.allowed_ips.iter().enumerate() {
                let afield = format!("{field}.allowed_ips[{j}]");
                let net: IpNet = text.trim().parse().map_err(|_| {
                    ConfigError::new(&afield, format!("{text:?} is not a prefix (10.2.0.0/24)"))
                })?;
                if net.trunc() != net {
                    return Err(ConfigError::new(
                        afield,
                        format!("{net} has host bits set; did you mean {}?", net.trunc()),
                    ));
                }
                allowed_ips.push(net);
            }
            let bfd = peer_bfd(p, &field)?;
            let rate_bps = match p.rate_mbps {
                None => None,
                Some(rate) if (0.008..=400_000.0).contains(&rate) => {
                    Some((rate * 1e6).round() as u64)
                }
                Some(rate) => {
                    return Err(ConfigError::new(
                        format!("{field}.rate_mbps"),
                        format!("{rate} is outside 0.008-400000"),
                    ))
                }
            };
            let key = base64::engine::general_purpose::STANDARD
                .decode(p.wireguard.public_key.trim())
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.wireguard.public_key"),
                        "must be a base64 Curve25519 public key (32 bytes)",
                    )
                })?;
            peers.push(Peer {
                name: p.name.clone(),
                endpoint,
                endpoints,
                sla_probes: p.sla_probes,
                public_key: key,
                preshared_key_file: p.wireguard.preshared_key_file.clone(),
                compression: p.compression,
                allowed_ips,
                persistent_keepalive_s: p.persistent_keepalive_s,
                rate_bps,
                bfd,
            });
        }
        let rates: Vec<Option<u64>> = peers.iter().map(|p| p.rate_bps).collect();
        let tunnel_slots = TunnelSlots::assign(&rates).map_err(|rated| {
            ConfigError::new(
                format!("peer[{}].rate_mbps", peers[rated].name),
                format!("at most {MAX_RATED_PEERS} peers of a site have a rate of their own"),
            )
        })?;
        let mut rules = Vec::new();
        let mut policy_names = HashSet::new();
        for (i, policy) in self.policies.iter().enumerate() {
            if !is_dns_label(&policy.name) {
                return Err(ConfigError::new(
                    format!("policy[{i}].name"),
                    format!("{:?} must be a DNS label (a-z, 0-9, '-')", policy.name),
                ));
            }
            if !policy_names.insert(policy.name.as_str()) {
                return Err(ConfigError::new(
                    format!("policy[{}].name", policy.name),
                    "used by another policy",
                ));
            }
            rules.extend(compile_policy(policy, caps.classifier)?);
        }
        // Stable: equal priorities across policies keep configuration order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(SiteState {
            version: 0,
            site: self.site.clone(),
            peers,
            rules,
            tunnel_slots,
            uplinks: self.uplinks.clone(),
            qos_classes: self.qos_classes.clone(),
        })
    }
}

/// A peer's BFD settings, checked: the peer's tunnel address and timers; fields without `bfd_enabled` are refused, not ignored.
fn peer_bfd(p: &PeerSection, field: &str) -> Result<Option<PeerBfd>, ConfigError> {
    if !p.bfd_enabled {
        if p.tunnel_address.is_some() {
            return Err(ConfigError::new(
                format!("{field}.tunnel_address"),
                "only BFD uses it: set bfd_enabled = true, or leave it out",
            ));
        }
        if p.bfd.is_some() {
            return Err(ConfigError::new(
                format!("{field}.bfd"),
                "BFD's timers need bfd_enabled = true",
            ));
        }
        return Ok(None);
    }
    let at = format!("{field}.tunnel_address");
    let Some(text) = &p.tunnel_address else {
        return Err(ConfigError::new(
            at,
            "BFD needs the peer's IPv4 address inside the tunnel",
        ));
    };
    let remote = match text.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) if !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast() => {
            v4
        }
        Ok(IpAddr::V4(v4)) => {
            return Err(ConfigError::new(
                at,
                format!("{v4} is not a unicast address"),
            ))
        }
        Ok(IpAddr::V6(_)) => {
            return Err(ConfigError::new(
                at,
                "BFD over IPv6 inside the tunnel is not supported yet: give an IPv4 address",
            ))
        }
        Err(_) => {
            return Err(ConfigError::new(
                at,
                format!("{text:?} is not an IPv4 address"),
            ))
        }
    };
    let (timers, auth) = p
        .bfd
        .clone()
        .unwrap_or_default()
        .compile(&format!("{field}.bfd"))?;
    Ok(Some(PeerBfd {
        remote,
        timers,
        auth,
    }))
}

impl BfdSection {
    /// The timers and key it asks for (defaults: FRR's 300 ms × 3, no
    /// key); errors name `field` (`peer[hq].bfd`) and the value.
    ///
    /// # Errors
    /// A value out of range, an unknown authentication type, or a key file
    /// that cannot be read or is readable by others.
    pub fn compile(&self, field: &str) -> Result<(Timers, Option<Sha1Key>), ConfigError> {
        let auth = match &self.auth {
            None => None,
            Some(a) => {
                let meticulous = match a.kind.as_str() {
                    "keyed-sha1" => false,
                    "meticulous-keyed-sha1" => true,
                    other => {
                        return Err(ConfigError::new(
                            format!("{field}.auth.type"),
                            format!("{other:?}: keyed-sha1 or meticulous-keyed-sha1"),
                        ))
                    }
                };
                Some(
                    Sha1Key::from_file(&a.key_file, a.key_id, meticulous)
                        .map_err(|e| ConfigError::new(format!("{field}.auth.key_file"), e))?,
                )
            }
        };
        let interval = |name: &str, ms: Option<u32>| -> Result<u32, ConfigError> {
            let ms = ms.unwrap_or(300);
            if !(10..=60_000).contains(&ms) {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    format!("{ms} is outside 10-60000 ms"),
                ));
            }
            Ok(ms * 1_000)
        };
        let detect_mult = self.detect_multiplier.unwrap_or(3);
        if detect_mult < 2 {
            return Err(ConfigError::new(
                format!("{field}.detect_multiplier"),
                format!("{detect_mult} is outside 2-255"),
            ));
        }
        let timers = Timers {
            desired_min_tx_us: interval("desired_min_tx_ms", self.desired_min_tx_ms)?,
            required_min_rx_us: interval("required_min_rx_ms", self.required_min_rx_ms)?,
            detect_mult,
        };
        Ok((timers, auth))
    }
}

/// Catalogues compiled lately, with the user applications they hold: a
/// reload or a snapshot that names the same ones shares the compiled
/// databases instead of compiling them again (Hyperscan takes most of a
/// second over the built-in catalogue).
static COMPILED: Mutex<Vec<(Vec<AppSpec>, Arc<Classifier>)>> = Mutex::new(Vec::new());
/// Catalogues kept in [`COMPILED`], the latest used last.
const COMPILED_KEPT: usize = 4;

/// The built-in catalogue plus the file's `[[dpi.application]]` and the
/// control plane's applications, compiled (off the packet path), or shared
/// with an earlier call for the same applications. Errors name the entry:
/// `dpi.application[2].patterns` or `application[AcmeERP].patterns`.
///
/// # Errors
/// An invalid definition, a pattern Hyperscan refuses, or a name used twice.
pub fn classifier_with(
    file: &[AppSpec],
    managed: &[AppSpec],
) -> Result<Arc<Classifier>, ConfigError> {
    let all: Vec<AppSpec> = file.iter().chain(managed).cloned().collect();
    let compiled = || COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut kept = compiled();
        if let Some(at) = kept.iter().position(|(apps, _)| *apps == all) {
            let hit = kept.remove(at);
            let classifier = hit.1.clone();
            kept.push(hit);
            return Ok(classifier);
        }
    }
    let entry = |index: usize, name: &str| {
        if index < file.len() {
            format!("dpi.application[{index}]")
        } else {
            format!("application[{name}]")
        }
    };
    let classifier = Classifier::with_user_apps(&all).map_err(|e| match e {
        AppError::Field {
            index,
            name,
            field,
            message,
        } => ConfigError::new(format!("{}.{field}", entry(index, &name)), message),
        AppError::Pattern {
            index,
            name,
            pattern,
            message,
        } => ConfigError::new(
            format!("{}.patterns", entry(index, &name)),
            format!("{pattern:?}: {message}"),
        ),
        AppError::Syntax(message) => ConfigError::new("dpi.application", message),
    })?;
    let classifier = Arc::new(classifier);
    let mut kept = compiled();
    if kept.len() == COMPILED_KEPT {
        kept.remove(0);
    }
    kept.push((all, classifier.clone()));
    Ok(classifier)
}

/// An endpoint's address and port, checked at `field`: a family some port
/// can reach.
fn peer_endpoint(
    e: &EndpointSection,
    field: &str,
    caps: Capabilities<'_>,
) -> Result<(String, u16), ConfigError> {
    let port = check_endpoint(e, field)?;
    match e.address.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) if !caps.has_v4 => Err(ConfigError::new(
            format!("{field}.address"),
            "an IPv4 peer, but no port has an IPv4 address to reach it from",
        )),
        Ok(IpAddr::V6(_)) if !caps.has_v6 => Err(ConfigError::new(
            format!("{field}.address"),
            "an IPv6 peer, but no port has a global IPv6 address to reach it from",
        )),
        _ => Ok((e.address.clone(), port)),
    }
}

/// A peer's `endpoints`: named uniquely, each reachable.
fn named_endpoints(
    p: &PeerSection,
    field: &str,
    caps: Capabilities<'_>,
) -> Result<Vec<(String, String, u16)>, ConfigError> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(p.endpoints.len());
    for (j, e) in p.endpoints.iter().enumerate() {
        let efield = format!("{field}.endpoints[{j}]");
        if !is_dns_label(&e.name) || !names.insert(e.name.as_str()) {
            return Err(ConfigError::new(
                format!("{efield}.name"),
                format!(
                    "{:?} must be a DNS label used by no other endpoint of the peer",
                    e.name
                ),
            ));
        }
        let section = EndpointSection {
            address: e.address.clone(),
            port: e.port,
        };
        let (host, port) = peer_endpoint(&section, &efield, caps)?;
        if out.iter().any(|(_, h, p)| (h, p) == (&host, &port)) {
            return Err(ConfigError::new(
                format!("{efield}.address"),
                format!("{host} port {port} is listed twice"),
            ));
        }
        out.push((e.name.clone(), host, port));
    }
    Ok(out)
}

fn check_endpoint(e: &EndpointSection, field: &str) -> Result<u16, ConfigError> {
    if !is_host(&e.address) {
        return Err(ConfigError::new(
            format!("{field}.address"),
            format!("{:?} is neither an IP address nor a host name", e.address),
        ));
    }
    u16::try_from(e.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ConfigError::new(
                format!("{field}.port"),
                format!("{} is out of range 1..=65535", e.port),
            )
        })
}

fn check_site(site: &SiteSection) -> Result<(), ConfigError> {
    if !is_dns_label(&site.site_id) {
        return Err(ConfigError::new(
            "site.site_id",
            format!("{:?} must be a DNS label (a-z, 0-9, '-')", site.site_id),
        ));
    }
    if let Some(e) = &site.tunnel_endpoint {
        check_endpoint(e, "site.tunnel_endpoint")?;
    }
    for (i, p) in site.peers.iter().enumerate() {
        if !is_dns_label(&p.site_id) || p.site_id == site.site_id {
            return Err(ConfigError::new(
                format!("site.peers[{i}].site_id"),
                format!("{:?} must be another site's id", p.site_id),
            ));
        }
    }
    Ok(())
}

fn compile_policy(
    policy: &PolicySection,
    classifier: &Classifier,
) -> Result<Vec<Rule>, ConfigError> {
    let mut priorities = HashSet::new();
    let mut rules = Vec::with_capacity(policy.rules.len());
    if policy.rules.is_empty() {
        return Err(ConfigError::new(
            format!("policy[{}].rule", policy.name),
            "at least one rule",
        ));
    }
    for (i, r) in policy.rules.iter().enumerate() {
        let field = format!("policy[{}].rule[{i}]", policy.name);
        if !priorities.insert(r.priority) {
            return Err(ConfigError::new(
                format!("{field}.priority"),
                format!("{} is used by another rule of the policy", r.priority),
            ));
        }
        match (r.action, &r.path_selection) {
            (RuleAction::Route, None) => {
                return Err(ConfigError::new(
                    format!("{field}.path_selection"),
                    "required for route rules",
                ))
            }
            (RuleAction::Allow | RuleAction::Deny, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{field}.path_selection"),
                    "only route rules select a path",
                ))
            }
            (_, Some(ps)) => check_thresholds(&ps.thresholds, &field)?,
            _ => {}
        }
        if r.duplicate && r.action != RuleAction::Route {
            return Err(ConfigError::new(
                format!("{field}.duplicate"),
                "only route rules send over two paths",
            ));
        }
        if r.qos_class.is_some() && r.action == RuleAction::Deny {
            return Err(ConfigError::new(
                format!("{field}.qos_class"),
                "a deny rule's flows are dropped, not queued",
            ));
        }
        let mut conditions = Vec::with_capacity(r.conditions.len());
        for (j, c) in r.conditions.iter().enumerate() {
            conditions.push(compile_condition(c, classifier).map_err(|message| {
                ConfigError::new(format!("{field}.conditions[{j}].value"), message)
            })?);
        }
        rules.push(Rule {
            policy: policy.name.clone(),
            index: i as u32,
            slot: crate::stats::rule_slot(&policy.name, i as u32),
            priority: r.priority,
            action: r.action,
            conditions,
            path_selection: r.path_selection.clone(),
            duplicate: r.duplicate,
            qos_class: r.qos_class,
        });
    }
    Ok(rules)
}

fn check_thresholds(t: &Thresholds, field: &str) -> Result<(), ConfigError> {
    for (name, value, max) in [
        ("max_latency_ms", t.max_latency_ms, f64::MAX),
        ("max_packet_loss_pct", t.max_packet_loss_pct, 100.0),
        ("max_jitter_ms", t.max_jitter_ms, f64::MAX),
        ("min_bandwidth_mbps", t.min_bandwidth_mbps, f64::MAX),
    ] {
        if !value.is_finite() || !(0.0..=max).contains(&value) {
            return Err(ConfigError::new(
                format!("{field}.path_selection.thresholds.{name}"),
                format!("{value} must be between 0 and {max} (0: no limit)"),
            ));
        }
    }
    Ok(())
}

fn compile_condition(c: &ConditionSection, classifier: &Classifier) -> Result<Match, String> {
    let v = c.value.trim();
    let invalid = |what: &str| format!("{v:?} is not {what}");
    Ok(match c.kind {
        ConditionKind::Application => match classifier.pattern(v) {
            Some(pattern) => Match::Application(v.to_owned(), pattern),
            None => return Err(format!(
                "{v:?} is not an application of this data plane's catalogue (built-in plus dpi.application)"
            )),
        },
        ConditionKind::Category => Category::ALL
            .iter()
            .copied()
            .find(|cat| cat.to_string() == v)
            .map(Match::Category)
            .ok_or_else(|| invalid("one of the ten categories (Web, Video, VoIP, ...)"))?,
        ConditionKind::SourcePrefix => Match::SourcePrefix(v.parse().map_err(|_| invalid("an IP prefix"))?),
        ConditionKind::DestinationPrefix => {
            Match::DestinationPrefix(v.parse().map_err(|_| invalid("an IP prefix"))?)
        }
        ConditionKind::DestinationPort => Match::DestinationPort(
            v.parse().ok().filter(|p| *p != 0).ok_or_else(|| invalid("a port, 1-65535"))?,
        ),
        ConditionKind::Dscp => Match::Dscp(
            v.parse().ok().filter(|d| *d < 64).ok_or_else(|| invalid("a DSCP value, 0-63"))?,
        ),
        ConditionKind::Protocol => Match::Protocol(
            ip_protocol(v).ok_or_else(|| invalid("tcp, udp, icmp, icmpv6 or a protocol number, 0-255"))?,
        ),
    })
}

#[cfg(test)]
mod tests;
