//! Which of a peer's paths a policy wants: eligibility against a rule's
//! thresholds, the strategies' rankings, and the margin a path must beat
//! the one in use by before flows move to it. Pure functions of what is
//! known of each path; the hysteresis in time is the caller's.

use std::cmp::Ordering;

use serde::Deserialize;

use super::sla::PathFigures;

/// Path-selection strategies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The path with the lowest latency.
    LowestLatency,
    /// The path with the most bandwidth.
    HighestBandwidth,
    /// The cheapest path.
    LeastCost,
}

/// Limits a path must stay within to be chosen; zero means no limit.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Milliseconds.
    pub max_latency_ms: f64,
    /// Percent, 0-100.
    pub max_packet_loss_pct: f64,
    /// Milliseconds.
    pub max_jitter_ms: f64,
    /// Mbit/s.
    pub min_bandwidth_mbps: f64,
}

/// What a choice knows of one path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Up, or not probed (nothing says otherwise).
    pub up: bool,
    /// Its measurements; `None` when it is not probed.
    pub figures: Option<PathFigures>,
    /// Its uplink's cost per GB.
    pub cost_per_gb: f64,
    /// Its uplink's nominal bandwidth less the load measured on it (Mbit/s);
    /// `None` when the nominal bandwidth is unknown.
    pub spare_mbps: Option<f64>,
}

impl Candidate {
    fn rtt_ms(&self) -> Option<f64> {
        self.figures.and_then(|f| f.rtt_ms).map(|r| r[0])
    }
}

/// How a path stands against `t`: whether it is up and within every limit
/// that can be checked. A limit on what is not measured (an unprobed path's
/// latency) is not held against it.
pub fn eligible(c: &Candidate, t: &Thresholds) -> bool {
    if !c.up {
        return false;
    }
    let over = |limit: f64, value: Option<f64>| limit > 0.0 && value.is_some_and(|v| v > limit);
    let f = c.figures;
    !(over(t.max_latency_ms, c.rtt_ms())
        || over(t.max_packet_loss_pct, f.and_then(|f| f.loss_pct))
        || over(
            t.max_jitter_ms,
            f.filter(|f| f.rtt_ms.is_some()).map(|f| f.jitter_ms),
        )
        || (t.min_bandwidth_mbps > 0.0 && c.spare_mbps.is_some_and(|s| s < t.min_bandwidth_mbps)))
}

