//! Config propagation benchmark: `--sites` sites in the control plane,
//! `--subscribers` simulated data planes (one per site, each acknowledging
//! every snapshot it receives), then `--updates` writes, one at a time, each
//! to a site with a subscriber. Measures, per write, the time from sending
//! it to the affected data plane's acknowledgement of the version that
//! carries it. Prints p50 and p99. With several replicas (`--addr A,B,C`)
//! the writes go through the first and the subscribers are spread over all.
//!
//! `cargo run --release -p patronus-controlplane --example propagation -- --addr 127.0.0.1:50051 --sites 10000`

use std::time::{Duration, Instant};

use clap::Parser;
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;

#[path = "../tests/common/fixtures.rs"]
mod fixtures;
use fixtures::site;
use tokio::sync::mpsc;

/// Propagation benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// The control plane's address; several replicas' separated by commas.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    /// Sites to create first.
    #[arg(long, default_value_t = 1000)]
    sites: usize,
    /// Simulated data planes (each subscribes for one site).
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Writes to time.
    #[arg(long, default_value_t = 300)]
    updates: usize,
    /// Prefix of the site names (one run's names must be new).
    #[arg(long, default_value = "prop")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let urls: Vec<String> = args.addr.iter().map(|a| format!("http://{a}")).collect();
    let url = urls[0].clone();
    let names: Vec<String> = (0..args.sites)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    // Create the sites with 64 writers.
    let created = Instant::now();
    let chunks: Vec<Vec<String>> = names
        .chunks(args.sites.div_ceil(64))
        .map(<[String]>::to_vec)
        .collect();
    let mut writers = Vec::new();
    for chunk in chunks {
        let mut c = ControlPlaneClient::connect(url.clone()).await?;
        writers.push(tokio::spawn(async move {
            for n in chunk {
                c.create_site(CreateSiteRequest {
                    site: Some(site(&n, "v0")),
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    eprintln!(
        "{} sites created in {:.1} s",
        args.sites,
        created.elapsed().as_secs_f64()
    );

    // Subscribers: each acknowledges every snapshot and reports (site, display name) when it has.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, String, Instant)>();
    for (i, name) in names.iter().take(args.subscribers).enumerate() {
        let mut sync = DataplaneSyncClient::connect(urls[i % urls.len()].clone()).await?;
        let mut stream = sync
            .subscribe(SubscribeRequest {
                site_id: name.clone(),
                dataplane_id: format!("sim-{i}"),
                ..Default::default()
            })
            .await?
            .into_inner();
        let seen = seen_tx.clone();
        let name = name.clone();
        tokio::spawn(async move {
            while let Ok(Some(snapshot)) = stream.message().await {
                let display = snapshot
                    .site
                    .as_ref()
                    .and_then(|s| s.spec.as_ref())
                    .map(|s| s.display_name.clone());
                let ack = AcknowledgeRequest {
                    site_id: name.clone(),
                    dataplane_id: format!("sim-{i}"),
                    version: snapshot.version,
                    result: AckResult::Ack as i32,
                    reason: String::new(),
                    epoch: snapshot.epoch,
                };
                if sync.acknowledge(ack).await.is_err() {
                    return;
                }
                let _ = seen.send((name.clone(), display.unwrap_or_default(), Instant::now()));
            }
        });
    }
    // Let the initial snapshots settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while seen_rx.try_recv().is_ok() {}

    let mut api = ControlPlaneClient::connect(url).await?;
    let mut latencies = Vec::with_capacity(args.updates);
    for u in 0..args.updates {
        let name = &names[u % args.subscribers.min(args.sites)];
        let current = api
            .get_site(GetSiteRequest { name: name.clone() })
            .await?
            .into_inner()
            .site
            .unwrap_or_default();
        let mut next = current.clone();
        let display = format!("v{}", u + 1);
        next.spec.get_or_insert_with(Default::default).display_name = display.clone();
        let start = Instant::now();
        api.update_site(UpdateSiteRequest { site: Some(next) })
            .await?;
        loop {
            let (site, shown, at) = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("subscribers gone"))?;
            if &site == name && shown == display {
                latencies.push(at - start);
                break;
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{} sites, {} subscribers on {} replica(s), {} writes: propagation p50 {:.2} ms, p99 {:.2} ms",
        args.sites,
        args.subscribers,
        urls.len(),
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
