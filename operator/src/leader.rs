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
        .with_duration(LEASE_DURATION_S)
        .with_grace(LEASE_GRACE_S)
        .with_field_manager(crate::dataplane::MANAGER)
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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
