//! The public gRPC API (`patronus.v1.ControlPlane`) over the [`Store`].

use std::sync::Arc;

use base64::Engine as _;
use patronus_proto::v1::control_plane_server::ControlPlane;
use patronus_proto::v1::*;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};

use crate::auth::{authorize_api, caller, Access};
use crate::events::Filter;
use crate::resource::{name_of, Resource};
use crate::store::{Store, StoreError};
use crate::sync::Hub;
use crate::validate::Violations;

/// Default and largest page sizes of list calls.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size of list calls.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The ControlPlane service.
#[derive(Debug, Clone)]
pub struct Api {
    store: Arc<Store>,
    hub: Arc<Hub>,
}

impl Api {
    /// The service over `store`; `hub` hears of every committed write from
    /// the store itself (the events and snapshots of any replica's writes).
    pub fn new(store: Arc<Store>, hub: Arc<Hub>) -> Api {
        Api { store, hub }
    }

    /// Lets the caller of `req` read or write the API.
    #[allow(clippy::result_large_err)]
    fn allow<T>(&self, req: &Request<T>, access: Access) -> Result<(), Status> {
        let role = caller(req)?;
        authorize_api(&role, access).map_err(|d| self.hub.refuse(&d))
    }

    /// A write's answer. A failed one may still have happened (a commit
    /// whose acknowledgement was lost), so the hub looks again.
    fn written<R>(&self, result: Result<R, StoreError>) -> Result<R, Status> {
        if result.is_err() {
            self.hub.changed();
        }
        result.map_err(store_status)
    }

    async fn create<R: Resource>(&self, r: Option<R>) -> Result<R, Status> {
        let mut r = required::<R>(r)?;
        r.clear_output_only();
        check(&r)?;
        let uid = uuid::Uuid::new_v4().to_string();
        self.written(self.store.create(r, uid).await)
    }

    async fn get<R: Resource>(&self, name: String) -> Result<R, Status> {
        check_name::<R>(&name)?;
        self.store.get::<R>(&name).await.map_err(store_status)
    }

    async fn list<R: Resource>(
        &self,
        page_size: u32,
        token: String,
    ) -> Result<(Vec<R>, String), Status> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let after = decode_token(&token)?;
        let page = self
            .store
            .list::<R>(&after, size)
            .await
            .map_err(store_status)?;
        let next = page
            .next
            .map(|n| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n));
        Ok((page.items, next.unwrap_or_default()))
    }

    async fn update<R: Resource>(&self, r: Option<R>) -> Result<R, Status> {
        let mut r = required::<R>(r)?;
        r.clear_output_only();
        check(&r)?;
        if r.meta().is_some_and(|m| m.resource_version == 0) {
            let mut v = Violations::default();
            v.add(
                format!("{}.metadata.resource_version", R::KIND),
                "required: the version this update is based on (from a get or list)",
            );
            return Err(invalid::<R>(v));
        }
        self.written(self.store.update(r).await)
    }

    async fn delete<R: Resource>(&self, name: String, version: u64) -> Result<(), Status> {
        check_name::<R>(&name)?;
        self.written(self.store.delete::<R>(&name, version).await)
            .map(drop)
    }
}

fn required<R: Resource>(r: Option<R>) -> Result<R, Status> {
    r.ok_or_else(|| {
        let mut v = Violations::default();
        v.add(R::KIND, "required");
        invalid::<R>(v)
    })
}

fn check<R: Resource>(r: &R) -> Result<(), Status> {
    let mut v = Violations::default();
    r.validate(&mut v);
    if v.is_empty() {
        Ok(())
    } else {
        Err(invalid::<R>(v))
    }
}

fn check_name<R: Resource>(name: &str) -> Result<(), Status> {
    if crate::validate::is_dns_label(name) {
        return Ok(());
    }
    let mut v = Violations::default();
    v.add(
        "name",
        "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter",
    );
    Err(invalid::<R>(v))
}

fn decode_token(token: &str) -> Result<String, Status> {
    if token.is_empty() {
        return Ok(String::new());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            let mut d = ErrorDetails::new();
            d.add_bad_request_violation("page_token", "not a token this server issued");
            Status::with_error_details(Code::InvalidArgument, "invalid page_token", d)
        })
}

