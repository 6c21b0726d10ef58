//! Several control-plane replicas on one real etcd cluster (three members of
//! Debian's `etcd-server` on loopback): writes through any replica reach the
//! data planes of every replica, in order and once; concurrent writes through
//! two replicas are serialised; a killed replica loses nothing it
//! acknowledged; quorum loss fails writes UNAVAILABLE while subscribers keep
//! their snapshot; a replica whose watch fell behind compaction reads
//! everything again; every replica answers for the data planes of all.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Cluster;
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// A replica of the control plane on `cluster`, under `prefix`.
fn replica(cluster: &Cluster, prefix: &str, extra: &[&str]) -> common::Running {
    let mut args = vec!["--etcd-prefix", prefix];
    args.extend_from_slice(extra);
    common::start_on(&cluster.store_arg(), &args)
}

/// A unique key prefix, so that tests never see each other's state.
fn prefix() -> String {
    format!("/test-{}/", common::etcd::uuid_like())
}

/// A cluster of `members` and two replicas on it, under a prefix of their
/// own (returned too).
async fn two_replicas(members: usize) -> (Cluster, String, common::Running, common::Running) {
    let cluster = Cluster::start(members).await;
    let prefix = prefix();
    let a = replica(&cluster, &prefix, &[]);
    let b = replica(&cluster, &prefix, &[]);
    (cluster, prefix, a, b)
}

async fn api(replica: &common::Running) -> ControlPlaneClient<Channel> {
    ControlPlaneClient::connect(format!("http://{}", replica.addr))
        .await
        .unwrap()
}

async fn subscribe(replica: &common::Running, id: &str) -> Streaming<SiteSnapshot> {
    subscribe_running(replica, id, &SiteSnapshot::default()).await
}

