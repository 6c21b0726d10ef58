//! DataplaneSync over real gRPC: subscribers get their site's snapshot, a new
//! version exactly when something of theirs changes, and their ACK/NACK shows
//! in ListDataplanes.

mod common;

use std::time::Duration;

use patronus_controlplane::manifest::{self, Document};
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;
use tonic::Streaming;

async fn next(stream: &mut Streaming<SiteSnapshot>) -> SiteSnapshot {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .expect("stream open")
}

async fn quiet(stream: &mut Streaming<SiteSnapshot>) -> bool {
    tokio::time::timeout(Duration::from_millis(500), stream.message())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_follow_their_site() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("cp.redb"), None);
    let url = format!("http://{}", server.addr);
    let mut api = ControlPlaneClient::connect(url.clone()).await.unwrap();
    let mut sync = DataplaneSyncClient::connect(url).await.unwrap();
    let docs = manifest::parse(include_str!("data/production.yaml")).unwrap();
    let (Document::Site(site_doc), Document::Peer(peer_doc), Document::Policy(policy_doc)) =
        (&docs[0], &docs[1], &docs[2])
    else {
        panic!("the example's order")
    };

    // Subscribing before the site exists gives an empty snapshot.
    let subscribe = |id: &str| SubscribeRequest {
        site_id: "us-east-prod".into(),
        dataplane_id: id.into(),
        ..Default::default()
    };
    let mut a = sync
        .subscribe(subscribe("gw-a"))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut a).await;
    assert!(first.site.is_none() && first.peers.is_empty());

    // Several labels: the order they are encoded in must not make an
    // unchanged site look changed.
    let mut site = manifest::site(site_doc);
    let labels = &mut site.metadata.as_mut().unwrap().labels;
    for key in ["team", "tier", "zone", "owner", "cost-center", "rack"] {
        labels.insert(key.into(), "x".into());
    }
    api.create_site(CreateSiteRequest { site: Some(site) })
        .await
        .unwrap();
    let with_site = next(&mut a).await;
    assert!(with_site.version > first.version);
    assert_eq!(
        with_site
            .site
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .region,
        "us-east-1"
    );

    api.create_peer(CreatePeerRequest {
        peer: Some(manifest::peer(peer_doc)),
    })
    .await
    .unwrap();
    api.create_policy(CreatePolicyRequest {
        policy: Some(manifest::policy(policy_doc).unwrap()),
    })
    .await
    .unwrap();
    // The peer and the policy arrive (maybe in one version, maybe in two).
    let mut latest = next(&mut a).await;
    while latest.policies.is_empty() || latest.peers.is_empty() {
        latest = next(&mut a).await;
    }
    assert_eq!(latest.peers[0].metadata.as_ref().unwrap().name, "aws-vpc");
    assert_eq!(
        latest.policies[0].metadata.as_ref().unwrap().name,
        "video-low-latency"
    );

    // The policy's status names the sites its selector matches.
    let policy = api
        .get_policy(GetPolicyRequest {
            name: "video-low-latency".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    let status = policy.status.unwrap();
    assert_eq!(status.selected_sites, ["us-east-prod"]);
    assert_eq!(status.observed_generation, 1);

    // A second data plane of the site starts from the current version.
    let mut b = sync
        .subscribe(subscribe("gw-b"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut b).await.version, latest.version);

    // Another site's peer is none of this site's business: no new version.
    let mut other = manifest::peer(peer_doc);
    other.metadata.as_mut().unwrap().name = "elsewhere".into();
    other.spec.as_mut().unwrap().site_id = "eu-west-prod".into();
    api.create_peer(CreatePeerRequest { peer: Some(other) })
        .await
        .unwrap();
    assert!(quiet(&mut a).await, "no snapshot for an unrelated change");

    // Both answer; the control plane shows what each runs.
    let ack = |id: &str, result: AckResult, version: u64| AcknowledgeRequest {
        site_id: "us-east-prod".into(),
        dataplane_id: id.into(),
        version,
        result: result as i32,
        reason: if result == AckResult::Nack {
            "tunnel endpoint unresolvable".into()
        } else {
            String::new()
        },
        epoch: latest.epoch,
    };
    sync.acknowledge(ack("gw-a", AckResult::Ack, latest.version))
        .await
        .unwrap();
    sync.acknowledge(ack("gw-b", AckResult::Nack, latest.version))
        .await
        .unwrap();
    let list = api
        .list_dataplanes(ListDataplanesRequest {
            site_id: "us-east-prod".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_id = |id: &str| {
        list.dataplanes
            .iter()
            .find(|d| d.dataplane_id == id)
            .unwrap()
            .clone()
    };
    let (ga, gb) = (by_id("gw-a"), by_id("gw-b"));
    assert!(
        ga.connected
            && ga.applied_version == latest.version
            && ga.desired_version == latest.version
    );
    assert_eq!(
        (gb.applied_version, gb.refused_version),
        (0, latest.version)
    );
    assert_eq!(gb.refused_reason, "tunnel endpoint unresolvable");

    // A change to the site reaches both; a data plane that leaves shows disconnected.
    let current = api
        .get_site(GetSiteRequest {
            name: "us-east-prod".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .site
        .unwrap();
    let mut changed = current.clone();
    changed.spec.as_mut().unwrap().display_name = "US East (primary)".into();
    api.update_site(UpdateSiteRequest {
        site: Some(changed),
    })
    .await
    .unwrap();
    let (va, vb) = (next(&mut a).await, next(&mut b).await);
    assert!(va.version > latest.version && va.version == vb.version);
    assert_eq!(
        va.site.unwrap().spec.unwrap().display_name,
        "US East (primary)"
    );
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = api
        .list_dataplanes(ListDataplanesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let gb = list
        .dataplanes
        .iter()
        .find(|d| d.dataplane_id == "gw-b")
        .unwrap();
    assert!(!gb.connected);

    let bad = sync
        .subscribe(SubscribeRequest {
            site_id: "Not A Site".into(),
            dataplane_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

/// The epoch of the site's snapshot and the version a data plane that
/// answers it is shown to run.
async fn answer(url: &str, ack_epoch: impl FnOnce(u64) -> u64) -> (u64, u64) {
    let mut sync = DataplaneSyncClient::connect(url.to_owned()).await.unwrap();
    let mut stream = sync
        .subscribe(SubscribeRequest {
            site_id: "edge".into(),
            dataplane_id: "gw".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = next(&mut stream).await;
    sync.acknowledge(AcknowledgeRequest {
        site_id: "edge".into(),
        dataplane_id: "gw".into(),
        version: snapshot.version,
        result: AckResult::Ack as i32,
        reason: String::new(),
        epoch: ack_epoch(snapshot.epoch),
    })
    .await
    .unwrap();
    let mut api = ControlPlaneClient::connect(url.to_owned()).await.unwrap();
    let list = api
        .list_dataplanes(ListDataplanesRequest {
            site_id: "edge".into(),
        })
        .await
        .unwrap()
        .into_inner();
    (snapshot.epoch, list.dataplanes[0].applied_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_is_an_epoch_and_answers_to_another_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.redb");
    let server = common::start(&first, None);
    let url = format!("http://{}", server.addr);
    // An answer naming another database's epoch is not this one's version.
    let (epoch, applied) = answer(&url, |e| e ^ 1).await;
    assert_ne!(epoch, 0);
    assert_eq!(applied, 0, "an answer from another epoch was recorded");
    let (again, applied) = answer(&url, |e| e).await;
    assert_eq!((again, applied > 0), (epoch, true));
    drop(server);

    // The same database keeps its epoch across restarts; a new one draws its own.
    let server = common::start(&first, None);
    let (same, _) = answer(&format!("http://{}", server.addr), |e| e).await;
    assert_eq!(same, epoch);
    drop(server);
    let server = common::start(&dir.path().join("second.redb"), None);
    let (other, _) = answer(&format!("http://{}", server.addr), |e| e).await;
    assert_ne!(other, epoch);
}