/// INVALID_ARGUMENT with a google.rpc.BadRequest naming every field.
fn invalid<R: Resource>(v: Violations) -> Status {
    let summary = v
        .items
        .iter()
        .map(|(f, d)| format!("{f}: {d}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for (field, description) in v.items {
        details.add_bad_request_violation(field, description);
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {}: {summary}", R::KIND),
        details,
    )
}

fn store_status(e: StoreError) -> Status {
    match &e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::Conflict { .. } => Status::failed_precondition(e.to_string()),
        StoreError::TooLarge { field, message } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation(field.clone(), message.clone());
            Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
        }
        // Retryable: the write did not happen, and the database comes back
        // once it can be reopened (the health check says when).
        StoreError::Unavailable(_) | StoreError::CommitFailed(_) => {
            tracing::error!(error = %e, "store failure");
            Status::unavailable(e.to_string())
        }
        StoreError::Storage(_) | StoreError::Backend(_) | StoreError::Corrupt { .. } => {
            tracing::error!(error = %e, "store failure");
            Status::internal(e.to_string())
        }
    }
}

/// Status that only the fleet knows, filled in on reads.
trait Observe: Sized {
    /// Whether observing needs every site (read once per call).
    const NEEDS_SITES: bool = false;
    fn observe(&mut self, hub: &Hub, sites: &[Site]);
}

impl Observe for Site {
    fn observe(&mut self, hub: &Hub, _sites: &[Site]) {
        if let Some(spec) = &self.spec {
            self.status = Some(hub.site_status(&spec.site_id));
        }
    }
}

impl Observe for Peer {
    fn observe(&mut self, hub: &Hub, _sites: &[Site]) {
        self.status = Some(hub.peer_status(self));
    }
}

impl Observe for Application {
    fn observe(&mut self, _hub: &Hub, _sites: &[Site]) {}
}

impl Observe for Policy {
    const NEEDS_SITES: bool = true;
    /// The sites its selector matches now; the generation is observed as
    /// soon as it is stored, since snapshots are compiled from the store.
    fn observe(&mut self, _hub: &Hub, sites: &[Site]) {
        let selected_sites = sites
            .iter()
            .filter(|s| crate::sync::selects(self, s))
            .filter_map(|s| s.spec.as_ref().map(|spec| spec.site_id.clone()))
            .collect();
        self.status = Some(PolicyStatus {
            selected_sites,
            observed_generation: self.metadata.as_ref().map_or(0, |m| m.generation),
        });
    }
}

impl Api {
    /// Fills in the status only the fleet knows.
    async fn observe<R: Observe>(&self, items: &mut [R]) -> Result<(), Status> {
        let sites = if R::NEEDS_SITES && !items.is_empty() {
            self.store.all::<Site>().await.map_err(store_status)?
        } else {
            Vec::new()
        };
        for r in items {
            r.observe(&self.hub, &sites);
        }
        Ok(())
    }
}