/// `a` against `b` by `strategy`: `Less` when `a` is preferred. Unmeasured
/// figures rank after measured ones; ties keep the site's order (the
/// caller compares in that order).
pub fn rank(strategy: Strategy, a: &Candidate, b: &Candidate) -> Ordering {
    fn known_first(a: Option<f64>, b: Option<f64>, lower_is_better: bool) -> Ordering {
        match (a, b) {
            (Some(x), Some(y)) if lower_is_better => x.total_cmp(&y),
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    match strategy {
        Strategy::LowestLatency => known_first(a.rtt_ms(), b.rtt_ms(), true),
        Strategy::HighestBandwidth => known_first(a.spare_mbps, b.spare_mbps, false),
        Strategy::LeastCost => a.cost_per_gb.total_cmp(&b.cost_per_gb),
    }
}

/// Whether `better` beats `current` by enough to move new flows to it: 10%
/// and 1 ms of round trip, 10% of spare bandwidth, any saving in cost.
pub fn clearly_better(strategy: Strategy, better: &Candidate, current: &Candidate) -> bool {
    match strategy {
        Strategy::LowestLatency => match (better.rtt_ms(), current.rtt_ms()) {
            (Some(b), Some(c)) => b < c * 0.9 && c - b >= 1.0,
            (Some(_), None) => true,
            _ => false,
        },
        Strategy::HighestBandwidth => match (better.spare_mbps, current.spare_mbps) {
            (Some(b), Some(c)) => b > c * 1.1 && b - c >= 1.0,
            (Some(_), None) => true,
            _ => false,
        },
        Strategy::LeastCost => better.cost_per_gb < current.cost_per_gb,
    }
}

/// The best of `paths` by `strategy` among those eligible under `t`; when
/// none is, the best of those up ("the best of the worst"); when none is
/// up, the first. `None` only for no paths.
pub fn best(strategy: Strategy, t: &Thresholds, paths: &[Candidate]) -> Option<usize> {
    let pick = |keep: &dyn Fn(&Candidate) -> bool| {
        paths
            .iter()
            .enumerate()
            .filter(|(_, c)| keep(c))
            // min_by keeps the first of equals: the site's order breaks ties.
            .min_by(|(_, a), (_, b)| rank(strategy, a, b))
            .map(|(i, _)| i)
    };
    pick(&|c| eligible(c, t))
        .or_else(|| pick(&|c| c.up))
        .or((!paths.is_empty()).then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rtt: f64, loss: f64, jitter: f64) -> Candidate {
        Candidate {
            up: true,
            figures: Some(PathFigures {
                up: true,
                rtt_ms: Some([rtt, rtt, rtt]),
                jitter_ms: jitter,
                loss_pct: Some(loss),
                availability: 1.0,
                health: None,
                sent: 100,
                received: 100,
            }),
            cost_per_gb: 0.0,
            spare_mbps: None,
        }
    }

    fn limits(latency: f64, loss: f64, jitter: f64, bandwidth: f64) -> Thresholds {
        Thresholds {
            max_latency_ms: latency,
            max_packet_loss_pct: loss,
            max_jitter_ms: jitter,
            min_bandwidth_mbps: bandwidth,
        }
    }

    #[test]
    fn thresholds_exclude_paths_that_break_them() {
        let ok = measured(20.0, 0.5, 2.0);
        assert!(eligible(&ok, &Thresholds::default()));
        assert!(
            eligible(&ok, &limits(20.0, 0.5, 2.0, 0.0)),
            "limits are inclusive"
        );
        assert!(!eligible(&ok, &limits(19.0, 0.0, 0.0, 0.0)));
        assert!(!eligible(&ok, &limits(0.0, 0.4, 0.0, 0.0)));
        assert!(!eligible(&ok, &limits(0.0, 0.0, 1.5, 0.0)));
        let mut down = ok;
        down.up = false;
        assert!(!eligible(&down, &Thresholds::default()));
        let unprobed = Candidate {
            up: true,
            figures: None,
            cost_per_gb: 0.0,
            spare_mbps: Some(5.0),
        };
        assert!(
            eligible(&unprobed, &limits(1.0, 0.1, 0.1, 0.0)),
            "nothing to hold against it"
        );
        assert!(!eligible(&unprobed, &limits(0.0, 0.0, 0.0, 10.0)));
    }

    #[test]
    fn strategies_rank_and_fall_back_to_the_best_of_the_worst() {
        let mut slow_cheap = measured(40.0, 0.0, 1.0);
        slow_cheap.cost_per_gb = 0.1;
        slow_cheap.spare_mbps = Some(500.0);
        let mut fast_dear = measured(10.0, 0.0, 1.0);
        fast_dear.cost_per_gb = 2.0;
        fast_dear.spare_mbps = Some(50.0);
        let paths = [slow_cheap, fast_dear];
        let none = Thresholds::default();
        assert_eq!(best(Strategy::LowestLatency, &none, &paths), Some(1));
        assert_eq!(best(Strategy::LeastCost, &none, &paths), Some(0));
        assert_eq!(best(Strategy::HighestBandwidth, &none, &paths), Some(0));
        // The cheap one breaks a 30 ms limit: the dear one is the only choice.
        assert_eq!(
            best(Strategy::LeastCost, &limits(30.0, 0.0, 0.0, 0.0), &paths),
            Some(1)
        );
        // Both break a 5 ms limit: the best of the worst by the strategy.
        assert_eq!(
            best(Strategy::LeastCost, &limits(5.0, 0.0, 0.0, 0.0), &paths),
            Some(0)
        );
        // None up: the first.
        let down = paths.map(|mut c| {
            c.up = false;
            c
        });
        assert_eq!(best(Strategy::LowestLatency, &none, &down), Some(0));
        assert_eq!(best(Strategy::LowestLatency, &none, &[]), None);
        // Equal figures keep the site's order.
        let twins = [measured(10.0, 0.0, 0.0), measured(10.0, 0.0, 0.0)];
        assert_eq!(best(Strategy::LowestLatency, &none, &twins), Some(0));
    }

    #[test]
    fn a_path_must_be_clearly_better_to_take_new_flows() {
        let s = Strategy::LowestLatency;
        assert!(!clearly_better(
            s,
            &measured(19.0, 0.0, 0.0),
            &measured(20.0, 0.0, 0.0)
        ));
        assert!(clearly_better(
            s,
            &measured(17.0, 0.0, 0.0),
            &measured(20.0, 0.0, 0.0)
        ));
        assert!(
            !clearly_better(s, &measured(0.5, 0.0, 0.0), &measured(1.2, 0.0, 0.0)),
            "under 1 ms"
        );
        let mut cheap = measured(20.0, 0.0, 0.0);
        cheap.cost_per_gb = 0.4;
        let mut dear = cheap;
        dear.cost_per_gb = 0.5;
        assert!(clearly_better(Strategy::LeastCost, &cheap, &dear));
        assert!(!clearly_better(Strategy::LeastCost, &dear, &cheap));
    }
}
