//! The reconcilers of Site, Peer and Policy, and the loop that runs them.
//!
//! Each reconcile maps the object to the control plane (idempotent: nothing
//! is written when the copy already matches), deploys a Site's data plane,
//! and writes the control plane's view back as status. A finalizer removes
//! the copy before Kubernetes lets the object go. Failures back off
//! exponentially per object; the control plane's event feed requeues the
//! objects a change concerns (a tunnel coming up, a data plane applying a
//! snapshot) instead of leaving them to the periodic resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use patronus_proto::v1 as pb;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::controlplane::{self, Mirror, Removed, Synced};
use crate::crd::{
    Peer, PeerPathStatus, PeerStatus, Policy, PolicyStatus, Site, SitePhase, SiteStatus,
};
use crate::dataplane;
use crate::metrics::Metrics;
use crate::Error;

/// The finalizer that keeps an object until its control-plane copy is gone.
pub const FINALIZER: &str = "patronus.io/controlplane";
/// Annotation on a Site, Peer or Policy being deleted: `"true"` lets its
/// finalizer go without removing the control-plane copy (the escape when
/// the control plane is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "patronus.io/skip-controlplane-cleanup";
/// Default of [`Context::with_cleanup_timeout`].
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often an object is reconciled when nothing else asks for it.
pub const RESYNC: Duration = Duration::from_secs(300);
/// The first retry after a failure; each further failure doubles it.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes API.
    pub client: kube::Client,
    /// The control plane's public API.
    pub controlplane: controlplane::Client,
    /// How data planes are deployed.
    pub settings: dataplane::Settings,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Who the Kubernetes Events come from.
    pub reporter: Reporter,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// How long after its deletion an object's cleanup is retried.
    cleanup_timeout: Duration,
    /// The Sites watched, for the namespaces a Peer may reach (set once the
    /// controllers start).
    sites: std::sync::OnceLock<Store<Site>>,
}

impl Context {
    /// A context for the controllers.
    pub fn new(
        client: kube::Client,
        controlplane: controlplane::Client,
        settings: dataplane::Settings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        Context {
            client,
            controlplane,
            settings,
            metrics,
            reporter: Reporter {
                controller: dataplane::MANAGER.into(),
                instance,
            },
            failures: Mutex::new(HashMap::new()),
            cleanup_timeout: CLEANUP_TIMEOUT,
            sites: std::sync::OnceLock::new(),
        }
    }

    /// Gives the Sites the Peers are checked against (the Site
    /// controller's cache); only the first call counts.
    pub fn know_sites(&self, sites: Store<Site>) {
        let _ = self.sites.set(sites);
    }

    /// That `peer` names the site id of a Site of its own namespace, or of
    /// one that accepts its namespace ([`controlplane::ACCEPT_FROM_ANNOTATION`]):
    /// a Peer must not add a tunnel to another tenant's site.
    fn check_peer_target(&self, peer: &Peer) -> Result<(), Error> {
        let own = peer.namespace().unwrap_or_default();
        let site_id = &peer.spec.site_id;
        let reachable = self.sites.get().is_some_and(|sites| {
            sites.state().iter().any(|site| {
                site.spec.site_id == *site_id
                    && controlplane::accepted_namespaces(site).contains(&own)
            })
        });
        if reachable {
            return Ok(());
        }
        Err(Error::Invalid {
            field: "spec.siteId".into(),
            message: format!(
                "no Site with siteId {site_id:?} in namespace {own:?}, nor one elsewhere that accepts it ({})",
                controlplane::ACCEPT_FROM_ANNOTATION
            ),
        })
    }

    /// Retries a deleted object's cleanup for `timeout` after its deletion,
    /// then lets its finalizer go anyway.
    #[must_use]
    pub fn with_cleanup_timeout(mut self, timeout: Duration) -> Self {
        self.cleanup_timeout = timeout;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wait before retrying `key` after one more failure.
    pub fn retry_after(&self, key: &str) -> Duration {
        let mut failures = self.failures();
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 1u32 << (*n - 1).min(16);
        (BACKOFF_MIN * factor).min(BACKOFF_MAX)
    }

    fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    /// Publishes a Kubernetes Event about `obj`. Events are advisory: a
    /// failure to publish one is logged, not a failed reconcile.
    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: KubeEventType,
        reason: &str,
        note: String,
    ) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish a Kubernetes event");
        }
    }
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The three kinds, as the generic parts of reconciling see them.
trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The control plane's message for this kind.
    type Message: Mirror;
    /// site, peer or policy: the metrics' `kind` label.
    const KIND: &'static str;
}

impl Reconciled for Site {
    type Message = pb::Site;
    const KIND: &'static str = "site";
}
impl Reconciled for Peer {
    type Message = pb::Peer;
    const KIND: &'static str = "peer";
}
impl Reconciled for Policy {
    type Message = pb::Policy;
    const KIND: &'static str = "policy";
}

