//! Durable desired state behind one interface, with two backends:
//!
//! - [`embedded`]: a redb database file, the default. One process, nothing
//!   to run beside it; writes that arrive together share one disk flush.
//! - [`etcd`]: an etcd v3 cluster, for several control-plane replicas with
//!   no single point of failure (as Kubernetes, Cilium and Calico use it).
//!
//! Both keep the same semantics: a store-wide revision that only grows and
//! is every resource's `resource_version`; optimistic concurrency on it; a
//! write acknowledged only once it is durable (an fsync, or etcd's quorum
//! commit); a unique spec key per kind; the size caps of what travels in one
//! snapshot; and a feed of committed changes ([`News`]) that the hub turns
//! into events and recompiled snapshots. On etcd the feed is etcd's watch,
//! so a write through any replica reaches the data planes of every replica,
//! and it carries what the replicas share about their data planes too.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use patronus_proto::v1::{EventType, ObjectMeta};
use tokio::sync::watch;

use crate::resource::{name_of, Resource};

pub mod embedded;
pub mod etcd;
pub mod leader;
pub mod migrate;
pub mod shared;

pub use embedded::RedbStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No resource of that kind and name.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The kind.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The name, or a unique spec key, is taken.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What exists (`site "hq"`, `site_id "hq-1"`).
        what: String,
    },
    /// The write carried a resource_version that is no longer current.
    #[error("{kind} {name:?} is at resource_version {current}, not {given}")]
    Conflict {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The version the client sent.
        given: u64,
        /// The version stored.
        current: u64,
    },
    /// The resources of a kind would together exceed what it may take.
    #[error("{field}: {message}")]
    TooLarge {
        /// The field at fault (`application.spec`).
        field: String,
        /// What the total would be, and the limit.
        message: String,
    },
    /// The store cannot answer now: the database failed earlier (a full
    /// disk, an I/O error) and is not usable until it is reopened, or etcd
    /// is unreachable or without quorum. Worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    /// etcd answered with an error other than being unreachable.
    #[error("{0}")]
    Backend(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// The group commit failed or could not run; the write may not have happened.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// A stored value did not decode (corruption or a schema bug).
    #[error("stored {kind} {name:?} does not decode: {source}")]
    Corrupt {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The decoder's error.
        source: prost::DecodeError,
    },
}

macro_rules! storage_errors {
    ($($t:ty),+) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        })+
    };
}
storage_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Desired state at one store revision.
#[derive(Debug, Default, Clone)]
pub struct DesiredState {
    /// The revision it was read at.
    pub revision: u64,
    /// The sites asked for.
    pub sites: Vec<patronus_proto::v1::Site>,
    /// Every peer.
    pub peers: Vec<patronus_proto::v1::Peer>,
    /// Every policy.
    pub policies: Vec<patronus_proto::v1::Policy>,
    /// Every user-defined application.
    pub applications: Vec<patronus_proto::v1::Application>,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page<R> {
    /// The resources, ordered by name.
    pub items: Vec<R>,
    /// The name to continue after, when more remain.
    pub next: Option<String>,
}

/// Where desired state lives, as `--store` names it.
#[derive(Debug, Clone)]
pub enum Location {
    /// `redb:PATH`: a database file, created if missing.
    Redb(PathBuf),
    /// `etcd:URL[,URL...]`: the client URLs of an etcd cluster.
    Etcd(Vec<String>),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Location, String> {
        match text.split_once(':') {
            Some(("redb", path)) if !path.is_empty() => Ok(Location::Redb(path.into())),
            Some(("etcd", urls)) => {
                let urls: Vec<String> = urls
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                if urls.is_empty() {
                    return Err("etcd: names no endpoint (etcd:http://10.0.0.1:2379,...)".into());
                }
                if let Some(bad) = urls
                    .iter()
                    .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                {
                    return Err(format!(
                        "etcd endpoint {bad:?} is not an http:// or https:// URL"
                    ));
                }
                Ok(Location::Etcd(urls))
            }
            _ => Err(format!(
                "{text:?} is neither redb:PATH nor etcd:URL[,URL...]"
            )),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Redb(path) => write!(f, "redb:{}", path.display()),
            Location::Etcd(urls) => write!(f, "etcd:{}", urls.join(",")),
        }
    }
}

/// A committed write, as every replica learns of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Created, updated or deleted.
    pub kind: EventType,
    /// The resource's kind (`site`).
    pub resource: &'static str,
    /// Its name.
    pub name: String,
    /// The site it belongs to ("" for policies and applications).
    pub site_id: String,
    /// Its resource_version after the write (before it, for a delete).
    pub version: u64,
}

