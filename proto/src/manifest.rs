//! Manifests: Site, Peer, Policy and Application documents in the shape of the
//! `patronus.io/v1` CRDs (YAML or JSON, camelCase), as `patronusctl apply`
//! reads them and `get -o yaml` writes them, converted to and from the API's
//! messages.

use std::collections::BTreeMap;

use crate::v1 as pb;
use serde::{Deserialize, Serialize};

/// The apiVersion of every document.
pub const API_VERSION: &str = "patronus.io/v1";

/// One document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Document {
    /// A site.
    Site(SiteDoc),
    /// A peer.
    Peer(PeerDoc),
    /// A policy.
    Policy(PolicyDoc),
    /// A user-defined application.
    Application(ApplicationDoc),
}

/// An Application document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationDoc {
    /// `patronus.io/v1`.
    pub api_version: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The definition.
    pub spec: ApplicationSpecDoc,
}

/// `spec` of an Application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSpecDoc {
    /// The name flows are reported under (AcmeERP).
    pub app_name: String,
    /// One of the ten categories.
    pub category: String,
    /// Host names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hyperscan expressions over the first payload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// tcp, udp, or empty for both.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport: String,
    /// Server ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u32>,
}

/// Name and labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The resource name.
    pub name: String,
    /// Labels (policies select sites by them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set by the server; shown by `get`, ignored by `apply`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// An address and port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointDoc {
    /// IP address or host name.
    pub address: String,
    /// UDP port.
    pub port: u32,
}

/// A Site document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteDoc {
    /// `patronus.io/v1`.
    pub api_version: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The desired state.
    pub spec: SiteSpecDoc,
    /// Shown by `get`; ignored by `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SiteStatusDoc>,
}

/// `spec` of a Site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteSpecDoc {
    /// Unique site id.
    pub site_id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    /// Region (us-east-1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Where peers reach this site.
    pub tunnel_endpoint: EndpointDoc,
    /// Sites this one peers with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<SitePeerDoc>,
    /// Settings for the uplinks its data planes' files define, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<SiteUplinkDoc>,
    /// Settings for the QoS classes of its shaped uplinks, by class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_classes: Option<Box<SiteQosClassesDoc>>,
}

/// A site's `qosClasses`: each class given replaces, field by field, what
/// its data planes' files set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteQosClassesDoc {
    /// Strict priority up to its `limitPercent`.
    #[serde(default, rename = "RealTime", skip_serializing_if = "Option::is_none")]
    pub real_time: Option<SiteQosClassDoc>,
    /// Video conferencing.
    #[serde(
        default,
        rename = "Interactive",
        skip_serializing_if = "Option::is_none"
    )]
    pub interactive: Option<SiteQosClassDoc>,
    /// Video.
    #[serde(default, rename = "Streaming", skip_serializing_if = "Option::is_none")]
    pub streaming: Option<SiteQosClassDoc>,
    /// Web and the unclassified.
    #[serde(default, rename = "Standard", skip_serializing_if = "Option::is_none")]
    pub standard: Option<SiteQosClassDoc>,
    /// File transfer, served last.
    #[serde(default, rename = "Bulk", skip_serializing_if = "Option::is_none")]
    pub bulk: Option<SiteQosClassDoc>,
}

/// One class of a site's `qosClasses`; an absent field keeps the file's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteQosClassDoc {
    /// Its share relative to the other weighted classes' (1-1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The share of the rate it is served first (%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_percent: Option<u32>,
    /// The share it never exceeds (%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_percent: Option<u32>,
    /// Most packets it holds per tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_packets: Option<u32>,
    /// The DSCP its packets are marked with (0-63).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<u32>,
}

impl From<&SiteQosClassDoc> for pb::SiteQosClass {
    fn from(c: &SiteQosClassDoc) -> Self {
        pb::SiteQosClass {
            weight: c.weight,
            min_percent: c.min_percent,
            limit_percent: c.limit_percent,
            queue_packets: c.queue_packets,
            dscp: c.dscp,
        }
    }
}

impl From<pb::SiteQosClass> for SiteQosClassDoc {
    fn from(c: pb::SiteQosClass) -> Self {
        SiteQosClassDoc {
            weight: c.weight,
            min_percent: c.min_percent,
            limit_percent: c.limit_percent,
            queue_packets: c.queue_packets,
            dscp: c.dscp,
        }
    }
}

