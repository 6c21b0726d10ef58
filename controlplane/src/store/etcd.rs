//! The replicated backend: desired state in an etcd v3 cluster.
//!
//! Layout under the configured prefix (default `/patronus/`):
//!
//! - `r/{kind}/{name}`: a resource, protobuf-encoded. Its `resource_version`
//!   is not stored: it is the key's `mod_revision`, etcd's store-wide
//!   revision at its last write (as Kubernetes does).
//! - `u/{kind}/{key}`: the owner of a unique spec key (a site_id).
//! - `t/{kind}/{group}`: the bytes a capped group takes (a site's peers).
//! - `epoch`: drawn once by the first replica to open the cluster.
//! - `f/`: what the replicas share about their data planes ([`super::shared`]).
//! - `leader/`: the election ([`super::leader`]).
//!
//! Every write is one transaction that compares what it read (the
//! resource's `mod_revision`, the unique key's and the group total's) and
//! changes everything at once; a comparison lost to a concurrent write is
//! read again, and answers CONFLICT only when the resource itself moved.
//! etcd acknowledges a transaction once a quorum of members has it on disk.
//!
//! One watch on the prefix per replica, resumed from the last revision it
//! delivered, tells the followers of every write to `r/` and `f/` in
//! revision order, whichever replica made it. A write returns once the watch has delivered
//! it, so a client's next read of events and snapshots includes its write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType as WatchEventType, GetOptions, KeyValue,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use patronus_proto::v1::{Application, EventType, ObjectMeta, Peer, Policy, Site};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use super::leader::{self, Leadership};
use super::shared::{self, FleetNews, FleetView, Outbox};
use super::{
    check_fits, decode, not_found, Change, DesiredState, Followers, News, Origin, Page, StoreError,
};
use crate::resource::{name_of, Resource};

/// How to reach the cluster and where in it desired state lives.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client URLs of the members (`http://10.0.0.1:2379`, or `https://`
    /// with [`Settings::tls`]).
    pub endpoints: Vec<String>,
    /// TLS to the members: the CA their certificates chain to and, for
    /// etcd's `--client-cert-auth`, this replica's certificate and key.
    pub tls: Option<Tls>,
    /// etcd's own authentication (`etcdctl auth enable`): user and password.
    pub user: Option<Credentials>,
    /// The key prefix, so that several control planes can share a cluster.
    pub prefix: String,
    /// How long one request may take before it fails as UNAVAILABLE.
    pub request_timeout: Duration,
    /// How long the cluster may be unreachable before health reports NOT_SERVING.
    pub unhealthy_after: Duration,
    /// The TTL of the lease the leader holds: another replica leads at most
    /// this long after the leader is gone.
    pub lease_ttl: Duration,
    /// How often the leader compacts etcd's history to the revision of the
    /// previous time (None: never; etcd's own auto-compaction does it).
    pub compact_every: Option<Duration>,
}