impl Change {
    /// `kind` of `r` as stored.
    pub(crate) fn of<R: Resource>(kind: EventType, r: &R) -> Change {
        Change {
            kind,
            resource: R::KIND,
            name: name_of(r).to_owned(),
            site_id: r.site_scope().to_owned(),
            version: r.meta().map_or(0, |m| m.resource_version),
        }
    }
}

/// Where a new resource's server-set metadata comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Created through the API: this uid, generation 1, created now.
    New {
        /// Its uid.
        uid: String,
    },
    /// Copied from another store (a migration): uid, generation and times
    /// as they were there.
    Copied,
}

impl Origin {
    /// Sets `meta`'s server-set fields, all but the resource_version (the
    /// store's revision), as this origin says.
    pub(crate) fn stamp(&self, meta: &mut ObjectMeta) {
        if let Origin::New { uid } = self {
            let now = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
            meta.uid = uid.clone();
            meta.generation = 1;
            meta.create_time = now;
            meta.update_time = now;
        }
    }
}

/// What followers of the store are told.
#[derive(Debug, Clone)]
pub enum News {
    /// One committed write.
    Changed(Change),
    /// Some changes cannot be told one by one (the etcd watch fell behind
    /// compaction): everything must be read again.
    Lost(String),
    /// What another replica (or this one) shares about a data plane (etcd only).
    Fleet(shared::FleetNews),
}

type Follower = Box<dyn Fn(&News) + Send + Sync>;

/// Who hears of committed writes, and the shared fleet view as of the
/// last news: a follower that comes late is told it whole first.
#[derive(Default)]
pub(crate) struct Followers {
    list: RwLock<Vec<Follower>>,
    fleet: Mutex<shared::FleetView>,
}

impl Followers {
    pub(crate) fn tell(&self, news: &News) {
        // Held while the followers hear it, so that one joining meanwhile
        // gets the view either with this news or before it, never both.
        let mut fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        if let News::Fleet(change) = news {
            fleet.apply(change);
        }
        for follower in self.list.read().unwrap_or_else(|e| e.into_inner()).iter() {
            follower(news);
        }
    }
}

/// The control plane's desired state, on either backend.
pub struct Store {
    backend: Backend,
    followers: Arc<Followers>,
}

enum Backend {
    Redb {
        db: Arc<RedbStore>,
        writes: embedded::GroupCommit,
    },
    Etcd(Arc<etcd::EtcdStore>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// Runs a read of the embedded database off the async runtime.
async fn blocking<T: Send + 'static>(
    db: &Arc<RedbStore>,
    f: impl FnOnce(&RedbStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::CommitFailed(format!("store task failed: {e}")))?
}

impl Store {
    /// The embedded database file at `path` (created if missing).
    pub fn open_redb(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = Arc::new(RedbStore::open(path)?);
        Ok(Store {
            backend: Backend::Redb {
                writes: embedded::GroupCommit::start(db.clone()),
                db,
            },
            followers: Arc::default(),
        })
    }

    /// The etcd cluster `settings` name; its watch starts on the current
    /// runtime.
    pub async fn open_etcd(settings: etcd::Settings) -> Result<Store, StoreError> {
        let followers = Arc::<Followers>::default();
        let store = etcd::EtcdStore::open(settings, followers.clone()).await?;
        Ok(Store {
            backend: Backend::Etcd(store),
            followers,
        })
    }

