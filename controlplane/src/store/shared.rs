//! What the replicas on one etcd share about their data planes, so that
//! every replica answers for the whole fleet: `ListDataplanes`, Site and
//! Peer status, the topology, path health and BFD sessions, the event feed,
//! and (on the leader) the fleet's `/metrics`.
//!
//! Layout under the store's prefix:
//!
//! - `f/d/{site}/{dataplane}`: a [`DataplaneRecord`], written by the replica
//!   that serves the data plane whenever it connects, answers a snapshot,
//!   reports or goes away. A burst of changes is one write, and the writes
//!   of many data planes share a transaction.
//! - `f/c/{site}/{dataplane}/{replica}`: present while `replica` holds a
//!   subscription of the data plane. It lives on the replica's lease, so a
//!   replica that dies takes its data planes' presence with it within the
//!   lease TTL, and every other replica shows them disconnected.
//!
//! The leader deletes the records of data planes gone for longer than the
//! expiry. Every replica learns all of it through the store's one watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use patronus_proto::v1::{Event, TelemetryReport};
use prost::Message;
use tokio::sync::{watch, Notify};

use super::etcd::EtcdStore;

/// Records, under the store's prefix.
pub(crate) const RECORDS: &str = "f/d/";
/// Presence keys, under the store's prefix.
pub(crate) const PRESENCE: &str = "f/c/";
/// Where both live: one range to read and to watch.
pub(crate) const FLEET: &str = "f/";

/// A data plane: (site_id, dataplane_id).
pub type DataplaneKey = (String, String);

/// Operations in one transaction (etcd's `--max-txn-ops` is 128 by default).
const OPS_PER_TXN: usize = 64;
/// Bytes in one transaction (etcd's `--max-request-bytes` is 1.5 MiB by default).
const BYTES_PER_TXN: usize = 1 << 20;
/// Events a record carries at most: the oldest go beyond.
const EVENTS_PER_RECORD: usize = 4096;
/// How long a change waits for others to share its transaction.
const GATHER: Duration = Duration::from_millis(20);
/// First and last pause after a failed write.
const RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// What one replica shares about one data plane it serves.
#[derive(Clone, PartialEq, Message)]
pub struct DataplaneRecord {
    /// The last snapshot version it applied.
    #[prost(uint64, tag = "1")]
    pub applied: u64,
    /// The last snapshot version it refused (0: none).
    #[prost(uint64, tag = "2")]
    pub refused: u64,
    /// Why it refused that one.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// Its last telemetry, without the events (those are in `events`).
    #[prost(message, optional, tag = "4")]
    pub report: Option<TelemetryReport>,
    /// When that report arrived, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "5")]
    pub reported_at_ms: u64,
    /// When it was last seen (subscribed, unsubscribed, answered or
    /// reported), in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "6")]
    pub seen_at_ms: u64,
    /// The replica that wrote the record.
    #[prost(string, tag = "7")]
    pub replica: String,
    /// What happened to the data plane since that replica's previous write.
    #[prost(message, repeated, tag = "8")]
    pub events: Vec<Event>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// A change to what the replicas share, as the watch tells it.
#[derive(Debug, Clone)]
pub enum FleetNews {
    /// A data plane's record was written (`Some`) or deleted (`None`), at `revision`.
    Record {
        /// The data plane.
        key: DataplaneKey,
        /// What it now says.
        record: Option<Arc<DataplaneRecord>>,
        /// The revision of that write.
        revision: i64,
    },
    /// A replica began or stopped holding a subscription of a data plane.
    Presence {
        /// The data plane.
        key: DataplaneKey,
        /// The replica.
        replica: String,
        /// Whether it holds one now.
        present: bool,
    },
    /// Everything shared, read whole (when the store opened, or after the
    /// watch fell behind compaction).
    All(Arc<FleetView>),
}

/// Everything shared, as of one revision.
#[derive(Debug, Default, Clone)]
pub struct FleetView {
    /// Each data plane's record and the revision it was written at.
    pub records: BTreeMap<DataplaneKey, (Arc<DataplaneRecord>, i64)>,
    /// The replicas holding a subscription of each data plane.
    pub presence: BTreeMap<DataplaneKey, BTreeSet<String>>,
}

impl FleetView {
    /// The view of `kvs`, read under `prefix` + [`FLEET`].
    pub(crate) fn read(prefix: &str, kvs: &[KeyValue]) -> FleetView {
        let mut view = FleetView::default();
        for kv in kvs {
            match parse(prefix, kv, true) {
                Some(FleetNews::Record {
                    key,
                    record: Some(record),
                    revision,
                }) => {
                    view.records.insert(key, (record, revision));
                }
                Some(FleetNews::Presence { key, replica, .. }) => {
                    view.presence.entry(key).or_default().insert(replica);
                }
                _ => {}
            }
        }
        view
    }

