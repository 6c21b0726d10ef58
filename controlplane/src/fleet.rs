//! The fleet view: what the data planes report, turned into resource status
//! (Site phase and tunnels, Peer connectivity), the topology, path health,
//! and the control plane's own `/metrics`.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use patronus_proto::v1::{
    BfdSessionStatus, BfdState, GetTopologyResponse, PathHealth, Peer, PeerPathStatus, PeerStatus,
    SitePhase, SiteStatus, TelemetryReport, TopologyLink, TopologySite, TunnelState,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::BearerToken;
use crate::store::DesiredState;
use crate::sync::{DataplaneState, Hub, HubState};

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn is_up(state: i32) -> bool {
    state == TunnelState::Up as i32
}

/// Tunnels a data plane reports up.
fn tunnels_up(d: &DataplaneState) -> u32 {
    d.report.as_ref().map_or(0, |(r, _)| {
        r.peers.iter().filter(|p| is_up(p.tunnel)).count() as u32
    })
}

impl HubState {
    /// Each data plane's last report (of one site, when given), with its
    /// site, id and arrival time.
    fn reports<'a>(
        &'a self,
        site_id: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a TelemetryReport, SystemTime)> + 'a {
        self.dataplanes
            .iter()
            .filter(move |((site, _), _)| site_id.is_empty() || site == site_id)
            .filter_map(|((site, dataplane), d)| {
                let (report, at) = d.report.as_ref()?;
                Some((site.as_str(), dataplane.as_str(), &**report, *at))
            })
    }

    fn site_dataplanes<'a>(
        &'a self,
        site_id: &'a str,
    ) -> impl Iterator<Item = &'a DataplaneState> + 'a {
        // Keys are (site, data plane): a site's data planes are one range.
        self.dataplanes
            .range((site_id.to_owned(), String::new())..)
            .take_while(move |((site, _), _)| site == site_id)
            .map(|(_, d)| d)
    }

    /// A site's status from its data planes:
    /// - PENDING: none has applied anything yet;
    /// - FAILED: none is connected any more, or one refused the current version;
    /// - READY: every connected one runs the current version with every tunnel up;
    /// - DEGRADED: otherwise (an older version, or tunnels down).
    fn site_status(&self, site_id: &str) -> SiteStatus {
        let desired = self.desired(site_id);
        let peers = self.peers(site_id);
        let mut any_applied = false;
        let mut connected = 0;
        let mut failed = false;
        let mut current = true;
        let mut up = 0;
        let mut last_report: Option<SystemTime> = None;
        for d in self.site_dataplanes(site_id) {
            any_applied |= d.applied > 0;
            if let Some((_, at)) = &d.report {
                last_report = Some(last_report.map_or(*at, |l| l.max(*at)));
            }
            if !d.connected() {
                continue;
            }
            connected += 1;
            failed |= d.refused != 0 && d.refused >= desired && d.applied < d.refused;
            current &= d.applied == desired;
            up = up.max(tunnels_up(d));
        }
        let phase = if !any_applied {
            SitePhase::Pending
        } else if connected == 0 || failed {
            SitePhase::Failed
        } else if current && up as usize >= peers {
            SitePhase::Ready
        } else {
            SitePhase::Degraded
        };
        SiteStatus {
            phase: phase as i32,
            tunnels_up: up,
            last_health_check: last_report.map(timestamp),
        }
    }
}

impl Hub {
    /// The status of the site `site_id`.
    pub fn site_status(&self, site_id: &str) -> SiteStatus {
        self.lock().site_status(site_id)
    }

