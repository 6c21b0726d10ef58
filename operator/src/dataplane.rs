//! Each Site's data plane: a Deployment running `patronus-dataplane` with
//! whole pinned CPUs, 2 MiB hugepages and the capabilities DPDK needs, its
//! SR-IOV networks attached by Multus, its configuration in a ConfigMap and
//! its WireGuard private key in a Secret that the operator generates once.
//!
//! The key never passes through a log line or an error message: only the
//! public key leaves this module, published in the Site's status.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, Secret, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use patronus_proto::logging::LogFormat;
use patronus_proto::secrets::DataplaneKey;
use zeroize::Zeroizing;

use crate::crd::Site;
use crate::Error;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "patronus-operator";
/// Where the data plane finds its configuration.
const CONFIG_DIR: &str = "/etc/patronus";
/// The configuration file's name in the ConfigMap and in `CONFIG_DIR`.
const CONFIG_FILE: &str = "dataplane.toml";
/// Where the WireGuard key Secret is mounted.
const KEY_DIR: &str = "/var/run/patronus/wireguard";
/// The key's name in the Secret (base64 text, as `wg genkey` writes it).
pub const KEY_FIELD: &str = "private-key";
/// Where the control-plane token Secret is mounted.
const TOKEN_DIR: &str = "/var/run/patronus/token";
/// The token's name in its Secret.
const TOKEN_FIELD: &str = "token";
/// Where the control plane's CA certificate is mounted.
const TLS_DIR: &str = "/var/run/patronus/tls";
/// The CA certificate's name in its Secret.
const CA_FIELD: &str = "ca.crt";
/// The data plane's `/metrics` and `/healthz` port.
pub const METRICS_PORT: u16 = 9469;
/// Annotation on a Site: whole CPUs for its data plane (one per worker).
pub const CPUS_ANNOTATION: &str = "patronus.io/dataplane-cpus";
/// Annotation on a Site: memory for its data plane (a quantity, such as 1Gi).
pub const MEMORY_ANNOTATION: &str = "patronus.io/dataplane-memory";
/// Annotation on a Site: 2 MiB hugepages for its data plane (a quantity).
pub const HUGEPAGES_ANNOTATION: &str = "patronus.io/dataplane-hugepages";
/// Annotation on a Site: the Multus network attachments of its data plane.
pub const NETWORKS_ANNOTATION: &str = "patronus.io/networks";
/// Annotation on a Site: `"true"` adopts a `<site>-wireguard` Secret that
/// the Site does not own (one its author created beforehand) as its key.
pub const ADOPT_KEY_ANNOTATION: &str = "patronus.io/adopt-wireguard-secret";
/// Multus's pod annotation.
pub const MULTUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// How data planes are deployed; a Site's annotations override the sizes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The image holding `patronus-dataplane`.
    pub image: String,
    /// The control plane as the data planes reach it (`http://host:port`).
    pub controlplane: String,
    /// A Secret (key `token`) holding a bearer token shared by every data
    /// plane; ignored when `dataplane_key` is set.
    pub token_secret: Option<String>,
    /// The control plane's data-plane key: each site's data planes get a
    /// token for that site only, in a Secret the Site owns.
    pub dataplane_key: Option<DataplaneKey>,
    /// A Secret whose `ca.crt` the control plane's certificate chains to
    /// (for an `https://` control plane).
    pub tls_ca_secret: Option<String>,
    /// Data planes send the token over clear text to an `http://` control
    /// plane (`insecure = true` in their `[controlplane]`).
    pub insecure: bool,
    /// Whole CPUs: guaranteed QoS gives each a core of its own.
    pub cpus: u32,
    /// Memory besides hugepages.
    pub memory: String,
    /// 2 MiB hugepages.
    pub hugepages: String,
    /// Default Multus network attachments (comma-separated names).
    pub networks: String,
    /// Extended resources every data plane requests, such as the SR-IOV
    /// device plugin's `intel.com/sriov_dpdk_wan` = `1`.
    pub extra_resources: BTreeMap<String, String>,
    /// The rest of the data-plane configuration (ports, routes, workers),
    /// to which the operator adds `[controlplane]`, `[tunnel]` and `[metrics]`.
    pub config_template: toml::Table,
    /// How the data planes log (the operator's own format).
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "ghcr.io/patronus/patronus:0.1.0".into(),
            controlplane: "http://patronus-controlplane:50051".into(),
            token_secret: None,
            dataplane_key: None,
            tls_ca_secret: None,
            insecure: false,
            cpus: 2,
            memory: "1Gi".into(),
            hugepages: "1Gi".into(),
            networks: String::new(),
            extra_resources: BTreeMap::new(),
            config_template: toml::Table::new(),
            log_format: LogFormat::Text,
        }
    }
}

