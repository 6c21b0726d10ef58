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

use std::collections::HashMap;
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
    self, launch_on_lcore, worker_lcores, Eal, LaunchHandle, LcoreId, Mempool, Port, PortConfig,
    TxQueue, BURST_SIZE,
};
use crate::metrics::{DataplaneCollector, Health, HttpServer};
use crate::resolver::Resolver;
use crate::worker::{Clock, DpdkHost, DpdkRx, DpdkWorker};
use patronus_core::config::dns;
use patronus_core::config::site::{classifier_with, Capabilities, SiteSections, SiteState};
use patronus_core::config::{Config, Snapshot};
use patronus_core::dpi::counters::DpiCounters;
use patronus_core::dpi::Announcements;
use patronus_core::neighbor::{NeighborEvent, NeighborManager, NeighborShared};
use patronus_core::paths::SharedUplinks;
use patronus_core::published::Published;
use patronus_core::stats::{BfdReport, PolicyCounters};
use patronus_core::stats::{Counter, SharedCounters, SharedQosStats, SharedTunnelStats};
use patronus_core::worker::{shaper_inboxes, tunnel_inboxes, WorkerSetup};
use patronus_proto::v1::{
    BfdSession, BfdState, DataplaneCounters, DataplaneEvent, EventType, PathMetrics, PathTelemetry,
    PeerTelemetry, TunnelState,
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
    /// Resolves the peers' endpoint host names (it already resolved the
    /// file's) and keeps them fresh.
    pub resolver: Resolver,
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
    let mut snapshot = opts
        .config
        .validate_resolved(1, opts.resolver.resolve(opts.config.host_names()))?;
    opts.resolver.keep(snapshot.site.host_names());
    let signals = Signals::install()?;
    let devices = Devices::start(&opts)?;
    let macs: Vec<[u8; 6]> = devices.ports.iter().map(Port::mac).collect();
    snapshot.set_port_macs(&macs);
    // Shapers and probes run on this clock: its rate is measured, not
    // taken from EAL (see Clock::calibrated).
    let clock = Clock::calibrated(Duration::from_millis(200));
    tracing::info!(
        measured_hz = clock.hz(),
        eal_hz = dpdk::tsc_hz(),
        "time-stamp counter rate"
    );
    let shared = Shared {
        config: Arc::new(Published::new(snapshot.clone())),
        neighbors: Arc::new(NeighborShared::default()),
        health: Arc::new(Health::default()),
        stop: signals.stop.clone(),
        clock,
    };
    let (workers, learned) = Workers::start(&devices, &shared)?;
    let manager = start_neighbor_manager(&snapshot, &shared, learned);
    let services = AgentLink::start(&opts.config, &devices, &workers, &shared, &opts.resolver)
        .and_then(|agent| {
            let http = start_metrics(&opts, &devices, &workers, &shared, &agent)?;
            Ok((agent, http))
        });
    let (agent, http) = match services {
        Ok(started) => started,
        Err(e) => {
            // The workers poll the ports: they stop before the devices close.
            shared.stop.store(true, Ordering::Relaxed);
            workers.join();
            return Err(e);
        }
    };
    shared.health.running.store(true, Ordering::Release);
    tracing::info!(
        workers = devices.lcores.len(),
        lcores = ?devices.lcores,
        "data plane running"
    );

    let mut control = Control {
        config_path: opts.config_path,
        running_config: opts.config,
        macs,
        manager,
        apply: agent.apply,
        events: agent.events,
        managed: None,
        link_up: devices.ports.iter().map(|p| p.link().up).collect(),
        republish_at: 0,
        tunnels: workers.tunnels.clone(),
        moves_seen: vec![0; workers.tunnels.len()],
        tunnel_up: (0, Vec::new()),
        resolver: opts.resolver,
        hosts_seen: 0,
    };
    control.run(&signals, &shared, &devices.ports, devices.lcores.len());
    Ok(shut_down(&shared, agent.agent, workers, http, devices))
}