    /// A peer's status: connected while a data plane of its site reports its
    /// tunnel up, with the path quality that data plane measured.
    pub fn peer_status(&self, peer: &Peer) -> PeerStatus {
        let Some(spec) = &peer.spec else {
            return PeerStatus::default();
        };
        let name = peer.metadata.as_ref().map_or("", |m| m.name.as_str());
        let state = self.lock();
        let mut status = PeerStatus::default();
        for d in state.site_dataplanes(&spec.site_id) {
            let Some((report, _)) = &d.report else {
                continue;
            };
            let Some(p) = report.peers.iter().find(|p| p.name == name) else {
                continue;
            };
            if is_up(p.tunnel) && !status.connected {
                status.connected = true;
                status.paths = p
                    .paths
                    .iter()
                    .map(|path| PeerPathStatus {
                        path_id: path.path_id.clone(),
                        active: path.active,
                        up: path.up,
                        bfd: path.bfd,
                    })
                    .collect();
                if let Some(m) = &p.path {
                    status.latency_ms = Some(m.latency_ms);
                    status.packet_loss = Some(m.packet_loss_pct);
                }
            }
        }
        status
    }

    /// Sites (with their data planes and tunnels) and the tunnels between them.
    pub fn topology(&self, desired: &DesiredState) -> GetTopologyResponse {
        let state = self.lock();
        let sites = desired
            .sites
            .iter()
            .filter_map(|site| {
                let spec = site.spec.as_ref()?;
                let status = state.site_status(&spec.site_id);
                Some(TopologySite {
                    site_id: spec.site_id.clone(),
                    name: site
                        .metadata
                        .as_ref()
                        .map(|m| m.name.clone())
                        .unwrap_or_default(),
                    region: spec.region.clone(),
                    phase: status.phase,
                    dataplanes_connected: state
                        .site_dataplanes(&spec.site_id)
                        .filter(|d| d.connected())
                        .count() as u32,
                    tunnels_up: status.tunnels_up,
                })
            })
            .collect();
        let links = desired
            .peers
            .iter()
            .filter_map(|peer| {
                let spec = peer.spec.as_ref()?;
                let name = peer.metadata.as_ref().map_or("", |m| m.name.as_str());
                let endpoint = spec.endpoint.clone();
                let remote = desired.sites.iter().find_map(|s| {
                    let ss = s.spec.as_ref()?;
                    let te = ss.tunnel_endpoint.as_ref()?;
                    (Some(&te.address) == endpoint.as_ref().map(|e| &e.address))
                        .then(|| ss.site_id.clone())
                });
                let up = state.site_dataplanes(&spec.site_id).any(|d| {
                    d.report.as_ref().is_some_and(|(r, _)| {
                        r.peers.iter().any(|p| p.name == name && is_up(p.tunnel))
                    })
                });
                let reported = state
                    .site_dataplanes(&spec.site_id)
                    .any(|d| d.report.is_some());
                Some(TopologyLink {
                    site_id: spec.site_id.clone(),
                    peer: name.to_owned(),
                    remote_site_id: remote.unwrap_or_default(),
                    endpoint,
                    state: match (up, reported) {
                        (true, _) => TunnelState::Up,
                        (false, true) => TunnelState::Down,
                        (false, false) => TunnelState::Unspecified,
                    } as i32,
                })
            })
            .collect();
        GetTopologyResponse { sites, links }
    }

    /// Every reported BFD session of the data planes (of one site, when
    /// given), by site, data plane and session.
    pub fn bfd_sessions(&self, site_id: &str) -> Vec<BfdSessionStatus> {
        let state = self.lock();
        let mut out = Vec::new();
        for (site, dataplane, report, at) in state.reports(site_id) {
            let mut sessions: Vec<_> = report.bfd_sessions.iter().collect();
            sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
            out.extend(sessions.into_iter().map(|s| BfdSessionStatus {
                site_id: site.to_owned(),
                dataplane_id: dataplane.to_owned(),
                session: Some(s.clone()),
                report_time: Some(timestamp(at)),
            }));
        }
        out
    }

