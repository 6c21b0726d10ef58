//! The data plane's configuration: a TOML file (or the embedded default),
//! validated as a whole into an immutable [`Snapshot`] that workers read.
//!
//! Validation never stops at the first typo silently and never half-applies:
//! [`Config::validate`] either returns a complete snapshot or a
//! [`ConfigError`] naming the offending field (`port[1].addresses[0]`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::route::{Route, RouteTable};
use site::{Capabilities, PeerSection, PolicySection, SiteSection, SiteSections, SiteState};
use std::sync::Arc;

mod addresses;
pub mod dns;
mod error;
pub mod policy;
pub mod qos;
pub mod site;
mod tunnel;
pub mod uplinks;

pub use addresses::AddressSet;
pub use error::ConfigError;

pub use tunnel::{TunnelLocal, TunnelSection, TunnelSnapshot, TUNNEL_MAC, TUNNEL_PORT_NAME};

/// The configuration compiled into the binary, used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/default.toml");

/// The file as written (TOML). Unknown keys are rejected.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// DPDK environment.
    #[serde(default)]
    pub dpdk: DpdkSection,
    /// Poll-mode worker settings.
    #[serde(default)]
    pub worker: WorkerSection,
    /// Neighbour (ARP / IPv6 ND) settings.
    #[serde(default)]
    pub neighbors: NeighborSection,
    /// ICMP error generation.
    #[serde(default)]
    pub icmp: IcmpSection,
    /// Metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// How peer endpoints' host names are resolved.
    #[serde(default)]
    pub dns: dns::DnsSection,
    /// The gateway's interfaces, in order; routes name them.
    #[serde(default, rename = "port")]
    pub ports: Vec<PortSection>,
    /// Static routes (connected routes come from the port addresses).
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    /// Static neighbour entries.
    #[serde(default, rename = "neighbor")]
    pub static_neighbors: Vec<StaticNeighborSection>,
    /// Application classification.
    #[serde(default)]
    pub dpi: DpiSection,
    /// The control plane to take the site's configuration from (absent: standalone).
    #[serde(default)]
    pub controlplane: ControlPlaneSection,
    /// This site (standalone mode).
    #[serde(default)]
    pub site: Option<SiteSection>,
    /// The site's WireGuard peers (standalone mode).
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
    /// The site's policies (standalone mode).
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicySection>,
    /// The WireGuard interface that carries traffic to the peers.
    #[serde(default)]
    pub tunnel: Option<TunnelSection>,
    /// The site's WAN uplinks (absent: tunnel datagrams follow the routes).
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<uplinks::UplinkSection>,
    /// How paths are probed.
    #[serde(default)]
    pub paths: uplinks::PathsSection,
    /// The classes of the shaped uplinks, and the DSCP each marks.
    #[serde(default)]
    pub qos: qos::QosSection,
}

/// Most control-plane replicas `[controlplane] servers` may name.
pub const MAX_CONTROL_PLANES: usize = 16;

/// `[controlplane]`: where the site's configuration comes from when the data
/// plane is managed. Everything else stays in this file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneSection {
    /// `http://host:port` or `https://host:port`; empty: standalone. A
    /// host name that resolves to several addresses is tried address by
    /// address.
    pub server: String,
    /// Several control-plane replicas (instead of `server`): the first is
    /// tried first, and a broken stream moves on to the next.
    pub servers: Vec<String>,
    /// The site this data plane serves.
    pub site_id: String,
    /// This instance's identity; empty: the host name.
    pub dataplane_id: String,
    /// File holding the bearer token (mode 600).
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) for an https server.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that require mutual TLS.
    pub tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM; mode 600).
    pub tls_key: Option<std::path::PathBuf>,
    /// Sends the token over clear text (`http://`) to a server off loopback,
    /// which is otherwise refused.
    pub insecure: bool,
    /// First wait before reconnecting (doubles up to `reconnect_max_ms`).
    pub reconnect_min_ms: u32,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_ms: u32,
    /// How often counters are reported to the control plane.
    pub telemetry_interval_ms: u32,
}

impl Default for ControlPlaneSection {
    fn default() -> Self {
        ControlPlaneSection {
            server: String::new(),
            servers: Vec::new(),
            site_id: String::new(),
            dataplane_id: String::new(),
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            insecure: false,
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            telemetry_interval_ms: 5_000,
        }
    }
}

impl ControlPlaneSection {
    /// True when a control plane manages the site's configuration.
    pub fn is_managed(&self) -> bool {
        !self.server.is_empty() || !self.servers.is_empty()
    }

    /// The control-plane replicas to try, in order.
    pub fn endpoints(&self) -> Vec<&str> {
        if self.servers.is_empty() {
            vec![self.server.as_str()]
        } else {
            self.servers.iter().map(String::as_str).collect()
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !self.is_managed() {
            return Ok(());
        }
        let field = if self.servers.is_empty() {
            "controlplane.server"
        } else {
            "controlplane.servers"
        };
        if !self.server.is_empty() && !self.servers.is_empty() {
            return Err(ConfigError::new(field, "give server or servers, not both"));
        }
        if self.servers.len() > MAX_CONTROL_PLANES {
            return Err(ConfigError::new(
                field,
                format!("at most {MAX_CONTROL_PLANES} replicas"),
            ));
        }
        for server in self.endpoints() {
            if !server.starts_with("http://") && !server.starts_with("https://") {
                return Err(ConfigError::new(
                    field,
                    format!("{server:?} must be http://host:port or https://host:port"),
                ));
            }
        }
        if self.endpoints().iter().any(|s| s.starts_with("https://")) && self.tls_ca.is_none() {
            return Err(ConfigError::new(
                "controlplane.tls_ca",
                "required for an https:// server",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::new(
                "controlplane.tls_key",
                "tls_cert and tls_key go together",
            ));
        }
        if !patronus_proto::names::is_dns_label(&self.site_id) {
            return Err(ConfigError::new(
                "controlplane.site_id",
                "required: the site's id (a-z, 0-9, '-')",
            ));
        }
        let id_ok = self.dataplane_id.len() <= 253
            && self
                .dataplane_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(ConfigError::new(
                "controlplane.dataplane_id",
                "at most 253 characters of A-Z, a-z, 0-9, '-', '_', '.'",
            ));
        }
        for (field, value, min, max) in [
            ("reconnect_min_ms", self.reconnect_min_ms, 10, 600_000),
            (
                "reconnect_max_ms",
                self.reconnect_max_ms,
                self.reconnect_min_ms,
                600_000,
            ),
            (
                "telemetry_interval_ms",
                self.telemetry_interval_ms,
                100,
                600_000,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::new(
                    format!("controlplane.{field}"),
                    format!("{value} is out of range {min}..={max}"),
                ));
            }
        }
        Ok(())
    }
}

