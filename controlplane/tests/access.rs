//! Who may do what (roles, per-site data-plane tokens, the metrics token)
//! and what bounds the control plane's work: an in-process server on
//! loopback ports with a real database file (or etcd, see `common::on_etcd`).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use patronus_controlplane::auth::{BearerToken, DataplaneKey};
use patronus_controlplane::server::{serve, Settings};
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A server with its fleet metrics on a second port.
struct Server {
    grpc: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(settings: Settings) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(common::open_store(&dir.path().join("cp.redb")).await);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server {
        grpc: grpc.local_addr().unwrap(),
        metrics: metrics.local_addr().unwrap(),
        _dir: dir,
    };
    tokio::spawn(serve(
        grpc,
        Some(metrics),
        store,
        settings,
        std::future::pending(),
    ));
    server
}

/// `GET path` over HTTP/1.1 with an optional `Authorization` header: the
/// status code and the body.
fn get(addr: std::net::SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ask_for_their_own_token_when_one_is_set_and_health_does_not() {
    let token = "metrics-token-0123456789";
    let server = start(Settings {
        metrics_token: Some(BearerToken::new(token).unwrap()),
        ..Default::default()
    })
    .await;
    let metrics = server.metrics;
    let answers = tokio::task::spawn_blocking(move || {
        [
            get(metrics, "/metrics", None),
            get(metrics, "/metrics", Some("Bearer not-the-metrics-token")),
            get(metrics, "/metrics", Some(&format!("Bearer {token}"))),
            get(metrics, "/healthz", None),
        ]
    })
    .await
    .unwrap();
    assert_eq!(answers[0].0, 401, "{}", answers[0].1);
    assert!(answers[0].1.contains("missing bearer token"));
    assert_eq!(answers[1].0, 401);
    assert!(answers[1].1.contains("invalid bearer token"));
    assert_eq!(answers[2].0, 200);
    assert!(answers[2]
        .1
        .contains("# TYPE patronus_fleet_dataplane_connected gauge"));
    assert_eq!(answers[3].0, 200, "probes need no token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_data_planes_per_site_are_bounded() {
    let server = start(Settings::default()).await;
    let mut sync = DataplaneSyncClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();

    // A report with more paths than a data plane can have is refused.
    let path = |i: usize| PathTelemetry {
        path_id: format!("branch:inet->hq:e{i}"),
        ..Default::default()
    };
    let report = TelemetryReport {
        site_id: "branch".into(),
        dataplane_id: "gw-1".into(),
        peers: vec![PeerTelemetry {
            name: "hq".into(),
            paths: (0..1025).map(path).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = sync.report(tokio_stream::iter([report])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("1024 paths"),
        "{}",
        refused.message()
    );

    // Answers from more data planes than a site may have: the first ones
    // are recorded, the next refused.
    let ack = |id: String| AcknowledgeRequest {
        site_id: "branch".into(),
        dataplane_id: id,
        version: 1,
        result: AckResult::Ack as i32,
        ..Default::default()
    };
    for i in 0..patronus_controlplane::sync::MAX_DATAPLANES_PER_SITE {
        sync.acknowledge(ack(format!("gw-{i}"))).await.unwrap();
    }
    let refused = sync
        .acknowledge(ack("one-too-many".into()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let subscribed = sync
        .subscribe(SubscribeRequest {
            site_id: "branch".into(),
            dataplane_id: "one-too-many".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(subscribed.code(), tonic::Code::ResourceExhausted);
}

const ADMIN: &str = "admin-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";
const KEY: &str = "dataplane-key-0123456789-0123456789-0123456789";

/// Presents a bearer token.
#[derive(Clone)]
struct Bearer(String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.0).parse().unwrap(),
        );
        Ok(req)
    }
}

type Api = ControlPlaneClient<InterceptedService<Channel, Bearer>>;
type Sync = DataplaneSyncClient<InterceptedService<Channel, Bearer>>;

async fn clients(addr: std::net::SocketAddr, token: &str) -> (Api, Sync) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = Bearer(token.to_owned());
    (
        ControlPlaneClient::with_interceptor(channel.clone(), bearer.clone()),
        DataplaneSyncClient::with_interceptor(channel, bearer),
    )
}

fn site(site_id: &str) -> Site {
    Site {
        metadata: Some(ObjectMeta {
            name: site_id.into(),
            ..Default::default()
        }),
        spec: Some(SiteSpec {
            site_id: site_id.into(),
            tunnel_endpoint: Some(Endpoint {
                address: "192.0.2.1".into(),
                port: 51820,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn subscribe(site_id: &str) -> SubscribeRequest {
    SubscribeRequest {
        site_id: site_id.into(),
        dataplane_id: "gw-1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_what_it_may_and_a_data_plane_only_for_its_site() {
    let key = DataplaneKey::new(KEY).unwrap();
    let server = start(Settings {
        token: Some(BearerToken::new(ADMIN).unwrap()),
        viewer_token: Some(BearerToken::new(VIEWER).unwrap()),
        dataplane_key: Some(key.clone()),
        ..Default::default()
    })
    .await;
    let (mut admin, mut admin_sync) = clients(server.grpc, ADMIN).await;
    for id in ["branch", "hq"] {
        admin
            .create_site(CreateSiteRequest {
                site: Some(site(id)),
            })
            .await
            .unwrap();
    }
    // The admin may also sync, for any site (tools and tests do).
    admin_sync.subscribe(subscribe("hq")).await.unwrap();

    // The viewer reads, never writes, never syncs.
    let (mut viewer, mut viewer_sync) = clients(server.grpc, VIEWER).await;
    let sites = viewer
        .list_sites(ListSitesRequest::default())
        .await
        .unwrap();
    assert_eq!(sites.into_inner().sites.len(), 2);
    viewer
        .list_dataplanes(ListDataplanesRequest::default())
        .await
        .unwrap();
    let denied = viewer
        .create_site(CreateSiteRequest {
            site: Some(site("rogue")),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = viewer
        .delete_site(DeleteSiteRequest {
            name: "hq".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = viewer_sync.subscribe(subscribe("hq")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Branch's data plane syncs branch, and nothing else.
    let branch_token = key.token_for("branch");
    let (mut branch_api, mut branch) = clients(server.grpc, &branch_token).await;
    let mut snapshots = branch
        .subscribe(subscribe("branch"))
        .await
        .unwrap()
        .into_inner();
    let first = snapshots.message().await.unwrap().unwrap();
    assert_eq!(first.site_id, "branch");
    branch
        .acknowledge(AcknowledgeRequest {
            site_id: "branch".into(),
            dataplane_id: "gw-1".into(),
            version: first.version,
            result: AckResult::Ack as i32,
            epoch: first.epoch,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut denials = 0;
    let denied = branch.subscribe(subscribe("hq")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("\"branch\"'s"),
        "{}",
        denied.message()
    );
    denials += 1;
    let denied = branch
        .acknowledge(AcknowledgeRequest {
            site_id: "hq".into(),
            dataplane_id: "gw-1".into(),
            version: 1,
            result: AckResult::Nack as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    denials += 1;
    let forged_report = TelemetryReport {
        site_id: "hq".into(),
        dataplane_id: "gw-1".into(),
        ..Default::default()
    };
    let denied = branch
        .report(tokio_stream::iter([forged_report]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    denials += 1;
    for denied in [
        branch_api
            .list_sites(ListSitesRequest::default())
            .await
            .map(drop)
            .unwrap_err(),
        branch_api
            .create_site(CreateSiteRequest {
                site: Some(site("rogue")),
            })
            .await
            .map(drop)
            .unwrap_err(),
    ] {
        assert_eq!(denied.code(), Code::PermissionDenied);
        denials += 1;
    }

    // A token for another site cannot be made from one: the mac covers the site.
    let forged = branch_token.replacen("branch", "hq", 1);
    let (_, mut forger) = clients(server.grpc, &forged).await;
    let refused = forger.subscribe(subscribe("hq")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let other_key = DataplaneKey::new("another-key-0123456789-0123456789-01234").unwrap();
    let (_, mut stranger) = clients(server.grpc, &other_key.token_for("hq")).await;
    let refused = stranger.subscribe(subscribe("hq")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Every refusal is counted by role.
    let metrics = server.metrics;
    let (_, text) = tokio::task::spawn_blocking(move || get(metrics, "/metrics", None))
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "patronus_controlplane_permission_denied_total{{role=\"dataplane\"}} {denials}"
        )),
        "{text}"
    );
    assert!(text.contains("patronus_controlplane_permission_denied_total{role=\"viewer\"} 3"));
}
