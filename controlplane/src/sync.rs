//! Configuration streaming to data planes (`patronus.v1.DataplaneSync`).
//!
//! Each site's snapshot (its Site, the Peers of its site_id, the Policies
//! whose selector matches its labels, every user-defined Application) is compiled from the store and kept
//! per site that a data plane has asked for. Writes only mark the hub dirty;
//! one background task recompiles the tracked sites, so a burst of writes
//! costs one recompilation. A snapshot gets a new version only when its
//! content changed: the store revision at that moment, which only grows and
//! survives restarts. Subscribers watch their site's latest snapshot; a slow
//! one skips intermediate versions, never receives a stale one after a newer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use patronus_proto::v1::dataplane_sync_server::DataplaneSync;
use patronus_proto::v1::{
    AckResult, AcknowledgeRequest, AcknowledgeResponse, Dataplane, Event, EventType, Peer, Policy,
    ReportResponse, Site, SiteSnapshot, SubscribeRequest, TelemetryReport, TunnelState,
};
use prost::Message;
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{authorize_site, caller, Denied};
use crate::events::EventLog;
use crate::store::shared::{from_unix_ms, unix_ms, DataplaneRecord, FleetNews, FleetView};
use crate::store::{DesiredState, News, Store, StoreError};

use crate::validate::is_dns_label;

/// Largest telemetry report accepted: peers (a data plane's most tunnel
/// peers), paths over all peers (its most paths), events since the
/// previous report, and bytes in all.
const MAX_REPORTED_PEERS: usize = 16_384;
/// See [`MAX_REPORTED_PEERS`].
const MAX_REPORTED_PATHS: usize = 1024;
/// See [`MAX_REPORTED_PEERS`]: one per path and one per uplink.
const MAX_REPORTED_BFD_SESSIONS: usize = MAX_REPORTED_PATHS + 16;
/// See [`MAX_REPORTED_PEERS`].
const MAX_REPORTED_EVENTS: usize = 4096;
/// See [`MAX_REPORTED_PEERS`].
const MAX_REPORT_BYTES: usize = 4 << 20;
/// Most data planes one site may have.
pub const MAX_DATAPLANES_PER_SITE: usize = 64;
/// Most sites tracked at once (each with a subscriber or a data plane).
pub const MAX_TRACKED_SITES: usize = 100_000;
/// How long a data plane that went away is remembered by default.
pub const DATAPLANE_EXPIRY: Duration = Duration::from_secs(3600);

/// One tracked site.
struct SiteEntry {
    /// The digest of the snapshot's content, to tell real changes.
    digest: Vec<u8>,
    /// The store revision the content was read at.
    revision: u64,
    latest: watch::Sender<Arc<SiteSnapshot>>,
}

/// What a subscribing data plane says it runs.
#[derive(Debug, Clone, Default)]
struct Running {
    epoch: u64,
    version: u64,
    digest: Vec<u8>,
}

/// SHA-256 of a snapshot's content: the snapshot encoded with version 0
/// and no digest, as [`Hub::compile`] makes it. Protobuf encoding is
/// deterministic here (maps are BTreeMaps, encoded in key order), so every
/// replica computes the same digest for the same content.
fn content_digest(compiled: &SiteSnapshot) -> Vec<u8> {
    debug_assert!(compiled.version == 0 && compiled.digest.is_empty());
    ring::digest::digest(&ring::digest::SHA256, &compiled.encode_to_vec())
        .as_ref()
        .to_vec()
}

/// What the hub knows of one data plane: from its own subscriptions,
/// answers and reports while this replica serves it, otherwise from what
/// the replica that serves it shares.
#[derive(Debug, Default, Clone)]
pub(crate) struct DataplaneState {
    /// Its subscriptions to this replica.
    pub(crate) subscriptions: usize,
    /// The other replicas it holds a subscription to.
    pub(crate) elsewhere: BTreeSet<String>,
    /// The revision of its shared record as last seen (0: none yet).
    pub(crate) shared_revision: i64,
    pub(crate) applied: u64,
    pub(crate) refused: u64,
    pub(crate) reason: String,
    /// Its latest telemetry, and when it arrived.
    pub(crate) report: Option<(Arc<TelemetryReport>, SystemTime)>,
    /// When it last subscribed, unsubscribed, answered or reported.
    pub(crate) last_seen: Option<Instant>,
}

impl DataplaneState {
    /// Whether it holds a subscription to any replica.
    pub(crate) fn connected(&self) -> bool {
        self.subscriptions > 0 || !self.elsewhere.is_empty()
    }

    /// Takes on what another replica shares, unless this one serves it
    /// (then what it knows is the newest).
    fn adopt(&mut self, record: &DataplaneRecord, revision: i64, me: &str) {
        self.shared_revision = revision;
        if record.replica == me || self.subscriptions > 0 {
            return;
        }
        self.applied = record.applied;
        self.refused = record.refused;
        self.reason = record.reason.clone();
        self.report = record.report.as_ref().map(|report| {
            (
                Arc::new(report.clone()),
                from_unix_ms(record.reported_at_ms),
            )
        });
        let ago = SystemTime::now()
            .duration_since(from_unix_ms(record.seen_at_ms))
            .unwrap_or_default();
        self.last_seen = Instant::now().checked_sub(ago).or(self.last_seen);
    }

