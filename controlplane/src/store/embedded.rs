//! The embedded backend: desired state in a redb database file.
//!
//! redb rather than SQLite: pure Rust (nothing to install or link), ACID
//! transactions whose commits are durable when `commit` returns (fsync; the
//! default `Durability::Immediate`), so a write the API acknowledged survives
//! `kill -9`, and a key-value model that fits protobuf-encoded resources keyed
//! by name.
//!
//! Layout: one table per kind (name to encoded resource), a table per unique
//! spec key (site_id to site name), and a `meta` table holding the store-wide
//! revision, which every write increments and stamps on what it wrote as the
//! resource's `resource_version` (as etcd's revision does), and the
//! database's epoch: a random number drawn when the database is created, so
//! that a control plane restarted on a new, empty database (whose revisions
//! start again from 1) never passes its versions off as the old one's. A
//! `totals` table keeps the encoded size of each group of resources that
//! ends up in one snapshot (a site's peers, all policies, all
//! applications), so that a write which would make a snapshot too large to
//! send is refused in its own transaction.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::SystemTime;

use patronus_proto::v1::ObjectMeta;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{check_fits, decode, not_found, DesiredState, Origin, Page, StoreError};
use crate::resource::{name_of, Resource};

const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const EPOCH: &str = "epoch";
/// Set once [`TOTALS`] holds every group's total (databases written before
/// it existed are counted on open).
const TOTALS_COUNTED: &str = "totals_counted";
/// The stored bytes of each capped group (`peer/site-a`, `application/`),
/// kept in step by every write so that a cap costs one lookup, not a scan.
const TOTALS: TableDefinition<'static, &'static str, u64> = TableDefinition::new("totals");

/// The control plane's durable state.
///
/// After an I/O error (a full disk) redb refuses every later operation
/// until the database is reopened. The store then fails fast: every
/// operation answers [`StoreError::Unavailable`], [`RedbStore::health`] says why
/// (the server reports NOT_SERVING), and [`RedbStore::reopen`] brings it
/// back once the cause is gone. Nothing a caller was told is written can be
/// lost: a commit either returned (durable) or failed (not acknowledged).
#[derive(Debug)]
pub struct RedbStore {
    path: PathBuf,
    /// `None` only while being reopened.
    db: RwLock<Option<Database>>,
    epoch: u64,
    /// Why the database is unusable, while it is (`None`: usable).
    health: tokio::sync::watch::Sender<Option<String>>,
}

/// Why nothing can be read or written until the database is reopened.
fn unavailable(why: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "the database is unavailable until it can be reopened: {why}"
    ))
}

/// A write waiting for the group commit: it runs inside the shared
/// transaction and returns what to do once the commit has (or has not)
/// happened, and whether it failed in a way that spoils the transaction
/// (a storage error part-way through its changes).
type Job = Box<dyn FnOnce(&redb::WriteTransaction) -> (Completion, bool) + Send>;
type Completion = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// Most writes one group commit takes.
pub const GROUP_COMMIT_MAX: usize = 1024;

/// Group commit: writes arriving together share one transaction and one
/// disk flush, and each is acknowledged only after that commit. One thread
/// owns the writing side of the database (redb has one writer at a time
/// anyway); a write that fails its checks changes nothing and does not
/// disturb the others in its group.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    jobs: std::sync::mpsc::Sender<Job>,
    store: std::sync::Arc<RedbStore>,
}

impl GroupCommit {
    /// Starts the writer thread over `store`.
    pub fn start(store: std::sync::Arc<RedbStore>) -> GroupCommit {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let writer = store.clone();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < GROUP_COMMIT_MAX {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    writer.commit_batch(batch);
                }
            })
            .expect("spawn the group-commit thread");
        GroupCommit { jobs, store }
    }

    /// Runs `f` in the next group's transaction; resolves after the commit.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(why) = self.store.failure() {
            return Err(unavailable(why));
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let outcome = f(txn);
            let spoiled = matches!(outcome, Err(StoreError::Storage(_)));
            let complete: Completion = Box::new(move |commit: Result<(), &StoreError>| {
                let reply = match (outcome, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(e)) => Err(StoreError::CommitFailed(e.to_string())),
                    (Err(e), _) => Err(e),
                };
                let _ = done.send(reply);
            });
            (complete, spoiled)
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::CommitFailed("the writer thread has stopped".into()))?;
        // A job dropped unrun: its group could not begin (the database failed).
        result.await.map_err(|_| {
            unavailable(
                self.store
                    .failure()
                    .unwrap_or_else(|| "the write could not begin".into()),
            )
        })?
    }
}

