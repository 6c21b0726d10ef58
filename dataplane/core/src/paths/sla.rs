//! SLA measurement of one path from in-band probes, as a sans-IO meter.
//!
//! A [`PathMeter`] asks for a probe every `interval` ([`PathMeter::poll_probe`]),
//! each with a sequence number and its send time; the remote gateway echoes
//! it back over the same path and [`PathMeter::handle_echo`] takes the echo.
//! From the echoes come, over the last `window` probes:
//!
//! - round-trip time percentiles (p50, p95, p99 of the answered probes);
//! - jitter: RFC 3550 6.4.1's estimator, `J += (|D| - J) / 16`, applied to
//!   the difference `D` between successive round trips;
//! - loss: the share of probes not answered within `timeout` (those sent
//!   before the first probe that was ever answered excepted: the peer or
//!   its session was not there yet, which is no loss of the path);
//! - availability: the share of the time since the meter started that the
//!   path was up;
//! - a health score, 0-100 (see [`health_score`]).
//!
//! The path goes down when `down_after` probes in a row went unanswered for
//! `down_after` intervals (no echo for that long, with that many probes out):
//! at 20 ms × 5, a blackhole is seen 100 to 120 ms after the last echo. It
//! comes back up after `up_after` echoes in a row. Each change is an event
//! ([`PathMeter::poll_event`]). Time is always passed in: tests drive the
//! meter on a simulated clock.

/// How a path is probed and judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterSettings {
    /// Time between probes.
    pub interval_ns: u64,
    /// A probe not answered within this long counts as lost.
    pub timeout_ns: u64,
    /// Unanswered probes in a row (and intervals without an echo) that take
    /// the path down.
    pub down_after: u32,
    /// Answered probes in a row that bring it back.
    pub up_after: u32,
    /// Probes the figures are computed over (at most [`MAX_WINDOW`]).
    pub window: usize,
}

/// Longest window a meter keeps.
pub const MAX_WINDOW: usize = 4096;
// The ring in flight is at most this long and its slots are taken modulo a
// power of two.
const _: () = assert!(MAX_WINDOW.is_power_of_two());
const MS: u64 = 1_000_000;

impl Default for MeterSettings {
    fn default() -> Self {
        MeterSettings {
            interval_ns: 100 * MS,
            timeout_ns: 1_000 * MS,
            down_after: 5,
            up_after: 3,
            window: 100,
        }
    }
}

/// A probe to send: its sequence number and the time it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Sequence number (echoed back).
    pub seq: u32,
    /// When it was sent (ns on the sender's clock; echoed back).
    pub sent_ns: u64,
}

/// A change of a path's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// Probes stopped being answered.
    Down {
        /// When it was noticed.
        at_ns: u64,
    },
    /// Probes are answered again.
    Up {
        /// When it was noticed.
        at_ns: u64,
    },
}

/// What a meter says about its path now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathFigures {
    /// Whether the path is up.
    pub up: bool,
    /// Round-trip time percentiles (ms): p50, p95, p99; `None` before the first echo.
    pub rtt_ms: Option<[f64; 3]>,
    /// Jitter (ms).
    pub jitter_ms: f64,
    /// Probes lost, percent of those resolved in the window; `None` before any resolved.
    pub loss_pct: Option<f64>,
    /// Share of the time since the start the path was up, 0-1.
    pub availability: f64,
    /// 0-100; `None` while nothing is measured.
    pub health: Option<f64>,
    /// Probes sent and echoes received since the start.
    pub sent: u64,
    /// Echoes received since the start.
    pub received: u64,
}

/// A probe in flight.
#[derive(Debug, Clone, Copy, Default)]
struct Outstanding {
    seq: u32,
    sent_ns: u64,
    live: bool,
}