/// The sizes for one site, after its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// Whole CPUs.
    pub cpus: u32,
    /// Memory quantity.
    pub memory: String,
    /// Hugepages quantity.
    pub hugepages: String,
    /// Multus attachments.
    pub networks: String,
}

fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"].contains(&suffix)
}

fn is_networks(s: &str) -> bool {
    s.split(',').all(|n| {
        let n = n.trim();
        !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./@".contains(&b))
    })
}

/// The first network of a Multus list (`name`, `namespace/name`, each
/// optionally `@interface`) that names a namespace other than `namespace`.
fn foreign_network<'a>(list: &'a str, namespace: &str) -> Option<&'a str> {
    list.split(',')
        .map(str::trim)
        .find(|n| n.split_once('/').is_some_and(|(ns, _)| ns != namespace))
}

/// The site's sizes: the settings, overridden by its annotations.
///
/// # Errors
/// An annotation that is not a whole number of CPUs, a quantity, or a list
/// of network names.
pub fn sizing(site: &Site, settings: &Settings) -> Result<Sizing, Error> {
    let annotations = site.annotations();
    let invalid = |field: &str, message: &str| Error::Invalid {
        field: format!("metadata.annotations[{field}]"),
        message: message.into(),
    };
    let cpus = match annotations.get(CPUS_ANNOTATION) {
        None => settings.cpus,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(|| invalid(CPUS_ANNOTATION, "must be a whole number of CPUs, 1-256"))?,
    };
    let quantity = |key: &str, default: &str| match annotations.get(key) {
        None => Ok(default.to_owned()),
        Some(v) if is_quantity(v) => Ok(v.clone()),
        Some(_) => Err(invalid(key, "must be a quantity such as 512Mi or 2Gi")),
    };
    let networks = match annotations.get(NETWORKS_ANNOTATION) {
        None => settings.networks.clone(),
        Some(v) if !is_networks(v) => Err(invalid(
            NETWORKS_ANNOTATION,
            "must be comma-separated network attachment names",
        ))?,
        // A Site may attach its own namespace's networks only: another
        // namespace's (`other/name`) belong to their own tenants. The
        // chart's defaults, set by the cluster's operator, may name any.
        Some(v) => match foreign_network(v, &site.namespace().unwrap_or_default()) {
            Some(n) => Err(invalid(
                NETWORKS_ANNOTATION,
                &format!("{n:?} is another namespace's network; a Site may attach its own namespace's only"),
            ))?,
            None => v.clone(),
        },
    };
    Ok(Sizing {
        cpus,
        memory: quantity(MEMORY_ANNOTATION, &settings.memory)?,
        hugepages: quantity(HUGEPAGES_ANNOTATION, &settings.hugepages)?,
        networks,
    })
}