/// The flags the signal handlers set; the control loop polls them.
struct Signals {
    /// Set by SIGINT and SIGTERM (and by the control loop when a worker dies).
    stop: Arc<AtomicBool>,
    /// Set by SIGHUP: re-read the configuration file.
    reload: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers before anything starts, so that a signal during
    /// start-up is not lost.
    fn install() -> anyhow::Result<Signals> {
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone())
                .context("installing signal handlers")?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
            .context("installing signal handlers")?;
        Ok(Signals { stop, reload })
    }
}

/// The DPDK side of the process. The fields drop in the order DPDK needs:
/// the ports (returning their ring buffers), then the pool, then EAL, so
/// that an error after start-up releases them in that order too.
struct Devices {
    /// Started ports, in config order.
    ports: Vec<Port>,
    /// The packet buffer pool.
    pool: Arc<Mempool>,
    /// One worker per EAL worker lcore.
    lcores: Vec<LcoreId>,
    /// Dropped last: `rte_eal_cleanup`.
    eal: Eal,
}

impl Devices {
    /// Starts EAL, creates the buffer pool and starts every port with one
    /// queue pair per worker lcore.
    fn start(opts: &RunOptions) -> anyhow::Result<Devices> {
        let cfg = &opts.config;
        let eal = start_eal(cfg, &opts.extra_eal_args)?;
        let lcores = worker_lcores(&eal);
        if lcores.is_empty() {
            bail!(
                "EAL has no worker lcore: give at least two lcores, e.g. `-l 0-1` in dpdk.eal_args"
            );
        }
        let workers = lcores.len() as u16;
        let socket = i32::try_from(eal.lcore_socket(lcores[0])).unwrap_or(-1);
        let pool = create_pool(&eal, cfg, workers, socket)?;
        let ports = start_ports(&eal, cfg, workers, &pool)?;
        Ok(Devices {
            ports,
            pool,
            lcores,
            eal,
        })
    }
}

/// EAL with the config's arguments followed by the command line's.
fn start_eal(cfg: &Config, extra_args: &[String]) -> anyhow::Result<Eal> {
    let mut eal_args = vec!["patronus-dataplane".to_owned()];
    eal_args.extend(cfg.dpdk.eal_args.iter().cloned());
    eal_args.extend(extra_args.iter().cloned());
    tracing::info!(args = ?&eal_args[1..], dpdk = dpdk_sys::DPDK_PKG_VERSION, "starting EAL");
    Eal::init(&eal_args).context("EAL initialisation failed (check dpdk.eal_args and hugepages.md)")
}

/// The packet buffer pool, on the NUMA socket of the first worker, sized by
/// `dpdk.mempool_size` or, when that is 0, by [`auto_pool_size`].
fn create_pool(eal: &Eal, cfg: &Config, workers: u16, socket: i32) -> anyhow::Result<Arc<Mempool>> {
    let pool_size = match cfg.dpdk.mempool_size {
        0 => auto_pool_size(cfg, u32::from(workers)),
        n => n,
    };
    let pool = Mempool::new(
        eal,
        "patronus_mbufs",
        pool_size,
        cfg.dpdk.mempool_cache,
        2048 + 128,
        socket,
    )
    .context("creating the packet buffer pool (see hugepages.md)")?;
    tracing::info!(buffers = pool_size, "packet buffer pool created");
    Ok(Arc::new(pool))
}

/// Starts every configured port with a receive and a transmit queue per worker.
fn start_ports(
    eal: &Eal,
    cfg: &Config,
    workers: u16,
    pool: &Arc<Mempool>,
) -> anyhow::Result<Vec<Port>> {
    let mut ports = Vec::with_capacity(cfg.ports.len());
    for p in &cfg.ports {
        let id = Port::id_by_name(eal, &p.device)
            .with_context(|| format!("port {:?}: no DPDK device named {:?} (add it with --vdev or check the PCI address)", p.name, p.device))?;
        let port_config = PortConfig {
            rx_queues: workers,
            tx_queues: workers,
            rx_ring: p.rx_ring,
            tx_ring: p.tx_ring,
            promiscuous: p.promiscuous,
            mtu: None,
        };
        let port = Port::start(eal, id, &p.name, &port_config, pool.clone())
            .with_context(|| format!("starting port {:?}", p.name))?;
        tracing::info!(
            port = %p.name, id = %port.id(), driver = port.driver(), mac = %format_mac(port.mac()),
            queues = workers, rss = port.rss_enabled(), link_up = port.link().up,
            "port started"
        );
        ports.push(port);
    }
    Ok(ports)
}