impl From<&SiteQosClassesDoc> for pb::SiteQosClasses {
    fn from(d: &SiteQosClassesDoc) -> Self {
        let class = |c: &Option<SiteQosClassDoc>| c.as_ref().map(pb::SiteQosClass::from);
        pb::SiteQosClasses {
            real_time: class(&d.real_time),
            interactive: class(&d.interactive),
            streaming: class(&d.streaming),
            standard: class(&d.standard),
            bulk: class(&d.bulk),
        }
    }
}

impl From<pb::SiteQosClasses> for SiteQosClassesDoc {
    fn from(c: pb::SiteQosClasses) -> Self {
        SiteQosClassesDoc {
            real_time: c.real_time.map(Into::into),
            interactive: c.interactive.map(Into::into),
            streaming: c.streaming.map(Into::into),
            standard: c.standard.map(Into::into),
            bulk: c.bulk.map(Into::into),
        }
    }
}

/// One entry of a site's `uplinks`: each field given replaces what the
/// data plane's file sets for the uplink of this name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteUplinkDoc {
    /// The uplink's name in the data plane's file.
    pub name: String,
    /// Shape what leaves by it to this rate (Mbit/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbps: Option<f64>,
    /// The shaper's burst (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u32>,
    /// Framing bytes per packet beyond the IP packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_bytes: Option<u32>,
    /// What a GB over it costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_gb: Option<f64>,
    /// Nominal bandwidth (Mbit/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u32>,
    /// A label: mpls, internet, lte...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// BFD with the uplink's router at these timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdTimersDoc>,
}

/// One entry of a site's `peers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SitePeerDoc {
    /// The peer site's id.
    pub site_id: String,
    /// Its address.
    pub address: String,
}

/// `status` of a Site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatusDoc {
    /// Pending, Ready, Degraded, Failed.
    pub phase: String,
    /// Tunnels up.
    pub tunnels_up: u32,
}

/// A Peer document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerDoc {
    /// `patronus.io/v1`.
    pub api_version: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The desired state.
    pub spec: PeerSpecDoc,
    /// Shown by `get`; ignored by `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PeerStatusDoc>,
}

/// `spec` of a Peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSpecDoc {
    /// The site the peer belongs to.
    pub site_id: String,
    /// Where it is reached.
    pub endpoint: EndpointDoc,
    /// Its WireGuard identity.
    pub wireguard: WireGuardDoc,
    /// Compress tunnel payloads.
    #[serde(default)]
    pub compression: bool,
    /// Run BFD over the tunnel.
    #[serde(default)]
    pub bfd_enabled: bool,
    /// Every endpoint of a peer with several, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<NamedEndpointDoc>,
    /// Measure the paths to it with in-band probes (Patronus peers).
    #[serde(default)]
    pub sla_probes: bool,
    /// Shape its tunnel to this rate on each shaped uplink (Mbit/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbps: Option<f64>,
    /// Its IPv4 address inside the tunnel, which BFD talks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
    /// BFD's timers toward it; absent fields keep the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdTimersDoc>,
}

/// A Peer's or a site uplink's `bfd` timers (RFC 5880 §6.8.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BfdTimersDoc {
    /// How often we would like to send (ms, 10-60000; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_min_tx_ms: Option<u32>,
    /// How often we can take packets (ms, 10-60000; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_min_rx_ms: Option<u32>,
    /// Packets missed before a path is declared down (2-255; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_multiplier: Option<u32>,
}

/// BFD timers as the API carries them (0: the default).
fn bfd_timers_to_proto(t: BfdTimersDoc) -> pb::BfdTimers {
    pb::BfdTimers {
        desired_min_tx_ms: t.desired_min_tx_ms.unwrap_or(0),
        required_min_rx_ms: t.required_min_rx_ms.unwrap_or(0),
        detect_multiplier: t.detect_multiplier.unwrap_or(0),
    }
}

/// BFD timers as a document shows them (absent: the default).
fn bfd_timers_doc(t: pb::BfdTimers) -> BfdTimersDoc {
    let set = |v: u32| (v != 0).then_some(v);
    BfdTimersDoc {
        desired_min_tx_ms: set(t.desired_min_tx_ms),
        required_min_rx_ms: set(t.required_min_rx_ms),
        detect_multiplier: set(t.detect_multiplier),
    }
}

/// One of a peer's `endpoints`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedEndpointDoc {
    /// The remote uplink's name.
    pub name: String,
    /// IP address or host name.
    pub address: String,
    /// UDP port.
    pub port: u32,
}

/// `spec.wireguard` of a Peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireGuardDoc {
    /// Base64 Curve25519 public key.
    pub public_key: String,
}