/// `[dpdk]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpdkSection {
    /// EAL arguments (`-l`, `--vdev`, `--in-memory`, ...); more may follow `--` on the command line.
    pub eal_args: Vec<String>,
    /// Packet buffers in the pool; 0 sizes it from ports, queues and rings.
    pub mempool_size: u32,
    /// Per-lcore buffer cache.
    pub mempool_cache: u32,
}

impl Default for DpdkSection {
    fn default() -> Self {
        DpdkSection {
            eal_args: Vec::new(),
            mempool_size: 0,
            mempool_cache: 256,
        }
    }
}

impl DpdkSection {
    /// A pool DPDK can create: big enough to start, a cache within DPDK's limit.
    fn check(&self) -> Result<(), ConfigError> {
        if self.mempool_size != 0 && self.mempool_size < 1024 {
            return Err(ConfigError::new(
                "dpdk.mempool_size",
                "must be 0 (automatic) or at least 1024",
            ));
        }
        if self.mempool_cache > 512 {
            return Err(ConfigError::new(
                "dpdk.mempool_cache",
                "must be at most 512 (RTE_MEMPOOL_CACHE_MAX_SIZE)",
            ));
        }
        Ok(())
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Flows each worker can track.
    pub flow_capacity: u32,
    /// Seconds without a packet before a flow is forgotten.
    pub flow_idle_timeout_s: u32,
    /// Sleep this long after an idle poll round (0: busy-poll, the production default).
    pub idle_sleep_us: u32,
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            flow_capacity: 1 << 20,
            flow_idle_timeout_s: 120,
            idle_sleep_us: 0,
        }
    }
}

impl WorkerSection {
    /// A flow table that can be allocated and flows that live at least a
    /// second; an idle sleep short enough not to overflow the rx rings.
    fn check(&self) -> Result<(), ConfigError> {
        if self.flow_capacity == 0 || self.flow_capacity > 1 << 24 {
            return Err(ConfigError::new(
                "worker.flow_capacity",
                "must be between 1 and 16777216",
            ));
        }
        if self.flow_idle_timeout_s == 0 {
            return Err(ConfigError::new(
                "worker.flow_idle_timeout_s",
                "must be at least 1",
            ));
        }
        if self.idle_sleep_us > 100_000 {
            return Err(ConfigError::new(
                "worker.idle_sleep_us",
                "must be at most 100000 (0.1 s)",
            ));
        }
        Ok(())
    }
}

/// `[neighbors]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NeighborSection {
    /// Seconds a learned entry is used without re-confirmation.
    pub reachable_s: u32,
    /// Further seconds a stale entry is still used while being re-probed, before removal.
    pub stale_s: u32,
    /// Seconds between resolution requests for one address.
    pub retransmit_ms: u32,
    /// Requests sent before packets waiting on an address are dropped.
    pub max_probes: u32,
    /// Packets held per unresolved address.
    pub pending_per_neighbor: u32,
    /// Unresolved addresses each worker tracks at once.
    pub pending_neighbors: u32,
}

impl Default for NeighborSection {
    fn default() -> Self {
        NeighborSection {
            reachable_s: 30,
            stale_s: 600,
            retransmit_ms: 1000,
            max_probes: 3,
            pending_per_neighbor: 8,
            pending_neighbors: 64,
        }
    }
}

impl NeighborSection {
    /// Timers and queue sizes within what the neighbour manager and the
    /// workers' pending queues are sized for.
    fn check(&self) -> Result<(), ConfigError> {
        for (field, value, min, max) in [
            ("neighbors.reachable_s", self.reachable_s, 1, 86_400),
            ("neighbors.stale_s", self.stale_s, 0, 86_400),
            ("neighbors.retransmit_ms", self.retransmit_ms, 10, 60_000),
            ("neighbors.max_probes", self.max_probes, 1, 100),
            (
                "neighbors.pending_per_neighbor",
                self.pending_per_neighbor,
                1,
                256,
            ),
            (
                "neighbors.pending_neighbors",
                self.pending_neighbors,
                1,
                4096,
            ),
        ] {
            check_range(field, value, min, max)?;
        }
        Ok(())
    }
}

/// `[icmp]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IcmpSection {
    /// ICMP errors each worker may send per second (RFC 1812 4.3.2.8, RFC 4443 2.4(f)).
    pub errors_per_s: u32,
    /// Burst allowance for ICMP errors.
    pub errors_burst: u32,
}

impl Default for IcmpSection {
    fn default() -> Self {
        IcmpSection {
            errors_per_s: 100,
            errors_burst: 50,
        }
    }
}

impl IcmpSection {
    /// Rates a token bucket can hold (0 turns ICMP errors off).
    fn check(&self) -> Result<(), ConfigError> {
        check_range("icmp.errors_per_s", self.errors_per_s, 0, 1_000_000)?;
        check_range("icmp.errors_burst", self.errors_burst, 0, 1_000_000)
    }
}

/// `value` within `min..=max`, or an error naming `field` and the range.
fn check_range(field: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("{value} is out of range {min}..={max}"),
        ));
    }
    Ok(())
}

/// `[dpi]`: application classification of each flow's first packets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpiSection {
    /// Classify flows at all.
    pub enabled: bool,
    /// Packets with payload inspected per flow before the verdict is final.
    pub max_packets: u16,
    /// Payload bytes inspected per flow before the verdict is final.
    pub max_bytes: u32,
    /// TLS/QUIC hellos each worker can reassemble at once (4 KiB each; start only).
    pub reassembly_buffers: u32,
    /// User-defined applications, tried after the built-in catalogue's signatures (`[[dpi.application]]`).
    #[serde(rename = "application")]
    pub applications: Vec<crate::dpi::apps::AppSpec>,
}

impl Default for DpiSection {
    fn default() -> Self {
        let limits = crate::dpi::Limits::default();
        DpiSection {
            enabled: true,
            max_packets: limits.max_packets,
            max_bytes: limits.max_bytes,
            reassembly_buffers: 1024,
            applications: Vec::new(),
        }
    }
}

/// The classifier settings in force.
#[derive(Debug, Clone)]
pub struct DpiSnapshot {
    /// Classify flows at all.
    pub enabled: bool,
    /// Inspection bounds.
    pub limits: crate::dpi::Limits,
    /// TLS/QUIC hellos each worker can reassemble at once.
    pub reassembly_buffers: u32,
    /// The compiled catalogue (built-in plus user applications).
    pub classifier: std::sync::Arc<crate::dpi::Classifier>,
    /// The file's `[[dpi.application]]` entries compiled into it (the
    /// control plane's come after them).
    pub file_applications: std::sync::Arc<Vec<crate::dpi::apps::AppSpec>>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address for `/metrics` and `/healthz`; empty disables the endpoint.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9469".into(),
        }
    }
}

