//! Telemetry over real gRPC: what a data plane reports becomes resource
//! status, topology, path health and events.

mod common;

use std::time::Duration;

use patronus_controlplane::manifest::{self, Document};
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;
use tokio_stream::StreamExt;

fn report(tunnel: TunnelState, path: Option<PathMetrics>) -> TelemetryReport {
    report_paths(tunnel, path, Vec::new())
}

fn report_paths(
    tunnel: TunnelState,
    path: Option<PathMetrics>,
    paths: Vec<PathTelemetry>,
) -> TelemetryReport {
    TelemetryReport {
        site_id: "us-east-prod".into(),
        dataplane_id: "gw-a".into(),
        applied_version: 0,
        counters: Some(DataplaneCounters {
            rx_packets: 10,
            ..Default::default()
        }),
        peers: vec![PeerTelemetry {
            name: "aws-vpc".into(),
            tunnel: tunnel as i32,
            path,
            paths,
        }],
        events: vec![DataplaneEvent {
            time: None,
            r#type: EventType::LinkDown as i32,
            subject: "wan".into(),
            message: String::new(),
        }],
        time: None,
        bfd_sessions: Vec::new(),
    }
}

/// The example's Peer as the API serves it.
async fn get_peer(mut api: ControlPlaneClient<tonic::transport::Channel>) -> Peer {
    api.get_peer(GetPeerRequest {
        name: "aws-vpc".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .peer
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_become_status_topology_paths_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("cp.redb"), None);
    let url = format!("http://{}", server.addr);
    let mut api = ControlPlaneClient::connect(url.clone()).await.unwrap();
    let mut sync = DataplaneSyncClient::connect(url).await.unwrap();
    let docs = manifest::parse(include_str!("data/production.yaml")).unwrap();
    let (Document::Site(site), Document::Peer(peer)) = (&docs[0], &docs[1]) else {
        panic!("the example's order")
    };
    api.create_site(CreateSiteRequest {
        site: Some(manifest::site(site)),
    })
    .await
    .unwrap();
    api.create_peer(CreatePeerRequest {
        peer: Some(manifest::peer(peer)),
    })
    .await
    .unwrap();
    let mut events = api
        .watch_events(WatchEventsRequest {
            site_id: "us-east-prod".into(),
            after_id: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();

    let get_site = |mut api: ControlPlaneClient<tonic::transport::Channel>| async move {
        let site = api
            .get_site(GetSiteRequest {
                name: "us-east-prod".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .site
            .unwrap();
        site.status.unwrap()
    };
    assert_eq!(get_site(api.clone()).await.phase, SitePhase::Pending as i32);

    // Subscribe, wait for the snapshot holding the peer, apply it.
    let mut snapshots = sync
        .subscribe(SubscribeRequest {
            site_id: "us-east-prod".into(),
            dataplane_id: "gw-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut snapshot = snapshots.message().await.unwrap().unwrap();
    while snapshot.peers.is_empty() {
        snapshot = snapshots.message().await.unwrap().unwrap();
    }
    sync.acknowledge(AcknowledgeRequest {
        site_id: "us-east-prod".into(),
        dataplane_id: "gw-a".into(),
        version: snapshot.version,
        result: AckResult::Ack as i32,
        reason: String::new(),
        epoch: snapshot.epoch,
    })
    .await
    .unwrap();

    // Tunnel down: applied but degraded.
    sync.report(tokio_stream::iter([report(TunnelState::Down, None)]))
        .await
        .unwrap();
    let status = get_site(api.clone()).await;
    assert_eq!(status.phase, SitePhase::Degraded as i32);
    assert!(status.last_health_check.is_some());

    // Tunnel up and measured: ready, the peer connected with its figures.
    let measured = PathMetrics {
        latency_ms: 12.5,
        jitter_ms: 0.8,
        packet_loss_pct: 0.2,
    };
    sync.report(tokio_stream::iter([report(
        TunnelState::Up,
        Some(measured),
    )]))
    .await
    .unwrap();
    let status = get_site(api.clone()).await;
    assert_eq!(
        (status.phase, status.tunnels_up),
        (SitePhase::Ready as i32, 1)
    );
    let peer = get_peer(api.clone()).await;
    assert_eq!(
        peer.status.unwrap(),
        PeerStatus {
            connected: true,
            latency_ms: Some(12.5),
            packet_loss: Some(0.2),
            paths: Vec::new(),
        }
    );
    let paths = api
        .list_path_health(ListPathHealthRequest::default())
        .await
        .unwrap()
        .into_inner()
        .paths;
    assert_eq!(paths.len(), 1);
    assert_eq!(
        (paths[0].peer.as_str(), paths[0].state, paths[0].metrics),
        ("aws-vpc", TunnelState::Up as i32, Some(measured))
    );
    assert_eq!(paths[0].path_id, "", "a peer reached by the routes");

    // A data plane with uplinks reports each path: one row per path.
    let per_path = vec![
        PathTelemetry {
            path_id: "us-east-prod:mpls->aws-vpc".into(),
            active: false,
            up: false,
            metrics: None,
            health_score: None,
            bfd: BfdState::Down as i32,
        },
        PathTelemetry {
            path_id: "us-east-prod:inet->aws-vpc".into(),
            active: true,
            up: true,
            metrics: Some(measured),
            health_score: Some(97.0),
            bfd: BfdState::Up as i32,
        },
    ];
    // With its BFD sessions: one on a path, one with an uplink's router.
    let changed = prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    let sessions = vec![
        BfdSession {
            session_id: "us-east-prod:mpls->192.0.2.1".into(),
            state: BfdState::Down as i32,
            remote_state: BfdState::Down as i32,
            local_discriminator: 11,
            remote_discriminator: 0,
            diagnostic: "control_detection_time_expired".into(),
            tx_interval_us: 1_000_000,
            detection_time_us: 0,
            last_change: Some(changed),
        },
        BfdSession {
            session_id: "us-east-prod:inet->aws-vpc".into(),
            state: BfdState::Up as i32,
            remote_state: BfdState::Up as i32,
            local_discriminator: 7,
            remote_discriminator: 9,
            diagnostic: "none".into(),
            tx_interval_us: 50_000,
            detection_time_us: 150_000,
            last_change: None,
        },
    ];
    let mut with_paths = report_paths(TunnelState::Up, Some(measured), per_path);
    with_paths.bfd_sessions = sessions.clone();
    sync.report(tokio_stream::iter([with_paths])).await.unwrap();
    let listed = api
        .list_bfd_sessions(ListBfdSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let rows: Vec<_> = listed
        .iter()
        .map(|s| {
            (
                s.site_id.as_str(),
                s.dataplane_id.as_str(),
                s.session.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("us-east-prod", "gw-a", Some(sessions[1].clone())),
            ("us-east-prod", "gw-a", Some(sessions[0].clone())),
        ],
        "by session id"
    );
    assert!(listed.iter().all(|s| s.report_time.is_some()));
    let elsewhere = api
        .list_bfd_sessions(ListBfdSessionsRequest {
            site_id: "eu-west".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(elsewhere.is_empty());
    let paths = api
        .list_path_health(ListPathHealthRequest::default())
        .await
        .unwrap()
        .into_inner()
        .paths;
    let rows: Vec<_> = paths
        .iter()
        .map(|p| (p.path_id.as_str(), p.active, p.up, p.health_score, p.bfd()))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "us-east-prod:mpls->aws-vpc",
                false,
                false,
                None,
                BfdState::Down
            ),
            (
                "us-east-prod:inet->aws-vpc",
                true,
                true,
                Some(97.0),
                BfdState::Up
            )
        ]
    );
    // The Peer's status names each path with its BFD session.
    let peer = get_peer(api.clone()).await;
    let states: Vec<_> = peer
        .status
        .unwrap()
        .paths
        .iter()
        .map(|p| (p.path_id.clone(), p.active, p.up, p.bfd()))
        .collect();
    assert_eq!(
        states,
        [
            (
                "us-east-prod:mpls->aws-vpc".to_owned(),
                false,
                false,
                BfdState::Down
            ),
            (
                "us-east-prod:inet->aws-vpc".to_owned(),
                true,
                true,
                BfdState::Up
            ),
        ]
    );
    let topology = api
        .get_topology(GetTopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topology.sites.len(), 1);
    assert_eq!(topology.sites[0].dataplanes_connected, 1);
    assert_eq!(topology.links.len(), 1);
    assert_eq!(topology.links[0].state, TunnelState::Up as i32);
    assert_eq!(
        topology.links[0].remote_site_id, "",
        "an AWS endpoint is outside the SD-WAN"
    );

    // The feed: the writes, the connection, the ACK, each report's link
    // event, and the tunnel coming up (a first report of a down tunnel is
    // not a change).
    let mut kinds = Vec::new();
    while kinds.len() < 7 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        kinds.push(EventType::try_from(e.r#type).unwrap());
    }
    assert_eq!(
        kinds,
        [
            EventType::ResourceCreated,
            EventType::ResourceCreated,
            EventType::DataplaneConnected,
            EventType::SnapshotApplied,
            EventType::LinkDown,
            EventType::TunnelUp,
            EventType::LinkDown,
        ]
    );

    // Ids and sizes are checked like every other request.
    let mut bad = report(TunnelState::Up, None);
    bad.dataplane_id = "no spaces".into();
    let err = sync.report(tokio_stream::iter([bad])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
