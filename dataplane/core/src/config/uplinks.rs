//! `[[uplink]]` and `[paths]`: the site's WAN uplinks and how its paths
//! are probed. The paths themselves (uplinks × each peer's endpoints) are
//! built with the tunnel's peers ([`super::tunnel::compile`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use patronus_proto::names::is_dns_label;
use serde::Deserialize;

use super::site::{BfdAuthSection, BfdSection};
use super::{port_index, ConfigError, PortInfo, PortKind};
use crate::paths::bfd::{BfdEnds, Hops};
use crate::paths::sla::{MeterSettings, MAX_WINDOW};
use crate::paths::{Choosing, Uplink, UplinkBfd, MAX_UPLINKS};
use crate::qos::ShaperConfig;
use crate::route::RouteTable;

/// `[[uplink]]`: one WAN uplink of the site.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// Unique among uplinks, a DNS label: it names the paths over it.
    pub name: String,
    /// The `[[port]]` it leaves by.
    pub port: String,
    /// The outer source address (one of the port's); absent: the port's
    /// address of the endpoint's family.
    #[serde(default)]
    pub address: Option<String>,
    /// The router its datagrams go to, in one of the port's subnets;
    /// absent: endpoints are on the port's link.
    #[serde(default)]
    pub next_hop: Option<String>,
    /// What a GB over it costs (any currency; only compared).
    #[serde(default)]
    pub cost_per_gb: f64,
    /// Nominal bandwidth in Mbit/s (0: unknown).
    #[serde(default)]
    pub bandwidth_mbps: u32,
    /// A label: mpls, internet, lte... (a DNS label, or empty).
    #[serde(default)]
    pub color: String,
    /// Shape everything that leaves by the uplink's port to this rate
    /// (Mbit/s, 0.008-400000; absent: not shaped).
    #[serde(default)]
    pub rate_mbps: Option<f64>,
    /// The shaper's burst at line rate (bytes; absent: 1 ms at the rate,
    /// at least two full-size frames).
    #[serde(default)]
    pub burst_bytes: Option<u32>,
    /// Framing bytes each packet costs on the link beyond its IP packet
    /// (absent: 38, Ethernet's header, FCS, preamble and gap).
    #[serde(default)]
    pub overhead_bytes: Option<u16>,
    /// BFD with the uplink's router, so that the uplink is taken out when
    /// the router stops answering (absent: none).
    #[serde(default)]
    pub bfd: Option<UplinkBfdSection>,
}

/// `uplink.bfd`: a BFD session from the uplink's address to its router
/// (single hop, RFC 5881) or to an address beyond it (multihop, RFC 5883).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkBfdSection {
    /// The remote's IPv4 address; absent: the uplink's `next_hop`.
    #[serde(default)]
    pub address: Option<String>,
    /// Multihop (UDP 4784) to an address that is not on the port's link.
    #[serde(default)]
    pub multihop: bool,
    /// Multihop: the least TTL a packet may arrive with (1-255; default
    /// 254, at most one router between, as FRR's default).
    #[serde(default)]
    pub min_ttl: Option<u8>,
    /// As `peer.bfd.desired_min_tx_ms`.
    #[serde(default)]
    pub desired_min_tx_ms: Option<u32>,
    /// As `peer.bfd.required_min_rx_ms`.
    #[serde(default)]
    pub required_min_rx_ms: Option<u32>,
    /// As `peer.bfd.detect_multiplier`.
    #[serde(default)]
    pub detect_multiplier: Option<u8>,
    /// As `peer.bfd.auth`.
    #[serde(default)]
    pub auth: Option<BfdAuthSection>,
}