impl MetricsSection {
    /// An address the endpoint can bind, or none.
    fn check(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "metrics.listen",
                format!(
                    "{:?} is not an address:port (use \"\" to disable)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

/// `[[port]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortSection {
    /// Name used by routes and metrics (`lan`, `wan0`).
    pub name: String,
    /// DPDK device name (`net_af_packet0`, `0000:03:00.0`).
    pub device: String,
    /// Interface addresses with prefix length (`10.0.0.1/24`, `2001:db8::1/64`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// MTU (the largest IP packet sent out of this port).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Receive descriptors per queue.
    #[serde(default = "default_ring")]
    pub rx_ring: u16,
    /// Transmit descriptors per queue.
    #[serde(default = "default_ring")]
    pub tx_ring: u16,
    /// Accept frames for any destination MAC.
    #[serde(default)]
    pub promiscuous: bool,
}

impl PortSection {
    /// The port's own settings, at `field`: a name routes and metrics can
    /// use, a device, an MTU and rings DPDK accepts; neither name nor device
    /// taken by an earlier port (`names`, `devices`).
    fn check<'a>(
        &'a self,
        field: &str,
        names: &mut HashSet<&'a str>,
        devices: &mut HashSet<&'a str>,
    ) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 32
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!(
                    "{:?} must be 1-32 characters of letters, digits, '-' or '_'",
                    self.name
                ),
            ));
        }
        if !names.insert(self.name.as_str()) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("{:?} is used by another port", self.name),
            ));
        }
        if self.device.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.device"),
                "must name a DPDK device",
            ));
        }
        if !devices.insert(self.device.as_str()) {
            return Err(ConfigError::new(
                format!("{field}.device"),
                format!("{:?} is used by another port", self.device),
            ));
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(ConfigError::new(
                format!("{field}.mtu"),
                format!("{} is out of range 576..=9000", self.mtu),
            ));
        }
        for (ring, value) in [("rx_ring", self.rx_ring), ("tx_ring", self.tx_ring)] {
            if !(64..=16384).contains(&value) || !value.is_power_of_two() {
                return Err(ConfigError::new(
                    format!("{field}.{ring}"),
                    format!("{value} must be a power of two in 64..=16384"),
                ));
            }
        }
        Ok(())
    }
}

fn default_mtu() -> u16 {
    1500
}

fn default_ring() -> u16 {
    1024
}

/// `[[route]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Destination prefix (`0.0.0.0/0`, `2001:db8:2::/48`).
    pub prefix: String,
    /// Next-hop address; it must lie in a connected subnet unless `port` is given.
    #[serde(default)]
    pub via: Option<String>,
    /// Outgoing port; alone it means the prefix is on-link there.
    #[serde(default)]
    pub port: Option<String>,
}

impl RouteSection {
    /// The destination, written as a network (no host bits set).
    fn parse_prefix(&self, field: &str) -> Result<IpNet, ConfigError> {
        let prefix: IpNet = self.prefix.parse().map_err(|_| {
            ConfigError::new(
                format!("{field}.prefix"),
                format!("{:?} is not a prefix (10.1.0.0/16)", self.prefix),
            )
        })?;
        if prefix.trunc() != prefix {
            return Err(ConfigError::new(
                format!("{field}.prefix"),
                format!(
                    "{prefix} has host bits set; did you mean {}?",
                    prefix.trunc()
                ),
            ));
        }
        Ok(prefix)
    }

    /// The next hop, if given: of the prefix's family and not one of the
    /// gateway's own addresses (`owned`).
    fn parse_via(
        &self,
        field: &str,
        prefix: IpNet,
        owned: &[IpAddr],
    ) -> Result<Option<IpAddr>, ConfigError> {
        let Some(text) = &self.via else {
            return Ok(None);
        };
        let via: IpAddr = text.parse().map_err(|_| {
            ConfigError::new(
                format!("{field}.via"),
                format!("{text:?} is not an IP address"),
            )
        })?;
        if via.is_ipv4() != prefix.addr().is_ipv4() {
            return Err(ConfigError::new(
                format!("{field}.via"),
                format!("{via} is not of the same family as {prefix}"),
            ));
        }
        if owned.contains(&via) {
            return Err(ConfigError::new(
                format!("{field}.via"),
                format!("{via} is one of the gateway's own addresses"),
            ));
        }
        Ok(Some(via))
    }

    /// The port the route leaves by: the one named, else the one whose
    /// connected subnet in `routes` holds the next hop.
    fn out_port(
        &self,
        field: &str,
        via: Option<IpAddr>,
        ports: &[PortInfo],
        routes: &RouteTable,
    ) -> Result<u16, ConfigError> {
        match (&self.port, via) {
            (Some(name), _) => port_index(ports, format!("{field}.port"), name),
            (None, Some(via)) => match routes.lookup(via) {
                Some(connected) if connected.via.is_none() => Ok(connected.port),
                _ => Err(ConfigError::new(
                    format!("{field}.via"),
                    format!("{via} is not in a connected subnet; give `port` as well"),
                )),
            },
            (None, None) => Err(ConfigError::new(field, "needs `via`, `port`, or both")),
        }
    }
}

/// `[[neighbor]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticNeighborSection {
    /// The neighbour's IP address.
    pub ip: String,
    /// Its MAC address (`02:00:00:00:00:01`).
    pub mac: String,
    /// The port it is reached on.
    pub port: String,
}

impl StaticNeighborSection {
    /// The entry as the neighbour table holds it, checked at `field`: a
    /// unicast MAC on a port that exists.
    fn compile(&self, field: &str, ports: &[PortInfo]) -> Result<StaticNeighbor, ConfigError> {
        let ip: IpAddr = self.ip.parse().map_err(|_| {
            ConfigError::new(
                format!("{field}.ip"),
                format!("{:?} is not an IP address", self.ip),
            )
        })?;
        let mac = parse_mac(&self.mac)
            .filter(|m| m[0] & 1 == 0 && *m != [0; 6])
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.mac"),
                    format!("{:?} is not a unicast MAC (02:00:00:00:00:01)", self.mac),
                )
            })?;
        let port = port_index(ports, format!("{field}.port"), &self.port)?;
        Ok(StaticNeighbor { port, ip, mac })
    }
}

/// The index of the port named `name`, or an error at `field`.
fn port_index(ports: &[PortInfo], field: String, name: &str) -> Result<u16, ConfigError> {
    ports
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.index)
        .ok_or_else(|| ConfigError::new(field, format!("no port is named {name:?}")))
}

/// What is behind a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// A DPDK Ethernet device.
    Ethernet,
    /// The WireGuard tunnel interface: packets routed here are encrypted to
    /// a peer, and decrypted packets arrive from here. Always the last port.
    Tunnel,
}

/// One port as workers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Index in the config (and in every per-port array of the data plane).
    pub index: u16,
    /// Device or tunnel.
    pub kind: PortKind,
    /// Configured name.
    pub name: String,
    /// DPDK device name.
    pub device: String,
    /// MAC address (all zero until the port has started).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u16,
    /// IPv4 interface addresses.
    pub v4: Vec<Ipv4Net>,
    /// IPv6 interface addresses, the link-local one (derived from the MAC) first once known.
    pub v6: Vec<Ipv6Net>,
}

