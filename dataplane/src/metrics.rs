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
use crate::dpdk::{Mempool, Port, PortStats};
use crate::resolver::Resolver;
use patronus_core::bfd::packet::{Diagnostic, Malformed, State as BfdState};
use patronus_core::config::site::RuleAction;
use patronus_core::config::{Snapshot, TunnelSnapshot};
use patronus_core::dpi::counters::{self as dpi_counters, DpiCounters, PACKET_BUCKETS};
use patronus_core::dpi::{Category, Method};
use patronus_core::neighbor::NeighborShared;
use patronus_core::packet::parse::ParseError;
use patronus_core::paths::bfd::{BfdCounters, BfdDrop, DIAGNOSTICS};
use patronus_core::paths::sla::PathFigures;
use patronus_core::paths::Path;
use patronus_core::published::Published;
use patronus_core::qos::{self, Class, ClassCounters};
use patronus_core::stats::{
    peer_total, BfdReport, Counter, Counters, DropReason, FailoverReason, PathReport, PathsReport,
    PolicyCounters, RecoveryHistogram, SharedCounters, SharedQosStats, SharedTunnelStats,
    SojournHistogram, MAX_TUNNEL_PEERS, RECOVERY_BUCKETS, SOJOURN_BUCKETS_NS,
};
use patronus_core::tunnel::{PeerStats, TunnelDrop, TunnelEvent};

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
    /// Each worker's drops per policy rule.
    pub policy: Vec<Arc<PolicyCounters>>,
    /// The control-plane agent, when the data plane is managed.
    pub agent: Option<Arc<AgentStatus>>,
    /// Each worker's tunnel figures.
    pub tunnels: Vec<Arc<SharedTunnelStats>>,
    /// Each worker's shaped egresses.
    pub qos: Vec<Arc<SharedQosStats>>,
    /// The endpoint resolver.
    pub resolver: Resolver,
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

/// What reads one figure of a port's DPDK counters.
type PortField = fn(&PortStats) -> u64;
/// What reads one per-queue array of a port's DPDK counters.
type QueueField = fn(&PortStats) -> &Vec<u64>;
/// What reads one figure of a peer's tunnel totals.
type PeerField = fn(&PeerStats) -> u64;

/// The port counters written from the driver's statistics: (metric, help, figure).
const PORT_COUNTERS: [(&str, &str, PortField); 7] = [
    (
        "patronus_port_rx_packets",
        "Packets received by the port.",
        |s| s.rx_packets,
    ),
    (
        "patronus_port_tx_packets",
        "Packets sent by the port.",
        |s| s.tx_packets,
    ),
    (
        "patronus_port_rx_bytes",
        "Bytes received by the port.",
        |s| s.rx_bytes,
    ),
    ("patronus_port_tx_bytes", "Bytes sent by the port.", |s| {
        s.tx_bytes
    }),
    (
        "patronus_port_rx_dropped_packets",
        "Packets the port dropped on receive: rx ring full or no buffer.",
        |s| s.rx_missed + s.rx_nombuf,
    ),
    (
        "patronus_port_rx_errors",
        "Receive errors reported by the driver.",
        |s| s.rx_errors,
    ),
    (
        "patronus_port_tx_errors",
        "Transmit errors reported by the driver.",
        |s| s.tx_errors,
    ),
];

/// The queue counters written from the driver's statistics: (metric, help, per-queue figures).
const QUEUE_COUNTERS: [(&str, &str, QueueField); 4] = [
    (
        "patronus_queue_rx_packets",
        "Packets received per rx queue.",
        |s| &s.queue_rx_packets,
    ),
    (
        "patronus_queue_tx_packets",
        "Packets sent per tx queue.",
        |s| &s.queue_tx_packets,
    ),
    (
        "patronus_queue_rx_bytes",
        "Bytes received per rx queue.",
        |s| &s.queue_rx_bytes,
    ),
    ("patronus_queue_tx_bytes", "Bytes sent per tx queue.", |s| {
        &s.queue_tx_bytes
    }),
];

/// The worker counters written one series per worker: (counter, metric, help).
const WORKER_COUNTERS: [(Counter, &str, &str); 18] = [
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
];

/// The tunnel counters written one series per peer: (metric, help, figure).
const TUNNEL_PEER_COUNTERS: [(&str, &str, PeerField); 7] = [
    (
        "patronus_tunnel_tx_packets",
        "Packets sent into the peer's tunnel (keepalives excluded).",
        |s| s.tx_packets,
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
];

/// What the devices report at scrape time. It is the only part of a scrape
/// that needs DPDK, read apart from the encoding so that the exposition can
/// be tested on plain values.
#[derive(Debug, Clone)]
struct DeviceReadings {
    /// Each started port's counters, in config order; `None` when its driver
    /// could not report them (its port and queue series are left out).
    port_stats: Vec<Option<PortStats>>,
    /// Each started port's link state, in config order.
    link_up: Vec<bool>,
    /// The packet buffer pool's name.
    pool_name: String,
    /// Packet buffers taken from the pool.
    pool_in_use: u32,
    /// Packet buffers in the pool.
    pool_size: u32,
}

impl DeviceReadings {
    /// Reads the ports' statistics and links and the pool's fill.
    fn read(ports: &[Port], pool: &Mempool) -> DeviceReadings {
        DeviceReadings {
            port_stats: ports.iter().map(|p| p.stats().ok()).collect(),
            link_up: ports.iter().map(|p| p.link().up).collect(),
            pool_name: pool.name().to_owned(),
            pool_in_use: pool.in_use(),
            pool_size: pool.size(),
        }
    }
}

/// Everything one scrape writes from, with the workers' counters read once
/// so that their families agree with each other. Each method writes one group
/// of families; [`Scrape::encode`] fixes their order.
struct Scrape<'a> {
    /// The configuration in force: port and peer names, capacities, versions.
    cfg: &'a Snapshot,
    /// The ports' and the pool's readings.
    devices: DeviceReadings,
    /// Each worker's published counters (their per-port tx drops are read here).
    shared: &'a [Arc<SharedCounters>],
    /// Each worker's counters, read once.
    workers: Vec<Counters>,
    /// Each worker's tunnel figures.
    tunnels: &'a [Arc<SharedTunnelStats>],
    /// Each worker's shaped egresses.
    qos: &'a [Arc<SharedQosStats>],
    /// The neighbour table.
    neighbors: &'a NeighborShared,
    /// Each worker's classification counters.
    dpi: &'a [Arc<DpiCounters>],
    /// Each worker's drops per policy rule.
    policy: &'a [Arc<PolicyCounters>],
    /// The control-plane agent, when the data plane is managed.
    agent: Option<&'a AgentStatus>,
    /// Endpoint lookups: (answered, failed).
    dns_lookups: (u64, u64),
}