/// Parses `NAME=COUNT`, an extended resource such as `intel.com/sriov_dpdk_wan=1`.
///
/// # Errors
/// A name without a domain, or a count that is not a whole number.
pub fn parse_extra_resource(text: &str) -> Result<(String, String), String> {
    let (name, count) = text.split_once('=').ok_or_else(|| {
        format!("{text:?}: expected NAME=COUNT, such as intel.com/sriov_dpdk_wan=1")
    })?;
    let domain_ok = name.split_once('/').is_some_and(|(domain, resource)| {
        domain.contains('.') && !resource.is_empty() && !domain.ends_with("kubernetes.io")
    });
    if !domain_ok {
        return Err(format!(
            "{name:?}: an extended resource is named DOMAIN/NAME (such as intel.com/sriov_dpdk_wan)"
        ));
    }
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name}: {count:?} is not a whole number"));
    }
    Ok((name.to_owned(), count.to_owned()))
}

/// The name of the site's Deployment and ConfigMap.
pub fn workload_name(site: &Site) -> String {
    format!("{}-dataplane", site.name_any())
}

/// The name of the Secret holding the site's own control-plane token.
pub fn token_secret_name(site: &Site) -> String {
    format!("{}-controlplane-token", site.name_any())
}

/// The Secret the site's data planes take their control-plane token from:
/// the site's own when there is a data-plane key, else the shared one.
fn token_secret_of(site: &Site, settings: &Settings) -> Option<String> {
    match &settings.dataplane_key {
        Some(_) => Some(token_secret_name(site)),
        None => settings.token_secret.clone(),
    }
}

/// The Secret holding the site's own token (valid for its site id only),
/// owned by the site.
pub fn token_secret(site: &Site, key: &DataplaneKey) -> Secret {
    let token = Zeroizing::new(key.token_for(&site.spec.site_id));
    Secret {
        metadata: owned_meta(site, token_secret_name(site)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_FIELD.into(),
            ByteString(format!("{}\n", token.as_str()).into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// Server-side-applies the site's own token Secret when there is a
/// data-plane key (a changed site id or key replaces the token).
///
/// # Errors
/// The API refused it.
pub async fn ensure_token(
    client: &kube::Client,
    site: &Site,
    settings: &Settings,
) -> Result<(), Error> {
    let Some(key) = &settings.dataplane_key else {
        return Ok(());
    };
    let ns = site.namespace().unwrap_or_default();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            &token_secret_name(site),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&token_secret(site, key)),
        )
        .await?;
    Ok(())
}

/// The name of the Secret holding the site's WireGuard private key.
pub fn key_secret_name(site: &Site) -> String {
    format!("{}-wireguard", site.name_any())
}

fn labels(site: &Site) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "patronus-dataplane".into()),
        ("app.kubernetes.io/instance".into(), site.name_any()),
        ("app.kubernetes.io/component".into(), "dataplane".into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        ("patronus.io/site-id".into(), site.spec.site_id.clone()),
    ])
}

fn owned_meta(site: &Site, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: site.namespace(),
        labels: Some(labels(site)),
        owner_references: site.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The data plane's configuration file: the template plus what the operator
/// knows (where the control plane is, which site, the tunnel's key and port).
pub fn config_toml(site: &Site, settings: &Settings) -> String {
    let mut config = settings.config_template.clone();
    let mut controlplane = toml::Table::new();
    controlplane.insert("server".into(), settings.controlplane.clone().into());
    controlplane.insert("site_id".into(), site.spec.site_id.clone().into());
    if token_secret_of(site, settings).is_some() {
        controlplane.insert(
            "token_file".into(),
            format!("{TOKEN_DIR}/{TOKEN_FIELD}").into(),
        );
    }
    if settings.tls_ca_secret.is_some() {
        controlplane.insert("tls_ca".into(), format!("{TLS_DIR}/{CA_FIELD}").into());
    }
    if settings.insecure {
        controlplane.insert("insecure".into(), true.into());
    }
    config.insert("controlplane".into(), controlplane.into());
    let tunnel = config
        .entry("tunnel")
        .or_insert_with(|| toml::Table::new().into());
    if let Some(tunnel) = tunnel.as_table_mut() {
        tunnel.insert(
            "private_key_file".into(),
            format!("{KEY_DIR}/{KEY_FIELD}").into(),
        );
        tunnel.insert(
            "listen_port".into(),
            i64::from(site.spec.tunnel_endpoint.port).into(),
        );
    }
    let metrics = config
        .entry("metrics")
        .or_insert_with(|| toml::Table::new().into());
    if let Some(metrics) = metrics.as_table_mut() {
        metrics.insert("listen".into(), format!("0.0.0.0:{METRICS_PORT}").into());
    }
    format!(
        "# Written by {MANAGER} for Site {}; edit the operator's template instead.\n{}",
        site.name_any(),
        toml::to_string(&config).expect("a TOML table serialises")
    )
}

/// The ConfigMap holding the configuration.
pub fn config_map(site: &Site, config: &str) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(site, workload_name(site)),
        data: Some(BTreeMap::from([(CONFIG_FILE.into(), config.into())])),
        ..ConfigMap::default()
    }
}

