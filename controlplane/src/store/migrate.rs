//! Moving desired state from one store to another (a redb file to etcd, or
//! back): every resource copied with its uid, generation and times, then
//! both stores read again and compared, so that a copy that is not exact
//! is reported, never trusted.
//!
//! The source should not be written meanwhile: stop its control plane (a
//! running one holds a redb file's lock anyway, so opening it fails).

use patronus_proto::v1::{Application, Peer, Policy, Site};

use super::{Store, StoreError};
use crate::resource::{name_of, Resource};

/// How many resources of each kind were copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Sites.
    pub sites: usize,
    /// Peers.
    pub peers: usize,
    /// Policies.
    pub policies: usize,
    /// Applications.
    pub applications: usize,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sites, {} peers, {} policies, {} applications",
            self.sites, self.peers, self.policies, self.applications
        )
    }
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target holds resources already: a migration goes into an empty store.
    #[error("the target already holds {count} {kind}(s): migrate into an empty store")]
    TargetNotEmpty {
        /// The kind found.
        kind: &'static str,
        /// How many.
        count: usize,
    },
    /// Reading both stores back found a difference.
    #[error("the copy differs from the source: {0}")]
    Differs(String),
}

/// Copies everything in `from` into the empty store `to`, then checks that
/// `to` holds exactly what `from` does (resource versions aside: they are
/// each store's own revisions).
pub async fn copy(from: &Store, to: &Store) -> Result<Copied, MigrateError> {
    empty::<Site>(to).await?;
    empty::<Peer>(to).await?;
    empty::<Policy>(to).await?;
    empty::<Application>(to).await?;
    let copied = Copied {
        sites: copy_kind::<Site>(from, to).await?,
        peers: copy_kind::<Peer>(from, to).await?,
        policies: copy_kind::<Policy>(from, to).await?,
        applications: copy_kind::<Application>(from, to).await?,
    };
    same::<Site>(from, to).await?;
    same::<Peer>(from, to).await?;
    same::<Policy>(from, to).await?;
    same::<Application>(from, to).await?;
    Ok(copied)
}

async fn empty<R: Resource>(store: &Store) -> Result<(), MigrateError> {
    match store.all::<R>().await?.len() {
        0 => Ok(()),
        count => Err(MigrateError::TargetNotEmpty {
            kind: R::KIND,
            count,
        }),
    }
}

async fn copy_kind<R: Resource>(from: &Store, to: &Store) -> Result<usize, MigrateError> {
    let all = from.all::<R>().await?;
    for r in &all {
        to.copy_in(r.clone()).await?;
    }
    Ok(all.len())
}

/// Every resource of the kind, its resource_version cleared.
async fn versionless<R: Resource>(store: &Store) -> Result<Vec<R>, StoreError> {
    let mut all = store.all::<R>().await?;
    for r in &mut all {
        r.meta_mut().resource_version = 0;
    }
    Ok(all)
}

async fn same<R: Resource>(from: &Store, to: &Store) -> Result<(), MigrateError> {
    let (source, copy) = (versionless::<R>(from).await?, versionless::<R>(to).await?);
    if source.len() != copy.len() {
        return Err(MigrateError::Differs(format!(
            "{} {}(s) in the source, {} in the copy",
            source.len(),
            R::KIND,
            copy.len()
        )));
    }
    match source
        .iter()
        .zip(&copy)
        .find(|(s, c)| s.encode_to_vec() != c.encode_to_vec())
    {
        Some((s, _)) => Err(MigrateError::Differs(format!(
            "{} {:?}",
            R::KIND,
            name_of(s)
        ))),
        None => Ok(()),
    }
}
