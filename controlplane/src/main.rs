//! `patronus-controlplane`: the Patronus control-plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use patronus_controlplane::auth::{read_secret, BearerToken, DataplaneKey, Readers};
use patronus_controlplane::server;
use patronus_controlplane::store::{etcd, Location, Store};
use patronus_proto::logging::{self, LogArgs};

/// Patronus control plane: the public gRPC API over durable desired state.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address of the gRPC API (public API, grpc.health.v1, reflection).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where desired state lives: `redb:PATH`, a database file (created if
    /// missing), or `etcd:URL[,URL...]`, an etcd v3 cluster that several
    /// replicas share. The default is the file of `--db`.
    #[arg(long, value_name = "redb:PATH|etcd:URLS", conflicts_with = "db")]
    store: Option<Location>,
    /// Copy everything in the store (`--store` or `--db`) into this empty
    /// one (`redb:PATH` or `etcd:URLS`, the etcd flags applying to the etcd
    /// side), check the copy, and exit. Stop the source's control plane first.
    #[arg(long, value_name = "redb:PATH|etcd:URLS")]
    migrate_to: Option<Location>,
    /// The database file: short for `--store redb:PATH`.
    #[arg(long, default_value = "/var/lib/patronus/controlplane.redb")]
    db: PathBuf,
    /// The key prefix of this control plane's state on etcd, so that several
    /// can share one cluster.
    #[arg(long, default_value = "/patronus/", value_parser = etcd_prefix)]
    etcd_prefix: String,
    /// How long one etcd request may take before the call fails UNAVAILABLE, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..))]
    etcd_timeout_ms: u64,
    /// How long etcd may be unreachable before health reports NOT_SERVING,
    /// in seconds (reads of snapshots already compiled go on being served).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    etcd_unhealthy_after_s: u64,
    /// The TTL of the lease the leading replica holds, in seconds: another
    /// replica takes the leader's work over at most this long after it is gone.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=60))]
    etcd_lease_ttl_s: u64,
    /// The CA (PEM) etcd's certificates chain to: connect over TLS (https:// endpoints).
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// This replica's client certificate (PEM), for etcd's --client-cert-auth.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; mode 600 or 640).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// The etcd user, when etcd's authentication is enabled.
    #[arg(long, requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (mode 600 or 640).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// How often the leading replica compacts etcd's history to where it was
    /// the time before, in seconds; 0 leaves it to etcd's own auto-compaction.
    #[arg(long, default_value_t = 300)]
    etcd_compact_every_s: u64,
    /// Address of the fleet's `/metrics` and `/healthz` (HTTP); empty disables it.
    #[arg(long, default_value = "127.0.0.1:9470")]
    metrics_listen: String,
    /// File holding the bearer token clients must present (mode 600, or 640 from a
    /// Kubernetes Secret; never readable by others). Without
    /// it the API is open to anyone who can reach it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM; mode 600 or 640).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// File holding the viewer's bearer token: the API's reads and the
    /// event feed, nothing else (same file rules as --token-file).
    #[arg(long, value_name = "FILE")]
    viewer_token_file: Option<PathBuf>,
    /// File holding the key that makes and checks each site's data-plane
    /// token (`patronusctl dataplane-token` makes one from it); a data plane
    /// presenting it may sync its own site only. At least 32 characters.
    #[arg(long, value_name = "FILE")]
    dataplane_key_file: Option<PathBuf>,
    /// File holding the bearer token `/metrics` scrapers must present (mode
    /// 600 or 640); without it `/metrics` is open. `/healthz` stays open.
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// How long a data plane that went away is remembered (its status,
    /// last report and versions), in seconds.
    #[arg(long, default_value_t = patronus_controlplane::sync::DATAPLANE_EXPIRY.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    dataplane_expiry_s: u64,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("patronus-controlplane: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A credential read from the file a flag names, when it names one; errors
/// name the flag.
fn read_file<T>(
    path: Option<&std::path::Path>,
    read: fn(&std::path::Path) -> anyhow::Result<T>,
    flag: &str,
) -> anyhow::Result<Option<T>> {
    path.map(read).transpose().with_context(|| flag.to_owned())
}

/// A key prefix ends with `/`, so that one control plane's keys are never
/// a prefix of another's (`/a` of `/ab`).
fn etcd_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.ends_with('/') {
        return Err(format!("{text:?} must end with '/' (/patronus/)"));
    }
    Ok(text.to_owned())
}