    /// What this replica shares about it, with the `events` since its
    /// previous record.
    fn record(&self, replica: &str, events: Vec<Event>) -> DataplaneRecord {
        let (report, reported_at_ms) = match &self.report {
            Some((report, at)) => (Some(TelemetryReport::clone(report)), unix_ms(*at)),
            None => (None, 0),
        };
        DataplaneRecord {
            applied: self.applied,
            refused: self.refused,
            reason: self.reason.clone(),
            report,
            reported_at_ms,
            seen_at_ms: unix_ms(SystemTime::now()),
            replica: replica.to_owned(),
            events,
        }
    }
}

/// The event of a data plane that connected or went away.
fn connection_event(key: &(String, String), connected: bool) -> Event {
    let kind = if connected {
        EventType::DataplaneConnected
    } else {
        EventType::DataplaneDisconnected
    };
    Event {
        r#type: kind as i32,
        site_id: key.0.clone(),
        dataplane_id: key.1.clone(),
        ..Default::default()
    }
}

#[derive(Default)]
pub(crate) struct HubState {
    sites: HashMap<String, SiteEntry>,
    /// By (site_id, dataplane_id).
    pub(crate) dataplanes: BTreeMap<(String, String), DataplaneState>,
}

impl HubState {
    /// The version `site_id` should run (0: no snapshot yet).
    pub(crate) fn desired(&self, site_id: &str) -> u64 {
        self.sites
            .get(site_id)
            .map_or(0, |e| e.latest.borrow().version)
    }

    /// Peers in `site_id`'s current snapshot.
    pub(crate) fn peers(&self, site_id: &str) -> usize {
        self.sites
            .get(site_id)
            .map_or(0, |e| e.latest.borrow().peers.len())
    }
}