/// What the workers, the control loop, the agent and the metrics endpoint
/// share.
struct Shared {
    /// The configuration in force.
    config: Arc<Published<Snapshot>>,
    /// The neighbour table in force.
    neighbors: Arc<NeighborShared>,
    /// What `/healthz` reports.
    health: Arc<Health>,
    /// Set to make every worker and the control loop finish.
    stop: Arc<AtomicBool>,
    /// The data-plane clock, shared so that workers and the neighbour
    /// manager agree on time.
    clock: Clock,
}

/// The running workers and the figures they publish.
struct Workers {
    /// One per worker lcore, to wait for at shutdown.
    handles: Vec<LaunchHandle>,
    /// Each worker's counters.
    stats: Vec<Arc<SharedCounters>>,
    /// Each worker's classification counters.
    dpi: Vec<Arc<DpiCounters>>,
    /// Each worker's drops per policy rule.
    policy: Vec<Arc<PolicyCounters>>,
    /// Each worker's tunnel figures.
    tunnels: Vec<Arc<SharedTunnelStats>>,
    /// Each worker's shaped egresses.
    qos: Vec<Arc<SharedQosStats>>,
}

impl Workers {
    /// Builds a worker per worker lcore on queue pair *i* of every port and
    /// launches it. Returns the workers and the channel their neighbour
    /// observations arrive on.
    fn start(
        devices: &Devices,
        shared: &Shared,
    ) -> anyhow::Result<(Workers, crossbeam_channel::Receiver<NeighborEvent>)> {
        let lcores = &devices.lcores;
        if lcores.len() > patronus_core::tunnel::MAX_WORKERS {
            bail!(
                "{} workers, but the tunnel engine supports at most {}; give EAL fewer lcores",
                lcores.len(),
                patronus_core::tunnel::MAX_WORKERS
            );
        }
        let mut workers = Workers {
            handles: Vec::with_capacity(lcores.len()),
            stats: Vec::with_capacity(lcores.len()),
            dpi: Vec::with_capacity(lcores.len()),
            policy: Vec::with_capacity(lcores.len()),
            tunnels: Vec::with_capacity(lcores.len()),
            qos: Vec::with_capacity(lcores.len()),
        };
        let inboxes = tunnel_inboxes(lcores.len());
        let to_shape = shaper_inboxes(lcores.len());
        let shared_uplinks = Arc::new(SharedUplinks::default());
        let announcements = Announcements::new(lcores.len());
        // Every worker reports what it learns into one bounded channel that the
        // neighbour manager drains.
        let (events, learned) = crossbeam_channel::bounded(EVENT_CHANNEL * lcores.len());
        for (index, &lcore) in lcores.iter().enumerate() {
            let stats = Arc::new(SharedCounters::default());
            let tunnel_stats = Arc::new(SharedTunnelStats::default());
            let qos_stats = Arc::new(SharedQosStats::default());
            workers.stats.push(stats.clone());
            workers.tunnels.push(tunnel_stats.clone());
            workers.qos.push(qos_stats.clone());
            let (rx, tx) = worker_queues(&devices.ports, index as u16);
            let setup = WorkerSetup {
                index,
                rx,
                tx,
                host: DpdkHost::new(devices.pool.clone(), shared.clock),
                config: shared.config.clone(),
                neighbors: shared.neighbors.clone(),
                events: events.clone(),
                stats,
                stop: shared.stop.clone(),
                seed: seed_for(index),
                inboxes: inboxes.clone(),
                shared_uplinks: shared_uplinks.clone(),
                announcements: announcements.clone(),
                shaper_inboxes: to_shape.clone(),
                tunnel_stats,
                qos_stats,
            };
            // The flow table is allocated here, before the lcore starts polling.
            let worker = DpdkWorker::new(setup);
            workers.dpi.push(worker.pipeline().dpi_counters());
            workers.policy.push(worker.pipeline().policy_counters());
            let handle = launch_worker(&devices.eal, lcore, worker, &shared.health)?;
            workers.handles.push(handle);
        }
        // Queued work holds packet buffers: only workers keep the queues, so
        // they go (and free what they hold) when the last worker exits.
        drop(inboxes);
        drop(to_shape);
        Ok((workers, learned))
    }

