//! Field-by-field validation of what clients write. Every violation names
//! its field path (`site.spec.tunnel_endpoint.port`) so that the API can
//! answer INVALID_ARGUMENT with a google.rpc.BadRequest listing them all.

use std::collections::HashSet;
use std::net::IpAddr;

use base64::Engine as _;
use patronus_proto::v1::{
    Application, BfdTimers, ConditionType, Endpoint, ObjectMeta, PathSelectionStrategy, Peer,
    PeerSpec, Policy, QosClass, RuleAction, Site, SiteQosClass, SiteQosClasses, SiteUplink,
};

/// Categories a CATEGORY condition may name (the classifier's ten).
pub const CATEGORIES: [&str; 10] = [
    "Web",
    "Video",
    "VoIP",
    "Gaming",
    "FileTransfer",
    "Database",
    "DNS",
    "RemoteAccess",
    "Email",
    "Unknown",
];

/// Most labels one resource carries.
pub const LABELS_MAX: usize = 256;
/// Most sites one site peers with (a data plane's tunnel peers).
pub const SITE_PEERS_MAX: usize = 16_384;
/// Most uplinks one site has (a data plane's).
pub const SITE_UPLINKS_MAX: usize = 16;
/// Most endpoints one peer has (each is a path from every uplink).
pub const PEER_ENDPOINTS_MAX: usize = 64;
/// Most rules one policy has.
pub const POLICY_RULES_MAX: usize = 1024;
/// Most conditions one rule has.
pub const RULE_CONDITIONS_MAX: usize = 64;
/// Most labels one site selector matches.
pub const SELECTOR_LABELS_MAX: usize = 64;

/// Whether a list is within its bound. One that is not is refused whole and
/// its entries are not checked, so that validation's work stays bounded
/// whatever a client sends.
fn within(len: usize, max: usize, field: &str, v: &mut Violations) -> bool {
    if len > max {
        v.add(field, format!("{len} entries, at most {max}"));
        return false;
    }
    true
}

/// Field violations collected while validating one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations {
    /// (field path, what is wrong).
    pub items: Vec<(String, String)>,
}

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.items.push((field.into(), description.into()));
    }

    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

pub use patronus_proto::names::{is_dns_label, is_host};

/// Metadata as a client writes it: a name and labels; the rest is the server's.
pub fn metadata(meta: Option<&ObjectMeta>, prefix: &str, v: &mut Violations) {
    let Some(meta) = meta else {
        v.add(format!("{prefix}.metadata"), "required");
        return;
    };
    if !is_dns_label(&meta.name) {
        v.add(
            format!("{prefix}.metadata.name"),
            "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter",
        );
    }
    if meta.external_id.len() > 253 {
        v.add(
            format!("{prefix}.metadata.external_id"),
            "at most 253 characters",
        );
    }
    if !within(
        meta.labels.len(),
        LABELS_MAX,
        &format!("{prefix}.metadata.labels"),
        v,
    ) {
        return;
    }
    for (key, value) in &meta.labels {
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
        if !key_ok {
            v.add(
                format!("{prefix}.metadata.labels[{key}]"),
                "label keys are 1-253 characters of A-Z, a-z, 0-9, '-', '_', '.', '/'",
            );
        }
        let value_ok = value.len() <= 63
            && value
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
        if !value_ok {
            v.add(
                format!("{prefix}.metadata.labels[{key}]"),
                "label values are at most 63 characters of A-Z, a-z, 0-9, '-', '_', '.'",
            );
        }
    }
}

fn endpoint(e: Option<&Endpoint>, field: &str, v: &mut Violations) {
    let Some(e) = e else {
        v.add(field, "required");
        return;
    };
    if !is_host(&e.address) {
        v.add(
            format!("{field}.address"),
            format!("{:?} is neither an IP address nor a host name", e.address),
        );
    }
    if !(1..=65535).contains(&e.port) {
        v.add(format!("{field}.port"), "must be 1-65535");
    }
}