impl UplinkBfdSection {
    /// The session of uplink `name` (`field`) of port `port` (`info`)
    /// from `address` (its own, when given) with router `next_hop`.
    fn compile(
        &self,
        (name, field): (&str, &str),
        (port, info): (u16, &PortInfo),
        connected: &RouteTable,
        address: Option<IpAddr>,
        next_hop: Option<IpAddr>,
    ) -> Result<UplinkBfd, ConfigError> {
        let at = format!("{field}.bfd.address");
        let remote = match (&self.address, next_hop) {
            (Some(text), _) => text
                .parse::<IpAddr>()
                .map_err(|_| ConfigError::new(&at, format!("{text:?} is not an IP address")))?,
            (None, Some(hop)) => hop,
            (None, None) => {
                return Err(ConfigError::new(
                    at,
                    "the uplink has no next_hop to run BFD with: give the router's address",
                ))
            }
        };
        let IpAddr::V4(remote) = remote else {
            return Err(ConfigError::new(
                at,
                "BFD over IPv6 is not supported yet: give an IPv4 address",
            ));
        };
        if info.owns(IpAddr::V4(remote)) || remote.is_unspecified() || remote.is_multicast() {
            return Err(ConfigError::new(
                at,
                format!("{remote} is not a remote unicast address"),
            ));
        }
        let on_link = connected
            .lookup(IpAddr::V4(remote))
            .is_some_and(|r| r.port == port && r.via.is_none());
        let hops = if self.multihop {
            let min_ttl = self.min_ttl.unwrap_or(254);
            if min_ttl == 0 {
                return Err(ConfigError::new(
                    format!("{field}.bfd.min_ttl"),
                    "0 is outside 1-255",
                ));
            }
            Hops::Many { min_ttl }
        } else {
            if self.min_ttl.is_some() {
                return Err(ConfigError::new(
                    format!("{field}.bfd.min_ttl"),
                    "only for multihop: single-hop packets must arrive with TTL 255",
                ));
            }
            if !on_link {
                return Err(ConfigError::new(
                    at,
                    format!(
                        "{remote} is not in a subnet of port {:?}: single-hop BFD runs with \
                         a neighbour (set multihop = true for one further away)",
                        info.name
                    ),
                ));
            }
            Hops::One
        };
        let local = match address {
            Some(IpAddr::V4(a)) => Some(a),
            _ => info.v4_source(remote),
        };
        let Some(local) = local else {
            return Err(ConfigError::new(
                format!("{field}.port"),
                format!("port {:?} has no IPv4 address to run BFD from", info.name),
            ));
        };
        let timers = BfdSection {
            desired_min_tx_ms: self.desired_min_tx_ms,
            required_min_rx_ms: self.required_min_rx_ms,
            detect_multiplier: self.detect_multiplier,
            auth: self.auth.clone(),
        };
        let (timers, auth) = timers.compile(&format!("{field}.bfd"))?;
        Ok(UplinkBfd {
            // The site's id replaces "local" when the paths are built.
            id: format!("local:{name}->{remote}").into(),
            ends: BfdEnds {
                local,
                remote,
                hops,
                timers,
                auth,
            },
        })
    }
}

/// A site's settings for one of the uplinks its data plane's file defines,
/// from the control plane (the file names the uplink's port, address and
/// next hop: hardware only the gateway knows). Each field given replaces
/// the file's; the others keep it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkSettings {
    /// The uplink's name in the file.
    pub name: String,
    /// `rate_mbps`.
    pub rate_mbps: Option<f64>,
    /// `burst_bytes`.
    pub burst_bytes: Option<u32>,
    /// `overhead_bytes`.
    pub overhead_bytes: Option<u16>,
    /// `cost_per_gb`.
    pub cost_per_gb: Option<f64>,
    /// `bandwidth_mbps`.
    pub bandwidth_mbps: Option<u32>,
    /// `color`.
    pub color: Option<String>,
    /// `bfd`'s timers, over the file's session, or for a single-hop one
    /// to the file's next hop (the address, hops and key stay the file's).
    pub bfd: Option<BfdSection>,
}

