//! The control plane's site snapshots as configuration sections: what
//! [`SiteSections::compile`] validates, exactly as it validates a file's
//! `[site]`, `[[peer]]` and `[[policy]]`, so that a snapshot the data plane
//! cannot run is refused with the field at fault.

use patronus_core::config::qos::{ClassSection, ClassesSection};
use patronus_core::config::site::{
    BfdSection, ConditionKind, ConditionSection, EndpointSection, NamedEndpointSection,
    PathSelection, PeerSection, PolicySection, RuleAction, RuleSection, SitePeerSection,
    SiteSection, SiteSections, Strategy, Thresholds, WireGuardSection,
};
use patronus_core::config::uplinks::UplinkSettings;
use patronus_core::config::ConfigError;
use patronus_core::dpi::apps::{AppSpec, Transport};
use patronus_core::dpi::Category;
use patronus_core::qos::Class;
use patronus_proto::v1 as pb;

/// The sections a control-plane snapshot describes. Enumerations the
/// data plane does not know (a newer control plane) are refused by name.
///
/// # Errors
/// A field the sections cannot express.
pub fn sections_from_snapshot(s: &pb::SiteSnapshot) -> Result<SiteSections, ConfigError> {
    let endpoint = |e: &Option<pb::Endpoint>| {
        e.as_ref()
            .map_or_else(EndpointSection::default, |e| EndpointSection {
                address: e.address.clone(),
                port: e.port,
            })
    };
    let name = |m: &Option<pb::ObjectMeta>| m.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let site = s
        .site
        .as_ref()
        .and_then(|site| site.spec.as_ref())
        .map(|spec| SiteSection {
            site_id: spec.site_id.clone(),
            display_name: spec.display_name.clone(),
            region: spec.region.clone(),
            tunnel_endpoint: spec
                .tunnel_endpoint
                .as_ref()
                .map(|_| endpoint(&spec.tunnel_endpoint)),
            peers: spec
                .peers
                .iter()
                .map(|p| SitePeerSection {
                    site_id: p.site_id.clone(),
                    address: p.address.clone(),
                })
                .collect(),
        });
    let peers = s
        .peers
        .iter()
        .map(|p| {
            let spec = p.spec.clone().unwrap_or_default();
            let peer_name = name(&p.metadata);
            let bfd = spec
                .bfd
                .as_ref()
                .map(|t| bfd_from_proto(t, &format!("peer[{peer_name}].bfd")))
                .transpose()?;
            Ok(PeerSection {
                name: peer_name,
                endpoint: spec.endpoint.as_ref().map(|_| endpoint(&spec.endpoint)),
                endpoints: spec
                    .endpoints
                    .iter()
                    .map(|e| NamedEndpointSection {
                        name: e.name.clone(),
                        address: e.address.clone(),
                        port: e.port,
                    })
                    .collect(),
                sla_probes: spec.sla_probes,
                wireguard: WireGuardSection {
                    public_key: spec.wireguard.map(|w| w.public_key).unwrap_or_default(),
                    preshared_key_file: None,
                },
                compression: spec.compression,
                bfd_enabled: spec.bfd_enabled,
                tunnel_address: (!spec.tunnel_address.is_empty())
                    .then(|| spec.tunnel_address.clone()),
                bfd,
                allowed_ips: Vec::new(),
                persistent_keepalive_s: 0,
                rate_mbps: (spec.rate_mbps != 0.0).then_some(spec.rate_mbps),
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    let mut policies = Vec::with_capacity(s.policies.len());
    for p in &s.policies {
        let policy_name = name(&p.metadata);
        let spec = p.spec.clone().unwrap_or_default();
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, r) in spec.rules.iter().enumerate() {
            let field = format!("policy[{policy_name}].rule[{i}]");
            rules.push(rule_from_proto(r, &field)?);
        }
        policies.push(PolicySection {
            name: policy_name,
            rules,
        });
    }
    let applications = s
        .applications
        .iter()
        .map(app_from_proto)
        .collect::<Result<_, _>>()?;
    let uplinks = s
        .site
        .as_ref()
        .and_then(|site| site.spec.as_ref())
        .map_or(&[][..], |spec| &spec.uplinks)
        .iter()
        .map(uplink_from_proto)
        .collect::<Result<_, _>>()?;
    let qos_classes = s
        .site
        .as_ref()
        .and_then(|site| site.spec.as_ref()?.qos_classes.as_ref())
        .map(classes_from_proto)
        .transpose()?
        .unwrap_or_default();
    Ok(SiteSections {
        site,
        peers,
        policies,
        applications,
        uplinks,
        qos_classes,
    })
}

/// BFD's timers in the file's shape (0: the default); a multiplier beyond
/// what the file's field holds is refused by name (the control plane checks
/// the ranges).
fn bfd_from_proto(t: &pb::BfdTimers, field: &str) -> Result<BfdSection, ConfigError> {
    let ms = |v: u32| (v != 0).then_some(v);
    let detect_multiplier = match t.detect_multiplier {
        0 => None,
        m => Some(u8::try_from(m).map_err(|_| {
            ConfigError::new(
                format!("{field}.detect_multiplier"),
                format!("{m} is above 255"),
            )
        })?),
    };
    Ok(BfdSection {
        desired_min_tx_ms: ms(t.desired_min_tx_ms),
        required_min_rx_ms: ms(t.required_min_rx_ms),
        detect_multiplier,
        // The API carries no key: keys stay in the data planes' files.
        auth: None,
    })
}

/// The site's class settings in the file's shape; a value beyond what the
/// file's field holds is refused by name (the control plane checks ranges,
/// the compiled snapshot the rest).
fn classes_from_proto(c: &pb::SiteQosClasses) -> Result<ClassesSection, ConfigError> {
    let class = |class: Class, c: &Option<pb::SiteQosClass>| {
        let Some(c) = c else { return Ok(None) };
        let narrow = |name: &str, value: Option<u32>, max: u32| {
            value
                .map(|v| {
                    if v <= max {
                        Ok(v)
                    } else {
                        Err(ConfigError::new(
                            format!("site.qos_classes[{class}].{name}"),
                            format!("{v} is outside 0-{max}"),
                        ))
                    }
                })
                .transpose()
        };
        let percent = |name, value| narrow(name, value, 100).map(|v| v.map(|v| v as u8));
        Ok(Some(ClassSection {
            weight: narrow("weight", c.weight, 1000)?.map(|v| v as u16),
            min_percent: percent("min_percent", c.min_percent)?,
            limit_percent: percent("limit_percent", c.limit_percent)?,
            queue_packets: c.queue_packets,
            dscp: narrow("dscp", c.dscp, 63)?.map(|v| v as u8),
        }))
    };
    Ok(ClassesSection {
        real_time: class(Class::RealTime, &c.real_time)?,
        interactive: class(Class::Interactive, &c.interactive)?,
        streaming: class(Class::Streaming, &c.streaming)?,
        standard: class(Class::Standard, &c.standard)?,
        bulk: class(Class::Bulk, &c.bulk)?,
    })
}

fn uplink_from_proto(u: &pb::SiteUplink) -> Result<UplinkSettings, ConfigError> {
    let overhead_bytes = u
        .overhead_bytes
        .map(|o| {
            u16::try_from(o).map_err(|_| {
                ConfigError::new(
                    format!("site.uplinks[{}].overhead_bytes", u.name),
                    format!("{o} is outside 0-256"),
                )
            })
        })
        .transpose()?;
    let bfd = u
        .bfd
        .map(|t| bfd_from_proto(&t, &format!("site.uplinks[{}].bfd", u.name)))
        .transpose()?;
    Ok(UplinkSettings {
        name: u.name.clone(),
        rate_mbps: u.rate_mbps,
        burst_bytes: u.burst_bytes,
        overhead_bytes,
        cost_per_gb: u.cost_per_gb,
        bandwidth_mbps: u.bandwidth_mbps,
        color: u.color.clone(),
        bfd,
    })
}

fn app_from_proto(a: &pb::Application) -> Result<AppSpec, ConfigError> {
    let spec = a.spec.clone().unwrap_or_default();
    let field = |f: &str| format!("application[{}].{f}", spec.app_name);
    let category = Category::ALL
        .iter()
        .copied()
        .find(|c| c.to_string() == spec.category)
        .ok_or_else(|| {
            ConfigError::new(
                field("category"),
                format!("{:?} is not a category", spec.category),
            )
        })?;
    let transport = match spec.transport.as_str() {
        "" => Transport::Any,
        "tcp" => Transport::Tcp,
        "udp" => Transport::Udp,
        other => {
            return Err(ConfigError::new(
                field("transport"),
                format!("{other:?} is not tcp or udp"),
            ))
        }
    };
    let ports = spec
        .ports
        .iter()
        .map(|p| u16::try_from(*p).ok().filter(|p| *p != 0))
        .collect::<Option<Vec<u16>>>()
        .ok_or_else(|| ConfigError::new(field("ports"), "ports are 1-65535"))?;
    Ok(AppSpec {
        name: spec.app_name,
        category,
        hosts: spec.hosts,
        patterns: spec.patterns,
        transport,
        ports,
        tls_ports: Vec::new(),
        alpn: Vec::new(),
        host_patterns: Vec::new(),
        certificate_names: Vec::new(),
        stun_attributes: Vec::new(),
    })
}

fn rule_from_proto(r: &pb::PolicyRule, field: &str) -> Result<RuleSection, ConfigError> {
    let unknown = |what: &str, value: i32| {
        ConfigError::new(
            format!("{field}.{what}"),
            format!("value {value} is not one this data plane knows"),
        )
    };
    let action = match pb::RuleAction::try_from(r.action) {
        Ok(pb::RuleAction::Route) => RuleAction::Route,
        Ok(pb::RuleAction::Allow) => RuleAction::Allow,
        Ok(pb::RuleAction::Deny) => RuleAction::Deny,
        _ => return Err(unknown("action", r.action)),
    };
    let mut conditions = Vec::with_capacity(r.conditions.len());
    for (j, c) in r.conditions.iter().enumerate() {
        let kind = match pb::ConditionType::try_from(c.r#type) {
            Ok(pb::ConditionType::Application) => ConditionKind::Application,
            Ok(pb::ConditionType::Category) => ConditionKind::Category,
            Ok(pb::ConditionType::SourcePrefix) => ConditionKind::SourcePrefix,
            Ok(pb::ConditionType::DestinationPrefix) => ConditionKind::DestinationPrefix,
            Ok(pb::ConditionType::DestinationPort) => ConditionKind::DestinationPort,
            Ok(pb::ConditionType::Dscp) => ConditionKind::Dscp,
            Ok(pb::ConditionType::Protocol) => ConditionKind::Protocol,
            _ => return Err(unknown(&format!("conditions[{j}].type"), c.r#type)),
        };
        conditions.push(ConditionSection {
            kind,
            value: c.value.clone(),
        });
    }
    let path_selection = match &r.path_selection {
        None => None,
        Some(ps) => {
            let strategy = match pb::PathSelectionStrategy::try_from(ps.strategy) {
                Ok(pb::PathSelectionStrategy::LowestLatency) => Strategy::LowestLatency,
                Ok(pb::PathSelectionStrategy::HighestBandwidth) => Strategy::HighestBandwidth,
                Ok(pb::PathSelectionStrategy::LeastCost) => Strategy::LeastCost,
                _ => return Err(unknown("path_selection.strategy", ps.strategy)),
            };
            let t = ps.thresholds.unwrap_or_default();
            Some(PathSelection {
                strategy,
                thresholds: Thresholds {
                    max_latency_ms: t.max_latency_ms,
                    max_packet_loss_pct: t.max_packet_loss_pct,
                    max_jitter_ms: t.max_jitter_ms,
                    min_bandwidth_mbps: t.min_bandwidth_mbps,
                },
            })
        }
    };
    Ok(RuleSection {
        action,
        priority: r.priority,
        conditions,
        path_selection,
        duplicate: r.duplicate,
        qos_class: match pb::QosClass::try_from(r.qos_class) {
            Ok(pb::QosClass::Unspecified) => None,
            Ok(pb::QosClass::RealTime) => Some(Class::RealTime),
            Ok(pb::QosClass::Interactive) => Some(Class::Interactive),
            Ok(pb::QosClass::Streaming) => Some(Class::Streaming),
            Ok(pb::QosClass::Standard) => Some(Class::Standard),
            Ok(pb::QosClass::Bulk) => Some(Class::Bulk),
            Err(_) => return Err(unknown("qos_class", r.qos_class)),
        },
    })
}

#[cfg(test)]
mod tests;