/// A site as written.
pub fn site(s: &Site, v: &mut Violations) {
    metadata(s.metadata.as_ref(), "site", v);
    let Some(spec) = &s.spec else {
        v.add("site.spec", "required");
        return;
    };
    if !is_dns_label(&spec.site_id) {
        v.add(
            "site.spec.site_id",
            "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter",
        );
    }
    if spec.display_name.chars().count() > 253 {
        v.add("site.spec.display_name", "at most 253 characters");
    }
    if !spec.region.is_empty() && !is_dns_label(&spec.region) {
        v.add(
            "site.spec.region",
            "must be a region name such as us-east-1",
        );
    }
    endpoint(
        spec.tunnel_endpoint.as_ref(),
        "site.spec.tunnel_endpoint",
        v,
    );
    let peers = if within(spec.peers.len(), SITE_PEERS_MAX, "site.spec.peers", v) {
        spec.peers.as_slice()
    } else {
        &[]
    };
    let mut seen = HashSet::new();
    for (i, peer) in peers.iter().enumerate() {
        let field = format!("site.spec.peers[{i}]");
        if !is_dns_label(&peer.site_id) {
            v.add(format!("{field}.site_id"), "must be a site id");
        } else if peer.site_id == spec.site_id {
            v.add(
                format!("{field}.site_id"),
                "a site does not peer with itself",
            );
        } else if !seen.insert(peer.site_id.as_str()) {
            v.add(format!("{field}.site_id"), "listed twice");
        }
        if !is_host(&peer.address) {
            v.add(
                format!("{field}.address"),
                format!(
                    "{:?} is neither an IP address nor a host name",
                    peer.address
                ),
            );
        }
    }
    site_uplinks(&spec.uplinks, v);
    if let Some(classes) = &spec.qos_classes {
        site_qos_classes(classes, v);
    }
}

/// A site's class settings, each in the range its data planes accept.
/// Whether they add up with what the data planes' files give only the data
/// planes can tell; what the site alone gives must add up already.
fn site_qos_classes(classes: &SiteQosClasses, v: &mut Violations) {
    let field = |class: &str, name: &str| format!("site.spec.qos_classes.{class}.{name}");
    if let Some(rt) = &classes.real_time {
        for (name, set) in [
            ("weight", rt.weight.is_some()),
            ("min_percent", rt.min_percent.is_some()),
        ] {
            if set {
                v.add(
                    field("real_time", name),
                    "RealTime is served at strict priority up to its limit_percent; \
                     it has no weight or minimum",
                );
            }
        }
        if rt.limit_percent.is_some_and(|l| l > 100) {
            v.add(field("real_time", "limit_percent"), "must be 0-100");
        }
        site_qos_class_queue(rt, "real_time", v);
    }
    let weighted = [
        ("interactive", &classes.interactive),
        ("streaming", &classes.streaming),
        ("standard", &classes.standard),
        ("bulk", &classes.bulk),
    ];
    for (class, c) in weighted {
        let Some(c) = c else { continue };
        if c.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
            v.add(field(class, "weight"), "must be 1-1000");
        }
        if c.limit_percent.is_some_and(|l| !(1..=100).contains(&l)) {
            v.add(field(class, "limit_percent"), "must be 1-100");
        }
        match (c.min_percent, c.limit_percent) {
            (Some(min), _) if min > 100 => v.add(field(class, "min_percent"), "must be 0-100"),
            (Some(min), Some(limit)) if min > limit => v.add(
                field(class, "min_percent"),
                format!("{min}% is above its limit_percent of {limit}%"),
            ),
            _ => {}
        }
        site_qos_class_queue(c, class, v);
    }
    let reserved: u32 = classes
        .real_time
        .as_ref()
        .and_then(|rt| rt.limit_percent)
        .into_iter()
        .chain(weighted.iter().filter_map(|(_, c)| c.as_ref()?.min_percent))
        .filter(|&share| share <= 100) // beyond: refused above already
        .sum();
    if reserved > 100 {
        v.add(
            "site.spec.qos_classes",
            format!("RealTime's limit and the minimums add up to {reserved}%, over 100%"),
        );
    }
}