/// `status` of a Peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatusDoc {
    /// Tunnel up.
    pub connected: bool,
    /// Latency in milliseconds; absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Probe loss in percent; absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss: Option<f64>,
    /// Each path to the peer, as its site's data plane reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PeerPathStatusDoc>,
}

/// One path of a Peer's `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPathStatusDoc {
    /// `site:uplink->peer[:endpoint]`.
    pub path_id: String,
    /// The peer's default traffic takes it now.
    pub active: bool,
    /// It answers its probes.
    pub up: bool,
    /// Its BFD session ([`bfd_state_name`]); absent without BFD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}

/// A BFD state as documents spell it (`Up`, `Down`, `Init`, `AdminDown`);
/// `None` for a path that runs no BFD.
pub fn bfd_state_name(state: i32) -> Option<&'static str> {
    match pb::BfdState::try_from(state).unwrap_or_default() {
        pb::BfdState::Unspecified => None,
        pb::BfdState::AdminDown => Some("AdminDown"),
        pb::BfdState::Down => Some("Down"),
        pb::BfdState::Init => Some("Init"),
        pb::BfdState::Up => Some("Up"),
    }
}

/// A Policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDoc {
    /// `patronus.io/v1`.
    pub api_version: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The desired state.
    pub spec: PolicySpecDoc,
    /// Shown by `get`; ignored by `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PolicyStatusDoc>,
}

/// `spec` of a Policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpecDoc {
    /// Which sites the policy applies to.
    #[serde(default)]
    pub site_selector: SelectorDoc,
    /// The rules.
    pub rules: Vec<RuleDoc>,
}

/// A label selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorDoc {
    /// Labels a site must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One policy rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleDoc {
    /// route, allow or deny.
    pub action: String,
    /// Higher wins.
    #[serde(default)]
    pub priority: u32,
    /// All must match.
    #[serde(default)]
    pub conditions: Vec<ConditionDoc>,
    /// For route rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_selection: Option<PathSelectionDoc>,
    /// For route rules: each packet over the two best paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// RealTime, Interactive, Streaming, Standard or Bulk: the class of the
    /// rule's flows on shaped uplinks (absent: their category's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
}

/// One condition of a rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionDoc {
    /// application, category, source-prefix, destination-prefix, destination-port, dscp, protocol.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value to match.
    pub value: String,
}

/// How a route rule picks its path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathSelectionDoc {
    /// lowest-latency, highest-bandwidth or least-cost.
    pub strategy: String,
    /// Limits the path must stay within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<ThresholdsDoc>,
}

/// Path limits (0: none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdsDoc {
    /// Milliseconds.
    #[serde(default)]
    pub max_latency_ms: f64,
    /// Percent.
    #[serde(default)]
    pub max_packet_loss_pct: f64,
    /// Milliseconds.
    #[serde(default)]
    pub max_jitter_ms: f64,
    /// Mbit/s.
    #[serde(default)]
    pub min_bandwidth_mbps: f64,
}

/// `status` of a Policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatusDoc {
    /// Ids of the selected sites.
    pub selected_sites: Vec<String>,
}

/// Names of enum values as manifests spell them, with the API's value.
const ACTIONS: &[(&str, pb::RuleAction)] = &[
    ("route", pb::RuleAction::Route),
    ("allow", pb::RuleAction::Allow),
    ("deny", pb::RuleAction::Deny),
];
const CONDITIONS: &[(&str, pb::ConditionType)] = &[
    ("application", pb::ConditionType::Application),
    ("category", pb::ConditionType::Category),
    ("source-prefix", pb::ConditionType::SourcePrefix),
    ("destination-prefix", pb::ConditionType::DestinationPrefix),
    ("destination-port", pb::ConditionType::DestinationPort),
    ("dscp", pb::ConditionType::Dscp),
    ("protocol", pb::ConditionType::Protocol),
];
const STRATEGIES: &[(&str, pb::PathSelectionStrategy)] = &[
    ("lowest-latency", pb::PathSelectionStrategy::LowestLatency),
    (
        "highest-bandwidth",
        pb::PathSelectionStrategy::HighestBandwidth,
    ),
    ("least-cost", pb::PathSelectionStrategy::LeastCost),
];
const QOS_CLASSES: &[(&str, pb::QosClass)] = &[
    ("RealTime", pb::QosClass::RealTime),
    ("Interactive", pb::QosClass::Interactive),
    ("Streaming", pb::QosClass::Streaming),
    ("Standard", pb::QosClass::Standard),
    ("Bulk", pb::QosClass::Bulk),
];

