//! Bringing the data plane up and down: EAL, buffer pool, ports, workers,
//! the metrics endpoint, and the control loop that runs on the main lcore
//! (neighbour table upkeep, configuration reload on SIGHUP, shutdown on
//! SIGINT/SIGTERM).
//!
//! Shutdown order matters and is checked: workers stop and free what they
//! hold, the metrics server lets go of its port handles, the ports stop and
//! close (returning their ring buffers), and only then is the pool's in-use
//! count compared with zero. A leak makes the process exit with
//! [`EXIT_LEAK`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::agent::{
    Agent, AgentSetup, AgentStatus, ApplyRequest, Telemetry, TelemetrySource, EVENT_QUEUE,
};
use crate::dpdk::{
    self, launch_on_lcore, worker_lcores, Eal, Mempool, Port, PortConfig, BURST_SIZE,
};
use crate::metrics::{DataplaneCollector, Health, HttpServer};
use crate::worker::{Clock, DpdkHost, DpdkRx, DpdkWorker};
use patronus_core::config::site::{classifier_with, Capabilities, SiteSections};
use patronus_core::config::{Config, Snapshot};
use patronus_core::neighbor::{NeighborManager, NeighborShared};
use patronus_core::published::Published;
use patronus_core::stats::Counter;
use patronus_core::stats::SharedCounters;
use patronus_core::worker::{tunnel_inboxes, WorkerSetup};
use patronus_proto::v1::{
    DataplaneCounters, DataplaneEvent, EventType, PeerTelemetry, TunnelState,
};

/// Exit status when packet buffers were still in use after shutdown.
pub const EXIT_LEAK: u8 = 3;

/// How often the control loop runs.
const CONTROL_PERIOD: Duration = Duration::from_millis(10);
/// Neighbour-event channel capacity per worker.
const EVENT_CHANNEL: usize = 1024;

/// What `patronus-dataplane` was asked to run.
#[derive(Debug)]
pub struct RunOptions {
    /// The parsed configuration.
    pub config: Config,
    /// Where it came from (re-read on SIGHUP); `None` for the embedded default.
    pub config_path: Option<PathBuf>,
    /// EAL arguments from the command line, appended to the config's.
    pub extra_eal_args: Vec<String>,
}

/// Packet buffers needed: every ring full, every worker's burst, cache and
/// pending queue, plus slack for replies and requests in flight.
fn auto_pool_size(cfg: &Config, workers: u32) -> u32 {
    let rings: u32 = cfg
        .ports
        .iter()
        .map(|p| (u32::from(p.rx_ring) + u32::from(p.tx_ring) + 2 * BURST_SIZE as u32) * workers)
        .sum();
    let per_worker = cfg.dpdk.mempool_cache
        + BURST_SIZE as u32
        + cfg.neighbors.pending_neighbors * cfg.neighbors.pending_per_neighbor;
    let needed = rings + per_worker * workers + 1024;
    // DPDK pools are most efficient at 2^n - 1 elements.
    needed.next_power_of_two().max(4096) - 1
}