/// Snapshots per site, what each data plane made of them and reports, and
/// the event feed. Bounded: data planes gone for longer than the expiry
/// are forgotten, with the sites no one follows any more; a site has at
/// most [`MAX_DATAPLANES_PER_SITE`] data planes and the hub tracks at most
/// [`MAX_TRACKED_SITES`] sites, beyond which callers are refused
/// (RESOURCE_EXHAUSTED).
pub struct Hub {
    store: Arc<Store>,
    state: Mutex<HubState>,
    expiry: Duration,
    /// Calls refused for their role, by role (admin, viewer, dataplane).
    denied: [std::sync::atomic::AtomicU64; 3],
    dirty: Arc<Notify>,
    /// Everything that happened, for WatchEvents.
    pub events: EventLog,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub over `store` forgetting data planes gone for `expiry`, with
    /// its recompilation and expiry tasks on the current runtime.
    pub fn start(store: Arc<Store>, expiry: Duration) -> Arc<Hub> {
        let dirty = Arc::new(Notify::new());
        let hub = Arc::new(Hub {
            store,
            state: Mutex::new(HubState::default()),
            expiry,
            denied: Default::default(),
            dirty: dirty.clone(),
            events: EventLog::default(),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(
                (expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(60)),
            );
            loop {
                sweep.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.expire(Instant::now());
            }
        });
        // The task holds the hub weakly: when the server goes, so does the
        // hub and its store (the task then waits on a Notify no one signals).
        let worker = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                dirty.notified().await;
                let Some(hub) = worker.upgrade() else { return };
                if let Err(e) = hub.refresh_all().await {
                    tracing::error!(error = %e, "recompiling site snapshots failed");
                }
            }
        });
        let follower = Arc::downgrade(&hub);
        hub.store.follow(move |news| {
            if let Some(hub) = follower.upgrade() {
                hub.learn(news);
            }
        });
        hub
    }

    /// A committed write (of any replica) goes on the event feed and
    /// marks the snapshots for recompilation.
    fn learn(&self, news: &News) {
        let event = match news {
            News::Changed(change) => Event {
                r#type: change.kind as i32,
                site_id: change.site_id.clone(),
                kind: change.resource.to_owned(),
                name: change.name.clone(),
                version: change.version,
                ..Default::default()
            },
            News::Lost(why) => Event {
                r#type: EventType::EventsLost as i32,
                message: why.clone(),
                ..Default::default()
            },
            News::Fleet(news) => return self.learn_fleet(news),
        };
        self.events.emit(event);
        self.changed();
    }

    /// What a replica shares about a data plane goes into the hub's view
    /// (unless this replica serves it), and its events on the feed.
    fn learn_fleet(&self, news: &FleetNews) {
        let Some((me, _)) = self.store.sharing() else {
            return;
        };
        let mut events = Vec::new();
        let mut state = self.lock();
        match news {
            FleetNews::Record {
                key,
                record: Some(record),
                revision,
            } => {
                if record.replica != me {
                    events.extend(record.events.iter().cloned());
                }
                let d = state.dataplanes.entry(key.clone()).or_default();
                d.adopt(record, *revision, me);
            }
            FleetNews::Record {
                key, record: None, ..
            } => {
                if let Some(d) = state.dataplanes.get_mut(key) {
                    if d.subscriptions == 0 {
                        tracing::info!(
                            site = key.0,
                            dataplane = key.1,
                            "forgetting a data plane the leader expired"
                        );
                        state.dataplanes.remove(key);
                    } else {
                        d.shared_revision = 0;
                    }
                }
            }
            FleetNews::Presence {
                key,
                replica,
                present,
            } => {
                if replica != me && (*present || state.dataplanes.contains_key(key)) {
                    let d = state.dataplanes.entry(key.clone()).or_default();
                    let was = d.connected();
                    if *present {
                        d.elsewhere.insert(replica.clone());
                    } else {
                        d.elsewhere.remove(replica);
                    }
                    if was != d.connected() {
                        events.push(connection_event(key, d.connected()));
                    }
                }
            }
            FleetNews::All(view) => Hub::take_view(&mut state, view, me, &mut events),
        }
        drop(state);
        for e in events {
            self.events.emit(e);
        }
    }

    /// Replaces what the hub knows from other replicas with `view`, read
    /// whole; a data plane whose connection changed meanwhile gets its event.
    fn take_view(state: &mut HubState, view: &FleetView, me: &str, events: &mut Vec<Event>) {
        // Data planes first heard of here have no connection to change.
        let mut fresh = BTreeSet::new();
        let mut known = |state: &mut HubState, key: &(String, String)| {
            if !state.dataplanes.contains_key(key) {
                fresh.insert(key.clone());
            }
        };
        for (key, replicas) in &view.presence {
            if replicas.iter().any(|r| r != me) {
                known(state, key);
                state.dataplanes.entry(key.clone()).or_default();
            }
        }
        for (key, (record, revision)) in &view.records {
            known(state, key);
            let d = state.dataplanes.entry(key.clone()).or_default();
            d.adopt(record, *revision, me);
        }
        state.dataplanes.retain(|key, d| {
            // Shared once and no longer: the leader expired it meanwhile.
            let deleted = d.shared_revision != 0 && !view.records.contains_key(key);
            if deleted && d.subscriptions == 0 {
                return false;
            }
            if deleted {
                d.shared_revision = 0;
            }
            let was = d.connected();
            d.elsewhere = view
                .presence
                .get(key)
                .map(|replicas| replicas.iter().filter(|r| *r != me).cloned().collect())
                .unwrap_or_default();
            if was != d.connected() && !fresh.contains(key) {
                events.push(connection_event(key, d.connected()));
            }
            true
        });
    }

    /// Shares what this replica knows of a data plane it serves, with the
    /// `events` since (nothing to share on redb).
    fn share(&self, key: &(String, String), d: &DataplaneState, events: Vec<Event>) {
        if let Some((me, outbox)) = self.store.sharing() {
            outbox.record(key.clone(), d.record(me, events));
        }
    }

    /// Counts and logs a call refused for its role; the caller's status.
    pub(crate) fn refuse(&self, denied: &Denied) -> Status {
        let slot = match denied.0 {
            "admin" => 0,
            "viewer" => 1,
            _ => 2,
        };
        self.denied[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(role = denied.0, tried = denied.1, "permission denied");
        denied.status()
    }

    /// Calls refused for their role: (role, count).
    pub(crate) fn denials(&self) -> [(&'static str, u64); 3] {
        let n = |i: usize| self.denied[i].load(std::sync::atomic::Ordering::Relaxed);
        [("admin", n(0)), ("viewer", n(1)), ("dataplane", n(2))]
    }

    /// Lets the caller of `req` sync as a data plane of `site_id`.
    #[allow(clippy::result_large_err)]
    fn allow_site<T>(&self, req: &Request<T>, site_id: &str) -> Result<(), Status> {
        let role = caller(req)?;
        authorize_site(&role, site_id).map_err(|d| self.refuse(&d))
    }

    /// The store desired state is read from.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Why the store's database is unusable, while it is.
    pub(crate) fn store_health(&self) -> watch::Receiver<Option<String>> {
        self.store.health()
    }

    /// Desired state changed: recompile the tracked sites soon.
    pub fn changed(&self) {
        self.dirty.notify_one();
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A site's snapshot content (version 0, no digest) in `state`, of the
    /// store's `epoch`.
    fn compile(
        site_id: &str,
        site: Option<&Site>,
        state: &DesiredState,
        epoch: u64,
    ) -> SiteSnapshot {
        let peers: Vec<Peer> = state
            .peers
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.site_id == site_id))
            .cloned()
            .collect();
        let policies: Vec<Policy> = match site {
            None => Vec::new(),
            Some(site) => state
                .policies
                .iter()
                .filter(|p| selects(p, site))
                .cloned()
                .collect(),
        };
        SiteSnapshot {
            site_id: site_id.to_owned(),
            version: 0,
            epoch,
            site: site.cloned(),
            peers,
            policies,
            applications: state.applications.clone(),
            digest: Vec::new(),
        }
    }

    /// Recompiles these sites from one read of the store; publishes a new
    /// version of each whose content changed.
    async fn refresh(&self, site_ids: Vec<String>) -> Result<(), StoreError> {
        if site_ids.is_empty() {
            return Ok(());
        }
        let state = self.store.desired_state(Some(site_ids.clone())).await?;
        tracing::debug!(
            sites = site_ids.len(),
            revision = state.revision,
            "recompiling site snapshots"
        );
        self.publish(&site_ids, &state);
        Ok(())
    }

    /// Publishes these sites as compiled from `state`, one read of the
    /// store. The version is the revision read, so sites changed by one
    /// write share it. A read older than the one a site was last published
    /// from (a refresh that raced with a later one) changes nothing, so that
    /// a higher version never carries older content.
    fn publish(&self, site_ids: &[String], state: &DesiredState) {
        let by_id: HashMap<&str, &Site> = state
            .sites
            .iter()
            .filter_map(|s| s.spec.as_ref().map(|spec| (spec.site_id.as_str(), s)))
            .collect();
        let revision = state.revision;
        for site_id in site_ids {
            let site = by_id.get(site_id.as_str()).copied();
            let mut snapshot = Hub::compile(site_id, site, state, self.store.epoch());
            snapshot.digest = content_digest(&snapshot);
            let mut hub = self.lock();
            match hub.sites.get_mut(site_id) {
                Some(entry) if revision < entry.revision => {}
                Some(entry) if entry.digest == snapshot.digest => entry.revision = revision,
                Some(entry) => {
                    snapshot.version = revision.max(entry.latest.borrow().version + 1);
                    entry.digest = snapshot.digest.clone();
                    entry.revision = revision;
                    entry.latest.send_replace(Arc::new(snapshot));
                }
                None => {
                    snapshot.version = revision.max(1);
                    let (latest, _) = watch::channel(Arc::new(snapshot));
                    let digest = latest.borrow().digest.clone();
                    hub.sites.insert(
                        site_id.clone(),
                        SiteEntry {
                            digest,
                            revision,
                            latest,
                        },
                    );
                }
            }
        }
    }

    /// Watches `site_id` for a data plane that runs `running`: what it is
    /// sent first is at least as new as what it runs (another replica may
    /// have sent it), keeps its version when the content is the same, and
    /// has a higher one when it is not, so that versions only grow for a
    /// data plane moving between replicas and nothing is applied twice.
    async fn watch_running(
        &self,
        site_id: &str,
        running: &Running,
    ) -> Result<watch::Receiver<Arc<SiteSnapshot>>, StoreError> {
        let latest = self.watch(site_id).await?;
        if running.epoch != self.store.epoch() || running.version == 0 {
            return Ok(latest);
        }
        // Content read at an older revision than the data plane's version
        // may be older than what it runs: read again (etcd reads are
        // linearizable, so this one sees every write it may have seen).
        let stale = self
            .lock()
            .sites
            .get(site_id)
            .is_some_and(|e| e.revision < running.version);
        if stale {
            self.refresh(vec![site_id.to_owned()]).await?;
        }
        let mut state = self.lock();
        if let Some(entry) = state.sites.get_mut(site_id) {
            let current = entry.latest.borrow().clone();
            let version = if current.digest == running.digest {
                running.version
            } else {
                running.version + 1
            };
            if current.version < version {
                let mut bumped = SiteSnapshot::clone(&current);
                bumped.version = version;
                entry.latest.send_replace(Arc::new(bumped));
            }
        }
        Ok(latest)
    }

    /// Forgets the data planes that went away longer than the expiry
    /// before `now`, and the sites that no subscriber and no remembered
    /// data plane follows.
    ///
    /// Replicas that share an etcd forget together: the leader deletes the
    /// shared records of data planes gone for longer than the expiry, and
    /// each replica forgets one when it learns of that deletion.
    pub(crate) fn expire(&self, now: Instant) {
        let mut state = self.lock();
        let before = state.dataplanes.len();
        let expiry = self.expiry;
        let gone = |d: &DataplaneState| {
            !d.connected()
                && d.last_seen
                    .is_none_or(|seen| now.saturating_duration_since(seen) >= expiry)
        };
        let sharing = self.store.sharing();
        if let Some((_, outbox)) = sharing {
            if self.store.is_leader() {
                for (key, d) in &state.dataplanes {
                    if d.shared_revision != 0 && gone(d) {
                        outbox.forget(key.clone(), d.shared_revision);
                    }
                }
            }
        }
        state.dataplanes.retain(|(site, id), d| {
            let gone = sharing.is_none() && gone(d);
            if gone {
                tracing::info!(
                    site,
                    dataplane = id,
                    "forgetting a data plane gone for {expiry:?}"
                );
            }
            !gone
        });
        let HubState { sites, dataplanes } = &mut *state;
        sites.retain(|site, entry| {
            entry.latest.receiver_count() > 0
                || dataplanes
                    .range((site.clone(), String::new())..)
                    .next()
                    .is_some_and(|((s, _), _)| s == site)
        });
        if state.dataplanes.len() != before {
            tracing::debug!(remembered = state.dataplanes.len(), "data planes expired");
        }
    }

    /// The entry of a data plane, made if it is new and within the caps.
    fn dataplane_entry<'a>(
        state: &'a mut HubState,
        key: &(String, String),
    ) -> Result<&'a mut DataplaneState, Status> {
        if !state.dataplanes.contains_key(key) {
            let of_site = state
                .dataplanes
                .range((key.0.clone(), String::new())..)
                .take_while(|((site, _), _)| *site == key.0)
                .count();
            if of_site >= MAX_DATAPLANES_PER_SITE {
                return Err(Status::resource_exhausted(format!(
                    "site {:?} already has {MAX_DATAPLANES_PER_SITE} data planes; one that went away is forgotten after the expiry",
                    key.0
                )));
            }
        }
        let d = state.dataplanes.entry(key.clone()).or_default();
        d.last_seen = Some(Instant::now());
        Ok(d)
    }

    async fn refresh_all(&self) -> Result<(), StoreError> {
        let sites: Vec<String> = self.lock().sites.keys().cloned().collect();
        self.refresh(sites).await
    }

    /// Starts tracking `site_id` (if new) and watches its latest snapshot.
    async fn watch(&self, site_id: &str) -> Result<watch::Receiver<Arc<SiteSnapshot>>, StoreError> {
        self.watch_with(site_id, std::future::ready(())).await
    }

    /// [`Hub::watch`], running `between` after a new site's read and before
    /// its publication (where the tests commit a write).
    async fn watch_with(
        &self,
        site_id: &str,
        between: impl std::future::Future<Output = ()>,
    ) -> Result<watch::Receiver<Arc<SiteSnapshot>>, StoreError> {
        let mut between = Some(between);
        loop {
            {
                let state = self.lock();
                if let Some(entry) = state.sites.get(site_id) {
                    return Ok(entry.latest.subscribe());
                }
                if state.sites.len() >= MAX_TRACKED_SITES {
                    return Err(StoreError::Unavailable(format!(
                        "{MAX_TRACKED_SITES} sites are followed already"
                    )));
                }
            }
            let ids = [site_id.to_owned()];
            let state = self.store.desired_state(Some(ids.to_vec())).await?;
            if let Some(between) = between.take() {
                between.await;
            }
            self.publish(&ids, &state);
            // A write committed after that read recompiled only the sites
            // tracked then, not this one: recompile once more now that it
            // is tracked (an older read cannot undo a newer one).
            self.changed();
            // Until it is watched no receiver holds the new site, so the
            // expiry sweep may forget it right after its publication: then
            // the loop reads and publishes it again.
        }
    }

    /// The data planes known, optionally of one site.
    pub fn dataplanes(&self, site_id: &str) -> Vec<Dataplane> {
        let state = self.lock();
        state
            .dataplanes
            .iter()
            .filter(|((site, _), _)| site_id.is_empty() || site == site_id)
            .map(|((site, id), d)| Dataplane {
                site_id: site.clone(),
                dataplane_id: id.clone(),
                connected: d.connected(),
                desired_version: state.desired(site),
                applied_version: d.applied,
                refused_version: d.refused,
                refused_reason: d.reason.clone(),
            })
            .collect()
    }

    fn connection(&self, key: &(String, String), delta: isize) -> Result<(), Status> {
        let mut state = self.lock();
        let d = Hub::dataplane_entry(&mut state, key)?;
        let (held, connected) = (d.subscriptions > 0, d.connected());
        d.subscriptions = d.subscriptions.saturating_add_signed(delta);
        if held != (d.subscriptions > 0) {
            if let Some((_, outbox)) = self.store.sharing() {
                outbox.presence(key.clone(), d.subscriptions > 0);
            }
            self.share(key, d, Vec::new());
        }
        let event = (connected != d.connected()).then(|| connection_event(key, d.connected()));
        drop(state);
        if let Some(event) = event {
            self.events.emit(event);
        }
        Ok(())
    }

    /// Records a data plane's telemetry: tunnels that changed state and the
    /// events it carries go to the feed.
    fn report(&self, report: TelemetryReport) -> Result<(), Status> {
        let key = (report.site_id.clone(), report.dataplane_id.clone());
        let mut events = Vec::new();
        {
            let mut state = self.lock();
            let d = Hub::dataplane_entry(&mut state, &key)?;
            // By name, so a large report costs one pass, not one per peer.
            let previous: HashMap<&str, i32> = d
                .report
                .as_ref()
                .map(|(r, _)| {
                    r.peers
                        .iter()
                        .map(|p| (p.name.as_str(), p.tunnel))
                        .collect()
                })
                .unwrap_or_default();
            for peer in &report.peers {
                let before = previous.get(peer.name.as_str()).copied();
                let kind = match TunnelState::try_from(peer.tunnel) {
                    Ok(TunnelState::Up) if before != Some(peer.tunnel) => EventType::TunnelUp,
                    Ok(TunnelState::Down) if before == Some(TunnelState::Up as i32) => {
                        EventType::TunnelDown
                    }
                    _ => continue,
                };
                events.push(Event {
                    r#type: kind as i32,
                    site_id: key.0.clone(),
                    dataplane_id: key.1.clone(),
                    name: peer.name.clone(),
                    ..Default::default()
                });
            }
            for e in &report.events {
                events.push(Event {
                    r#type: e.r#type,
                    site_id: key.0.clone(),
                    dataplane_id: key.1.clone(),
                    name: e.subject.clone(),
                    message: e.message.clone(),
                    ..Default::default()
                });
            }
            let mut kept = report;
            kept.events.clear();
            d.report = Some((Arc::new(kept), SystemTime::now()));
            self.share(&key, d, events.clone());
        }
        for e in events {
            log_dataplane_event(&e);
            self.events.emit(e);
        }
        Ok(())
    }
}