impl Scrape<'_> {
    /// Writes every family, in the order dashboards, alerts and the tests
    /// have always seen them.
    fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        self.ports(enc)?;
        self.queues(enc)?;
        self.links(enc)?;
        self.worker_drops(enc)?;
        self.worker_counters(enc)?;
        self.worker_gauges(enc)?;
        if let Some(tunnel) = self.cfg.tunnel.as_deref() {
            self.tunnel_peers(tunnel, enc)?;
            self.tunnel_engine(enc)?;
            if !tunnel.paths.is_empty() {
                self.paths(tunnel, enc)?;
            }
        }
        if !self.cfg.shapers.is_empty() {
            self.shapers(enc)?;
        }
        self.neighbor_table(enc)?;
        self.pool(enc)?;
        self.config(enc)?;
        self.policy_drops(enc)?;
        if let Some(agent) = self.agent {
            encode_agent(agent, enc)?;
        }
        let (answered, failed) = self.dns_lookups;
        counter(
            enc,
            "patronus_dns_lookups",
            "Lookups of peer endpoint host names, by result (a failed one keeps the last address).",
            [
                ([("result", "answered")], answered),
                ([("result", "failed")], failed),
            ],
        )?;
        self.dpi_applications(enc)?;
        self.dpi_categories(enc)?;
        self.dpi_inspection(enc)
    }

    /// A port's label: its configured name, or its index for a port the
    /// configuration does not name.
    fn port_name(&self, port: usize) -> String {
        self.cfg
            .ports
            .get(port)
            .map_or_else(|| port.to_string(), |p| p.name.clone())
    }

    /// The ports whose driver reported statistics, with their labels.
    fn port_stats(&self) -> impl Iterator<Item = (String, &PortStats)> {
        self.devices
            .port_stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((self.port_name(i), s.as_ref()?)))
    }

    /// Per port: the driver's counters and the tx drops the workers counted.
    fn ports(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        for (metric, help, field) in PORT_COUNTERS {
            let samples: Vec<(L1, u64)> = self
                .port_stats()
                .map(|(name, s)| ([("port", name)], field(s)))
                .collect();
            counter(enc, metric, help, samples)?;
        }
        let tx_dropped: Vec<(L1, u64)> = (0..self.devices.port_stats.len())
            .map(|i| {
                (
                    [("port", self.port_name(i))],
                    self.shared.iter().map(|w| w.port_tx_dropped(i)).sum(),
                )
            })
            .collect();
        counter(
            enc,
            "patronus_port_tx_dropped_packets",
            "Packets dropped because the port's tx ring was full.",
            tx_dropped,
        )
    }

    /// Per port and queue: the driver's counters and each worker's tx drops
    /// (worker *i* owns queue *i*).
    fn queues(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        for (metric, help, field) in QUEUE_COUNTERS {
            let samples: Vec<(L2, u64)> =
                self.port_stats()
                    .flat_map(|(name, s)| {
                        field(s).iter().enumerate().map(move |(q, v)| {
                            ([("port", name.clone()), ("queue", q.to_string())], *v)
                        })
                    })
                    .collect();
            counter(enc, metric, help, samples)?;
        }
        let queue_drops: Vec<(L2, u64)> = (0..self.devices.port_stats.len())
            .flat_map(|i| {
                self.shared.iter().enumerate().map(move |(q, w)| {
                    (
                        [("port", self.port_name(i)), ("queue", q.to_string())],
                        w.port_tx_dropped(i),
                    )
                })
            })
            .collect();
        counter(
            enc,
            "patronus_queue_tx_dropped_packets",
            "Packets dropped per tx queue because its ring was full.",
            queue_drops,
        )
    }

    /// Per port: whether its link is up.
    fn links(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        gauge(
            enc,
            "patronus_port_link_up",
            "1 when the port's link is up.",
            self.devices
                .link_up
                .iter()
                .enumerate()
                .map(|(i, up)| ([("port", self.port_name(i))], i64::from(*up))),
        )
    }

    /// One series per worker of counter `c`.
    fn by_worker(&self, c: Counter) -> Vec<(L1, u64)> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| ([("worker", i.to_string())], w.get(c)))
            .collect()
    }

    /// Per worker: packets dropped, by the parser's and the forwarding
    /// stages' reasons.
    fn worker_drops(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        counter(
            enc,
            "patronus_parse_drops",
            "Frames dropped by the parser, by reason.",
            self.workers.iter().enumerate().flat_map(|(i, w)| {
                ParseError::ALL.iter().map(move |e| {
                    (
                        [("worker", i.to_string()), ("reason", e.as_str().to_owned())],
                        w.parse_drops(*e),
                    )
                })
            }),
        )?;
        counter(
            enc,
            "patronus_forward_drops",
            "Well-formed packets dropped by the forwarding stage, by reason.",
            self.workers.iter().enumerate().flat_map(|(i, w)| {
                DropReason::ALL.iter().map(move |r| {
                    (
                        [("worker", i.to_string()), ("reason", r.as_str().to_owned())],
                        w.drops(*r),
                    )
                })
            }),
        )
    }

    /// Per worker: what it received, forwarded and answered, its cycles and
    /// its flows created and lost ([`WORKER_COUNTERS`]).
    fn worker_counters(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        for (c, metric, help) in WORKER_COUNTERS {
            counter(enc, metric, help, self.by_worker(c))?;
        }
        Ok(())
    }

    /// Per worker: how busy it is, how full its flow table is and how many
    /// packets wait for a next hop.
    fn worker_gauges(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        gauge(
            enc,
            "patronus_worker_busy_ratio",
            "Share of the last second the worker spent moving packets (0 to 1).",
            self.workers.iter().enumerate().map(|(i, w)| {
                (
                    [("worker", i.to_string())],
                    w.get(Counter::BusyRatioPpm) as f64 / 1e6,
                )
            }),
        )?;
        gauge(
            enc,
            "patronus_flows_active",
            "Flows in the worker's flow table.",
            self.by_worker(Counter::FlowsActive),
        )?;
        gauge(
            enc,
            "patronus_flow_table_capacity",
            "Flows the worker's table can hold.",
            (0..self.workers.len()).map(|i| {
                (
                    [("worker", i.to_string())],
                    u64::from(self.cfg.worker.flow_capacity),
                )
            }),
        )?;
        gauge(
            enc,
            "patronus_neighbor_pending_packets",
            "Packets waiting for next-hop resolution.",
            self.by_worker(Counter::PendingPackets),
        )
    }

    /// Per peer (summed over workers; each peer's owner has them all): its
    /// tunnel's state, traffic, handshakes and compression.
    fn tunnel_peers(&self, tunnel: &TunnelSnapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
        let peers: Vec<(String, PeerStats)> = tunnel
            .config
            .peers
            .iter()
            .take(MAX_TUNNEL_PEERS)
            .enumerate()
            .map(|(i, p)| (p.name.clone(), peer_total(self.tunnels, i)))
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
        let per_peer = |f: PeerField| -> Vec<(L1, u64)> {
            peers
                .iter()
                .map(|(n, s)| ([("peer", n.clone())], f(s)))
                .collect()
        };
        for (metric, help, f) in TUNNEL_PEER_COUNTERS {
            counter(enc, metric, help, per_peer(f))?;
        }
        gauge(
            enc,
            "patronus_compression_ratio",
            "Bytes before compression over bytes sent, for peers with compression on (1: nothing saved yet).",
            tunnel
                .config
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
        )
    }

    /// Engine-wide, summed over workers: tunnel drops by reason and protocol
    /// events.
    fn tunnel_engine(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
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

    /// The BFD session of each path that has one, and the Control packets
    /// of every worker; nothing when no path runs BFD.
    fn bfd(
        &self,
        tunnel: &TunnelSnapshot,
        paths: &[(&Path, &PathReport)],
        reports: &[Arc<PathsReport>],
        enc: &mut DescriptorEncoder,
    ) -> fmt::Result {
        // The uplinks' sessions are named `site:uplink->router`.
        let uplink_sessions = reports
            .iter()
            .flat_map(|w| &w.uplink_bfd)
            .filter_map(|(u, b)| {
                let id = &tunnel.paths.uplinks.get(usize::from(*u))?.bfd.as_ref()?.id;
                Some((id.clone(), b))
            });
        let sessions: Vec<(Arc<str>, &BfdReport)> = paths
            .iter()
            .filter_map(|(p, r)| Some((p.id.clone(), r.bfd.as_ref()?)))
            .chain(uplink_sessions)
            .collect();
        if sessions.is_empty() {
            return Ok(());
        }
        gauge(
            enc,
            "patronus_bfd_session_status",
            "1 for the state the path's BFD session is in, 0 for the others (an uplink's session with its router: site:uplink->router).",
            sessions.iter().flat_map(|(p, b)| {
                BfdState::ALL.into_iter().map(move |state| {
                    (
                        [
                            ("path_id", p.to_string()),
                            ("state", state.as_str().to_owned()),
                        ],
                        i64::from(b.state == state),
                    )
                })
            }),
        )?;
        counter(
            enc,
            "patronus_bfd_state_changes",
            "Times the path's BFD session entered a state, by the diagnostic it then sent.",
            sessions.iter().flat_map(|(p, b)| {
                BfdState::ALL
                    .into_iter()
                    .enumerate()
                    .flat_map(move |(s, to)| {
                        (0..DIAGNOSTICS)
                            .filter(move |&d| b.changes[s][d] > 0)
                            .map(move |d| {
                                (
                                    [
                                        ("path_id", p.to_string()),
                                        ("to", to.as_str().to_owned()),
                                        ("diag", Diagnostic(d as u8).as_str().to_owned()),
                                    ],
                                    b.changes[s][d],
                                )
                            })
                    })
            }),
        )?;
        gauge(
            enc,
            "patronus_bfd_detection_time_seconds",
            "How long the path's BFD session waits for a packet before it declares the path down, as negotiated (0 before the remote is heard).",
            sessions
                .iter()
                .map(|(p, b)| ([("path_id", p.to_string())], b.detection_time_ns as f64 / 1e9)),
        )?;
        let mut total = BfdCounters::default();
        for w in reports {
            total.tx += w.bfd.tx;
            total.rx += w.bfd.rx;
            for (t, c) in total.malformed.iter_mut().zip(w.bfd.malformed) {
                *t += c;
            }
            for (t, c) in total.dropped.iter_mut().zip(w.bfd.dropped) {
                *t += c;
            }
        }
        counter(
            enc,
            "patronus_bfd_control_packets",
            "BFD Control packets sent and taken by a session, over every path.",
            [("tx", total.tx), ("rx", total.rx)]
                .into_iter()
                .map(|(d, n)| ([("direction", d.to_owned())], n)),
        )?;
        counter(
            enc,
            "patronus_bfd_control_drops",
            "BFD Control packets received and dropped, by reason: their shape (truncated, version, ...), a TTL other than 255, or no session of theirs.",
            Malformed::ALL
                .iter()
                .map(|m| (m.as_str(), total.malformed[m.index()]))
                .chain(
                    BfdDrop::ALL
                        .iter()
                        .map(|r| (r.as_str(), total.dropped[r.index()])),
                )
                .map(|(reason, n)| ([("reason", reason.to_owned())], n)),
        )
    }

    /// Each path: what it is, whether its peer's packets take it, what its
    /// probes or its peer's handshakes measure ("not measured" is no
    /// series, not a zero), its traffic; and the failovers.
    fn paths(&self, tunnel: &TunnelSnapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
        let reports: Vec<_> = self.tunnels.iter().map(|w| w.paths()).collect();
        let mut by_path: Vec<Option<&PathReport>> = vec![None; tunnel.paths.paths.len()];
        for r in reports.iter().flat_map(|w| &w.paths) {
            let i = usize::from(r.index);
            if tunnel.paths.paths.get(i).is_some_and(|p| p.tag == r.tag) {
                by_path[i] = Some(r);
            }
        }
        let paths: Vec<(&Path, &PathReport)> = tunnel
            .paths
            .paths
            .iter()
            .zip(&by_path)
            .filter_map(|(p, r)| Some((p, (*r)?)))
            .collect();
        let id = |p: &Path| [("path_id", p.id.to_string())];
        gauge(
            enc,
            "patronus_path_info",
            "1 for each path: its peer, uplink, colour, and how it is measured (probes, or passive: from WireGuard handshakes).",
            paths.iter().map(|(p, _)| {
                let uplink = &tunnel.paths.uplinks[usize::from(p.uplink)];
                let peer = tunnel.config.peers.get(p.peer as usize);
                (
                    [
                        ("path_id", p.id.to_string()),
                        ("peer", peer.map(|c| c.name.clone()).unwrap_or_default()),
                        ("uplink", uplink.name.clone()),
                        ("color", uplink.color.clone()),
                        (
                            "measured",
                            if p.probed { "probes" } else { "passive" }.to_owned(),
                        ),
                    ],
                    1i64,
                )
            }),
        )?;
        gauge(
            enc,
            "patronus_path_active",
            "1 when the peer's packets take this path now.",
            paths.iter().map(|(p, r)| (id(p), i64::from(r.active))),
        )?;
        let measured: Vec<(&Path, PathFigures)> = paths
            .iter()
            .filter_map(|(p, r)| Some((*p, r.figures?)))
            .collect();
        gauge(
            enc,
            "patronus_path_up",
            "1 while the path answers, 0 once it missed paths.down_after probes in a row (passive: two handshake initiations).",
            measured.iter().map(|(p, f)| (id(p), i64::from(f.up))),
        )?;
        gauge(
            enc,
            "patronus_path_health_score",
            "Path quality 0-100 from latency, jitter and loss (an E-model R factor; see docs/paths.md).",
            measured
                .iter()
                .filter_map(|(p, f)| Some((id(p), f.health?))),
        )?;
        gauge(
            enc,
            "patronus_path_packet_loss_pct",
            "Probes lost over the window, percent.",
            measured
                .iter()
                .filter_map(|(p, f)| Some((id(p), f.loss_pct?))),
        )?;
        gauge(
            enc,
            "patronus_path_latency_seconds",
            "Probe round-trip time over the window, by percentile (50, 95, 99).",
            measured.iter().flat_map(|(p, f)| {
                f.rtt_ms.into_iter().flat_map(move |rtt| {
                    ["50", "95", "99"].into_iter().zip(rtt).map(move |(q, ms)| {
                        (
                            [("path_id", p.id.to_string()), ("percentile", q.to_owned())],
                            ms / 1000.0,
                        )
                    })
                })
            }),
        )?;
        gauge(
            enc,
            "patronus_path_jitter_seconds",
            "Round-trip jitter (RFC 3550's estimator).",
            measured
                .iter()
                .filter(|(_, f)| f.rtt_ms.is_some())
                .map(|(p, f)| (id(p), f.jitter_ms / 1000.0)),
        )?;
        gauge(
            enc,
            "patronus_path_availability_ratio",
            "Share of the time since the path was configured that it was up, 0-1.",
            measured.iter().map(|(p, f)| (id(p), f.availability)),
        )?;
        counter(
            enc,
            "patronus_path_probes_sent",
            "Probes sent on the path (passive paths: handshakes resolved, answered or not).",
            measured.iter().map(|(p, f)| (id(p), f.sent)),
        )?;
        counter(
            enc,
            "patronus_path_probes_answered",
            "Echoes of the path's probes received (passive paths: handshakes answered).",
            measured.iter().map(|(p, f)| (id(p), f.received)),
        )?;
        for (metric, help, value) in [
            (
                "patronus_path_tx_packets",
                "Tunnel datagrams sent over the path (probes included).",
                (|r: &PathReport| r.tx_packets) as fn(&PathReport) -> u64,
            ),
            (
                "patronus_path_tx_bytes",
                "Bytes of those datagrams (WireGuard messages, before outer headers).",
                |r| r.tx_bytes,
            ),
            (
                "patronus_path_rx_packets",
                "Packets received over the path (decrypted).",
                |r| r.rx_packets,
            ),
            (
                "patronus_path_rx_bytes",
                "Bytes of those packets (inner).",
                |r| r.rx_bytes,
            ),
        ] {
            counter(
                enc,
                metric,
                help,
                paths.iter().map(|(p, r)| (id(p), value(r))),
            )?;
        }
        self.bfd(tunnel, &paths, &reports, enc)?;
        let mut failovers: std::collections::BTreeMap<&str, [u64; FailoverReason::COUNT]> =
            std::collections::BTreeMap::new();
        failovers.insert("default", [0; FailoverReason::COUNT]);
        for (policy, counts) in reports.iter().flat_map(|w| &w.failovers) {
            let total = failovers.entry(policy).or_default();
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        counter(
            enc,
            "patronus_failover_events",
            "Times traffic moved to another path, by policy (default: the site's path order) and reason.",
            failovers.iter().flat_map(|(policy, counts)| {
                FailoverReason::ALL.iter().map(move |reason| {
                    (
                        [
                            ("policy_id", (*policy).to_owned()),
                            ("reason", reason.as_str().to_owned()),
                        ],
                        counts[reason.index()],
                    )
                })
            }),
        )?;
        let mut recovery = RecoveryHistogram::default();
        for w in &reports {
            for (t, c) in recovery.buckets.iter_mut().zip(w.recovery.buckets) {
                *t += c;
            }
            recovery.over += w.recovery.over;
            recovery.sum_s += w.recovery.sum_s;
        }
        let bounds: Vec<(f64, u64)> = RECOVERY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(recovery.buckets.iter().copied().chain([recovery.over]))
            .collect();
        let mut family = enc.encode_descriptor(
            "patronus_failover_recovery_seconds",
            "Time from a failover to the first packet that took the new path.",
            None,
            MetricType::Histogram,
        )?;
        family.encode_family(&NO_LABELS)?.encode_histogram::<L0>(
            recovery.sum_s,
            recovery.count(),
            &bounds,
            None,
        )
    }

    /// Each shaped egress in force, per class: what it holds, sends and
    /// drops, and how long packets wait.
    fn shapers(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let published: Vec<_> = self.qos.iter().map(|w| w.egresses()).collect();
        // Its owner's figures; two workers publish one egress only for the
        // moment a reload moves it, and then the sum is what it did.
        let egresses: Vec<(&str, [ClassCounters; Class::COUNT], Vec<SojournHistogram>)> = self
            .cfg
            .shapers
            .iter()
            .map(|shaper| {
                let mut classes = [ClassCounters::default(); Class::COUNT];
                let mut sojourn = vec![SojournHistogram::default(); Class::COUNT];
                let reports = published.iter().flat_map(|w| w.iter());
                for r in reports.filter(|r| r.name == shaper.name) {
                    for (total, c) in classes.iter_mut().zip(&r.classes) {
                        total.queued_packets += c.queued_packets;
                        total.tx_packets += c.tx_packets;
                        total.tx_bytes += c.tx_bytes;
                        for (t, d) in total.drops.iter_mut().zip(c.drops) {
                            *t += d;
                        }
                    }
                    for (total, h) in sojourn.iter_mut().zip(&r.sojourn) {
                        for (t, b) in total.buckets.iter_mut().zip(h.buckets) {
                            *t += b;
                        }
                        total.over += h.over;
                        total.sum_ns += h.sum_ns;
                    }
                }
                (&*shaper.name, classes, sojourn)
            })
            .collect();
        let by_class = |value: fn(&ClassCounters) -> u64| {
            egresses.iter().flat_map(move |(name, classes, _)| {
                Class::ALL.iter().zip(classes).map(move |(class, c)| {
                    (
                        [("egress", name.to_string()), ("class", class.to_string())],
                        value(c),
                    )
                })
            })
        };
        gauge(
            enc,
            "patronus_qos_rate_bytes_per_second",
            "The rate each shaped egress is shaped to (its uplink's rate_mbps).",
            self.cfg
                .shapers
                .iter()
                .map(|s| ([("egress", s.name.to_string())], s.config.rate_bps / 8)),
        )?;
        gauge(
            enc,
            "patronus_qos_queue_packets",
            "Packets a shaper holds, by class.",
            by_class(|c| c.queued_packets),
        )?;
        counter(
            enc,
            "patronus_qos_tx_packets",
            "Packets a shaper sent, by class.",
            by_class(|c| c.tx_packets),
        )?;
        counter(
            enc,
            "patronus_qos_tx_bytes",
            "Bytes a shaper sent, by class, as charged: IP packet and the egress's framing overhead.",
            by_class(|c| c.tx_bytes),
        )?;
        counter(
            enc,
            "patronus_qos_drops",
            "Packets a shaper dropped, by class and reason (queue_full: the class's queue, pool_full: the egress's buffers, codel: the AQM at the head of a standing queue).",
            egresses.iter().flat_map(|(name, classes, _)| {
                Class::ALL.iter().zip(classes).flat_map(move |(class, c)| {
                    qos::DropReason::ALL.iter().map(move |reason| {
                        (
                            [
                                ("egress", name.to_string()),
                                ("class", class.to_string()),
                                ("reason", reason.to_string()),
                            ],
                            c.drops[reason.index()],
                        )
                    })
                })
            }),
        )?;
        let mut family = enc.encode_descriptor(
            "patronus_qos_queue_delay_seconds",
            "Time packets waited in a shaper before they were sent, by class.",
            None,
            MetricType::Histogram,
        )?;
        for (name, _, sojourn) in &egresses {
            for (class, h) in Class::ALL.iter().zip(sojourn) {
                let bounds: Vec<(f64, u64)> = SOJOURN_BUCKETS_NS
                    .iter()
                    .map(|ns| *ns as f64 / 1e9)
                    .chain([f64::INFINITY])
                    .zip(h.buckets.iter().copied().chain([h.over]))
                    .collect();
                let labels: L2 = [("egress", name.to_string()), ("class", class.to_string())];
                family.encode_family(&labels)?.encode_histogram::<L0>(
                    h.sum_ns as f64 / 1e9,
                    h.count(),
                    &bounds,
                    None,
                )?;
            }
        }
        Ok(())
    }

    /// The neighbour table's size and the entries it had no room for.
    fn neighbor_table(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        gauge(
            enc,
            "patronus_neighbors",
            "Entries in the neighbour table (ARP and IPv6 ND).",
            [(
                [("family", "all".to_owned())],
                self.neighbors.load().len() as u64,
            )],
        )?;
        counter(
            enc,
            "patronus_neighbor_learn_refused",
            "Neighbour entries not created because the table was full.",
            [(
                [("table", "neighbors".to_owned())],
                self.neighbors.refused(),
            )],
        )
    }

    /// The packet buffer pool's fill, which a leak shows in.
    fn pool(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pool: L1 = [("pool", self.devices.pool_name.clone())];
        gauge(
            enc,
            "patronus_mempool_in_use",
            "Packet buffers taken from the pool.",
            [(pool.clone(), u64::from(self.devices.pool_in_use))],
        )?;
        gauge(
            enc,
            "patronus_mempool_size",
            "Packet buffers in the pool.",
            [(pool, u64::from(self.devices.pool_size))],
        )
    }

    /// Which configuration is in force: its generation, the site snapshot's
    /// version, and the size of the site's part.
    fn config(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let cfg = self.cfg;
        gauge(
            enc,
            "patronus_config_generation",
            "Generation of the configuration in force.",
            [([("source", "file".to_owned())], u64::from(cfg.generation))],
        )?;
        gauge(
            enc,
            "patronus_config_site_version",
            "Version of the control plane's site snapshot in force (0: standalone or none yet).",
            [(NO_LABELS, cfg.site.version)],
        )?;
        gauge(
            enc,
            "patronus_config_peers",
            "WireGuard peers configured for the site.",
            [(NO_LABELS, cfg.site.peers.len() as u64)],
        )?;
        gauge(
            enc,
            "patronus_config_policy_rules",
            "Policy rules in force.",
            [(NO_LABELS, cfg.site.rules.len() as u64)],
        )
    }

    /// Packets each deny rule in force dropped (summed over workers). A
    /// rule keeps its counter while the process runs, so a rule removed and
    /// put back continues where it stopped.
    fn policy_drops(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let samples: Vec<(L2, u64)> = self
            .cfg
            .site
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::Deny)
            .map(|r| {
                let v = self.policy.iter().map(|w| w.drops(r.slot)).sum();
                (
                    [("policy", r.policy.clone()), ("rule", r.index.to_string())],
                    v,
                )
            })
            .collect();
        counter(
            enc,
            "patronus_policy_drops",
            "Packets dropped by a deny rule, by policy and rule (its position in the policy, from 0).",
            samples,
        )
    }

    /// Per application and category (summed over workers), flows and bytes
    /// of the labels that counted something.
    fn dpi_applications(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let labels = dpi_counters::labels();
        let per_app = |f: fn(&DpiCounters, u32) -> u64| -> Vec<(L2, u64)> {
            labels
                .iter()
                .enumerate()
                .filter_map(|(id, (name, category))| {
                    let v: u64 = self.dpi.iter().map(|w| f(w, id as u32)).sum();
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
        )
    }

    /// Per category (summed over workers), flows and bytes, and the flows
    /// inspection could not identify.
    fn dpi_categories(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let per_category = |f: fn(&DpiCounters, Category) -> u64| -> Vec<(L1, u64)> {
            Category::ALL
                .iter()
                .map(|&c| {
                    (
                        [("category", c.to_string())],
                        self.dpi.iter().map(|w| f(w, c)).sum(),
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
                self.dpi
                    .iter()
                    .map(|w| w.category_flows(Category::Unknown))
                    .sum::<u64>(),
            )],
        )?;
        counter(
            enc,
            "patronus_dpi_method_flows",
            "Flows classified, by what decided the verdict (signature, server_name, certificate, alpn, port, dns_cache, related, dissector; none: Unknown).",
            Method::ALL.iter().map(|&m| {
                (
                    [("method", m.to_string())],
                    self.dpi.iter().map(|w| w.method_flows(m)).sum::<u64>(),
                )
            }),
        )
    }

    /// What inspection cost (summed over workers): hellos it could not
    /// reassemble, announcements other workers missed, and the packets flows
    /// needed before their verdict.
    fn dpi_inspection(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        counter(
            enc,
            "patronus_dpi_reassembly_exhausted",
            "TLS/QUIC hellos not reassembled because every reassembly buffer was in use.",
            [(
                NO_LABELS,
                self.dpi
                    .iter()
                    .map(|w| w.reassembly_exhausted())
                    .sum::<u64>(),
            )],
        )?;
        counter(
            enc,
            "patronus_dpi_announcements_unshared",
            "Flows an FTP or SIP session announced that another worker could not be told of (its queue full); that worker classifies them by their own bytes.",
            [(
                NO_LABELS,
                self.dpi
                    .iter()
                    .map(|w| w.announcements_unshared_total())
                    .sum::<u64>(),
            )],
        )?;
        let mut buckets = [0u64; PACKET_BUCKETS.len() + 1];
        let mut sum = 0u64;
        for w in self.dpi {
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
}

/// The control-plane agent's connection: written only when the data plane is
/// managed.
fn encode_agent(agent: &AgentStatus, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "patronus_controlplane_connected",
        "1 while subscribed to the control plane.",
        [(
            NO_LABELS,
            u64::from(agent.connected.load(Ordering::Acquire)),
        )],
    )?;
    counter(
        enc,
        "patronus_controlplane_snapshots_refused",
        "Control-plane snapshots refused (NACKed); the previous one stayed in force.",
        [(NO_LABELS, agent.refused.load(Ordering::Relaxed))],
    )?;
    counter(
        enc,
        "patronus_controlplane_disconnects",
        "Subscriptions to the control plane that ended.",
        [(NO_LABELS, agent.disconnects.load(Ordering::Relaxed))],
    )
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let cfg = self.config.load();
        Scrape {
            cfg: &cfg,
            devices: DeviceReadings::read(&self.ports, &self.pool),
            shared: &self.workers,
            workers: self.workers.iter().map(|w| w.read()).collect(),
            tunnels: &self.tunnels,
            qos: &self.qos,
            neighbors: &self.neighbors,
            dpi: &self.dpi,
            policy: &self.policy,
            agent: self.agent.as_deref(),
            dns_lookups: self.resolver.lookups(),
        }
        .encode(&mut enc)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use patronus_core::config::Config;
    use patronus_core::neighbor::NeighborManager;
    use patronus_core::stats::{EgressReport, PathsReport};

    /// The tunnel's private key, written once per test process (tests run
    /// in parallel and must not rewrite it under each other) to the same
    /// file every run, so that none is left behind per run.
    fn key_file() -> &'static std::path::Path {
        static KEY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        KEY.get_or_init(|| {
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join("patronus-metrics-test");
            std::fs::create_dir_all(&dir).unwrap();
            let key = dir.join("private.key");
            std::fs::write(&key, "YBkW7zHbwkKwTF0EGjh7Ezli3Kjp6jFCTbDyUKCXnXU=").unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            key
        })
    }

    /// A site with two ports, a static neighbour, a tunnel to two peers (one
    /// compressing), a shaped uplink and a policy: every family group has
    /// series to write.
    fn snapshot() -> Snapshot {
        let text = format!(
            r#"
[[port]]
name = "lan"
device = "net_null0"
addresses = ["10.0.0.1/24", "fd00::1/64"]
[[port]]
name = "wan"
device = "net_null1"
addresses = ["10.0.1.1/24"]
[[neighbor]]
ip = "10.0.1.254"
mac = "02:00:00:00:00:fe"
port = "wan"
[tunnel]
private_key_file = "{}"
addresses = ["10.99.0.1/24"]
[[uplink]]
name = "mpls"
port = "wan"
color = "mpls"
rate_mbps = 20
next_hop = "10.0.1.254"
bfd = {{ desired_min_tx_ms = 50, required_min_rx_ms = 50 }}
[[uplink]]
name = "inet"
port = "lan"
color = "internet"
[[peer]]
name = "hq"
endpoint = {{ address = "10.0.1.50", port = 51820 }}
wireguard = {{ public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }}
allowed_ips = ["10.9.0.0/24"]
compression = true
sla_probes = true
[[peer]]
name = "dc"
endpoint = {{ address = "10.0.1.51", port = 51820 }}
wireguard = {{ public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=" }}
allowed_ips = ["10.10.0.0/24"]
[[policy]]
name = "video"
[[policy.rule]]
action = "deny"
priority = 100
conditions = [{{ type = "category", value = "Video" }}]
"#,
            key_file().display()
        );
        Config::from_toml(&text).unwrap().validate(4).unwrap()
    }

    /// What a scrape reads besides the devices, with distinct values
    /// everywhere so that a value landing in the wrong series shows.
    #[derive(Debug)]
    struct Sources {
        config: Arc<Published<Snapshot>>,
        workers: Vec<Arc<SharedCounters>>,
        neighbors: Arc<NeighborShared>,
        dpi: Vec<Arc<DpiCounters>>,
        policy: Vec<Arc<PolicyCounters>>,
        agent: Arc<AgentStatus>,
        tunnels: Vec<Arc<SharedTunnelStats>>,
        qos: Vec<Arc<SharedQosStats>>,
    }

    /// [`Sources`] of two workers, each peer's figures held by one of them.
    fn sources() -> Sources {
        let snapshot = snapshot();
        let workers: Vec<Arc<SharedCounters>> = (0..2u64)
            .map(|w| {
                let mut c = Counters::default();
                for (i, counter) in Counter::ALL.iter().enumerate() {
                    c.set(*counter, 1000 * (w + 1) + i as u64);
                }
                c.set(Counter::BusyRatioPpm, 250_000 * (w + 1));
                for (i, e) in ParseError::ALL.iter().enumerate() {
                    for _ in 0..=(i as u64 + w) {
                        c.parse_drop(*e);
                    }
                }
                for (i, r) in DropReason::ALL.iter().enumerate() {
                    c.drop_n(*r, 10 * (w + 1) + i as u64);
                }
                let shared = SharedCounters::default();
                shared.publish(&c);
                shared.set_port_tx_dropped(0, 7 + w);
                shared.set_port_tx_dropped(1, 70 + w);
                Arc::new(shared)
            })
            .collect();
        let neighbors = Arc::new(NeighborShared::default());
        let (_events, receiver) = crossbeam_channel::bounded(1);
        let mut manager =
            NeighborManager::new(snapshot.neighbors.clone(), neighbors.clone(), receiver);
        manager.configure(&snapshot.neighbors, &snapshot.static_neighbors);
        manager.tick(1);
        let dpi: Vec<Arc<DpiCounters>> = (0..2u64)
            .map(|w| {
                let d = DpiCounters::default();
                let video = dpi_counters::label_id("MetricsTest.Video", Category::Video);
                let dns = dpi_counters::label_id("MetricsTest.DNS", Category::DNS);
                d.classified(video, Category::Video, Method::ServerName, 1500 + w, 3);
                d.classified(dns, Category::DNS, Method::Dissector, 80, 1);
                d.classified(video, Category::Video, Method::Signature, 9000, 20);
                d.bytes(video, Category::Video, 100 * (w + 1));
                d.classified(0, Category::Unknown, Method::None, 40, 12);
                d.set_reassembly_exhausted(5 + w);
                d.announcements_unshared(2 + w);
                Arc::new(d)
            })
            .collect();
        let agent = Arc::new(AgentStatus::default());
        agent.connected.store(true, Ordering::Release);
        agent.refused.store(2, Ordering::Relaxed);
        agent.disconnects.store(3, Ordering::Relaxed);
        let tunnels: Vec<Arc<SharedTunnelStats>> = (0..2).map(|_| Arc::default()).collect();
        tunnels[0].publish_peer(
            0,
            &PeerStats {
                tx_packets: 11,
                tx_bytes: 1100,
                rx_packets: 12,
                rx_bytes: 1200,
                handshakes_sent: 2,
                handshakes_received: 3,
                handshakes_failed: 1,
                last_handshake_unix_s: 1_700_000_000,
                session_up: true,
                compress_in_bytes: 3000,
                compress_out_bytes: 1200,
            },
        );
        tunnels[1].publish_peer(
            1,
            &PeerStats {
                tx_packets: 21,
                handshakes_sent: 4,
                handshakes_failed: 4,
                ..PeerStats::default()
            },
        );
        // hq's paths (0, 1) are probed by worker 0: mpls measured and
        // active, inet down; dc's (2, 3) are worker 1's, unprobed.
        let paths = &snapshot.tunnel.as_ref().unwrap().paths.paths;
        let report = |i: usize, active: bool, figures: Option<PathFigures>| PathReport {
            index: i as u16,
            tag: paths[i].tag,
            active,
            figures,
            tx_packets: 100 + i as u64,
            tx_bytes: 10_000 + i as u64,
            rx_packets: 200 + i as u64,
            rx_bytes: 20_000 + i as u64,
            bfd: None,
        };
        // mpls runs BFD: up twice, down once when its detection time ran out.
        let mut changes = [[0; DIAGNOSTICS]; 4];
        changes[3][0] = 2;
        changes[1][1] = 1;
        let with_bfd = |r: PathReport| PathReport {
            bfd: Some(BfdReport {
                state: BfdState::Up,
                changes,
                detection_time_ns: 150_000_000,
                remote_state: BfdState::Up,
                discriminators: (7, 9),
                diagnostic: Diagnostic::NONE,
                tx_interval_ns: 50_000_000,
                since_change_ns: Some(1_000_000_000),
            }),
            ..r
        };
        let mut bfd = BfdCounters {
            tx: 1_000,
            rx: 990,
            ..BfdCounters::default()
        };
        bfd.malformed[Malformed::Version.index()] = 2;
        bfd.dropped[BfdDrop::Ttl.index()] = 1;
        let measured = PathFigures {
            up: true,
            rtt_ms: Some([10.5, 12.0, 15.25]),
            jitter_ms: 0.75,
            loss_pct: Some(1.0),
            availability: 0.999,
            health: Some(92.5),
            sent: 1000,
            received: 990,
        };
        let silent = PathFigures {
            up: false,
            rtt_ms: None,
            jitter_ms: 0.0,
            loss_pct: Some(100.0),
            availability: 0.25,
            health: None,
            sent: 40,
            received: 0,
        };
        tunnels[0].publish_paths(PathsReport {
            paths: vec![
                with_bfd(report(0, true, Some(measured))),
                report(1, false, Some(silent)),
            ],
            failovers: vec![
                ("default".into(), [3, 0, 2, 1]),
                ("voice".into(), [1, 1, 0, 0]),
            ],
            recovery: RecoveryHistogram {
                buckets: [0, 1, 2, 0, 0, 0, 0, 0, 0, 0],
                over: 0,
                sum_s: 0.0185,
            },
            moves: Vec::new(),
            bfd,
            uplink_bfd: vec![(
                0,
                BfdReport {
                    state: BfdState::Down,
                    changes: [[0; DIAGNOSTICS]; 4],
                    detection_time_ns: 0,
                    remote_state: BfdState::Down,
                    discriminators: (11, 0),
                    diagnostic: Diagnostic::NONE,
                    tx_interval_ns: 1_000_000_000,
                    since_change_ns: None,
                },
            )],
        });
        tunnels[1].publish_paths(PathsReport {
            paths: vec![report(2, true, None), report(3, false, None)],
            failovers: vec![("default".into(), [1, 0, 0, 0])],
            recovery: RecoveryHistogram::default(),
            moves: Vec::new(),
            bfd: BfdCounters::default(),
            uplink_bfd: Vec::new(),
        });
        // The video rule dropped 7 packets on one worker, 5 on the other.
        let slot = snapshot.site.rules[0].slot;
        let policy: Vec<Arc<PolicyCounters>> = [7, 5]
            .iter()
            .map(|&n| {
                let c = Arc::new(PolicyCounters::default());
                for _ in 0..n {
                    c.dropped(slot);
                }
                c
            })
            .collect();
        // Worker 0 shapes the uplink; each class's figures differ.
        let qos: Vec<Arc<SharedQosStats>> = (0..2).map(|_| Arc::default()).collect();
        let mut sojourn = SojournHistogram::default();
        for ns in [50_000, 3_000_000, 3_000_000, 2_000_000_000] {
            sojourn.observe(ns);
        }
        qos[0].publish(vec![EgressReport {
            name: "mpls".into(),
            classes: std::array::from_fn(|c| {
                let c = c as u64;
                ClassCounters {
                    queued_packets: c,
                    tx_packets: 100 + c,
                    tx_bytes: 150_000 + c,
                    drops: [10 + c, 20 + c, 30 + c],
                }
            }),
            sojourn: std::array::from_fn(|_| sojourn.clone()),
        }]);
        Sources {
            config: Arc::new(Published::new(snapshot)),
            workers,
            neighbors,
            dpi,
            policy,
            agent,
            tunnels,
            qos,
        }
    }

    /// The text `/metrics` serves for `collector`.
    fn exposition(collector: impl Collector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).unwrap();
        body
    }

    /// Two ports with two queues each, the second's counters different from
    /// the first's, and a pool with buffers in use.
    fn devices() -> DeviceReadings {
        let port = |base: u64| PortStats {
            rx_packets: base + 1,
            tx_packets: base + 2,
            rx_bytes: base + 3,
            tx_bytes: base + 4,
            rx_missed: base + 5,
            rx_errors: base + 6,
            tx_errors: base + 7,
            rx_nombuf: base + 8,
            queue_rx_packets: vec![base + 10, base + 11],
            queue_tx_packets: vec![base + 20, base + 21],
            queue_rx_bytes: vec![base + 30, base + 31],
            queue_tx_bytes: vec![base + 40, base + 41],
        };
        DeviceReadings {
            port_stats: vec![Some(port(100)), Some(port(200))],
            link_up: vec![true, false],
            pool_name: "patronus_mbufs".to_owned(),
            pool_in_use: 1234,
            pool_size: 8191,
        }
    }

    /// Serves [`Sources`] and made-up device readings the way
    /// [`DataplaneCollector`] serves the real ones.
    #[derive(Debug)]
    struct Fixture {
        sources: Sources,
        devices: DeviceReadings,
    }

    impl Collector for Fixture {
        fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
            let s = &self.sources;
            let cfg = s.config.load();
            Scrape {
                cfg: &cfg,
                devices: self.devices.clone(),
                shared: &s.workers,
                workers: s.workers.iter().map(|w| w.read()).collect(),
                tunnels: &s.tunnels,
                qos: &s.qos,
                neighbors: &s.neighbors,
                dpi: &s.dpi,
                policy: &s.policy,
                agent: Some(&s.agent),
                dns_lookups: (12, 3),
            }
            .encode(&mut enc)
        }
    }

    /// Dashboards, alerts and `promtool` read these names, labels, HELP and
    /// TYPE lines in this order: the exposition must not change by accident
    /// (after an intended change, `PATRONUS_BLESS=1 cargo test` rewrites
    /// `metrics_exposition.txt` with the new output, to be reviewed line by
    /// line in the diff).
    #[test]
    fn exposition_is_unchanged() {
        let text = exposition(Fixture {
            sources: sources(),
            devices: devices(),
        });
        if std::env::var_os("PATRONUS_BLESS").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics_exposition.txt");
            std::fs::write(path, &text).unwrap();
        }
        let expected = include_str!("metrics_exposition.txt");
        for (i, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(text, expected);
    }

    /// A port whose driver reports nothing has no port or queue counters, but
    /// keeps the drops the workers counted and its link state.
    #[test]
    fn a_port_without_statistics_keeps_its_drops_and_link() {
        let mut devices = devices();
        devices.port_stats[1] = None;
        let text = exposition(Fixture {
            sources: sources(),
            devices,
        });
        assert!(text.contains("patronus_port_rx_packets_total{port=\"lan\"} 101\n"));
        assert!(!text.contains("patronus_port_rx_packets_total{port=\"wan\"}"));
        assert!(!text.contains("patronus_queue_rx_packets_total{port=\"wan\""));
        assert!(text.contains("patronus_port_tx_dropped_packets_total{port=\"wan\"} 141\n"));
        assert!(
            text.contains("patronus_queue_tx_dropped_packets_total{port=\"wan\",queue=\"1\"} 71\n")
        );
        assert!(text.contains("patronus_port_link_up{port=\"wan\"} 0\n"));
    }
}
