//! The anchor of the control plane's etcd write rate: `--clients`
//! concurrent etcd clients (each on its own connection) put `--puts` keys
//! in all, of `--value-bytes` each (about what one stored site takes), as
//! fast as etcd acknowledges them (a quorum commit each). Prints puts per
//! second: what etcd itself does on this machine at that concurrency.
//!
//! `cargo run --release -p patronus-controlplane --example etcd_put -- --endpoints http://127.0.0.1:2379 --clients 64`

use std::time::Instant;

use clap::Parser;

/// etcd put load generator.
#[derive(Debug, Parser)]
struct Args {
    /// etcd client URLs, separated by commas.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Puts in all.
    #[arg(long, default_value_t = 20_000)]
    puts: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Bytes of each value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Key prefix (one run's keys must be new).
    #[arg(long, default_value = "/bench/put/")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let per_client = args.puts.div_ceil(args.clients);
    let value = vec![b'x'; args.value_bytes];
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(etcd_client::Client::connect(&args.endpoints, None).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let (value, prefix) = (value.clone(), args.prefix.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                client
                    .put(format!("{prefix}{c}/{i}"), value.clone(), None)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let puts = per_client * args.clients;
    println!(
        "{puts} puts, {} clients: {:.0} puts/s",
        args.clients,
        puts as f64 / elapsed
    );
    Ok(())
}