/// Runs the data plane until SIGINT or SIGTERM. Returns the exit status.
///
/// # Errors
/// When the configuration is invalid, EAL or a port fails to start, or the
/// metrics address cannot be bound.
pub fn run(opts: RunOptions) -> anyhow::Result<u8> {
    let mut snapshot = opts.config.validate(1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;

    let mut eal_args = vec!["patronus-dataplane".to_owned()];
    eal_args.extend(opts.config.dpdk.eal_args.iter().cloned());
    eal_args.extend(opts.extra_eal_args.iter().cloned());
    tracing::info!(args = ?&eal_args[1..], dpdk = dpdk_sys::DPDK_PKG_VERSION, "starting EAL");
    let eal = Eal::init(&eal_args)
        .context("EAL initialisation failed (check dpdk.eal_args and hugepages.md)")?;
    let lcores = worker_lcores(&eal);
    if lcores.is_empty() {
        bail!("EAL has no worker lcore: give at least two lcores, e.g. `-l 0-1` in dpdk.eal_args");
    }
    let workers = lcores.len() as u16;

    let pool_size = match opts.config.dpdk.mempool_size {
        0 => auto_pool_size(&opts.config, u32::from(workers)),
        n => n,
    };
    let socket = i32::try_from(eal.lcore_socket(lcores[0])).unwrap_or(-1);
    let pool = Arc::new(
        Mempool::new(
            &eal,
            "patronus_mbufs",
            pool_size,
            opts.config.dpdk.mempool_cache,
            2048 + 128,
            socket,
        )
        .context("creating the packet buffer pool (see hugepages.md)")?,
    );
    tracing::info!(buffers = pool_size, "packet buffer pool created");

    let mut ports = Vec::with_capacity(opts.config.ports.len());
    for p in &opts.config.ports {
        let id = Port::id_by_name(&eal, &p.device)
            .with_context(|| format!("port {:?}: no DPDK device named {:?} (add it with --vdev or check the PCI address)", p.name, p.device))?;
        let port_config = PortConfig {
            rx_queues: workers,
            tx_queues: workers,
            rx_ring: p.rx_ring,
            tx_ring: p.tx_ring,
            promiscuous: p.promiscuous,
            mtu: None,
        };
        let port = Port::start(&eal, id, &p.name, &port_config, pool.clone())
            .with_context(|| format!("starting port {:?}", p.name))?;
        tracing::info!(
            port = %p.name, id = %port.id(), driver = port.driver(), mac = %format_mac(port.mac()),
            queues = workers, rss = port.rss_enabled(), link_up = port.link().up,
            "port started"
        );
        ports.push(port);
    }
    let macs: Vec<[u8; 6]> = ports.iter().map(Port::mac).collect();
    snapshot.set_port_macs(&macs);
    let config = Arc::new(Published::new(snapshot.clone()));
    let mut running_config = opts.config.clone();

    let neighbors = Arc::new(NeighborShared::default());
    let hz = dpdk::tsc_hz();
    let clock = Clock::new(hz);
    let health = Arc::new(Health::default());
    let mut stats = Vec::with_capacity(lcores.len());
    let mut dpi_stats = Vec::with_capacity(lcores.len());
    let mut tunnel_stats = Vec::with_capacity(lcores.len());
    if lcores.len() > patronus_core::tunnel::MAX_WORKERS {
        bail!(
            "{} workers, but the tunnel engine supports at most {}; give EAL fewer lcores",
            lcores.len(),
            patronus_core::tunnel::MAX_WORKERS
        );
    }
    let inboxes = tunnel_inboxes(lcores.len());
    // Every worker reports what it learns into one bounded channel that the
    // neighbour manager drains.
    let (events, event_receiver) = crossbeam_channel::bounded(EVENT_CHANNEL * lcores.len());
    let mut handles = Vec::with_capacity(lcores.len());
    for (index, &lcore) in lcores.iter().enumerate() {
        let shared = Arc::new(SharedCounters::default());
        stats.push(shared.clone());
        let queue = index as u16;
        let rx = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let rxq = p.rx_queue(queue).expect("each rx queue is handed out once");
                (i as u16, DpdkRx::new(rxq))
            })
            .collect();
        let tx = ports
            .iter()
            .map(|p| p.tx_queue(queue).expect("each tx queue is handed out once"))
            .collect();
        let setup = WorkerSetup {
            index,
            rx,
            tx,
            host: DpdkHost::new(pool.clone(), clock),
            config: config.clone(),
            neighbors: neighbors.clone(),
            events: events.clone(),
            stats: shared,
            stop: stop.clone(),
            seed: seed_for(index),
            inboxes: inboxes.clone(),
            tunnel_stats: {
                let shared = Arc::new(patronus_core::stats::SharedTunnelStats::default());
                tunnel_stats.push(shared.clone());
                shared
            },
        };
        // The flow table is allocated here, before the lcore starts polling.
        let worker = DpdkWorker::new(setup);
        dpi_stats.push(worker.pipeline().dpi_counters());
        let alive = health.clone();
        alive.workers_alive.fetch_add(1, Ordering::AcqRel);
        alive.workers_total.fetch_add(1, Ordering::AcqRel);
        let handle = launch_on_lcore(&eal, lcore, move || {
            tracing::info!(worker = index, "worker started");
            worker.run();
            tracing::info!(worker = index, "worker stopped");
            alive.workers_alive.fetch_sub(1, Ordering::AcqRel);
            0
        })
        .with_context(|| format!("launching worker {index} on {lcore}"))?;
        handles.push(handle);
    }

    // Queued work holds packet buffers: only workers keep the queues, so
    // they go (and free what they hold) when the last worker exits.
    drop(inboxes);

    let mut manager = NeighborManager::new(
        snapshot.neighbors.clone(),
        neighbors.clone(),
        event_receiver,
    );
    manager.configure(&snapshot.neighbors, &snapshot.static_neighbors);
    manager.tick(clock.now_ns());

    let agent_status = Arc::new(AgentStatus::default());
    let (apply_tx, mut apply_rx) = tokio::sync::mpsc::channel::<ApplyRequest>(1);
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let agent = if opts.config.controlplane.is_managed() {
        let setup = AgentSetup {
            apply: apply_tx,
            status: agent_status.clone(),
            telemetry: telemetry_source(
                ports.clone(),
                stats.clone(),
                tunnel_stats.clone(),
                config.clone(),
            ),
            events: events_rx,
            config: config.clone(),
        };
        let agent = Agent::start(&opts.config.controlplane, setup)?;
        tracing::info!(
            server = opts.config.controlplane.server,
            site = opts.config.controlplane.site_id,
            "the site's configuration comes from the control plane"
        );
        Some(agent)
    } else {
        drop((apply_tx, events_rx));
        None
    };
    // Reports an event to the control plane, if there is one; never blocks.
    let report = |kind: EventType, subject: &str, message: String| {
        let _ = events_tx.try_send(DataplaneEvent {
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            r#type: kind as i32,
            subject: subject.to_owned(),
            message,
        });
    };
    // The control plane's sections in force, re-checked when the file is reloaded.
    let mut managed: Option<(SiteSections, u64)> = None;

    let http = match opts.config.metrics.listen.as_str() {
        "" => None,
        addr => {
            let addr: SocketAddr = addr.parse().context("metrics.listen")?;
            let collector = DataplaneCollector {
                ports: ports.clone(),
                workers: stats.clone(),
                pool: pool.clone(),
                neighbors: neighbors.clone(),
                config: config.clone(),
                dpi: dpi_stats.clone(),
                agent: agent.is_some().then(|| agent_status.clone()),
                tunnels: tunnel_stats.clone(),
            };
            let server = HttpServer::start(addr, collector, health.clone())
                .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
            tracing::info!(addr = %server.local_addr(), "metrics and health endpoint listening");
            Some(server)
        }
    };
    health.running.store(true, Ordering::Release);
    tracing::info!(workers, lcores = ?lcores, "data plane running");

    let mut link_up: Vec<bool> = ports.iter().map(|p| p.link().up).collect();
    let mut republish_at = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CONTROL_PERIOD);
        let now = clock.now_ns();
        // Republish periodically so that entries going stale are noticed by
        // cached flows (their generation changes, they look the entry up).
        let force = now >= republish_at;
        if force {
            republish_at = now + u64::from(config.load().neighbors.reachable_s) * 500_000_000;
        }
        manager.tick_with(now, force);
        while let Ok(request) = apply_rx.try_recv() {
            let version = request.version;
            let outcome = apply_snapshot(&request, &config, managed.as_ref());
            match &outcome {
                Ok(()) => {
                    tracing::info!(
                        version,
                        generation = config.load().generation,
                        "control-plane snapshot applied"
                    );
                    managed = Some((request.sections, version));
                }
                Err(err) => tracing::warn!(version, "control-plane snapshot refused: {err}"),
            }
            let _ = request.reply.send(outcome.map_err(|e| e.to_string()));
        }
        if reload.swap(false, Ordering::Relaxed) {
            match reload_config(
                opts.config_path.as_deref(),
                &running_config,
                &config,
                &macs,
                managed.as_ref(),
            ) {
                Ok((new_config, new_snapshot)) => {
                    manager.configure(&new_snapshot.neighbors, &new_snapshot.static_neighbors);
                    tracing::info!(
                        generation = new_snapshot.generation,
                        "configuration reloaded"
                    );
                    report(
                        EventType::ConfigReloaded,
                        "",
                        format!("generation {}", new_snapshot.generation),
                    );
                    running_config = new_config;
                }
                Err(err) => {
                    tracing::error!(
                        "reload refused, the running configuration stays in force: {err:#}"
                    );
                    report(EventType::ConfigRefused, "", format!("{err:#}"));
                }
            }
        }
        for (i, port) in ports.iter().enumerate() {
            let up = port.link().up;
            if up != link_up[i] {
                let name = &running_config.ports[i].name;
                tracing::warn!(port = %name, up, "link state changed");
                let kind = if up {
                    EventType::LinkUp
                } else {
                    EventType::LinkDown
                };
                report(kind, name, String::new());
                link_up[i] = up;
            }
        }
        // Workers also leave when the stop flag is set by a signal; only an
        // exit without one is a failure.
        if health.workers_alive.load(Ordering::Acquire) < lcores.len()
            && !stop.load(Ordering::Relaxed)
        {
            tracing::error!("a worker exited unexpectedly; shutting down");
            report(
                EventType::WorkerFailed,
                "",
                "a worker exited unexpectedly; the data plane is shutting down".into(),
            );
            stop.store(true, Ordering::Relaxed);
        }
    }

    tracing::info!("shutting down");
    if let Some(agent) = agent {
        agent.stop();
    }
    health.running.store(false, Ordering::Release);
    stop.store(true, Ordering::Relaxed);
    let mut worker_failed = false;
    for handle in handles {
        let lcore = handle.lcore();
        let code = handle.wait();
        if code != 0 {
            tracing::error!(%lcore, code, "worker failed");
            worker_failed = true;
        }
    }
    if let Some(server) = http {
        server.stop();
    }
    drop(ports);
    let in_use = pool.in_use();
    tracing::info!(
        in_use,
        "ports closed; packet buffers still in use: {in_use}"
    );
    drop(pool);
    drop(eal);
    if in_use != 0 {
        tracing::error!(in_use, "packet buffers leaked");
        return Ok(EXIT_LEAK);
    }
    Ok(u8::from(worker_failed))
}