/// One log line per event a data plane's telemetry brought, with the fields
/// a log collector indexes (site, dataplane, peer, policy).
fn log_dataplane_event(e: &Event) {
    let (site, dataplane, detail) = (&e.site_id, &e.dataplane_id, &e.message);
    match EventType::try_from(e.r#type) {
        Ok(EventType::TunnelUp) => tracing::info!(site, dataplane, peer = e.name, "tunnel up"),
        Ok(EventType::TunnelDown) => {
            tracing::warn!(site, dataplane, peer = e.name, "tunnel down");
        }
        Ok(EventType::Failover) => tracing::warn!(
            site,
            dataplane,
            policy = e.name,
            detail,
            "traffic moved to another path"
        ),
        Ok(EventType::ConfigRefused) => tracing::warn!(
            site,
            dataplane,
            detail,
            "the data plane refused its configuration file"
        ),
        Ok(kind) => tracing::info!(
            site,
            dataplane,
            event = kind.as_str_name(),
            subject = e.name,
            detail,
            "data plane event"
        ),
        Err(_) => tracing::warn!(site, dataplane, kind = e.r#type, "unknown data plane event"),
    }
}

/// Whether `policy`'s selector matches `site`'s labels (no selector, or an
/// empty one, matches every site).
pub fn selects(policy: &Policy, site: &Site) -> bool {
    let labels = site.metadata.as_ref().map(|m| &m.labels);
    let selector = policy.spec.as_ref().and_then(|s| s.site_selector.as_ref());
    selector.is_none_or(|sel| {
        sel.match_labels
            .iter()
            .all(|(k, v)| labels.is_some_and(|l| l.get(k) == Some(v)))
    })
}

/// The DataplaneSync service.
#[derive(Debug, Clone)]
pub struct Sync {
    hub: Arc<Hub>,
}

impl Sync {
    /// The service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Sync {
        Sync { hub }
    }
}

