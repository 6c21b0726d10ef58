//! The control-plane side of reconciling: the gRPC client, the mapping of
//! each custom resource to its API message, and the idempotent write that
//! makes the control plane's copy match the object.
//!
//! An object keeps its Kubernetes name in the control plane. Its uid and
//! generation travel in `metadata.external_id` (`kubernetes:UID:GENERATION`),
//! which is how the operator knows which copies it manages: a copy with
//! another uid (a same-named object in another namespace, or one made by
//! hand with patronusctl) is never overwritten or deleted.

use patronus_proto::client::{Authorization, ClientOptions};
use patronus_proto::v1 as pb;
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::crd;
use crate::Error;

/// A client of the public API, with the bearer token on every call.
pub type Client = ControlPlaneClient<InterceptedService<Channel, Authorization>>;

/// A client that connects on first use and reconnects by itself, so that the
/// operator starts (and serves its probes) while the control plane is away.
///
/// # Errors
/// A malformed address or an unreadable token or CA file.
pub fn connect_lazy(options: &ClientOptions) -> anyhow::Result<Client> {
    let (endpoint, authorization) = options.endpoint()?;
    Ok(ControlPlaneClient::with_interceptor(
        endpoint.connect_lazy(),
        authorization,
    ))
}

/// The external id that marks a copy as this object's, at this generation.
pub fn external_id(uid: &str, generation: i64) -> String {
    format!("kubernetes:{uid}:{generation}")
}

/// The uid an external id names, if the operator wrote it.
fn owner_uid(external_id: &str) -> Option<&str> {
    let rest = external_id.strip_prefix("kubernetes:")?;
    rest.split(':').next()
}

fn object_meta<K: kube::Resource>(obj: &K) -> pb::ObjectMeta {
    let meta = obj.meta();
    pb::ObjectMeta {
        name: meta.name.clone().unwrap_or_default(),
        labels: meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        external_id: external_id(
            meta.uid.as_deref().unwrap_or_default(),
            meta.generation.unwrap_or_default(),
        ),
        ..Default::default()
    }
}

fn endpoint(e: &crd::Endpoint) -> Option<pb::Endpoint> {
    Some(pb::Endpoint {
        address: e.address.clone(),
        port: u32::from(e.port),
    })
}

/// The Site as the control plane's API wants it.
pub fn site(obj: &crd::Site) -> pb::Site {
    let spec = &obj.spec;
    pb::Site {
        metadata: Some(object_meta(obj)),
        spec: Some(pb::SiteSpec {
            site_id: spec.site_id.clone(),
            display_name: spec.display_name.clone(),
            region: spec.region.clone(),
            tunnel_endpoint: endpoint(&spec.tunnel_endpoint),
            peers: spec
                .peers
                .iter()
                .map(|p| pb::SitePeer {
                    site_id: p.site_id.clone(),
                    address: p.address.clone(),
                })
                .collect(),
        }),
        status: None,
    }
}

/// The Peer as the control plane's API wants it.
pub fn peer(obj: &crd::Peer) -> pb::Peer {
    let spec = &obj.spec;
    pb::Peer {
        metadata: Some(object_meta(obj)),
        spec: Some(pb::PeerSpec {
            site_id: spec.site_id.clone(),
            endpoint: endpoint(&spec.endpoint),
            wireguard: Some(pb::WireGuard {
                public_key: spec.wireguard.public_key.clone(),
            }),
            compression: spec.compression,
            bfd_enabled: spec.bfd_enabled,
        }),
        status: None,
    }
}

