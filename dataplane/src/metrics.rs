//! Prometheus metrics and the health endpoint.
//!
//! Nothing here touches the packet path: a [`DataplaneCollector`] reads the
//! workers' published counters, the ports' DPDK statistics and the mempool
//! at scrape time. `/metrics` uses the Prometheus text format so that
//! `promtool check metrics` and any Prometheus version can read it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::agent::AgentStatus;
use crate::dpdk::{Mempool, Port};
use patronus_core::config::Snapshot;
use patronus_core::dpi::counters::{self as dpi_counters, DpiCounters, PACKET_BUCKETS};
use patronus_core::dpi::Category;
use patronus_core::neighbor::NeighborShared;
use patronus_core::packet::parse::ParseError;
use patronus_core::published::Published;
use patronus_core::stats::{
    peer_total, Counter, Counters, DropReason, SharedCounters, SharedTunnelStats, MAX_TUNNEL_PEERS,
};
use patronus_core::tunnel::{TunnelDrop, TunnelEvent};

/// Whether the data plane is serving traffic, for `/healthz`.
#[derive(Debug, Default)]
pub struct Health {
    /// All workers launched and not shutting down.
    pub running: AtomicBool,
    /// Workers that have not exited.
    pub workers_alive: AtomicUsize,
    /// Workers launched.
    pub workers_total: AtomicUsize,
}

impl Health {
    fn check(&self) -> Result<(), String> {
        let alive = self.workers_alive.load(Ordering::Acquire);
        let total = self.workers_total.load(Ordering::Acquire);
        if !self.running.load(Ordering::Acquire) {
            return Err("not running (starting or shutting down)".into());
        }
        if alive < total {
            return Err(format!("{} of {total} workers have exited", total - alive));
        }
        Ok(())
    }
}

/// Reads everything the data plane exports at scrape time.
#[derive(Debug)]
pub struct DataplaneCollector {
    /// Started ports, in config order.
    pub ports: Vec<Port>,
    /// Each worker's published counters.
    pub workers: Vec<Arc<SharedCounters>>,
    /// The packet buffer pool.
    pub pool: Arc<Mempool>,
    /// The neighbour table.
    pub neighbors: Arc<NeighborShared>,
    /// The configuration in force.
    pub config: Arc<Published<Snapshot>>,
    /// Each worker's classification counters.
    pub dpi: Vec<Arc<DpiCounters>>,
    /// The control-plane agent, when the data plane is managed.
    pub agent: Option<Arc<AgentStatus>>,
    /// Each worker's tunnel figures.
    pub tunnels: Vec<Arc<SharedTunnelStats>>,
}

fn counter<S: EncodeLabelSet, V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<S, V, f64>(&value, None)?;
    }
    Ok(())
}

fn gauge<S: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

