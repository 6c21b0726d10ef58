//! Passive measurement of a path to a peer that takes no probes (a stock
//! WireGuard peer), from what WireGuard itself exchanges: the round trip of
//! each handshake (our initiation to its response, or our response to the
//! initiator's first message on the new session), and initiations that went
//! unanswered for `Rekey-Timeout` (5 s).
//!
//! Handshakes come every two minutes while traffic flows, so the figures are
//! coarse: percentiles of the last [`WINDOW`] round trips, jitter as RFC
//! 3550's estimator over successive ones (their variation minutes apart,
//! not packet jitter), loss as the share of initiations unanswered. The
//! path goes down after [`DOWN_AFTER`] unanswered initiations in a row
//! (WireGuard retries every 5 s, so 10 s of silence while it tries) and
//! comes back with the next answer. Sans-IO: time is passed in.

use super::sla::{health_score, percentiles, PathFigures, Uptime};

/// Round trips and outcomes the figures are computed over.
pub const WINDOW: usize = 32;
/// Unanswered initiations in a row that take the path down.
pub const DOWN_AFTER: u32 = 2;

/// One path's passive meter.
#[derive(Debug, Clone)]
pub struct PassiveMeter {
    /// The last round trips (µs), a ring.
    rtts: [u32; WINDOW],
    rtt_count: usize,
    /// Whether each of the last attempts went unanswered, a ring.
    outcomes: [bool; WINDOW],
    outcome_count: usize,
    last_rtt_ns: Option<u64>,
    jitter_ns: f64,
    unanswered: u32,
    uptime: Uptime,
    received: u64,
}

impl PassiveMeter {
    /// A meter starting at `now`; the path counts as up until handshakes
    /// go unanswered.
    pub fn new(now_ns: u64) -> Self {
        PassiveMeter {
            rtts: [0; WINDOW],
            rtt_count: 0,
            outcomes: [false; WINDOW],
            outcome_count: 0,
            last_rtt_ns: None,
            jitter_ns: 0.0,
            unanswered: 0,
            uptime: Uptime::new(now_ns),
            received: 0,
        }
    }

    /// A handshake over the path completed with round trip `rtt`.
    pub fn answered(&mut self, rtt_ns: u64, now_ns: u64) {
        self.rtts[self.rtt_count % WINDOW] = u32::try_from(rtt_ns / 1_000).unwrap_or(u32::MAX);
        self.rtt_count += 1;
        if let Some(last) = self.last_rtt_ns {
            let d = (rtt_ns as f64 - last as f64).abs();
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_rtt_ns = Some(rtt_ns);
        self.received += 1;
        self.resolve(false);
        self.unanswered = 0;
        if !self.uptime.is_up() {
            self.uptime.set(true, now_ns);
        }
    }

    /// An initiation over the path went unanswered.
    pub fn unanswered(&mut self, now_ns: u64) {
        self.resolve(true);
        self.unanswered += 1;
        if self.uptime.is_up() && self.unanswered >= DOWN_AFTER {
            self.uptime.set(false, now_ns);
        }
    }

    fn resolve(&mut self, lost: bool) {
        self.outcomes[self.outcome_count % WINDOW] = lost;
        self.outcome_count += 1;
    }

    /// The figures at `now`; `None` until a handshake has been answered or
    /// lost (nothing is measured yet).
    pub fn figures(&self, now_ns: u64) -> Option<PathFigures> {
        let resolved = self.outcome_count.min(WINDOW);
        if resolved == 0 {
            return None;
        }
        let n = self.rtt_count.min(WINDOW);
        let rtt_ms = (n > 0).then(|| {
            let mut samples = self.rtts;
            percentiles(&mut samples[..n])
        });
        let lost = self.outcomes[..resolved].iter().filter(|l| **l).count();
        let loss_pct = lost as f64 * 100.0 / resolved as f64;
        let up = self.uptime.is_up();
        let jitter_ms = self.jitter_ns / 1e6;
        Some(PathFigures {
            up,
            rtt_ms,
            jitter_ms,
            loss_pct: Some(loss_pct),
            availability: self.uptime.ratio(now_ns),
            health: match (up, rtt_ms) {
                (false, _) => Some(0.0),
                (true, Some(rtt)) => Some(health_score(rtt[0], jitter_ms, loss_pct)),
                (true, None) => None,
            },
            sent: self.outcome_count as u64,
            received: self.received,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    #[test]
    fn nothing_is_measured_before_the_first_handshake() {
        let m = PassiveMeter::new(0);
        assert_eq!(m.figures(10 * S), None);
    }

    #[test]
    fn round_trips_give_percentiles_jitter_and_health() {
        let mut m = PassiveMeter::new(0);
        for (i, rtt) in [20, 22, 20, 24, 20].into_iter().enumerate() {
            m.answered(rtt * MS, (i as u64 + 1) * 120 * S);
        }
        let f = m.figures(600 * S).unwrap();
        assert!(f.up);
        assert_eq!(f.rtt_ms, Some([20.0, 24.0, 24.0]));
        assert_eq!(f.loss_pct, Some(0.0));
        assert!(f.jitter_ms > 0.0 && f.jitter_ms < 4.0, "{}", f.jitter_ms);
        assert!(f.health.unwrap() > 90.0);
        assert_eq!((f.sent, f.received), (5, 5));
        assert_eq!(f.availability, 1.0);
    }

    #[test]
    fn unanswered_initiations_count_as_loss_and_take_the_path_down_then_an_answer_brings_it_back() {
        let mut m = PassiveMeter::new(0);
        m.answered(10 * MS, 0);
        m.unanswered(5 * S);
        assert!(m.figures(5 * S).unwrap().up, "one retry is not an outage");
        m.unanswered(10 * S);
        let down = m.figures(10 * S).unwrap();
        assert!(!down.up);
        assert_eq!(down.health, Some(0.0));
        assert!((down.loss_pct.unwrap() - 200.0 / 3.0).abs() < 1e-9);
        m.answered(12 * MS, 20 * S);
        let back = m.figures(20 * S).unwrap();
        assert!(back.up);
        // Down from 10 s to 20 s of the 20 s.
        assert!((back.availability - 0.5).abs() < 1e-9);
        assert_eq!((back.sent, back.received), (4, 2));
    }

    #[test]
    fn the_window_keeps_the_last_attempts() {
        let mut m = PassiveMeter::new(0);
        for i in 0..WINDOW as u64 {
            m.unanswered(i * 5 * S);
        }
        for i in 0..WINDOW as u64 {
            m.answered(30 * MS, (200 + i) * S);
        }
        let f = m.figures(300 * S).unwrap();
        assert_eq!(f.loss_pct, Some(0.0));
        assert_eq!(f.rtt_ms, Some([30.0, 30.0, 30.0]));
    }
}