impl PortInfo {
    /// The address to source ICMPv4 errors and ARP requests from: the first
    /// IPv4 address, or the one on the same subnet as `toward` when there is one.
    pub fn v4_source(&self, toward: Ipv4Addr) -> Option<Ipv4Addr> {
        self.v4
            .iter()
            .find(|n| n.contains(&toward))
            .or_else(|| self.v4.first())
            .map(Ipv4Net::addr)
    }

    /// The address to source ICMPv6 and ND packets from toward `toward`:
    /// link-local for link-local destinations, else one on the same prefix,
    /// else the first global one.
    pub fn v6_source(&self, toward: Ipv6Addr) -> Option<Ipv6Addr> {
        let link_local = |a: &Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
        if link_local(&toward) {
            return self.v6.iter().map(Ipv6Net::addr).find(link_local);
        }
        self.v6
            .iter()
            .find(|n| n.contains(&toward))
            .or_else(|| self.v6.iter().find(|n| !link_local(&n.addr())))
            .or_else(|| self.v6.first())
            .map(Ipv6Net::addr)
    }

    /// Whether `addr` is one of this port's addresses.
    pub fn owns(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.iter().any(|n| n.addr() == a),
            IpAddr::V6(a) => self.v6.iter().any(|n| n.addr() == a),
        }
    }
}

/// A static neighbour entry after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticNeighbor {
    /// Port index.
    pub port: u16,
    /// Address.
    pub ip: IpAddr,
    /// MAC.
    pub mac: [u8; 6],
}

/// Everything a worker needs, validated and immutable. A new one replaces
/// the old between bursts; workers never see a mix.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases with every applied configuration.
    pub generation: u32,
    /// Ports in config order.
    pub ports: Vec<PortInfo>,
    /// Longest-prefix-match routes (connected and static).
    pub routes: RouteTable,
    /// Static neighbours.
    pub static_neighbors: Vec<StaticNeighbor>,
    /// Worker settings.
    pub worker: WorkerSection,
    /// Neighbour settings.
    pub neighbors: NeighborSection,
    /// ICMP settings.
    pub icmp: IcmpSection,
    /// Application classification.
    pub dpi: DpiSnapshot,
    /// The site, its peers and policies.
    pub site: Arc<SiteState>,
    /// What the peers' endpoint host names resolved to: set before
    /// [`Snapshot::set_site`], which looks them up here.
    pub hosts: Arc<dns::HostAddresses>,
    /// The tunnel interface and its peers, when `[tunnel]` is configured.
    pub tunnel: Option<Arc<TunnelSnapshot>>,
    /// The shaped egresses (uplinks with a rate), in uplink order.
    pub shapers: Vec<uplinks::EgressShaper>,
    /// The classes' settings and marks.
    pub qos: qos::QosSettings,
    /// `[tunnel]` with its key, kept to rebuild the tunnel when the peers change.
    tunnel_local: Option<Arc<TunnelLocal>>,
    /// The file's `[[uplink]]`s, kept to apply the site's settings to.
    uplink_sections: Arc<[uplinks::UplinkSection]>,
    /// The file's `[qos.classes]`, kept to apply the site's settings to.
    class_sections: qos::ClassesSection,
    /// The file's routes (connected and static), before the tunnel's are added.
    base_routes: RouteTable,
    /// Every IPv4 address of the gateway, for the per-packet "is it ours?" test.
    local_v4: AddressSet<Ipv4Addr>,
    /// Every IPv6 address of the gateway, link-local ones included once known.
    local_v6: AddressSet<Ipv6Addr>,
    /// Broadcast addresses of the connected IPv4 subnets (never forwarded).
    directed_broadcasts: AddressSet<Ipv4Addr>,
    /// The tunnel interface's port index, when there is one.
    tunnel_port: Option<u16>,
}

impl Snapshot {
    /// Whether `addr` is one of the gateway's IPv4 addresses.
    #[inline]
    pub fn is_local_v4(&self, addr: Ipv4Addr) -> bool {
        self.local_v4.contains(addr)
    }

    /// Whether `addr` is one of the gateway's IPv6 addresses.
    #[inline]
    pub fn is_local_v6(&self, addr: Ipv6Addr) -> bool {
        self.local_v6.contains(addr)
    }

    /// Whether `addr` is the broadcast address of a connected IPv4 subnet.
    #[inline]
    pub fn is_directed_broadcast(&self, addr: Ipv4Addr) -> bool {
        self.directed_broadcasts.contains(addr)
    }

    /// Rebuilds the address lists above from the ports; called whenever the
    /// ports' addresses change, so the packet path never walks the ports.
    fn index_addresses(&mut self) {
        let nets_v4 = || self.ports.iter().flat_map(|p| p.v4.iter());
        self.local_v4 = nets_v4().map(Ipv4Net::addr).collect();
        self.directed_broadcasts = nets_v4()
            .filter(|n| n.prefix_len() < 31)
            .map(Ipv4Net::broadcast)
            .collect();
        self.local_v6 = self
            .ports
            .iter()
            .flat_map(|p| p.v6.iter().map(Ipv6Net::addr))
            .collect();
        self.tunnel_port = self
            .ports
            .last()
            .filter(|p| p.kind == PortKind::Tunnel)
            .map(|p| p.index);
    }

    /// Puts `site` in force: its peers become the tunnel's (when there is
    /// one), their allowed IPs routes into it, and its uplink and class
    /// settings apply over the file's.
    ///
    /// # Errors
    /// A peer the tunnel cannot carry, or settings that do not fit the
    /// file's uplinks and classes, by field; the snapshot is unchanged.
    pub fn set_site(&mut self, site: SiteState) -> Result<(), ConfigError> {
        let shaped = self.uplink_sections.iter().any(|u| u.rate_mbps.is_some())
            || site.uplinks.iter().any(|u| u.rate_mbps.is_some());
        let qos = self
            .class_sections
            .compile_with(&site.qos_classes, shaped)?;
        let (uplinks, shapers) = uplinks::compile_with(
            &self.uplink_sections,
            &site.uplinks,
            &self.ports,
            &self.base_routes,
            &qos.shaper,
        )?;
        if shapers.is_empty() {
            if let Some(p) = site.peers.iter().find(|p| p.rate_bps.is_some()) {
                return Err(ConfigError::new(
                    format!("peer[{}].rate_mbps", p.name),
                    "no uplink is shaped: give one a rate_mbps",
                ));
            }
        }
        let local = self.tunnel_local.as_ref().map(|local| {
            let mut local = TunnelLocal::clone(local);
            local.uplinks = uplinks;
            Arc::new(local)
        });
        if let Some(local) = &local {
            let port = self
                .tunnel_port()
                .expect("a snapshot with [tunnel] has a tunnel port");
            let (tunnel, routes) =
                tunnel::compile(local, &site, port, &self.base_routes, &self.hosts)?;
            self.tunnel = Some(Arc::new(tunnel));
            self.routes = routes;
        }
        self.tunnel_local = local;
        self.shapers = shapers;
        self.qos = qos;
        self.site = Arc::new(site);
        Ok(())
    }