type L0 = [(&'static str, String); 0];
type L1 = [(&'static str, String); 1];

/// The label set of a metric without labels.
const NO_LABELS: L0 = [];
type L2 = [(&'static str, String); 2];

impl DataplaneCollector {
    /// Tunnel figures: per peer (summed over workers; each peer's owner has
    /// them all) and engine-wide drops and events.
    fn encode_tunnels(&self, cfg: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(t) = cfg.tunnel.as_deref() else {
            return Ok(());
        };
        let peers: Vec<(String, patronus_core::tunnel::PeerStats)> = t
            .config
            .peers
            .iter()
            .take(MAX_TUNNEL_PEERS)
            .enumerate()
            .map(|(i, p)| (p.name.clone(), peer_total(&self.tunnels, i)))
            .collect();
        gauge(
            enc,
            "patronus_tunnel_status",
            "1 for the peer's tunnel state: up while a session is valid, down otherwise.",
            peers.iter().flat_map(|(name, s)| {
                [("up", s.session_up), ("down", !s.session_up)].map(|(status, on)| {
                    (
                        [("peer", name.clone()), ("status", status.to_owned())],
                        i64::from(on),
                    )
                })
            }),
        )?;
        let per_peer = |f: fn(&patronus_core::tunnel::PeerStats) -> u64| -> Vec<(L1, u64)> {
            peers
                .iter()
                .map(|(n, s)| ([("peer", n.clone())], f(s)))
                .collect()
        };
        for (metric, help, f) in [
            (
                "patronus_tunnel_tx_packets",
                "Packets sent into the peer's tunnel (keepalives excluded).",
                (|s| s.tx_packets) as fn(&patronus_core::tunnel::PeerStats) -> u64,
            ),
            (
                "patronus_tunnel_tx_bytes",
                "Inner bytes sent into the peer's tunnel.",
                |s| s.tx_bytes,
            ),
            (
                "patronus_tunnel_rx_packets",
                "Packets received from the peer's tunnel and forwarded.",
                |s| s.rx_packets,
            ),
            (
                "patronus_tunnel_rx_bytes",
                "Inner bytes received from the peer's tunnel.",
                |s| s.rx_bytes,
            ),
            (
                "patronus_tunnel_handshakes_sent",
                "Handshake initiations and responses sent to the peer.",
                |s| s.handshakes_sent,
            ),
            (
                "patronus_tunnel_handshakes_received",
                "Handshake initiations and responses accepted from the peer.",
                |s| s.handshakes_received,
            ),
            (
                "patronus_tunnel_handshakes_failed",
                "Handshake messages from the peer refused, and attempts given up.",
                |s| s.handshakes_failed,
            ),
        ] {
            counter(enc, metric, help, per_peer(f))?;
        }
        gauge(
            enc,
            "patronus_compression_ratio",
            "Bytes before compression over bytes sent, for peers with compression on (1: nothing saved yet).",
            t.config
                .peers
                .iter()
                .zip(&peers)
                .filter(|(p, _)| p.compression)
                .map(|(_, (name, s))| {
                    let ratio = if s.compress_out_bytes == 0 {
                        1.0
                    } else {
                        s.compress_in_bytes as f64 / s.compress_out_bytes as f64
                    };
                    ([("peer", name.clone())], ratio)
                }),
        )?;
        gauge(
            enc,
            "patronus_tunnel_last_handshake_timestamp_seconds",
            "Unix time of the peer's last completed handshake we initiated (0: never).",
            per_peer(|s| s.last_handshake_unix_s),
        )?;
        counter(
            enc,
            "patronus_tunnel_drops",
            "Tunnel packets and messages dropped, by reason.",
            TunnelDrop::ALL.iter().map(|r| {
                (
                    [("reason", r.as_str().to_owned())],
                    self.tunnels.iter().map(|w| w.drops(*r)).sum::<u64>(),
                )
            }),
        )?;
        counter(
            enc,
            "patronus_tunnel_events",
            "Tunnel protocol events (handshake messages, cookies, keepalives, cookie mode).",
            TunnelEvent::ALL.iter().map(|e| {
                (
                    [("event", e.as_str().to_owned())],
                    self.tunnels.iter().map(|w| w.events(*e)).sum::<u64>(),
                )
            }),
        )
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let cfg = self.config.load();
        let name = |i: usize| {
            cfg.ports
                .get(i)
                .map_or_else(|| i.to_string(), |p| p.name.clone())
        };
        let port_stats: Vec<(String, crate::dpdk::PortStats)> = self
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.stats().ok().map(|s| (name(i), s)))
            .collect();
        let per_port = |f: fn(&crate::dpdk::PortStats) -> u64| -> Vec<(L1, u64)> {
            port_stats
                .iter()
                .map(|(n, s)| ([("port", n.clone())], f(s)))
                .collect()
        };
        counter(
            &mut enc,
            "patronus_port_rx_packets",
            "Packets received by the port.",
            per_port(|s| s.rx_packets),
        )?;
        counter(
            &mut enc,
            "patronus_port_tx_packets",
            "Packets sent by the port.",
            per_port(|s| s.tx_packets),
        )?;
        counter(
            &mut enc,
            "patronus_port_rx_bytes",
            "Bytes received by the port.",
            per_port(|s| s.rx_bytes),
        )?;
        counter(
            &mut enc,
            "patronus_port_tx_bytes",
            "Bytes sent by the port.",
            per_port(|s| s.tx_bytes),
        )?;
        counter(
            &mut enc,
            "patronus_port_rx_dropped_packets",
            "Packets the port dropped on receive: rx ring full or no buffer.",
            per_port(|s| s.rx_missed + s.rx_nombuf),
        )?;
        counter(
            &mut enc,
            "patronus_port_rx_errors",
            "Receive errors reported by the driver.",
            per_port(|s| s.rx_errors),
        )?;
        counter(
            &mut enc,
            "patronus_port_tx_errors",
            "Transmit errors reported by the driver.",
            per_port(|s| s.tx_errors),
        )?;
        let tx_dropped: Vec<(L1, u64)> = (0..self.ports.len())
            .map(|i| {
                (
                    [("port", name(i))],
                    self.workers.iter().map(|w| w.port_tx_dropped(i)).sum(),
                )
            })
            .collect();
        counter(
            &mut enc,
            "patronus_port_tx_dropped_packets",
            "Packets dropped because the port's tx ring was full.",
            tx_dropped,
        )?;

        let per_queue = |f: fn(&crate::dpdk::PortStats) -> &Vec<u64>| -> Vec<(L2, u64)> {
            port_stats
                .iter()
                .flat_map(|(n, s)| {
                    f(s).iter()
                        .enumerate()
                        .map(move |(q, v)| ([("port", n.clone()), ("queue", q.to_string())], *v))
                })
                .collect()
        };
        counter(
            &mut enc,
            "patronus_queue_rx_packets",
            "Packets received per rx queue.",
            per_queue(|s| &s.queue_rx_packets),
        )?;
        counter(
            &mut enc,
            "patronus_queue_tx_packets",
            "Packets sent per tx queue.",
            per_queue(|s| &s.queue_tx_packets),
        )?;
        counter(
            &mut enc,
            "patronus_queue_rx_bytes",
            "Bytes received per rx queue.",
            per_queue(|s| &s.queue_rx_bytes),
        )?;
        counter(
            &mut enc,
            "patronus_queue_tx_bytes",
            "Bytes sent per tx queue.",
            per_queue(|s| &s.queue_tx_bytes),
        )?;
        let queue_drops: Vec<(L2, u64)> = (0..self.ports.len())
            .flat_map(|i| {
                self.workers.iter().enumerate().map(move |(q, w)| {
                    (
                        [("port", name(i)), ("queue", q.to_string())],
                        w.port_tx_dropped(i),
                    )
                })
            })
            .collect();
        counter(
            &mut enc,
            "patronus_queue_tx_dropped_packets",
            "Packets dropped per tx queue because its ring was full.",
            queue_drops,
        )?;
        gauge(
            &mut enc,
            "patronus_port_link_up",
            "1 when the port's link is up.",
            self.ports
                .iter()
                .enumerate()
                .map(|(i, p)| ([("port", name(i))], i64::from(p.link().up))),
        )?;

        let workers: Vec<Counters> = self.workers.iter().map(|w| w.read()).collect();
        let by_worker = |c: Counter| -> Vec<(L1, u64)> {
            workers
                .iter()
                .enumerate()
                .map(|(i, w)| ([("worker", i.to_string())], w.get(c)))
                .collect()
        };
        counter(
            &mut enc,
            "patronus_parse_drops",
            "Frames dropped by the parser, by reason.",
            workers.iter().enumerate().flat_map(|(i, w)| {
                ParseError::ALL.iter().map(move |e| {
                    (
                        [("worker", i.to_string()), ("reason", e.as_str().to_owned())],
                        w.parse_drops(*e),
                    )
                })
            }),
        )?;
        counter(
            &mut enc,
            "patronus_forward_drops",
            "Well-formed packets dropped by the forwarding stage, by reason.",
            workers.iter().enumerate().flat_map(|(i, w)| {
                DropReason::ALL.iter().map(move |r| {
                    (
                        [("worker", i.to_string()), ("reason", r.as_str().to_owned())],
                        w.drops(*r),
                    )
                })
            }),
        )?;
        for (c, metric, help) in [
            (
                Counter::RxPackets,
                "patronus_worker_rx_packets",
                "Frames the worker received.",
            ),
            (
                Counter::RxBytes,
                "patronus_worker_rx_bytes",
                "Bytes the worker received.",
            ),
            (
                Counter::Forwarded,
                "patronus_worker_forwarded_packets",
                "Packets the worker forwarded.",
            ),
            (
                Counter::ForwardedBytes,
                "patronus_worker_forwarded_bytes",
                "Bytes the worker forwarded.",
            ),
            (
                Counter::Fragments,
                "patronus_worker_ip_fragments",
                "IP fragments seen (forwarded without reassembly).",
            ),
            (
                Counter::EchoReplies,
                "patronus_worker_echo_replies",
                "ICMP and ICMPv6 echo replies sent.",
            ),
            (
                Counter::IcmpErrors,
                "patronus_worker_icmp_errors_sent",
                "ICMP and ICMPv6 errors sent.",
            ),
            (
                Counter::IcmpRateLimited,
                "patronus_worker_icmp_errors_rate_limited",
                "ICMP errors suppressed by the rate limit.",
            ),
            (
                Counter::ArpReplies,
                "patronus_worker_arp_replies_sent",
                "ARP replies sent.",
            ),
            (
                Counter::ArpRequests,
                "patronus_worker_arp_requests_sent",
                "ARP requests sent.",
            ),
            (
                Counter::NdAdvertisements,
                "patronus_worker_nd_advertisements_sent",
                "IPv6 Neighbor Advertisements sent.",
            ),
            (
                Counter::NdSolicitations,
                "patronus_worker_nd_solicitations_sent",
                "IPv6 Neighbor Solicitations sent.",
            ),
            (
                Counter::LearnEventsLost,
                "patronus_worker_neighbor_events_lost",
                "Neighbour observations lost to a full channel.",
            ),
            (
                Counter::BusyCycles,
                "patronus_worker_busy_cycles",
                "TSC cycles spent in loop rounds that moved packets.",
            ),
            (
                Counter::TotalCycles,
                "patronus_worker_cycles",
                "TSC cycles spent in the worker loop.",
            ),
            (
                Counter::FlowsCreated,
                "patronus_flows_created",
                "Flows created.",
            ),
            (
                Counter::FlowsExpired,
                "patronus_flows_expired",
                "Flows evicted after their idle timeout.",
            ),
            (
                Counter::FlowInsertFailed,
                "patronus_flow_insert_failures",
                "Packets whose flow could not be created because the table was full.",
            ),
        ] {
            counter(&mut enc, metric, help, by_worker(c))?;
        }
        gauge(
            &mut enc,
            "patronus_worker_busy_ratio",
            "Share of the last second the worker spent moving packets (0 to 1).",
            workers.iter().enumerate().map(|(i, w)| {
                (
                    [("worker", i.to_string())],
                    w.get(Counter::BusyRatioPpm) as f64 / 1e6,
                )
            }),
        )?;
        gauge(
            &mut enc,
            "patronus_flows_active",
            "Flows in the worker's flow table.",
            by_worker(Counter::FlowsActive),
        )?;
        gauge(
            &mut enc,
            "patronus_flow_table_capacity",
            "Flows the worker's table can hold.",
            (0..workers.len()).map(|i| {
                (
                    [("worker", i.to_string())],
                    u64::from(cfg.worker.flow_capacity),
                )
            }),
        )?;
        gauge(
            &mut enc,
            "patronus_neighbor_pending_packets",
            "Packets waiting for next-hop resolution.",
            by_worker(Counter::PendingPackets),
        )?;
        self.encode_tunnels(&cfg, &mut enc)?;
        gauge(
            &mut enc,
            "patronus_neighbors",
            "Entries in the neighbour table (ARP and IPv6 ND).",
            [(
                [("family", "all".to_owned())],
                self.neighbors.load().len() as u64,
            )],
        )?;
        counter(
            &mut enc,
            "patronus_neighbor_learn_refused",
            "Neighbour entries not created because the table was full.",
            [(
                [("table", "neighbors".to_owned())],
                self.neighbors.refused(),
            )],
        )?;
        let pool: L1 = [("pool", self.pool.name().to_owned())];
        gauge(
            &mut enc,
            "patronus_mempool_in_use",
            "Packet buffers taken from the pool.",
            [(pool.clone(), u64::from(self.pool.in_use()))],
        )?;
        gauge(
            &mut enc,
            "patronus_mempool_size",
            "Packet buffers in the pool.",
            [(pool, u64::from(self.pool.size()))],
        )?;
        gauge(
            &mut enc,
            "patronus_config_generation",
            "Generation of the configuration in force.",
            [([("source", "file".to_owned())], u64::from(cfg.generation))],
        )?;
        gauge(
            &mut enc,
            "patronus_config_site_version",
            "Version of the control plane's site snapshot in force (0: standalone or none yet).",
            [(NO_LABELS, cfg.site.version)],
        )?;
        gauge(
            &mut enc,
            "patronus_config_peers",
            "WireGuard peers configured for the site.",
            [(NO_LABELS, cfg.site.peers.len() as u64)],
        )?;
        gauge(
            &mut enc,
            "patronus_config_policy_rules",
            "Policy rules in force.",
            [(NO_LABELS, cfg.site.rules.len() as u64)],
        )?;
        if let Some(agent) = &self.agent {
            gauge(
                &mut enc,
                "patronus_controlplane_connected",
                "1 while subscribed to the control plane.",
                [(
                    NO_LABELS,
                    u64::from(agent.connected.load(Ordering::Acquire)),
                )],
            )?;
            counter(
                &mut enc,
                "patronus_controlplane_snapshots_refused",
                "Control-plane snapshots refused (NACKed); the previous one stayed in force.",
                [(NO_LABELS, agent.refused.load(Ordering::Relaxed))],
            )?;
            counter(
                &mut enc,
                "patronus_controlplane_disconnects",
                "Subscriptions to the control plane that ended.",
                [(NO_LABELS, agent.disconnects.load(Ordering::Relaxed))],
            )?;
        }
        encode_dpi(&mut enc, &self.dpi)
    }
}

/// The classification metrics, summed over workers (only series that counted something).
fn encode_dpi(enc: &mut DescriptorEncoder, workers: &[Arc<DpiCounters>]) -> fmt::Result {
    let labels = dpi_counters::labels();
    let per_app = |f: fn(&DpiCounters, u32) -> u64| -> Vec<(L2, u64)> {
        labels
            .iter()
            .enumerate()
            .filter_map(|(id, (name, category))| {
                let v: u64 = workers.iter().map(|w| f(w, id as u32)).sum();
                (v > 0).then(|| {
                    (
                        [
                            ("category", category.to_string()),
                            ("application", name.clone()),
                        ],
                        v,
                    )
                })
            })
            .collect()
    };
    counter(
        enc,
        "patronus_dpi_application_flows",
        "Flows classified, by category and application.",
        per_app(DpiCounters::app_flows),
    )?;
    counter(
        enc,
        "patronus_dpi_application_bytes",
        "IP bytes of classified flows, by category and application.",
        per_app(DpiCounters::app_bytes),
    )?;
    let per_category = |f: fn(&DpiCounters, Category) -> u64| -> Vec<(L1, u64)> {
        Category::ALL
            .iter()
            .map(|&c| {
                (
                    [("category", c.to_string())],
                    workers.iter().map(|w| f(w, c)).sum(),
                )
            })
            .collect()
    };
    counter(
        enc,
        "patronus_dpi_category_flows",
        "Flows classified, by category (Unknown: not identified within the inspection bounds).",
        per_category(DpiCounters::category_flows),
    )?;
    counter(
        enc,
        "patronus_dpi_category_bytes",
        "IP bytes of classified flows, by category.",
        per_category(DpiCounters::category_bytes),
    )?;
    counter(
        enc,
        "patronus_dpi_unknown_flows",
        "Flows left Unknown when inspection ended.",
        [(
            NO_LABELS,
            workers
                .iter()
                .map(|w| w.category_flows(Category::Unknown))
                .sum::<u64>(),
        )],
    )?;
    counter(
        enc,
        "patronus_dpi_reassembly_exhausted",
        "TLS/QUIC hellos not reassembled because every reassembly buffer was in use.",
        [(
            NO_LABELS,
            workers
                .iter()
                .map(|w| w.reassembly_exhausted())
                .sum::<u64>(),
        )],
    )?;
    let mut buckets = [0u64; PACKET_BUCKETS.len() + 1];
    let mut sum = 0u64;
    for w in workers {
        let (b, s) = w.packets_histogram();
        for (total, v) in buckets.iter_mut().zip(b) {
            *total += v;
        }
        sum += s;
    }
    let bounds: Vec<(f64, u64)> = PACKET_BUCKETS
        .iter()
        .map(|&le| le as f64)
        .chain([f64::INFINITY])
        .zip(buckets)
        .collect();
    let mut family = enc.encode_descriptor(
        "patronus_dpi_classification_packets",
        "Packets with payload a flow needed before its classification was final.",
        None,
        MetricType::Histogram,
    )?;
    family.encode_family(&NO_LABELS)?.encode_histogram::<L0>(
        sum as f64,
        buckets.iter().sum(),
        &bounds,
        None,
    )
}

#[derive(Debug)]
struct HttpState {
    registry: Registry,
    health: Arc<Health>,
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics encoding failed\n".to_owned(),
        ),
    }
}

async fn healthz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    match state.health.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// The `/metrics` and `/healthz` server, on its own thread.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` now (so a busy port is reported at start) and serves on
    /// a background thread.
    ///
    /// # Errors
    /// When the address cannot be bound or the runtime cannot start.
    pub fn start(
        addr: SocketAddr,
        collector: DataplaneCollector,
        health: Arc<Health>,
    ) -> std::io::Result<HttpServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let state = Arc::new(HttpState { registry, health });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(err) => {
                            tracing::error!(%err, "metrics listener");
                            return;
                        }
                    };
                    let app = Router::new()
                        .route("/metrics", get(metrics))
                        .route("/healthz", get(healthz))
                        .with_state(state);
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                    if let Err(err) = served {
                        tracing::error!(%err, "metrics server");
                    }
                });
            })?;
        Ok(HttpServer {
            local_addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and drops the collector (and with it its port handles).
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