/// A manifest value the API cannot express, with its field path.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ManifestError {
    /// Field path (`spec.rules[0].action`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn lookup<T: Copy + Into<i32>>(
    table: &[(&str, T)],
    value: &str,
    field: String,
) -> Result<i32, ManifestError> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|&(_, v)| v.into())
        .ok_or_else(|| ManifestError {
            field,
            message: format!(
                "{value:?} is not one of {}",
                table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })
}

fn name_of<T: Copy + PartialEq + TryFrom<i32>>(table: &[(&'static str, T)], value: i32) -> String {
    T::try_from(value)
        .ok()
        .and_then(|v| table.iter().find(|(_, t)| *t == v))
        .map_or_else(|| value.to_string(), |(n, _)| (*n).to_owned())
}

fn meta(m: &Metadata) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: m.name.clone(),
        labels: m.labels.clone().into_iter().collect(),
        resource_version: m.resource_version,
        ..Default::default()
    })
}

fn meta_doc(m: Option<&pb::ObjectMeta>) -> Metadata {
    let m = m.cloned().unwrap_or_default();
    Metadata {
        name: m.name,
        labels: m.labels.into_iter().collect(),
        resource_version: m.resource_version,
    }
}

fn endpoint(e: &EndpointDoc) -> Option<pb::Endpoint> {
    Some(pb::Endpoint {
        address: e.address.clone(),
        port: e.port,
    })
}

fn endpoint_doc(e: Option<&pb::Endpoint>) -> EndpointDoc {
    let e = e.cloned().unwrap_or_default();
    EndpointDoc {
        address: e.address,
        port: e.port,
    }
}

impl Document {
    /// The kind's name (`Site`).
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Site(_) => "Site",
            Document::Peer(_) => "Peer",
            Document::Policy(_) => "Policy",
            Document::Application(_) => "Application",
        }
    }

    /// The document's name.
    pub fn name(&self) -> &str {
        match self {
            Document::Site(d) => &d.metadata.name,
            Document::Peer(d) => &d.metadata.name,
            Document::Policy(d) => &d.metadata.name,
            Document::Application(d) => &d.metadata.name,
        }
    }

    fn api_version(&self) -> &str {
        match self {
            Document::Site(d) => &d.api_version,
            Document::Peer(d) => &d.api_version,
            Document::Policy(d) => &d.api_version,
            Document::Application(d) => &d.api_version,
        }
    }
}

/// Parses every document of a YAML (or JSON) stream, checking apiVersion.
pub fn parse(text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(de).map_err(|e| ManifestError {
            field: format!("document {}", i + 1),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document (a trailing "---")
        }
        let doc: Document = serde_yaml_ng::from_value(value).map_err(|e| ManifestError {
            field: format!("document {}", i + 1),
            message: e.to_string(),
        })?;
        if doc.api_version() != API_VERSION {
            return Err(ManifestError {
                field: format!(
                    "document {} ({} {:?}): apiVersion",
                    i + 1,
                    doc.kind(),
                    doc.name()
                ),
                message: format!("must be {API_VERSION}"),
            });
        }
        docs.push(doc);
    }
    Ok(docs)
}

/// A Site as the API wants it.
pub fn site(d: &SiteDoc) -> pb::Site {
    pb::Site {
        metadata: meta(&d.metadata),
        spec: Some(pb::SiteSpec {
            site_id: d.spec.site_id.clone(),
            display_name: d.spec.display_name.clone(),
            region: d.spec.region.clone(),
            tunnel_endpoint: endpoint(&d.spec.tunnel_endpoint),
            peers: d
                .spec
                .peers
                .iter()
                .map(|p| pb::SitePeer {
                    site_id: p.site_id.clone(),
                    address: p.address.clone(),
                })
                .collect(),
            uplinks: d
                .spec
                .uplinks
                .iter()
                .map(|u| pb::SiteUplink {
                    name: u.name.clone(),
                    rate_mbps: u.rate_mbps,
                    burst_bytes: u.burst_bytes,
                    overhead_bytes: u.overhead_bytes,
                    cost_per_gb: u.cost_per_gb,
                    bandwidth_mbps: u.bandwidth_mbps,
                    color: u.color.clone(),
                    bfd: u.bfd.map(bfd_timers_to_proto),
                })
                .collect(),
            qos_classes: d.spec.qos_classes.as_deref().map(Into::into),
        }),
        status: None,
    }
}

