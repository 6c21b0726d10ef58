//! The `patronus.io/v1` custom resources: Site, Peer and Policy, with exactly
//! the spec and status fields of the product (camelCase in YAML), their
//! printer columns and short names, and validation in the schema: ranges,
//! patterns and enumerations as OpenAPI, and CEL rules (x-kubernetes-validations)
//! where one field depends on another.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An address (IP or host name) and a UDP port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// IPv4 or IPv6 address, or a host name.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// UDP port, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// A site this site peers with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SitePeer {
    /// The other site's id.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub site_id: String,
    /// Its address.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
}

/// A site's settings for one of its WAN uplinks: the data plane's
/// configuration file defines the uplink (its port, address and next hop,
/// hardware only the gateway knows); each field given here replaces the
/// file's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteUplink {
    /// The uplink's name in the data plane's configuration.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Shape everything that leaves by it to this rate (Mbit/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.008, max = 400000.0))]
    pub rate_mbps: Option<f64>,
    /// The shaper's burst at line rate (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1514))]
    pub burst_bytes: Option<u32>,
    /// Framing bytes each packet costs beyond its IP packet (38 on
    /// Ethernet; 0 to count IP packets alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 256))]
    pub overhead_bytes: Option<u32>,
    /// What a GB over it costs (any currency; only compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cost_per_gb: Option<f64>,
    /// Nominal bandwidth (Mbit/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u32>,
    /// A label: mpls, internet, lte...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub color: Option<String>,
    /// BFD with the uplink's router at these timers: the file's session,
    /// else single hop to the file's next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdTimers>,
}

/// A branch, hub or cloud location with a Patronus gateway.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "patronus.io",
    version = "v1",
    kind = "Site",
    namespaced,
    status = "SiteStatus",
    shortname = "psite",
    printcolumn = r#"{"name":"Site-ID","type":"string","jsonPath":".spec.siteId"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Tunnels-Up","type":"integer","jsonPath":".status.tunnelsUp"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.peers.all(p, p.siteId != self.siteId)").message("a site does not peer with itself"))]
pub struct SiteSpec {
    /// Unique across sites; cannot change once set.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("siteId is immutable"))]
    pub site_id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    pub display_name: String,
    /// Region, such as us-east-1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = r"^([a-z]([-a-z0-9]{0,61}[a-z0-9])?)?$"))]
    pub region: String,
    /// Where peers reach this site's tunnels.
    pub tunnel_endpoint: Endpoint,
    /// Sites this site peers with.
    #[serde(default)]
    pub peers: Vec<SitePeer>,
    /// Settings for the uplinks its data planes' configuration files
    /// define, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(u, self.exists_one(o, o.name == u.name))").message("each uplink is listed once"))]
    pub uplinks: Vec<SiteUplink>,
    /// Settings for the QoS classes of its shaped uplinks, by class; each
    /// field given replaces what its data planes' files set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("(has(self.RealTime) && has(self.RealTime.limitPercent) ? self.RealTime.limitPercent : 0) + (has(self.Interactive) && has(self.Interactive.minPercent) ? self.Interactive.minPercent : 0) + (has(self.Streaming) && has(self.Streaming.minPercent) ? self.Streaming.minPercent : 0) + (has(self.Standard) && has(self.Standard.minPercent) ? self.Standard.minPercent : 0) + (has(self.Bulk) && has(self.Bulk.minPercent) ? self.Bulk.minPercent : 0) <= 100").message("RealTime's limitPercent and the minPercents add up to over 100%"))]
    pub qos_classes: Option<SiteQosClasses>,
}

/// A site's QoS classes, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct SiteQosClasses {
    /// Voice, games, name lookups: strict priority up to its limit.
    #[serde(default, rename = "RealTime", skip_serializing_if = "Option::is_none")]
    pub real_time: Option<RealTimeClass>,
    /// Remote desktops, shells, conferencing.
    #[serde(
        default,
        rename = "Interactive",
        skip_serializing_if = "Option::is_none"
    )]
    pub interactive: Option<WeightedClass>,
    /// Video streaming.
    #[serde(default, rename = "Streaming", skip_serializing_if = "Option::is_none")]
    pub streaming: Option<WeightedClass>,
    /// Web and the unidentified.
    #[serde(default, rename = "Standard", skip_serializing_if = "Option::is_none")]
    pub standard: Option<WeightedClass>,
    /// File transfer: served last.
    #[serde(default, rename = "Bulk", skip_serializing_if = "Option::is_none")]
    pub bulk: Option<WeightedClass>,
}