/// One path's meter.
#[derive(Debug, Clone)]
pub struct PathMeter {
    settings: MeterSettings,
    next_probe_ns: u64,
    next_seq: u32,
    /// Probes in flight, by `seq` modulo its length: a power of two that
    /// holds every probe sent within a timeout.
    flight: Box<[Outstanding]>,
    /// The oldest probe that may still be in flight: those before it were
    /// answered or lost.
    oldest: u32,
    /// Round trips of the last answered probes (µs), a ring.
    rtts: Box<[u32]>,
    rtt_count: usize,
    /// Whether each of the last resolved probes was lost, a ring.
    outcomes: Box<[bool]>,
    outcome_count: usize,
    lost_in_window: usize,
    last_rtt_ns: Option<u64>,
    jitter_ns: f64,
    last_echo_ns: u64,
    /// Probes sent since the last echo.
    unanswered: u32,
    /// Echoes in a row while down.
    answered: u32,
    uptime: Uptime,
    sent: u64,
    received: u64,
    /// When the first probe that was ever answered left: probes lost
    /// before it (the peer not there yet, no session) measure no path.
    measured_from_ns: Option<u64>,
    events: Option<PathEvent>,
    /// Where percentiles are computed, kept to allocate nothing then.
    scratch: Box<[u32]>,
}

/// Room for every probe that can be in flight: one an interval, each for
/// a timeout (a power of two, at most [`MAX_WINDOW`]).
fn flight_len(settings: &MeterSettings) -> usize {
    let per_timeout = settings.timeout_ns / settings.interval_ns.max(1);
    usize::try_from(per_timeout)
        .unwrap_or(MAX_WINDOW)
        .saturating_add(2)
        .next_power_of_two()
        .min(MAX_WINDOW)
}