/// A subscription's stream; tells the hub when the data plane goes away.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<SiteSnapshot, Status>> + Send>>,
    hub: Arc<Hub>,
    key: (String, String),
}

impl Stream for Subscription {
    type Item = Result<SiteSnapshot, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Its entry exists (the subscription made it), so this cannot be refused.
        let _ = self.hub.connection(&self.key, -1);
        tracing::info!(
            site = self.key.0,
            dataplane = self.key.1,
            "data plane unsubscribed"
        );
    }
}

fn check_ids(site_id: &str, dataplane_id: &str) -> Result<(), Status> {
    if !is_dns_label(site_id) {
        return Err(Status::invalid_argument("site_id: must be a site id"));
    }
    let id_ok = !dataplane_id.is_empty()
        && dataplane_id.len() <= 253
        && dataplane_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        return Err(Status::invalid_argument(
            "dataplane_id: 1-253 characters of A-Z, a-z, 0-9, '-', '_', '.'",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl DataplaneSync for Sync {
    type SubscribeStream = Subscription;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Subscription>, Status> {
        self.hub.allow_site(&req, &req.get_ref().site_id)?;
        let req = req.into_inner();
        check_ids(&req.site_id, &req.dataplane_id)?;
        let running = Running {
            epoch: req.running_epoch,
            version: req.running_version,
            digest: req.running_digest,
        };
        let latest = self
            .hub
            .watch_running(&req.site_id, &running)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(why) => Status::unavailable(why),
                e => Status::internal(e.to_string()),
            })?;
        let key = (req.site_id, req.dataplane_id);
        self.hub.connection(&key, 1)?;
        tracing::info!(site = key.0, dataplane = key.1, "data plane subscribed");
        let inner = WatchStream::new(latest).map(|s| Ok(SiteSnapshot::clone(&s)));
        Ok(Response::new(Subscription {
            inner: Box::pin(inner),
            hub: self.hub.clone(),
            key,
        }))
    }

    async fn acknowledge(
        &self,
        req: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        self.hub.allow_site(&req, &req.get_ref().site_id)?;
        let req = req.into_inner();
        check_ids(&req.site_id, &req.dataplane_id)?;
        let result = AckResult::try_from(req.result).unwrap_or(AckResult::Unspecified);
        if result == AckResult::Unspecified {
            return Err(Status::invalid_argument("result: must be ACK or NACK"));
        }
        // An answer to a snapshot of another database (this control plane
        // was restarted on a new one since): its version means nothing here.
        if req.epoch != 0 && req.epoch != self.hub.store.epoch() {
            tracing::info!(
                site = req.site_id,
                dataplane = req.dataplane_id,
                version = req.version,
                "ignoring an answer to another database's snapshot"
            );
            return Ok(Response::new(AcknowledgeResponse {}));
        }
        let mut state = self.hub.lock();
        let d = Hub::dataplane_entry(&mut state, &(req.site_id.clone(), req.dataplane_id.clone()))?;
        let mut event = Event {
            site_id: req.site_id.clone(),
            dataplane_id: req.dataplane_id.clone(),
            version: req.version,
            ..Default::default()
        };
        match result {
            AckResult::Ack => {
                d.applied = d.applied.max(req.version);
                event.r#type = EventType::SnapshotApplied as i32;
            }
            AckResult::Nack => {
                event.r#type = EventType::SnapshotRefused as i32;
                d.refused = req.version;
                d.reason = req.reason.chars().take(1024).collect();
                tracing::warn!(
                    site = req.site_id,
                    dataplane = req.dataplane_id,
                    version = req.version,
                    reason = d.reason,
                    "data plane refused a snapshot"
                );
                event.message = d.reason.clone();
            }
            AckResult::Unspecified => unreachable!("refused above"),
        }
        self.hub.share(
            &(req.site_id.clone(), req.dataplane_id.clone()),
            d,
            vec![event.clone()],
        );
        drop(state);
        self.hub.events.emit(event);
        Ok(Response::new(AcknowledgeResponse {}))
    }

    async fn report(
        &self,
        req: Request<Streaming<TelemetryReport>>,
    ) -> Result<Response<ReportResponse>, Status> {
        let role = caller(&req)?;
        let mut stream = req.into_inner();
        while let Some(report) = stream.message().await? {
            authorize_site(&role, &report.site_id).map_err(|d| self.hub.refuse(&d))?;
            check_ids(&report.site_id, &report.dataplane_id)?;
            let paths: usize = report.peers.iter().map(|p| p.paths.len()).sum();
            if report.peers.len() > MAX_REPORTED_PEERS
                || paths > MAX_REPORTED_PATHS
                || report.bfd_sessions.len() > MAX_REPORTED_BFD_SESSIONS
                || report.events.len() > MAX_REPORTED_EVENTS
                || report.encoded_len() > MAX_REPORT_BYTES
            {
                return Err(Status::invalid_argument(format!(
                    "a report holds at most {MAX_REPORTED_PEERS} peers, {MAX_REPORTED_PATHS} paths, \
                     {MAX_REPORTED_BFD_SESSIONS} BFD sessions, {MAX_REPORTED_EVENTS} events and \
                     {MAX_REPORT_BYTES} bytes"
                )));
            }
            self.hub.report(report)?;
        }
        Ok(Response::new(ReportResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use patronus_proto::v1::{Endpoint, ObjectMeta, PeerSpec, SiteSpec, WireGuard};

    use super::*;

    fn named(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        })
    }

    /// A store holding site `branch`, and a hub over it.
    async fn hub() -> (tempfile::TempDir, Arc<Store>, Arc<Hub>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_redb(&dir.path().join("cp.redb")).unwrap());
        let site = Site {
            metadata: named("branch"),
            spec: Some(SiteSpec {
                site_id: "branch".into(),
                ..Default::default()
            }),
            status: None,
        };
        store.create(site, "uid-site".into()).await.unwrap();
        let hub = Hub::start(store.clone(), DATAPLANE_EXPIRY);
        (dir, store, hub)
    }

    async fn add_peer(store: &Store) {
        let peer = Peer {
            metadata: named("hq"),
            spec: Some(PeerSpec {
                site_id: "branch".into(),
                endpoint: Some(Endpoint {
                    address: "192.0.2.1".into(),
                    port: 51820,
                }),
                wireguard: Some(WireGuard {
                    public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
                }),
                ..Default::default()
            }),
            status: None,
        };
        store.create(peer, "uid-peer".into()).await.unwrap();
    }

    /// The race of a site's first subscriber: a write commits (and the
    /// hub recompiles what it tracks) after the subscriber's read and
    /// before its snapshot is published. The subscriber still gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_between_a_new_sites_read_and_its_publication_reaches_the_subscriber() {
        let (_dir, store, hub) = hub().await;
        let mut latest = hub
            .watch_with("branch", async {
                add_peer(&store).await;
                hub.refresh_all().await.unwrap();
            })
            .await
            .unwrap();
        let got_peer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if latest.borrow_and_update().peers.len() == 1 {
                    return;
                }
                latest.changed().await.unwrap();
            }
        })
        .await;
        assert!(got_peer.is_ok(), "the peer never reached the subscriber");
    }

    /// Two reads racing: the later one published first, the older one
    /// then changes nothing (no higher version with older content).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_read_never_replaces_a_newer_publication() {
        let (_dir, store, hub) = hub().await;
        // Followed, so that the expiry sweep (which may run at any time)
        // keeps the site.
        let _following = hub.watch("branch").await.unwrap();
        let ids = vec!["branch".to_owned()];
        let older = store.desired_state(Some(ids.clone())).await.unwrap();
        add_peer(&store).await;
        hub.refresh(ids.clone()).await.unwrap();
        let newer = hub.lock().sites["branch"].latest.borrow().clone();
        assert_eq!(newer.peers.len(), 1);
        hub.publish(&ids, &older);
        let after = hub.lock().sites["branch"].latest.borrow().clone();
        assert_eq!(after, newer);
    }
}

