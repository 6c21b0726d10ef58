//! Failover of data-plane streams between control-plane replicas:
//! `--subscribers` simulated data planes subscribe through the first
//! replica of `--addr`; once each has its snapshot, the replica's process
//! (`--kill-pid`) is killed (SIGKILL). Each subscriber then does what the
//! data plane's agent does on a broken stream: waits its first backoff
//! (uniform in [min/2, min], `--reconnect-min-ms` as the agent's
//! `reconnect_min_ms`, default 250), subscribes through the next replica
//! presenting the snapshot it runs, and counts as moved at its first
//! snapshot there. Prints p50, p99 and the largest time from the kill.
//!
//! `cargo run --release -p patronus-controlplane --example stream_failover -- --addr A,B --kill-pid 1234`

use std::time::{Duration, Instant};

use clap::Parser;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::*;
use tokio::sync::mpsc;

/// Stream failover benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// The replicas; subscribers start on the first and move to the second.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    /// The first replica's process id, killed once every subscriber is on it.
    #[arg(long)]
    kill_pid: u32,
    /// Simulated data planes.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// The agent's first reconnection wait, in milliseconds.
    #[arg(long, default_value_t = 250)]
    reconnect_min_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.addr.len() == 2, "--addr names two replicas");
    let (first, second) = (
        format!("http://{}", args.addr[0]),
        format!("http://{}", args.addr[1]),
    );
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<()>();
    let (moved_tx, mut moved) = mpsc::unbounded_channel::<Instant>();
    let min = Duration::from_millis(args.reconnect_min_ms);
    for i in 0..args.subscribers {
        let subscribe = SubscribeRequest {
            site_id: format!("failover-{i}"),
            dataplane_id: format!("sim-{i}"),
            ..Default::default()
        };
        let mut stream = DataplaneSyncClient::connect(first.clone())
            .await?
            .subscribe(subscribe.clone())
            .await?
            .into_inner();
        let running = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
        let (ready_tx, moved_tx, second) = (ready_tx.clone(), moved_tx.clone(), second.clone());
        tokio::spawn(async move {
            let _ = ready_tx.send(());
            // Until the stream breaks.
            while let Ok(Some(_)) = stream.message().await {}
            // The agent's first wait: uniform in [min/2, min].
            let jitter = (i as u64 * 7919) % 1000;
            tokio::time::sleep(min / 2 + min.mul_f64(jitter as f64 / 2000.0)).await;
            let request = SubscribeRequest {
                running_epoch: running.epoch,
                running_version: running.version,
                running_digest: running.digest.clone(),
                ..subscribe
            };
            loop {
                let attempt = async {
                    let mut stream = DataplaneSyncClient::connect(second.clone())
                        .await?
                        .subscribe(request.clone())
                        .await?
                        .into_inner();
                    anyhow::Ok(stream.message().await?.is_some())
                };
                if let Ok(true) = attempt.await {
                    let _ = moved_tx.send(Instant::now());
                    return;
                }
                tokio::time::sleep(min).await;
            }
        });
    }
    for _ in 0..args.subscribers {
        ready.recv().await;
    }
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &args.kill_pid.to_string()])
        .status()?;
    let mut times = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        let at = tokio::time::timeout(Duration::from_secs(30), moved.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscribers gone"))?;
        times.push(at - killed);
    }
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{} subscribers moved to the other replica: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms after the kill",
        times.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