    /// Applies one change.
    pub(crate) fn apply(&mut self, news: &FleetNews) {
        match news {
            FleetNews::Record {
                key,
                record: Some(record),
                revision,
            } => {
                self.records
                    .insert(key.clone(), (record.clone(), *revision));
            }
            FleetNews::Record {
                key, record: None, ..
            } => {
                self.records.remove(key);
            }
            FleetNews::Presence {
                key,
                replica,
                present: true,
            } => {
                self.presence
                    .entry(key.clone())
                    .or_default()
                    .insert(replica.clone());
            }
            FleetNews::Presence { key, replica, .. } => {
                if let Some(replicas) = self.presence.get_mut(key) {
                    replicas.remove(replica);
                    if replicas.is_empty() {
                        self.presence.remove(key);
                    }
                }
            }
            FleetNews::All(view) => *self = FleetView::clone(view),
        }
    }
}

/// The change a key under `prefix` + [`FLEET`] records: written (`put`)
/// or deleted. None for keys that are not the fleet's, or do not decode.
pub(crate) fn parse(prefix: &str, kv: &KeyValue, put: bool) -> Option<FleetNews> {
    let key = std::str::from_utf8(kv.key()).ok()?.strip_prefix(prefix)?;
    if let Some(rest) = key.strip_prefix(RECORDS) {
        let (site, dataplane) = rest.split_once('/')?;
        let record = if put {
            match DataplaneRecord::decode(kv.value()) {
                Ok(record) => Some(Arc::new(record)),
                Err(e) => {
                    tracing::error!(key, error = %e, "a shared data-plane record does not decode");
                    return None;
                }
            }
        } else {
            None
        };
        return Some(FleetNews::Record {
            key: (site.to_owned(), dataplane.to_owned()),
            record,
            revision: kv.mod_revision(),
        });
    }
    let rest = key.strip_prefix(PRESENCE)?;
    let (site, rest) = rest.split_once('/')?;
    let (dataplane, replica) = rest.split_once('/')?;
    Some(FleetNews::Presence {
        key: (site.to_owned(), dataplane.to_owned()),
        replica: replica.to_owned(),
        present: put,
    })
}

/// The writes this replica has yet to make.
#[derive(Default)]
struct Pending {
    records: BTreeMap<DataplaneKey, DataplaneRecord>,
    /// Presence to put (true) or delete (false).
    presence: BTreeMap<DataplaneKey, bool>,
    /// Records to delete, if still at this revision.
    forget: BTreeMap<DataplaneKey, i64>,
    /// Every data plane this replica holds a subscription of: put again
    /// under each new lease.
    held: BTreeSet<DataplaneKey>,
}

/// This replica's writes of what it shares, made by [`send_out`].
#[derive(Default)]
pub(crate) struct Outbox {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Outbox {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shares `record` (its events after those not yet written).
    pub(crate) fn record(&self, key: DataplaneKey, mut record: DataplaneRecord) {
        let mut pending = self.pending();
        if let Some(unwritten) = pending.records.remove(&key) {
            let mut events = unwritten.events;
            events.append(&mut record.events);
            record.events = events;
        }
        let excess = record.events.len().saturating_sub(EVENTS_PER_RECORD);
        if excess > 0 {
            tracing::warn!(
                site = key.0,
                dataplane = key.1,
                dropped = excess,
                "data-plane events not yet shared with the other replicas were dropped"
            );
            record.events.drain(..excess);
        }
        pending.forget.remove(&key);
        pending.records.insert(key, record);
        drop(pending);
        self.wake.notify_one();
    }

    /// Shares that this replica holds (or no longer holds) a subscription
    /// of the data plane.
    pub(crate) fn presence(&self, key: DataplaneKey, present: bool) {
        let mut pending = self.pending();
        if present {
            pending.held.insert(key.clone());
        } else {
            pending.held.remove(&key);
        }
        pending.presence.insert(key, present);
        drop(pending);
        self.wake.notify_one();
    }