impl RedbStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let epoch;
        {
            // Create every table so that readers never meet a missing one.
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(EPOCH)?.map(|v| v.value());
            epoch = match stored {
                Some(epoch) => epoch,
                None => {
                    // Never 0: that is what a data plane reports before its first snapshot.
                    let drawn = (uuid::Uuid::new_v4().as_u128() as u64).max(1);
                    meta.insert(EPOCH, drawn)?;
                    drawn
                }
            };
            drop(meta);
            open_kind::<patronus_proto::v1::Site>(&txn)?;
            open_kind::<patronus_proto::v1::Peer>(&txn)?;
            open_kind::<patronus_proto::v1::Policy>(&txn)?;
            open_kind::<patronus_proto::v1::Application>(&txn)?;
            count_totals(&txn)?;
        }
        txn.commit()?;
        Ok(RedbStore {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            epoch,
            health: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Why the database is unusable, while it is failed and not yet
    /// reopened; `None` while it is usable.
    pub fn health(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.health.subscribe()
    }

    /// The usable database, or why there is none.
    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        if let Some(why) = self.failure() {
            return Err(unavailable(why));
        }
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(unavailable("being reopened"));
        }
        Ok(guard)
    }

    /// Runs `f` on the database; a storage error in it marks the database failed.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.db()?;
        let result = f(guard.as_ref().expect("checked by db()"));
        drop(guard);
        if let Err(e @ (StoreError::Storage(_) | StoreError::CommitFailed(_))) = &result {
            self.failed(&e.to_string());
        }
        result
    }

    /// Marks the database failed: every operation fails fast until [`RedbStore::reopen`].
    fn failed(&self, why: &str) {
        self.health.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            tracing::error!(
                error = why,
                "the database failed: refusing every operation until it can be reopened"
            );
            *failure = Some(why.to_owned());
            true
        });
    }

    /// Why the database is unusable, if it is.
    pub fn failure(&self) -> Option<String> {
        self.health.borrow().clone()
    }

    /// Reopens a failed database (redb's recovery runs on open): true when
    /// it is usable again. Does nothing to a healthy one.
    pub fn reopen(&self) -> bool {
        if self.failure().is_none() {
            return true;
        }
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle holds the file's lock: it goes first.
        drop(db.take());
        match Database::create(&self.path) {
            Ok(reopened) => {
                // A write proves the disk takes data again; it changes nothing.
                let proven = reopened
                    .begin_write()
                    .map_err(redb::Error::from)
                    .and_then(|txn| txn.commit().map_err(redb::Error::from));
                *db = Some(reopened);
                if let Err(e) = proven {
                    tracing::warn!(error = %e, "the reopened database still cannot be written");
                    return false;
                }
                self.health.send_replace(None);
                tracing::info!("the database was reopened and takes writes again");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the database cannot be reopened yet");
                false
            }
        }
    }

    /// The database's epoch: drawn at random when it was created, the same
    /// for its whole life. Snapshot versions count within it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs a group of writes in one transaction and commits it once. A
    /// storage failure in any of them aborts the group: all are told, none lands.
    fn commit_batch(&self, batch: Vec<Job>) {
        let guard = match self.db() {
            Ok(guard) => guard,
            // Dropping the jobs tells their callers the write did not happen.
            Err(_) => return,
        };
        let db = guard.as_ref().expect("checked by db()");
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                drop(guard);
                self.failed(&e.to_string());
                return;
            }
        };
        let mut spoiled = false;
        let completions: Vec<Completion> = batch
            .into_iter()
            .map(|job| {
                let (complete, bad) = job(&txn);
                spoiled |= bad;
                complete
            })
            .collect();
        let committed = if spoiled {
            let _ = txn.abort();
            Err(StoreError::CommitFailed(
                "a storage error aborted this group of writes".into(),
            ))
        } else {
            txn.commit().map_err(StoreError::from)
        };
        drop(guard);
        if let Err(e) = &committed {
            tracing::error!(error = %e, "group commit failed");
            self.failed(&e.to_string());
        }
        for complete in completions {
            complete(committed.as_ref().map(|_| ()));
        }
    }

    /// Every resource of a kind, by name, in one transaction.
    pub fn all<R: Resource>(&self) -> Result<Vec<R>, StoreError> {
        self.with_db(|db| read_all(&db.begin_read()?))
    }

    /// Every peer, policy and application and the sites asked for (`None`:
    /// every site) as of one revision, read in one transaction: a snapshot
    /// compiled from it is exactly that revision's.
    pub fn desired_state(&self, site_ids: Option<&[String]>) -> Result<DesiredState, StoreError> {
        self.with_db(|db| RedbStore::desired_state_in(db, site_ids))
    }

    fn desired_state_in(
        db: &Database,
        site_ids: Option<&[String]>,
    ) -> Result<DesiredState, StoreError> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let sites = match site_ids {
            None => read_all(&txn)?,
            Some(ids) => {
                type Site = patronus_proto::v1::Site;
                let index = txn
                    .open_table(<Site as Resource>::UNIQUE.expect("sites have a unique site_id"))?;
                let table = txn.open_table(<Site as Resource>::TABLE)?;
                let mut sites = Vec::with_capacity(ids.len());
                for id in ids {
                    let Some(name) = index.get(id.as_str())? else {
                        continue;
                    };
                    if let Some(bytes) = table.get(name.value())? {
                        sites.push(decode(name.value(), bytes.value())?);
                    }
                }
                sites
            }
        };
        Ok(DesiredState {
            revision: meta.get(REVISION)?.map_or(0, |v| v.value()),
            sites,
            peers: read_all(&txn)?,
            policies: read_all(&txn)?,
            applications: read_all(&txn)?,
        })
    }

    /// The resource called `name`.
    pub fn get<R: Resource>(&self, name: &str) -> Result<R, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(R::TABLE)?;
            let Some(bytes) = table.get(name)? else {
                return Err(not_found::<R>(name));
            };
            decode(name, bytes.value())
        })
    }

    /// Up to `limit` resources with names after `after`, by name.
    pub fn list<R: Resource>(&self, after: &str, limit: usize) -> Result<Page<R>, StoreError> {
        self.with_db(|db| list_in(db, after, limit))
    }
}