/// Subscribes as a data plane that runs `running` (its epoch, version and digest).
async fn subscribe_running(
    replica: &common::Running,
    id: &str,
    running: &SiteSnapshot,
) -> Streaming<SiteSnapshot> {
    DataplaneSyncClient::connect(format!("http://{}", replica.addr))
        .await
        .unwrap()
        .subscribe(SubscribeRequest {
            site_id: "branch".into(),
            dataplane_id: id.into(),
            running_epoch: running.epoch,
            running_version: running.version,
            running_digest: running.digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<SiteSnapshot>) -> SiteSnapshot {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .expect("stream open")
}

/// Snapshots from `stream` until one satisfies `done`; every version is
/// newer than the one before.
async fn until(
    stream: &mut Streaming<SiteSnapshot>,
    mut version: u64,
    done: impl Fn(&SiteSnapshot) -> bool,
) -> SiteSnapshot {
    loop {
        let snapshot = next(stream).await;
        assert!(
            snapshot.version > version,
            "version {} after {version}",
            snapshot.version
        );
        version = snapshot.version;
        if done(&snapshot) {
            return snapshot;
        }
    }
}

fn peer(name: &str) -> Peer {
    Peer {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(PeerSpec {
            site_id: "branch".into(),
            endpoint: Some(Endpoint {
                address: "192.0.2.7".into(),
                port: 51820,
            }),
            wireguard: Some(WireGuard {
                public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn site() -> Site {
    common::fixtures::site("branch", "Branch office")
}

/// Creates [`site`] through `replica`; the site as stored.
async fn create_branch(replica: &common::Running) -> Site {
    api(replica)
        .await
        .create_site(CreateSiteRequest { site: Some(site()) })
        .await
        .unwrap()
        .into_inner()
        .site
        .unwrap()
}

/// `replica`'s event feed: what it retains and, when `follow`, what follows.
async fn events(replica: &common::Running, follow: bool) -> Streaming<Event> {
    api(replica)
        .await
        .watch_events(WatchEventsRequest {
            follow,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The resource events `replica` recorded, as (type, kind, name, version).
async fn resource_events(replica: &common::Running) -> Vec<(i32, String, String, u64)> {
    let mut events = events(replica, false).await;
    let mut out = Vec::new();
    while let Some(e) = events.message().await.unwrap() {
        let resource = [
            EventType::ResourceCreated,
            EventType::ResourceUpdated,
            EventType::ResourceDeleted,
        ]
        .map(|t| t as i32)
        .contains(&e.r#type);
        if resource {
            out.push((e.r#type, e.kind, e.name, e.version));
        }
    }
    out
}

macro_rules! need_etcd {
    () => {
        if !common::etcd::installed() {
            panic!("etcd is not installed: scripts/setup.sh installs etcd-server");
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_replica_reach_every_replicas_subscribers_in_order_once() {
    need_etcd!();
    let (_cluster, _, a, b) = two_replicas(3).await;
    let mut on_a = subscribe(&a, "gw-a").await;
    let mut on_b = subscribe(&b, "gw-b").await;
    let first_a = next(&mut on_a).await;
    let first_b = next(&mut on_b).await;
    assert_eq!(first_a.epoch, first_b.epoch, "one epoch for the cluster");

    // The site through A, its peer through B, a change of the site through A.
    let site = create_branch(&a).await;
    api(&b)
        .await
        .create_peer(CreatePeerRequest {
            peer: Some(peer("hq")),
        })
        .await
        .unwrap();
    let mut changed = site.clone();
    changed.spec.as_mut().unwrap().display_name = "Branch office, moved".into();
    api(&a)
        .await
        .update_site(UpdateSiteRequest {
            site: Some(changed),
        })
        .await
        .unwrap();

    let done = |s: &SiteSnapshot| {
        s.peers.len() == 1
            && s.site
                .as_ref()
                .and_then(|s| s.spec.as_ref())
                .map(|s| s.display_name.as_str())
                == Some("Branch office, moved")
    };
    let last_a = until(&mut on_a, first_a.version, done).await;
    let last_b = until(&mut on_b, first_b.version, done).await;
    assert_eq!(
        last_a.version, last_b.version,
        "both replicas version the same state alike"
    );

    // Each replica recorded each write once, in the order of their versions.
    for replica in [&a, &b] {
        let events = resource_events(replica).await;
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|(_, kind, name, _)| (kind.as_str(), name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [("site", "branch"), ("peer", "hq"), ("site", "branch")]
        );
        assert!(events.windows(2).all(|w| w[0].3 < w[1].3), "{events:?}");
        assert_eq!(events[0].0, EventType::ResourceCreated as i32);
        assert_eq!(events[2].0, EventType::ResourceUpdated as i32);
    }
}

/// Of two concurrent calls, one succeeded and the other was refused with `loser`.
fn one_wins<T>(results: [&Result<T, tonic::Status>; 2], loser: Code) {
    let codes = results.map(|r| r.as_ref().map(drop).map_err(|s| s.code()));
    assert!(
        codes.contains(&Ok(())) && codes.contains(&Err(loser)),
        "{codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_replicas_are_serialised() {
    need_etcd!();
    let (cluster, prefix, a, b) = two_replicas(3).await;
    let (mut api_a, mut api_b) = (api(&a).await, api(&b).await);
    let site = create_branch(&a).await;

    // Two updates from the same version: one wins, the other is told.
    let renamed = |name: &str| {
        let mut s = site.clone();
        s.spec.as_mut().unwrap().display_name = name.into();
        UpdateSiteRequest { site: Some(s) }
    };
    let (one, two) = tokio::join!(
        api_a.update_site(renamed("through a")),
        api_b.update_site(renamed("through b"))
    );
    one_wins([&one, &two], Code::FailedPrecondition);

    // Two sites claiming one site_id: one is refused.
    let claim = |name: &str| {
        let mut s = common::fixtures::site(name, "Same id");
        s.spec.as_mut().unwrap().site_id = "shared-id".into();
        CreateSiteRequest { site: Some(s) }
    };
    let (one, two) = tokio::join!(
        api_a.create_site(claim("first")),
        api_b.create_site(claim("second"))
    );
    one_wins([&one, &two], Code::AlreadyExists);

    // A delete at an old version is refused; at the current one it goes.
    let current = api_b
        .get_site(GetSiteRequest {
            name: "branch".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .site
        .unwrap();
    let version = current.metadata.unwrap().resource_version;
    let stale = api_a
        .delete_site(DeleteSiteRequest {
            name: "branch".into(),
            resource_version: site.metadata.as_ref().unwrap().resource_version,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    api_a
        .delete_site(DeleteSiteRequest {
            name: "branch".into(),
            resource_version: version,
        })
        .await
        .unwrap();
    let gone = api_b
        .get_site(GetSiteRequest {
            name: "branch".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Peers of one site created through both replicas in turn (each one's
    // memory of the site's total is stale every other time): all land, and
    // the stored total is the sum of what they take.
    for i in 0..10 {
        let through = if i % 2 == 0 { &mut api_a } else { &mut api_b };
        through
            .create_peer(CreatePeerRequest {
                peer: Some(peer(&format!("turn-{i}"))),
            })
            .await
            .unwrap();
    }
    let mut etcd = cluster.client().await;
    let stored = etcd
        .get(
            format!("{prefix}r/peer/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(stored.kvs().len(), 10);
    let sum: usize = stored.kvs().iter().map(|kv| kv.value().len()).sum();
    let total = etcd
        .get(format!("{prefix}t/peer/branch"), None)
        .await
        .unwrap();
    assert_eq!(total.kvs()[0].value_str().unwrap(), sum.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_writes_loses_nothing_it_acknowledged() {
    need_etcd!();
    let (_cluster, _, mut a, b) = two_replicas(3).await;
    let mut api_a = api(&a).await;
    create_branch(&a).await;
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let name = format!("peer-{i}");
            match api_a
                .create_peer(CreatePeerRequest {
                    peer: Some(peer(&name)),
                })
                .await
            {
                Ok(_) => acknowledged.push(name),
                Err(_) => return acknowledged,
            }
        }
        unreachable!()
    });
    // Kill it once some writes are through.
    let mut api_b = api(&b).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = api_b
            .list_peers(ListPeersRequest::default())
            .await
            .unwrap()
            .into_inner();
        if listed.peers.len() >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "writes through A did not land");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.child.kill().unwrap();
    let acknowledged = writer.await.unwrap();
    assert!(acknowledged.len() >= 20);
    let mut stored = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api_b
            .list_peers(ListPeersRequest {
                page_size: 1000,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        stored.extend(page.peers.into_iter().map(|p| p.metadata.unwrap().name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_unavailable_and_subscribers_keep_their_snapshot() {
    need_etcd!();
    let mut cluster = Cluster::start(3).await;
    let prefix = prefix();
    // The default request timeout (3 s) rides out the election that losing
    // the leader starts; health turns within a second of quorum loss.
    let quick = ["--etcd-unhealthy-after-s", "1"];
    let a = replica(&cluster, &prefix, &quick);
    let mut api_a = api(&a).await;
    create_branch(&a).await;
    let mut on_a = subscribe(&a, "gw-a").await;
    let before = until(&mut on_a, 0, |s| s.site.is_some()).await;

    // One member down: nothing noticeable.
    cluster.kill(2);
    api_a
        .create_peer(CreatePeerRequest {
            peer: Some(peer("one-down")),
        })
        .await
        .unwrap();
    let with_peer = until(&mut on_a, before.version, |s| s.peers.len() == 1).await;

    // Quorum lost: writes fail UNAVAILABLE, naming etcd.
    cluster.kill(1);
    let refused = api_a
        .create_peer(CreatePeerRequest {
            peer: Some(peer("no-quorum")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("etcd") && refused.message().contains("read before"),
        "{}",
        refused.message()
    );
    // Health says so; the subscriber's stream stays open on its snapshot.
    let channel = Channel::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed SERVING without quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), on_a.message())
            .await
            .is_err(),
        "the subscriber's stream neither ended nor changed"
    );

    // Quorum back: writes go through and reach the subscriber.
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_for_quorum().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = api_a
            .create_peer(CreatePeerRequest {
                peer: Some(peer("quorum-back")),
            })
            .await;
        match attempt {
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The refused write's outcome was unknown: etcd may apply it once quorum
    // returns. The write made after that reaches the subscriber.
    let named = |s: &SiteSnapshot, name: &str| {
        s.peers
            .iter()
            .any(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
    };
    until(&mut on_a, with_peer.version, |s| {
        named(s, "one-down") && named(s, "quorum-back")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_compaction_reads_everything_again_and_misses_nothing() {
    need_etcd!();
    let (mut cluster, _, a, b) = two_replicas(1).await;
    let mut api_a = api(&a).await;
    create_branch(&a).await;
    let mut on_b = subscribe(&b, "gw-b").await;
    let before = until(&mut on_b, 0, |s| s.site.is_some()).await;

    // B frozen while its connection to etcd breaks (the member restarts),
    // A writes and etcd compacts the history B has not seen: when B runs
    // again its watch resumes from a revision that is gone.
    let pid = b.child.id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    cluster.restart(0);
    cluster.wait_for_quorum().await;
    for i in 0..50 {
        let name = format!("peer-{i}");
        let deadline = Instant::now() + Duration::from_secs(10);
        // A's first requests may meet the connection the restart broke.
        while let Err(e) = api_a
            .create_peer(CreatePeerRequest {
                peer: Some(peer(&name)),
            })
            .await
        {
            assert!(
                e.code() == Code::Unavailable && Instant::now() < deadline,
                "{e:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut client = cluster.client().await;
    let revision = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    signal("-CONT");

    let after = until(&mut on_b, before.version, |s| s.peers.len() == 50).await;
    assert!(after.version >= revision as u64);
    // B's watchers are told that it read everything again (the snapshot may
    // come first, from a recompilation B had pending when it was frozen).
    let mut events = events(&b, true).await;
    let told = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.message().await.unwrap() {
            if e.r#type == EventType::EventsLost as i32 {
                return e.message;
            }
        }
        panic!("the event feed ended");
    })
    .await
    .expect("B's watchers were told that it read everything again");
    assert!(told.contains("compacted away"), "{told}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_moving_to_another_replica_gets_only_what_is_newer() {
    need_etcd!();
    let (_cluster, _, a, b) = two_replicas(1).await;
    let mut api_a = api(&a).await;
    create_branch(&a).await;
    // B follows the site first; writes elsewhere then move the revision on,
    // so that A, following it later, versions the same content higher.
    let mut early = subscribe(&b, "early").await;
    let on_b = until(&mut early, 0, |s| s.site.is_some()).await;
    for i in 0..5 {
        let mut elsewhere = peer(&format!("elsewhere-{i}"));
        elsewhere.spec.as_mut().unwrap().site_id = "elsewhere".into();
        api_a
            .create_peer(CreatePeerRequest {
                peer: Some(elsewhere),
            })
            .await
            .unwrap();
    }
    let mut on_a = subscribe(&a, "gw").await;
    let running = until(&mut on_a, 0, |s| s.site.is_some()).await;
    assert!(
        running.version > on_b.version,
        "{} {}",
        running.version,
        on_b.version
    );
    assert_eq!(
        running.digest, on_b.digest,
        "the same content, the same digest"
    );

    // The data plane moves to B: the same content keeps its version, so
    // nothing is applied again and versions never go back.
    let mut moved = subscribe_running(&b, "gw", &running).await;
    let first = next(&mut moved).await;
    assert_eq!(
        (first.version, &first.digest),
        (running.version, &running.digest)
    );

    // Newer content reaches a data plane that runs the old one at a higher version.
    api_a
        .create_peer(CreatePeerRequest {
            peer: Some(peer("hq")),
        })
        .await
        .unwrap();
    let mut behind = subscribe_running(&b, "gw-2", &running).await;
    let newer = until(&mut behind, running.version - 1, |s| s.peers.len() == 1).await;
    assert!(newer.version > running.version);
    assert_ne!(newer.digest, running.digest);
    // The moved data plane gets it too.
    until(&mut moved, first.version, |s| s.peers.len() == 1).await;
}

/// The value of an unlabelled gauge in a `/metrics` text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_compacts_and_another_takes_over_within_the_lease() {
    need_etcd!();
    let cluster = Cluster::start(1).await;
    let prefix = prefix();
    let duties = ["--etcd-lease-ttl-s", "2", "--etcd-compact-every-s", "1"];
    let mut replicas = vec![
        replica(&cluster, &prefix, &duties),
        replica(&cluster, &prefix, &duties),
    ];
    let leading = |r: &common::Running| gauge(&r.scrape(), "patronus_controlplane_leader");
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let leads: Vec<Option<f64>> = replicas.iter().map(leading).collect();
        if leads.iter().filter(|l| **l == Some(1.0)).count() == 1
            && leads.iter().all(|l| l.is_some())
        {
            break leads.iter().position(|l| *l == Some(1.0)).unwrap();
        }
        assert!(Instant::now() < deadline, "no single leader: {leads:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The leader compacts: a revision from before its last round is gone.
    let mut client = cluster.client().await;
    client.put("/test/marker", "1", None).await.unwrap();
    let old = client.get("/test/marker", None).await.unwrap();
    let old = old.header().unwrap().revision();
    client.put("/test/marker", "2", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let at_old = client
            .get(
                "/test/marker",
                Some(etcd_client::GetOptions::new().with_revision(old)),
            )
            .await;
        if at_old.is_err_and(|e| e.to_string().contains("compacted")) {
            break;
        }
        assert!(Instant::now() < deadline, "revision {old} never compacted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gauge(
            &replicas[leader].scrape(),
            "patronus_controlplane_etcd_compactions_total"
        )
        .is_some_and(|n| n >= 1.0),
        "the leader counted its compactions"
    );

    // The leader dies: the other leads once the lease has run out.
    let killed = Instant::now();
    replicas.remove(leader).child.kill().unwrap();
    let survivor = &replicas[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while leading(survivor) != Some(1.0) {
        assert!(Instant::now() < deadline, "no one took the lead over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the survivor leads {:?} after the leader was killed",
        killed.elapsed()
    );
}

/// What `replica` says of the data plane `id` of site `branch`.
async fn listed(replica: &common::Running, id: &str) -> Option<Dataplane> {
    api(replica)
        .await
        .list_dataplanes(ListDataplanesRequest {
            site_id: "branch".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .dataplanes
        .into_iter()
        .find(|d| d.dataplane_id == id)
}

/// Waits up to `within` for `replica` to say of `id` what `done` wants.
async fn listed_until(
    replica: &common::Running,
    id: &str,
    within: Duration,
    done: impl Fn(Option<&Dataplane>) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let now = listed(replica, id).await;
        if done(now.as_ref()) {
            return;
        }
        assert!(Instant::now() < deadline, "after {within:?}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events from `feed` until one of each of `kinds` about data plane `id`
/// has come, in any order (a replica learns a data plane's connection and
/// what it did in the order etcd has them, which a burst may interleave);
/// all of them, in order.
async fn events_of(feed: &mut Streaming<Event>, kinds: &[EventType], id: &str) -> Vec<Event> {
    let mut seen: Vec<Event> = Vec::new();
    let missing = |seen: &[Event]| -> Vec<EventType> {
        kinds
            .iter()
            .copied()
            .filter(|k| {
                !seen
                    .iter()
                    .any(|e| e.r#type == *k as i32 && e.dataplane_id == id)
            })
            .collect()
    };
    while !missing(&seen).is_empty() {
        let e = tokio::time::timeout(Duration::from_secs(10), feed.message())
            .await
            .unwrap_or_else(|_| {
                panic!("no {:?} of {id} within 10 s after {seen:?}", missing(&seen))
            })
            .unwrap()
            .expect("feed open");
        seen.push(e);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_answers_for_the_whole_fleet_and_the_leader_forgets_who_left() {
    need_etcd!();
    let cluster = Cluster::start(1).await;
    let prefix = prefix();
    let args = ["--etcd-lease-ttl-s", "2", "--dataplane-expiry-s", "3"];
    let a = replica(&cluster, &prefix, &args);
    let b = replica(&cluster, &prefix, &args);
    create_branch(&a).await;
    let mut feed_b = events(&b, true).await;

    // A data plane on A subscribes, applies its snapshot and reports a tunnel up.
    let mut stream = subscribe(&a, "gw").await;
    let snapshot = until(&mut stream, 0, |s| s.site.is_some()).await;
    let mut sync_a = DataplaneSyncClient::connect(format!("http://{}", a.addr))
        .await
        .unwrap();
    sync_a
        .acknowledge(AcknowledgeRequest {
            site_id: "branch".into(),
            dataplane_id: "gw".into(),
            version: snapshot.version,
            result: AckResult::Ack as i32,
            reason: String::new(),
            epoch: snapshot.epoch,
        })
        .await
        .unwrap();
    let report = TelemetryReport {
        site_id: "branch".into(),
        dataplane_id: "gw".into(),
        counters: Some(DataplaneCounters {
            rx_packets: 42,
            ..Default::default()
        }),
        peers: vec![PeerTelemetry {
            name: "hq".into(),
            tunnel: TunnelState::Up as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    sync_a.report(tokio_stream::iter([report])).await.unwrap();

    // B, which the data plane never spoke to, knows all of it.
    listed_until(&b, "gw", Duration::from_secs(5), |d| {
        d.is_some_and(|d| d.connected && d.applied_version == snapshot.version)
    })
    .await;
    let seen = events_of(
        &mut feed_b,
        &[
            EventType::DataplaneConnected,
            EventType::SnapshotApplied,
            EventType::TunnelUp,
        ],
        "gw",
    )
    .await;
    assert!(
        seen.iter()
            .any(|e| e.r#type == EventType::SnapshotApplied as i32 && e.version == snapshot.version),
        "{seen:?}"
    );
    let topology = api(&b)
        .await
        .get_topology(GetTopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    let branch = topology
        .sites
        .iter()
        .find(|s| s.site_id == "branch")
        .unwrap();
    assert_eq!(branch.dataplanes_connected, 1, "{topology:?}");

    // One replica, the leader, exports the fleet; each counts what it serves.
    let connected = "patronus_fleet_dataplane_connected{site=\"branch\",dataplane=\"gw\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let texts = [a.scrape(), b.scrape()];
        let exporting = texts.iter().filter(|t| t.contains(connected)).count();
        let leaders = texts
            .iter()
            .filter(|t| gauge(t, "patronus_controlplane_leader") == Some(1.0))
            .count();
        if exporting == 1 && leaders == 1 {
            assert_eq!(
                gauge(&texts[0], "patronus_controlplane_dataplanes_served"),
                Some(1.0)
            );
            assert_eq!(
                gauge(&texts[1], "patronus_controlplane_dataplanes_served"),
                Some(0.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{exporting} replicas export the fleet, {leaders} lead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A dies with the data plane on it: B shows it disconnected within the
    // lease TTL, keeps what it last reported, then (leading now) forgets
    // it after the expiry.
    let mut a = a;
    a.child.kill().unwrap();
    let killed = Instant::now();
    drop(stream);
    listed_until(&b, "gw", Duration::from_secs(4), |d| {
        d.is_some_and(|d| !d.connected && d.applied_version == snapshot.version)
    })
    .await;
    println!(
        "B shows the data plane gone {:?} after A was killed",
        killed.elapsed()
    );
    events_of(&mut feed_b, &[EventType::DataplaneDisconnected], "gw").await;
    listed_until(&b, "gw", Duration::from_secs(15), |d| d.is_none()).await;
    println!("B forgot it {:?} after A was killed", killed.elapsed());
}

/// The control plane's arguments for `cluster` (TLS) under `prefix`, as `user`.
fn secured_args(
    cluster: &Cluster,
    prefix: &str,
    tls: &common::etcd::Tls,
    password: &str,
) -> Vec<String> {
    let path = |name: &str, text: &str| cluster.file(name, text).display().to_string();
    vec![
        "--store".into(),
        cluster.store_arg(),
        "--etcd-prefix".into(),
        prefix.into(),
        "--etcd-ca".into(),
        path("client-ca.crt", &tls.ca),
        "--etcd-cert".into(),
        path("client.crt", &tls.client.0),
        "--etcd-key".into(),
        path("client.key", &tls.client.1),
        "--etcd-user".into(),
        "patronus".into(),
        "--etcd-password-file".into(),
        path(&format!("password-{password}"), password),
        // Compaction is cluster-wide: only etcd's root may do it.
        "--etcd-compact-every-s".into(),
        "0".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_etcd_over_mutual_tls_as_an_etcd_user_of_their_prefix() {
    need_etcd!();
    let ca = common::pki::ca("etcd CA");
    let tls = common::etcd::Tls {
        ca: ca.pem.clone(),
        server: common::pki::leaf(&ca, &["127.0.0.1"]),
        client: common::pki::leaf(&ca, &["patronus-controlplane"]),
    };
    let cluster = Cluster::start_with(1, Some(tls.clone())).await;
    let prefix = prefix();
    // etcd's authentication: root, and a user that may use the prefix only.
    let mut admin = cluster.client().await;
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("patronus").await.unwrap();
    admin
        .role_grant_permission(
            "patronus",
            etcd_client::Permission::read_write(prefix.clone()).with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("patronus", "s3cret", None).await.unwrap();
    admin.user_grant_role("patronus", "patronus").await.unwrap();
    admin.auth_enable().await.unwrap();

    let args = secured_args(&cluster, &prefix, &tls, "s3cret");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let secured = common::start_on(args[1], &args[2..]);
    let created = create_branch(&secured).await;
    let mut on_it = subscribe(&secured, "gw").await;
    let snapshot = until(&mut on_it, 0, |s| s.site.is_some()).await;
    assert!(snapshot.version >= created.metadata.unwrap().resource_version);

    // A wrong password stops the start with etcd's word for it.
    let wrong = secured_args(&cluster, &prefix, &tls, "wrong");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_patronus-controlplane"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .args(&wrong)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("connecting to etcd") && stderr.contains("authentication failed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "the password is never shown: {stderr}"
    );
}

/// Every resource `server` holds, resource versions cleared (each store
/// counts its own).
async fn everything(server: &common::Running) -> Vec<String> {
    let mut c = api(server).await;
    let clear = |m: &mut Option<ObjectMeta>| m.as_mut().unwrap().resource_version = 0;
    let mut all = Vec::new();
    for mut s in c
        .list_sites(ListSitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sites
    {
        clear(&mut s.metadata);
        all.push(format!("{s:?}"));
    }
    for mut p in c
        .list_peers(ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers
    {
        clear(&mut p.metadata);
        p.status = None;
        all.push(format!("{p:?}"));
    }
    let policies = c
        .list_policies(ListPoliciesRequest::default())
        .await
        .unwrap();
    for mut p in policies.into_inner().policies {
        clear(&mut p.metadata);
        all.push(format!("{p:?}"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_migrates_from_a_redb_file_to_etcd_and_back_exactly() {
    need_etcd!();
    let cluster = Cluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        dir.path().join("first.redb"),
        dir.path().join("second.redb"),
    );
    let original = {
        let server = common::start_on_file(&first);
        let docs =
            patronus_controlplane::manifest::parse(include_str!("data/production.yaml")).unwrap();
        let mut c = api(&server).await;
        for doc in &docs {
            use patronus_controlplane::manifest::{self as m, Document};
            match doc {
                Document::Site(d) => drop(
                    c.create_site(CreateSiteRequest {
                        site: Some(m::site(d)),
                    })
                    .await
                    .unwrap(),
                ),
                Document::Peer(d) => drop(
                    c.create_peer(CreatePeerRequest {
                        peer: Some(m::peer(d)),
                    })
                    .await
                    .unwrap(),
                ),
                Document::Policy(d) => drop(
                    c.create_policy(CreatePolicyRequest {
                        policy: Some(m::policy(d).unwrap()),
                    })
                    .await
                    .unwrap(),
                ),
                _ => {}
            }
        }
        everything(&server).await
    };
    assert!(original.len() >= 3, "{original:?}");
    let prefix = prefix();
    let migrate = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_patronus-controlplane"))
            .args(args)
            .output()
            .unwrap()
    };
    let to_etcd = vec![
        "--db".to_owned(),
        first.display().to_string(),
        "--migrate-to".into(),
        cluster.store_arg(),
        "--etcd-prefix".into(),
        prefix.clone(),
    ];
    let out = migrate(to_etcd.clone());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("copied 1 sites, 1 peers, 1 policies, 0 applications")
            && said.contains("the copy matches"),
        "{said}"
    );
    // Into a store that holds something already: refused.
    let again = migrate(to_etcd);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("migrate into an empty store"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let back = migrate(vec![
        "--store".into(),
        cluster.store_arg(),
        "--etcd-prefix".into(),
        prefix.clone(),
        "--migrate-to".into(),
        format!("redb:{}", second.display()),
    ]);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );

    // Both copies serve what the original held, uids and times included.
    let on_etcd = replica(&cluster, &prefix, &[]);
    assert_eq!(everything(&on_etcd).await, original);
    let on_redb = common::start_on_file(&second);
    assert_eq!(everything(&on_redb).await, original);
}
