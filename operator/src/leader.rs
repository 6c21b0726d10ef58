//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles. The Lease protocol itself is
//! kube-lease-manager's; this module starts the controllers when the
//! replica gains the Lease and stops them the moment it loses it.

use std::future::Future;
use std::sync::Arc;

use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// How long a holder keeps the Lease without renewing it, in seconds.
pub const LEASE_DURATION_S: u64 = 15;
/// How long before expiry the holder renews, in seconds.
pub const LEASE_GRACE_S: u64 = 5;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// Its namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a holder keeps the Lease without renewing it, in seconds.
    pub duration_s: u64,
    /// How long before expiry the holder renews, in seconds.
    pub grace_s: u64,
}

/// Watches the Lease: the receiver says whether this replica holds it. The
/// task keeps the Lease renewed while the receiver lives and releases it
/// once the receiver is dropped (await it at shutdown).
///
/// # Errors
/// The Lease could not be read or created.
pub async fn watch_lease(
    client: kube::Client,
    settings: &LeaseSettings,
) -> anyhow::Result<(watch::Receiver<bool>, JoinHandle<impl Sized>)> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_s)
        .with_grace(settings.grace_s)
        // One field manager per replica: server-side apply's conflict on
        // holderIdentity is what keeps two replicas from both taking the Lease.
        .with_field_manager(format!(
            "{}-{}",
            crate::dataplane::MANAGER,
            settings.identity
        ))
        .build()
        .await?;
    Ok(manager.watch().await)
}