/// The fields every class has: its queue and its mark.
fn site_qos_class_queue(c: &SiteQosClass, class: &str, v: &mut Violations) {
    if c.queue_packets == Some(0) {
        v.add(
            format!("site.spec.qos_classes.{class}.queue_packets"),
            "must hold at least one packet",
        );
    }
    if c.dscp.is_some_and(|d| d > 63) {
        v.add(
            format!("site.spec.qos_classes.{class}.dscp"),
            "must be 0-63",
        );
    }
}

/// A site's uplink settings, each field in the range its data planes
/// accept (whether their files have the uplinks only they can tell).
fn site_uplinks(uplinks: &[SiteUplink], v: &mut Violations) {
    if !within(uplinks.len(), SITE_UPLINKS_MAX, "site.spec.uplinks", v) {
        return;
    }
    let mut seen = HashSet::new();
    for (i, u) in uplinks.iter().enumerate() {
        let field = format!("site.spec.uplinks[{i}]");
        if !is_dns_label(&u.name) {
            v.add(
                format!("{field}.name"),
                "must be an uplink name (a DNS label)",
            );
        } else if !seen.insert(u.name.as_str()) {
            v.add(format!("{field}.name"), "listed twice");
        }
        if u.rate_mbps
            .is_some_and(|r| !(0.008..=400_000.0).contains(&r))
        {
            v.add(format!("{field}.rate_mbps"), "must be 0.008-400000 Mbit/s");
        }
        if u.burst_bytes.is_some_and(|b| b < 1_514) {
            v.add(
                format!("{field}.burst_bytes"),
                "must be at least one full-size frame (1514)",
            );
        }
        if u.overhead_bytes.is_some_and(|o| o > 256) {
            v.add(format!("{field}.overhead_bytes"), "must be 0-256");
        }
        if u.cost_per_gb.is_some_and(|c| !c.is_finite() || c < 0.0) {
            v.add(format!("{field}.cost_per_gb"), "must be 0 or more");
        }
        if u.color.as_deref().is_some_and(|c| !is_dns_label(c)) {
            v.add(
                format!("{field}.color"),
                "must be a DNS label (mpls, internet, lte)",
            );
        }
        if let Some(t) = &u.bfd {
            bfd_timers(t, &format!("{field}.bfd"), v);
        }
    }
}

/// A peer's BFD: toward its tunnel address (per path to a Patronus peer,
/// per peer to a stock one); the address and timers only with `bfd_enabled` (never accepted
/// and ignored).
fn peer_bfd(spec: &PeerSpec, v: &mut Violations) {
    if !spec.bfd_enabled {
        if !spec.tunnel_address.is_empty() {
            v.add(
                "peer.spec.tunnel_address",
                "only BFD uses it: set bfd_enabled, or leave it out",
            );
        }
        if spec.bfd.is_some() {
            v.add("peer.spec.bfd", "BFD's timers need bfd_enabled");
        }
        return;
    }
    match spec.tunnel_address.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => {}
        Ok(IpAddr::V4(_)) => v.add("peer.spec.tunnel_address", "must be a unicast address"),
        Ok(IpAddr::V6(_)) => v.add(
            "peer.spec.tunnel_address",
            "BFD over IPv6 inside the tunnel is not supported yet: give an IPv4 address",
        ),
        Err(_) => v.add(
            "peer.spec.tunnel_address",
            "BFD needs the peer's IPv4 address inside the tunnel",
        ),
    }
    if let Some(t) = &spec.bfd {
        bfd_timers(t, "peer.spec.bfd", v);
    }
}