/// [`RedbStore::list`] on `db`.
fn list_in<R: Resource>(db: &Database, after: &str, limit: usize) -> Result<Page<R>, StoreError> {
    let txn = db.begin_read()?;

    let table = txn.open_table(R::TABLE)?;
    let start = if after.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(after)
    };
    let mut items = Vec::new();
    let mut next = None;
    for entry in table.range::<&str>((start, Bound::Unbounded))? {
        let (key, value) = entry?;
        if items.len() == limit {
            next = items.last().map(|r: &R| name_of(r).to_owned());
            break;
        }
        items.push(decode(key.value(), value.value())?);
    }
    Ok(Page { items, next })
}

/// [`RedbStore::create`] inside a transaction. Every check comes before the first
/// change, so a refused write leaves the transaction as it was.
pub fn create_in<R: Resource>(
    txn: &redb::WriteTransaction,
    mut r: R,
    origin: &Origin,
) -> Result<R, StoreError> {
    let name = name_of(&r).to_owned();
    let mut table = txn.open_table(R::TABLE)?;
    if table.get(name.as_str())?.is_some() {
        return Err(StoreError::AlreadyExists {
            what: format!("{} {name:?}", R::KIND),
        });
    }
    claim_unique(txn, &r, &name, None)?;
    check_size(txn, &r, None)?;
    let revision = bump_revision(txn)?;
    origin.stamp(r.meta_mut());
    r.meta_mut().resource_version = revision;
    let bytes = r.encode_to_vec();
    add_to_total::<R>(txn, r.site_scope(), bytes.len(), 0)?;
    table.insert(name.as_str(), bytes.as_slice())?;
    Ok(r)
}

