//! Leadership among the replicas that share one etcd prefix, for the work
//! that must happen once: compacting etcd's history, forgetting data planes
//! that left, and the fleet's `/metrics`.
//!
//! A replica campaigns (etcd's election API) with a lease it keeps alive.
//! It leads from its election until the lease could expire: each keepalive
//! answer moves that moment to when the keepalive was sent plus the TTL it
//! granted, less a margin, and [`Leadership::is_leader`] compares against
//! the clock. So a replica that cannot reach etcd stops leading before its
//! lease ends, even when the task that keeps the lease is stuck, and
//! another replica is elected once the lease has expired.
//!
//! The same lease carries the replica's presence keys ([`super::shared`]),
//! so that they go when the replica does.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;

use super::etcd::EtcdStore;

/// Whether this replica leads, and until when; the lease it holds.
#[derive(Debug, Default)]
pub struct Leadership {
    until: Mutex<Option<Instant>>,
    lease: watch::Sender<Option<i64>>,
}

impl Leadership {
    /// True while this replica holds a lease that cannot have expired.
    pub fn is_leader(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// The lease this replica holds, as it changes (None: none now).
    pub(crate) fn lease(&self) -> watch::Receiver<Option<i64>> {
        self.lease.subscribe()
    }

    fn lead_until(&self, until: Option<Instant>) {
        let mut held = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let was = held.is_some_and(|u| Instant::now() < u);
        *held = until;
        match (was, until.is_some()) {
            (false, true) => tracing::info!("leading the control-plane replicas"),
            (true, false) => tracing::warn!("no longer leading the control-plane replicas"),
            _ => {}
        }
    }
}

/// Campaigns for as long as the store lives: elected, leads until the
/// lease is lost; then campaigns again.
pub(crate) async fn campaign(store: Weak<EtcdStore>, held: Arc<Leadership>, identity: String) {
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(live) = store.upgrade() else { return };
        let (client, name, ttl) = (
            live.client().clone(),
            format!("{}leader", live.settings().prefix),
            live.settings().lease_ttl,
        );
        drop(live);
        let outcome = lead_once(client, name, identity.clone(), ttl, &store, &held).await;
        held.lead_until(None);
        held.lease.send_replace(None);
        match outcome {
            Ok(()) => pause = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "leader election interrupted; campaigning again");
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// One lease: granted, kept alive every third of its TTL, used to campaign.
/// Returns when it is lost (or the store is gone).
async fn lead_once(
    mut client: Client,
    name: String,
    identity: String,
    ttl: Duration,
    store: &Weak<EtcdStore>,
    held: &Arc<Leadership>,
) -> Result<(), etcd_client::Error> {
    let granted_at = Instant::now();
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    held.lease.send_replace(Some(lease));
    // Stop leading this long before the lease could end: room for the
    // keepalive that moves it on to arrive late.
    let margin = ttl / 5;
    let mut valid_until = granted_at + ttl - margin;
    let mut election = client.election_client();
    let elected = election.campaign(name, identity, lease);
    tokio::pin!(elected);
    let mut leading = false;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            won = &mut elected, if !leading => {
                won?;
                leading = true;
                held.lead_until(Some(valid_until));
            }
            _ = tick.tick() => {
                if store.strong_count() == 0 {
                    let _ = client.lease_revoke(lease).await;
                    return Ok(());
                }
                let sent = Instant::now();
                keeper.keep_alive().await?;
                let answer = tokio::time::timeout(ttl / 3, answers.message()).await;
                match answer {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        valid_until = sent + Duration::from_secs(answer.ttl() as u64) - margin;
                        if leading {
                            held.lead_until(Some(valid_until));
                        }
                    }
                    // Expired, refused, or no answer in time: whatever
                    // etcd thinks, this replica stops leading now.
                    _ => return Ok(()),
                }
            }
        }
    }
}
