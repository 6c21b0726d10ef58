//! What Prometheus scrapes from the operator: reconciliations, errors by
//! reason, how long reconciling takes, and which replica leads; served on
//! `/metrics` beside the `/healthz` and `/readyz` probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels naming the kind reconciled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// site, peer or policy.
    pub kind: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// site, peer or policy.
    pub kind: String,
    /// What failed ([`crate::Error::reason`]).
    pub reason: String,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    reconciliations: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    leader: Gauge,
    /// Ready once the controllers run (this replica leads) or stand by.
    ready: AtomicBool,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciliations = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let leader = Gauge::default();
        let mut registry = Registry::with_prefix("patronus_operator");
        registry.register(
            "reconciliations",
            "Reconciliations started, by kind",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by kind and reason",
            errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "How long reconciliations take, by kind",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Metrics {
            reconciliations,
            errors,
            duration,
            leader,
            ready: AtomicBool::new(false),
            registry,
        }
    }
}

/// Measures one reconcile from its creation until it is dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile of `kind` and times it until the timer drops.
    pub fn reconcile(&self, kind: &str) -> ReconcileTimer {
        let labels = KindLabels { kind: kind.into() };
        self.reconciliations.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&labels).clone(),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, kind: &str, reason: String) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                reason,
            })
            .inc();
    }

    /// Failed reconciles of `kind` for `reason` so far.
    pub fn errors(&self, kind: &str, reason: &str) -> u64 {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                reason: reason.into(),
            })
            .get()
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Marks the operator ready for `/readyz`.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text format of every metric.
    pub fn encode(&self) -> String {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry)
            .expect("writing to a String cannot fail");
        body
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_the_documented_names() {
        let m = Metrics::default();
        drop(m.reconcile("site"));
        m.failed("peer", "controlplane_unavailable".into());
        m.set_leader(true);
        let text = m.encode();
        for expected in [
            "patronus_operator_reconciliations_total{kind=\"site\"} 1",
            "patronus_operator_reconcile_errors_total{kind=\"peer\",reason=\"controlplane_unavailable\"} 1",
            "patronus_operator_reconcile_duration_seconds_count{kind=\"site\"} 1",
            "patronus_operator_leader 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