/// BFD timers (a Peer's or a site uplink's), `field` naming them.
fn bfd_timers(t: &BfdTimers, field: &str, v: &mut Violations) {
    for (name, ms) in [
        ("desired_min_tx_ms", t.desired_min_tx_ms),
        ("required_min_rx_ms", t.required_min_rx_ms),
    ] {
        if ms != 0 && !(10..=60_000).contains(&ms) {
            v.add(
                format!("{field}.{name}"),
                "must be 0 (the default, 300) or 10-60000 ms",
            );
        }
    }
    let m = t.detect_multiplier;
    if m != 0 && !(2..=255).contains(&m) {
        v.add(
            format!("{field}.detect_multiplier"),
            "must be 0 (the default, 3) or 2-255",
        );
    }
}

/// A peer as written.
pub fn peer(p: &Peer, v: &mut Violations) {
    metadata(p.metadata.as_ref(), "peer", v);
    let Some(spec) = &p.spec else {
        v.add("peer.spec", "required");
        return;
    };
    if !is_dns_label(&spec.site_id) {
        v.add("peer.spec.site_id", "must be a site id");
    }
    endpoint(spec.endpoint.as_ref(), "peer.spec.endpoint", v);
    peer_bfd(spec, v);
    let endpoints = if within(
        spec.endpoints.len(),
        PEER_ENDPOINTS_MAX,
        "peer.spec.endpoints",
        v,
    ) {
        spec.endpoints.as_slice()
    } else {
        &[]
    };
    let mut names = HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let field = format!("peer.spec.endpoints[{i}]");
        if !is_dns_label(&e.name) || !names.insert(e.name.as_str()) {
            v.add(
                format!("{field}.name"),
                "must be a DNS label used by no other endpoint of the peer",
            );
        }
        let as_endpoint = Endpoint {
            address: e.address.clone(),
            port: e.port,
        };
        endpoint(Some(&as_endpoint), &field, v);
    }
    // A malformed primary endpoint is reported once, above.
    let well_formed = |e: &&Endpoint| is_host(&e.address) && (1..=65535).contains(&e.port);
    let primary = spec.endpoint.as_ref().filter(well_formed);
    if let (Some(primary), false) = (primary, spec.endpoints.is_empty()) {
        let listed = spec
            .endpoints
            .iter()
            .any(|e| e.address == primary.address && e.port == primary.port);
        if !listed {
            v.add(
                "peer.spec.endpoint",
                "must be one of endpoints (the primary one) when both are given",
            );
        }
    }
    let rate = spec.rate_mbps;
    if rate != 0.0 && !(0.008..=400_000.0).contains(&rate) {
        v.add(
            "peer.spec.rate_mbps",
            "must be 0 (none) or 0.008-400000 Mbit/s",
        );
    }
    let key_ok = spec.wireguard.as_ref().is_some_and(|w| {
        base64::engine::general_purpose::STANDARD
            .decode(&w.public_key)
            .is_ok_and(|k| k.len() == 32)
    });
    if !key_ok {
        v.add(
            "peer.spec.wireguard.public_key",
            "must be a base64 Curve25519 public key (32 bytes)",
        );
    }
}