    /// Waits for every worker to finish (they free what they hold on the
    /// way out). Returns whether one of them failed.
    fn join(self) -> bool {
        let mut failed = false;
        for handle in self.handles {
            let lcore = handle.lcore();
            let code = handle.wait();
            if code != 0 {
                tracing::error!(%lcore, code, "worker failed");
                failed = true;
            }
        }
        failed
    }
}

/// Worker `queue`'s receive queue on every port (with the port index) and
/// its transmit queue on every port.
fn worker_queues(ports: &[Port], queue: u16) -> (Vec<(u16, DpdkRx)>, Vec<TxQueue>) {
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
    (rx, tx)
}

/// Runs `worker` on `lcore`, counted in `health` as alive until it returns.
fn launch_worker(
    eal: &Eal,
    lcore: LcoreId,
    worker: DpdkWorker,
    health: &Arc<Health>,
) -> anyhow::Result<LaunchHandle> {
    let index = worker.index;
    let alive = health.clone();
    alive.workers_alive.fetch_add(1, Ordering::AcqRel);
    alive.workers_total.fetch_add(1, Ordering::AcqRel);
    launch_on_lcore(eal, lcore, move || {
        tracing::info!(worker = index, "worker started");
        worker.run();
        tracing::info!(worker = index, "worker stopped");
        alive.workers_alive.fetch_sub(1, Ordering::AcqRel);
        0
    })
    .with_context(|| format!("launching worker {index} on {lcore}"))
}

/// The neighbour table's owner, fed by what the workers learn: it starts
/// with the static entries, published before any packet needs them.
fn start_neighbor_manager(
    snapshot: &Snapshot,
    shared: &Shared,
    learned: crossbeam_channel::Receiver<NeighborEvent>,
) -> NeighborManager {
    let mut manager = NeighborManager::new(
        snapshot.neighbors.clone(),
        shared.neighbors.clone(),
        learned,
    );
    manager.configure(&snapshot.neighbors, &snapshot.static_neighbors);
    manager.tick(shared.clock.now_ns());
    manager
}

/// The control-plane agent, when the configuration names a control plane,
/// and the channels the control loop shares with it (idle without one).
struct AgentLink {
    /// The running agent; `None` when the data plane is standalone.
    agent: Option<Agent>,
    /// What the agent reports in the metrics.
    status: Arc<AgentStatus>,
    /// Control-plane snapshots for the control loop to apply.
    apply: tokio::sync::mpsc::Receiver<ApplyRequest>,
    /// Events for the agent to report.
    events: tokio::sync::mpsc::Sender<DataplaneEvent>,
}

