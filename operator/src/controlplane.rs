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
use patronus_proto::manifest::{self, Metadata};
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
    Ok(
        ControlPlaneClient::with_interceptor(endpoint.connect_lazy(), authorization)
            .max_decoding_message_size(patronus_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(patronus_proto::MAX_MESSAGE_BYTES),
    )
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

/// The object as the manifest patronusctl would apply: the CRD's spec has the
/// manifest's shape by design, so it converts field for field through serde;
/// only the Kubernetes name and labels are kept of the metadata.
fn document<K, D>(obj: &K, spec: &impl serde::Serialize) -> Result<(Metadata, D), Error>
where
    K: kube::Resource,
    D: serde::de::DeserializeOwned,
{
    let meta = obj.meta();
    let metadata = Metadata {
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        resource_version: 0,
    };
    let spec = serde_json::to_value(spec)
        .and_then(serde_json::from_value)
        .map_err(|e| Error::Invalid {
            field: "spec".into(),
            message: e.to_string(),
        })?;
    Ok((metadata, spec))
}

/// Marks the API message as this object's copy, at its generation.
fn owned<K: kube::Resource>(obj: &K, meta: &mut Option<pb::ObjectMeta>) {
    let k = obj.meta();
    meta.get_or_insert_with(Default::default).external_id = external_id(
        k.uid.as_deref().unwrap_or_default(),
        k.generation.unwrap_or_default(),
    );
}

/// Annotation on a Site: the other namespaces (comma-separated) whose Peers
/// may name its site id and whose Policies may select it. Without it only
/// its own namespace's may.
pub const ACCEPT_FROM_ANNOTATION: &str = "patronus.io/accept-from";

/// The control-plane label a site carries for each namespace whose Policies
/// may select it, and that each Policy's selector requires for its own.
fn namespace_label(namespace: &str) -> String {
    format!("patronus.io/from-namespace.{namespace}")
}

/// The namespaces whose Peers and Policies may reach `site`: its own and
/// those it accepts.
pub fn accepted_namespaces(site: &crd::Site) -> Vec<String> {
    let own = site.metadata.namespace.clone().unwrap_or_default();
    let accepted = site
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACCEPT_FROM_ANNOTATION))
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|ns| !ns.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(own).chain(accepted).collect()
}

/// The Site as the control plane's API wants it, labelled with the
/// namespaces whose Policies may select it.
///
/// # Errors
/// A spec the manifest shape does not accept (the schema prevents it).
pub fn site(obj: &crd::Site) -> Result<pb::Site, Error> {
    let (metadata, spec) = document(obj, &obj.spec)?;
    let mut site = manifest::site(&manifest::SiteDoc {
        api_version: manifest::API_VERSION.into(),
        metadata,
        spec,
        status: None,
    });
    owned(obj, &mut site.metadata);
    let labels = &mut site.metadata.get_or_insert_with(Default::default).labels;
    for ns in accepted_namespaces(obj) {
        labels.insert(namespace_label(&ns), "true".into());
    }
    Ok(site)
}

/// The Peer as the control plane's API wants it.
///
/// # Errors
/// A spec the manifest shape does not accept (the schema prevents it).
pub fn peer(obj: &crd::Peer) -> Result<pb::Peer, Error> {
    let (metadata, spec) = document(obj, &obj.spec)?;
    let mut peer = manifest::peer(&manifest::PeerDoc {
        api_version: manifest::API_VERSION.into(),
        metadata,
        spec,
        status: None,
    });
    owned(obj, &mut peer.metadata);
    Ok(peer)
}

/// The Policy as the control plane's API wants it.
///
/// # Errors
/// A spec the manifest shape does not accept, or an unknown enum spelling
/// (the schema prevents both).
pub fn policy(obj: &crd::Policy) -> Result<pb::Policy, Error> {
    let (metadata, spec) = document(obj, &obj.spec)?;
    let mut policy = manifest::policy(&manifest::PolicyDoc {
        api_version: manifest::API_VERSION.into(),
        metadata,
        spec,
        status: None,
    })
    .map_err(|e| Error::Invalid {
        field: e.field,
        message: e.message,
    })?;
    owned(obj, &mut policy.metadata);
    // Only sites of its namespace, or that accept it, are selected.
    let own = obj.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(spec) = policy.spec.as_mut() {
        spec.site_selector
            .get_or_insert_with(Default::default)
            .match_labels
            .insert(namespace_label(own), "true".into());
    }
    Ok(policy)
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

    #[test]
    fn a_sites_uplinks_and_classes_reach_the_api_field_by_field() {
        let spec = crd::SiteSpec {
            site_id: "branch-1".into(),
            tunnel_endpoint: crd::Endpoint {
                address: "203.0.113.10".into(),
                port: 51820,
            },
            uplinks: vec![crd::SiteUplink {
                name: "inet".into(),
                rate_mbps: Some(48.0),
                burst_bytes: Some(30_000),
                overhead_bytes: Some(0),
                cost_per_gb: Some(0.05),
                bandwidth_mbps: Some(50),
                color: Some("internet".into()),
                bfd: Some(crd::BfdTimers {
                    desired_min_tx_ms: Some(100),
                    required_min_rx_ms: None,
                    detect_multiplier: Some(5),
                }),
            }],
            qos_classes: Some(crd::SiteQosClasses {
                real_time: Some(crd::RealTimeClass {
                    limit_percent: Some(20),
                    queue_packets: None,
                    dscp: Some(46),
                }),
                bulk: Some(crd::WeightedClass {
                    weight: Some(5),
                    min_percent: Some(10),
                    ..crd::WeightedClass::default()
                }),
                ..crd::SiteQosClasses::default()
            }),
            ..crd::SiteSpec::default()
        };
        let mut obj = crd::Site::new("branch-1", spec);
        obj.metadata.uid = Some("6f1c-42".into());
        let spec = site(&obj).unwrap().spec.unwrap();
        assert_eq!(
            spec.qos_classes,
            Some(pb::SiteQosClasses {
                real_time: Some(pb::SiteQosClass {
                    limit_percent: Some(20),
                    dscp: Some(46),
                    ..Default::default()
                }),
                bulk: Some(pb::SiteQosClass {
                    weight: Some(5),
                    min_percent: Some(10),
                    ..Default::default()
                }),
                ..Default::default()
            })
        );
        assert_eq!(
            spec.uplinks,
            [pb::SiteUplink {
                name: "inet".into(),
                rate_mbps: Some(48.0),
                burst_bytes: Some(30_000),
                overhead_bytes: Some(0),
                cost_per_gb: Some(0.05),
                bandwidth_mbps: Some(50),
                color: Some("internet".into()),
                bfd: Some(pb::BfdTimers {
                    desired_min_tx_ms: 100,
                    required_min_rx_ms: 0,
                    detect_multiplier: 5,
                }),
            }]
        );
    }
}
