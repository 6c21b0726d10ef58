//! The control-plane agent: a tokio task on its own thread, beside the
//! workers, that subscribes to the site's snapshots and answers each with
//! ACK or NACK.
//!
//! The agent never touches the configuration in force itself: it hands each
//! snapshot to the control loop ([`ApplyRequest`]), which validates it
//! against the running data plane and publishes it in one swap, so workers
//! see the old site configuration or the new one, never a mix, and file
//! reloads and snapshots cannot interleave. When the control plane goes
//! away the data plane keeps forwarding on what it runs; the agent
//! reconnects with exponential backoff (with jitter, so a fleet does not
//! reconnect in step) and the fresh subscription resynchronises it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use patronus_proto::client::Authorization;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::{
    AckResult, AcknowledgeRequest, BfdSession, DataplaneCounters, DataplaneEvent, PeerTelemetry,
    SiteSnapshot, SubscribeRequest, TelemetryReport,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use patronus_core::config::dns::{self, HostAddresses};
use patronus_core::config::site::{classifier_with, SiteSections};
use patronus_core::config::{ControlPlaneSection, Snapshot};
use patronus_core::dpi::apps::AppSpec;
use patronus_core::dpi::Classifier;
use patronus_core::published::Published;
use patronus_proto::client::ClientOptions;

use crate::resolver::Resolver;
use crate::site_sync::sections_from_snapshot;

/// A snapshot for the control loop to apply, and where to say how it went.
#[derive(Debug)]
pub struct ApplyRequest {
    /// The snapshot's version.
    pub version: u64,
    /// Its sections, converted on the agent's thread.
    pub sections: SiteSections,
    /// Its peers' endpoint host names, resolved on the agent's thread
    /// (with every other name the resolver knows).
    pub hosts: Arc<HostAddresses>,
    /// The classifier for its applications, compiled on the agent's thread
    /// (Hyperscan takes a good fraction of a second) when they changed.
    pub classifier: Option<PreparedClassifier>,
    /// `Ok` once it is in force; `Err(reason)` when it was refused.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// A classifier compiled ahead of the swap.
#[derive(Debug)]
pub struct PreparedClassifier {
    /// The file's applications it was compiled with; if a reload changed
    /// them meanwhile, the control loop compiles again.
    pub file_applications: Arc<Vec<AppSpec>>,
    /// The compiled catalogue.
    pub classifier: Arc<Classifier>,
}

/// What the agent reports in the data plane's metrics.
#[derive(Debug, Default)]
pub struct AgentStatus {
    /// Subscribed right now.
    pub connected: AtomicBool,
    /// Snapshots refused since start.
    pub refused: AtomicU64,
    /// Subscriptions that ended (the control plane went away or failed).
    pub disconnects: AtomicU64,
}

/// What the agent reports, read from the running data plane.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// The snapshot version in force.
    pub applied_version: u64,
    /// Port and worker totals.
    pub counters: DataplaneCounters,
    /// One entry per configured peer.
    pub peers: Vec<PeerTelemetry>,
    /// Every BFD session.
    pub bfd_sessions: Vec<BfdSession>,
}

/// Reads [`Telemetry`] from the data plane; called every telemetry interval.
pub type TelemetrySource = Arc<dyn Fn() -> Telemetry + Send + Sync>;

/// Capacity of the event queue to the agent: while the control plane is away
/// events wait here; beyond it they are dropped (never blocking the sender).
pub const EVENT_QUEUE: usize = 256;

/// Everything the agent is started with.
pub struct AgentSetup {
    /// Snapshots go to the control loop through here.
    pub apply: mpsc::Sender<ApplyRequest>,
    /// Counters for the data plane's metrics.
    pub status: Arc<AgentStatus>,
    /// Read every telemetry interval.
    pub telemetry: TelemetrySource,
    /// Data-plane events to report.
    pub events: mpsc::Receiver<DataplaneEvent>,
    /// The configuration in force (for the file's applications).
    pub config: Arc<Published<Snapshot>>,
    /// Resolves the snapshots' endpoint host names.
    pub resolver: Resolver,
}

impl std::fmt::Debug for AgentSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSetup").finish_non_exhaustive()
    }
}