impl UplinkSettings {
    /// The fields it sets, by their names in `[[uplink]]`.
    fn fields_set(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("rate_mbps", self.rate_mbps.is_some()),
            ("burst_bytes", self.burst_bytes.is_some()),
            ("overhead_bytes", self.overhead_bytes.is_some()),
            ("cost_per_gb", self.cost_per_gb.is_some()),
            ("bandwidth_mbps", self.bandwidth_mbps.is_some()),
            ("color", self.color.is_some()),
            ("bfd", self.bfd.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
    }

    /// `section` with these settings in place of its own.
    fn applied_to(&self, section: &UplinkSection) -> UplinkSection {
        UplinkSection {
            rate_mbps: self.rate_mbps.or(section.rate_mbps),
            burst_bytes: self.burst_bytes.or(section.burst_bytes),
            overhead_bytes: self.overhead_bytes.or(section.overhead_bytes),
            cost_per_gb: self.cost_per_gb.unwrap_or(section.cost_per_gb),
            bandwidth_mbps: self.bandwidth_mbps.unwrap_or(section.bandwidth_mbps),
            color: self.color.clone().unwrap_or_else(|| section.color.clone()),
            bfd: match &self.bfd {
                None => section.bfd.clone(),
                Some(t) => {
                    let file = section.bfd.clone().unwrap_or_default();
                    Some(UplinkBfdSection {
                        desired_min_tx_ms: t.desired_min_tx_ms.or(file.desired_min_tx_ms),
                        required_min_rx_ms: t.required_min_rx_ms.or(file.required_min_rx_ms),
                        detect_multiplier: t.detect_multiplier.or(file.detect_multiplier),
                        ..file
                    })
                }
            },
            ..section.clone()
        }
    }
}

/// Checks a site's uplink settings by themselves: names DNS labels, none
/// twice. Whether the file has them, and their values, are checked when
/// they are applied ([`compile_with`]).
///
/// # Errors
/// The first invalid entry (`site.uplinks[0].name`).
pub fn check_settings(settings: &[UplinkSettings]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, s) in settings.iter().enumerate() {
        if !is_dns_label(&s.name) {
            return Err(ConfigError::new(
                format!("site.uplinks[{i}].name"),
                format!("{:?} must be a DNS label (a-z, 0-9, '-')", s.name),
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err(ConfigError::new(
                format!("site.uplinks[{}].name", s.name),
                "named twice",
            ));
        }
    }
    Ok(())
}

/// [`compile`] of the file's uplinks with a site's settings applied; an
/// error in a value the settings gave names it there
/// (`site.uplinks[mpls].rate_mbps`).
///
/// # Errors
/// Settings for an uplink the file lacks, or the first invalid field.
pub fn compile_with(
    sections: &[UplinkSection],
    settings: &[UplinkSettings],
    ports: &[PortInfo],
    connected: &RouteTable,
    classes: &ShaperConfig,
) -> Result<(Vec<Uplink>, Vec<EgressShaper>), ConfigError> {
    let mut merged = sections.to_vec();
    for s in settings {
        let Some(section) = merged.iter_mut().find(|u| u.name == s.name) else {
            return Err(ConfigError::new(
                format!("site.uplinks[{}]", s.name),
                "this gateway's configuration file has no uplink of that name \
                 (its [[uplink]] sections name the ports)",
            ));
        };
        *section = s.applied_to(section);
    }
    compile(&merged, ports, connected, classes).map_err(|e| {
        let given = e.field.split_once('.').and_then(|(uplink, field)| {
            let index: usize = uplink
                .strip_prefix("uplink[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            let s = settings.iter().find(|s| s.name == merged[index].name)?;
            // `bfd.desired_min_tx_ms` is the settings' when they set `bfd`.
            let top = field.split('.').next().unwrap_or(field);
            s.fields_set()
                .any(|f| f == top)
                .then(|| format!("site.uplinks[{}].{field}", s.name))
        });
        match given {
            Some(field) => ConfigError::new(field, e.message),
            None => e,
        }
    })
}

/// Highest shaped rate (Mbit/s): 400 Gbit/s.
const MAX_RATE_MBPS: f64 = 400_000.0;

/// A shaped egress: the port an uplink leaves by, shaped to the uplink's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressShaper {
    /// The uplink's name: the metrics' `egress` label.
    pub name: Arc<str>,
    /// The port it shapes.
    pub port: u16,
    /// The shaper's settings.
    pub config: ShaperConfig,
}

impl UplinkSection {
    /// The shaper `rate_mbps` asks for, if any, with the `[qos]` classes of
    /// `classes`; `field` names the uplink.
    fn shaper(
        &self,
        field: &str,
        classes: &ShaperConfig,
    ) -> Result<Option<ShaperConfig>, ConfigError> {
        let Some(rate) = self.rate_mbps else {
            for (name, set) in [
                ("burst_bytes", self.burst_bytes.is_some()),
                ("overhead_bytes", self.overhead_bytes.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(
                        format!("{field}.{name}"),
                        "shapes nothing without rate_mbps",
                    ));
                }
            }
            return Ok(None);
        };
        if !(0.008..=MAX_RATE_MBPS).contains(&rate) {
            return Err(ConfigError::new(
                format!("{field}.rate_mbps"),
                format!("{rate} is outside 0.008-{MAX_RATE_MBPS}"),
            ));
        }
        let mut config = ShaperConfig {
            rate_bps: (rate * 1e6).round() as u64,
            ..*classes
        };
        if let Some(burst) = self.burst_bytes {
            if burst < 1_514 {
                return Err(ConfigError::new(
                    format!("{field}.burst_bytes"),
                    format!("{burst} is less than one full-size frame (1514)"),
                ));
            }
            config.burst_bytes = burst;
        }
        if let Some(overhead) = self.overhead_bytes {
            check_range_u16(&format!("{field}.overhead_bytes"), overhead, 0, 256)?;
            config.overhead_bytes = overhead;
        }
        config
            .validate()
            .map_err(|e| ConfigError::new(format!("{field}.rate_mbps"), e))?;
        Ok(Some(config))
    }
}

fn check_range_u16(field: &str, value: u16, min: u16, max: u16) -> Result<(), ConfigError> {
    super::check_range(field, u32::from(value), u32::from(min), u32::from(max))
}

/// `[paths]`: how paths to Patronus peers are probed and judged.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PathsSection {
    /// Time between probes on each path (ms), 10-10000.
    pub probe_interval_ms: u32,
    /// A probe unanswered this long is lost (ms); at least the interval.
    pub probe_timeout_ms: u32,
    /// Probes unanswered in a row that take a path down, 1-100.
    pub down_after: u32,
    /// Probes answered in a row that bring it back, 1-100.
    pub up_after: u32,
    /// Probes the figures are computed over, 10-4096.
    pub window: u32,
    /// How long a better path must stay better before traffic moves to it
    /// (ms, 0-600000), so that a flapping path is not followed.
    pub hold_ms: u32,
    /// Whether the default order moves traffic back to an earlier path that
    /// recovered (after `hold_ms`).
    pub revertive: bool,
}

