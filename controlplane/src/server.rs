//! The gRPC server: the public API and the data-plane sync API (both
//! authenticated when a token is set), the standard `grpc.health.v1` service
//! and server reflection, in clear text or over TLS (rustls).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use patronus_proto::v1::control_plane_server::ControlPlaneServer;
use patronus_proto::v1::dataplane_sync_server::DataplaneSyncServer;
use patronus_proto::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use crate::api::Api;
use crate::auth::{Authenticator, BearerToken, DataplaneKey};
use crate::store::Store;
use crate::sync::{Hub, Sync, DATAPLANE_EXPIRY};

/// Calls one connection may have in progress at once (more wait their turn).
const CALLS_PER_CONNECTION: usize = 256;
/// HTTP/2 keepalive: a peer that stops answering pings is dropped, so that
/// a data plane gone without closing its stream shows as disconnected.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server runs, besides where it listens.
#[derive(Debug)]
pub struct Settings {
    /// The admin token (the whole API, and sync for any site).
    pub token: Option<BearerToken>,
    /// The viewer token (the API's reads and the event feed).
    pub viewer_token: Option<BearerToken>,
    /// The key of the data planes' per-site tokens. With no token and no
    /// key the server is open (every caller is admin).
    pub dataplane_key: Option<DataplaneKey>,
    /// TLS (mutual TLS when it names client CAs); `None`: clear text.
    pub tls: Option<ServerTlsConfig>,
    /// The token `/metrics` scrapers must present; `None`: open.
    pub metrics_token: Option<BearerToken>,
    /// How long a data plane that went away is remembered.
    pub dataplane_expiry: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token: None,
            viewer_token: None,
            dataplane_key: None,
            tls: None,
            metrics_token: None,
            dataplane_expiry: DATAPLANE_EXPIRY,
        }
    }
}

/// Serves gRPC on `listener` until `shutdown` completes, as `settings`
/// say. The fleet's `/metrics` is served on `metrics` when given. Every
/// connection is bounded: [`CALLS_PER_CONNECTION`], messages of at most
/// [`MAX_MESSAGE_BYTES`], HTTP/2 keepalive. A client's deadline
/// (`grpc-timeout`) is enforced; there is no server-wide one, since a data
/// plane's telemetry stream is one call that lasts as long as the data plane.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    store: Arc<Store>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Settings {
        token,
        viewer_token,
        dataplane_key,
        tls,
        metrics_token,
        dataplane_expiry,
    } = settings;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    follow_store_health(&store, health_reporter);
    // Reflection in both protocol versions: grpcurl and grpcio's helpers still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(patronus_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let authenticator = Authenticator {
        admin: token,
        viewer: viewer_token,
        dataplanes: dataplane_key,
    };
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    let authenticate =
        move |req: Request<()>| -> Result<Request<()>, Status> { authenticator.authenticate(req) };
    let hub = Hub::start(store.clone(), dataplane_expiry);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    if let Some(metrics) = metrics {
        let mut stopped = stopped.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::fleet::serve_metrics(metrics, hub, metrics_token, shutdown).await
            {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let api = InterceptedService::new(
        ControlPlaneServer::new(Api::new(store, hub.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        authenticate.clone(),
    );
    let sync = InterceptedService::new(
        DataplaneSyncServer::new(Sync::new(hub))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        authenticate,
    );
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .max_concurrent_streams(Some(CALLS_PER_CONNECTION as u32))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(sync)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// How often a failed database is reopened.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps `grpc.health.v1` (the whole server, "", and the API) SERVING while
/// the database is usable and NOT_SERVING while it is not, and reopens a
/// failed database every [`REOPEN_EVERY`] until it takes writes again.
/// Both tasks end when the store goes.
fn follow_store_health(store: &Arc<Store>, reporter: tonic_health::server::HealthReporter) {
    let mut healthy = store.health();
    tokio::spawn(async move {
        loop {
            let status = if healthy.borrow_and_update().is_none() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <ControlPlaneServer<Api> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            if healthy.changed().await.is_err() {
                return;
            }
        }
    });
    let weak = Arc::downgrade(store);
    let mut healthy = store.health();
    tokio::spawn(async move {
        loop {
            if healthy.wait_for(Option::is_some).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(REOPEN_EVERY).await;
                let Some(store) = weak.upgrade() else { return };
                if store.reopen().await {
                    break;
                }
            }
        }
    });
}

/// A TLS configuration from PEM files: the server's certificate chain and
/// private key (a secret: its file must not be readable by others)
/// and, for mutual TLS, the CA that client certificates must chain to.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<ServerTlsConfig> {
    use anyhow::Context as _;
    let cert_pem = std::fs::read_to_string(cert)
        .with_context(|| format!("{}: cannot read", cert.display()))?;
    let key_pem = crate::auth::read_secret(key, crate::auth::Readers::OwnerAndGroup)?;
    let mut config = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
        cert_pem,
        key_pem.as_bytes(),
    ));
    if let Some(ca) = client_ca {
        let ca_pem = std::fs::read_to_string(ca)
            .with_context(|| format!("{}: cannot read", ca.display()))?;
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca_pem));
    }
    Ok(config)
}