/// Opens the store `location` names, with the etcd settings of `cli`.
async fn open_store(cli: &Cli, location: &Location) -> anyhow::Result<Store> {
    match location {
        Location::Redb(path) => {
            let etcd_only = [
                ("--etcd-ca", cli.etcd_ca.is_some()),
                ("--etcd-cert", cli.etcd_cert.is_some()),
                ("--etcd-user", cli.etcd_user.is_some()),
            ];
            if let Some((flag, _)) = etcd_only.iter().find(|(_, given)| *given) {
                anyhow::bail!("{flag} applies to --store etcd:URLS, not to a redb file");
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            Store::open_redb(path).with_context(|| format!("opening {}", path.display()))
        }
        Location::Etcd(endpoints) => {
            let tls = match &cli.etcd_ca {
                Some(ca) => Some(etcd::Tls {
                    ca: std::fs::read_to_string(ca)
                        .with_context(|| format!("--etcd-ca {}", ca.display()))?,
                    identity: match (&cli.etcd_cert, &cli.etcd_key) {
                        (Some(cert), Some(key)) => Some((
                            std::fs::read_to_string(cert)
                                .with_context(|| format!("--etcd-cert {}", cert.display()))?,
                            read_secret(key, Readers::OwnerAndGroup).context("--etcd-key")?,
                        )),
                        _ => None,
                    },
                }),
                None => None,
            };
            if tls.is_none() && endpoints.iter().any(|e| e.starts_with("https://")) {
                anyhow::bail!("--store: an https:// etcd endpoint needs --etcd-ca");
            }
            let user = match (&cli.etcd_user, &cli.etcd_password_file) {
                (Some(user), Some(file)) => Some(etcd::Credentials {
                    user: user.clone(),
                    password: zeroize::Zeroizing::new(
                        read_secret(file, Readers::OwnerAndGroup)
                            .context("--etcd-password-file")?
                            .trim()
                            .to_owned(),
                    ),
                }),
                _ => None,
            };
            let settings = etcd::Settings {
                tls,
                user,
                prefix: cli.etcd_prefix.clone(),
                request_timeout: std::time::Duration::from_millis(cli.etcd_timeout_ms),
                unhealthy_after: std::time::Duration::from_secs(cli.etcd_unhealthy_after_s),
                lease_ttl: std::time::Duration::from_secs(cli.etcd_lease_ttl_s),
                compact_every: (cli.etcd_compact_every_s > 0)
                    .then(|| std::time::Duration::from_secs(cli.etcd_compact_every_s)),
                ..etcd::Settings::new(endpoints.clone())
            };
            Store::open_etcd(settings)
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))
        }
    }
}

/// Copies the store at `from` into the empty one at `to` and checks the copy.
async fn migrate(cli: &Cli, from: &Location, to: &Location) -> anyhow::Result<()> {
    let source = open_store(cli, from).await.context("the source")?;
    let target = open_store(cli, to).await.context("the target")?;
    let copied = patronus_controlplane::store::migrate::copy(&source, &target)
        .await
        .with_context(|| format!("migrating from {from} to {to}"))?;
    println!("copied {copied} from {from} to {to}; the copy matches the source");
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let token = read_file(
        cli.token_file.as_deref(),
        BearerToken::from_file,
        "--token-file",
    )?;
    let viewer_token = read_file(
        cli.viewer_token_file.as_deref(),
        BearerToken::from_file,
        "--viewer-token-file",
    )?;
    let dataplane_key = read_file(
        cli.dataplane_key_file.as_deref(),
        DataplaneKey::from_file,
        "--dataplane-key-file",
    )?;
    let metrics_token = read_file(
        cli.metrics_token_file.as_deref(),
        BearerToken::from_file,
        "--metrics-token-file",
    )?;
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            Some(server::tls_config(cert, key, cli.tls_client_ca.as_deref())?)
        }
        _ => None,
    };
    if tls.is_none() {
        tracing::warn!("no --tls-cert: the API is served in clear text");
    }
    if token.is_none() && viewer_token.is_none() && dataplane_key.is_none() {
        tracing::warn!(
            "no --token-file, --viewer-token-file or --dataplane-key-file: the API accepts unauthenticated requests"
        );
    }
    let location = cli.store.clone().unwrap_or(Location::Redb(cli.db.clone()));
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(target) = &cli.migrate_to {
        return runtime.block_on(migrate(&cli, &location, target));
    }
    runtime.block_on(async {
        let store = Arc::new(open_store(&cli, &location).await?);
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("binding {}", cli.listen))?;
        let metrics = match cli.metrics_listen.as_str() {
            "" => None,
            addr => {
                let metrics = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
                tracing::info!(addr = %metrics.local_addr()?, "fleet metrics listening");
                Some(metrics)
            }
        };
        tracing::info!(addr = %listener.local_addr()?, store = ?location, "control plane listening");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        let settings = server::Settings {
            token,
            viewer_token,
            dataplane_key,
            tls,
            metrics_token,
            dataplane_expiry: std::time::Duration::from_secs(cli.dataplane_expiry_s),
        };
        server::serve(listener, metrics, store, settings, shutdown).await
    })
}
