//! Acknowledged writes survive `kill -9` of the real `patronus-controlplane`
//! binary, at random points in a stream of writes.

mod common;

use std::time::{Duration, Instant};

use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::*;

use common::fixtures::site;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.redb");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    println!("seed {seed}");
    let mut rng = seed | 1;
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..5 {
        let server = common::start(&db, None);
        let addr = server.addr.clone();
        let mut c = ControlPlaneClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        // Everything acknowledged before, in any earlier round, is there.
        for name in &acknowledged {
            let got = c.get_site(GetSiteRequest { name: name.clone() }).await;
            assert!(
                got.is_ok(),
                "round {round}: acknowledged site {name} lost (seed {seed})"
            );
        }
        // Write until killed at a random moment (20-220 ms in).
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let kill_at = Instant::now() + Duration::from_millis(20 + u64::from(rng % 200));
        let mut i = 0;
        while Instant::now() < kill_at {
            let name = format!("r{round}-s{i}");
            if c.create_site(CreateSiteRequest {
                site: Some(site(&name, "")),
            })
            .await
            .is_ok()
            {
                acknowledged.push(name);
            }
            i += 1;
        }
        // A write in flight when the process dies may or may not land; it was not acknowledged.
        let in_flight = tokio::spawn({
            let mut c = c.clone();
            async move {
                c.create_site(CreateSiteRequest {
                    site: Some(site(&format!("r{round}-inflight"), "")),
                })
                .await
            }
        });
        drop(server); // SIGKILL
        if let Ok(Ok(_)) = in_flight.await {
            acknowledged.push(format!("r{round}-inflight"));
        }
    }
    let server = common::start(&db, None);
    let mut c = ControlPlaneClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    for name in &acknowledged {
        assert!(
            c.get_site(GetSiteRequest { name: name.clone() })
                .await
                .is_ok(),
            "{name} lost (seed {seed})"
        );
    }
    assert!(acknowledged.len() > 5, "the test wrote something");
}
