//! Configuration streaming to data planes (`patronus.v1.DataplaneSync`).
//!
//! Each site's snapshot (its Site, the Peers of its site_id, the Policies
//! whose selector matches its labels) is compiled from the store and kept
//! per site that a data plane has asked for. Writes only mark the hub dirty;
//! one background task recompiles the tracked sites, so a burst of writes
//! costs one recompilation. A snapshot gets a new version only when its
//! content changed: the store revision at that moment, which only grows and
//! survives restarts. Subscribers watch their site's latest snapshot; a slow
//! one skips intermediate versions, never receives a stale one after a newer.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use patronus_proto::v1::dataplane_sync_server::DataplaneSync;
use patronus_proto::v1::{
    AckResult, AcknowledgeRequest, AcknowledgeResponse, Dataplane, Peer, Policy, Site,
    SiteSnapshot, SubscribeRequest,
};
use prost::Message;
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::store::{DesiredState, Store, StoreError};
use crate::validate::is_dns_label;

/// One tracked site.
struct SiteEntry {
    /// The snapshot's content without its version, to tell real changes.
    content: Vec<u8>,
    latest: watch::Sender<Arc<SiteSnapshot>>,
}

/// What the hub knows of one data plane.
#[derive(Debug, Default, Clone)]
struct DataplaneState {
    subscriptions: usize,
    applied: u64,
    refused: u64,
    reason: String,
}

#[derive(Default)]
struct HubState {
    sites: HashMap<String, SiteEntry>,
    dataplanes: BTreeMap<(String, String), DataplaneState>,
}

/// Snapshots per site and what each data plane made of them.
pub struct Hub {
    store: Arc<Store>,
    state: Mutex<HubState>,
    dirty: Arc<Notify>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub over `store`, with its recompilation task on the current runtime.
    pub fn start(store: Arc<Store>) -> Arc<Hub> {
        let dirty = Arc::new(Notify::new());
        let hub = Arc::new(Hub {
            store,
            state: Mutex::new(HubState::default()),
            dirty: dirty.clone(),
        });
        // The task holds the hub weakly: when the server goes, so does the
        // hub and its store (the task then waits on a Notify no one signals).
        let worker = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                dirty.notified().await;
                let Some(hub) = worker.upgrade() else { return };
                let refreshed = tokio::task::spawn_blocking(move || hub.refresh_all()).await;
                if let Ok(Err(e)) = refreshed {
                    tracing::error!(error = %e, "recompiling site snapshots failed");
                }
            }
        });
        hub
    }

    /// Desired state changed: recompile the tracked sites soon.
    pub fn changed(&self) {
        self.dirty.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A site's snapshot content (version 0) in `state`.
    fn compile(site_id: &str, site: Option<&Site>, state: &DesiredState) -> SiteSnapshot {
        let peers: Vec<Peer> = state
            .peers
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.site_id == site_id))
            .cloned()
            .collect();
        let labels = site.and_then(|s| s.metadata.as_ref()).map(|m| &m.labels);
        let policies: Vec<Policy> = match labels {
            None => Vec::new(),
            Some(labels) => state
                .policies
                .iter()
                .filter(|p| {
                    let selector = p.spec.as_ref().and_then(|s| s.site_selector.as_ref());
                    selector.is_none_or(|sel| {
                        sel.match_labels
                            .iter()
                            .all(|(k, v)| labels.get(k) == Some(v))
                    })
                })
                .cloned()
                .collect(),
        };
        SiteSnapshot {
            site_id: site_id.to_owned(),
            version: 0,
            site: site.cloned(),
            peers,
            policies,
        }
    }

    /// Recompiles these sites from one read of the store; publishes a new
    /// version of each whose content changed. The version is the revision
    /// read, so sites changed by one write share it.
    fn refresh(&self, site_ids: &[String]) -> Result<(), StoreError> {
        let state = self.store.desired_state()?;
        let by_id: HashMap<&str, &Site> = state
            .sites
            .iter()
            .filter_map(|s| s.spec.as_ref().map(|spec| (spec.site_id.as_str(), s)))
            .collect();
        let revision = state.revision;
        for site_id in site_ids {
            let site = by_id.get(site_id.as_str()).copied();
            let mut snapshot = Hub::compile(site_id, site, &state);
            let content = snapshot.encode_to_vec();
            let mut state = self.lock();
            match state.sites.get_mut(site_id) {
                Some(entry) if entry.content == content => {}
                Some(entry) => {
                    snapshot.version = revision.max(entry.latest.borrow().version + 1);
                    entry.content = content;
                    entry.latest.send_replace(Arc::new(snapshot));
                }
                None => {
                    snapshot.version = revision.max(1);
                    let (latest, _) = watch::channel(Arc::new(snapshot));
                    state
                        .sites
                        .insert(site_id.clone(), SiteEntry { content, latest });
                }
            }
        }
        Ok(())
    }

    fn refresh_all(&self) -> Result<(), StoreError> {
        let sites: Vec<String> = self.lock().sites.keys().cloned().collect();
        self.refresh(&sites)
    }

    /// Starts tracking `site_id` (if new) and watches its latest snapshot.
    fn watch(&self, site_id: &str) -> Result<watch::Receiver<Arc<SiteSnapshot>>, StoreError> {
        if !self.lock().sites.contains_key(site_id) {
            self.refresh(&[site_id.to_owned()])?;
        }
        let state = self.lock();
        Ok(state.sites[site_id].latest.subscribe())
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
                connected: d.subscriptions > 0,
                desired_version: state
                    .sites
                    .get(site)
                    .map_or(0, |e| e.latest.borrow().version),
                applied_version: d.applied,
                refused_version: d.refused,
                refused_reason: d.reason.clone(),
            })
            .collect()
    }

    fn connection(&self, key: &(String, String), delta: isize) {
        let mut state = self.lock();
        let d = state.dataplanes.entry(key.clone()).or_default();
        d.subscriptions = d.subscriptions.saturating_add_signed(delta);
    }
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
        self.hub.connection(&self.key, -1);
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
        let req = req.into_inner();
        check_ids(&req.site_id, &req.dataplane_id)?;
        let hub = self.hub.clone();
        let site = req.site_id.clone();
        let latest = tokio::task::spawn_blocking(move || hub.watch(&site))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let key = (req.site_id, req.dataplane_id);
        self.hub.connection(&key, 1);
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
        let req = req.into_inner();
        check_ids(&req.site_id, &req.dataplane_id)?;
        let result = AckResult::try_from(req.result).unwrap_or(AckResult::Unspecified);
        let mut state = self.hub.lock();
        let d = state
            .dataplanes
            .entry((req.site_id.clone(), req.dataplane_id.clone()))
            .or_default();
        match result {
            AckResult::Ack => d.applied = d.applied.max(req.version),
            AckResult::Nack => {
                d.refused = req.version;
                d.reason = req.reason.chars().take(1024).collect();
                tracing::warn!(
                    site = req.site_id,
                    dataplane = req.dataplane_id,
                    version = req.version,
                    reason = d.reason,
                    "data plane refused a snapshot"
                );
            }
            AckResult::Unspecified => {
                return Err(Status::invalid_argument("result: must be ACK or NACK"))
            }
        }
        Ok(Response::new(AcknowledgeResponse {}))
    }
}
