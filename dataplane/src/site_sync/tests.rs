use std::sync::OnceLock;

use patronus_core::config::site::{classifier_with, Capabilities, SiteState};
use patronus_core::config::Config;
use patronus_core::dpi::Classifier;

use super::*;

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::with_user_apps(&[]).expect("the built-in catalogue compiles"))
}

fn caps() -> Capabilities<'static> {
    Capabilities {
        classifier: classifier(),
        has_v4: true,
        has_v6: false,
    }
}

const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn snapshot() -> pb::SiteSnapshot {
    pb::SiteSnapshot {
        site_id: "branch-1".into(),
        version: 7,
        epoch: 1,
        digest: Vec::new(),
        site: Some(pb::Site {
            metadata: Some(pb::ObjectMeta {
                name: "branch-1".into(),
                ..Default::default()
            }),
            spec: Some(pb::SiteSpec {
                site_id: "branch-1".into(),
                region: "eu-west-1".into(),
                tunnel_endpoint: Some(pb::Endpoint {
                    address: "198.51.100.1".into(),
                    port: 51820,
                }),
                ..Default::default()
            }),
            status: None,
        }),
        peers: vec![pb::Peer {
            metadata: Some(pb::ObjectMeta {
                name: "hq".into(),
                ..Default::default()
            }),
            spec: Some(pb::PeerSpec {
                site_id: "branch-1".into(),
                endpoint: Some(pb::Endpoint {
                    address: "203.0.113.1".into(),
                    port: 51820,
                }),
                wireguard: Some(pb::WireGuard {
                    public_key: KEY.into(),
                }),
                compression: true,
                bfd_enabled: false,
                rate_mbps: 5.0,
                endpoints: vec![
                    pb::NamedEndpoint {
                        name: "inet".into(),
                        address: "203.0.113.1".into(),
                        port: 51820,
                    },
                    pb::NamedEndpoint {
                        name: "lte".into(),
                        address: "198.51.100.9".into(),
                        port: 51820,
                    },
                ],
                sla_probes: true,
                tunnel_address: String::new(),
                bfd: None,
            }),
            status: None,
        }],
        policies: vec![pb::Policy {
            metadata: Some(pb::ObjectMeta {
                name: "video".into(),
                ..Default::default()
            }),
            spec: Some(pb::PolicySpec {
                site_selector: None,
                rules: vec![pb::PolicyRule {
                    action: pb::RuleAction::Route as i32,
                    priority: 100,
                    conditions: vec![pb::Condition {
                        r#type: pb::ConditionType::Category as i32,
                        value: "Video".into(),
                    }],
                    path_selection: Some(pb::PathSelection {
                        strategy: pb::PathSelectionStrategy::LowestLatency as i32,
                        thresholds: Some(pb::Thresholds {
                            max_latency_ms: 80.0,
                            ..Default::default()
                        }),
                    }),
                    duplicate: true,
                    qos_class: pb::QosClass::Interactive as i32,
                }],
            }),
            status: None,
        }],
        applications: Vec::new(),
    }
}

#[test]
fn a_snapshot_becomes_the_same_sections_as_a_file() {
    let file = format!(
        r#"
[site]
site_id = "branch-1"
region = "eu-west-1"
tunnel_endpoint = {{ address = "198.51.100.1", port = 51820 }}

[[peer]]
name = "hq"
endpoint = {{ address = "203.0.113.1", port = 51820 }}
endpoints = [
    {{ name = "inet", address = "203.0.113.1", port = 51820 }},
    {{ name = "lte", address = "198.51.100.9", port = 51820 }},
]
sla_probes = true
wireguard = {{ public_key = "{KEY}" }}
compression = true
rate_mbps = 5.0

[[policy]]
name = "video"
[[policy.rule]]
action = "route"
priority = 100
conditions = [{{ type = "category", value = "Video" }}]
path_selection = {{ strategy = "lowest-latency", thresholds = {{ max_latency_ms = 80 }} }}
duplicate = true
qos_class = "Interactive"
"#
    );
    let from_file = Config::from_toml(&file).unwrap().site_sections();
    assert_eq!(sections_from_snapshot(&snapshot()).unwrap(), from_file);
}

