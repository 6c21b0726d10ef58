use std::sync::OnceLock;

use super::*;

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::with_user_apps(&[]).expect("the built-in catalogue compiles"))
}

fn caps(has_v6: bool) -> Capabilities<'static> {
    Capabilities {
        classifier: classifier(),
        has_v4: true,
        has_v6,
    }
}

const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn sections(toml_text: &str) -> SiteSections {
    #[derive(Deserialize)]
    struct File {
        site: Option<SiteSection>,
        #[serde(default, rename = "peer")]
        peers: Vec<PeerSection>,
        #[serde(default, rename = "policy")]
        policies: Vec<PolicySection>,
    }
    let f: File = toml::from_str(toml_text).expect("test TOML parses");
    SiteSections {
        site: f.site,
        peers: f.peers,
        policies: f.policies,
        applications: Vec::new(),
        uplinks: Vec::new(),
        qos_classes: Default::default(),
    }
}

fn file() -> String {
    format!(
        r#"
[site]
site_id = "branch-1"
region = "eu-west-1"
tunnel_endpoint = {{ address = "198.51.100.1", port = 51820 }}
peers = [{{ site_id = "hq", address = "203.0.113.1" }}]

[[peer]]
name = "hq"
endpoint = {{ address = "203.0.113.1", port = 51820 }}
wireguard = {{ public_key = "{KEY}" }}

[[policy]]
name = "video"
[[policy.rule]]
action = "route"
priority = 100
conditions = [{{ type = "category", value = "Video" }}]
path_selection = {{ strategy = "lowest-latency", thresholds = {{ max_latency_ms = 80 }} }}
[[policy.rule]]
action = "deny"
priority = 200
conditions = [{{ type = "application", value = "BitTorrent" }}, {{ type = "destination-port", value = "6881" }}]
"#
    )
}

fn error(s: &SiteSections, has_v6: bool) -> ConfigError {
    s.compile(caps(has_v6))
        .expect_err("the sections are refused")
}

#[test]
fn a_file_compiles_with_rules_highest_priority_first() {
    let state = sections(&file()).compile(caps(false)).unwrap();
    assert_eq!(state.peers.len(), 1);
    assert_eq!(
        state.peers[0].endpoint,
        Some(("203.0.113.1".to_owned(), 51820))
    );
    let priorities: Vec<u32> = state.rules.iter().map(|r| r.priority).collect();
    assert_eq!(priorities, [200, 100]);
    assert_eq!(
        state.rules[0].conditions,
        [
            Match::Application(
                "BitTorrent".into(),
                classifier().pattern("BitTorrent").unwrap()
            ),
            Match::DestinationPort(6881)
        ]
    );
    assert_eq!(
        state.rules[1].conditions,
        [Match::Category(Category::Video)]
    );
}

#[test]
fn peer_debug_leaves_the_key_out() {
    let state = sections(&file()).compile(caps(false)).unwrap();
    let shown = format!("{:?}", state.peers[0]);
    assert!(
        shown.contains("hq") && !shown.contains("public_key"),
        "{shown}"
    );
}