/// A policy as written.
pub fn policy(p: &Policy, v: &mut Violations) {
    metadata(p.metadata.as_ref(), "policy", v);
    let Some(spec) = &p.spec else {
        v.add("policy.spec", "required");
        return;
    };
    let selector = spec.site_selector.as_ref().filter(|s| {
        within(
            s.match_labels.len(),
            SELECTOR_LABELS_MAX,
            "policy.spec.site_selector.match_labels",
            v,
        )
    });
    if let Some(selector) = selector {
        for key in selector.match_labels.keys() {
            if key.is_empty() {
                v.add(
                    "policy.spec.site_selector.match_labels",
                    "label keys cannot be empty",
                );
            }
        }
    }
    if spec.rules.is_empty() {
        v.add("policy.spec.rules", "at least one rule");
    }
    let rules = if within(spec.rules.len(), POLICY_RULES_MAX, "policy.spec.rules", v) {
        spec.rules.as_slice()
    } else {
        &[]
    };
    let mut priorities = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("policy.spec.rules[{i}]");
        let action = RuleAction::try_from(rule.action).unwrap_or(RuleAction::Unspecified);
        if action == RuleAction::Unspecified {
            v.add(format!("{field}.action"), "must be ROUTE, ALLOW or DENY");
        }
        if !priorities.insert(rule.priority) {
            v.add(
                format!("{field}.priority"),
                format!("{} is used by another rule", rule.priority),
            );
        }
        let conditions = if within(
            rule.conditions.len(),
            RULE_CONDITIONS_MAX,
            &format!("{field}.conditions"),
            v,
        ) {
            rule.conditions.as_slice()
        } else {
            &[]
        };
        for (j, c) in conditions.iter().enumerate() {
            condition(c.r#type, &c.value, &format!("{field}.conditions[{j}]"), v);
        }
        match (&rule.path_selection, action) {
            (None, RuleAction::Route) => {
                v.add(format!("{field}.path_selection"), "required for ROUTE")
            }
            (Some(_), RuleAction::Allow | RuleAction::Deny) => v.add(
                format!("{field}.path_selection"),
                "only ROUTE rules select a path",
            ),
            (Some(ps), _) => {
                let strategy = PathSelectionStrategy::try_from(ps.strategy)
                    .unwrap_or(PathSelectionStrategy::Unspecified);
                if strategy == PathSelectionStrategy::Unspecified {
                    v.add(
                        format!("{field}.path_selection.strategy"),
                        "must be LOWEST_LATENCY, HIGHEST_BANDWIDTH or LEAST_COST",
                    );
                }
                if let Some(t) = &ps.thresholds {
                    let limits = [
                        ("max_latency_ms", t.max_latency_ms, f64::MAX),
                        ("max_packet_loss_pct", t.max_packet_loss_pct, 100.0),
                        ("max_jitter_ms", t.max_jitter_ms, f64::MAX),
                        ("min_bandwidth_mbps", t.min_bandwidth_mbps, f64::MAX),
                    ];
                    for (name, value, max) in limits {
                        if !value.is_finite() || value < 0.0 || value > max {
                            v.add(
                                format!("{field}.path_selection.thresholds.{name}"),
                                format!("must be between 0 and {max} (0: no limit)"),
                            );
                        }
                    }
                }
            }
            (None, _) => {}
        }
        // An unknown action is reported once, above.
        if rule.duplicate && matches!(action, RuleAction::Allow | RuleAction::Deny) {
            v.add(
                format!("{field}.duplicate"),
                "only ROUTE rules send over two paths",
            );
        }
        match QosClass::try_from(rule.qos_class) {
            Ok(QosClass::Unspecified) => {}
            Ok(_) if action == RuleAction::Deny => v.add(
                format!("{field}.qos_class"),
                "a DENY rule's flows are dropped, not queued",
            ),
            Ok(_) => {}
            Err(_) => v.add(
                format!("{field}.qos_class"),
                format!("{} is not a QoS class", rule.qos_class),
            ),
        }
    }
}

/// Most host names one application lists.
pub const APPLICATION_MAX_HOSTS: usize = 1024;
/// Most patterns one application lists.
pub const APPLICATION_MAX_PATTERNS: usize = 256;
/// Most ports one application lists.
pub const APPLICATION_MAX_PORTS: usize = 256;
/// Most bytes (encoded) each part of a site's snapshot may take: the site's
/// peers together, all policies together (any may select the site), all
/// applications together (every snapshot carries them). With the site
/// itself, within [`RESOURCE_MAX_BYTES`], a snapshot always fits in
/// [`patronus_proto::MAX_MESSAGE_BYTES`].
pub const SNAPSHOT_SHARE_BYTES: usize = patronus_proto::MAX_MESSAGE_BYTES / 4;