    /// The tunnel interface's port index, when there is one.
    #[inline]
    pub fn tunnel_port(&self) -> Option<u16> {
        self.tunnel_port
    }

    /// The port owning `addr`, if the address is one of ours.
    pub fn local_port(&self, addr: IpAddr) -> Option<u16> {
        self.ports.iter().find(|p| p.owns(addr)).map(|p| p.index)
    }

    /// Gives every port its MAC once the devices have started, and with it
    /// the EUI-64 link-local IPv6 address.
    pub fn set_port_macs(&mut self, macs: &[[u8; 6]]) {
        for (port, mac) in self.ports.iter_mut().zip(macs) {
            port.mac = *mac;
            let ll = link_local_from_mac(*mac);
            port.v6.retain(|n| n.addr() != ll);
            port.v6.insert(
                0,
                Ipv6Net::new(ll, 64).expect("64 is a valid prefix length"),
            );
        }
        self.index_addresses();
    }
}

/// Routes a port's subnets (`v4`, `v6`) out of it, with no next hop.
fn route_connected(routes: &mut RouteTable, port: u16, v4: &[Ipv4Net], v6: &[Ipv6Net]) {
    for net in v4
        .iter()
        .map(|n| IpNet::V4(*n))
        .chain(v6.iter().map(|n| IpNet::V6(*n)))
    {
        routes.insert(net.trunc(), Route { port, via: None });
    }
}

/// Parses a port's `addresses`, refusing any address that cannot be an
/// interface's or that `owned` (every address so far) already has.
fn interface_addresses(
    field: &str,
    texts: &[String],
    owned: &mut Vec<IpAddr>,
) -> Result<(Vec<Ipv4Net>, Vec<Ipv6Net>), ConfigError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (j, text) in texts.iter().enumerate() {
        let afield = format!("{field}.addresses[{j}]");
        let net: IpNet = text.parse().map_err(|_| {
            ConfigError::new(
                &afield,
                format!("{text:?} is not an address with prefix length (10.0.0.1/24)"),
            )
        })?;
        let addr = net.addr();
        let bad = match addr {
            IpAddr::V4(a) => {
                a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
            }
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast() || a.is_loopback(),
        };
        if bad {
            return Err(ConfigError::new(
                &afield,
                format!("{addr} cannot be an interface address"),
            ));
        }
        if let IpNet::V4(n) = net {
            if n.prefix_len() < 31
                && (addr == IpAddr::V4(n.network()) || addr == IpAddr::V4(n.broadcast()))
            {
                return Err(ConfigError::new(
                    &afield,
                    format!(
                        "{addr} is the network or broadcast address of {}",
                        n.trunc()
                    ),
                ));
            }
        }
        if owned.contains(&addr) {
            return Err(ConfigError::new(
                &afield,
                format!("{addr} is assigned twice"),
            ));
        }
        owned.push(addr);
        match net {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }
    Ok((v4, v6))
}