#[test]
fn every_refusal_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "value = \"BitTorrent\"",
            "value = \"NoSuchApp\"",
            "policy[video].rule[1].conditions[0].value",
        ),
        (
            "value = \"Video\"",
            "value = \"Movies\"",
            "policy[video].rule[0].conditions[0].value",
        ),
        (
            "value = \"6881\"",
            "value = \"0\"",
            "policy[video].rule[1].conditions[1].value",
        ),
        (
            "priority = 200",
            "priority = 100",
            "policy[video].rule[1].priority",
        ),
        (
            "max_latency_ms = 80",
            "max_packet_loss_pct = 101",
            "policy[video].rule[0].path_selection.thresholds.max_packet_loss_pct",
        ),
        (KEY, "c2hvcnQ=", "peer[hq].wireguard.public_key"),
        (
            "port = 51820 }\nwireguard",
            "port = 0 }\nwireguard",
            "peer[hq].endpoint.port",
        ),
        (
            "address = \"203.0.113.1\", port = 51820 }\nwireguard",
            "address = \"bad host\", port = 1 }\nwireguard",
            "peer[hq].endpoint.address",
        ),
        ("name = \"hq\"", "name = \"HQ\"", "peer[0].name"),
        (
            "value = \"6881\" }]",
            "value = \"6881\" }]\nqos_class = \"Bulk\"",
            "policy[video].rule[1].qos_class",
        ),
        (
            "wireguard = { public_key",
            "bfd_enabled = true\nwireguard = { public_key",
            "peer[hq].tunnel_address",
        ),
        (
            "wireguard = { public_key",
            "tunnel_address = \"10.99.0.2\"\nwireguard = { public_key",
            "peer[hq].tunnel_address",
        ),
        (
            "wireguard = { public_key",
            "bfd = { detect_multiplier = 5 }\nwireguard = { public_key",
            "peer[hq].bfd",
        ),
        (
            "wireguard = { public_key",
            "bfd_enabled = true\nsla_probes = true\ntunnel_address = \"fd00::2\"\nwireguard = { public_key",
            "peer[hq].tunnel_address",
        ),
        (
            "wireguard = { public_key",
            "bfd_enabled = true\nsla_probes = true\ntunnel_address = \"10.99.0.2\"\nbfd = { desired_min_tx_ms = 5 }\nwireguard = { public_key",
            "peer[hq].bfd.desired_min_tx_ms",
        ),
        (
            "wireguard = { public_key",
            "bfd_enabled = true\nsla_probes = true\ntunnel_address = \"10.99.0.2\"\nbfd = { detect_multiplier = 1 }\nwireguard = { public_key",
            "peer[hq].bfd.detect_multiplier",
        ),
        ("site_id = \"branch-1\"", "site_id = \"\"", "site.site_id"),
        (
            "site_id = \"hq\", address",
            "site_id = \"branch-1\", address",
            "site.peers[0].site_id",
        ),
    ];
    for (from, to, field) in cases {
        let text = file();
        assert!(text.contains(from), "{from}");
        let err = error(&sections(&text.replacen(from, to, 1)), false);
        assert_eq!(&err.field, field, "{to}: {err}");
    }
}

#[test]
fn a_patronus_peer_may_run_bfd_with_its_own_timers() {
    use crate::bfd::session::Timers;
    use crate::config::site::PeerBfd;
    let text = file().replacen(
        "wireguard = { public_key",
        "bfd_enabled = true\nsla_probes = true\ntunnel_address = \"10.99.0.2\"\n\
         bfd = { desired_min_tx_ms = 50, detect_multiplier = 4 }\nwireguard = { public_key",
        1,
    );
    let state = sections(&text).compile(caps(false)).unwrap();
    assert_eq!(
        state.peers[0].bfd,
        Some(PeerBfd {
            remote: "10.99.0.2".parse().unwrap(),
            timers: Timers {
                desired_min_tx_us: 50_000,
                required_min_rx_us: 300_000,
                detect_mult: 4,
            },
            auth: None,
        })
    );
    assert_eq!(
        sections(&file()).compile(caps(false)).unwrap().peers[0].bfd,
        None
    );
}

#[test]
fn a_rule_can_name_the_class_of_its_flows() {
    let text = file().replacen(
        "max_latency_ms = 80 } }",
        "max_latency_ms = 80 } }\nqos_class = \"Interactive\"",
        1,
    );
    let state = sections(&text).compile(caps(false)).unwrap();
    let classes: Vec<_> = state.rules.iter().map(|r| r.qos_class).collect();
    assert_eq!(classes, [None, Some(Class::Interactive)]);
    // Video is a category, not a class.
    let e =
        toml::from_str::<RuleSection>("action = \"allow\"\npriority = 1\nqos_class = \"Video\"")
            .unwrap_err();
    assert!(e.to_string().contains("is not a QoS class"), "{e}");
}