    /// Every reported tunnel of the data planes (of one site, when given).
    pub fn path_health(&self, site_id: &str) -> Vec<PathHealth> {
        let state = self.lock();
        let mut out = Vec::new();
        for (site, dataplane, report, at) in state.reports(site_id) {
            for p in &report.peers {
                let peer = PathHealth {
                    site_id: site.to_owned(),
                    dataplane_id: dataplane.to_owned(),
                    peer: p.name.clone(),
                    state: p.tunnel,
                    metrics: p.path,
                    report_time: Some(timestamp(at)),
                    path_id: String::new(),
                    active: true,
                    up: true,
                    health_score: None,
                    bfd: BfdState::Unspecified as i32,
                };
                if p.paths.is_empty() {
                    out.push(peer);
                    continue;
                }
                for path in &p.paths {
                    out.push(PathHealth {
                        metrics: path.metrics,
                        path_id: path.path_id.clone(),
                        active: path.active,
                        up: path.up,
                        health_score: path.health_score,
                        bfd: path.bfd,
                        ..peer.clone()
                    });
                }
            }
        }
        out
    }
}

/// The fleet's metrics, read from the hub at scrape time.
#[derive(Debug)]
struct FleetCollector(Arc<Hub>);

type Labels<const N: usize> = [(&'static str, String); N];

fn family<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<N>, u64)>,
) -> fmt::Result {
    let mut f = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let enc: MetricEncoder<'_> = f.encode_family(&labels)?;
        match kind {
            MetricType::Counter => {
                prometheus_client::metrics::counter::ConstCounter::new(value).encode(enc)?
            }
            _ => prometheus_client::metrics::gauge::ConstGauge::new(value as i64).encode(enc)?,
        }
    }
    Ok(())
}