/// Re-reads the config file and publishes it if valid and reloadable. A
/// managed data plane keeps the control plane's site configuration, which
/// must still fit the reloaded file (its applications, its addresses).
fn reload_config(
    path: Option<&std::path::Path>,
    running: &Config,
    published: &Published<Snapshot>,
    macs: &[[u8; 6]],
    managed: Option<&(SiteSections, u64)>,
) -> anyhow::Result<(Config, Snapshot)> {
    let Some(path) = path else {
        bail!("running on the embedded default configuration; there is no file to reload");
    };
    let config = Config::from_file(path)?;
    config.check_reloadable(running)?;
    let generation = published.load().generation + 1;
    let mut snapshot = config.validate(generation)?;
    snapshot.set_port_macs(macs);
    if let Some((sections, version)) = managed {
        let context = "the control plane's site configuration would no longer apply";
        if !sections.applications.is_empty() {
            let classifier = classifier_with(&config.dpi.applications, &sections.applications)
                .context(context)?;
            snapshot.dpi.classifier = Arc::new(classifier);
        }
        let mut site = sections
            .compile(Capabilities::of(&snapshot.ports, &snapshot.dpi.classifier))
            .context(context)?;
        site.version = *version;
        snapshot.set_site(site).context(context)?;
    }
    published.store(snapshot.clone());
    Ok((config, snapshot))
}