#[test]
fn enumerations_a_data_plane_does_not_know_are_refused_by_field() {
    let mut s = snapshot();
    s.policies[0].spec.as_mut().unwrap().rules[0].action = 42;
    let err = sections_from_snapshot(&s).unwrap_err();
    assert_eq!(err.field, "policy[video].rule[0].action");
    let mut s = snapshot();
    s.policies[0].spec.as_mut().unwrap().rules[0].conditions[0].r#type = 0;
    let err = sections_from_snapshot(&s).unwrap_err();
    assert_eq!(err.field, "policy[video].rule[0].conditions[0].type");
}

#[test]
fn an_empty_snapshot_is_an_empty_site() {
    let s = pb::SiteSnapshot {
        site_id: "branch-1".into(),
        version: 1,
        ..Default::default()
    };
    let sections = sections_from_snapshot(&s).unwrap();
    assert!(sections.is_empty());
    assert_eq!(sections.compile(caps()).unwrap(), SiteState::default());
}

fn application(name: &str, category: &str, pattern: &str) -> pb::Application {
    pb::Application {
        metadata: Some(pb::ObjectMeta {
            name: name.to_lowercase(),
            ..Default::default()
        }),
        spec: Some(pb::ApplicationSpec {
            app_name: name.into(),
            category: category.into(),
            hosts: vec!["erp.acme.example".into()],
            patterns: vec![pattern.into()],
            transport: "tcp".into(),
            ports: vec![7000],
        }),
    }
}

#[test]
fn control_plane_applications_join_the_catalogue_and_policies_may_name_them() {
    let mut s = snapshot();
    s.applications = vec![application("AcmeERP", "Database", "^ACME")];
    s.policies[0].spec.as_mut().unwrap().rules[0].conditions[0] = pb::Condition {
        r#type: pb::ConditionType::Application as i32,
        value: "AcmeERP".into(),
    };
    let sections = sections_from_snapshot(&s).unwrap();
    assert_eq!(sections.applications[0].category, Category::Database);
    assert_eq!(sections.applications[0].ports, [7000]);
    let err = sections.compile(caps()).unwrap_err();
    assert_eq!(
        err.field, "policy[video].rule[0].conditions[0].value",
        "the built-in catalogue alone does not know it"
    );
    let classifier = classifier_with(&[], &sections.applications).unwrap();
    let caps = Capabilities {
        classifier: &classifier,
        has_v4: true,
        has_v6: false,
    };
    assert!(sections.compile(caps).is_ok());
}

#[test]
fn bad_control_plane_applications_are_refused_by_name() {
    let mut s = snapshot();
    s.applications = vec![application("AcmeERP", "Spreadsheets", "^ACME")];
    let err = sections_from_snapshot(&s).unwrap_err();
    assert_eq!(err.field, "application[AcmeERP].category");

    s.applications = vec![application("AcmeERP", "Database", "(unclosed")];
    let sections = sections_from_snapshot(&s).unwrap();
    let err = classifier_with(&[], &sections.applications).unwrap_err();
    assert_eq!(err.field, "application[AcmeERP].patterns");
    assert!(err.message.contains("(unclosed"), "{err}");

    s.applications = vec![application("YouTube", "Video", "^YT")];
    let sections = sections_from_snapshot(&s).unwrap();
    let err = classifier_with(&[], &sections.applications).unwrap_err();
    assert!(err.field.starts_with("application[YouTube]"), "{err}");
}