impl AgentLink {
    /// Starts the agent when `controlplane.server` is set.
    fn start(
        cfg: &Config,
        devices: &Devices,
        workers: &Workers,
        shared: &Shared,
        resolver: &Resolver,
    ) -> anyhow::Result<AgentLink> {
        let status = Arc::new(AgentStatus::default());
        let (apply_tx, apply) = tokio::sync::mpsc::channel::<ApplyRequest>(1);
        let (events, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        let agent = if cfg.controlplane.is_managed() {
            let setup = AgentSetup {
                apply: apply_tx,
                status: status.clone(),
                telemetry: telemetry_source(
                    devices.ports.clone(),
                    workers.stats.clone(),
                    workers.tunnels.clone(),
                    shared.config.clone(),
                ),
                events: events_rx,
                config: shared.config.clone(),
                resolver: resolver.clone(),
            };
            let agent = Agent::start(&cfg.controlplane, setup)?;
            tracing::info!(
                servers = ?cfg.controlplane.endpoints(),
                site = cfg.controlplane.site_id,
                "the site's configuration comes from the control plane"
            );
            Some(agent)
        } else {
            drop((apply_tx, events_rx));
            None
        };
        Ok(AgentLink {
            agent,
            status,
            apply,
            events,
        })
    }
}

/// Serves `/metrics` and `/healthz` on `metrics.listen`, unless it is empty.
fn start_metrics(
    opts: &RunOptions,
    devices: &Devices,
    workers: &Workers,
    shared: &Shared,
    agent: &AgentLink,
) -> anyhow::Result<Option<HttpServer>> {
    let addr = match opts.config.metrics.listen.as_str() {
        "" => return Ok(None),
        addr => addr,
    };
    let addr: SocketAddr = addr.parse().context("metrics.listen")?;
    let collector = DataplaneCollector {
        ports: devices.ports.clone(),
        workers: workers.stats.clone(),
        pool: devices.pool.clone(),
        neighbors: shared.neighbors.clone(),
        config: shared.config.clone(),
        dpi: workers.dpi.clone(),
        policy: workers.policy.clone(),
        agent: agent.agent.is_some().then(|| agent.status.clone()),
        tunnels: workers.tunnels.clone(),
        qos: workers.qos.clone(),
        resolver: opts.resolver.clone(),
    };
    let server = HttpServer::start(addr, collector, shared.health.clone())
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    tracing::info!(addr = %server.local_addr(), "metrics and health endpoint listening");
    Ok(Some(server))
}

/// What the control loop keeps between rounds.
struct Control {
    /// Where the configuration came from (re-read on SIGHUP).
    config_path: Option<PathBuf>,
    /// The file's configuration in force, which a reload is checked against.
    running_config: Config,
    /// The ports' MACs, for reloaded snapshots.
    macs: Vec<[u8; 6]>,
    /// Owns the neighbour table.
    manager: NeighborManager,
    /// Control-plane snapshots to apply.
    apply: tokio::sync::mpsc::Receiver<ApplyRequest>,
    /// Events for the control plane.
    events: tokio::sync::mpsc::Sender<DataplaneEvent>,
    /// The control plane's sections in force, re-checked when the file is reloaded.
    managed: Option<(SiteSections, u64)>,
    /// Each port's link state as last reported.
    link_up: Vec<bool>,
    /// When the neighbour table is next republished whether or not it changed.
    republish_at: u64,
    /// Each worker's tunnel and path figures, for the moves between paths.
    tunnels: Vec<Arc<SharedTunnelStats>>,
    /// The last move of each worker already reported.
    moves_seen: Vec<u64>,
    /// Whether each peer's tunnel had a session when last looked at, by
    /// the peer's position in the configuration of this generation.
    tunnel_up: (u32, Vec<(String, bool)>),
    /// Resolves the peers' endpoint host names and keeps them fresh.
    resolver: Resolver,
    /// The resolver's addresses last looked at.
    hosts_seen: u64,
}

impl Control {
    /// Runs on the main lcore until the stop flag is set.
    fn run(&mut self, signals: &Signals, shared: &Shared, ports: &[Port], workers: usize) {
        while !signals.stop.load(Ordering::Relaxed) {
            std::thread::sleep(CONTROL_PERIOD);
            self.tend_neighbors(shared);
            self.apply_snapshots(&shared.config);
            if signals.reload.swap(false, Ordering::Relaxed) {
                self.reload(&shared.config);
            }
            self.follow_hosts(&shared.config);
            self.watch_links(ports);
            self.watch_tunnels(&shared.config);
            self.watch_paths();
            self.watch_workers(shared, workers);
        }
    }

    /// The site this gateway serves, for its log lines ("" when it runs
    /// without a control plane).
    fn site(&self) -> &str {
        &self.running_config.controlplane.site_id
    }