#[test]
fn route_rules_need_a_path_and_others_must_not_have_one() {
    let text = file().replace("action = \"route\"", "action = \"allow\"");
    assert_eq!(
        error(&sections(&text), false).field,
        "policy[video].rule[0].path_selection"
    );
    let text = file().replace(
        "path_selection = { strategy = \"lowest-latency\", thresholds = { max_latency_ms = 80 } }",
        "",
    );
    assert_eq!(
        error(&sections(&text), false).field,
        "policy[video].rule[0].path_selection"
    );
}

#[test]
fn a_peer_needs_an_address_family_the_gateway_has() {
    let text = file().replace(
        "address = \"203.0.113.1\", port = 51820 }\nwireguard",
        "address = \"2001:db8::1\", port = 51820 }\nwireguard",
    );
    let err = error(&sections(&text), false);
    assert_eq!(err.field, "peer[hq].endpoint.address");
    assert!(err.message.contains("IPv6"), "{err}");
    assert!(sections(&text).compile(caps(true)).is_ok());
}

#[test]
fn application_names_follow_the_classifier() {
    for name in [
        "SSH",
        "TLS",
        "YouTube",
        "TLS.YouTube",
        "QUIC.YouTube",
        "Unknown",
    ] {
        assert!(classifier().knows(name), "{name}");
    }
    for name in ["", "Youtube", "TLS.", "YouTube.TLS", "NoSuchApp"] {
        assert!(!classifier().knows(name), "{name}");
    }
}

#[test]
fn bfd_authentication_takes_a_private_key_file_and_a_known_type() {
    use crate::bfd::auth::Sha1Key;
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("patronus-site-bfd-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("bfd.key");
    std::fs::write(&key, "s3cret\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_auth = |kind: &str| {
        file().replacen(
            "wireguard = { public_key",
            &format!(
                "bfd_enabled = true\nsla_probes = true\ntunnel_address = \"10.99.0.2\"\n\
                 bfd = {{ auth = {{ type = \"{kind}\", key_id = 3, key_file = \"{}\" }} }}\n\
                 wireguard = {{ public_key",
                key.display()
            ),
            1,
        )
    };
    let state = sections(&with_auth("meticulous-keyed-sha1"))
        .compile(caps(false))
        .unwrap();
    assert_eq!(
        state.peers[0].bfd.as_ref().unwrap().auth,
        Some(Sha1Key::new(3, b"s3cret", true).unwrap()),
        "the key without its newline"
    );
    let err = error(&sections(&with_auth("md5")), false);
    assert_eq!(err.field, "peer[hq].bfd.auth.type", "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = error(&sections(&with_auth("keyed-sha1")), false);
    assert_eq!(err.field, "peer[hq].bfd.auth.key_file", "{err}");
    assert!(err.message.contains("readable by group"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_catalogue_compiled_for_the_same_applications_is_shared() {
    let acme = |pattern: &str| -> AppSpec {
        toml::from_str(&format!(
            "name = \"AcmeSync\"\ncategory = \"FileTransfer\"\npatterns = [{pattern:?}]"
        ))
        .unwrap()
    };
    let first = classifier_with(&[acme("^ACMESYNC")], &[]).unwrap();
    let again = classifier_with(&[], &[acme("^ACMESYNC")]).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the same applications");
    let other = classifier_with(&[acme("^ACMESYNC2")], &[]).unwrap();
    assert!(!Arc::ptr_eq(&first, &other), "another pattern");
    // A refused catalogue is refused every time, with the entry named.
    for _ in 0..2 {
        let err = classifier_with(&[acme("^ACME(")], &[]).unwrap_err();
        assert_eq!(err.field, "dpi.application[0].patterns");
    }
}
