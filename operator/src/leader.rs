//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles. The Lease protocol itself is
//! kube-lease-manager's; this module starts the controllers when the
//! replica gains the Lease and stops them the moment it loses it.
//!
//! The library says when the Lease changes hands, but while the API server
//! does not answer it goes on saying "held": its renewals fail and are
//! retried, with nothing reported. Yet after `leaseDurationSeconds` without a
//! renewal another replica may take the Lease. So the Lease's own record is
//! read as well ([`watch_expiry`]): while this replica is its holder, the
//! record says until when (`renewTime` + `leaseDurationSeconds`), and the
//! work stops a margin before that moment unless a later renewal is read,
//! whatever the library reports.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

/// How often the Lease's record is read for its expiry.
const EXPIRY_READ_EVERY: Duration = Duration::from_secs(1);

/// How long before the recorded expiry the work stops: room for the clock
/// difference between replicas and for cancelling the work.
pub fn stop_margin(duration_s: u64) -> Duration {
    (Duration::from_secs(duration_s) / 4).min(Duration::from_secs(2))
}

/// Reads the Lease every second and says until when this replica is its
/// recorded holder (`None`: it is not, or nothing was read yet). A read
/// that fails or does not answer within the period changes nothing, so the
/// last expiry read stands and runs out.
pub fn watch_expiry(
    client: kube::Client,
    settings: &LeaseSettings,
) -> watch::Receiver<Option<Instant>> {
    let (tx, rx) = watch::channel(None);
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, &settings.namespace);
    let (name, identity) = (settings.name.clone(), settings.identity.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_READ_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let read = tokio::time::timeout(EXPIRY_READ_EVERY, leases.get_opt(&name)).await;
            let Ok(Ok(lease)) = read else {
                continue;
            };
            let until = lease.and_then(|l| l.spec).and_then(|spec| {
                if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                    return None;
                }
                let renewed = spec.renew_time?.0;
                let duration_ms = i64::from(spec.lease_duration_seconds?) * 1000;
                let left_ms = renewed.as_millisecond() + duration_ms
                    - k8s_openapi::jiff::Timestamp::now().as_millisecond();
                Some(Instant::now() + Duration::from_millis(left_ms.max(0) as u64))
            });
            tx.send_replace(until);
        }
    });
    rx
}

/// Runs `work` (the controllers) while `leading` says this replica holds the
/// Lease and its record (`held_until`, from [`watch_expiry`]) has not run
/// out, less `margin`; drops it the moment either stops being so: a replica
/// that lost the Lease, or may have, must not write again, so the work is
/// cancelled, not asked to finish. Returns when the Lease watch ends
/// (shutdown) or `work` itself returns.
pub async fn run_while_leading<W, F>(
    mut leading: watch::Receiver<bool>,
    mut held_until: watch::Receiver<Option<Instant>>,
    margin: Duration,
    metrics: Arc<Metrics>,
    mut work: W,
) where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let stop_at = |until: &watch::Receiver<Option<Instant>>| {
        until.borrow().and_then(|t| t.checked_sub(margin))
    };
    loop {
        // Wait for the library to say "held" and the record to agree.
        loop {
            let held = *leading.borrow_and_update();
            let record = stop_at(&held_until);
            if held && record.is_some_and(|t| t > Instant::now()) {
                break;
            }
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                changed = held_until.changed() => if changed.is_err() { return },
            }
        }
        tracing::info!("this replica holds the leader lease: reconciling");
        metrics.set_leader(true);
        let work_done = work();
        tokio::pin!(work_done);
        let ended = loop {
            let deadline = stop_at(&held_until).unwrap_or_else(Instant::now);
            tokio::select! {
                () = &mut work_done => break Ended::Finished,
                lost = leading.wait_for(|held| !*held) => {
                    break if lost.is_err() { Ended::Shutdown } else { Ended::Lost };
                }
                changed = held_until.changed() => {
                    if changed.is_err() {
                        break Ended::Shutdown;
                    }
                }
                () = tokio::time::sleep_until(deadline) => break Ended::NotRenewed,
            }
        };
        metrics.set_leader(false);
        match ended {
            Ended::Finished | Ended::Shutdown => return,
            Ended::Lost => tracing::warn!("this replica lost the leader lease: reconciling stopped"),
            Ended::NotRenewed => tracing::warn!(
                "the leader lease has not been seen renewed and would expire soon: reconciling stopped"
            ),
        }
    }
}