#[test]
fn a_sites_uplinks_become_settings_for_the_files_uplinks() {
    let mut s = snapshot();
    let spec = s.site.as_mut().unwrap().spec.as_mut().unwrap();
    spec.uplinks = vec![
        pb::SiteUplink {
            name: "inet".into(),
            rate_mbps: Some(50.0),
            overhead_bytes: Some(0),
            color: Some("internet".into()),
            ..Default::default()
        },
        pb::SiteUplink {
            name: "lte".into(),
            cost_per_gb: Some(8.0),
            bfd: Some(pb::BfdTimers {
                desired_min_tx_ms: 50,
                required_min_rx_ms: 0,
                detect_multiplier: 4,
            }),
            ..Default::default()
        },
    ];
    let sections = sections_from_snapshot(&s).unwrap();
    assert_eq!(
        sections.uplinks,
        [
            UplinkSettings {
                name: "inet".into(),
                rate_mbps: Some(50.0),
                overhead_bytes: Some(0),
                color: Some("internet".into()),
                ..Default::default()
            },
            UplinkSettings {
                name: "lte".into(),
                cost_per_gb: Some(8.0),
                // 0 keeps the default; the API carries no key.
                bfd: Some(BfdSection {
                    desired_min_tx_ms: Some(50),
                    required_min_rx_ms: None,
                    detect_multiplier: Some(4),
                    auth: None,
                }),
                ..Default::default()
            },
        ]
    );

    let spec = s.site.as_mut().unwrap().spec.as_mut().unwrap();
    spec.uplinks[0].overhead_bytes = Some(70_000);
    let err = sections_from_snapshot(&s).unwrap_err();
    assert_eq!(err.field, "site.uplinks[inet].overhead_bytes");
    let spec = s.site.as_mut().unwrap().spec.as_mut().unwrap();
    spec.uplinks[0].overhead_bytes = None;
    spec.uplinks[1].bfd.as_mut().unwrap().detect_multiplier = 300;
    let err = sections_from_snapshot(&s).unwrap_err();
    assert_eq!(err.field, "site.uplinks[lte].bfd.detect_multiplier");
}

#[test]
fn a_sites_classes_become_settings_for_the_files_classes() {
    let mut s = snapshot();
    let spec = s.site.as_mut().unwrap().spec.as_mut().unwrap();
    spec.qos_classes = Some(pb::SiteQosClasses {
        real_time: Some(pb::SiteQosClass {
            limit_percent: Some(20),
            dscp: Some(46),
            ..Default::default()
        }),
        bulk: Some(pb::SiteQosClass {
            weight: Some(5),
            min_percent: Some(10),
            queue_packets: Some(300),
            ..Default::default()
        }),
        ..Default::default()
    });
    let sections = sections_from_snapshot(&s).unwrap();
    assert_eq!(
        sections.qos_classes,
        ClassesSection {
            real_time: Some(ClassSection {
                limit_percent: Some(20),
                dscp: Some(46),
                ..Default::default()
            }),
            bulk: Some(ClassSection {
                weight: Some(5),
                min_percent: Some(10),
                queue_packets: Some(300),
                ..Default::default()
            }),
            ..Default::default()
        }
    );

    // A value wider than the file's field is refused by name, not cut.
    type Edit = fn(&mut pb::SiteQosClass);
    let cases: [(Edit, &str); 3] = [
        (|c| c.weight = Some(65_537), "site.qos_classes[Bulk].weight"),
        (
            |c| c.min_percent = Some(256),
            "site.qos_classes[Bulk].min_percent",
        ),
        (|c| c.dscp = Some(300), "site.qos_classes[Bulk].dscp"),
    ];
    for (edit, field) in cases {
        let mut s = s.clone();
        let spec = s.site.as_mut().unwrap().spec.as_mut().unwrap();
        edit(spec.qos_classes.as_mut().unwrap().bulk.as_mut().unwrap());
        let err = sections_from_snapshot(&s).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn bfd_timers_keep_their_defaults_where_unset_and_refuse_what_the_file_cannot_hold() {
    let timers = pb::BfdTimers {
        desired_min_tx_ms: 100,
        required_min_rx_ms: 0,
        detect_multiplier: 5,
    };
    assert_eq!(
        bfd_from_proto(&timers, "peer[hq].bfd").unwrap(),
        BfdSection {
            desired_min_tx_ms: Some(100),
            required_min_rx_ms: None,
            detect_multiplier: Some(5),
            auth: None,
        }
    );
    let err = bfd_from_proto(
        &pb::BfdTimers {
            detect_multiplier: 300,
            ..timers
        },
        "peer[hq].bfd",
    )
    .unwrap_err();
    assert_eq!(err.field, "peer[hq].bfd.detect_multiplier");
}