impl Default for PathsSection {
    fn default() -> Self {
        let d = MeterSettings::default();
        PathsSection {
            probe_interval_ms: (d.interval_ns / 1_000_000) as u32,
            probe_timeout_ms: (d.timeout_ns / 1_000_000) as u32,
            down_after: d.down_after,
            up_after: d.up_after,
            window: d.window as u32,
            hold_ms: 2_000,
            revertive: true,
        }
    }
}

impl PathsSection {
    /// The meters' settings and how paths are chosen between.
    ///
    /// # Errors
    /// A value out of range, by field.
    pub fn compile(&self) -> Result<Choosing, ConfigError> {
        super::check_range(
            "paths.probe_interval_ms",
            self.probe_interval_ms,
            10,
            10_000,
        )?;
        super::check_range(
            "paths.probe_timeout_ms",
            self.probe_timeout_ms,
            self.probe_interval_ms,
            60_000,
        )?;
        super::check_range("paths.down_after", self.down_after, 1, 100)?;
        super::check_range("paths.up_after", self.up_after, 1, 100)?;
        super::check_range("paths.window", self.window, 10, MAX_WINDOW as u32)?;
        super::check_range("paths.hold_ms", self.hold_ms, 0, 600_000)?;
        Ok(Choosing {
            meter: MeterSettings {
                interval_ns: u64::from(self.probe_interval_ms) * 1_000_000,
                timeout_ns: u64::from(self.probe_timeout_ms) * 1_000_000,
                down_after: self.down_after,
                up_after: self.up_after,
                window: self.window as usize,
            },
            hold_ns: u64::from(self.hold_ms) * 1_000_000,
            revertive: self.revertive,
        })
    }
}