/// The RealTime class: served before the others, never beyond its limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealTimeClass {
    /// The share of the uplink's rate it never exceeds (%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub limit_percent: Option<u32>,
    /// Most packets it holds per tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_packets: Option<u32>,
    /// The DSCP its packets are marked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 63))]
    pub dscp: Option<u32>,
}

/// A class served by weight after RealTime, with a guaranteed minimum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minPercent) || !has(self.limitPercent) || self.minPercent <= self.limitPercent").message("minPercent is above limitPercent"))]
pub struct WeightedClass {
    /// Its share of what RealTime and the minimums leave, relative to the
    /// other weighted classes'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: Option<u32>,
    /// The share of the uplink's rate it is served first (%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub min_percent: Option<u32>,
    /// The share it never exceeds (%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub limit_percent: Option<u32>,
    /// Most packets it holds per tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_packets: Option<u32>,
    /// The DSCP its packets are marked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 63))]
    pub dscp: Option<u32>,
}

/// Lifecycle of a site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SitePhase {
    /// No data plane has applied its configuration yet.
    #[default]
    Pending,
    /// Its data planes run the current configuration with every tunnel up.
    Ready,
    /// Running, with tunnels down or an older configuration.
    Degraded,
    /// Its data planes refused the configuration or are unreachable.
    Failed,
}

/// What the control plane sees of a site.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// Lifecycle phase.
    pub phase: SitePhase,
    /// Tunnels up.
    pub tunnels_up: u32,
    /// When a data plane of the site last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_check: Option<Time>,
    /// The site's WireGuard public key (base64), for its peers' `wireguard.publicKey`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
}

/// A peer's WireGuard identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireGuard {
    /// The Curve25519 public key, base64 (44 characters).
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$"))]
    pub public_key: String,
}

/// A tunnel peer of a site: another gateway, a cloud VPC or a road warrior.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "patronus.io",
    version = "v1",
    kind = "Peer",
    namespaced,
    status = "PeerStatus",
    shortname = "ppeer",
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".spec.siteId"}"#,
    printcolumn = r#"{"name":"Connected","type":"boolean","jsonPath":".status.connected"}"#,
    printcolumn = r#"{"name":"Latency-ms","type":"number","jsonPath":".status.latencyMs"}"#,
    printcolumn = r#"{"name":"Loss-%","type":"number","jsonPath":".status.packetLoss"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.bfdEnabled) && self.bfdEnabled) || has(self.tunnelAddress)").message("bfdEnabled needs tunnelAddress (the peer's address inside the tunnel, which BFD talks to)"))]
#[x_kube(validation = Rule::new("(has(self.bfdEnabled) && self.bfdEnabled) || (!has(self.tunnelAddress) && !has(self.bfd))").message("tunnelAddress and bfd are only for BFD: set bfdEnabled"))]
pub struct PeerSpec {
    /// The site this peer belongs to.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub site_id: String,
    /// Where the peer's tunnel listens.
    pub endpoint: Endpoint,
    /// Its WireGuard identity.
    pub wireguard: WireGuard,
    /// Compress tunnel payloads (Patronus peers only).
    #[serde(default)]
    pub compression: bool,
    /// Run BFD inside the tunnel: on every path to a Patronus peer
    /// (`slaProbes`), one session toward a stock one.
    #[serde(default)]
    pub bfd_enabled: bool,
    /// Every endpoint of a peer with several (one per remote uplink), by
    /// name; `endpoint` must be one of them (the primary one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<NamedEndpoint>,
    /// The peer is a Patronus gateway: measure each path to it with in-band
    /// probes (its data plane needs uplinks).
    #[serde(default)]
    pub sla_probes: bool,
    /// Shape the peer's tunnel to this rate (Mbit/s) on each shaped uplink
    /// of its site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.008, max = 400000.0))]
    pub rate_mbps: Option<f64>,
    /// The peer's IPv4 address inside the tunnel, which BFD talks to (from
    /// the first IPv4 address of this site's tunnel). Only with bfdEnabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 7, max = 15))]
    pub tunnel_address: Option<String>,
    /// BFD's timers toward the peer; absent fields keep the defaults
    /// (300 ms × 3). Only with bfdEnabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdTimers>,
}

