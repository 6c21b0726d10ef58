use super::*;
use crate::crd::{Endpoint, SiteSpec};

fn site(annotations: &[(&str, &str)]) -> Site {
    let mut site = Site::new(
        "us-east",
        SiteSpec {
            site_id: "us-east-1".into(),
            tunnel_endpoint: Endpoint {
                address: "203.0.113.10".into(),
                port: 51820,
            },
            ..SiteSpec::default()
        },
    );
    site.metadata.namespace = Some("sdwan".into());
    site.metadata.uid = Some("3b0e3c8e-1111-4a4a-9d9d-000000000001".into());
    site.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    site
}

fn settings() -> Settings {
    Settings {
        token_secret: Some("patronus-controlplane-token".into()),
        tls_ca_secret: Some("patronus-controlplane-tls".into()),
        networks: "sriov-wan,sriov-lan".into(),
        extra_resources: BTreeMap::from([(
            "intel.com/sriov_dpdk_wan".to_owned(),
            "1".to_owned(),
        )]),
        config_template: toml::from_str(
            "[[ports]]\nname = \"wan\"\ndevice = \"0000:3b:02.0\"\naddresses = [\"203.0.113.10/24\"]\n\
             [tunnel]\nmtu = 1380\n",
        )
        .unwrap(),
        ..Settings::default()
    }
}

fn container(d: &Deployment) -> &Container {
    &d.spec.template.spec.as_ref().unwrap().containers[0]
}

#[test]
fn data_planes_log_in_the_operators_format() {
    let site = site(&[]);
    for format in [LogFormat::Text, LogFormat::Json] {
        let s = Settings {
            log_format: format,
            ..settings()
        };
        let d = deployment(&site, &s, &sizing(&site, &s).unwrap(), "x");
        let args = container(&d).args.clone().unwrap();
        let at = args.iter().position(|a| a == "--log-format").unwrap();
        assert_eq!(args[at + 1], format.to_string());
    }
}

#[test]
fn the_deployment_gets_whole_cpus_hugepages_and_guaranteed_qos() {
    let site = site(&[]);
    let s = settings();
    let sizing = sizing(&site, &s).unwrap();
    let d = deployment(&site, &s, &sizing, &config_toml(&site, &s));
    let resources = container(&d).resources.as_ref().unwrap();
    // Guaranteed QoS: every request equals its limit, CPUs are whole.
    assert_eq!(resources.requests, resources.limits);
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(limits["cpu"], Quantity("2".into()));
    assert_eq!(limits["memory"], Quantity("1Gi".into()));
    assert_eq!(limits["hugepages-2Mi"], Quantity("1Gi".into()));
    assert_eq!(
        limits["intel.com/sriov_dpdk_wan"],
        Quantity("1".into()),
        "the VF"
    );
    let pod = d.spec.template.spec.as_ref().unwrap();
    let hugepages = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "hugepages")
        .unwrap();
    assert_eq!(
        hugepages.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("HugePages-2Mi")
    );
    assert!(container(&d)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.name == "hugepages" && m.mount_path == "/dev/hugepages"));
}

#[test]
fn the_deployment_has_dpdks_capabilities_and_is_not_privileged() {
    let site = site(&[]);
    let s = settings();
    let d = deployment(&site, &s, &sizing(&site, &s).unwrap(), "");
    let sc = container(&d).security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref().unwrap(),
        ["IPC_LOCK", "NET_ADMIN", "NET_RAW"]
    );
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
}

#[test]
fn the_deployment_attaches_multus_networks_and_is_owned_by_the_site() {
    let site = site(&[]);
    let s = settings();
    let d = deployment(&site, &s, &sizing(&site, &s).unwrap(), "x");
    let annotations = d
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations[MULTUS_ANNOTATION], "sriov-wan,sriov-lan");
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "Site");
    assert_eq!(owner.api_version, "patronus.io/v1");
    assert_eq!(owner.name, "us-east");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(d.metadata.namespace.as_deref(), Some("sdwan"));
    // One pod at a time: hugepages and VFs are not shared with a successor.
    assert_eq!(
        d.spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate")
    );
}