    /// `redb` or `etcd`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Redb { .. } => "redb",
            Backend::Etcd(_) => "etcd",
        }
    }

    /// Calls `follower` with every committed write from now on, in the
    /// order of their revisions.
    pub fn follow(&self, follower: impl Fn(&News) + Send + Sync + 'static) {
        let fleet = self
            .followers
            .fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Backend::Etcd(_) = self.backend {
            follower(&News::Fleet(shared::FleetNews::All(Arc::new(
                fleet.clone(),
            ))));
        }
        self.followers
            .list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(follower));
    }

    /// This replica's name among the replicas that share the store, and
    /// where it shares what it knows of its data planes (None on redb:
    /// one replica, nothing to share).
    pub(crate) fn sharing(&self) -> Option<(&str, &shared::Outbox)> {
        match &self.backend {
            Backend::Redb { .. } => None,
            Backend::Etcd(etcd) => Some((etcd.replica(), etcd.outbox())),
        }
    }

    /// The store's epoch: drawn at random when its state was first
    /// created, the same for its whole life. Snapshot versions count within it.
    pub fn epoch(&self) -> u64 {
        match &self.backend {
            Backend::Redb { db, .. } => db.epoch(),
            Backend::Etcd(etcd) => etcd.epoch(),
        }
    }

    /// Why the store is unusable, while it is (`None`: usable).
    pub fn health(&self) -> watch::Receiver<Option<String>> {
        match &self.backend {
            Backend::Redb { db, .. } => db.health(),
            Backend::Etcd(etcd) => etcd.health(),
        }
    }

    /// Whether this replica does the work that must happen once: the only
    /// replica of a redb file always does.
    pub fn is_leader(&self) -> bool {
        match &self.backend {
            Backend::Redb { .. } => true,
            Backend::Etcd(etcd) => etcd.is_leader(),
        }
    }

    /// The store's metrics: its backend and whether this replica leads;
    /// on etcd, request latency, watch lag and compactions too.
    pub fn encode_metrics(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let mut info = enc.encode_descriptor(
            "patronus_controlplane_store",
            "1 for the backend desired state is kept in (redb, etcd).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(info.encode_family(&[("backend", self.backend_name())])?)?;
        ConstGauge::new(i64::from(self.is_leader())).encode(enc.encode_descriptor(
            "patronus_controlplane_leader",
            "1 while this replica does the work that must happen once (always, on redb).",
            None,
            MetricType::Gauge,
        )?)?;
        match &self.backend {
            Backend::Redb { .. } => Ok(()),
            Backend::Etcd(etcd) => etcd.encode_metrics(enc),
        }
    }

    /// Tries to make a failed store usable again: true when it is.
    pub async fn reopen(&self) -> bool {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || db.reopen())
                    .await
                    .unwrap_or(false)
            }
            // The etcd client reconnects by itself; its health follows.
            Backend::Etcd(etcd) => etcd.health().borrow().is_none(),
        }
    }

    /// The resource called `name`.
    pub async fn get<R: Resource>(&self, name: &str) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let name = name.to_owned();
                blocking(db, move |db| db.get(&name)).await
            }
            Backend::Etcd(etcd) => etcd.get(name).await,
        }
    }

    /// Up to `limit` resources with names after `after`, by name.
    pub async fn list<R: Resource>(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Page<R>, StoreError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let after = after.to_owned();
                blocking(db, move |db| db.list(&after, limit)).await
            }
            Backend::Etcd(etcd) => etcd.list(after, limit).await,
        }
    }

    /// Every resource of a kind, by name, as of one revision.
    pub async fn all<R: Resource>(&self) -> Result<Vec<R>, StoreError> {
        match &self.backend {
            Backend::Redb { db, .. } => blocking(db, |db| db.all()).await,
            Backend::Etcd(etcd) => etcd.all().await,
        }
    }

    /// Every peer, policy and application and the sites asked for (`None`:
    /// every site) as of one revision: a snapshot compiled from it is
    /// exactly that revision's.
    pub async fn desired_state(
        &self,
        site_ids: Option<Vec<String>>,
    ) -> Result<DesiredState, StoreError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                blocking(db, move |db| db.desired_state(site_ids.as_deref())).await
            }
            Backend::Etcd(etcd) => etcd.desired_state(site_ids.as_deref()).await,
        }
    }

    /// Creates `r` with the server-assigned metadata (`uid`, versions, times).
    pub async fn create<R: Resource>(&self, r: R, uid: String) -> Result<R, StoreError> {
        self.create_from(r, Origin::New { uid }).await
    }

    /// Creates `r` as another store held it: its uid, generation and times
    /// kept, its resource_version this store's.
    pub async fn copy_in<R: Resource>(&self, r: R) -> Result<R, StoreError> {
        self.create_from(r, Origin::Copied).await
    }

    async fn create_from<R: Resource>(&self, r: R, origin: Origin) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Redb { writes, .. } => {
                let created = writes
                    .write(move |txn| embedded::create_in(txn, r, &origin))
                    .await?;
                self.followers.tell(&News::Changed(Change::of(
                    EventType::ResourceCreated,
                    &created,
                )));
                Ok(created)
            }
            Backend::Etcd(etcd) => etcd.create(r, &origin).await,
        }
    }

    /// Replaces the spec and labels of an existing resource whose
    /// resource_version is the one `r` carries.
    pub async fn update<R: Resource>(&self, r: R) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Redb { writes, .. } => {
                let updated = writes.write(move |txn| embedded::update_in(txn, r)).await?;
                self.followers.tell(&News::Changed(Change::of(
                    EventType::ResourceUpdated,
                    &updated,
                )));
                Ok(updated)
            }
            Backend::Etcd(etcd) => etcd.update(r).await,
        }
    }

    /// Deletes the resource called `name` (only at `expected` when non-zero);
    /// returns it as it was.
    pub async fn delete<R: Resource>(&self, name: &str, expected: u64) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Redb { writes, .. } => {
                let name = name.to_owned();
                let deleted = writes
                    .write(move |txn| embedded::delete_in::<R>(txn, &name, expected))
                    .await?;
                self.followers.tell(&News::Changed(Change::of(
                    EventType::ResourceDeleted,
                    &deleted,
                )));
                Ok(deleted)
            }
            Backend::Etcd(etcd) => etcd.delete(name, expected).await,
        }
    }
}