/// Why a term of leadership ended.
enum Ended {
    Finished,
    Shutdown,
    Lost,
    NotRenewed,
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

    /// This replica's settings, against the fixture's Lease.
    fn operator_0() -> LeaseSettings {
        LeaseSettings {
            name: "patronus-operator".into(),
            namespace: "patronus-system".into(),
            identity: "operator-0".into(),
            duration_s: 2,
            grace_s: 1,
        }
    }

    /// A replica running for the Lease, whose work counts itself running.
    struct Elected<T> {
        /// How many of its works run now.
        running: Arc<AtomicUsize>,
        metrics: Arc<Metrics>,
        elected: JoinHandle<()>,
        lease_task: JoinHandle<T>,
    }

    async fn elect(client: kube::Client, settings: &LeaseSettings) -> Elected<impl Sized> {
        let (leading, lease_task) = watch_lease(client.clone(), settings).await.unwrap();
        let held_until = watch_expiry(client, settings);
        let metrics = Arc::new(Metrics::default());
        let running = Arc::new(AtomicUsize::new(0));
        let r = running.clone();
        let margin = stop_margin(settings.duration_s);
        let elected = tokio::spawn(run_while_leading(
            leading,
            held_until,
            margin,
            metrics.clone(),
            move || {
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
            },
        ));
        Elected {
            running,
            metrics,
            elected,
            lease_task,
        }
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
            duration_s: 2,
            ..operator_0()
        };
        let Elected {
            running,
            metrics,
            elected,
            lease_task,
        } = elect(client, &settings).await;

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
    async fn a_leader_whose_api_server_stops_answering_stops_before_its_lease_can_expire() {
        let (client, mut api) = mock_client();
        let fake = Arc::new(Mutex::new(FakeLease::default()));
        // Another replica's Lease, long expired.
        fake.lock()
            .unwrap()
            .held_by("operator-1", Duration::from_secs(60), 3);
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // When this replica's last renewal was answered.
        let renewed = Arc::new(Mutex::new(None::<Instant>));
        let server = {
            let (fake, silent, renewed) = (fake.clone(), silent.clone(), renewed.clone());
            tokio::spawn(async move {
                // Unanswered requests are kept: they hang, as they do when
                // the API server is partitioned away.
                let mut hanging = Vec::new();
                while let Some((seen, content_type, pending)) = api.next().await {
                    if silent.load(Ordering::SeqCst) {
                        hanging.push(pending);
                        continue;
                    }
                    let mut fake = fake.lock().unwrap();
                    let (status, value) = fake.answer(&seen, &content_type);
                    if seen.method == Method::PATCH
                        && status.is_success()
                        && fake.holder().as_deref() == Some("operator-0")
                    {
                        *renewed.lock().unwrap() = Some(Instant::now());
                    }
                    pending.send(status, &value);
                }
            })
        };
        let settings = LeaseSettings {
            duration_s: 3,
            ..operator_0()
        };
        let Elected {
            running,
            metrics,
            elected,
            lease_task,
        } = elect(client, &settings).await;
        eventually("taking the expired Lease", || {
            running.load(Ordering::SeqCst) == 1
        })
        .await;

        // The API server stops answering: the renewals hang, and the
        // library goes on saying "held".
        silent.store(true, Ordering::SeqCst);
        let last_renewal = renewed.lock().unwrap().expect("a renewal was answered");
        eventually("stopping before the Lease can expire", || {
            running.load(Ordering::SeqCst) == 0
        })
        .await;
        let expiry = last_renewal + Duration::from_secs(settings.duration_s);
        assert!(
            Instant::now() < expiry,
            "stopped {:?} after the Lease could have expired",
            Instant::now() - expiry
        );
        assert!(metrics.encode().contains("patronus_operator_leader 0"));

        elected.abort();
        let _ = elected.await;
        lease_task.abort();
        server.abort();
    }

    #[tokio::test]
    async fn work_runs_only_while_the_lease_is_held_and_stops_when_it_is_lost() {
        let (tx, rx) = watch::channel(false);
        let (_record, held_until) =
            watch::channel(Some(Instant::now() + Duration::from_secs(3600)));
        let metrics = Arc::new(Metrics::default());
        let started = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (s, r) = (started.clone(), running.clone());
        let task = tokio::spawn(run_while_leading(
            rx,
            held_until,
            Duration::ZERO,
            metrics.clone(),
            move || {
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
            },
        ));
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