fn digest(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            // The data plane refuses key files that group or others may read.
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(Into::into),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The site's Deployment. Requests equal limits and CPUs are whole, so the
/// pod gets guaranteed QoS and, with the kubelet's static CPU manager,
/// cores of its own for the pinned workers. No privileged mode: the
/// capabilities DPDK needs (locking hugepage memory, programming and
/// opening raw interfaces) and nothing else.
pub fn deployment(site: &Site, settings: &Settings, sizing: &Sizing, config: &str) -> Deployment {
    let labels = labels(site);
    let selector = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "patronus-dataplane".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), site.name_any()),
    ]);
    let mut annotations =
        BTreeMap::from([("patronus.io/config-digest".to_owned(), digest(config))]);
    if !sizing.networks.is_empty() {
        annotations.insert(MULTUS_ANNOTATION.into(), sizing.networks.clone());
    }
    let mut resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(sizing.cpus.to_string())),
        ("memory".to_owned(), Quantity(sizing.memory.clone())),
        (
            "hugepages-2Mi".to_owned(),
            Quantity(sizing.hugepages.clone()),
        ),
    ]);
    for (name, count) in &settings.extra_resources {
        resources.insert(name.clone(), Quantity(count.clone()));
    }
    let probe = |initial_delay| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("wireguard", KEY_DIR, true),
        mount("hugepages", "/dev/hugepages", false),
        mount("dpdk-runtime", "/var/run/dpdk", false),
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: workload_name(site),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume("wireguard", key_secret_name(site)),
        empty_dir("hugepages", Some("HugePages-2Mi")),
        empty_dir("dpdk-runtime", None),
    ];
    if let Some(token) = token_secret_of(site, settings) {
        mounts.push(mount("controlplane-token", TOKEN_DIR, true));
        volumes.push(secret_volume("controlplane-token", token));
    }
    if let Some(ca) = &settings.tls_ca_secret {
        mounts.push(mount("controlplane-ca", TLS_DIR, true));
        volumes.push(Volume {
            name: "controlplane-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.clone()),
                // Only the certificate, whatever else the Secret holds.
                items: Some(vec![KeyToPath {
                    key: CA_FIELD.into(),
                    path: CA_FIELD.into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o444),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: "dataplane".into(),
        image: Some(settings.image.clone()),
        command: Some(vec!["patronus-dataplane".into()]),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            "--log-format".into(),
            settings.log_format.to_string(),
        ]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("metrics".into()),
                container_port: i32::from(METRICS_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("wireguard".into()),
                container_port: i32::from(site.spec.tunnel_endpoint.port),
                protocol: Some("UDP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec![
                    "IPC_LOCK".into(),
                    "NET_ADMIN".into(),
                    "NET_RAW".into(),
                ]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        liveness_probe: Some(probe(30)),
        readiness_probe: Some(probe(5)),
        ..Container::default()
    };
    Deployment {
        metadata: owned_meta(site, workload_name(site)),
        spec: DeploymentSpec {
            replicas: Some(1),
            // The old pod must let go of its hugepages and VFs before the new one starts.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// A fresh WireGuard private key, clamped as `wg genkey` clamps it, in base64.
fn generate_key() -> Result<Zeroizing<String>, Error> {
    use ring::rand::SecureRandom as _;
    let mut key = Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| Error::Invalid {
            field: "wireguard key".into(),
            message: "the system's random generator failed".into(),
        })?;
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(key.as_ref()),
    ))
}

/// That the key Secret is the Site's: owned by it, or adopted by it.
fn check_key_owner(site: &Site, secret: &Secret) -> Result<(), Error> {
    let owned = site
        .uid()
        .is_some_and(|uid| secret.owner_references().iter().any(|o| o.uid == uid));
    let adopted = site
        .annotations()
        .get(ADOPT_KEY_ANNOTATION)
        .is_some_and(|v| v == "true");
    if owned || adopted {
        return Ok(());
    }
    Err(Error::Invalid {
        field: format!("Secret {:?}", secret.name_any()),
        message: format!(
            "exists and is not owned by this Site: if you created it as the Site's key, annotate the Site {ADOPT_KEY_ANNOTATION}: \"true\"; otherwise delete it"
        ),
    })
}

/// The public key of the private key in `secret`.
fn public_key(secret: &Secret) -> Result<String, Error> {
    let name = secret.name_any();
    let malformed = || Error::Invalid {
        field: format!("Secret {name:?} key {KEY_FIELD:?}"),
        message: "must hold a WireGuard private key (32 bytes in base64)".into(),
    };
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FIELD))
        .ok_or_else(malformed)?;
    let text = Zeroizing::new(String::from_utf8_lossy(&text.0).trim().to_owned());
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| malformed())?,
    );
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed())?;
    let secret = x25519_dalek::StaticSecret::from(key);
    let public = x25519_dalek::PublicKey::from(&secret);
    Ok(base64::engine::general_purpose::STANDARD.encode(public.as_bytes()))
}