/// [`RedbStore::update`] inside a transaction; checks come before changes.
pub fn update_in<R: Resource>(txn: &redb::WriteTransaction, mut r: R) -> Result<R, StoreError> {
    let name = name_of(&r).to_owned();
    let given = r.meta().map_or(0, |m| m.resource_version);
    let mut table = txn.open_table(R::TABLE)?;
    let (current, stored_len): (R, usize) = match table.get(name.as_str())? {
        Some(bytes) => (decode(&name, bytes.value())?, bytes.value().len()),
        None => return Err(not_found::<R>(&name)),
    };
    let old = current.meta().cloned().unwrap_or_default();
    if old.resource_version != given {
        return Err(StoreError::Conflict {
            kind: R::KIND,
            name,
            given,
            current: old.resource_version,
        });
    }
    claim_unique(txn, &r, &name, current.unique_key())?;
    check_size(txn, &r, Some((&current, stored_len)))?;
    let revision = bump_revision(txn)?;
    let spec_changed = current.spec_bytes() != r.spec_bytes();
    let labels = std::mem::take(&mut r.meta_mut().labels);
    let external_id = std::mem::take(&mut r.meta_mut().external_id);
    *r.meta_mut() = ObjectMeta {
        labels,
        external_id,
        resource_version: revision,
        generation: old.generation + i64::from(spec_changed),
        update_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        ..old
    };
    let bytes = r.encode_to_vec();
    add_to_total::<R>(txn, current.site_scope(), 0, stored_len)?;
    add_to_total::<R>(txn, r.site_scope(), bytes.len(), 0)?;
    table.insert(name.as_str(), bytes.as_slice())?;
    Ok(r)
}

/// That `r` (replacing `current` and its stored size, on an update) fits
/// within the caps, its group's total read in the write transaction.
fn check_size<R: Resource>(
    txn: &redb::WriteTransaction,
    r: &R,
    current: Option<(&R, usize)>,
) -> Result<(), StoreError> {
    if R::TOTAL_BYTES.is_none() {
        return check_fits(r, 0);
    }
    let group = r.site_scope();
    let totals = txn.open_table(TOTALS)?;
    let mut others = totals
        .get(total_key::<R>(group).as_str())?
        .map_or(0, |t| t.value()) as usize;
    if let Some((_, stored)) = current.filter(|(c, _)| c.site_scope() == group) {
        others = others.saturating_sub(stored);
    }
    check_fits(r, others)
}

/// The [`TOTALS`] key of a kind's group.
fn total_key<R: Resource>(group: &str) -> String {
    format!("{}/{group}", R::KIND)
}

/// Adds `added` and takes `removed` bytes from a capped kind's group total.
fn add_to_total<R: Resource>(
    txn: &redb::WriteTransaction,
    group: &str,
    added: usize,
    removed: usize,
) -> Result<(), StoreError> {
    if R::TOTAL_BYTES.is_none() {
        return Ok(());
    }
    let key = total_key::<R>(group);
    let mut totals = txn.open_table(TOTALS)?;
    let total = totals.get(key.as_str())?.map_or(0, |t| t.value());
    let total = (total + added as u64).saturating_sub(removed as u64);
    if total == 0 {
        totals.remove(key.as_str())?;
    } else {
        totals.insert(key.as_str(), total)?;
    }
    Ok(())
}

/// Fills [`TOTALS`] from the stored resources, once per database.
fn count_totals(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    txn.open_table(TOTALS)?;
    if meta.get(TOTALS_COUNTED)?.is_some() {
        return Ok(());
    }
    count_kind::<patronus_proto::v1::Peer>(txn)?;
    count_kind::<patronus_proto::v1::Policy>(txn)?;
    count_kind::<patronus_proto::v1::Application>(txn)?;
    meta.insert(TOTALS_COUNTED, 1)?;
    Ok(())
}

fn count_kind<R: Resource>(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let table = txn.open_table(R::TABLE)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        let r: R = decode(key.value(), value.value())?;
        add_to_total::<R>(txn, r.site_scope(), value.value().len(), 0)?;
    }
    Ok(())
}