/// The EUI-64 link-local address of a MAC (RFC 4291 appendix A).
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// The dotted path of the key on the line holding byte `offset` of a TOML
/// text (`worker.flow_capacity`, `port[1].mtu`), for error messages.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let mut section = String::new();
    let mut arrays: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let header = |l: &str| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
    for l in text[..line_start].lines().map(str::trim) {
        if l.starts_with("[[") {
            let name = l.trim_matches(|c| c == '[' || c == ']').trim();
            let count = arrays.entry(name).or_insert(0);
            section = format!("{name}[{count}]");
            *count += 1;
        } else if l.starts_with('[') {
            section = header(l);
        }
    }
    if line.starts_with('[') {
        return Some(header(line));
    }
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    Some(if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The prefix of the variables in which Kubernetes' SR-IOV device plugin
/// tells a pod the PCI addresses of the virtual functions it was given.
const DEVICE_VARIABLE: &str = "PCIDEVICE_";

/// Replaces every `${PCIDEVICE_NAME}` in `text` with `lookup(PCIDEVICE_NAME)`,
/// so that one configuration serves every pod whatever VFs it was given
/// (`device = "${PCIDEVICE_INTEL_COM_SRIOV_WAN}"`, and the same in
/// `eal_args`). Other `${...}` are left as written: nothing else in the
/// environment reaches the configuration.
///
/// # Errors
/// A device variable that is not set, naming it and its line.
pub fn expand_devices(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}');
        let name = end.map(|end| &after[..end]);
        match name {
            Some(name)
                if name.len() > DEVICE_VARIABLE.len()
                    && name.starts_with(DEVICE_VARIABLE)
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                let Some(value) = lookup(name) else {
                    let line = text[..text.len() - rest.len() + start]
                        .matches('\n')
                        .count()
                        + 1;
                    return Err(ConfigError::new(
                        "<file>",
                        format!(
                            "${{{name}}} is not set (line {line}); the SR-IOV device plugin sets it for the resources the pod requests"
                        ),
                    ));
                };
                out.push_str(&rest[..start]);
                out.push_str(value.trim());
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push_str(&rest[..start + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl Config {
    /// Parses TOML text; syntax errors and unknown keys name the key and line.
    ///
    /// # Errors
    /// On TOML syntax errors, unknown keys or wrongly typed values.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let message = err.message().to_owned();
            match err.span() {
                Some(span) => {
                    let at = span.start.min(text.len());
                    let line = text[..at].matches('\n').count() + 1;
                    let field = field_at(text, at).unwrap_or_else(|| "<file>".to_owned());
                    ConfigError::new(field, format!("{message} (line {line})"))
                }
                None => ConfigError::new("<file>", message),
            }
        })
    }

    /// Reads and parses a file, after replacing `${PCIDEVICE_...}` with the
    /// environment's value (see [`expand_devices`]).
    ///
    /// # Errors
    /// When the file cannot be read, names an unset device variable, or does
    /// not parse.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::new("<file>", format!("cannot read {}: {err}", path.display()))
        })?;
        Self::from_toml(&expand_devices(&text, |name| std::env::var(name).ok())?)
    }

    /// Checks every field and compiles the snapshot workers use. The
    /// sections are checked in a fixed order, so that of several mistakes
    /// the same one is always reported.
    ///
    /// # Errors
    /// The first invalid field, by path.
    pub fn validate(&self, generation: u32) -> Result<Snapshot, ConfigError> {
        self.validate_resolved(generation, Arc::default())
    }

    /// The host names among the file's peer endpoints, for the resolver to
    /// look up before [`Config::validate_resolved`].
    pub fn host_names(&self) -> std::collections::BTreeSet<String> {
        dns::host_names(&self.peers)
    }

    /// [`Config::validate`] with the peers' endpoint host names looked up in
    /// `hosts`.
    ///
    /// # Errors
    /// The first invalid field, by path; a host name that did not resolve
    /// at the field naming it.
    pub fn validate_resolved(
        &self,
        generation: u32,
        hosts: Arc<dns::HostAddresses>,
    ) -> Result<Snapshot, ConfigError> {
        self.worker.check()?;
        self.neighbors.check()?;
        self.icmp.check()?;
        self.dpdk.check()?;
        self.metrics.check()?;
        self.dns.check()?;
        // Every address the gateway has: none is assigned twice, none is a next hop.
        let mut owned = Vec::new();
        let mut routes = RouteTable::default();
        let mut ports = self.validate_ports(&mut owned, &mut routes)?;
        let tunnel_local = self.validate_tunnel(&mut ports, &mut owned, &mut routes)?;
        self.validate_routes(&ports, &owned, &mut routes)?;
        let shaped = self.uplinks.iter().any(|u| u.rate_mbps.is_some());
        let qos = self.qos.compile(shaped)?;
        let (tunnel_local, shapers) =
            self.validate_uplinks(tunnel_local, &ports, &routes, &qos.shaper)?;
        let static_neighbors = self.validate_static_neighbors(&ports)?;
        let dpi = self.validate_dpi()?;
        self.controlplane.check()?;
        let site = self.validate_site(&ports, &dpi)?;
        let mut snapshot = Snapshot {
            generation,
            dpi,
            site: Arc::default(),
            hosts,
            tunnel: None,
            shapers,
            qos,
            tunnel_local,
            uplink_sections: self.uplinks.as_slice().into(),
            class_sections: self.qos.classes.clone(),
            base_routes: routes.clone(),
            ports,
            routes,
            static_neighbors,
            worker: self.worker.clone(),
            neighbors: self.neighbors.clone(),
            icmp: self.icmp.clone(),
            local_v4: AddressSet::default(),
            local_v6: AddressSet::default(),
            directed_broadcasts: AddressSet::default(),
            tunnel_port: None,
        };
        snapshot.index_addresses();
        snapshot.set_site(site)?;
        Ok(snapshot)
    }

    /// `[[port]]`: every port, its addresses added to `owned` and its
    /// subnets routed to it in `routes`.
    fn validate_ports(
        &self,
        owned: &mut Vec<IpAddr>,
        routes: &mut RouteTable,
    ) -> Result<Vec<PortInfo>, ConfigError> {
        if self.ports.is_empty() {
            return Err(ConfigError::new(
                "port",
                "at least one [[port]] is required",
            ));
        }
        if self.ports.len() > 32 {
            return Err(ConfigError::new(
                "port",
                "at most 32 ports are supported (RTE_MAX_ETHPORTS)",
            ));
        }
        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        let mut ports = Vec::with_capacity(self.ports.len());
        for (i, p) in self.ports.iter().enumerate() {
            let field = format!("port[{i}]");
            p.check(&field, &mut names, &mut devices)?;
            let (v4, v6) = interface_addresses(&field, &p.addresses, owned)?;
            route_connected(routes, i as u16, &v4, &v6);
            if p.name == TUNNEL_PORT_NAME {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!("{TUNNEL_PORT_NAME:?} names the [tunnel] interface"),
                ));
            }
            ports.push(PortInfo {
                index: i as u16,
                kind: PortKind::Ethernet,
                name: p.name.clone(),
                device: p.device.clone(),
                mac: [0; 6],
                mtu: p.mtu,
                v4,
                v6,
            });
        }
        Ok(ports)
    }

    /// `[tunnel]`, when present: its key is loaded and it becomes the last
    /// port, its addresses added to `owned` and its subnets routed into it.
    fn validate_tunnel(
        &self,
        ports: &mut Vec<PortInfo>,
        owned: &mut Vec<IpAddr>,
        routes: &mut RouteTable,
    ) -> Result<Option<TunnelLocal>, ConfigError> {
        let Some(section) = &self.tunnel else {
            return Ok(None);
        };
        let local = section.load()?;
        let (v4, v6) = interface_addresses("tunnel", &section.addresses, owned)?;
        let index = ports.len() as u16;
        route_connected(routes, index, &v4, &v6);
        ports.push(PortInfo {
            index,
            kind: PortKind::Tunnel,
            name: TUNNEL_PORT_NAME.to_owned(),
            device: String::new(),
            mac: TUNNEL_MAC,
            mtu: section.mtu,
            v4,
            v6,
        });
        Ok(Some(local))
    }

    /// `[[uplink]]` and `[paths]`: the uplinks kept with the tunnel whose
    /// paths they make, and the shapers they ask for. Without a tunnel an
    /// uplink can only shape its port.
    fn validate_uplinks(
        &self,
        local: Option<TunnelLocal>,
        ports: &[PortInfo],
        routes: &RouteTable,
        classes: &crate::qos::ShaperConfig,
    ) -> Result<(Option<Arc<TunnelLocal>>, Vec<uplinks::EgressShaper>), ConfigError> {
        let choosing = self.paths.compile()?;
        let (uplinks, shapers) = uplinks::compile(&self.uplinks, ports, routes, classes)?;
        match local {
            None => match self.uplinks.iter().position(|u| u.rate_mbps.is_none()) {
                Some(i) => Err(ConfigError::new(
                    format!("uplink[{i}]"),
                    "without a [tunnel] an uplink carries no paths and can only shape \
                     its port: give it rate_mbps, or configure the tunnel",
                )),
                None => Ok((None, shapers)),
            },
            Some(mut local) => {
                local.uplinks = uplinks;
                local.choosing = choosing;
                Ok((Some(Arc::new(local)), shapers))
            }
        }
    }

    /// `[[route]]`: static routes added to `routes`, in file order (a next
    /// hop given without a port must lie in a connected subnet).
    fn validate_routes(
        &self,
        ports: &[PortInfo],
        owned: &[IpAddr],
        routes: &mut RouteTable,
    ) -> Result<(), ConfigError> {
        let mut seen_prefixes = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("route[{i}]");
            let prefix = r.parse_prefix(&field)?;
            if !seen_prefixes.insert(prefix) {
                return Err(ConfigError::new(
                    format!("{field}.prefix"),
                    format!("{prefix} is routed twice"),
                ));
            }
            let via = r.parse_via(&field, prefix, owned)?;
            let port = r.out_port(&field, via, ports, routes)?;
            routes.insert(prefix, Route { port, via });
        }
        Ok(())
    }

    /// `[[neighbor]]`: the static entries, on ports that exist.
    fn validate_static_neighbors(
        &self,
        ports: &[PortInfo],
    ) -> Result<Vec<StaticNeighbor>, ConfigError> {
        self.static_neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| n.compile(&format!("neighbor[{i}]"), ports))
            .collect()
    }

    /// The file's site part (`[site]`, `[[peer]]`, `[[policy]]`): none when
    /// a control plane provides it, peers routed into a tunnel only when
    /// there is one, and compiled against the ports and the catalogue.
    fn validate_site(
        &self,
        ports: &[PortInfo],
        dpi: &DpiSnapshot,
    ) -> Result<SiteState, ConfigError> {
        let sections = self.site_sections();
        if self.controlplane.is_managed() && !sections.is_empty() {
            return Err(ConfigError::new(
                if self.site.is_some() { "site" } else if self.peers.is_empty() { "policy" } else { "peer" },
                "comes from the control plane when controlplane.server is set; remove it from the file",
            ));
        }
        if self.tunnel.is_none() {
            if let Some(p) = self.peers.iter().find(|p| !p.allowed_ips.is_empty()) {
                return Err(ConfigError::new(
                    format!("peer[{}].allowed_ips", p.name),
                    "routes into a tunnel, but no [tunnel] section configures one",
                ));
            }
        }
        sections.compile(Capabilities::of(ports, &dpi.classifier))
    }

    /// The file's `[site]`, `[[peer]]` and `[[policy]]`.
    pub fn site_sections(&self) -> SiteSections {
        SiteSections {
            site: self.site.clone(),
            peers: self.peers.clone(),
            policies: self.policies.clone(),
            applications: Vec::new(),
            uplinks: Vec::new(),
            qos_classes: qos::ClassesSection::default(),
        }
    }

    /// Checks `[dpi]` and compiles the application catalogue (off the packet path: at start and on reload).
    fn validate_dpi(&self) -> Result<DpiSnapshot, ConfigError> {
        let d = &self.dpi;
        if d.max_packets == 0 || d.max_packets > 1000 {
            return Err(ConfigError::new(
                "dpi.max_packets",
                "must be between 1 and 1000",
            ));
        }
        if d.max_bytes == 0 || d.max_bytes > 1 << 20 {
            return Err(ConfigError::new(
                "dpi.max_bytes",
                "must be between 1 and 1048576",
            ));
        }
        if d.reassembly_buffers > 1 << 20 {
            return Err(ConfigError::new(
                "dpi.reassembly_buffers",
                "must be at most 1048576",
            ));
        }
        let classifier = site::classifier_with(&d.applications, &[])?;
        Ok(DpiSnapshot {
            enabled: d.enabled,
            limits: crate::dpi::Limits {
                max_packets: d.max_packets,
                max_bytes: d.max_bytes,
            },
            reassembly_buffers: d.reassembly_buffers,
            classifier,
            file_applications: std::sync::Arc::new(d.applications.clone()),
        })
    }

    /// Fields that only take effect at start: a reload that changes them is refused.
    ///
    /// # Errors
    /// Names the first such field that differs.
    pub fn check_reloadable(&self, running: &Config) -> Result<(), ConfigError> {
        if self.dpdk != running.dpdk {
            return Err(ConfigError::new(
                "dpdk",
                "EAL and mempool settings apply at start only; restart to change them",
            ));
        }
        if self.controlplane != running.controlplane {
            return Err(ConfigError::new(
                "controlplane",
                "applies at start only; restart to change it",
            ));
        }
        if self.dns != running.dns {
            return Err(ConfigError::new(
                "dns",
                "applies at start only; restart to change it",
            ));
        }
        if self.metrics != running.metrics {
            return Err(ConfigError::new(
                "metrics.listen",
                "applies at start only; restart to change it",
            ));
        }
        if self.dpi.reassembly_buffers != running.dpi.reassembly_buffers {
            return Err(ConfigError::new(
                "dpi.reassembly_buffers",
                "applies at start only; restart to change it",
            ));
        }
        if self.worker.flow_capacity != running.worker.flow_capacity {
            return Err(ConfigError::new(
                "worker.flow_capacity",
                "applies at start only; restart to change it",
            ));
        }
        if self.ports.len() != running.ports.len() {
            return Err(ConfigError::new(
                "port",
                "ports can only be added or removed by a restart",
            ));
        }
        for (i, (new, old)) in self.ports.iter().zip(&running.ports).enumerate() {
            for (field, changed) in [
                ("name", new.name != old.name),
                ("device", new.device != old.device),
                ("rx_ring", new.rx_ring != old.rx_ring),
                ("tx_ring", new.tx_ring != old.tx_ring),
                ("promiscuous", new.promiscuous != old.promiscuous),
                ("mtu", new.mtu != old.mtu),
            ] {
                if changed {
                    return Err(ConfigError::new(
                        format!("port[{i}].{field}"),
                        "applies at start only; restart to change it",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[port]]
name = "lan"
device = "net_null0"
addresses = ["10.0.0.1/24", "fd00::1/64"]
[[port]]
name = "wan"
device = "net_null1"
addresses = ["10.0.1.1/24"]
"#;

    fn check(text: &str) -> Result<Snapshot, ConfigError> {
        Config::from_toml(text)?.validate(1)
    }

    #[test]
    fn embedded_default_is_valid() {
        let snap = check(EMBEDDED_DEFAULT).expect("the embedded default validates");
        assert_eq!(snap.ports.len(), 2);
    }

    #[test]
    fn base_config_gets_connected_routes() {
        let snap = check(BASE).unwrap();
        assert_eq!(snap.routes.len(), 3);
        assert_eq!(
            snap.routes
                .lookup("10.0.1.77".parse().unwrap())
                .unwrap()
                .port,
            1
        );
        assert_eq!(snap.local_port("fd00::1".parse().unwrap()), Some(0));
    }

    #[test]
    fn rejects_invalid_configs_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            ("[worker]\nflow_capacity = 0\n", "worker.flow_capacity"),
            ("[worker]\nflow_idle_timeout_s = 0\n", "worker.flow_idle_timeout_s"),
            ("[worker]\nidle_sleep_us = 500000\n", "worker.idle_sleep_us"),
            ("[neighbors]\nretransmit_ms = 1\n", "neighbors.retransmit_ms"),
            ("[neighbors]\npending_per_neighbor = 0\n", "neighbors.pending_per_neighbor"),
            ("[dpdk]\nmempool_size = 10\n", "dpdk.mempool_size"),
            ("[dpdk]\nmempool_cache = 4096\n", "dpdk.mempool_cache"),
            ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
            ("[[port]]\nname = \"lan\"\ndevice = \"net_null9\"\n", "port[2].name"),
            ("[[port]]\nname = \"x y\"\ndevice = \"net_null9\"\n", "port[2].name"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"net_null0\"\n", "port[2].device"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\nmtu = 100\n", "port[2].mtu"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\nrx_ring = 1000\n", "port[2].rx_ring"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\naddresses = [\"10.9.0.1/33\"]\n", "port[2].addresses[0]"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\naddresses = [\"10.9.0.0/24\"]\n", "port[2].addresses[0]"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\naddresses = [\"224.0.0.1/24\"]\n", "port[2].addresses[0]"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\naddresses = [\"10.0.0.1/24\"]\n", "port[2].addresses[0]"),
            ("[[route]]\nprefix = \"10.5.0.0/16\"\n", "route[0]"),
            ("[[route]]\nprefix = \"10.5.0.1/16\"\nvia = \"10.0.0.9\"\n", "route[0].prefix"),
            ("[[route]]\nprefix = \"banana\"\nvia = \"10.0.0.9\"\n", "route[0].prefix"),
            ("[[route]]\nprefix = \"10.5.0.0/16\"\nvia = \"10.77.0.9\"\n", "route[0].via"),
            ("[[route]]\nprefix = \"10.5.0.0/16\"\nvia = \"fd00::9\"\n", "route[0].via"),
            ("[[route]]\nprefix = \"10.5.0.0/16\"\nvia = \"10.0.0.1\"\n", "route[0].via"),
            ("[[route]]\nprefix = \"10.5.0.0/16\"\nport = \"dmz\"\n", "route[0].port"),
            (
                "[[route]]\nprefix = \"10.5.0.0/16\"\nport = \"lan\"\n[[route]]\nprefix = \"10.5.0.0/16\"\nport = \"wan\"\n",
                "route[1].prefix",
            ),
            ("[[neighbor]]\nip = \"10.0.0.9\"\nmac = \"01:00:5e:00:00:01\"\nport = \"lan\"\n", "neighbor[0].mac"),
            ("[controlplane]\nserver = \"http://127.0.0.1:50051\"\n", "controlplane.site_id"),
            ("[controlplane]\nserver = \"127.0.0.1:50051\"\nsite_id = \"hq\"\n", "controlplane.server"),
            ("[controlplane]\nservers = [\"http://a:50051\", \"b:50051\"]\nsite_id = \"hq\"\n", "controlplane.servers"),
            ("[controlplane]\nserver = \"http://a:50051\"\nservers = [\"http://b:50051\"]\nsite_id = \"hq\"\n", "controlplane.servers"),
            ("[controlplane]\nservers = [\"http://a:50051\", \"https://b:50051\"]\nsite_id = \"hq\"\n", "controlplane.tls_ca"),
            ("[controlplane]\nserver = \"https://cp:50051\"\nsite_id = \"hq\"\n", "controlplane.tls_ca"),
            ("[controlplane]\nserver = \"http://cp:50051\"\nsite_id = \"hq\"\nreconnect_min_ms = 1\n", "controlplane.reconnect_min_ms"),
            ("[controlplane]\nserver = \"http://cp:50051\"\nsite_id = \"hq\"\n[site]\nsite_id = \"hq\"\n", "site"),
            ("[controlplane]\nserver = \"http://cp:50051\"\nsite_id = \"hq\"\n[[peer]]\nname = \"a\"\nendpoint = { address = \"10.0.0.9\", port = 1 }\nwireguard = { public_key = \"\" }\n", "peer"),
            ("[[peer]]\nname = \"a\"\nendpoint = { address = \"10.0.0.9\", port = 1 }\nwireguard = { public_key = \"\" }\n", "peer[a].wireguard.public_key"),
            ("[[neighbor]]\nip = \"10.0.0.9\"\nmac = \"zz\"\nport = \"lan\"\n", "neighbor[0].mac"),
            ("[[neighbor]]\nip = \"x\"\nmac = \"02:00:00:00:00:01\"\nport = \"lan\"\n", "neighbor[0].ip"),
            ("[[neighbor]]\nip = \"10.0.0.9\"\nmac = \"02:00:00:00:00:01\"\nport = \"dmz\"\n", "neighbor[0].port"),
            ("[worker]\nflow_capacty = 5\n", "worker.flow_capacty"),
            ("[worker]\nflow_capacity = \"many\"\n", "worker.flow_capacity"),
            ("[[port]]\nname = \"dmz\"\ndevice = \"d\"\nmtu = \"big\"\n", "port[2].mtu"),
        ];
        for (extra, field) in cases {
            let text = format!("{BASE}\n{extra}");
            match check(&text) {
                Ok(_) => panic!("accepted invalid config:\n{extra}"),
                Err(err) => assert_eq!(&err.field, field, "for:\n{extra}\ngot: {err}"),
            }
        }
    }

    #[test]
    fn parse_errors_name_the_key_and_line() {
        let err = check(&format!("{BASE}\n[worker]\nflow_capacty = 5\n")).unwrap_err();
        assert!(err.message.contains("flow_capacty"), "{err}");
        assert!(err.message.contains("line"), "{err}");
    }

    #[test]
    fn no_ports_is_an_error() {
        assert_eq!(check("").unwrap_err().field, "port");
    }

    #[test]
    fn device_variables_are_expanded_and_nothing_else() {
        let lookup = |name: &str| {
            (name == "PCIDEVICE_INTEL_COM_SRIOV_WAN").then(|| "0000:3b:02.1\n".to_owned())
        };
        let text = "eal_args = [\"-a\", \"${PCIDEVICE_INTEL_COM_SRIOV_WAN}\"]\n\
                    device = \"${PCIDEVICE_INTEL_COM_SRIOV_WAN}\"\nname = \"${HOME}\"\nx = \"${PCIDEVICE_\"";
        let expanded = expand_devices(text, lookup).unwrap();
        assert_eq!(
            expanded,
            "eal_args = [\"-a\", \"0000:3b:02.1\"]\ndevice = \"0000:3b:02.1\"\nname = \"${HOME}\"\nx = \"${PCIDEVICE_\""
        );
        let err = expand_devices("a = 1\ndevice = \"${PCIDEVICE_LAN}\"", lookup).unwrap_err();
        assert_eq!(err.field, "<file>");
        assert!(
            err.message.contains("${PCIDEVICE_LAN} is not set (line 2)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn reload_refuses_start_only_fields() {
        let running = Config::from_toml(BASE).unwrap();
        let mut changed = running.clone();
        changed.ports[1].mtu = 9000;
        assert_eq!(
            changed.check_reloadable(&running).unwrap_err().field,
            "port[1].mtu"
        );
        let mut changed = running.clone();
        changed.worker.flow_capacity = 5;
        assert_eq!(
            changed.check_reloadable(&running).unwrap_err().field,
            "worker.flow_capacity"
        );
        let mut changed = running.clone();
        changed.ports[0].addresses.push("10.8.0.1/24".into());
        changed.worker.flow_idle_timeout_s = 5;
        assert!(
            changed.check_reloadable(&running).is_ok(),
            "addresses and timers reload"
        );
    }

    #[test]
    fn link_local_comes_from_the_mac() {
        assert_eq!(
            link_local_from_mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
        let mut snap = check(BASE).unwrap();
        snap.set_port_macs(&[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
        snap.set_port_macs(&[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
        assert_eq!(snap.ports[0].v6.len(), 2, "set twice, still one link-local");
        assert_eq!(
            snap.ports[0].v6_source("fe80::9".parse().unwrap()),
            Some("fe80::ff:fe00:1".parse().unwrap())
        );
        assert_eq!(
            snap.ports[0].v6_source("2001:db8::9".parse().unwrap()),
            Some("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("2:00:0a:ff:00:01"), None);
    }
}