/// A Peer as the API wants it.
pub fn peer(d: &PeerDoc) -> pb::Peer {
    pb::Peer {
        metadata: meta(&d.metadata),
        spec: Some(pb::PeerSpec {
            site_id: d.spec.site_id.clone(),
            endpoint: endpoint(&d.spec.endpoint),
            wireguard: Some(pb::WireGuard {
                public_key: d.spec.wireguard.public_key.clone(),
            }),
            compression: d.spec.compression,
            bfd_enabled: d.spec.bfd_enabled,
            endpoints: d
                .spec
                .endpoints
                .iter()
                .map(|e| pb::NamedEndpoint {
                    name: e.name.clone(),
                    address: e.address.clone(),
                    port: e.port,
                })
                .collect(),
            sla_probes: d.spec.sla_probes,
            rate_mbps: d.spec.rate_mbps.unwrap_or(0.0),
            tunnel_address: d.spec.tunnel_address.clone().unwrap_or_default(),
            bfd: d.spec.bfd.map(bfd_timers_to_proto),
        }),
        status: None,
    }
}

/// A Policy as the API wants it; enum spellings are checked here.
pub fn policy(d: &PolicyDoc) -> Result<pb::Policy, ManifestError> {
    let mut rules = Vec::new();
    for (i, r) in d.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let mut conditions = Vec::new();
        for (j, c) in r.conditions.iter().enumerate() {
            conditions.push(pb::Condition {
                r#type: lookup(CONDITIONS, &c.kind, format!("{field}.conditions[{j}].type"))?,
                value: c.value.clone(),
            });
        }
        let path_selection = match &r.path_selection {
            None => None,
            Some(ps) => Some(pb::PathSelection {
                strategy: lookup(
                    STRATEGIES,
                    &ps.strategy,
                    format!("{field}.pathSelection.strategy"),
                )?,
                thresholds: ps.thresholds.as_ref().map(|t| pb::Thresholds {
                    max_latency_ms: t.max_latency_ms,
                    max_packet_loss_pct: t.max_packet_loss_pct,
                    max_jitter_ms: t.max_jitter_ms,
                    min_bandwidth_mbps: t.min_bandwidth_mbps,
                }),
            }),
        };
        rules.push(pb::PolicyRule {
            action: lookup(ACTIONS, &r.action, format!("{field}.action"))?,
            priority: r.priority,
            conditions,
            path_selection,
            duplicate: r.duplicate,
            qos_class: match &r.qos_class {
                None => pb::QosClass::Unspecified.into(),
                Some(class) => lookup(QOS_CLASSES, class, format!("{field}.qosClass"))?,
            },
        });
    }
    Ok(pb::Policy {
        metadata: meta(&d.metadata),
        spec: Some(pb::PolicySpec {
            site_selector: Some(pb::LabelSelector {
                match_labels: d
                    .spec
                    .site_selector
                    .match_labels
                    .clone()
                    .into_iter()
                    .collect(),
            }),
            rules,
        }),
        status: None,
    })
}

/// An Application as the API wants it.
pub fn application(d: &ApplicationDoc) -> pb::Application {
    pb::Application {
        metadata: meta(&d.metadata),
        spec: Some(pb::ApplicationSpec {
            app_name: d.spec.app_name.clone(),
            category: d.spec.category.clone(),
            hosts: d.spec.hosts.clone(),
            patterns: d.spec.patterns.clone(),
            transport: d.spec.transport.clone(),
            ports: d.spec.ports.clone(),
        }),
    }
}

/// An Application as a document.
pub fn application_doc(a: &pb::Application) -> ApplicationDoc {
    let spec = a.spec.clone().unwrap_or_default();
    ApplicationDoc {
        api_version: API_VERSION.into(),
        metadata: meta_doc(a.metadata.as_ref()),
        spec: ApplicationSpecDoc {
            app_name: spec.app_name,
            category: spec.category,
            hosts: spec.hosts,
            patterns: spec.patterns,
            transport: spec.transport,
            ports: spec.ports,
        },
    }
}

