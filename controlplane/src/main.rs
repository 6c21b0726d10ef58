//! `patronus-controlplane`: the Patronus control-plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use patronus_controlplane::auth::{BearerToken, DataplaneKey};
use patronus_controlplane::server;
use patronus_controlplane::store::Store;
use patronus_proto::logging::{self, LogArgs};

/// Patronus control plane: the public gRPC API over durable desired state.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address of the gRPC API (public API, grpc.health.v1, reflection).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The database file (created if missing).
    #[arg(long, default_value = "/var/lib/patronus/controlplane.redb")]
    db: PathBuf,
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
    if let Some(dir) = cli.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store =
        Arc::new(Store::open(&cli.db).with_context(|| format!("opening {}", cli.db.display()))?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
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
        tracing::info!(addr = %listener.local_addr()?, db = %cli.db.display(), "control plane listening");
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
