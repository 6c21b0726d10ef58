//! `patronus-operator`: reconciles `patronus.io/v1` Site, Peer and Policy
//! objects into the control plane and deploys each Site's data plane. Of
//! several replicas, the one holding the leader Lease reconciles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use patronus_operator::controller::{self, Context};
use patronus_operator::leader::{self, LeaseSettings};
use patronus_operator::metrics::{self, Metrics};
use patronus_operator::{controlplane, dataplane};
use patronus_proto::client::ClientOptions;
use patronus_proto::logging::{self, LogArgs};

/// Patronus Kubernetes operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The control plane's gRPC API (`http://host:port` or `https://host:port`).
    #[arg(long, default_value = "http://patronus-controlplane:50051")]
    controlplane: String,
    /// File holding the control plane's bearer token (mode 600).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https control plane.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9480")]
    metrics_listen: SocketAddr,
    /// The leader Lease's name.
    #[arg(long, default_value = "patronus-operator")]
    lease_name: String,
    /// The leader Lease's namespace (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace (default: all).
    #[arg(long, value_name = "NAMESPACE")]
    watch_namespace: Option<String>,
    /// The image holding `patronus-dataplane`.
    #[arg(long, default_value = "ghcr.io/patronus/patronus:0.1.0")]
    dataplane_image: String,
    /// The control plane as data planes reach it (default: --controlplane).
    #[arg(long, value_name = "URL")]
    dataplane_controlplane: Option<String>,
    /// Secret (key `token`) with a bearer token mounted into every data
    /// plane alike. Prefer --dataplane-key-file: with a shared token one
    /// compromised gateway speaks for every site.
    #[arg(long, value_name = "NAME", conflicts_with = "dataplane_key_file")]
    dataplane_token_secret: Option<String>,
    /// The control plane's data-plane key (its --dataplane-key-file): each
    /// Site's data plane gets a token valid for that site only, in a Secret
    /// `<site>-controlplane-token` the Site owns.
    #[arg(long, value_name = "FILE")]
    dataplane_key_file: Option<PathBuf>,
    /// Send the token over clear text (http://) to a control plane off
    /// loopback, from the operator and from the data planes it deploys.
    #[arg(long)]
    insecure: bool,
    /// Secret whose `ca.crt` data planes trust for an https control plane.
    #[arg(long, value_name = "NAME")]
    dataplane_tls_ca_secret: Option<String>,
    /// Whole CPUs per data plane (a Site's patronus.io/dataplane-cpus overrides).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    dataplane_cpus: u32,
    /// Memory per data plane besides hugepages.
    #[arg(long, default_value = "1Gi")]
    dataplane_memory: String,
    /// 2 MiB hugepages per data plane.
    #[arg(long, default_value = "1Gi")]
    dataplane_hugepages: String,
    /// Multus network attachments of every data plane (comma-separated).
    #[arg(long, default_value = "")]
    dataplane_networks: String,
    /// An extended resource every data plane requests, NAME=COUNT (repeatable),
    /// such as the SR-IOV device plugin's intel.com/sriov_dpdk_wan=1.
    #[arg(long = "dataplane-resource", value_name = "NAME=COUNT", value_parser = dataplane::parse_extra_resource)]
    dataplane_resources: Vec<(String, String)>,
    /// TOML with the rest of the data-plane configuration (ports, routes, workers).
    #[arg(long, value_name = "FILE")]
    dataplane_config_template: Option<PathBuf>,
    /// How long a deleted Site, Peer or Policy waits for its control-plane
    /// copy to be removed before its finalizer is let go anyway (with a
    /// Warning Event), so that a control plane that is gone for good (after
    /// `helm uninstall`) never blocks a namespace's deletion.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    cleanup_timeout_s: u64,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("patronus-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patronus-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> anyhow::Result<dataplane::Settings> {
    let config_template = match &cli.dataplane_config_template {
        None => toml::Table::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
            if table.contains_key("controlplane") {
                anyhow::bail!(
                    "{}: [controlplane] is the operator's to write; remove it",
                    path.display()
                );
            }
            table
        }
    };
    let defaults = dataplane::Settings {
        image: cli.dataplane_image.clone(),
        controlplane: cli
            .dataplane_controlplane
            .clone()
            .unwrap_or_else(|| cli.controlplane.clone()),
        token_secret: cli.dataplane_token_secret.clone(),
        dataplane_key: cli
            .dataplane_key_file
            .as_deref()
            .map(patronus_proto::secrets::DataplaneKey::from_file)
            .transpose()
            .context("--dataplane-key-file")?,
        tls_ca_secret: cli.dataplane_tls_ca_secret.clone(),
        insecure: cli.insecure,
        cpus: cli.dataplane_cpus,
        memory: cli.dataplane_memory.clone(),
        hugepages: cli.dataplane_hugepages.clone(),
        networks: cli.dataplane_networks.clone(),
        extra_resources: cli.dataplane_resources.iter().cloned().collect(),
        config_template,
        log_format: cli.log.log_format,
    };
    // The defaults must be valid on a Site without annotations.
    dataplane::sizing(
        &patronus_operator::crd::Site::new("defaults", Default::default()),
        &defaults,
    )
    .map_err(|e| anyhow::anyhow!("--dataplane-* defaults: {e}"))?;
    Ok(defaults)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = settings(&cli)?;
    let options = ClientOptions {
        server: cli.controlplane.clone(),
        token_file: cli.token_file.clone(),
        tls_ca: cli.tls_ca.clone(),
        insecure: cli.insecure,
        ..ClientOptions::default()
    };
    let cp = controlplane::connect_lazy(&options)?;
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster or kubeconfig)")?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(cli.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}: cannot listen", cli.metrics_listen))?;
    tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown_signal()));

    let identity = cli.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "patronus-operator".into())
    });
    let lease = LeaseSettings {
        name: cli.lease_name.clone(),
        namespace: cli.lease_namespace.clone(),
        identity: identity.clone(),
        duration_s: leader::LEASE_DURATION_S,
        grace_s: leader::LEASE_GRACE_S,
    };
    let (leading, lease_task) = leader::watch_lease(client.clone(), &lease)
        .await
        .with_context(|| format!("leader Lease {}/{}", lease.namespace, lease.name))?;
    let held_until = leader::watch_expiry(client.clone(), &lease);
    let margin = leader::stop_margin(lease.duration_s);
    metrics.set_ready();
    tracing::info!(
        controlplane = %cli.controlplane,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        identity = %identity,
        "operator started; waiting for the leader lease"
    );
    let ctx = Arc::new(
        Context::new(client, cp, settings, metrics.clone(), Some(identity))
            .with_cleanup_timeout(std::time::Duration::from_secs(cli.cleanup_timeout_s)),
    );
    let namespace = cli.watch_namespace.clone();
    tokio::select! {
        () = leader::run_while_leading(leading, held_until, margin, metrics, || controller::run(ctx.clone(), namespace.as_deref())) => {}
        () = shutdown_signal() => {}
    }
    // Dropping the receiver (inside run_while_leading) asks the Lease task to
    // release the Lease, so that another replica takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(3), lease_task).await;
    tracing::info!("operator stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