/// The running agent; dropping it stops the thread.
#[derive(Debug)]
pub struct Agent {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The data plane's identity: the configured one, or the host name.
pub fn dataplane_id(section: &ControlPlaneSection) -> String {
    if !section.dataplane_id.is_empty() {
        return section.dataplane_id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(253)
        .collect();
    if id.is_empty() {
        "dataplane".to_owned()
    } else {
        id
    }
}

/// Exponential backoff with jitter: each wait is uniform in [d/2, d], with d
/// doubling from `min` to `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            min,
            max,
            next: min,
            seed,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn wait(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not secrecy.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d / 2 + d.mul_f64((self.seed % 1000) as f64 / 2000.0)
    }
}

/// The `[controlplane]` section as the gRPC client's connection settings
/// for one of its servers.
fn client_options(section: &ControlPlaneSection, server: &str) -> ClientOptions {
    ClientOptions {
        server: server.to_owned(),
        token_file: section.token_file.clone(),
        tls_ca: section.tls_ca.clone(),
        tls_cert: section.tls_cert.clone(),
        tls_key: section.tls_key.clone(),
        insecure: section.insecure,
    }
}

impl Agent {
    /// Starts the agent: reads the credentials now (a missing or too widely
    /// readable token file fails the start) and connects in the background.
    ///
    /// # Errors
    /// When the connection settings are unusable.
    pub fn start(section: &ControlPlaneSection, setup: AgentSetup) -> anyhow::Result<Agent> {
        let mut endpoints = Vec::new();
        let mut auth = None;
        for server in section.endpoints() {
            let (endpoint, authorization) = client_options(section, server)
                .endpoint()
                .with_context(|| format!("controlplane {server}"))?;
            endpoints.push(
                endpoint
                    .connect_timeout(Duration::from_secs(5))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5)),
            );
            auth = Some(authorization);
        }
        let auth = auth.context("controlplane: no server")?;
        let session = Session {
            endpoints,
            current: 0,
            auth,
            site_id: section.site_id.clone(),
            dataplane_id: dataplane_id(section),
            apply: setup.apply,
            status: setup.status,
            applied: (0, 0),
            applied_digest: Vec::new(),
            telemetry: setup.telemetry,
            events: setup.events,
            interval: Duration::from_millis(section.telemetry_interval_ms.into()),
            config: setup.config,
            applications: Vec::new(),
            resolver: setup.resolver,
        };
        let mut backoff = Backoff::new(
            Duration::from_millis(section.reconnect_min_ms.into()),
            Duration::from_millis(section.reconnect_max_ms.into()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut shutdown) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("patronus-agent".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut session = session;
                    loop {
                        tokio::select! {
                            _ = &mut shutdown => return,
                            ended = session.run(&mut backoff) => {
                                session.status.connected.store(false, Ordering::Release);
                                session.status.disconnects.fetch_add(1, Ordering::Relaxed);
                                if let Err(err) = ended {
                                    tracing::warn!(
                                        server = %session.endpoint().uri(),
                                        "control plane unavailable, forwarding on the configuration in force: {err:#}"
                                    );
                                }
                                // The next attempt goes to the next replica.
                                session.current = (session.current + 1) % session.endpoints.len();
                            }
                        }
                        if session.apply.is_closed() {
                            return;
                        }
                        tokio::select! {
                            _ = &mut shutdown => return,
                            () = tokio::time::sleep(backoff.wait()) => {}
                        }
                    }
                });
            })?;
        Ok(Agent {
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the agent and waits for its thread.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The data-plane sync client, authenticated.
type SyncClient = DataplaneSyncClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Authorization>,
>;

/// One subscription's worth of state, kept across reconnections.
struct Session {
    /// The control-plane replicas, tried in turn.
    endpoints: Vec<Endpoint>,
    /// The one in use (or tried next).
    current: usize,
    auth: Authorization,
    site_id: String,
    dataplane_id: String,
    apply: mpsc::Sender<ApplyRequest>,
    status: Arc<AgentStatus>,
    /// The epoch and version in force ((0, 0): none yet).
    applied: (u64, u64),
    /// The digest of the snapshot in force (empty: none, or a control
    /// plane that sends none).
    applied_digest: Vec<u8>,
    telemetry: TelemetrySource,
    events: mpsc::Receiver<DataplaneEvent>,
    interval: Duration,
    config: Arc<Published<Snapshot>>,
    /// The control plane's applications in force.
    applications: Vec<AppSpec>,
    /// Resolves the snapshots' endpoint host names.
    resolver: Resolver,
}

impl Session {
    /// The replica in use.
    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current]
    }

    /// Subscribes, answers snapshots and reports telemetry until either
    /// stream ends or fails.
    async fn run(&mut self, backoff: &mut Backoff) -> anyhow::Result<()> {
        let channel = self.endpoint().connect().await.context("connecting")?;
        let mut client = DataplaneSyncClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(patronus_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(patronus_proto::MAX_MESSAGE_BYTES);
        let mut snapshots = client
            .subscribe(SubscribeRequest {
                site_id: self.site_id.clone(),
                dataplane_id: self.dataplane_id.clone(),
                running_epoch: self.applied.0,
                running_version: self.applied.1,
                running_digest: self.applied_digest.clone(),
            })
            .await
            .context("subscribing")?
            .into_inner();
        self.status.connected.store(true, Ordering::Release);
        tracing::info!(
            server = %self.endpoint().uri(),
            site = self.site_id,
            dataplane = self.dataplane_id,
            "subscribed to the control plane"
        );
        let (reports, outbox) = mpsc::channel::<TelemetryReport>(4);
        let mut reporter = client.clone();
        let report_call = reporter.report(ReceiverStream::new(outbox));
        tokio::pin!(report_call);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                snapshot = snapshots.message() => {
                    let Some(snapshot) = snapshot.context("receiving snapshots")? else {
                        anyhow::bail!("the control plane ended the subscription");
                    };
                    // Only a snapshot in force ends the backoff: a control
                    // plane that accepts the subscription and then sends
                    // what cannot be received or applied must not be
                    // retried at full speed by the whole fleet.
                    if self.answer(&mut client, snapshot).await? {
                        backoff.reset();
                    }
                }
                ended = &mut report_call => {
                    ended.context("reporting telemetry")?;
                    anyhow::bail!("the control plane ended the telemetry stream");
                }
                _ = tick.tick() => {
                    let report = self.report();
                    // A full outbox means the control plane is not reading:
                    // this report is dropped, the next one carries the totals.
                    let _ = reports.try_send(report);
                }
            }
        }
    }

    /// Applies (or refuses) one snapshot and tells the control plane;
    /// `true` when it is in force.
    async fn answer(
        &mut self,
        client: &mut SyncClient,
        snapshot: SiteSnapshot,
    ) -> anyhow::Result<bool> {
        let (epoch, version) = (snapshot.epoch, snapshot.version);
        // A resubscription resends the version in force: nothing to apply.
        // The same version of another epoch (a control plane on a new
        // database) is another snapshot.
        if self.applied.0 != 0 && epoch != self.applied.0 {
            tracing::warn!(
                version,
                "the control plane runs another database than the snapshot in force came from: \
                 its snapshot is applied whatever its version"
            );
        }
        let digest = snapshot.digest.clone();
        let outcome = if (epoch, version) == self.applied {
            Ok(None)
        } else {
            self.apply(snapshot).await?
        };
        let in_force = outcome.is_ok();
        let (result, reason) = match outcome {
            Ok(applications) => {
                self.applied = (epoch, version);
                self.applied_digest = digest;
                if let Some(applications) = applications {
                    self.applications = applications;
                }
                (AckResult::Ack, String::new())
            }
            Err(reason) => {
                self.status.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    version,
                    "snapshot refused, the configuration in force stays: {reason}"
                );
                (AckResult::Nack, reason)
            }
        };
        client
            .acknowledge(AcknowledgeRequest {
                site_id: self.site_id.clone(),
                dataplane_id: self.dataplane_id.clone(),
                version,
                result: result as i32,
                reason,
                epoch,
            })
            .await
            .context("acknowledging")?;
        Ok(in_force)
    }

    /// The current telemetry and the events queued since the last report.
    fn report(&mut self) -> TelemetryReport {
        let t = (self.telemetry)();
        let mut events = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            events.push(e);
        }
        TelemetryReport {
            site_id: self.site_id.clone(),
            dataplane_id: self.dataplane_id.clone(),
            applied_version: t.applied_version,
            counters: Some(t.counters),
            peers: t.peers,
            events,
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            bfd_sessions: t.bfd_sessions,
        }
    }

    /// Prepares a snapshot (conversion, and the classifier when its
    /// applications changed), hands it to the control loop and waits for its
    /// verdict: the applications now in force, or why it was refused.
    async fn apply(
        &self,
        snapshot: SiteSnapshot,
    ) -> anyhow::Result<Result<Option<Vec<AppSpec>>, String>> {
        let sections = match sections_from_snapshot(&snapshot) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let classifier = if sections.applications == self.applications {
            None
        } else {
            let file_applications = self.config.load().dpi.file_applications.clone();
            match classifier_with(&file_applications, &sections.applications) {
                Ok(c) => Some(PreparedClassifier {
                    file_applications,
                    classifier: c,
                }),
                Err(e) => return Ok(Err(e.to_string())),
            }
        };
        let applications = sections.applications.clone();
        let hosts = self
            .resolver
            .resolve_async(dns::host_names(&sections.peers))
            .await;
        let (reply, verdict) = oneshot::channel();
        let request = ApplyRequest {
            version: snapshot.version,
            sections,
            hosts,
            classifier,
            reply,
        };
        self.apply
            .send(request)
            .await
            .map_err(|_| anyhow::anyhow!("the data plane is shutting down"))?;
        let verdict = verdict
            .await
            .map_err(|_| anyhow::anyhow!("the data plane is shutting down"))?;
        Ok(verdict.map(|()| Some(applications)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::ResolverThread;
    use patronus_core::config::Config;
    use patronus_proto::v1 as pb;
    use patronus_proto::v1::dataplane_sync_server::{DataplaneSync, DataplaneSyncServer};
    use tonic::{Request, Response, Status};

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<Duration> = (0..6).map(|_| b.wait()).collect();
        for (w, d) in waits.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let d = Duration::from_millis(d);
            assert!(
                *w >= d / 2 && *w <= d,
                "{w:?} not within [{:?}, {d:?}]",
                d / 2
            );
        }
        b.reset();
        assert!(b.wait() <= Duration::from_millis(100));
    }

    /// A control plane that accepts every subscription and then sends one
    /// snapshot: too large to receive, or a plain one after which it ends
    /// the stream.
    struct OneSnapshot {
        oversized: bool,
    }

    #[tonic::async_trait]
    impl DataplaneSync for OneSnapshot {
        type SubscribeStream = tokio_stream::Iter<std::vec::IntoIter<Result<SiteSnapshot, Status>>>;

        async fn subscribe(
            &self,
            _: Request<SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            let mut snapshot = SiteSnapshot {
                version: 1,
                epoch: 7,
                ..Default::default()
            };
            if self.oversized {
                snapshot.site = Some(pb::Site {
                    spec: Some(pb::SiteSpec {
                        display_name: "x".repeat(patronus_proto::MAX_MESSAGE_BYTES + 1),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            Ok(Response::new(tokio_stream::iter(vec![Ok(snapshot)])))
        }

        async fn acknowledge(
            &self,
            _: Request<AcknowledgeRequest>,
        ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
            Ok(Response::new(pb::AcknowledgeResponse {}))
        }

        async fn report(
            &self,
            req: Request<tonic::Streaming<TelemetryReport>>,
        ) -> Result<Response<pb::ReportResponse>, Status> {
            let mut reports = req.into_inner();
            while reports.message().await?.is_some() {}
            Ok(Response::new(pb::ReportResponse {}))
        }
    }

    /// A session subscribed to `server`, and the control loop's end of its
    /// apply channel.
    async fn session_with(
        server: OneSnapshot,
    ) -> (Session, mpsc::Receiver<ApplyRequest>, ResolverThread) {
        let (resolver, resolver_thread) = Resolver::start(&Default::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DataplaneSyncServer::new(server).max_encoding_message_size(usize::MAX))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let (endpoint, auth) = ClientOptions {
            server: format!("http://{address}"),
            ..Default::default()
        }
        .endpoint()
        .unwrap();
        let (apply, applied) = mpsc::channel(1);
        let config = Config::from_toml("[[port]]\nname = \"lan\"\ndevice = \"net_null0\"\n")
            .unwrap()
            .validate(1)
            .unwrap();
        let session = Session {
            endpoints: vec![endpoint],
            current: 0,
            auth,
            site_id: "site-a".into(),
            dataplane_id: "gw-1".into(),
            apply,
            status: Arc::default(),
            applied: (0, 0),
            applied_digest: Vec::new(),
            telemetry: Arc::new(Telemetry::default),
            events: mpsc::channel(1).1,
            interval: Duration::from_secs(3600),
            config: Arc::new(Published::new(config)),
            applications: Vec::new(),
            resolver,
        };
        (session, applied, resolver_thread)
    }

    #[tokio::test]
    async fn backoff_grows_until_a_snapshot_is_in_force() {
        let min = Duration::from_millis(100);
        let mut backoff = Backoff::new(min, Duration::from_secs(10));

        // Subscribed every time, never a snapshot received: the waits grow.
        let (mut session, _applied, _resolver) =
            session_with(OneSnapshot { oversized: true }).await;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let err = session.run(&mut backoff).await.unwrap_err();
            assert!(
                format!("{err:#}").contains("receiving snapshots"),
                "{err:#}"
            );
            waits.push(backoff.wait());
        }
        assert!(waits[3] >= min * 4, "the backoff did not grow: {waits:?}");

        // A snapshot put in force resets it.
        let (mut session, mut applied, _resolver) =
            session_with(OneSnapshot { oversized: false }).await;
        tokio::spawn(async move {
            while let Some(request) = applied.recv().await {
                let _ = request.reply.send(Ok(()));
            }
        });
        let err = session.run(&mut backoff).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("ended the subscription"),
            "{err:#}"
        );
        assert_eq!(session.applied, (7, 1));
        assert!(backoff.wait() <= min);
    }

    #[test]
    fn dataplane_id_defaults_to_a_clean_host_name() {
        let id = dataplane_id(&ControlPlaneSection::default());
        assert!(!id.is_empty() && id.len() <= 253);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        let named = ControlPlaneSection {
            dataplane_id: "gw-1".into(),
            ..Default::default()
        };
        assert_eq!(dataplane_id(&named), "gw-1");
    }
}