impl PathMeter {
    /// A meter starting at `now`; the first probe is due at once. The path
    /// counts as up until probes say otherwise.
    pub fn new(settings: MeterSettings, now_ns: u64) -> Self {
        let window = settings.window.clamp(1, MAX_WINDOW);
        let settings = MeterSettings { window, ..settings };
        PathMeter {
            settings,
            next_probe_ns: now_ns,
            next_seq: 0,
            flight: vec![Outstanding::default(); flight_len(&settings)].into_boxed_slice(),
            oldest: 0,
            rtts: vec![0; window].into_boxed_slice(),
            rtt_count: 0,
            outcomes: vec![false; window].into_boxed_slice(),
            outcome_count: 0,
            lost_in_window: 0,
            last_rtt_ns: None,
            jitter_ns: 0.0,
            last_echo_ns: now_ns,
            unanswered: 0,
            answered: 0,
            uptime: Uptime::new(now_ns),
            sent: 0,
            received: 0,
            measured_from_ns: None,
            events: None,
            scratch: vec![0; window].into_boxed_slice(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &MeterSettings {
        &self.settings
    }

    /// Whether the path is up.
    pub fn is_up(&self) -> bool {
        self.uptime.is_up()
    }

    /// When [`PathMeter::handle_timeout`] or [`PathMeter::poll_probe`] next has work.
    pub fn poll_timeout(&self) -> u64 {
        self.next_probe_ns
    }

    /// The probe due at `now`, if one is; the next one is then due an
    /// interval later.
    pub fn poll_probe(&mut self, now_ns: u64) -> Option<Probe> {
        if now_ns < self.next_probe_ns {
            return None;
        }
        self.handle_timeout(now_ns);
        let probe = Probe {
            seq: self.next_seq,
            sent_ns: now_ns,
        };
        let at = self.slot(probe.seq);
        if probe.seq.wrapping_sub(self.oldest) as usize >= self.flight.len() {
            // The ring came round on a probe never answered: lost long ago.
            let slot = self.flight[at];
            if slot.live {
                self.lost(slot.sent_ns);
            }
            self.oldest = self.oldest.wrapping_add(1);
        }
        self.flight[at] = Outstanding {
            seq: probe.seq,
            sent_ns: now_ns,
            live: true,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        // A round a little late keeps the cadence; one late by more than an
        // interval (a busy worker) starts it afresh rather than catch up
        // with a burst.
        let interval = self.settings.interval_ns;
        self.next_probe_ns = if now_ns > self.next_probe_ns + interval {
            now_ns + interval
        } else {
            self.next_probe_ns + interval
        };
        self.sent += 1;
        self.unanswered += 1;
        Some(probe)
    }

    /// Takes the echo of probe `seq`, sent at `sent_ns`, arriving at `now`.
    /// Echoes of probes already lost, never sent or answered before are
    /// ignored (a duplicate or a forgery is no round trip).
    pub fn handle_echo(&mut self, seq: u32, sent_ns: u64, now_ns: u64) {
        let slot = &mut self.flight[self.slot(seq)];
        if !slot.live || slot.seq != seq || slot.sent_ns != sent_ns || now_ns < sent_ns {
            return;
        }
        slot.live = false;
        self.received += 1;
        self.measured_from_ns.get_or_insert(sent_ns);
        let rtt = now_ns - sent_ns;
        let at = self.rtt_count % self.rtts.len();
        self.rtts[at] = u32::try_from(rtt / 1_000).unwrap_or(u32::MAX);
        self.rtt_count += 1;
        if let Some(last) = self.last_rtt_ns {
            let d = (rtt as f64 - last as f64).abs();
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_rtt_ns = Some(rtt);
        self.resolve(false);
        self.last_echo_ns = now_ns;
        self.unanswered = 0;
        if !self.uptime.is_up() {
            self.answered += 1;
            if self.answered >= self.settings.up_after {
                self.set_up(true, now_ns);
            }
        }
    }

    /// Counts the probes that timed out and judges the path.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        let timeout = self.settings.timeout_ns;
        // Probes leave in the order of time, so they time out in the order
        // of sequence: the first one still within its timeout ends the walk.
        while self.oldest != self.next_seq {
            let at = self.slot(self.oldest);
            let o = self.flight[at];
            if o.live && o.seq == self.oldest {
                if now_ns.saturating_sub(o.sent_ns) < timeout {
                    break;
                }
                self.flight[at].live = false;
                self.lost(o.sent_ns);
            }
            self.oldest = self.oldest.wrapping_add(1);
        }
        let silent_ns = u64::from(self.settings.down_after) * self.settings.interval_ns;
        if self.uptime.is_up()
            && self.unanswered >= self.settings.down_after
            && now_ns.saturating_sub(self.last_echo_ns) >= silent_ns
        {
            self.answered = 0;
            self.set_up(false, now_ns);
        }
    }

    /// Where probe `seq` is kept in flight.
    fn slot(&self, seq: u32) -> usize {
        // The length divides 2^32, so the slots stay in turn across a wrap.
        seq as usize & (self.flight.len() - 1)
    }

    /// The next state change, once.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.take()
    }

    fn set_up(&mut self, up: bool, now_ns: u64) {
        self.uptime.set(up, now_ns);
        self.events = Some(if up {
            PathEvent::Up { at_ns: now_ns }
        } else {
            PathEvent::Down { at_ns: now_ns }
        });
    }

    /// Records the loss of the probe sent at `sent_ns`, unless it left
    /// before the first probe that was ever answered.
    fn lost(&mut self, sent_ns: u64) {
        if self.measured_from_ns.is_some_and(|from| sent_ns >= from) {
            self.resolve(true);
        }
    }

    /// Records whether probe `seq` was lost, in the window of outcomes.
    fn resolve(&mut self, lost: bool) {
        let at = self.outcome_count % self.outcomes.len();
        if self.outcome_count >= self.outcomes.len() && self.outcomes[at] {
            self.lost_in_window -= 1;
        }
        self.outcomes[at] = lost;
        self.lost_in_window += usize::from(lost);
        self.outcome_count += 1;
    }

    /// The figures at `now`.
    pub fn figures(&mut self, now_ns: u64) -> PathFigures {
        let n = self.rtt_count.min(self.rtts.len());
        let rtt_ms = (n > 0).then(|| {
            let s = &mut self.scratch[..n];
            s.copy_from_slice(&self.rtts[..n]);
            percentiles(s)
        });
        let resolved = self.outcome_count.min(self.outcomes.len());
        let loss_pct = (resolved > 0).then(|| self.lost_in_window as f64 * 100.0 / resolved as f64);
        let up = self.uptime.is_up();
        let jitter_ms = self.jitter_ns / 1e6;
        let health = match (up, rtt_ms, loss_pct) {
            (false, ..) => Some(0.0),
            (true, Some(rtt), loss) => Some(health_score(rtt[0], jitter_ms, loss.unwrap_or(0.0))),
            (true, None, _) => None,
        };
        PathFigures {
            up,
            rtt_ms,
            jitter_ms,
            loss_pct,
            availability: self.uptime.ratio(now_ns),
            health,
            sent: self.sent,
            received: self.received,
        }
    }
}

/// Whether a path is up, and the share of the time since it was first
/// watched that it was: the availability every meter reports.
#[derive(Debug, Clone, Copy)]
pub struct Uptime {
    up: bool,
    started_ns: u64,
    since_ns: u64,
    up_ns: u64,
}

impl Uptime {
    /// Watched from `now`, up.
    pub fn new(now_ns: u64) -> Self {
        Uptime {
            up: true,
            started_ns: now_ns,
            since_ns: now_ns,
            up_ns: 0,
        }
    }

    /// Whether the path is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The path went up or down at `now`.
    pub fn set(&mut self, up: bool, now_ns: u64) {
        if self.up {
            self.up_ns += now_ns.saturating_sub(self.since_ns);
        }
        self.up = up;
        self.since_ns = now_ns;
    }

    /// Share of the time up, 0-1 (its state now, when no time has passed).
    pub fn ratio(&self, now_ns: u64) -> f64 {
        let current = if self.up {
            now_ns.saturating_sub(self.since_ns)
        } else {
            0
        };
        let elapsed = now_ns.saturating_sub(self.started_ns);
        if elapsed == 0 {
            f64::from(u8::from(self.up))
        } else {
            (self.up_ns + current) as f64 / elapsed as f64
        }
    }
}

/// The 50th, 95th and 99th percentiles (ms) of round trips in µs (nearest
/// rank); sorts `samples`, which must not be empty.
pub fn percentiles(samples: &mut [u32]) -> [f64; 3] {
    samples.sort_unstable();
    let n = samples.len();
    let at = |q: f64| f64::from(samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]) / 1e3;
    [at(0.50), at(0.95), at(0.99)]
}

/// A path's health, 0-100, from the simplified ITU-T G.107 E-model that VoIP
/// monitors use: the effective one-way latency `rtt/2 + 2 × jitter + 10 ms`
/// costs `latency / 40` up to 160 ms and `(latency − 120) / 10` beyond; each
/// percent of loss costs 2.5; the R factor `93.2 − costs`, clamped to 0-93.2,
/// is scaled to 0-100. A clean LAN scores 99.7; 100 ms of round trip with
/// 5 ms of jitter and 1% loss about 95; each percent of loss costs 2.7
/// points, and 400 ms with 10% loss scores below 60.
pub fn health_score(rtt_p50_ms: f64, jitter_ms: f64, loss_pct: f64) -> f64 {
    let latency = rtt_p50_ms / 2.0 + 2.0 * jitter_ms + 10.0;
    let delay_cost = if latency < 160.0 {
        latency / 40.0
    } else {
        (latency - 120.0) / 10.0
    };
    let r = 93.2 - delay_cost - 2.5 * loss_pct;
    r.clamp(0.0, 93.2) / 93.2 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000 * MS;

    fn meter(settings: MeterSettings) -> PathMeter {
        PathMeter::new(settings, NOW)
    }

    /// Runs the meter for `probes` intervals over a link with round trip
    /// `rtt(i)` (None: the probe is lost); echoes still in flight at the end
    /// arrive before it returns the time it stopped.
    fn drive(m: &mut PathMeter, start: u64, probes: u32, rtt: impl Fn(u32) -> Option<u64>) -> u64 {
        let interval = m.settings().interval_ns;
        let mut now = start;
        let mut echoes: Vec<(u64, Probe)> = Vec::new();
        for i in 0..probes {
            let next = now + interval;
            if let Some(p) = m.poll_probe(now) {
                if let Some(r) = rtt(i) {
                    echoes.push((now + r, p));
                }
            }
            echoes.sort_by_key(|e| e.0);
            while let Some(&(at, p)) = echoes.first().filter(|e| e.0 < next) {
                echoes.remove(0);
                m.handle_timeout(at);
                m.handle_echo(p.seq, p.sent_ns, at);
            }
            now = next;
            m.handle_timeout(now);
        }
        for (at, p) in echoes {
            now = now.max(at);
            m.handle_timeout(at);
            m.handle_echo(p.seq, p.sent_ns, at);
        }
        now
    }

    #[test]
    fn round_trips_and_their_percentiles_are_measured() {
        let mut m = meter(MeterSettings::default());
        // 100 probes: round trips 10, 11, ..., 109 ms.
        let end = drive(&mut m, NOW, 100, |i| Some((10 + u64::from(i)) * MS));
        let f = m.figures(end);
        assert_eq!(f.rtt_ms, Some([59.0, 104.0, 108.0]));
        assert_eq!(f.loss_pct, Some(0.0));
        assert_eq!((f.sent, f.received), (100, 100));
        assert!(f.up && f.availability == 1.0);
        // Each round trip 1 ms longer than the last: jitter converges to 1 ms.
        assert!((f.jitter_ms - 1.0).abs() < 0.01, "{}", f.jitter_ms);
    }

    #[test]
    fn a_steady_link_has_no_jitter_and_a_high_score() {
        let mut m = meter(MeterSettings::default());
        let end = drive(&mut m, NOW, 50, |_| Some(20 * MS));
        let f = m.figures(end);
        assert_eq!(f.rtt_ms, Some([20.0, 20.0, 20.0]));
        assert_eq!(f.jitter_ms, 0.0);
        let score = f.health.unwrap();
        assert!(score > 99.0 && score < 100.0, "{score}");
    }

    #[test]
    fn loss_is_the_share_of_the_window_not_answered_in_time() {
        let mut m = meter(MeterSettings {
            window: 100,
            ..MeterSettings::default()
        });
        // Every tenth probe lost, and the timeout (1 s) passed for all.
        let end = drive(&mut m, NOW, 200, |i| (i % 10 != 3).then_some(30 * MS));
        m.handle_timeout(end + 2_000 * MS);
        let loss = m.figures(end + 2_000 * MS).loss_pct.unwrap();
        assert!((8.0..=12.0).contains(&loss), "{loss}");
        let f = m.figures(end + 2_000 * MS);
        assert!(f.up, "scattered loss does not take the path down");
        // A late echo (after the timeout) is neither a round trip nor a
        // second resolution of its probe.
        let mut m = meter(MeterSettings::default());
        let first = m.poll_probe(NOW).unwrap();
        m.handle_echo(first.seq, first.sent_ns, NOW + 10 * MS);
        let later = NOW + 100 * MS;
        let p = m.poll_probe(later).unwrap();
        m.handle_timeout(later + 1_000 * MS);
        m.handle_echo(p.seq, p.sent_ns, later + 1_100 * MS);
        let f = m.figures(later + 1_100 * MS);
        assert_eq!((f.received, f.loss_pct), (1, Some(50.0)));
        assert_eq!(f.rtt_ms, Some([10.0; 3]));
    }

    #[test]
    fn every_probe_is_resolved_once_with_echoes_out_of_order() {
        // 10 ms × 50 ms: at most six in flight, so eight slots.
        let settings = MeterSettings {
            interval_ns: 10 * MS,
            timeout_ns: 50 * MS,
            ..MeterSettings::default()
        };
        let mut m = meter(settings);
        assert_eq!(m.flight.len(), 8);
        // Round trips from 5 to 45 ms overtake each other; every 7th is lost.
        let end = drive(&mut m, NOW, 1_000, |i| {
            (i % 7 != 3).then_some(u64::from(5 + (i * 13) % 41) * MS)
        });
        m.handle_timeout(end + 100 * MS);
        let f = m.figures(end + 100 * MS);
        assert_eq!((f.sent, f.received), (1_000, 857));
        assert_eq!(m.outcome_count, 1_000, "each probe resolved once");

        // A timeout longer than the ring: the ring coming round loses the
        // oldest, once; the timeout then loses the rest, once.
        let mut m = meter(MeterSettings {
            interval_ns: MS,
            timeout_ns: 10_000 * MS,
            ..MeterSettings::default()
        });
        assert_eq!(m.flight.len(), MAX_WINDOW);
        let first = m.poll_probe(NOW).unwrap();
        m.handle_echo(first.seq, first.sent_ns, NOW + MS);
        for i in 1..=5_000 {
            m.poll_probe(NOW + i * MS).unwrap();
        }
        assert_eq!(m.outcome_count, 1 + 904, "seqs 1 to 904 came round");
        m.handle_timeout(NOW + 20_000 * MS);
        assert_eq!(m.outcome_count, 5_001);
    }

    #[test]
    fn a_blackhole_takes_the_path_down_after_down_after_intervals() {
        let settings = MeterSettings {
            interval_ns: 20 * MS,
            ..MeterSettings::default()
        };
        let mut m = meter(settings);
        let t = drive(&mut m, NOW, 10, |_| Some(5 * MS));
        assert!(m.poll_event().is_none());
        // The last echo came 5 ms after the probe at t - 20 ms.
        let last_echo = t - 20 * MS + 5 * MS;
        let mut now = t;
        let down_at = loop {
            m.poll_probe(now);
            m.handle_timeout(now);
            if let Some(PathEvent::Down { at_ns }) = m.poll_event() {
                break at_ns;
            }
            now += MS;
            assert!(now < t + 500 * MS, "never went down");
        };
        let blind = down_at - last_echo;
        assert!((100 * MS..=120 * MS).contains(&blind), "{blind}");
        let f = m.figures(down_at);
        assert_eq!(f.health, Some(0.0));
        assert!(!f.up);
    }

    #[test]
    fn it_comes_back_after_up_after_echoes_and_availability_counts_the_gap() {
        let mut m = meter(MeterSettings::default());
        // 1 s up, 2 s dark, 2 s up again.
        let mut now = drive(&mut m, NOW, 10, |_| Some(10 * MS));
        now = drive(&mut m, now, 20, |_| None);
        assert!(!m.is_up());
        assert!(matches!(m.poll_event(), Some(PathEvent::Down { .. })));
        now = drive(&mut m, now, 2, |_| Some(10 * MS));
        assert!(!m.is_up(), "two echoes are not enough");
        now = drive(&mut m, now, 18, |_| Some(10 * MS));
        assert!(m.is_up());
        assert!(matches!(m.poll_event(), Some(PathEvent::Up { .. })));
        let f = m.figures(now);
        assert!((0.55..0.75).contains(&f.availability), "{}", f.availability);
    }

    #[test]
    fn probes_lost_before_the_first_answer_are_no_loss() {
        let mut m = meter(MeterSettings::default());
        // The peer answers from the 11th probe on (no session before).
        let end = drive(&mut m, NOW, 60, |i| (i >= 10).then_some(20 * MS));
        let f = m.figures(end + 2_000 * MS);
        assert_eq!(f.loss_pct, Some(0.0));
        assert_eq!((f.sent, f.received), (60, 50));
        // Losses after it count.
        let end = drive(&mut m, end, 10, |i| (i % 2 == 0).then_some(20 * MS));
        m.handle_timeout(end + 2_000 * MS);
        let f = m.figures(end + 2_000 * MS);
        assert_eq!(f.loss_pct, Some(100.0 * 5.0 / 60.0));
    }

    #[test]
    fn forged_or_repeated_echoes_are_ignored() {
        let mut m = meter(MeterSettings::default());
        let p = m.poll_probe(NOW).unwrap();
        m.handle_echo(p.seq, p.sent_ns + 1, NOW + MS);
        m.handle_echo(p.seq + 7, p.sent_ns, NOW + MS);
        assert_eq!(m.figures(NOW + MS).received, 0);
        m.handle_echo(p.seq, p.sent_ns, NOW + 3 * MS);
        m.handle_echo(p.seq, p.sent_ns, NOW + 4 * MS);
        let f = m.figures(NOW + 5 * MS);
        assert_eq!((f.received, f.rtt_ms), (1, Some([3.0, 3.0, 3.0])));
    }

    #[test]
    fn a_late_round_does_not_send_a_burst() {
        let mut m = meter(MeterSettings::default());
        assert!(m.poll_probe(NOW).is_some());
        // The worker comes back 1 s late: one probe, not ten.
        assert!(m.poll_probe(NOW + 1_000 * MS).is_some());
        assert!(m.poll_probe(NOW + 1_000 * MS).is_none());
        assert_eq!(m.poll_timeout(), NOW + 1_100 * MS);
    }

    #[test]
    fn the_score_follows_the_e_model() {
        assert!((health_score(0.0, 0.0, 0.0) - 99.73).abs() < 0.01);
        // 100 ms round trip, 5 ms jitter, 1% loss: still a good call path.
        let good = health_score(100.0, 5.0, 1.0);
        assert!((95.0..96.0).contains(&good), "{good}");
        // 400 ms and 10% loss: a bad one.
        assert!(health_score(400.0, 20.0, 10.0) < 60.0);
        assert_eq!(health_score(2_000.0, 0.0, 50.0), 0.0);
    }
}