/// [`RedbStore::delete`] inside a transaction; checks come before changes.
pub fn delete_in<R: Resource>(
    txn: &redb::WriteTransaction,
    name: &str,
    expected: u64,
) -> Result<R, StoreError> {
    let mut table = txn.open_table(R::TABLE)?;
    let (current, stored_len): (R, usize) = match table.get(name)? {
        Some(bytes) => (decode(name, bytes.value())?, bytes.value().len()),
        None => return Err(not_found::<R>(name)),
    };
    let version = current.meta().map_or(0, |m| m.resource_version);
    if expected != 0 && expected != version {
        return Err(StoreError::Conflict {
            kind: R::KIND,
            name: name.to_owned(),
            given: expected,
            current: version,
        });
    }
    if let (Some(def), Some(key)) = (R::UNIQUE, current.unique_key()) {
        txn.open_table(def)?.remove(key)?;
    }
    add_to_total::<R>(txn, current.site_scope(), 0, stored_len)?;
    table.remove(name)?;
    bump_revision(txn)?;
    Ok(current)
}

fn open_kind<R: Resource>(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(R::TABLE)?;
    if let Some(def) = R::UNIQUE {
        txn.open_table(def)?;
    }
    Ok(())
}

/// Records `r`'s unique key for `name`, releasing `previous` (its old key).
fn claim_unique<R: Resource>(
    txn: &redb::WriteTransaction,
    r: &R,
    name: &str,
    previous: Option<&str>,
) -> Result<(), StoreError> {
    let (Some(def), Some(key)) = (R::UNIQUE, r.unique_key()) else {
        return Ok(());
    };
    let mut index = txn.open_table(def)?;
    if let Some(owner) = index.get(key)? {
        if owner.value() != name {
            return Err(StoreError::AlreadyExists {
                what: format!("{} with this key {key:?} ({:?})", R::KIND, owner.value()),
            });
        }
    }
    if let Some(old) = previous.filter(|old| *old != key) {
        index.remove(old)?;
    }
    index.insert(key, name)?;
    Ok(())
}

fn read_all<R: Resource>(txn: &redb::ReadTransaction) -> Result<Vec<R>, StoreError> {
    let table = txn.open_table(R::TABLE)?;
    let mut items = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        items.push(decode(key.value(), value.value())?);
    }
    Ok(items)
}

fn bump_revision(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get(REVISION)?.map_or(0, |v| v.value()) + 1;
    meta.insert(REVISION, next)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use patronus_proto::v1::{ObjectMeta, Peer, PeerSpec};

    use super::*;

    fn peer(name: &str, site_id: &str) -> Peer {
        Peer {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(PeerSpec {
                site_id: site_id.into(),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn new(uid: &str) -> Origin {
        Origin::New { uid: uid.into() }
    }

    fn totals(store: &RedbStore) -> BTreeMap<String, u64> {
        store
            .with_db(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(TOTALS)?;
                let mut totals = BTreeMap::new();
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    totals.insert(key.value().to_owned(), value.value());
                }
                Ok(totals)
            })
            .unwrap()
    }

    #[test]
    fn group_totals_follow_every_write_and_are_counted_for_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.redb");
        let store = RedbStore::open(&path).unwrap();
        let stored_len = |txn: &redb::WriteTransaction, name: &str| {
            let table = txn.open_table(Peer::TABLE).unwrap();
            let len = table.get(name).unwrap().unwrap().value().len() as u64;
            len
        };
        let expected = store
            .with_db(|db| {
                let txn = db.begin_write()?;
                create_in(&txn, peer("a", "hq"), &new("1"))?;
                create_in(&txn, peer("b", "hq"), &new("2"))?;
                create_in(&txn, peer("c", "branch"), &new("3"))?;
                let mut moved = create_in(&txn, peer("d", "hq"), &new("4"))?;
                delete_in::<Peer>(&txn, "b", 0)?;
                moved.spec.as_mut().unwrap().site_id = "branch".into();
                update_in(&txn, moved)?;
                let expected = BTreeMap::from([
                    ("peer/hq".to_owned(), stored_len(&txn, "a")),
                    (
                        "peer/branch".to_owned(),
                        stored_len(&txn, "c") + stored_len(&txn, "d"),
                    ),
                ]);
                txn.commit()?;
                Ok(expected)
            })
            .unwrap();
        assert_eq!(totals(&store), expected);

        // A database written before the totals existed is counted on open.
        store
            .with_db(|db| {
                let txn = db.begin_write()?;
                txn.delete_table(TOTALS)?;
                txn.open_table(META)?.remove(TOTALS_COUNTED)?;
                txn.commit()?;
                Ok(())
            })
            .unwrap();
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(totals(&store), expected);
    }
}