#[cfg(test)]
mod bounds {
    use super::*;

    fn hub(expiry: Duration) -> (tempfile::TempDir, Arc<Hub>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_redb(&dir.path().join("cp.redb")).unwrap());
        (dir, Hub::start(store, expiry))
    }

    fn key(site: &str, id: &str) -> (String, String) {
        (site.to_owned(), id.to_owned())
    }

    #[tokio::test]
    async fn data_planes_gone_for_the_expiry_are_forgotten_with_the_sites_no_one_follows() {
        let expiry = Duration::from_secs(600);
        let (_dir, hub) = hub(expiry);
        let start = Instant::now();
        let following = hub.watch("branch").await.unwrap();
        hub.connection(&key("branch", "gw-1"), 1).unwrap();
        hub.connection(&key("branch", "gw-2"), 1).unwrap();
        hub.connection(&key("branch", "gw-2"), -1).unwrap();
        let unfollowed = hub.watch("elsewhere").await.unwrap();
        drop(unfollowed);

        // Within the expiry nothing goes but the site no one follows.
        hub.expire(start + expiry / 2);
        assert_eq!(hub.dataplanes("").len(), 2);
        assert!(!hub.lock().sites.contains_key("elsewhere"));

        // After it, the one that went away is forgotten; the connected one stays.
        hub.expire(start + expiry * 2);
        let left: Vec<String> = hub
            .dataplanes("")
            .into_iter()
            .map(|d| d.dataplane_id)
            .collect();
        assert_eq!(left, ["gw-1"]);

        // Once the last one goes and no one follows the site, it goes too.
        hub.connection(&key("branch", "gw-1"), -1).unwrap();
        let gone = Instant::now();
        drop(following);
        hub.expire(gone + expiry / 2);
        assert_eq!(hub.dataplanes("").len(), 1, "gone for less than the expiry");
        assert!(hub.lock().sites.contains_key("branch"));
        hub.expire(gone + expiry);
        assert!(hub.dataplanes("").is_empty());
        assert!(hub.lock().sites.is_empty());
    }

    /// The expiry sweep runs at any time, also between a new site's
    /// publication and its first watcher (at start-up its first tick is
    /// immediate): the watcher still gets the site.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_site_is_watched_even_when_the_sweep_runs_beside_its_publication() {
        let (_dir, hub) = hub(Duration::from_secs(600));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweeper = {
            let (hub, done) = (hub.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    hub.expire(Instant::now());
                }
            })
        };
        let watched = tokio::spawn({
            let hub = hub.clone();
            async move {
                for i in 0..500 {
                    hub.watch(&format!("site-{i}")).await?;
                }
                Ok::<(), StoreError>(())
            }
        })
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sweeper.join().unwrap();
        assert!(matches!(watched, Ok(Ok(_))), "{watched:?}");
    }

    #[tokio::test]
    async fn a_site_has_a_bounded_number_of_data_planes() {
        let expiry = Duration::from_secs(600);
        let (_dir, hub) = hub(expiry);
        for i in 0..MAX_DATAPLANES_PER_SITE {
            hub.connection(&key("branch", &format!("gw-{i}")), 1)
                .unwrap();
        }
        let refused = hub.connection(&key("branch", "one-more"), 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("\"branch\""),
            "{}",
            refused.message()
        );
        // Another site is not affected; known data planes still are served.
        hub.connection(&key("hq", "gw-0"), 1).unwrap();
        hub.connection(&key("branch", "gw-0"), -1).unwrap();
        // One that went away makes room once forgotten.
        hub.expire(Instant::now() + expiry * 2);
        hub.connection(&key("branch", "one-more"), 1).unwrap();
    }
}