    /// Logs every tunnel that got its first session or lost its last one
    /// since the last round (the control plane derives its tunnel events
    /// from the telemetry).
    fn watch_tunnels(&mut self, config: &Published<Snapshot>) {
        let cfg = config.load();
        if cfg.tunnel.is_none() {
            return;
        }
        let peers = &cfg.site.peers;
        if self.tunnel_up.0 != cfg.generation || self.tunnel_up.1.len() != peers.len() {
            // A new configuration: the states carry over by name, once.
            let before: HashMap<String, bool> =
                std::mem::take(&mut self.tunnel_up.1).into_iter().collect();
            let now = peers
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        before.get(&p.name).copied().unwrap_or(false),
                    )
                })
                .collect();
            self.tunnel_up = (cfg.generation, now);
        }
        for (i, (name, was_up)) in self.tunnel_up.1.iter_mut().enumerate() {
            // The tunnel's peers are the site's, in the same order; its
            // owner has its session.
            let up = self.tunnels.iter().any(|w| w.peer(i).session_up);
            if up == *was_up {
                continue;
            }
            *was_up = up;
            let site = &self.running_config.controlplane.site_id;
            if up {
                tracing::info!(site, peer = %name, "tunnel up");
            } else {
                tracing::warn!(site, peer = %name, "tunnel down");
            }
        }
    }

    /// Logs and reports every move of traffic to another path that the
    /// workers made since the last round.
    fn watch_paths(&mut self) {
        for (w, stats) in self.tunnels.iter().enumerate() {
            let report = stats.paths();
            let seen = self.moves_seen[w];
            for m in report.moves.iter().filter(|m| m.seq > seen) {
                let reason = m.reason.as_str();
                tracing::warn!(
                    site = self.site(),
                    policy = %m.policy,
                    path_id = %m.to,
                    from = %m.from,
                    reason,
                    "traffic moved to another path"
                );
                self.report(
                    EventType::Failover,
                    &m.policy,
                    format!("{} -> {} ({reason})", m.from, m.to),
                );
                self.moves_seen[w] = m.seq;
            }
        }
    }

    /// Merges what the workers learned and ages the table. Republishes
    /// periodically so that entries going stale are noticed by cached flows
    /// (their generation changes, they look the entry up).
    fn tend_neighbors(&mut self, shared: &Shared) {
        let now = shared.clock.now_ns();
        let force = now >= self.republish_at;
        if force {
            self.republish_at =
                now + u64::from(shared.config.load().neighbors.reachable_s) * 500_000_000;
        }
        self.manager.tick_with(now, force);
    }

    /// Recompiles the site when an endpoint host name in force resolved to
    /// another address (its TTL ran out and the answer changed).
    fn follow_hosts(&mut self, config: &Published<Snapshot>) {
        let Some(hosts) = self.resolver.changed(&mut self.hosts_seen) else {
            return;
        };
        let current = config.load();
        let moved: Vec<String> = current
            .site
            .host_names()
            .into_iter()
            .filter(|h| current.hosts.get(h) != hosts.get(h))
            .collect();
        if moved.is_empty() {
            return;
        }
        let mut next = Snapshot::clone(&current);
        next.generation += 1;
        next.hosts = hosts;
        match next.set_site(SiteState::clone(&current.site)) {
            Ok(()) => {
                tracing::info!(
                    site = self.site(),
                    hosts = ?moved,
                    generation = next.generation,
                    "peer endpoints re-resolved to other addresses: in force"
                );
                config.store(next);
            }
            Err(err) => tracing::warn!(
                site = self.site(),
                "peer endpoints re-resolved, but the site no longer compiles; the configuration in force stays: {err}"
            ),
        }
    }

    /// Applies the control plane's snapshots and answers each with the outcome.
    fn apply_snapshots(&mut self, config: &Published<Snapshot>) {
        while let Ok(request) = self.apply.try_recv() {
            let version = request.version;
            let outcome = apply_snapshot(&request, config, self.managed.as_ref());
            match &outcome {
                Ok(()) => {
                    tracing::info!(
                        site = self.site(),
                        version,
                        generation = config.load().generation,
                        "control-plane snapshot applied"
                    );
                    self.managed = Some((request.sections, version));
                    self.resolver.keep(config.load().site.host_names());
                }
                Err(err) => tracing::warn!(
                    site = self.site(),
                    version,
                    "control-plane snapshot refused: {err}"
                ),
            }
            let _ = request.reply.send(outcome.map_err(|e| e.to_string()));
        }
    }

    /// Re-reads the file (SIGHUP); a refused file leaves the running
    /// configuration in force.
    fn reload(&mut self, config: &Published<Snapshot>) {
        match reload_config(
            self.config_path.as_deref(),
            &self.running_config,
            config,
            &self.macs,
            self.managed.as_ref(),
            &self.resolver,
        ) {
            Ok((new_config, new_snapshot)) => {
                self.resolver.keep(new_snapshot.site.host_names());
                self.manager
                    .configure(&new_snapshot.neighbors, &new_snapshot.static_neighbors);
                tracing::info!(
                    generation = new_snapshot.generation,
                    "configuration reloaded"
                );
                self.report(
                    EventType::ConfigReloaded,
                    "",
                    format!("generation {}", new_snapshot.generation),
                );
                self.running_config = new_config;
            }
            Err(err) => {
                tracing::error!(
                    site = self.site(),
                    "reload refused, the running configuration stays in force: {err:#}"
                );
                self.report(EventType::ConfigRefused, "", format!("{err:#}"));
            }
        }
    }

    /// Logs and reports every link that went up or down since the last round.
    fn watch_links(&mut self, ports: &[Port]) {
        for (i, port) in ports.iter().enumerate() {
            let up = port.link().up;
            if up != self.link_up[i] {
                let name = &self.running_config.ports[i].name;
                tracing::warn!(site = self.site(), port = %name, up, "link state changed");
                let kind = if up {
                    EventType::LinkUp
                } else {
                    EventType::LinkDown
                };
                self.report(kind, name, String::new());
                self.link_up[i] = up;
            }
        }
    }

    /// Shuts the data plane down when a worker exited on its own. Workers
    /// also leave when the stop flag is set by a signal; only an exit
    /// without one is a failure.
    fn watch_workers(&self, shared: &Shared, workers: usize) {
        if shared.health.workers_alive.load(Ordering::Acquire) < workers
            && !shared.stop.load(Ordering::Relaxed)
        {
            tracing::error!("a worker exited unexpectedly; shutting down");
            self.report(
                EventType::WorkerFailed,
                "",
                "a worker exited unexpectedly; the data plane is shutting down".into(),
            );
            shared.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Reports an event to the control plane, if there is one; never blocks.
    fn report(&self, kind: EventType, subject: &str, message: String) {
        let _ = self.events.try_send(DataplaneEvent {
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            r#type: kind as i32,
            subject: subject.to_owned(),
            message,
        });
    }
}

/// Stops everything in the order the module documentation gives and
/// returns the exit status: the workers free what they hold, the metrics
/// server lets go of its port handles, the ports close and return their
/// ring buffers, and only then is the pool checked for leaks.
fn shut_down(
    shared: &Shared,
    agent: Option<Agent>,
    workers: Workers,
    http: Option<HttpServer>,
    devices: Devices,
) -> u8 {
    tracing::info!("shutting down");
    if let Some(agent) = agent {
        agent.stop();
    }
    shared.health.running.store(false, Ordering::Release);
    shared.stop.store(true, Ordering::Relaxed);
    let worker_failed = workers.join();
    if let Some(server) = http {
        server.stop();
    }
    if close_devices(devices) != 0 {
        return EXIT_LEAK;
    }
    u8::from(worker_failed)
}

/// Closes the ports, then counts the packet buffers still in use before
/// the pool and EAL go. Returns that count (a leak when not zero).
fn close_devices(devices: Devices) -> u32 {
    let Devices {
        ports, pool, eal, ..
    } = devices;
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
    }
    in_use
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
    resolver: &Resolver,
) -> anyhow::Result<(Config, Snapshot)> {
    let Some(path) = path else {
        bail!("running on the embedded default configuration; there is no file to reload");
    };
    let config = Config::from_file(path)?;
    config.check_reloadable(running)?;
    let generation = published.load().generation + 1;
    let mut hosts = config.host_names();
    if let Some((sections, _)) = managed {
        hosts.extend(dns::host_names(&sections.peers));
    }
    let mut snapshot = config.validate_resolved(generation, resolver.resolve(hosts))?;
    snapshot.set_port_macs(macs);
    if let Some((sections, version)) = managed {
        let context = "the control plane's site configuration would no longer apply";
        if !sections.applications.is_empty() {
            let classifier = classifier_with(&config.dpi.applications, &sections.applications)
                .context(context)?;
            snapshot.dpi.classifier = classifier;
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
        _ => classifier_with(file_apps, &sections.applications)?,
    };
    let mut site = sections.compile(Capabilities::of(&current.ports, &classifier))?;
    site.version = request.version;
    let mut next = Snapshot::clone(&current);
    next.generation += 1;
    next.hosts = request.hosts.clone();
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
    tunnels: Vec<Arc<SharedTunnelStats>>,
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
        let (measured, mut per_path) = path_figures(&cfg, &tunnels);
        Telemetry {
            applied_version: cfg.site.version,
            bfd_sessions: bfd_sessions(&cfg, &tunnels),
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
                        path: measured.get(i).copied().flatten(),
                        paths: per_path.get_mut(i).map(std::mem::take).unwrap_or_default(),
                    }
                })
                .collect(),
        }
    })
}