/// A Site as a document.
pub fn site_doc(s: &pb::Site) -> SiteDoc {
    let spec = s.spec.clone().unwrap_or_default();
    SiteDoc {
        api_version: API_VERSION.into(),
        metadata: meta_doc(s.metadata.as_ref()),
        spec: SiteSpecDoc {
            site_id: spec.site_id,
            display_name: spec.display_name,
            region: spec.region,
            tunnel_endpoint: endpoint_doc(spec.tunnel_endpoint.as_ref()),
            peers: spec
                .peers
                .into_iter()
                .map(|p| SitePeerDoc {
                    site_id: p.site_id,
                    address: p.address,
                })
                .collect(),
            uplinks: spec
                .uplinks
                .into_iter()
                .map(|u| SiteUplinkDoc {
                    name: u.name,
                    rate_mbps: u.rate_mbps,
                    burst_bytes: u.burst_bytes,
                    overhead_bytes: u.overhead_bytes,
                    cost_per_gb: u.cost_per_gb,
                    bandwidth_mbps: u.bandwidth_mbps,
                    color: u.color,
                    bfd: u.bfd.map(bfd_timers_doc),
                })
                .collect(),
            qos_classes: spec.qos_classes.map(|c| Box::new(c.into())),
        },
        status: s.status.as_ref().map(|st| SiteStatusDoc {
            phase: pb::SitePhase::try_from(st.phase)
                .map(|p| p.as_str_name().trim_start_matches("SITE_PHASE_").to_owned())
                .unwrap_or_default(),
            tunnels_up: st.tunnels_up,
        }),
    }
}

/// A Peer as a document.
pub fn peer_doc(p: &pb::Peer) -> PeerDoc {
    let spec = p.spec.clone().unwrap_or_default();
    PeerDoc {
        api_version: API_VERSION.into(),
        metadata: meta_doc(p.metadata.as_ref()),
        spec: PeerSpecDoc {
            site_id: spec.site_id,
            endpoint: endpoint_doc(spec.endpoint.as_ref()),
            wireguard: WireGuardDoc {
                public_key: spec.wireguard.unwrap_or_default().public_key,
            },
            compression: spec.compression,
            bfd_enabled: spec.bfd_enabled,
            endpoints: spec
                .endpoints
                .into_iter()
                .map(|e| NamedEndpointDoc {
                    name: e.name,
                    address: e.address,
                    port: e.port,
                })
                .collect(),
            sla_probes: spec.sla_probes,
            rate_mbps: (spec.rate_mbps != 0.0).then_some(spec.rate_mbps),
            tunnel_address: (!spec.tunnel_address.is_empty()).then_some(spec.tunnel_address),
            bfd: spec.bfd.map(bfd_timers_doc),
        },
        status: p.status.as_ref().map(|st| PeerStatusDoc {
            connected: st.connected,
            latency_ms: st.latency_ms,
            packet_loss: st.packet_loss,
            paths: st
                .paths
                .iter()
                .map(|path| PeerPathStatusDoc {
                    path_id: path.path_id.clone(),
                    active: path.active,
                    up: path.up,
                    bfd: bfd_state_name(path.bfd).map(str::to_owned),
                })
                .collect(),
        }),
    }
}

/// A Policy as a document.
pub fn policy_doc(p: &pb::Policy) -> PolicyDoc {
    let spec = p.spec.clone().unwrap_or_default();
    PolicyDoc {
        api_version: API_VERSION.into(),
        metadata: meta_doc(p.metadata.as_ref()),
        spec: PolicySpecDoc {
            site_selector: SelectorDoc {
                match_labels: spec
                    .site_selector
                    .unwrap_or_default()
                    .match_labels
                    .into_iter()
                    .collect(),
            },
            rules: spec
                .rules
                .into_iter()
                .map(|r| RuleDoc {
                    action: name_of(ACTIONS, r.action),
                    priority: r.priority,
                    conditions: r
                        .conditions
                        .into_iter()
                        .map(|c| ConditionDoc {
                            kind: name_of(CONDITIONS, c.r#type),
                            value: c.value,
                        })
                        .collect(),
                    path_selection: r.path_selection.map(|ps| PathSelectionDoc {
                        strategy: name_of(STRATEGIES, ps.strategy),
                        thresholds: ps.thresholds.map(|t| ThresholdsDoc {
                            max_latency_ms: t.max_latency_ms,
                            max_packet_loss_pct: t.max_packet_loss_pct,
                            max_jitter_ms: t.max_jitter_ms,
                            min_bandwidth_mbps: t.min_bandwidth_mbps,
                        }),
                    }),
                    duplicate: r.duplicate,
                    qos_class: (r.qos_class != i32::from(pb::QosClass::Unspecified))
                        .then(|| name_of(QOS_CLASSES, r.qos_class)),
                })
                .collect(),
        },
        status: p.status.as_ref().map(|st| PolicyStatusDoc {
            selected_sites: st.selected_sites.clone(),
        }),
    }
}
