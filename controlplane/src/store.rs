//! Durable desired state, in an embedded redb database.
//!
//! redb rather than SQLite: pure Rust (nothing to install or link), ACID
//! transactions whose commits are durable when `commit` returns (fsync; the
//! default `Durability::Immediate`), so a write the API acknowledged survives
//! `kill -9`, and a key-value model that fits protobuf-encoded resources keyed
//! by name. Every storage access goes through [`Store`]: a replicated backend
//! (etcd, for fleets that outgrow one process) replaces this module alone.
//!
//! Layout: one table per kind (name to encoded resource), a table per unique
//! spec key (site_id to site name), and a `meta` table holding the store-wide
//! revision, which every write increments and stamps on what it wrote as the
//! resource's `resource_version` (as etcd's revision does).

use std::ops::Bound;
use std::path::Path;
use std::time::SystemTime;

use patronus_proto::v1::ObjectMeta;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::resource::{name_of, Resource};

const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

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
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
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

/// One page of a list.
#[derive(Debug)]
pub struct Page<R> {
    /// The resources, ordered by name.
    pub items: Vec<R>,
    /// The name to continue after, when more remain.
    pub next: Option<String>,
}

/// The control plane's durable state.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            // Create every table so that readers never meet a missing one.
            txn.open_table(META)?;
            open_kind::<patronus_proto::v1::Site>(&txn)?;
            open_kind::<patronus_proto::v1::Peer>(&txn)?;
            open_kind::<patronus_proto::v1::Policy>(&txn)?;
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// The store-wide revision: the resource_version of the latest write.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(REVISION)?.map_or(0, |v| v.value()))
    }

    /// Creates `r`; the server-assigned metadata is filled in.
    pub fn create<R: Resource>(&self, mut r: R, uid: String) -> Result<R, StoreError> {
        let name = name_of(&r).to_owned();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(R::TABLE)?;
            if table.get(name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    what: format!("{} {name:?}", R::KIND),
                });
            }
            claim_unique(&txn, &r, &name, None)?;
            let revision = bump_revision(&txn)?;
            let now = Some(prost_types::Timestamp::from(SystemTime::now()));
            let meta = r.meta_mut();
            *meta = ObjectMeta {
                resource_version: revision,
                uid,
                generation: 1,
                create_time: now,
                update_time: now,
                ..std::mem::take(meta)
            };
            table.insert(name.as_str(), r.encode_to_vec().as_slice())?;
        }
        txn.commit()?;
        Ok(r)
    }

    /// The resource called `name`.
    pub fn get<R: Resource>(&self, name: &str) -> Result<R, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(R::TABLE)?;
        let Some(bytes) = table.get(name)? else {
            return Err(not_found::<R>(name));
        };
        decode(name, bytes.value())
    }

    /// Up to `limit` resources with names after `after`, by name.
    pub fn list<R: Resource>(&self, after: &str, limit: usize) -> Result<Page<R>, StoreError> {
        let txn = self.db.begin_read()?;
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

    /// Replaces the spec and labels of an existing resource whose
    /// resource_version is the one `r` carries.
    pub fn update<R: Resource>(&self, mut r: R) -> Result<R, StoreError> {
        let name = name_of(&r).to_owned();
        let given = r.meta().map_or(0, |m| m.resource_version);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(R::TABLE)?;
            let current: R = match table.get(name.as_str())? {
                Some(bytes) => decode(&name, bytes.value())?,
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
            claim_unique(&txn, &r, &name, current.unique_key())?;
            let revision = bump_revision(&txn)?;
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
            table.insert(name.as_str(), r.encode_to_vec().as_slice())?;
        }
        txn.commit()?;
        Ok(r)
    }

    /// Deletes the resource called `name` (only at `expected` when non-zero).
    pub fn delete<R: Resource>(&self, name: &str, expected: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(R::TABLE)?;
            let current: R = match table.get(name)? {
                Some(bytes) => decode(name, bytes.value())?,
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
            table.remove(name)?;
            bump_revision(&txn)?;
        }
        txn.commit()?;
        Ok(())
    }
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

fn bump_revision(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get(REVISION)?.map_or(0, |v| v.value()) + 1;
    meta.insert(REVISION, next)?;
    Ok(next)
}

fn not_found<R: Resource>(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: R::KIND,
        name: name.to_owned(),
    }
}

fn decode<R: Resource>(name: &str, bytes: &[u8]) -> Result<R, StoreError> {
    R::decode(bytes).map_err(|source| StoreError::Corrupt {
        kind: R::KIND,
        name: name.to_owned(),
        source,
    })
}