/// For each peer: what the probes measure on the path its traffic takes
/// now (`None` while nothing is measured: no uplinks, an unprobed peer, no
/// echo yet), and each of its paths.
fn path_figures(
    cfg: &Snapshot,
    tunnels: &[Arc<SharedTunnelStats>],
) -> (Vec<Option<PathMetrics>>, Vec<Vec<PathTelemetry>>) {
    let peers = cfg.site.peers.len();
    let mut active = vec![None; peers];
    let mut paths = vec![Vec::new(); peers];
    let Some(t) = cfg.tunnel.as_deref() else {
        return (active, paths);
    };
    for report in tunnels.iter().map(|w| w.paths()) {
        for r in &report.paths {
            let Some(path) = t
                .paths
                .paths
                .get(usize::from(r.index))
                .filter(|p| p.tag == r.tag && (p.peer as usize) < peers)
            else {
                continue;
            };
            let metrics = r.figures.and_then(|f| {
                Some(PathMetrics {
                    latency_ms: f.rtt_ms?[0],
                    jitter_ms: f.jitter_ms,
                    packet_loss_pct: f.loss_pct?,
                })
            });
            if r.active {
                active[path.peer as usize] = metrics;
            }
            paths[path.peer as usize].push(PathTelemetry {
                path_id: path.id.to_string(),
                active: r.active,
                up: r.figures.is_none_or(|f| f.up),
                metrics,
                health_score: r.figures.and_then(|f| f.health),
                bfd: r
                    .bfd
                    .as_ref()
                    .map_or(BfdState::Unspecified, |b| bfd_state(b.state))
                    as i32,
            });
        }
    }
    (active, paths)
}