/// Most bytes (encoded) one resource may take.
pub const RESOURCE_MAX_BYTES: usize = 1 << 20;

const _: () = assert!(
    3 * SNAPSHOT_SHARE_BYTES + RESOURCE_MAX_BYTES + 4096 < patronus_proto::MAX_MESSAGE_BYTES,
    "a site's snapshot must always fit in a message"
);

/// An application as written. Patterns are checked for shape only: each
/// data plane compiles them with Hyperscan and refuses (NACKs) what it cannot.
pub fn application(a: &Application, v: &mut Violations) {
    metadata(a.metadata.as_ref(), "application", v);
    let Some(spec) = &a.spec else {
        v.add("application.spec", "required");
        return;
    };
    let name_ok = !spec.app_name.is_empty()
        && spec.app_name.len() <= 64
        && spec
            .app_name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-+".contains(&c));
    if !name_ok {
        v.add(
            "application.spec.app_name",
            "1-64 characters of A-Z, a-z, 0-9, '_', '-', '+'",
        );
    }
    if !CATEGORIES.contains(&spec.category.as_str()) {
        v.add(
            "application.spec.category",
            format!("must be one of {}", CATEGORIES.join(", ")),
        );
    }
    let counts = [
        ("hosts", spec.hosts.len(), APPLICATION_MAX_HOSTS),
        ("patterns", spec.patterns.len(), APPLICATION_MAX_PATTERNS),
        ("ports", spec.ports.len(), APPLICATION_MAX_PORTS),
    ];
    for (field, count, max) in counts {
        if count > max {
            v.add(
                format!("application.spec.{field}"),
                format!("{count} entries, at most {max}"),
            );
            // Each entry is not checked: the list is refused whole.
            return;
        }
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if host.parse::<IpAddr>().is_ok() || !is_host(host) {
            v.add(
                format!("application.spec.hosts[{i}]"),
                format!("{host:?} is not a host name"),
            );
        }
    }
    for (i, pattern) in spec.patterns.iter().enumerate() {
        if pattern.is_empty() || pattern.len() > 1024 {
            v.add(
                format!("application.spec.patterns[{i}]"),
                "1-1024 characters",
            );
        }
    }
    if !["", "tcp", "udp"].contains(&spec.transport.as_str()) {
        v.add(
            "application.spec.transport",
            "must be tcp, udp or empty (both)",
        );
    }
    for (i, port) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(port) {
            v.add(format!("application.spec.ports[{i}]"), "must be 1-65535");
        }
    }
    if spec.hosts.is_empty() && spec.patterns.is_empty() {
        v.add(
            "application.spec",
            "needs hosts or patterns to recognise the application by",
        );
    }
}

fn condition(kind: i32, value: &str, field: &str, v: &mut Violations) {
    let ok = match ConditionType::try_from(kind).unwrap_or(ConditionType::Unspecified) {
        ConditionType::Unspecified => {
            v.add(format!("{field}.type"), "must be APPLICATION, CATEGORY, SOURCE_PREFIX, DESTINATION_PREFIX, DESTINATION_PORT, DSCP or PROTOCOL");
            return;
        }
        ConditionType::Application => {
            !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.+".contains(&c))
        }
        ConditionType::Category => CATEGORIES.contains(&value),
        ConditionType::SourcePrefix | ConditionType::DestinationPrefix => {
            value.parse::<ipnet::IpNet>().is_ok()
        }
        ConditionType::DestinationPort => value.parse::<u16>().is_ok_and(|p| p > 0),
        ConditionType::Dscp => value.parse::<u8>().is_ok_and(|d| d < 64),
        ConditionType::Protocol => patronus_proto::names::ip_protocol(value).is_some(),
    };
    if !ok {
        v.add(
            format!("{field}.value"),
            format!("{value:?} is not valid for this condition type"),
        );
    }
}