/// The reconcile shared by all kinds: count and time it, run the finalizer,
/// publish a Warning Event on failure, and keep the backoff bookkeeping.
async fn reconcile<K, F, Fut>(obj: Arc<K>, ctx: Arc<Context>, apply: F) -> Result<Action, Error>
where
    K: Reconciled,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    let _timer = ctx.metrics.reconcile(K::KIND);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(obj) => apply(obj, ctx.clone()).await,
            FinalizerEvent::Cleanup(obj) => cleanup::<K>(&obj, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => ctx.succeeded(&key(obj.as_ref())),
        Err(e) => {
            tracing::warn!(object = %key(obj.as_ref()), error = %e, "reconcile failed");
            ctx.publish(
                obj.as_ref(),
                KubeEventType::Warning,
                "ReconcileFailed",
                e.to_string(),
            )
            .await;
        }
    }
    result
}

/// Requeues a failed object after its backoff, and counts the failure.
fn error_policy<K: Reconciled>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(K::KIND, error.reason());
    Action::requeue(ctx.retry_after(&key(obj.as_ref())))
}

/// Removes the object's control-plane copy before the finalizer goes.
/// An annotation asking for it, or a control plane unreachable for longer
/// than the cleanup timeout since the deletion, lets the finalizer go with a
/// Warning Event saying the copy may remain.
async fn cleanup<K: Reconciled>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let what = format!("{} {:?}", K::KIND, obj.name_any());
    if obj
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        let message = format!(
            "left {what} in the control plane, as {SKIP_CLEANUP_ANNOTATION} asks; remove it there if the control plane comes back"
        );
        ctx.publish(obj, KubeEventType::Warning, "CleanupSkipped", message)
            .await;
        return Ok(Action::await_change());
    }
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let mut cp = ctx.controlplane.clone();
    let removed = match controlplane::remove::<K::Message>(&mut cp, &obj.name_any(), &uid).await {
        Ok(removed) => removed,
        Err(e) if deleted_for(obj) >= ctx.cleanup_timeout => {
            let message = format!(
                "gave up removing {what} from the control plane after {}s: {e}; it may remain there",
                ctx.cleanup_timeout.as_secs()
            );
            ctx.publish(obj, KubeEventType::Warning, "CleanupAbandoned", message)
                .await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    match removed {
        Removed::Deleted => {
            ctx.publish(
                obj,
                KubeEventType::Normal,
                "Deleted",
                format!(
                    "removed {} {:?} from the control plane",
                    K::KIND,
                    obj.name_any()
                ),
            )
            .await;
        }
        Removed::Absent => {}
        Removed::NotOurs => {
            ctx.publish(
                obj,
                KubeEventType::Warning,
                "NotOurs",
                format!(
                    "left {} {:?} in the control plane: another object manages it",
                    K::KIND,
                    obj.name_any()
                ),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// How long ago `obj` was deleted (zero when it is not being deleted, or
/// its deletion is stamped in the future by a clock ahead of ours).
fn deleted_for<K: Resource>(obj: &K) -> Duration {
    obj.meta()
        .deletion_timestamp
        .as_ref()
        .and_then(|t| std::time::SystemTime::now().duration_since(t.0.into()).ok())
        .unwrap_or_default()
}

/// Publishes what a sync wrote, if it wrote anything.
async fn announce<K: Reconciled, R: Mirror>(ctx: &Context, obj: &K, synced: &Synced<R>) {
    let version = |r: &R| r.meta().map_or(0, |m| m.resource_version);
    let (reason, verb, r) = match synced {
        Synced::Created(r) => ("Created", "created", r),
        Synced::Updated(r) => ("Updated", "updated", r),
        Synced::Unchanged(_) => return,
    };
    ctx.publish(
        obj,
        KubeEventType::Normal,
        reason,
        format!(
            "{verb} {} {:?} in the control plane (resource version {})",
            K::KIND,
            obj.name_any(),
            version(r)
        ),
    )
    .await;
}

/// Writes `status` to the object's status subresource if it changed.
async fn patch_status<K: Reconciled, S: Serialize + PartialEq>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    status: S,
) -> Result<(), Error> {
    if current == Some(&status) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<Time> {
    let t = t?;
    Timestamp::new(t.seconds, t.nanos).ok().map(Time)
}

/// Reconciles a Site: its control-plane copy, its key, its data plane, its status.
pub async fn reconcile_site(site: Arc<Site>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile(site, ctx, |site, ctx| async move {
        // Annotations are checked before anything is written.
        let sizing = dataplane::sizing(&site, &ctx.settings)?;
        let mut cp = ctx.controlplane.clone();
        let synced = controlplane::sync(&mut cp, controlplane::site(&site)?).await?;
        announce(&ctx, site.as_ref(), &synced).await;
        let public_key = dataplane::ensure_key(&ctx.client, &site).await?;
        dataplane::ensure_token(&ctx.client, &site, &ctx.settings).await?;
        dataplane::apply(&ctx.client, &site, &ctx.settings, &sizing).await?;
        let view = synced.resource().status.unwrap_or_default();
        let status = SiteStatus {
            phase: match pb::SitePhase::try_from(view.phase).unwrap_or_default() {
                pb::SitePhase::Ready => SitePhase::Ready,
                pb::SitePhase::Degraded => SitePhase::Degraded,
                pb::SitePhase::Failed => SitePhase::Failed,
                pb::SitePhase::Pending | pb::SitePhase::Unspecified => SitePhase::Pending,
            },
            tunnels_up: view.tunnels_up,
            last_health_check: time(view.last_health_check.as_ref()),
            public_key,
        };
        patch_status(&ctx, site.as_ref(), site.status.as_ref(), status).await?;
        Ok(Action::requeue(RESYNC))
    })
    .await
}

/// Reconciles a Peer: its control-plane copy and its status.
pub async fn reconcile_peer(peer: Arc<Peer>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile(peer, ctx, |peer, ctx| async move {
        ctx.check_peer_target(&peer)?;
        let mut cp = ctx.controlplane.clone();
        let synced = controlplane::sync(&mut cp, controlplane::peer(&peer)?).await?;
        announce(&ctx, peer.as_ref(), &synced).await;
        let view = synced.resource().status.clone().unwrap_or_default();
        let status = peer_status(&view);
        patch_status(&ctx, peer.as_ref(), peer.status.as_ref(), status).await?;
        Ok(Action::requeue(RESYNC))
    })
    .await
}

/// The Peer's status from the control plane's view of it.
fn peer_status(view: &pb::PeerStatus) -> PeerStatus {
    PeerStatus {
        connected: view.connected,
        latency_ms: view.latency_ms,
        packet_loss: view.packet_loss,
        paths: view
            .paths
            .iter()
            .map(|p| PeerPathStatus {
                path_id: p.path_id.clone(),
                active: p.active,
                up: p.up,
                bfd: patronus_proto::manifest::bfd_state_name(p.bfd).map(str::to_owned),
            })
            .collect(),
    }
}

/// The Ready condition, keeping its transition time while its state holds.
fn ready_condition(
    old: Option<&PolicyStatus>,
    generation: i64,
    ready: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let since = old
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: since.unwrap_or_else(|| Time(Timestamp::now())),
    }
}

/// Reconciles a Policy: its control-plane copy and its status, with the
/// sites it selects and a Ready condition that says why when it is not.
pub async fn reconcile_policy(policy: Arc<Policy>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile(policy, ctx, |policy, ctx| async move {
        let generation = policy.meta().generation.unwrap_or_default();
        let mut cp = ctx.controlplane.clone();
        let desired = controlplane::policy(&policy);
        let synced = match async { controlplane::sync(&mut cp, desired?).await }.await {
            Ok(synced) => synced,
            Err(e) => {
                let old = policy.status.clone().unwrap_or_default();
                let status = PolicyStatus {
                    conditions: vec![ready_condition(
                        policy.status.as_ref(),
                        generation,
                        false,
                        "SyncFailed",
                        e.to_string(),
                    )],
                    ..old
                };
                patch_status(&ctx, policy.as_ref(), policy.status.as_ref(), status).await?;
                return Err(e);
            }
        };
        announce(&ctx, policy.as_ref(), &synced).await;
        let view = synced.resource().status.clone().unwrap_or_default();
        let message = match view.selected_sites.len() {
            1 => "applies to 1 site".to_owned(),
            n => format!("applies to {n} sites"),
        };
        let status = PolicyStatus {
            selected_sites: view.selected_sites,
            observed_generation: generation,
            conditions: vec![ready_condition(
                policy.status.as_ref(),
                generation,
                true,
                "Synced",
                message,
            )],
        };
        patch_status(&ctx, policy.as_ref(), policy.status.as_ref(), status).await?;
        Ok(Action::requeue(RESYNC))
    })
    .await
}

/// A change the control plane announced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// site, peer, policy or application ("" for fleet events).
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The site concerned ("" when none).
    pub site_id: String,
    /// Events were lost: everything must be looked at again.
    pub lost: bool,
}

impl Change {
    fn from_event(e: &pb::Event) -> Self {
        Change {
            kind: e.kind.clone(),
            name: e.name.clone(),
            site_id: e.site_id.clone(),
            lost: e.r#type == pb::EventType::EventsLost as i32,
        }
    }

    /// Whether the Site's view may have changed.
    pub fn concerns_site(&self, site: &Site) -> bool {
        self.lost
            || (!self.site_id.is_empty() && self.site_id == site.spec.site_id)
            || (self.kind == "site" && self.name == site.name_any())
    }

    /// Whether the Peer's view may have changed.
    pub fn concerns_peer(&self, peer: &Peer) -> bool {
        self.lost
            || (!self.site_id.is_empty() && self.site_id == peer.spec.site_id)
            || (self.kind == "peer" && self.name == peer.name_any())
    }

    /// Whether the Policy's view may have changed: sites coming and going,
    /// or their labels, change which sites it selects.
    pub fn concerns_policy(&self, policy: &Policy) -> bool {
        self.lost
            || self.kind == "site"
            || (self.kind == "policy" && self.name == policy.name_any())
    }
}

/// Follows the control plane's event feed for as long as `senders` has a
/// listener, reconnecting with backoff and resuming after the last event seen.
pub async fn follow_events(cp: controlplane::Client, senders: Vec<mpsc::UnboundedSender<Change>>) {
    let mut after_id = 0;
    let mut wait = BACKOFF_MIN;
    loop {
        let mut client = cp.clone();
        let request = pb::WatchEventsRequest {
            site_id: String::new(),
            after_id,
            follow: true,
        };
        match client.watch_events(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Some(item) = stream.next().await {
                    let Ok(event) = item else { break };
                    wait = BACKOFF_MIN;
                    after_id = after_id.max(event.id);
                    let change = Change::from_event(&event);
                    let mut listening = false;
                    for tx in &senders {
                        listening |= tx.unbounded_send(change.clone()).is_ok();
                    }
                    if !listening {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "the control plane's event feed is unavailable"),
        }
        if senders.iter().all(mpsc::UnboundedSender::is_closed) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// The objects in `store` that a change concerns, as reconcile requests.
fn requeue<K>(
    changes: mpsc::UnboundedReceiver<Change>,
    store: Store<K>,
    concerns: fn(&Change, &K) -> bool,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    changes.flat_map(move |change| {
        let refs: Vec<ObjectRef<K>> = store
            .state()
            .iter()
            .filter(|obj| concerns(&change, obj))
            .map(|obj| ObjectRef::from_obj(obj.as_ref()))
            .collect();
        futures::stream::iter(refs)
    })
}

fn outcome<T, E: std::fmt::Display>(
    kind: &'static str,
    result: Result<T, E>,
) -> futures::future::Ready<()> {
    if let Err(e) = result {
        tracing::debug!(kind, error = %e, "reconcile did not complete");
    }
    futures::future::ready(())
}

/// Runs the three controllers until they are dropped (leadership lost) or
/// the process is asked to stop. `namespace` limits them to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        client: &kube::Client,
        namespace: Option<&str>,
    ) -> Api<K> {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let client = &ctx.client;
    let config = watcher::Config::default().any_semantic();
    let sites = Controller::new(api::<Site>(client, namespace), config.clone()).owns(
        api::<k8s_openapi::api::apps::v1::Deployment>(client, namespace),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=patronus-operator"),
    );
    let peers = Controller::new(api::<Peer>(client, namespace), config.clone());
    let policies = Controller::new(api::<Policy>(client, namespace), config);

    let (site_tx, site_rx) = mpsc::unbounded();
    let (peer_tx, peer_rx) = mpsc::unbounded();
    let (policy_tx, policy_rx) = mpsc::unbounded();
    let sites = {
        let store = sites.store();
        ctx.know_sites(store.clone());
        sites.reconcile_on(requeue(site_rx, store, Change::concerns_site))
    };
    let peers = {
        let store = peers.store();
        peers.reconcile_on(requeue(peer_rx, store, Change::concerns_peer))
    };
    let policies = {
        let store = policies.store();
        policies.reconcile_on(requeue(policy_rx, store, Change::concerns_policy))
    };
    let feed = follow_events(ctx.controlplane.clone(), vec![site_tx, peer_tx, policy_tx]);

    let sites = sites
        .shutdown_on_signal()
        .run(reconcile_site, error_policy::<Site>, ctx.clone())
        .for_each(|r| outcome("site", r));
    let peers = peers
        .shutdown_on_signal()
        .run(reconcile_peer, error_policy::<Peer>, ctx.clone())
        .for_each(|r| outcome("peer", r));
    let policies = policies
        .shutdown_on_signal()
        .run(reconcile_policy, error_policy::<Policy>, ctx.clone())
        .for_each(|r| outcome("policy", r));
    tokio::select! {
        _ = futures::future::join3(sites, peers, policies) => {}
        () = feed => {}
    }
}

#[cfg(test)]
mod tests;