/// Every BFD session of the workers: the paths', then the uplinks'.
fn bfd_sessions(cfg: &Snapshot, tunnels: &[Arc<SharedTunnelStats>]) -> Vec<BfdSession> {
    let Some(t) = cfg.tunnel.as_deref() else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    let session = |id: &str, b: &BfdReport| BfdSession {
        session_id: id.to_owned(),
        state: bfd_state(b.state) as i32,
        remote_state: bfd_state(b.remote_state) as i32,
        local_discriminator: b.discriminators.0,
        remote_discriminator: b.discriminators.1,
        diagnostic: b.diagnostic.as_str().to_owned(),
        tx_interval_us: b.tx_interval_ns / 1_000,
        detection_time_us: b.detection_time_ns / 1_000,
        last_change: b
            .since_change_ns
            .and_then(|ago| now.checked_sub(std::time::Duration::from_nanos(ago)))
            .map(prost_types::Timestamp::from),
    };
    let reports: Vec<_> = tunnels.iter().map(|w| w.paths()).collect();
    let paths = reports.iter().flat_map(|w| &w.paths).filter_map(|r| {
        let path = t
            .paths
            .paths
            .get(usize::from(r.index))
            .filter(|p| p.tag == r.tag)?;
        Some(session(&path.id, r.bfd.as_ref()?))
    });
    let uplinks = reports
        .iter()
        .flat_map(|w| &w.uplink_bfd)
        .filter_map(|(u, b)| {
            let id = &t.paths.uplinks.get(usize::from(*u))?.bfd.as_ref()?.id;
            Some(session(id, b))
        });
    paths.chain(uplinks).collect()
}

/// A BFD session's state as the API names it.
fn bfd_state(state: patronus_core::bfd::packet::State) -> BfdState {
    use patronus_core::bfd::packet::State;
    match state {
        State::AdminDown => BfdState::AdminDown,
        State::Down => BfdState::Down,
        State::Init => BfdState::Init,
        State::Up => BfdState::Up,
    }
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