/// The Secret for a new key, owned by the site.
fn key_secret(site: &Site, key: &str) -> Secret {
    Secret {
        metadata: owned_meta(site, key_secret_name(site)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KEY_FIELD.into(),
            ByteString(format!("{key}\n").into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The site's WireGuard public key, generating the private key (once) if its
/// Secret does not exist. A Secret the Site does not own (created by
/// someone else beforehand) is used only when the Site adopts it
/// ([`ADOPT_KEY_ANNOTATION`]): whoever can plant a Secret under that name
/// must not choose a site's key.
///
/// # Errors
/// The API failed, the existing Secret is not the Site's, or it holds no
/// valid key.
pub async fn ensure_key(client: &kube::Client, site: &Site) -> Result<String, Error> {
    let ns = site.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = key_secret_name(site);
    if let Some(secret) = secrets.get_opt(&name).await? {
        check_key_owner(site, &secret)?;
        return public_key(&secret);
    }
    let secret = key_secret(site, &generate_key()?);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match secrets.create(&params, &secret).await {
        Ok(created) => public_key(&created),
        // Another replica (before losing the lease) got there first: use its key.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            public_key(&secrets.get(&name).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Server-side-applies the site's ConfigMap and Deployment.
///
/// # Errors
/// The API refused either object.
pub async fn apply(
    client: &kube::Client,
    site: &Site,
    settings: &Settings,
    sizing: &Sizing,
) -> Result<(), Error> {
    let ns = site.namespace().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    let config = config_toml(site, settings);
    let name = workload_name(site);
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(&name, &params, &Patch::Apply(&config_map(site, &config)))
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &params,
            &Patch::Apply(&deployment(site, settings, sizing, &config)),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