/// The service: five calls per kind, each a thin wrapper over the generic
/// ones above. One macro emits the whole impl so that `async_trait` sees the
/// methods themselves.
macro_rules! control_plane {
    ($({$ty:ident, $field:ident, $list_field:ident,
        $create:ident, $CreateReq:ident, $CreateResp:ident,
        $get:ident, $GetReq:ident, $GetResp:ident,
        $list:ident, $ListReq:ident, $ListResp:ident,
        $update:ident, $UpdateReq:ident, $UpdateResp:ident,
        $delete:ident, $DeleteReq:ident, $DeleteResp:ident}),+) => {
        #[tonic::async_trait]
        impl ControlPlane for Api {
            async fn list_dataplanes(
                &self,
                req: Request<ListDataplanesRequest>,
            ) -> Result<Response<ListDataplanesResponse>, Status> {
                self.allow(&req, Access::Read)?;
                let dataplanes = self.hub.dataplanes(&req.into_inner().site_id);
                Ok(Response::new(ListDataplanesResponse { dataplanes }))
            }

            type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

            async fn watch_events(
                &self,
                req: Request<WatchEventsRequest>,
            ) -> Result<Response<Self::WatchEventsStream>, Status> {
                self.allow(&req, Access::Read)?;
                let req = req.into_inner();
                if !req.site_id.is_empty() && !crate::validate::is_dns_label(&req.site_id) {
                    return Err(Status::invalid_argument("site_id: must be a site id"));
                }
                let filter = Filter { site_id: req.site_id, after_id: req.after_id };
                let events = self.hub.events.watch(filter, req.follow);
                Ok(Response::new(Box::pin(events.map(|e| Ok(Event::clone(&e))))))
            }

            async fn get_topology(
                &self,
                req: Request<GetTopologyRequest>,
            ) -> Result<Response<GetTopologyResponse>, Status> {
                self.allow(&req, Access::Read)?;
                let desired = self.store.desired_state(None).await.map_err(store_status)?;
                Ok(Response::new(self.hub.topology(&desired)))
            }

            async fn list_path_health(
                &self,
                req: Request<ListPathHealthRequest>,
            ) -> Result<Response<ListPathHealthResponse>, Status> {
                self.allow(&req, Access::Read)?;
                let paths = self.hub.path_health(&req.into_inner().site_id);
                Ok(Response::new(ListPathHealthResponse { paths }))
            }

            async fn list_bfd_sessions(
                &self,
                req: Request<ListBfdSessionsRequest>,
            ) -> Result<Response<ListBfdSessionsResponse>, Status> {
                self.allow(&req, Access::Read)?;
                let sessions = self.hub.bfd_sessions(&req.into_inner().site_id);
                Ok(Response::new(ListBfdSessionsResponse { sessions }))
            }
            $(
            async fn $create(&self, req: Request<$CreateReq>) -> Result<Response<$CreateResp>, Status> {
                self.allow(&req, Access::Write)?;
                let mut r = self.create::<$ty>(req.into_inner().$field).await?;
                self.observe(std::slice::from_mut(&mut r)).await?;
                tracing::info!(kind = <$ty as Resource>::KIND, name = name_of(&r), "created");
                Ok(Response::new($CreateResp { $field: Some(r) }))
            }
            async fn $get(&self, req: Request<$GetReq>) -> Result<Response<$GetResp>, Status> {
                self.allow(&req, Access::Read)?;
                let mut r = self.get::<$ty>(req.into_inner().name).await?;
                self.observe(std::slice::from_mut(&mut r)).await?;
                Ok(Response::new($GetResp { $field: Some(r) }))
            }
            async fn $list(&self, req: Request<$ListReq>) -> Result<Response<$ListResp>, Status> {
                self.allow(&req, Access::Read)?;
                let req = req.into_inner();
                let (mut items, next_page_token) = self.list::<$ty>(req.page_size, req.page_token).await?;
                self.observe(&mut items).await?;
                Ok(Response::new($ListResp { $list_field: items, next_page_token }))
            }
            async fn $update(&self, req: Request<$UpdateReq>) -> Result<Response<$UpdateResp>, Status> {
                self.allow(&req, Access::Write)?;
                let mut r = self.update::<$ty>(req.into_inner().$field).await?;
                self.observe(std::slice::from_mut(&mut r)).await?;
                tracing::info!(kind = <$ty as Resource>::KIND, name = name_of(&r), "updated");
                Ok(Response::new($UpdateResp { $field: Some(r) }))
            }
            async fn $delete(&self, req: Request<$DeleteReq>) -> Result<Response<$DeleteResp>, Status> {
                self.allow(&req, Access::Write)?;
                let req = req.into_inner();
                self.delete::<$ty>(req.name.clone(), req.resource_version).await?;
                tracing::info!(kind = <$ty as Resource>::KIND, name = req.name, "deleted");
                Ok(Response::new($DeleteResp {}))
            }
            )+
        }
    };
}

control_plane!(
    {Site, site, sites,
        create_site, CreateSiteRequest, CreateSiteResponse,
        get_site, GetSiteRequest, GetSiteResponse,
        list_sites, ListSitesRequest, ListSitesResponse,
        update_site, UpdateSiteRequest, UpdateSiteResponse,
        delete_site, DeleteSiteRequest, DeleteSiteResponse},
    {Peer, peer, peers,
        create_peer, CreatePeerRequest, CreatePeerResponse,
        get_peer, GetPeerRequest, GetPeerResponse,
        list_peers, ListPeersRequest, ListPeersResponse,
        update_peer, UpdatePeerRequest, UpdatePeerResponse,
        delete_peer, DeletePeerRequest, DeletePeerResponse},
    {Policy, policy, policies,
        create_policy, CreatePolicyRequest, CreatePolicyResponse,
        get_policy, GetPolicyRequest, GetPolicyResponse,
        list_policies, ListPoliciesRequest, ListPoliciesResponse,
        update_policy, UpdatePolicyRequest, UpdatePolicyResponse,
        delete_policy, DeletePolicyRequest, DeletePolicyResponse},
    {Application, application, applications,
        create_application, CreateApplicationRequest, CreateApplicationResponse,
        get_application, GetApplicationRequest, GetApplicationResponse,
        list_applications, ListApplicationsRequest, ListApplicationsResponse,
        update_application, UpdateApplicationRequest, UpdateApplicationResponse,
        delete_application, DeleteApplicationRequest, DeleteApplicationResponse}
);