/// A BFD session's timers (RFC 5880 §6.8.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdTimers {
    /// How often we would like to send (ms; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub desired_min_tx_ms: Option<u32>,
    /// How often we can take packets (ms; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub required_min_rx_ms: Option<u32>,
    /// Packets missed before a path is declared down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: Option<u32>,
}

/// One of a peer's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedEndpoint {
    /// The remote uplink's name.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// IP address or host name.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// UDP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// What the control plane sees of a peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// A tunnel to the peer is up.
    pub connected: bool,
    /// Round trip (ms) of the path the peer's traffic takes; absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Percent of probes lost on that path; absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss: Option<f64>,
    /// Each path to the peer as its site's data plane reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PeerPathStatus>,
}

/// One path to a peer, as its site's data plane last reported it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerPathStatus {
    /// Stable name: `site:uplink->peer[:endpoint]`.
    pub path_id: String,
    /// The peer's default traffic takes it now.
    pub active: bool,
    /// It answers its probes (true for a path that is not probed).
    pub up: bool,
    /// Its BFD session: `Up`, `Down`, `Init` or `AdminDown`; absent when
    /// the peer runs no BFD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}

/// Which sites a policy applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteSelector {
    /// All must match; empty selects every site.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// What a rule does with a matching flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Steer it over the path its pathSelection picks.
    Route,
    /// Forward it normally.
    Allow,
    /// Drop it.
    Deny,
}

/// What a condition compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConditionType {
    /// An application name as the classifier reports it.
    Application,
    /// One of the ten categories.
    Category,
    /// The flow's source is in this prefix.
    SourcePrefix,
    /// The flow's destination is in this prefix.
    DestinationPrefix,
    /// The destination port.
    DestinationPort,
    /// The DSCP value.
    Dscp,
    /// The IP protocol: tcp, udp, icmp, icmpv6 or its number.
    Protocol,
}

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleCondition {
    /// What is compared.
    #[serde(rename = "type")]
    pub kind: ConditionType,
    /// With what.
    #[schemars(length(min = 1, max = 64))]
    pub value: String,
}

/// Path-selection strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The path with the lowest latency.
    LowestLatency,
    /// The path with the most bandwidth.
    HighestBandwidth,
    /// The cheapest path.
    LeastCost,
}

/// Limits a path must stay within; absent means no limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_latency_ms: Option<f64>,
    /// Percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_packet_loss_pct: Option<f64>,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_jitter_ms: Option<f64>,
    /// Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_bandwidth_mbps: Option<f64>,
}

/// How a route rule picks its path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathSelection {
    /// What "best" means.
    pub strategy: Strategy,
    /// Limits a path must stay within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action == 'route' ? has(self.pathSelection) : !has(self.pathSelection)").message("route rules need a pathSelection; allow and deny rules have none"))]
#[x_kube(validation = Rule::new("self.action != 'deny' || !has(self.qosClass)").message("deny rules drop their flows and have no qosClass"))]
pub struct PolicyRule {
    /// What a matching flow gets.
    pub action: Action,
    /// Higher wins; unique within the policy.
    pub priority: u32,
    /// All must match.
    #[serde(default)]
    pub conditions: Vec<RuleCondition>,
    /// For route rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_selection: Option<PathSelection>,
    /// For route rules: send each packet over the two best paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The class of the rule's flows on shaped uplinks, in place of their
    /// category's (route and allow rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<QosClass>,
}

/// QoS classes, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum QosClass {
    /// Strict priority, capped: voice, games, name lookups.
    RealTime,
    /// Remote desktops, shells, conferencing.
    Interactive,
    /// Video streaming.
    Streaming,
    /// Web and the unidentified.
    Standard,
    /// File transfer: served last.
    Bulk,
}

/// Rules for the flows of the sites a selector picks.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "patronus.io",
    version = "v1",
    kind = "Policy",
    plural = "policies",
    namespaced,
    status = "PolicyStatus",
    shortname = "ppol",
    printcolumn = r#"{"name":"Sites","type":"string","jsonPath":".status.selectedSites"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.rules.all(r, self.rules.exists_one(o, o.priority == r.priority))").message("rule priorities are unique within a policy"))]
pub struct PolicySpec {
    /// Which sites it applies to.
    #[serde(default)]
    pub site_selector: SiteSelector,
    /// At least one rule.
    #[schemars(length(min = 1))]
    pub rules: Vec<PolicyRule>,
}

/// What the control plane sees of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Ids of the sites the selector matches.
    #[serde(default)]
    pub selected_sites: Vec<String>,
    /// The generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Standard conditions (Ready).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