impl Collector for FleetCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // Replicas on one etcd all know the whole fleet; only the leader
        // exports it, so that each series comes from one replica.
        let store = self.0.store();
        let aggregate = store.sharing().is_none() || store.is_leader();
        // A copy under the lock (reports are shared, not copied), then the
        // text written without it: data planes reporting never wait on a scrape.
        type Fleet = (Vec<(Labels<2>, DataplaneState)>, Vec<u64>);
        let (served, (dps, desired)): (usize, Fleet) = {
            let state = self.0.lock();
            let served = state
                .dataplanes
                .values()
                .filter(|d| d.subscriptions > 0)
                .count();
            let fleet = state
                .dataplanes
                .iter()
                .filter(|_| aggregate)
                .map(|((site, id), d)| {
                    (
                        (
                            [("site", site.clone()), ("dataplane", id.clone())],
                            d.clone(),
                        ),
                        state.desired(site),
                    )
                })
                .unzip();
            (served, fleet)
        };
        family(
            &mut enc,
            "patronus_controlplane_dataplanes_served",
            "Data planes subscribed to this replica.",
            MetricType::Gauge,
            [([], served as u64)],
        )?;
        let each = |f: &dyn Fn(&DataplaneState) -> u64| -> Vec<(Labels<2>, u64)> {
            dps.iter().map(|(l, d)| (l.clone(), f(d))).collect()
        };
        let reported =
            |f: fn(&patronus_proto::v1::DataplaneCounters) -> u64| -> Vec<(Labels<2>, u64)> {
                dps.iter()
                    .filter_map(|(l, d)| {
                        let (r, _) = d.report.as_ref()?;
                        Some((l.clone(), f(r.counters.as_ref()?)))
                    })
                    .collect()
            };
        family(
            &mut enc,
            "patronus_fleet_dataplane_connected",
            "1 while the data plane is subscribed.",
            MetricType::Gauge,
            each(&|d| u64::from(d.connected())),
        )?;
        family(
            &mut enc,
            "patronus_fleet_dataplane_desired_version",
            "The snapshot version the data plane's site should run.",
            MetricType::Gauge,
            dps.iter()
                .zip(&desired)
                .map(|((l, _), desired)| (l.clone(), *desired))
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut enc,
            "patronus_fleet_dataplane_applied_version",
            "The last snapshot version the data plane applied.",
            MetricType::Gauge,
            each(&|d| d.applied),
        )?;
        family(
            &mut enc,
            "patronus_fleet_dataplane_refused_version",
            "The last snapshot version the data plane refused (0: none).",
            MetricType::Gauge,
            each(&|d| d.refused),
        )?;
        family(
            &mut enc,
            "patronus_fleet_rx_packets",
            "Packets received by the data plane's ports, as last reported.",
            MetricType::Counter,
            reported(|c| c.rx_packets),
        )?;
        family(
            &mut enc,
            "patronus_fleet_tx_packets",
            "Packets sent by the data plane's ports, as last reported.",
            MetricType::Counter,
            reported(|c| c.tx_packets),
        )?;
        family(
            &mut enc,
            "patronus_fleet_rx_bytes",
            "Bytes received by the data plane's ports, as last reported.",
            MetricType::Counter,
            reported(|c| c.rx_bytes),
        )?;
        family(
            &mut enc,
            "patronus_fleet_tx_bytes",
            "Bytes sent by the data plane's ports, as last reported.",
            MetricType::Counter,
            reported(|c| c.tx_bytes),
        )?;
        family(
            &mut enc,
            "patronus_fleet_dropped_packets",
            "Packets the data plane dropped, as last reported.",
            MetricType::Counter,
            reported(|c| c.dropped_packets),
        )?;
        family(
            &mut enc,
            "patronus_fleet_active_flows",
            "Flows in the data plane's flow tables, as last reported.",
            MetricType::Gauge,
            reported(|c| c.active_flows),
        )?;
        let tunnels: Vec<(Labels<4>, u64)> = dps
            .iter()
            .flat_map(|(l, d)| {
                d.report.iter().flat_map(move |(r, _)| {
                    r.peers.iter().flat_map(move |p| {
                        [TunnelState::Up, TunnelState::Down].map(|s| {
                            let label = if s == TunnelState::Up { "up" } else { "down" };
                            (
                                [
                                    l[0].clone(),
                                    l[1].clone(),
                                    ("peer", p.name.clone()),
                                    ("status", label.to_owned()),
                                ],
                                u64::from(p.tunnel == s as i32),
                            )
                        })
                    })
                })
            })
            .collect();
        family(
            &mut enc,
            "patronus_controlplane_permission_denied",
            "Calls refused because the caller's role may not make them (a data plane for another site, a viewer writing).",
            MetricType::Counter,
            self.0
                .denials()
                .map(|(role, n)| ([("role", role.to_owned())], n)),
        )?;
        family(
            &mut enc,
            "patronus_tunnel_status",
            "1 for the tunnel's current status (up or down), as its data plane last reported.",
            MetricType::Gauge,
            tunnels,
        )?;
        self.0.store().encode_metrics(&mut enc)
    }
}

/// Serves `/metrics` (the fleet view) and `/healthz` on `listener` until
/// `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    token: Option<BearerToken>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    let healthy = hub.store_health();
    registry.register_collector(Box::new(FleetCollector(hub)));
    // 503 while the database is failed, so that a liveness probe restarts a
    // control plane that cannot reopen it.
    let healthz = get(move || {
        let healthy = healthy.borrow().is_none();
        async move {
            if healthy {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", healthz)
        .with_state(Arc::new(MetricsState { registry, token }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// What `/metrics` serves, and who may read it.
#[derive(Debug)]
struct MetricsState {
    registry: Registry,
    token: Option<BearerToken>,
}

async fn metrics(
    State(state): State<Arc<MetricsState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(why) = token.verify(presented) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("{why}\n"),
            )
                .into_response();
        }
    }
    // Writing a large fleet's text takes a while: off the async threads.
    let encoded = tokio::task::spawn_blocking(move || {
        // The Prometheus text format, as the data plane serves it: what promtool checks.
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &state.registry)
            .map(|()| body)
    })
    .await;
    match encoded
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
