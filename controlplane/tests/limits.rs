//! What bounds the control plane's work and who may read its metrics: an
//! in-process server on loopback ports with a real database file.

use std::io::{Read, Write};
use std::sync::Arc;

use patronus_controlplane::auth::BearerToken;
use patronus_controlplane::server::{serve, Settings};
use patronus_controlplane::store::Store;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;

/// A server with its fleet metrics on a second port.
struct Server {
    grpc: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(settings: Settings) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("cp.redb")).unwrap());
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
        })
        .await
        .unwrap_err();
    assert_eq!(subscribed.code(), tonic::Code::ResourceExhausted);
}