/// Validates a control-plane snapshot against the running data plane and
/// publishes it: the site's part and, when the applications changed, the
/// new classifier, in one swap.
fn apply_snapshot(
    request: &ApplyRequest,
    published: &Published<Snapshot>,
    managed: Option<&(SiteSections, u64)>,
) -> Result<(), patronus_core::config::ConfigError> {
    let sections = &request.sections;
    let current = published.load();
    let running_apps = managed.map_or(&[][..], |(s, _)| s.applications.as_slice());
    let file_apps = &current.dpi.file_applications;
    let classifier = match &request.classifier {
        _ if sections.applications == running_apps => current.dpi.classifier.clone(),
        Some(prepared) if prepared.file_applications == *file_apps => prepared.classifier.clone(),
        // The file's applications changed since the agent compiled.
        _ => Arc::new(classifier_with(file_apps, &sections.applications)?),
    };
    let mut site = sections.compile(Capabilities::of(&current.ports, &classifier))?;
    site.version = request.version;
    let mut next = Snapshot::clone(&current);
    next.generation += 1;
    next.set_site(site)?;
    next.dpi.classifier = classifier;
    published.store(next);
    Ok(())
}

/// Reads the totals the agent reports: port counters, every drop (parse
/// errors, drop reasons, full tx rings), flows, and the configured peers
/// with their tunnel state (down without a `[tunnel]`). No path has been
/// measured yet.
fn telemetry_source(
    ports: Vec<Port>,
    workers: Vec<Arc<SharedCounters>>,
    tunnels: Vec<Arc<patronus_core::stats::SharedTunnelStats>>,
    config: Arc<Published<Snapshot>>,
) -> TelemetrySource {
    Arc::new(move || {
        let mut counters = DataplaneCounters::default();
        for stats in ports.iter().filter_map(|p| p.stats().ok()) {
            counters.rx_packets += stats.rx_packets;
            counters.tx_packets += stats.tx_packets;
            counters.rx_bytes += stats.rx_bytes;
            counters.tx_bytes += stats.tx_bytes;
        }
        for w in &workers {
            let c = w.read();
            counters.dropped_packets += c.dropped() + c.get(Counter::TxDropped);
            counters.active_flows += c.get(Counter::FlowsActive);
        }
        let cfg = config.load();
        Telemetry {
            applied_version: cfg.site.version,
            counters,
            peers: cfg
                .site
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    // The tunnel's peers are the site's, in the same order.
                    let up = cfg.tunnel.is_some()
                        && patronus_core::stats::peer_total(&tunnels, i).session_up;
                    PeerTelemetry {
                        name: p.name.clone(),
                        tunnel: if up {
                            TunnelState::Up
                        } else {
                            TunnelState::Down
                        } as i32,
                        path: None,
                    }
                })
                .collect(),
        }
    })
}

/// A per-process, per-worker seed for the flow tables' keyed hash, so that
/// bucket placement cannot be predicted from outside.
fn seed_for(worker: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(worker);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