#[test]
fn secrets_are_mounted_owner_read_only() {
    let site = site(&[]);
    let s = settings();
    let d = deployment(&site, &s, &sizing(&site, &s).unwrap(), "x");
    let pod = d.spec.template.spec.as_ref().unwrap();
    let secrets: Vec<_> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref())
        .collect();
    assert_eq!(secrets.len(), 3, "the WireGuard key, the token, the CA");
    assert!(secrets[..2].iter().all(|s| s.default_mode == Some(0o400)));
    let ca = secrets[2].items.as_ref().unwrap();
    assert_eq!((ca.len(), ca[0].key.as_str()), (1, "ca.crt"), "the CA only");
    assert_eq!(secrets[0].secret_name.as_deref(), Some("us-east-wireguard"));
}

#[test]
fn annotations_override_the_sizes_and_bad_ones_name_the_annotation() {
    let s = settings();
    let big = site(&[
        (CPUS_ANNOTATION, "4"),
        (HUGEPAGES_ANNOTATION, "4Gi"),
        (MEMORY_ANNOTATION, "2Gi"),
        (NETWORKS_ANNOTATION, "sriov-a"),
    ]);
    assert_eq!(
        sizing(&big, &s).unwrap(),
        Sizing {
            cpus: 4,
            memory: "2Gi".into(),
            hugepages: "4Gi".into(),
            networks: "sriov-a".into()
        }
    );
    for (key, value) in [
        (CPUS_ANNOTATION, "1.5"),
        (CPUS_ANNOTATION, "0"),
        (HUGEPAGES_ANNOTATION, "lots"),
        (MEMORY_ANNOTATION, "-1Gi"),
        (NETWORKS_ANNOTATION, "Bad Name"),
        (NETWORKS_ANNOTATION, "sriov-a,tenant-b/sriov-wan@net1"),
    ] {
        let err = sizing(&site(&[(key, value)]), &s).unwrap_err().to_string();
        assert!(err.contains(key), "{key}={value}: {err}");
    }
    // Its own namespace's networks, qualified or not, are the Site's to attach.
    let own = site(&[(NETWORKS_ANNOTATION, "sdwan/sriov-wan@net1,sriov-lan")]);
    assert_eq!(
        sizing(&own, &s).unwrap().networks,
        "sdwan/sriov-wan@net1,sriov-lan"
    );
}

#[test]
fn the_config_adds_the_control_plane_and_tunnel_to_the_template() {
    let site = site(&[]);
    let s = settings();
    let text = config_toml(&site, &s);
    let config: toml::Table = toml::from_str(&text).unwrap();
    let cp = config["controlplane"].as_table().unwrap();
    assert_eq!(
        cp["server"].as_str(),
        Some("http://patronus-controlplane:50051")
    );
    assert_eq!(cp["site_id"].as_str(), Some("us-east-1"));
    assert_eq!(
        cp["token_file"].as_str(),
        Some("/var/run/patronus/token/token")
    );
    assert_eq!(cp["tls_ca"].as_str(), Some("/var/run/patronus/tls/ca.crt"));
    assert!(cp.get("insecure").is_none(), "clear text only when asked");
    let insecure = config_toml(
        &site,
        &Settings {
            insecure: true,
            ..settings()
        },
    );
    let insecure: toml::Table = toml::from_str(&insecure).unwrap();
    assert_eq!(insecure["controlplane"]["insecure"].as_bool(), Some(true));
    let tunnel = config["tunnel"].as_table().unwrap();
    assert_eq!(tunnel["listen_port"].as_integer(), Some(51820));
    assert_eq!(
        tunnel["mtu"].as_integer(),
        Some(1380),
        "the template's own keys stay"
    );
    assert_eq!(
        tunnel["private_key_file"].as_str(),
        Some("/var/run/patronus/wireguard/private-key")
    );
    assert_eq!(config["ports"].as_array().unwrap().len(), 1);
    // A changed configuration rolls the pod through the template's digest.
    let d1 = deployment(&site, &s, &sizing(&site, &s).unwrap(), &text);
    let d2 = deployment(
        &site,
        &s,
        &sizing(&site, &s).unwrap(),
        &format!("{text}\n# x"),
    );
    let digest = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["patronus.io/config-digest"]
            .clone()
    };
    assert_ne!(digest(&d1), digest(&d2));
}