/// Validates the uplinks against the ports and their connected subnets;
/// returns them and the shapers they ask for.
///
/// # Errors
/// The first invalid field (`uplink[1].next_hop`).
pub fn compile(
    sections: &[UplinkSection],
    ports: &[PortInfo],
    connected: &RouteTable,
    classes: &ShaperConfig,
) -> Result<(Vec<Uplink>, Vec<EgressShaper>), ConfigError> {
    if sections.len() > MAX_UPLINKS {
        return Err(ConfigError::new(
            "uplink",
            format!("at most {MAX_UPLINKS} uplinks"),
        ));
    }
    let mut names = HashSet::new();
    let mut uplinks = Vec::with_capacity(sections.len());
    let mut shapers = Vec::new();
    let mut shaped_ports = HashMap::new();
    for (i, u) in sections.iter().enumerate() {
        let field = format!("uplink[{i}]");
        if !is_dns_label(&u.name) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("{:?} must be a DNS label (a-z, 0-9, '-')", u.name),
            ));
        }
        if !names.insert(u.name.as_str()) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "used by another uplink",
            ));
        }
        let port = port_index(ports, format!("{field}.port"), &u.port)?;
        let info = &ports[usize::from(port)];
        if info.kind != PortKind::Ethernet {
            return Err(ConfigError::new(
                format!("{field}.port"),
                "an uplink leaves by a device port, not the tunnel",
            ));
        }
        let address = match &u.address {
            None => None,
            Some(text) => {
                let a: IpAddr = text.parse().map_err(|_| {
                    ConfigError::new(
                        format!("{field}.address"),
                        format!("{text:?} is not an IP address"),
                    )
                })?;
                if !info.owns(a) {
                    return Err(ConfigError::new(
                        format!("{field}.address"),
                        format!("{a} is not an address of port {:?}", info.name),
                    ));
                }
                Some(a)
            }
        };
        let next_hop = match &u.next_hop {
            None => None,
            Some(text) => {
                let a: IpAddr = text.parse().map_err(|_| {
                    ConfigError::new(
                        format!("{field}.next_hop"),
                        format!("{text:?} is not an IP address"),
                    )
                })?;
                let on_link = connected
                    .lookup(a)
                    .is_some_and(|r| r.port == port && r.via.is_none());
                if !on_link || info.owns(a) {
                    return Err(ConfigError::new(
                        format!("{field}.next_hop"),
                        format!("{a} is not a neighbour in a subnet of port {:?}", info.name),
                    ));
                }
                Some(a)
            }
        };
        if !u.cost_per_gb.is_finite() || u.cost_per_gb < 0.0 {
            return Err(ConfigError::new(
                format!("{field}.cost_per_gb"),
                format!("{} must be 0 or more", u.cost_per_gb),
            ));
        }
        if !u.color.is_empty() && !is_dns_label(&u.color) {
            return Err(ConfigError::new(
                format!("{field}.color"),
                format!("{:?} must be a DNS label (mpls, internet, lte)", u.color),
            ));
        }
        if let Some(config) = u.shaper(&field, classes)? {
            // One shaper per port: two would each let the full rate through.
            if let Some(other) = shaped_ports.insert(port, u.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.rate_mbps"),
                    format!(
                        "port {:?} is shaped already by uplink {other:?}; a port has one shaper",
                        info.name
                    ),
                ));
            }
            shapers.push(EgressShaper {
                name: Arc::from(u.name.as_str()),
                port,
                config,
            });
        }
        let bfd = match &u.bfd {
            Some(b) => Some(b.compile(
                (&u.name, &field),
                (port, info),
                connected,
                address,
                next_hop,
            )?),
            None => None,
        };
        uplinks.push(Uplink {
            name: u.name.clone(),
            port,
            address,
            next_hop,
            bfd,
            cost_per_gb: u.cost_per_gb,
            bandwidth_mbps: u.bandwidth_mbps,
            color: u.color.clone(),
        });
    }
    Ok((uplinks, shapers))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::testing::key_file;

    const PORTS: &str = r#"
        [[port]]
        name = "wan0"
        device = "net_ring0"
        addresses = ["192.0.2.2/24"]
        [[port]]
        name = "wan1"
        device = "net_ring1"
        addresses = ["198.51.100.2/24", "203.0.113.2/24"]
    "#;

    const PEER: &str = r#"
        [[peer]]
        name = "hq"
        endpoints = [
            { name = "mpls", address = "192.0.2.50", port = 51820 },
            { name = "inet", address = "198.51.100.50", port = 51820 },
        ]
        sla_probes = true
        wireguard = { public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }
        allowed_ips = ["10.9.0.0/24"]
    "#;

    fn text(name: &str, uplinks: &str, peer: &str) -> String {
        let key = key_file(name, [7; 32]);
        format!(
            "{PORTS}[tunnel]\nprivate_key_file = \"{}\"\n{uplinks}\n{peer}",
            key.display()
        )
    }

    fn uplinks(second: &str) -> String {
        format!(
            r#"
            [[uplink]]
            name = "mpls"
            port = "wan0"
            next_hop = "192.0.2.1"
            cost_per_gb = 0.5
            bandwidth_mbps = 50
            color = "mpls"
            [[uplink]]
            {second}
            "#
        )
    }

    const INET: &str = r#"name = "inet"
            port = "wan1"
            address = "203.0.113.2""#;

    fn err(text: String) -> (String, String) {
        let e = Config::from_toml(&text).unwrap().validate(1).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn an_uplink_runs_bfd_with_its_router_or_beyond_it() {
        use crate::paths::bfd::Hops;
        let text = text(
            "uplink-bfd",
            &uplinks(&format!(
                "{INET}\nbfd = {{ address = \"192.0.2.77\", multihop = true, \
                 desired_min_tx_ms = 50 }}"
            ))
            .replacen(
                "color = \"mpls\"",
                "color = \"mpls\"\nbfd = { detect_multiplier = 5 }",
                1,
            ),
            PEER,
        );
        let cfg = Config::from_toml(&text).unwrap().validate(1).unwrap();
        let uplinks = &cfg.tunnel.as_ref().unwrap().paths.uplinks;
        // MPLS: single hop with its next hop, from the port's address.
        let mpls = uplinks[0].bfd.as_ref().unwrap();
        assert_eq!(&*mpls.id, "local:mpls->192.0.2.1");
        assert_eq!(mpls.ends.local.to_string(), "192.0.2.2");
        assert_eq!(mpls.ends.remote.to_string(), "192.0.2.1");
        assert_eq!((mpls.ends.hops, mpls.ends.port()), (Hops::One, 3784));
        assert_eq!(mpls.ends.timers.detect_mult, 5);
        assert_eq!(mpls.ends.timers.desired_min_tx_us, 300_000, "FRR's default");
        // Internet: multihop from its own address, FRR's TTL floor.
        let inet = uplinks[1].bfd.as_ref().unwrap();
        assert_eq!(inet.ends.local.to_string(), "203.0.113.2");
        assert_eq!(inet.ends.remote.to_string(), "192.0.2.77");
        assert_eq!(
            (inet.ends.hops, inet.ends.port()),
            (Hops::Many { min_ttl: 254 }, 4784)
        );
        assert!(inet.ends.accepts_ttl(254) && !inet.ends.accepts_ttl(253));
        assert!(mpls.ends.accepts_ttl(255) && !mpls.ends.accepts_ttl(254));
        assert_eq!(inet.ends.timers.desired_min_tx_us, 50_000);
    }

    #[test]
    fn uplinks_times_endpoints_make_the_paths() {
        let cfg = Config::from_toml(&text("paths-ok", &uplinks(INET), PEER))
            .unwrap()
            .validate(1)
            .unwrap();
        let paths = &cfg.tunnel.as_ref().unwrap().paths;
        let ids: Vec<&str> = paths.paths.iter().map(|p| &*p.id).collect();
        assert_eq!(
            ids,
            [
                "local:mpls->hq:mpls",
                "local:mpls->hq:inet",
                "local:inet->hq:mpls",
                "local:inet->hq:inet"
            ]
        );
        assert!(paths.paths.iter().all(|p| p.probed && p.endpoint.is_some()));
        assert_eq!(
            paths.uplinks[0].next_hop,
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            paths.uplinks[1].address,
            Some("203.0.113.2".parse().unwrap())
        );
        // The first endpoint is the primary one the handshake starts with.
        let peer = &cfg.tunnel.as_ref().unwrap().config.peers[0];
        assert_eq!(peer.endpoint, Some("192.0.2.50:51820".parse().unwrap()));
    }

    #[test]
    fn a_sites_settings_replace_the_files_and_errors_name_them() {
        use super::UplinkSettings;
        use crate::config::site::SiteSections;

        let file = text("site-uplinks", &uplinks(INET), PEER);
        let snapshot = Config::from_toml(&file).unwrap().validate(1).unwrap();
        assert!(snapshot.shapers.is_empty());
        let apply = |settings: Vec<UplinkSettings>| {
            let sections = Config::from_toml(&file).unwrap().site_sections();
            let sections = SiteSections {
                uplinks: settings,
                ..sections
            };
            let caps =
                crate::config::site::Capabilities::of(&snapshot.ports, &snapshot.dpi.classifier);
            let mut next = snapshot.clone();
            sections
                .compile(caps)
                .and_then(|site| next.set_site(site))
                .map(|()| next)
        };

        // The control plane shapes inet and makes mpls cheaper; the rest
        // stays as the file has it.
        let next = apply(vec![
            UplinkSettings {
                name: "inet".into(),
                rate_mbps: Some(20.0),
                overhead_bytes: Some(0),
                ..UplinkSettings::default()
            },
            UplinkSettings {
                name: "mpls".into(),
                cost_per_gb: Some(0.1),
                ..UplinkSettings::default()
            },
        ])
        .unwrap();
        assert_eq!(next.shapers.len(), 1);
        assert_eq!(&*next.shapers[0].name, "inet");
        assert_eq!(next.shapers[0].config.rate_bps, 20_000_000);
        assert_eq!(next.shapers[0].config.overhead_bytes, 0);
        let paths = &next.tunnel.as_ref().unwrap().paths;
        assert_eq!(paths.uplinks[0].cost_per_gb, 0.1);
        assert_eq!(paths.uplinks[0].bandwidth_mbps, 50, "the file's");
        assert_eq!(paths.uplinks[0].color, "mpls", "the file's");

        let refused = |settings: UplinkSettings| apply(vec![settings]).unwrap_err().field;
        let lte = UplinkSettings {
            name: "lte".into(),
            rate_mbps: Some(5.0),
            ..UplinkSettings::default()
        };
        assert_eq!(refused(lte), "site.uplinks[lte]");
        let too_fast = UplinkSettings {
            name: "mpls".into(),
            rate_mbps: Some(500_000.0),
            ..UplinkSettings::default()
        };
        assert_eq!(refused(too_fast), "site.uplinks[mpls].rate_mbps");
        let bad_color = UplinkSettings {
            name: "inet".into(),
            color: Some("Not A Label".into()),
            ..UplinkSettings::default()
        };
        assert_eq!(refused(bad_color), "site.uplinks[inet].color");
        let unnamed = UplinkSettings::default();
        assert_eq!(refused(unnamed), "site.uplinks[0].name");
        let twice = vec![
            UplinkSettings {
                name: "inet".into(),
                ..UplinkSettings::default()
            };
            2
        ];
        assert_eq!(apply(twice).unwrap_err().field, "site.uplinks[inet].name");

        // BFD timers from the site: the MPLS uplink, which has none in the
        // file, runs a single-hop session with its next hop; the internet
        // uplink has no next hop to run one with.
        let bfd = |name: &str, desired: u32| UplinkSettings {
            name: name.into(),
            bfd: Some(crate::config::site::BfdSection {
                desired_min_tx_ms: Some(desired),
                ..Default::default()
            }),
            ..UplinkSettings::default()
        };
        let next = apply(vec![bfd("mpls", 100)]).unwrap();
        let mpls = &next.tunnel.as_ref().unwrap().paths.uplinks[0];
        let session = mpls.bfd.as_ref().expect("BFD from the site");
        assert_eq!(session.ends.remote.to_string(), "192.0.2.1");
        assert_eq!(session.ends.timers.desired_min_tx_us, 100_000);
        assert_eq!(session.ends.timers.required_min_rx_us, 300_000, "default");
        assert_eq!(
            apply(vec![bfd("inet", 100)]).unwrap_err().field,
            "site.uplinks[inet].bfd.address"
        );
        assert_eq!(
            apply(vec![bfd("mpls", 5)]).unwrap_err().field,
            "site.uplinks[mpls].bfd.desired_min_tx_ms"
        );
    }

    #[test]
    fn invalid_paths_are_refused_by_field() {
        let cases = [
            (
                uplinks(&INET.replace("wan1", "wan9")),
                PEER.to_owned(),
                "uplink[1].port",
            ),
            (
                uplinks(&INET.replace("inet", "mpls")),
                PEER.to_owned(),
                "uplink[1].name",
            ),
            (
                uplinks(&INET.replace("203.0.113.2", "192.0.2.2")),
                PEER.to_owned(),
                "uplink[1].address",
            ),
            (
                uplinks(&format!("{INET}\nnext_hop = \"192.0.2.1\"")),
                PEER.to_owned(),
                "uplink[1].next_hop",
            ),
            (
                uplinks(&format!("{INET}\ncost_per_gb = -1")),
                PEER.to_owned(),
                "uplink[1].cost_per_gb",
            ),
            (
                uplinks(INET),
                PEER.replace("name = \"inet\"", "name = \"mpls\""),
                "peer[hq].endpoints[1].name",
            ),
            (
                uplinks(INET),
                PEER.replace(
                    "sla_probes",
                    "endpoint = { address = \"192.0.2.99\", port = 51820 }\nsla_probes",
                ),
                "peer[hq].endpoint",
            ),
            (String::new(), PEER.to_owned(), "peer[hq].endpoints"),
            (
                String::new(),
                PEER.replace(
                    "{ name = \"inet\", address = \"198.51.100.50\", port = 51820 },",
                    "",
                ),
                "peer[hq].sla_probes",
            ),
            (
                // A stock peer's BFD runs on its paths too: a tunnel
                // address but no uplinks.
                "addresses = [\"10.99.0.2/24\"]".to_owned(),
                PEER.replace(
                    "{ name = \"inet\", address = \"198.51.100.50\", port = 51820 },",
                    "",
                )
                .replace(
                    "sla_probes = true",
                    "bfd_enabled = true\ntunnel_address = \"10.9.0.1\"",
                ),
                "peer[hq].bfd_enabled",
            ),
            (
                uplinks(INET),
                format!(
                    "{PEER}\n[[policy]]\nname = \"voice\"\n[[policy.rule]]\naction = \"allow\"\n\
                     priority = 1\nduplicate = true"
                ),
                "policy[voice].rule[0].duplicate",
            ),
            (
                uplinks(&format!("{INET}\nbfd = {{}}")),
                PEER.to_owned(),
                "uplink[1].bfd.address",
            ),
            (
                uplinks(&format!("{INET}\nbfd = {{ address = \"192.0.2.1\" }}")),
                PEER.to_owned(),
                "uplink[1].bfd.address",
            ),
            (
                uplinks(&format!("{INET}\nbfd = {{ address = \"2001:db8::1\" }}")),
                PEER.to_owned(),
                "uplink[1].bfd.address",
            ),
            (
                uplinks(&format!("{INET}\nbfd = {{ address = \"203.0.113.2\" }}")),
                PEER.to_owned(),
                "uplink[1].bfd.address",
            ),
            (
                uplinks(&format!(
                    "{INET}\nbfd = {{ address = \"203.0.113.1\", min_ttl = 250 }}"
                )),
                PEER.to_owned(),
                "uplink[1].bfd.min_ttl",
            ),
            (
                uplinks(&format!(
                    "{INET}\nbfd = {{ address = \"203.0.113.1\", desired_min_tx_ms = 5 }}"
                )),
                PEER.to_owned(),
                "uplink[1].bfd.desired_min_tx_ms",
            ),
            (
                uplinks(&format!(
                    "{INET}\nbfd = {{ address = \"192.0.2.9\", multihop = true, min_ttl = 0 }}"
                )),
                PEER.to_owned(),
                "uplink[1].bfd.min_ttl",
            ),
            (
                format!("{}\n[paths]\nprobe_interval_ms = 5", uplinks(INET)),
                PEER.to_owned(),
                "paths.probe_interval_ms",
            ),
            (
                format!("{}\n[paths]\nprobe_timeout_ms = 50", uplinks(INET)),
                PEER.to_owned(),
                "paths.probe_timeout_ms",
            ),
        ];
        for (i, (uplinks, peer, field)) in cases.into_iter().enumerate() {
            let (got, message) = err(text(&format!("paths-bad-{i}"), &uplinks, &peer));
            assert_eq!(got, field, "case {i}: {message}");
        }
        // Without a tunnel, an uplink can only shape.
        let e = Config::from_toml(&format!("{PORTS}{}", uplinks(INET)))
            .unwrap()
            .validate(1)
            .unwrap_err();
        assert_eq!(e.field, "uplink[0]");
    }

    const SHAPED: &str = r#"
        [[uplink]]
        name = "branch"
        port = "wan0"
        rate_mbps = 20
        burst_bytes = 30000
        overhead_bytes = 44
        [[uplink]]
        name = "lte"
        port = "wan1"
        rate_mbps = 0.064
    "#;

    #[test]
    fn an_uplink_with_a_rate_shapes_its_port_with_or_without_a_tunnel() {
        let with_tunnel = text("shaped", SHAPED, PEER);
        for text in [format!("{PORTS}{SHAPED}"), with_tunnel] {
            let cfg = Config::from_toml(&text).unwrap().validate(1).unwrap();
            let shapers: Vec<_> = cfg
                .shapers
                .iter()
                .map(|s| {
                    let c = &s.config;
                    (
                        &*s.name,
                        s.port,
                        c.rate_bps,
                        c.burst_bytes,
                        c.overhead_bytes,
                    )
                })
                .collect();
            assert_eq!(
                shapers,
                [
                    ("branch", 0, 20_000_000, 30_000, 44),
                    ("lte", 1, 64_000, 0, 38)
                ]
            );
        }
    }

    #[test]
    fn invalid_shaping_is_refused_by_field() {
        let cases = [
            ("rate_mbps = 20", "rate_mbps = 0", "uplink[0].rate_mbps"),
            ("rate_mbps = 20", "rate_mbps = 1e9", "uplink[0].rate_mbps"),
            ("rate_mbps = 20", "rate_mbps = nan", "uplink[0].rate_mbps"),
            (
                "burst_bytes = 30000",
                "burst_bytes = 1000",
                "uplink[0].burst_bytes",
            ),
            (
                "overhead_bytes = 44",
                "overhead_bytes = 300",
                "uplink[0].overhead_bytes",
            ),
            ("rate_mbps = 20", "", "uplink[0].burst_bytes"),
            ("port = \"wan1\"", "port = \"wan0\"", "uplink[1].rate_mbps"),
        ];
        for (i, (from, to, field)) in cases.into_iter().enumerate() {
            let text = format!("{PORTS}{}", SHAPED.replacen(from, to, 1));
            let e = Config::from_toml(&text).unwrap().validate(1).unwrap_err();
            assert_eq!(e.field, field, "case {i}: {}", e.message);
        }
    }
}
