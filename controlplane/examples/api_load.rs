//! Load generator for the public API: `--clients` concurrent gRPC clients
//! (each on its own HTTP/2 connection) create `--writes` sites in all, as
//! fast as the server acknowledges them. Prints writes per second and the
//! latency percentiles of one write.
//!
//! `cargo run --release -p patronus-controlplane --example api_load -- --addr 127.0.0.1:50051 --writes 20000 --clients 64`

use std::time::{Duration, Instant};

use clap::Parser;
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::*;

#[path = "../tests/common/fixtures.rs"]
mod fixtures;
use fixtures::site;

/// Public API load generator.
#[derive(Debug, Parser)]
struct Args {
    /// The control plane's address.
    #[arg(long)]
    addr: String,
    /// Writes in all.
    #[arg(long, default_value_t = 20_000)]
    writes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Prefix of the site names (one run's names must be new).
    #[arg(long, default_value = "load")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let per_client = args.writes.div_ceil(args.clients);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for client in 0..args.clients {
        let mut c = ControlPlaneClient::connect(format!("http://{}", args.addr)).await?;
        let prefix = args.prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let name = format!("{prefix}-{client}-{i}");
                let t = Instant::now();
                c.create_site(CreateSiteRequest {
                    site: Some(site(&name, "")),
                })
                .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{} writes by {} clients in {:.2} s: {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        args.clients,
        elapsed,
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
    );
    Ok(())
}