/// The Policy as the control plane's API wants it.
pub fn policy(obj: &crd::Policy) -> pb::Policy {
    let rules = obj
        .spec
        .rules
        .iter()
        .map(|r| pb::PolicyRule {
            action: match r.action {
                crd::Action::Route => pb::RuleAction::Route,
                crd::Action::Allow => pb::RuleAction::Allow,
                crd::Action::Deny => pb::RuleAction::Deny,
            } as i32,
            priority: r.priority,
            conditions: r
                .conditions
                .iter()
                .map(|c| pb::Condition {
                    r#type: match c.kind {
                        crd::ConditionType::Application => pb::ConditionType::Application,
                        crd::ConditionType::Category => pb::ConditionType::Category,
                        crd::ConditionType::SourcePrefix => pb::ConditionType::SourcePrefix,
                        crd::ConditionType::DestinationPrefix => {
                            pb::ConditionType::DestinationPrefix
                        }
                        crd::ConditionType::DestinationPort => pb::ConditionType::DestinationPort,
                        crd::ConditionType::Dscp => pb::ConditionType::Dscp,
                    } as i32,
                    value: c.value.clone(),
                })
                .collect(),
            path_selection: r.path_selection.as_ref().map(|ps| pb::PathSelection {
                strategy: match ps.strategy {
                    crd::Strategy::LowestLatency => pb::PathSelectionStrategy::LowestLatency,
                    crd::Strategy::HighestBandwidth => pb::PathSelectionStrategy::HighestBandwidth,
                    crd::Strategy::LeastCost => pb::PathSelectionStrategy::LeastCost,
                } as i32,
                // The API's zero means "no limit", as an absent threshold does here.
                thresholds: ps.thresholds.as_ref().map(|t| pb::Thresholds {
                    max_latency_ms: t.max_latency_ms.unwrap_or_default(),
                    max_packet_loss_pct: t.max_packet_loss_pct.unwrap_or_default(),
                    max_jitter_ms: t.max_jitter_ms.unwrap_or_default(),
                    min_bandwidth_mbps: t.min_bandwidth_mbps.unwrap_or_default(),
                }),
            }),
        })
        .collect();
    pb::Policy {
        metadata: Some(object_meta(obj)),
        spec: Some(pb::PolicySpec {
            site_selector: Some(pb::LabelSelector {
                match_labels: obj
                    .spec
                    .site_selector
                    .match_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            rules,
        }),
        status: None,
    }
}

/// A kind the operator mirrors into the control plane.
pub(crate) trait Mirror: Clone + Sized {
    /// The kind's name in messages.
    const KIND: &'static str;
    /// The metadata (always present on what the server returns).
    fn meta(&self) -> Option<&pb::ObjectMeta>;
    /// The metadata, for setting the resource version.
    fn meta_mut(&mut self) -> &mut pb::ObjectMeta;
    /// Whether the two specs are equal.
    fn same_spec(&self, other: &Self) -> bool;
    /// Get by name; `Ok(None)` when there is none.
    async fn get(c: &mut Client, name: &str) -> Result<Option<Self>, Status>;
    /// Create.
    async fn create(c: &mut Client, r: Self) -> Result<Self, Status>;
    /// Update (the resource version must be current).
    async fn update(c: &mut Client, r: Self) -> Result<Self, Status>;
    /// Delete at this resource version.
    async fn delete(c: &mut Client, name: &str, resource_version: u64) -> Result<(), Status>;
}

fn found<T>(r: Result<T, Status>) -> Result<Option<T>, Status> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

macro_rules! mirror {
    ($ty:ty, $kind:literal, $get:ident, $get_req:ident, $create:ident, $create_req:ident,
     $update:ident, $update_req:ident, $delete:ident, $delete_req:ident, $field:ident) => {
        impl Mirror for $ty {
            const KIND: &'static str = $kind;
            fn meta(&self) -> Option<&pb::ObjectMeta> {
                self.metadata.as_ref()
            }
            fn meta_mut(&mut self) -> &mut pb::ObjectMeta {
                self.metadata.get_or_insert_with(Default::default)
            }
            fn same_spec(&self, other: &Self) -> bool {
                self.spec == other.spec
            }
            async fn get(c: &mut Client, name: &str) -> Result<Option<Self>, Status> {
                let r = c.$get(pb::$get_req { name: name.into() }).await;
                Ok(found(r)?.and_then(|r| r.into_inner().$field))
            }
            async fn create(c: &mut Client, r: Self) -> Result<Self, Status> {
                let r = c.$create(pb::$create_req { $field: Some(r) }).await?;
                Ok(r.into_inner().$field.unwrap_or_default())
            }
            async fn update(c: &mut Client, r: Self) -> Result<Self, Status> {
                let r = c.$update(pb::$update_req { $field: Some(r) }).await?;
                Ok(r.into_inner().$field.unwrap_or_default())
            }
            async fn delete(
                c: &mut Client,
                name: &str,
                resource_version: u64,
            ) -> Result<(), Status> {
                c.$delete(pb::$delete_req {
                    name: name.into(),
                    resource_version,
                })
                .await?;
                Ok(())
            }
        }
    };
}

mirror!(
    pb::Site,
    "site",
    get_site,
    GetSiteRequest,
    create_site,
    CreateSiteRequest,
    update_site,
    UpdateSiteRequest,
    delete_site,
    DeleteSiteRequest,
    site
);
mirror!(
    pb::Peer,
    "peer",
    get_peer,
    GetPeerRequest,
    create_peer,
    CreatePeerRequest,
    update_peer,
    UpdatePeerRequest,
    delete_peer,
    DeletePeerRequest,
    peer
);
mirror!(
    pb::Policy,
    "policy",
    get_policy,
    GetPolicyRequest,
    create_policy,
    CreatePolicyRequest,
    update_policy,
    UpdatePolicyRequest,
    delete_policy,
    DeletePolicyRequest,
    policy
);

/// What a sync did, with the control plane's copy afterwards (status included).
#[derive(Debug, Clone, PartialEq)]
pub enum Synced<R> {
    /// There was no copy; now there is.
    Created(R),
    /// The copy differed and was updated.
    Updated(R),
    /// The copy already matched; nothing was written.
    Unchanged(R),
}

impl<R> Synced<R> {
    /// The control plane's copy.
    pub fn resource(&self) -> &R {
        match self {
            Synced::Created(r) | Synced::Updated(r) | Synced::Unchanged(r) => r,
        }
    }
}

fn name_of<R: Mirror>(r: &R) -> String {
    r.meta().map(|m| m.name.clone()).unwrap_or_default()
}

/// Makes the control plane's copy match `desired`, writing only when it
/// differs (labels, spec or external id). Refuses to touch a copy that
/// another object manages.
pub(crate) async fn sync<R: Mirror>(c: &mut Client, mut desired: R) -> Result<Synced<R>, Error> {
    let name = name_of(&desired);
    let want = desired.meta().cloned().unwrap_or_default();
    let Some(current) = R::get(c, &name).await? else {
        return Ok(Synced::Created(R::create(c, desired).await?));
    };
    let have = current.meta().cloned().unwrap_or_default();
    if owner_uid(&have.external_id) != owner_uid(&want.external_id) {
        return Err(Error::NotOurs {
            kind: R::KIND,
            name,
            owner: have.external_id,
        });
    }
    if have.labels == want.labels
        && have.external_id == want.external_id
        && current.same_spec(&desired)
    {
        return Ok(Synced::Unchanged(current));
    }
    desired.meta_mut().resource_version = have.resource_version;
    Ok(Synced::Updated(R::update(c, desired).await?))
}

/// What removing an object's copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The copy was deleted.
    Deleted,
    /// There was no copy.
    Absent,
    /// The copy belongs to another manager and was left alone.
    NotOurs,
}

/// Deletes the copy named `name` if the object with `uid` manages it.
pub(crate) async fn remove<R: Mirror>(
    c: &mut Client,
    name: &str,
    uid: &str,
) -> Result<Removed, Error> {
    let Some(current) = R::get(c, name).await? else {
        return Ok(Removed::Absent);
    };
    let meta = current.meta().cloned().unwrap_or_default();
    if owner_uid(&meta.external_id) != Some(uid) {
        return Ok(Removed::NotOurs);
    }
    match R::delete(c, name, meta.resource_version).await {
        Ok(()) => Ok(Removed::Deleted),
        Err(s) if s.code() == Code::NotFound => Ok(Removed::Absent),
        Err(s) => Err(s.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_name_their_uid() {
        let id = external_id("6f1c-42", 7);
        assert_eq!(id, "kubernetes:6f1c-42:7");
        assert_eq!(owner_uid(&id), Some("6f1c-42"));
        assert_eq!(owner_uid(""), None);
        assert_eq!(owner_uid("terraform:abc"), None);
    }
}