/// Runs `work` (the controllers) while `leading` says this replica holds the
/// Lease, and drops it the moment it does not: a replica that lost the Lease
/// must not write again, so the work is cancelled, not asked to finish.
/// Returns when the Lease watch ends (shutdown) or `work` itself returns.
pub async fn run_while_leading<W, F>(
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    mut work: W,
) where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    loop {
        if leading.wait_for(|held| *held).await.is_err() {
            return;
        }
        tracing::info!("this replica holds the leader lease: reconciling");
        metrics.set_leader(true);
        let finished = tokio::select! {
            () = work() => true,
            lost = leading.wait_for(|held| !*held) => {
                if lost.is_err() {
                    metrics.set_leader(false);
                    return;
                }
                false
            }
        };
        metrics.set_leader(false);
        if finished {
            return;
        }
        tracing::warn!("this replica lost the leader lease: reconciling stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{mock_client, status_404, Seen};
    use http::{Method, StatusCode};
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// One Lease as the API server keeps it: strategic-merge patches merge,
    /// and a server-side apply that takes `holderIdentity` from another
    /// field manager is a conflict.
    #[derive(Default)]
    struct FakeLease {
        lease: Option<Value>,
        holder_manager: Option<String>,
    }

    fn micro_time(ago: Duration) -> String {
        let t = k8s_openapi::jiff::Timestamp::now() - ago;
        t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
    }

    impl FakeLease {
        fn held_by(&mut self, holder: &str, renewed_ago: Duration, duration_s: u64) {
            self.lease = Some(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "patronus-operator", "namespace": "patronus-system", "resourceVersion": "1"},
                "spec": {
                    "holderIdentity": holder, "leaseDurationSeconds": duration_s,
                    "acquireTime": micro_time(renewed_ago), "renewTime": micro_time(renewed_ago)
                }
            }));
            self.holder_manager = Some(format!("patronus-operator-{holder}"));
        }

        fn holder(&self) -> Option<String> {
            let lease = self.lease.as_ref()?;
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        }

        fn answer(&mut self, seen: &Seen, content_type: &str) -> (StatusCode, Value) {
            assert!(
                seen.uri
                    .starts_with("/apis/coordination.k8s.io/v1/namespaces/patronus-system/leases"),
                "only the Lease is touched: {} {}",
                seen.method,
                seen.uri
            );
            let manager = seen
                .uri
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("fieldManager="))
                .map(str::to_owned);
            match seen.method {
                Method::GET => match &self.lease {
                    Some(lease) => (StatusCode::OK, lease.clone()),
                    None => (StatusCode::NOT_FOUND, status_404()),
                },
                Method::POST => {
                    self.lease = Some(seen.body.clone());
                    (StatusCode::CREATED, seen.body.clone())
                }
                Method::PATCH => {
                    let lease = self.lease.get_or_insert_with(|| json!({"spec": {}}));
                    let wanted = seen.body["spec"]["holderIdentity"].as_str();
                    let current = lease["spec"]["holderIdentity"].as_str();
                    if content_type.contains("apply-patch") {
                        if current.is_some() && current != wanted && self.holder_manager != manager
                        {
                            return (
                                StatusCode::CONFLICT,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "reason": "Conflict", "code": 409,
                                       "message": "conflict with another field manager over .spec.holderIdentity"}),
                            );
                        }
                        self.holder_manager = manager;
                    }
                    let spec = lease["spec"].as_object_mut().unwrap();
                    for (key, value) in seen.body["spec"].as_object().unwrap() {
                        if value.is_null() {
                            spec.remove(key);
                        } else {
                            spec.insert(key.clone(), value.clone());
                        }
                    }
                    if !spec.contains_key("holderIdentity") {
                        self.holder_manager = None;
                    }
                    (StatusCode::OK, lease.clone())
                }
                _ => panic!("unexpected {} {}", seen.method, seen.uri),
            }
        }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} did not happen within 10 s");
    }

    #[tokio::test]
    async fn a_replica_waits_for_the_lease_reconciles_once_it_has_it_and_stops_when_it_is_lost() {
        let (client, mut api) = mock_client();
        let fake = Arc::new(Mutex::new(FakeLease::default()));
        // Another replica holds the Lease; its last renewal expires in about a second.
        fake.lock()
            .unwrap()
            .held_by("operator-1", Duration::from_secs(2), 3);
        let server = {
            let fake = fake.clone();
            tokio::spawn(async move {
                while api
                    .answer(|seen, content_type| fake.lock().unwrap().answer(seen, content_type))
                    .await
                    .is_some()
                {}
            })
        };
        let settings = LeaseSettings {
            name: "patronus-operator".into(),
            namespace: "patronus-system".into(),
            identity: "operator-0".into(),
            duration_s: 2,
            grace_s: 1,
        };
        let (leading, lease_task) = watch_lease(client, &settings).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let running = Arc::new(AtomicUsize::new(0));
        let r = running.clone();
        let elected = tokio::spawn(run_while_leading(leading, metrics.clone(), move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                struct Stop(Arc<AtomicUsize>);
                impl Drop for Stop {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _stop = Stop(r);
                std::future::pending::<()>().await;
            }
        }));

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "the Lease is another's");

        // It expires unrenewed: this replica takes it and reconciles.
        eventually("taking the expired Lease", || {
            running.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(fake.lock().unwrap().holder().as_deref(), Some("operator-0"));
        assert!(metrics.encode().contains("patronus_operator_leader 1"));

        // Another replica takes it over: at its next renewal this one sees
        // the new holder and stops at once.
        fake.lock()
            .unwrap()
            .held_by("operator-1", Duration::ZERO, 15);
        eventually("stopping after losing the Lease", || {
            running.load(Ordering::SeqCst) == 0
        })
        .await;
        assert!(metrics.encode().contains("patronus_operator_leader 0"));
        assert_eq!(fake.lock().unwrap().holder().as_deref(), Some("operator-1"));

        elected.abort();
        let _ = elected.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
        server.abort();
    }

    #[tokio::test]
    async fn work_runs_only_while_the_lease_is_held_and_stops_when_it_is_lost() {
        let (tx, rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let started = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (s, r) = (started.clone(), running.clone());
        let task = tokio::spawn(run_while_leading(rx, metrics.clone(), move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _guard = Running(r);
                std::future::pending::<()>().await;
            }
        }));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            0,
            "a follower does not reconcile"
        );
        assert!(metrics.encode().contains("patronus_operator_leader 0"));

        tx.send(true).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        assert!(metrics.encode().contains("patronus_operator_leader 1"));

        tx.send(false).unwrap(); // the Lease is lost
        settle().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            0,
            "the controllers were dropped"
        );
        assert!(metrics.encode().contains("patronus_operator_leader 0"));

        tx.send(true).unwrap(); // and won back
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(running.load(Ordering::SeqCst), 1);

        drop(tx); // shutdown
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("returns when the watch ends")
            .unwrap();
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }
}