/// TLS settings, as PEM text.
#[derive(Clone)]
pub struct Tls {
    /// The CA the members' certificates chain to.
    pub ca: String,
    /// This replica's certificate and private key (a secret).
    pub identity: Option<(String, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// An etcd user and its password (a secret, never shown).
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The defaults for `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Settings {
        Settings {
            endpoints,
            tls: None,
            user: None,
            prefix: "/patronus/".into(),
            request_timeout: Duration::from_secs(3),
            unhealthy_after: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(5),
            compact_every: Some(Duration::from_secs(300)),
        }
    }
}

/// Times a write is attempted when concurrent writes keep changing what it
/// compared, before it answers UNAVAILABLE.
const WRITE_ATTEMPTS: usize = 32;
/// Largest response accepted from etcd: a read of every resource of a kind.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Upper bounds of the etcd request latency histogram, in seconds.
const REQUEST_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 3.0];
/// How often the cluster is asked whether it answers.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// First and last pause before a request that met a transient failure
/// (a member gone, an election) is made again.
const AGAIN: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(250));
/// First and last pause between attempts to restore the watch.
const WATCH_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// The store on etcd.
pub struct EtcdStore {
    client: Client,
    settings: Settings,
    epoch: u64,
    health: watch::Sender<Option<String>>,
    /// The highest revision whose changes the followers have been told.
    delivered: watch::Sender<i64>,
    /// The highest revision etcd has answered with (the health probe's).
    latest: AtomicI64,
    leadership: Arc<Leadership>,
    /// How long each etcd request took.
    requests: Histogram,
    /// Compactions this replica made as the leader.
    compactions: AtomicU64,
    /// The unique-key and group-total keys as this replica last wrote or
    /// read them, so that a create compares against them without reading
    /// first: when another replica changed one meanwhile, the comparison
    /// fails and the transaction reads it back in the same round trip.
    remembered: std::sync::Mutex<HashMap<String, (i64, Vec<u8>)>>,
    /// This replica's name among the others (drawn at random when it opens).
    replica: String,
    /// What this replica has yet to share about its data planes.
    outbox: Arc<Outbox>,
}

/// Most keys [`EtcdStore::remember`] keeps before starting afresh.
const REMEMBERED: usize = 65_536;

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.settings.endpoints)
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

/// An etcd failure as the API reports it: the cluster unreachable, without
/// quorum or too slow is UNAVAILABLE (retry); anything else is internal.
fn etcd_error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            unavailable(status.message())
        }
        E::TransportError(e) => unavailable(e),
        E::IoError(e) => unavailable(e),
        other => StoreError::Backend(format!("etcd: {other}")),
    }
}

/// etcd unreachable, without quorum or too slow. A write refused this way
/// may have been proposed already and be applied once etcd recovers.
fn unavailable(why: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd is unreachable or without quorum ({why}); a write refused for this may still be \
         applied once etcd recovers: read before writing it again"
    ))
}

/// Whether a failed request may succeed when asked again: etcd was
/// unreachable, had no leader (an election), or did not answer in time.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `bytes` decoded as `R`, its version the key's `mod_revision`.
fn resource<R: Resource>(name: &str, kv: &KeyValue) -> Result<R, StoreError> {
    let mut r: R = decode(name, kv.value())?;
    r.meta_mut().resource_version = kv.mod_revision() as u64;
    Ok(r)
}

/// The single GET answer of a transaction's `index`th operation.
fn got(responses: &[TxnOpResponse], index: usize) -> Option<&KeyValue> {
    match responses.get(index) {
        Some(TxnOpResponse::Get(get)) => get.kvs().first(),
        _ => None,
    }
}

/// Every key-value of a transaction's `index`th (range) operation.
fn ranged(responses: &[TxnOpResponse], index: usize) -> &[KeyValue] {
    match responses.get(index) {
        Some(TxnOpResponse::Get(get)) => get.kvs(),
        _ => &[],
    }
}

/// What a write read before its transaction: a key's `mod_revision` (0
/// when absent) to compare, and its value.
struct Seen {
    key: String,
    revision: i64,
    value: Vec<u8>,
}

impl Seen {
    fn read(key: String, kv: Option<&KeyValue>) -> Seen {
        Seen {
            key,
            revision: kv.map_or(0, KeyValue::mod_revision),
            value: kv.map(|kv| kv.value().to_vec()).unwrap_or_default(),
        }
    }

    fn unchanged(&self) -> Compare {
        Compare::mod_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    fn total(&self) -> usize {
        std::str::from_utf8(&self.value)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }
}

/// The total of a group after a write: its key set to the new total, or
/// deleted at 0.
fn set_total(key: &str, total: usize) -> TxnOp {
    if total == 0 {
        TxnOp::delete(key, None)
    } else {
        TxnOp::put(key, total.to_string(), None)
    }
}

impl EtcdStore {
    /// Connects, reads (or draws) the epoch and starts the watch that
    /// tells `followers` of every write.
    pub(crate) async fn open(
        settings: Settings,
        followers: Arc<Followers>,
    ) -> Result<Arc<EtcdStore>, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.request_timeout)
            .with_timeout(settings.request_timeout)
            .with_keep_alive(Duration::from_secs(2), settings.request_timeout)
            .with_require_leader(true);
        if let Some(tls) = &settings.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key.as_bytes()));
            }
            options = options.with_tls(config);
        }
        if let Some(credentials) = &settings.user {
            options = options
                .with_user(credentials.user.clone(), credentials.password.to_string())
                .with_auto_token_refresh(true);
        }
        let client = Client::connect(&settings.endpoints, Some(options))
            .await
            .map_err(etcd_error)?;
        let epoch_key = format!("{}epoch", settings.prefix);
        // Never 0: that is what a data plane reports before its first snapshot.
        let drawn = (uuid::Uuid::new_v4().as_u128() as u64).max(1);
        let fleet = format!("{}{}", settings.prefix, shared::FLEET);
        let txn = Txn::new()
            .when([Compare::create_revision(
                epoch_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(epoch_key.clone(), drawn.to_string(), None),
                TxnOp::get(fleet.clone(), Some(GetOptions::new().with_prefix())),
            ])
            .or_else([
                TxnOp::get(epoch_key.clone(), None),
                TxnOp::get(fleet.clone(), Some(GetOptions::new().with_prefix())),
            ]);
        let answer = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .txn(txn)
            .await
            .map_err(etcd_error)?;
        let start = answer.header().map_or(0, |h| h.revision());
        let view = FleetView::read(&settings.prefix, ranged(&answer.op_responses(), 1));
        let epoch = if answer.succeeded() {
            drawn
        } else {
            got(&answer.op_responses(), 0)
                .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
                .ok_or_else(|| StoreError::Backend(format!("{epoch_key} does not hold an epoch")))?
        };
        let leadership = Arc::<Leadership>::default();
        let store = Arc::new(EtcdStore {
            client,
            settings,
            epoch,
            health: watch::Sender::new(None),
            delivered: watch::Sender::new(start),
            latest: AtomicI64::new(start),
            leadership: leadership.clone(),
            requests: Histogram::new(REQUEST_BUCKETS),
            compactions: AtomicU64::new(0),
            remembered: std::sync::Mutex::default(),
            replica: uuid::Uuid::new_v4().to_string(),
            outbox: Arc::default(),
        });
        followers.tell(&News::Fleet(FleetNews::All(Arc::new(view))));
        tokio::spawn(watch_changes(Arc::downgrade(&store), followers, start));
        tokio::spawn(follow_health(Arc::downgrade(&store)));
        tokio::spawn(shared::send_out(
            Arc::downgrade(&store),
            store.outbox.clone(),
            leadership.lease(),
        ));
        tokio::spawn(leader::campaign(
            Arc::downgrade(&store),
            leadership,
            store.replica.clone(),
        ));
        if let Some(every) = store.settings.compact_every {
            tokio::spawn(compact_history(Arc::downgrade(&store), every));
        }
        tracing::info!(
            endpoints = ?store.settings.endpoints,
            prefix = store.settings.prefix,
            replica = store.replica,
            epoch,
            revision = start,
            "desired state on etcd"
        );
        Ok(store)
    }

    /// See [`super::Store::epoch`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// See [`super::Store::health`].
    pub fn health(&self) -> watch::Receiver<Option<String>> {
        self.health.subscribe()
    }

    /// True while this replica leads the others (see [`leader`]).
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// This replica's name among the others.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// What this replica has yet to share about its data planes.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The etcd metrics of this replica.
    pub(crate) fn encode_metrics(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        self.requests.encode(enc.encode_descriptor(
            "patronus_controlplane_etcd_request_duration_seconds",
            "How long etcd requests took, retries included.",
            None,
            MetricType::Histogram,
        )?)?;
        let lag = (self.latest.load(Ordering::Relaxed) - *self.delivered.borrow()).max(0);
        prometheus_client::metrics::gauge::ConstGauge::new(lag).encode(enc.encode_descriptor(
            "patronus_controlplane_watch_lag_revisions",
            "Revisions etcd had reached (at the last health probe) that this replica's watch had not yet delivered.",
            None,
            MetricType::Gauge,
        )?)?;
        prometheus_client::metrics::counter::ConstCounter::new(
            self.compactions.load(Ordering::Relaxed),
        )
        .encode(enc.encode_descriptor(
            "patronus_controlplane_etcd_compactions",
            "Compactions of etcd's history this replica made as the leader.",
            None,
            MetricType::Counter,
        )?)
    }

    fn key<R: Resource>(&self, name: &str) -> String {
        format!("{}r/{}/{name}", self.settings.prefix, R::KIND)
    }

    fn kind_prefix<R: Resource>(&self) -> String {
        self.key::<R>("")
    }

    fn unique_key<R: Resource>(&self, key: &str) -> String {
        format!("{}u/{}/{key}", self.settings.prefix, R::KIND)
    }

    fn total_key<R: Resource>(&self, group: &str) -> String {
        format!("{}t/{}/{group}", self.settings.prefix, R::KIND)
    }

    /// Runs the read-only `txn`: its responses and its revision.
    async fn read_txn(&self, txn: Txn) -> Result<(Vec<TxnOpResponse>, i64), StoreError> {
        let answer = self
            .again(|mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        Ok((
            answer.op_responses(),
            answer.header().map_or(0, |h| h.revision()),
        ))
    }

    /// A range of keys.
    async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        let key = key.into();
        self.again(|mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })
        .await
    }

    /// A linearizable read of one small key (the epoch): whether etcd
    /// answers, and its present revision in the answer's header.
    async fn probe(&self) -> Result<etcd_client::GetResponse, StoreError> {
        self.range(format!("{}epoch", self.settings.prefix), GetOptions::new())
            .await
    }

    /// A KV client that takes large answers.
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Runs the read `call`, again after a transient failure (a member
    /// gone: the client's balancer picks another; an election) until the
    /// request timeout has passed: one member down is not noticed.
    async fn again<T, F>(&self, call: impl Fn(etcd_client::KvClient) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let deadline = started + self.settings.request_timeout;
        let mut pause = AGAIN.0;
        loop {
            let answer = self.attempt(call(self.kv())).await;
            self.requests.observe(started.elapsed().as_secs_f64());
            match answer {
                Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "etcd failed transiently; asking again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(AGAIN.1);
                }
                answer => return answer.map_err(etcd_error),
            }
        }
    }

    /// One attempt of a request, given a third of the request timeout: a
    /// request that etcd dropped (a follower's proposal lost with the leader
    /// it went to) fails then as DEADLINE_EXCEEDED and is made again
    /// within the timeout, instead of taking all of it.
    async fn attempt<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        let limit = self.settings.request_timeout / 3;
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| {
                Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::deadline_exceeded(format!("no answer within {limit:?}")),
                ))
            })
    }

    /// Runs a write transaction once: its revision when its comparisons
    /// held, `None` when they did not. A failure leaves its outcome
    /// unknown: the write may have been applied.
    async fn write_txn(&self, txn: Txn) -> Result<Option<i64>, etcd_client::Error> {
        Ok(self.write_txn_reading(txn).await?.0)
    }

    /// [`EtcdStore::write_txn`], with the responses of the operations that
    /// ran: the writes', or the reads' of a transaction whose comparisons
    /// failed (its `or_else` branch).
    async fn write_txn_reading(
        &self,
        txn: Txn,
    ) -> Result<(Option<i64>, Vec<TxnOpResponse>), etcd_client::Error> {
        let started = Instant::now();
        let answer = self.attempt(self.kv().txn(txn)).await;
        self.requests.observe(started.elapsed().as_secs_f64());
        let answer = answer?;
        let revision = answer
            .succeeded()
            .then(|| answer.header().map_or(0, |h| h.revision()));
        Ok((revision, answer.op_responses()))
    }

    /// Records what `key` holds as of `revision` (0 and empty: absent).
    fn remember(&self, key: &str, revision: i64, value: &[u8]) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBERED && !remembered.contains_key(key) {
            remembered.clear();
        }
        remembered.insert(key.to_owned(), (revision, value.to_vec()));
    }

    /// What `key` held when this replica last saw it (absent when never).
    fn recall(&self, key: String) -> Seen {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let (revision, value) = remembered.get(&key).cloned().unwrap_or_default();
        Seen {
            key,
            revision,
            value,
        }
    }

    /// Waits until the watch has told the followers of `revision`, so that
    /// what a client reads after its write includes it. A watch that cannot
    /// catch up in time does not fail the write: it is durable already.
    async fn delivered(&self, revision: i64) {
        let mut delivered = self.delivered.subscribe();
        let caught_up = tokio::time::timeout(
            self.settings.request_timeout,
            delivered.wait_for(|d| *d >= revision),
        )
        .await;
        if caught_up.is_err() {
            tracing::warn!(
                revision,
                "the etcd watch has not delivered a write yet: events and snapshots follow it later"
            );
        }
    }

    /// See [`super::Store::get`].
    pub async fn get<R: Resource>(&self, name: &str) -> Result<R, StoreError> {
        let answer = self.range(self.key::<R>(name), GetOptions::new()).await?;
        match answer.kvs().first() {
            Some(kv) => resource(name, kv),
            None => Err(not_found::<R>(name)),
        }
    }

    /// See [`super::Store::list`].
    pub async fn list<R: Resource>(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Page<R>, StoreError> {
        let prefix = self.kind_prefix::<R>();
        let start = if after.is_empty() {
            prefix.clone().into_bytes()
        } else {
            // The first key after `after`'s.
            let mut start = self.key::<R>(after).into_bytes();
            start.push(0);
            start
        };
        let answer = self
            .range(
                start,
                GetOptions::new()
                    .with_range(prefix_end(&prefix))
                    .with_limit(limit as i64),
            )
            .await?;
        let items = answer
            .kvs()
            .iter()
            .map(|kv| resource(name_in(kv, &prefix), kv))
            .collect::<Result<Vec<R>, _>>()?;
        let next = answer
            .more()
            .then(|| items.last().map(|r| name_of(r).to_owned()))
            .flatten();
        Ok(Page { items, next })
    }

    /// See [`super::Store::all`].
    pub async fn all<R: Resource>(&self) -> Result<Vec<R>, StoreError> {
        let prefix = self.kind_prefix::<R>();
        let answer = self
            .range(prefix.clone(), GetOptions::new().with_prefix())
            .await?;
        answer
            .kvs()
            .iter()
            .map(|kv| resource(name_in(kv, &prefix), kv))
            .collect()
    }

    /// See [`super::Store::desired_state`]: one read-only transaction, so
    /// that every kind is read at the same revision.
    pub async fn desired_state(
        &self,
        site_ids: Option<&[String]>,
    ) -> Result<DesiredState, StoreError> {
        let prefixes = [
            self.kind_prefix::<Site>(),
            self.kind_prefix::<Peer>(),
            self.kind_prefix::<Policy>(),
            self.kind_prefix::<Application>(),
        ];
        let reads: Vec<TxnOp> = prefixes
            .iter()
            .map(|p| TxnOp::get(p.clone(), Some(GetOptions::new().with_prefix())))
            .collect();
        let (responses, revision) = self.read_txn(Txn::new().and_then(reads)).await?;
        fn decoded<R: Resource>(kvs: &[KeyValue], prefix: &str) -> Result<Vec<R>, StoreError> {
            kvs.iter()
                .map(|kv| resource(name_in(kv, prefix), kv))
                .collect()
        }
        let mut sites: Vec<Site> = decoded(ranged(&responses, 0), &prefixes[0])?;
        if let Some(ids) = site_ids {
            sites.retain(|s| ids.iter().any(|id| id == s.site_scope()));
        }
        Ok(DesiredState {
            revision: revision as u64,
            sites,
            peers: decoded(ranged(&responses, 1), &prefixes[1])?,
            policies: decoded(ranged(&responses, 2), &prefixes[2])?,
            applications: decoded(ranged(&responses, 3), &prefixes[3])?,
        })
    }

    /// Reads (as `reads` says), in one transaction, what a write of `name`
    /// must compare: the resource, its unique key `unique` and the totals
    /// of `groups`.
    async fn read_for_write<R: Resource>(
        &self,
        name: &str,
        unique: Option<&str>,
        groups: &[&str],
        reads: GetOptions,
    ) -> Result<(Seen, Option<Seen>, Vec<Seen>), StoreError> {
        let key = self.key::<R>(name);
        let unique = unique.map(|u| self.unique_key::<R>(u));
        let totals: Vec<String> = if R::TOTAL_BYTES.is_some() {
            groups.iter().map(|g| self.total_key::<R>(g)).collect()
        } else {
            Vec::new()
        };
        let get = |key: &String| TxnOp::get(key.clone(), Some(reads.clone()));
        let mut ops = vec![get(&key)];
        ops.extend(unique.iter().map(get));
        ops.extend(totals.iter().map(get));
        let (responses, _) = self.read_txn(Txn::new().and_then(ops)).await?;
        let current = Seen::read(key, got(&responses, 0));
        let offset = 1 + usize::from(unique.is_some());
        let unique = unique.map(|u| Seen::read(u, got(&responses, 1)));
        let totals = totals
            .into_iter()
            .enumerate()
            .map(|(i, t)| Seen::read(t, got(&responses, offset + i)))
            .collect();
        Ok((current, unique, totals))
    }

    /// That `unique` (the owner of `r`'s unique key, as read) is free or `name`'s.
    fn check_unique<R: Resource>(
        unique: Option<&Seen>,
        r: &R,
        name: &str,
    ) -> Result<(), StoreError> {
        match unique {
            Some(seen) if seen.revision != 0 && seen.value != name.as_bytes() => {
                Err(StoreError::AlreadyExists {
                    what: format!(
                        "{} with this key {:?} ({:?})",
                        R::KIND,
                        r.unique_key().unwrap_or_default(),
                        String::from_utf8_lossy(&seen.value)
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// `r` as written at `revision`, once the watch has delivered it.
    async fn written<R: Resource>(&self, mut r: R, revision: i64) -> R {
        r.meta_mut().resource_version = revision as u64;
        self.delivered(revision).await;
        r
    }

    /// See [`super::Store::create`]. The first attempt compares against
    /// what this replica remembers of the unique key and the group total
    /// instead of reading them: one round trip when nothing else changed
    /// them. A failed comparison brings their values back (the
    /// transaction's `or_else` reads), and the next attempt uses those.
    pub async fn create<R: Resource>(&self, mut r: R, origin: &Origin) -> Result<R, StoreError> {
        let name = name_of(&r).to_owned();
        origin.stamp(r.meta_mut());
        r.meta_mut().resource_version = 0;
        let bytes = r.encode_to_vec();
        let unique_key = r.unique_key().map(str::to_owned);
        let mut attempts = Attempts::new(self.settings.request_timeout);
        let mut known = Some((
            Seen::read(self.key::<R>(&name), None),
            unique_key
                .as_deref()
                .map(|u| self.recall(self.unique_key::<R>(u))),
            R::TOTAL_BYTES
                .map(|_| self.recall(self.total_key::<R>(r.site_scope())))
                .into_iter()
                .collect::<Vec<_>>(),
        ));
        loop {
            let (current, unique, totals) = match known.take() {
                Some(known) => known,
                None => {
                    self.read_for_write::<R>(
                        &name,
                        unique_key.as_deref(),
                        &[r.site_scope()],
                        attempts.reads(),
                    )
                    .await?
                }
            };
            if current.revision != 0 {
                // An attempt whose answer was lost made it: the bytes are
                // this write's alone (its uid and times).
                if attempts.uncertain && current.value == bytes {
                    return Ok(self.written(r, current.revision).await);
                }
                attempts.refuse(StoreError::AlreadyExists {
                    what: format!("{} {name:?}", R::KIND),
                })?;
                continue;
            }
            let others = totals.first().map_or(0, Seen::total);
            let fits = EtcdStore::check_unique(unique.as_ref(), &r, &name)
                .and_then(|()| check_fits(&r, others));
            if let Err(refused) = fits {
                attempts.refuse(refused)?;
                continue;
            }
            let mut compares = vec![Compare::create_revision(
                current.key.clone(),
                CompareOp::Equal,
                0,
            )];
            let mut writes = vec![TxnOp::put(current.key.clone(), bytes.clone(), None)];
            let mut reads = vec![TxnOp::get(current.key.clone(), None)];
            let mut after = Vec::new();
            if let Some(unique) = &unique {
                compares.push(unique.unchanged());
                writes.push(TxnOp::put(unique.key.clone(), name.clone(), None));
                reads.push(TxnOp::get(unique.key.clone(), None));
                after.push((unique.key.clone(), name.clone().into_bytes()));
            }
            for total in &totals {
                let sum = total.total() + bytes.len();
                compares.push(total.unchanged());
                writes.push(set_total(&total.key, sum));
                reads.push(TxnOp::get(total.key.clone(), None));
                let stored = if sum == 0 {
                    Vec::new()
                } else {
                    sum.to_string().into_bytes()
                };
                after.push((total.key.clone(), stored));
            }
            let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
            match self.write_txn_reading(txn).await {
                Ok((Some(revision), _)) => {
                    for (key, value) in &after {
                        // A total of 0 is no key: absent keys compare at 0.
                        self.remember(key, if value.is_empty() { 0 } else { revision }, value);
                    }
                    return Ok(self.written(r, revision).await);
                }
                Ok((None, responses)) => {
                    // What the comparisons met, read in the same transaction.
                    let current = Seen::read(current.key, got(&responses, 0));
                    let unique = unique.map(|u| Seen::read(u.key, got(&responses, 1)));
                    let offset = 1 + usize::from(unique.is_some());
                    let totals: Vec<Seen> = totals
                        .into_iter()
                        .enumerate()
                        .map(|(i, t)| Seen::read(t.key, got(&responses, offset + i)))
                        .collect();
                    for seen in unique.iter().chain(&totals) {
                        self.remember(&seen.key, seen.revision, &seen.value);
                    }
                    known = Some((current, unique, totals));
                    attempts.lost_race::<R>(&name)?;
                }
                Err(e) => attempts.failed(e).await?,
            }
        }
    }

    /// See [`super::Store::update`].
    pub async fn update<R: Resource>(&self, mut r: R) -> Result<R, StoreError> {
        let name = name_of(&r).to_owned();
        let given = r.meta().map_or(0, |m| m.resource_version) as i64;
        let unique_key = r.unique_key().map(str::to_owned);
        let mut attempts = Attempts::new(self.settings.request_timeout);
        // What attempts whose outcome is unknown wrote, each its own bytes
        // (its update time).
        let mut maybe_written: Vec<Vec<u8>> = Vec::new();
        loop {
            // The stored resource first: its group (whose total loses it)
            // may differ from the new one.
            let stored = self.range(self.key::<R>(&name), attempts.reads()).await?;
            let Some(stored) = stored.kvs().first() else {
                attempts.refuse(not_found::<R>(&name))?;
                continue;
            };
            if maybe_written.iter().any(|w| w == stored.value()) {
                let mut r: R = decode(&name, stored.value())?;
                r.meta_mut().resource_version = 0;
                return Ok(self.written(r, stored.mod_revision()).await);
            }
            let current: R = resource(&name, stored)?;
            let old_group = current.site_scope().to_owned();
            let groups: Vec<&str> = if old_group == r.site_scope() {
                vec![r.site_scope()]
            } else {
                vec![r.site_scope(), old_group.as_str()]
            };
            let (seen, unique, totals) = self
                .read_for_write::<R>(&name, unique_key.as_deref(), &groups, attempts.reads())
                .await?;
            if seen.revision == 0 {
                attempts.refuse(not_found::<R>(&name))?;
                continue;
            }
            if seen.revision != stored.mod_revision() {
                attempts.lost_race::<R>(&name)?;
                continue;
            }
            if seen.revision != given {
                attempts.refuse(StoreError::Conflict {
                    kind: R::KIND,
                    name: name.clone(),
                    given: given as u64,
                    current: seen.revision as u64,
                })?;
                continue;
            }
            if let Err(refused) = EtcdStore::check_unique(unique.as_ref(), &r, &name) {
                attempts.refuse(refused)?;
                continue;
            }
            let stored_len = seen.value.len();
            let same_group = groups.len() == 1;
            let others = totals.first().map_or(0, |t| {
                if same_group {
                    t.total().saturating_sub(stored_len)
                } else {
                    t.total()
                }
            });
            if let Err(refused) = check_fits(&r, others) {
                attempts.refuse(refused)?;
                continue;
            }
            let old = current.meta().cloned().unwrap_or_default();
            let spec_changed = current.spec_bytes() != r.spec_bytes();
            let labels = std::mem::take(&mut r.meta_mut().labels);
            let external_id = std::mem::take(&mut r.meta_mut().external_id);
            *r.meta_mut() = ObjectMeta {
                labels,
                external_id,
                resource_version: 0,
                generation: old.generation + i64::from(spec_changed),
                update_time: Some(prost_types::Timestamp::from(SystemTime::now())),
                ..old
            };
            let bytes = r.encode_to_vec();
            let mut compares = vec![seen.unchanged()];
            let mut writes = vec![TxnOp::put(seen.key.clone(), bytes.clone(), None)];
            if let Some(unique) = &unique {
                compares.push(unique.unchanged());
                writes.push(TxnOp::put(unique.key.clone(), name.clone(), None));
            }
            if let Some(previous) = current
                .unique_key()
                .filter(|k| Some(*k) != unique_key.as_deref())
            {
                writes.push(TxnOp::delete(self.unique_key::<R>(previous), None));
            }
            for (i, total) in totals.iter().enumerate() {
                compares.push(total.unchanged());
                let after = match (i, same_group) {
                    (0, true) => total.total().saturating_sub(stored_len) + bytes.len(),
                    (0, false) => total.total() + bytes.len(),
                    _ => total.total().saturating_sub(stored_len),
                };
                writes.push(set_total(&total.key, after));
            }
            match self
                .write_txn(Txn::new().when(compares).and_then(writes))
                .await
            {
                Ok(Some(revision)) => return Ok(self.written(r, revision).await),
                Ok(None) => attempts.lost_race::<R>(&name)?,
                Err(e) => {
                    maybe_written.push(bytes);
                    attempts.failed(e).await?;
                }
            }
        }
    }

    /// See [`super::Store::delete`].
    pub async fn delete<R: Resource>(&self, name: &str, expected: u64) -> Result<R, StoreError> {
        let mut attempts = Attempts::new(self.settings.request_timeout);
        // The resource as an attempt whose outcome is unknown found it.
        let mut maybe_deleted: Option<R> = None;
        loop {
            let stored = self.range(self.key::<R>(name), attempts.reads()).await?;
            let Some(stored) = stored.kvs().first() else {
                if let Some(deleted) = maybe_deleted {
                    return Ok(deleted);
                }
                attempts.refuse(not_found::<R>(name))?;
                continue;
            };
            let current: R = resource(name, stored)?;
            let (seen, _, totals) = self
                .read_for_write::<R>(name, None, &[current.site_scope()], attempts.reads())
                .await?;
            if seen.revision == 0 {
                if let Some(deleted) = maybe_deleted {
                    return Ok(deleted);
                }
                attempts.refuse(not_found::<R>(name))?;
                continue;
            }
            if seen.revision != stored.mod_revision() {
                attempts.lost_race::<R>(name)?;
                continue;
            }
            if expected != 0 && expected as i64 != seen.revision {
                attempts.refuse(StoreError::Conflict {
                    kind: R::KIND,
                    name: name.to_owned(),
                    given: expected,
                    current: seen.revision as u64,
                })?;
                continue;
            }
            let mut compares = vec![seen.unchanged()];
            let mut writes = vec![TxnOp::delete(seen.key.clone(), None)];
            if let Some(key) = current.unique_key() {
                writes.push(TxnOp::delete(self.unique_key::<R>(key), None));
            }
            for total in &totals {
                compares.push(total.unchanged());
                writes.push(set_total(
                    &total.key,
                    total.total().saturating_sub(seen.value.len()),
                ));
            }
            match self
                .write_txn(Txn::new().when(compares).and_then(writes))
                .await
            {
                Ok(Some(revision)) => {
                    self.delivered(revision).await;
                    return Ok(current);
                }
                Ok(None) => attempts.lost_race::<R>(name)?,
                Err(e) => {
                    maybe_deleted = Some(current);
                    attempts.failed(e).await?;
                }
            }
        }
    }
}

/// The attempts of one write: a lost comparison (a concurrent write of the
/// same keys) is read again and retried up to [`WRITE_ATTEMPTS`] times; a
/// transient failure is retried until the request timeout, after which
/// the write fails UNAVAILABLE with its outcome unknown.
struct Attempts {
    deadline: Instant,
    pause: Duration,
    lost: usize,
    /// An attempt failed after it may have reached etcd: it may have been
    /// applied, and the next read may find its result.
    uncertain: bool,
    /// Reads go through the leader's read index (linearizable) rather than
    /// the member's own state (serializable, a quorum round cheaper). The
    /// first read is serializable: a stale one can only make the
    /// transaction's comparison fail, which is read again linearizably,
    /// and a refusal decided on it is confirmed by a linearizable read
    /// before it is answered.
    linearizable: bool,
}

impl Attempts {
    fn new(timeout: Duration) -> Attempts {
        Attempts {
            deadline: Instant::now() + timeout,
            pause: AGAIN.0,
            lost: 0,
            uncertain: false,
            linearizable: false,
        }
    }

    /// How the next attempt reads.
    fn reads(&self) -> GetOptions {
        if self.linearizable {
            GetOptions::new()
        } else {
            GetOptions::new().with_serializable()
        }
    }

    /// A refusal decided on this attempt's reads: answered when they were
    /// linearizable, otherwise read again (`Ok`) to confirm it.
    fn refuse(&mut self, refusal: StoreError) -> Result<(), StoreError> {
        if self.linearizable {
            return Err(refusal);
        }
        self.linearizable = true;
        Ok(())
    }

    /// After an attempt whose comparisons failed.
    fn lost_race<R: Resource>(&mut self, name: &str) -> Result<(), StoreError> {
        self.linearizable = true;
        self.lost += 1;
        if self.lost >= WRITE_ATTEMPTS {
            return Err(contended::<R>(name));
        }
        Ok(())
    }

    /// After an attempt that failed: a pause before the next one, or the
    /// failure when it is not transient or time is up.
    async fn failed(&mut self, e: etcd_client::Error) -> Result<(), StoreError> {
        if !transient(&e) || Instant::now() + self.pause >= self.deadline {
            return Err(etcd_error(e));
        }
        tracing::debug!(error = %e, "an etcd write failed transiently; trying again");
        self.uncertain = true;
        self.linearizable = true;
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(AGAIN.1);
        Ok(())
    }
}

/// A write that lost every attempt to concurrent writes of the same keys.
fn contended<R: Resource>(name: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{} {name:?}: {WRITE_ATTEMPTS} attempts lost to concurrent writes; try again",
        R::KIND
    ))
}

/// The name in a resource key under `prefix`.
fn name_in<'a>(kv: &'a KeyValue, prefix: &str) -> &'a str {
    std::str::from_utf8(kv.key())
        .ok()
        .and_then(|k| k.strip_prefix(prefix))
        .unwrap_or_default()
}

/// What a watched key-value says of its resource: the kind and site.
fn describe(kind: &str, name: &str, kv: &KeyValue) -> Result<(&'static str, String), StoreError> {
    fn scope<R: Resource>(name: &str, kv: &KeyValue) -> Result<(&'static str, String), StoreError> {
        let r: R = decode(name, kv.value())?;
        Ok((R::KIND, r.site_scope().to_owned()))
    }
    match kind {
        "site" => scope::<Site>(name, kv),
        "peer" => scope::<Peer>(name, kv),
        "policy" => scope::<Policy>(name, kv),
        "application" => scope::<Application>(name, kv),
        other => Err(StoreError::Backend(format!(
            "unknown kind {other:?} under the prefix"
        ))),
    }
}

/// The change a watch event records, if it is a resource's.
fn change_of(prefix: &str, event: &etcd_client::Event) -> Option<Change> {
    let kv = event.kv()?;
    let key = std::str::from_utf8(kv.key()).ok()?;
    let (kind, name) = key.strip_prefix(prefix)?.split_once('/')?;
    let (kind_event, described, version) = match event.event_type() {
        WatchEventType::Put if kv.create_revision() == kv.mod_revision() => {
            (EventType::ResourceCreated, kv, kv.mod_revision())
        }
        WatchEventType::Put => (EventType::ResourceUpdated, kv, kv.mod_revision()),
        WatchEventType::Delete => {
            let previous = event.prev_kv()?;
            (
                EventType::ResourceDeleted,
                previous,
                previous.mod_revision(),
            )
        }
    };
    match describe(kind, name, described) {
        Ok((resource, site_id)) => Some(Change {
            kind: kind_event,
            resource,
            name: name.to_owned(),
            site_id,
            version: version as u64,
        }),
        Err(e) => {
            tracing::error!(key, error = %e, "a watched resource does not decode");
            None
        }
    }
}

/// Tells `followers` of every write to resources and to what the replicas
/// share, from revision `start + 1` on, in order, for as long as the store lives. A
/// broken watch resumes from the next revision it has not delivered; one
/// whose revision was compacted away tells the followers that changes were
/// lost (they read everything again), reads what the replicas share whole,
/// and resumes from the present. A dead
/// connection is found by HTTP/2 keepalive. Progress requests are not used:
/// etcd 3.4 answers them with the present revision even while the watch
/// still has older events to send, which would let `next` run ahead.
async fn watch_changes(store: std::sync::Weak<EtcdStore>, followers: Arc<Followers>, start: i64) {
    let mut next = start + 1;
    let mut pause = WATCH_RETRY.0;
    let mut broken = false;
    loop {
        let Some(live) = store.upgrade() else { return };
        let prefix = live.settings.prefix.clone();
        let mut watch_client = live.client.watch_client();
        let timeout = live.settings.request_timeout;
        drop(live);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next)
            .with_prev_key()
            .with_progress_notify();
        let created =
            tokio::time::timeout(timeout, watch_client.watch(prefix.clone(), Some(options)));
        let mut answers = match created.await {
            Ok(Ok(stream)) => stream,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {timeout:?}"),
                };
                tracing::warn!(error = why, next, "the etcd watch cannot start; retrying");
                broken = true;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WATCH_RETRY.1);
                continue;
            }
        };
        if std::mem::take(&mut broken) {
            tracing::info!(next, "the etcd watch resumed");
        }
        loop {
            match answers.message().await {
                Ok(Some(answer)) => {
                    pause = WATCH_RETRY.0;
                    let Some(live) = store.upgrade() else { return };
                    if let Delivered::Again =
                        deliver(&live, &followers, &prefix, &answer, &mut next).await
                    {
                        broken = true;
                        break;
                    }
                }
                Ok(None) => {
                    broken = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, next, "the etcd watch broke; resuming");
                    broken = true;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WATCH_RETRY.1);
                    break;
                }
            }
        }
    }
}

/// What a watch does after one of its answers.
enum Delivered {
    /// Reads on.
    More,
    /// Is made again from `next` (canceled, or compacted away).
    Again,
}

/// Tells the followers what one watch answer carries and moves `next` on.
async fn deliver(
    live: &EtcdStore,
    followers: &Followers,
    prefix: &str,
    answer: &etcd_client::WatchResponse,
    next: &mut i64,
) -> Delivered {
    if answer.compact_revision() > 0 {
        let fleet = format!("{prefix}{}", shared::FLEET);
        match live.range(fleet, GetOptions::new().with_prefix()).await {
            Ok(now) => {
                let present = now.header().map_or(*next, |h| h.revision());
                let view = FleetView::read(prefix, now.kvs());
                tracing::warn!(
                    missed_from = *next,
                    compacted_to = answer.compact_revision(),
                    "the etcd watch fell behind compaction: reading everything again"
                );
                followers.tell(&News::Lost(format!(
                    "changes from revision {} were compacted away before this replica saw them; everything was read again at revision {present}",
                    *next
                )));
                followers.tell(&News::Fleet(FleetNews::All(Arc::new(view))));
                *next = present + 1;
                live.delivered.send_if_modified(|d| {
                    let moved = *d < present;
                    *d = (*d).max(present);
                    moved
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd unreachable after a compaction; retrying");
                tokio::time::sleep(WATCH_RETRY.1).await;
            }
        }
        return Delivered::Again;
    }
    let resources = format!("{prefix}r/");
    for event in answer.events() {
        let Some(kv) = event.kv() else { continue };
        *next = (*next).max(kv.mod_revision() + 1);
        let put = event.event_type() == WatchEventType::Put;
        if let Some(news) = shared::parse(prefix, kv, put) {
            followers.tell(&News::Fleet(news));
        } else if let Some(change) = change_of(&resources, event) {
            tracing::debug!(
                kind = change.resource,
                name = change.name,
                version = change.version,
                "the etcd watch delivered a change"
            );
            followers.tell(&News::Changed(change));
        }
    }
    // A progress notification (no events, neither the watch's creation nor
    // its end) says that every change up to its revision was delivered.
    let progress = answer.events().is_empty() && !answer.created() && !answer.canceled();
    let upto = match answer.header() {
        Some(h) if progress => h.revision(),
        _ => *next - 1,
    };
    *next = (*next).max(upto + 1);
    live.delivered.send_if_modified(|d| {
        let moved = *d < upto;
        *d = (*d).max(upto);
        moved
    });
    if answer.canceled() {
        Delivered::Again
    } else {
        Delivered::More
    }
}

/// Keeps the store's health: unusable once etcd has not answered for
/// longer than the configured time, usable again at its first answer.
async fn follow_health(store: std::sync::Weak<EtcdStore>) {
    let mut since: Option<Instant> = None;
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        let Some(live) = store.upgrade() else { return };
        let probe = live.probe().await;
        match probe {
            Ok(answer) => {
                if let Some(header) = answer.header() {
                    live.latest.fetch_max(header.revision(), Ordering::Relaxed);
                }
                since = None;
                live.health.send_if_modified(|h| {
                    let was = h.take();
                    if was.is_some() {
                        tracing::info!("etcd answers again");
                    }
                    was.is_some()
                });
            }
            Err(e) => {
                let first = *since.get_or_insert_with(Instant::now);
                if first.elapsed() >= live.settings.unhealthy_after {
                    let why = format!(
                        "etcd has not answered for {}s: {e}",
                        first.elapsed().as_secs()
                    );
                    live.health.send_if_modified(|h| {
                        let changed = h.is_none();
                        if changed {
                            tracing::error!(error = %why, "desired state is unreachable");
                        }
                        *h = Some(why.clone());
                        changed
                    });
                }
            }
        }
    }
}

/// The leader's duty: every `every`, compact etcd's history to the
/// revision etcd had reached the time before, so that it keeps `every` of
/// history (enough for a watch that was briefly away to resume) and the
/// database does not grow until etcd refuses writes.
async fn compact_history(store: std::sync::Weak<EtcdStore>, every: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(live) = store.upgrade() else { return };
        let now = live
            .probe()
            .await
            .ok()
            .and_then(|a| a.header().map(|h| h.revision()));
        if let (Some(revision), true) = (previous, live.is_leader()) {
            match live.client.kv_client().compact(revision, None).await {
                Ok(_) => {
                    live.compactions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(revision, "compacted etcd's history");
                }
                // Compacted already (by etcd itself, or another leader).
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => tracing::warn!(error = %e, revision, "compacting etcd's history failed"),
            }
        }
        previous = now.or(previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_next_key() {
        assert_eq!(prefix_end("/patronus/r/"), b"/patronus/r0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