#[test]
fn generated_keys_are_clamped_and_their_public_key_is_derived() {
    let site = site(&[]);
    let key = generate_key().unwrap();
    let secret = key_secret(&site, &key);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .unwrap();
    assert_eq!(raw.len(), 32);
    assert_eq!(raw[0] & 7, 0);
    assert_eq!(raw[31] & 0xc0, 0x40);
    let public = public_key(&secret).unwrap();
    assert_eq!(public.len(), 44);
    assert_ne!(public, *key);
    assert_ne!(generate_key().unwrap(), key, "keys are random");
    // RFC 7748 section 6.1: Alice's key pair.
    let alice = key_secret(&site, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=");
    assert_eq!(
        public_key(&alice).unwrap(),
        "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
    );
    let mut broken = secret.clone();
    broken
        .data
        .as_mut()
        .unwrap()
        .insert(KEY_FIELD.into(), ByteString(b"c2hvcnQ=".to_vec()));
    let err = public_key(&broken).unwrap_err().to_string();
    assert!(
        err.contains("us-east-wireguard") && !err.contains("c2hvcnQ"),
        "{err}"
    );
}

#[test]
fn extended_resources_are_parsed_with_clear_errors() {
    assert_eq!(
        parse_extra_resource("intel.com/sriov_dpdk_wan=2").unwrap(),
        ("intel.com/sriov_dpdk_wan".to_owned(), "2".to_owned())
    );
    for bad in [
        "sriov=1",
        "intel.com/sriov",
        "intel.com/x=one",
        "cpu=2",
        "kubernetes.io/x=1",
    ] {
        assert!(parse_extra_resource(bad).is_err(), "{bad}");
    }
}

#[test]
fn with_a_data_plane_key_each_site_gets_a_token_for_itself_only() {
    let site = site(&[]);
    let key = DataplaneKey::new("a-data-plane-key-of-at-least-32-characters").unwrap();
    let s = Settings {
        dataplane_key: Some(key.clone()),
        ..settings()
    };
    let secret = token_secret(&site, &key);
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("us-east-controlplane-token")
    );
    assert_eq!(
        secret.metadata.owner_references.as_ref().unwrap()[0].name,
        "us-east",
        "the Site owns it: deleting the Site deletes it"
    );
    let token = String::from_utf8(secret.data.as_ref().unwrap()["token"].0.clone()).unwrap();
    assert_eq!(key.site_of(token.trim()).as_deref(), Some("us-east-1"));

    // The data plane mounts the site's own Secret, not the shared one.
    let d = deployment(&site, &s, &sizing(&site, &s).unwrap(), "x");
    let pod = d.spec.template.spec.as_ref().unwrap();
    let token_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "controlplane-token")
        .unwrap();
    assert_eq!(
        token_volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("us-east-controlplane-token")
    );
    let config: toml::Table = toml::from_str(&config_toml(&site, &s)).unwrap();
    assert_eq!(
        config["controlplane"]["token_file"].as_str(),
        Some("/var/run/patronus/token/token")
    );
}

#[test]
fn a_key_secret_the_site_does_not_own_is_used_only_when_adopted() {
    let key = |owner: Option<&Site>| {
        let mut secret = key_secret(&site(&[]), &generate_key().unwrap());
        secret.metadata.owner_references =
            owner.and_then(|s| s.controller_owner_ref(&()).map(|o| vec![o]));
        secret
    };
    let plain = site(&[]);
    check_key_owner(&plain, &key(Some(&plain))).unwrap();

    // Planted by someone else under the Site's name: refused, saying how to adopt it.
    let err = check_key_owner(&plain, &key(None)).unwrap_err().to_string();
    assert!(
        err.contains("not owned by this Site") && err.contains(ADOPT_KEY_ANNOTATION),
        "{err}"
    );
    let mut other = site(&[]);
    other.metadata.uid = Some("another-uid".into());
    assert!(check_key_owner(&plain, &key(Some(&other))).is_err());

    // The Site's author created it as the key, and says so.
    let adopting = site(&[(ADOPT_KEY_ANNOTATION, "true")]);
    check_key_owner(&adopting, &key(None)).unwrap();
}