    /// Deletes the data plane's record if it is still at `revision`.
    pub(crate) fn forget(&self, key: DataplaneKey, revision: i64) {
        let mut pending = self.pending();
        if !pending.records.contains_key(&key) {
            pending.forget.insert(key, revision);
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Puts back what a failed write took, under anything newer.
    fn restore(&self, failed: Pending) {
        let mut pending = self.pending();
        for (key, mut record) in failed.records {
            match pending.records.get_mut(&key) {
                Some(newer) => {
                    record.events.append(&mut newer.events);
                    newer.events = record.events;
                }
                None => {
                    pending.records.insert(key, record);
                }
            }
        }
        for (key, present) in failed.presence {
            pending.presence.entry(key).or_insert(present);
        }
        for (key, revision) in failed.forget {
            if !pending.records.contains_key(&key) {
                pending.forget.entry(key).or_insert(revision);
            }
        }
    }
}

/// One transaction's operations, with how many bytes they carry.
#[derive(Default)]
struct Batch {
    ops: Vec<TxnOp>,
    bytes: usize,
}

/// Makes this replica's shared writes, for as long as the store lives:
/// a burst of changes goes out together, a failed write is made again
/// (the newest change of each key wins), and presence is put again under
/// each new lease (the old one's keys are gone with it).
pub(crate) async fn send_out(
    store: Weak<EtcdStore>,
    outbox: Arc<Outbox>,
    mut lease: watch::Receiver<Option<i64>>,
) {
    let mut pause = RETRY.0;
    let mut known: Option<i64> = None;
    loop {
        let Some(live) = store.upgrade() else { return };
        let current = *lease.borrow_and_update();
        if current != known {
            if current.is_some() {
                let mut pending = outbox.pending();
                let held: Vec<DataplaneKey> = pending.held.iter().cloned().collect();
                for key in held {
                    pending.presence.insert(key, true);
                }
            }
            known = current;
        }
        let work = {
            let pending = outbox.pending();
            !pending.records.is_empty()
                || !pending.forget.is_empty()
                || pending
                    .presence
                    .values()
                    .any(|present| !present || current.is_some())
        };
        if !work {
            let wake = outbox.wake.notified();
            drop(live);
            tokio::select! {
                // A change made since the look above left a permit: no wait.
                _ = wake => {}
                changed = lease.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(GATHER).await;
            continue;
        }
        let taken = {
            let mut pending = outbox.pending();
            let presence = if current.is_some() {
                std::mem::take(&mut pending.presence)
            } else {
                // Deletions need no lease; puts wait for one.
                let (puts, deletes) = std::mem::take(&mut pending.presence)
                    .into_iter()
                    .partition(|(_, present)| *present);
                pending.presence = puts;
                deletes
            };
            Pending {
                records: std::mem::take(&mut pending.records),
                presence,
                forget: std::mem::take(&mut pending.forget),
                held: BTreeSet::new(),
            }
        };
        match write(&live, &taken, current).await {
            Ok(()) => pause = RETRY.0,
            Err(e) => {
                tracing::warn!(error = %e, "sharing data-plane state with the other replicas failed; retrying");
                outbox.restore(taken);
                drop(live);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY.1);
            }
        }
    }
}

/// Writes what `taken` holds: records and presence in as few
/// transactions as fit, each deletion of a record on its own (it compares
/// the record's revision).
async fn write(
    live: &EtcdStore,
    taken: &Pending,
    lease: Option<i64>,
) -> Result<(), etcd_client::Error> {
    let prefix = &live.settings().prefix;
    let mut batches = vec![Batch::default()];
    let mut add = |op: TxnOp, bytes: usize| {
        let last = batches.last_mut().expect("never empty");
        if !last.ops.is_empty()
            && (last.ops.len() >= OPS_PER_TXN || last.bytes + bytes > BYTES_PER_TXN)
        {
            batches.push(Batch::default());
        }
        let last = batches.last_mut().expect("never empty");
        last.ops.push(op);
        last.bytes += bytes;
    };
    // Presence first: the others learn that a data plane connected before
    // what it did (when both go out together).
    for ((site, dataplane), present) in &taken.presence {
        let key = format!("{prefix}{PRESENCE}{site}/{dataplane}/{}", live.replica());
        let bytes = key.len();
        match (present, lease) {
            (true, Some(lease)) => add(
                TxnOp::put(key, Vec::new(), Some(PutOptions::new().with_lease(lease))),
                bytes,
            ),
            (true, None) => unreachable!("presence is put only under a lease"),
            (false, _) => add(TxnOp::delete(key, None), bytes),
        }
    }
    for ((site, dataplane), record) in &taken.records {
        let key = format!("{prefix}{RECORDS}{site}/{dataplane}");
        let mut value = record.encode_to_vec();
        if value.len() > BYTES_PER_TXN {
            tracing::warn!(
                site,
                dataplane,
                bytes = value.len(),
                "a data plane's report is too large to share with the other replicas; sharing it without"
            );
            let mut smaller = record.clone();
            smaller.report = None;
            value = smaller.encode_to_vec();
        }
        let bytes = key.len() + value.len();
        add(TxnOp::put(key, value, None), bytes);
    }
    let mut kv = live.client().kv_client();
    for batch in batches.into_iter().filter(|b| !b.ops.is_empty()) {
        kv.txn(Txn::new().and_then(batch.ops)).await?;
    }
    for ((site, dataplane), revision) in &taken.forget {
        let key = format!("{prefix}{RECORDS}{site}/{dataplane}");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                *revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        // Lost to a newer write: the data plane is back, nothing to forget.
        kv.txn(txn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(events: &[&str]) -> DataplaneRecord {
        DataplaneRecord {
            events: events
                .iter()
                .map(|m| Event {
                    message: (*m).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn messages(outbox: &Outbox, key: &DataplaneKey) -> Vec<String> {
        outbox.pending().records[key]
            .events
            .iter()
            .map(|e| e.message.clone())
            .collect()
    }

    #[test]
    fn unwritten_events_stay_in_order_through_newer_records_and_failed_writes() {
        let outbox = Outbox::default();
        let key = ("branch".to_owned(), "gw-0".to_owned());
        outbox.record(key.clone(), record(&["a"]));
        outbox.record(key.clone(), record(&["b"]));
        assert_eq!(messages(&outbox, &key), ["a", "b"]);
        let taken = Pending {
            records: std::mem::take(&mut outbox.pending().records),
            ..Default::default()
        };
        outbox.record(key.clone(), record(&["c"]));
        outbox.restore(taken);
        assert_eq!(messages(&outbox, &key), ["a", "b", "c"]);
    }

    #[test]
    fn a_record_keeps_its_newest_events_within_the_bound() {
        let outbox = Outbox::default();
        let key = ("branch".to_owned(), "gw-0".to_owned());
        let many: Vec<String> = (0..EVENTS_PER_RECORD + 3).map(|i| i.to_string()).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        outbox.record(key.clone(), record(&names));
        let kept = messages(&outbox, &key);
        assert_eq!(kept.len(), EVENTS_PER_RECORD);
        assert_eq!(kept[0], "3");
    }

    #[test]
    fn a_write_deletes_nothing_newer_and_presence_changes_keep_the_last() {
        let outbox = Outbox::default();
        let key = ("branch".to_owned(), "gw-0".to_owned());
        outbox.forget(key.clone(), 7);
        outbox.record(key.clone(), record(&[]));
        assert!(
            outbox.pending().forget.is_empty(),
            "a newer record cancels the deletion"
        );
        outbox.presence(key.clone(), true);
        outbox.presence(key.clone(), false);
        assert_eq!(outbox.pending().presence.get(&key), Some(&false));
        assert!(outbox.pending().held.is_empty());
    }

    #[test]
    fn the_view_follows_records_and_presence() {
        let key = ("branch".to_owned(), "gw-0".to_owned());
        let mut view = FleetView::default();
        for (replica, present) in [("a", true), ("b", true), ("a", false)] {
            view.apply(&FleetNews::Presence {
                key: key.clone(),
                replica: replica.into(),
                present,
            });
        }
        assert_eq!(view.presence[&key].iter().collect::<Vec<_>>(), ["b"]);
        view.apply(&FleetNews::Presence {
            key: key.clone(),
            replica: "b".into(),
            present: false,
        });
        assert!(view.presence.is_empty());
        view.apply(&FleetNews::Record {
            key: key.clone(),
            record: Some(Arc::new(record(&[]))),
            revision: 9,
        });
        assert_eq!(view.records[&key].1, 9);
        view.apply(&FleetNews::Record {
            key: key.clone(),
            record: None,
            revision: 10,
        });
        assert!(view.records.is_empty());
    }
}