/// Room the server's metadata (versions, times, uid) may add to a
/// resource after [`check_fits`] measured it.
const SERVER_METADATA_BYTES: usize = 128;

/// That `r` keeps within the size of one resource and, for a capped kind,
/// its group's total along with the `others` bytes the rest of its group
/// takes. Checked inside each backend's write, so that concurrent writes
/// cannot pass it together.
pub(crate) fn check_fits<R: Resource>(r: &R, others: usize) -> Result<(), StoreError> {
    let size = r.encoded_len() + SERVER_METADATA_BYTES;
    if size > crate::validate::RESOURCE_MAX_BYTES {
        return Err(StoreError::TooLarge {
            field: R::KIND.to_owned(),
            message: format!(
                "takes {size} bytes, more than one resource may ({})",
                crate::validate::RESOURCE_MAX_BYTES
            ),
        });
    }
    let Some(max) = R::TOTAL_BYTES else {
        return Ok(());
    };
    let group = r.site_scope();
    let total = others + size;
    if total > max {
        return Err(StoreError::TooLarge {
            field: format!("{}.spec", R::KIND),
            message: if group.is_empty() {
                format!(
                    "every site's snapshot carries every {}: with this one they would take {total} bytes, more than {max}",
                    R::KIND
                )
            } else {
                format!(
                    "site {group:?}'s snapshot carries its {}s: with this one they would take {total} bytes, more than {max}",
                    R::KIND
                )
            },
        });
    }
    Ok(())
}

/// The error for a missing resource.
pub(crate) fn not_found<R: Resource>(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: R::KIND,
        name: name.to_owned(),
    }
}

/// Decodes a stored resource.
pub(crate) fn decode<R: Resource>(name: &str, bytes: &[u8]) -> Result<R, StoreError> {
    R::decode(bytes).map_err(|source| StoreError::Corrupt {
        kind: R::KIND,
        name: name.to_owned(),
        source,
    })
}
