//! A deterministic WAN impairment model for one direction of a link, with no
//! I/O and no clock of its own: the caller passes the time in, so tests run
//! without sleeping and a seed reproduces every verdict.
//!
//! A frame offered to a [`Link`] goes through, in this order: blackhole,
//! Gilbert–Elliott burst loss, independent loss, the rate limiter with its
//! tail-dropping queue, and finally delay and jitter. What comes out is
//! either a [`Verdict::Drop`] with its reason or the time the frame is due at
//! the far end.
//!
//! Frames are never reordered: a frame departs no earlier than the one
//! offered before it, as on a real serial link. Jitter therefore does not
//! reorder either; when frames arrive closer together than the jitter's
//! width, a frame drawn early waits for its predecessor, which skews the
//! delay upwards.
//!
//! [`Impairment::apply`] reads settings as text (`delay=10ms jitter=2ms
//! loss=1% burst=p:1%,r:20%,loss:50% rate=2mbit queue=64kb blackhole=on`);
//! [`Command`] and [`parse_timeline`] read the control commands and timeline
//! files of the `patronus-wan` tool.

use std::fmt;

/// Settings of one direction. The defaults impair nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay in milliseconds.
    pub delay_ms: f64,
    /// Each frame's delay is drawn uniformly from `delay ± jitter`, never below 0.
    pub jitter_ms: f64,
    /// Independent loss probability per frame, in percent.
    pub loss_pct: f64,
    /// Bursty loss; off while its `p` is 0.
    pub burst: GilbertElliott,
    /// Link rate in kbit/s (1 000 bit/s); 0 is unlimited.
    pub rate_kbit: u64,
    /// Bytes that may wait for the rate-limited link before new frames are
    /// dropped; only used with a rate.
    pub queue_bytes: u64,
    /// Drop everything.
    pub blackhole: bool,
}

/// Default queue limit in bytes: about 40 full-size Ethernet frames.
pub const DEFAULT_QUEUE_BYTES: u64 = 64_000;

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss_pct: 0.0,
            burst: GilbertElliott::default(),
            rate_kbit: 0,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            blackhole: false,
        }
    }
}

/// The two-state Gilbert–Elliott loss model. In the good state nothing is
/// lost; in the bad state each frame is lost with probability `loss_in_bad`.
/// Over many frames the loss rate tends to `p / (p + r) · loss_in_bad`, and a
/// stay in the bad state lasts `1 / r` frames on average.
#[derive(Clone, Debug, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from good to bad, per frame, in percent.
    pub p: f64,
    /// Probability of moving from bad to good, per frame, in percent.
    pub r: f64,
    /// Loss probability in the bad state, in percent.
    pub loss_in_bad: f64,
}

impl Default for GilbertElliott {
    /// Off (`p` = 0). `r` and `loss` start at 100%, so setting only `p` gives
    /// losses of single frames at rate `p`.
    fn default() -> Self {
        GilbertElliott {
            p: 0.0,
            r: 100.0,
            loss_in_bad: 100.0,
        }
    }
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Independent random loss.
    Loss,
    /// Gilbert–Elliott loss in the bad state.
    BurstLoss,
    /// The rate limiter's queue was full.
    QueueFull,
    /// The direction is blackholed.
    Blackhole,
}

/// What becomes of an offered frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped.
    Drop(DropReason),
    /// To be delivered at this time (same clock as the offer, nanoseconds).
    DeliverAt(u64),
}

/// Frame counters of one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames offered.
    pub offered: u64,
    /// Frames given a delivery time.
    pub delivered: u64,
    /// Dropped by independent loss.
    pub loss: u64,
    /// Dropped by Gilbert–Elliott loss.
    pub burst_loss: u64,
    /// Dropped at the tail of the rate limiter's queue.
    pub queue_full: u64,
    /// Dropped by the blackhole.
    pub blackhole: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offered={} delivered={} loss={} burst_loss={} queue_full={} blackhole={}",
            self.offered,
            self.delivered,
            self.loss,
            self.burst_loss,
            self.queue_full,
            self.blackhole
        )
    }
}

/// splitmix64: tiny, fast, and good enough for drawing loss and jitter; what
/// matters here is that a seed fixes the sequence.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction of an impaired link.
#[derive(Clone, Debug)]
pub struct Link {
    settings: Impairment,
    rng: Rng,
    in_bad_state: bool,
    /// When the rate-limited link finishes serialising what it has accepted.
    busy_until_ns: u64,
    /// The latest delivery time handed out, which later frames may not precede.
    last_departure_ns: u64,
    counters: Counters,
}

impl Link {
    /// A link with these settings whose random draws follow `seed`.
    pub fn new(settings: Impairment, seed: u64) -> Link {
        Link {
            settings,
            rng: Rng(seed),
            in_bad_state: false,
            busy_until_ns: 0,
            last_departure_ns: 0,
            counters: Counters::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Impairment {
        &self.settings
    }

    /// Replaces the settings; frames offered from now on get the new ones.
    /// Frames already given a delivery time keep it, and later frames still
    /// leave after them.
    pub fn set(&mut self, settings: Impairment) {
        self.settings = settings;
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Decides the fate of a frame of `len` bytes offered at `now_ns`.
    /// `now_ns` must not go backwards between calls.
    pub fn offer(&mut self, now_ns: u64, len: usize) -> Verdict {
        self.counters.offered += 1;
        // Every frame takes the same four draws whatever the settings, so the
        // n-th frame meets the same luck before and after a change.
        let [transition, burst_draw, loss_draw, jitter_draw] = [(); 4].map(|()| self.rng.unit());
        let s = &self.settings;
        let ge = &s.burst;
        self.in_bad_state = if self.in_bad_state {
            transition >= ge.r / 100.0
        } else {
            ge.p > 0.0 && transition < ge.p / 100.0
        };
        let verdict = if s.blackhole {
            Verdict::Drop(DropReason::Blackhole)
        } else if self.in_bad_state && burst_draw < ge.loss_in_bad / 100.0 {
            Verdict::Drop(DropReason::BurstLoss)
        } else if loss_draw < s.loss_pct / 100.0 {
            Verdict::Drop(DropReason::Loss)
        } else {
            match self.serialise(now_ns, len) {
                None => Verdict::Drop(DropReason::QueueFull),
                Some(sent_ns) => {
                    let s = &self.settings;
                    let offset_ms = (2.0 * jitter_draw - 1.0) * s.jitter_ms;
                    let delay_ns = ((s.delay_ms + offset_ms).max(0.0) * 1e6).round() as u64;
                    let at = (sent_ns + delay_ns).max(self.last_departure_ns);
                    self.last_departure_ns = at;
                    Verdict::DeliverAt(at)
                }
            }
        };
        match verdict {
            Verdict::DeliverAt(_) => self.counters.delivered += 1,
            Verdict::Drop(DropReason::Loss) => self.counters.loss += 1,
            Verdict::Drop(DropReason::BurstLoss) => self.counters.burst_loss += 1,
            Verdict::Drop(DropReason::QueueFull) => self.counters.queue_full += 1,
            Verdict::Drop(DropReason::Blackhole) => self.counters.blackhole += 1,
        }
        verdict
    }

    /// When the last bit of the frame is on the wire, or `None` when the
    /// queue has no room for it.
    fn serialise(&mut self, now_ns: u64, len: usize) -> Option<u64> {
        let rate = self.settings.rate_kbit;
        if rate == 0 {
            return Some(now_ns);
        }
        let backlog_ns = self.busy_until_ns.saturating_sub(now_ns);
        // An idle link always takes a frame, however small the queue.
        if backlog_ns > 0 {
            let backlog_bytes = u128::from(backlog_ns) * u128::from(rate) / 8_000_000;
            if backlog_bytes + len as u128 > u128::from(self.settings.queue_bytes) {
                return None;
            }
        }
        // bits / (kbit/s) = ms; times 10^6 for nanoseconds.
        let tx_ns = (len as u128 * 8 * 1_000_000 / u128::from(rate)) as u64;
        self.busy_until_ns = self.busy_until_ns.max(now_ns) + tx_ns;
        Some(self.busy_until_ns)
    }
}

/// A setting that could not be read; names the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The key (or the word that should have been one).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ParseError {}

impl Impairment {
    /// Applies settings given as text: space-separated `key=value` words,
    /// any subset, in any order; keys not given keep their value, and the
    /// word `clear` resets everything to the defaults first. On error
    /// nothing changes.
    pub fn apply(&mut self, text: &str) -> Result<(), ParseError> {
        let mut next = self.clone();
        for word in text.split_whitespace() {
            if word == "clear" {
                next = Impairment::default();
                continue;
            }
            let Some((key, value)) = word.split_once('=') else {
                return Err(err(word, "expected key=value or clear"));
            };
            let bad = |reason: String| err(key, &reason);
            match key {
                "delay" => next.delay_ms = duration_ms(value).map_err(bad)?,
                "jitter" => next.jitter_ms = duration_ms(value).map_err(bad)?,
                "loss" => next.loss_pct = percent(value).map_err(bad)?,
                "burst" => next.burst = burst(value, &next.burst).map_err(bad)?,
                "rate" => next.rate_kbit = rate_kbit(value).map_err(bad)?,
                "queue" => next.queue_bytes = bytes(value).map_err(bad)?,
                "blackhole" => {
                    next.blackhole = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad(format!("expected on or off, not {value:?}"))),
                    }
                }
                _ => return Err(err(key, "unknown key")),
            }
        }
        *self = next;
        Ok(())
    }
}

/// The settings as text that [`Impairment::apply`] reads back.
impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.burst;
        write!(
            f,
            "delay={}ms jitter={}ms loss={}% burst=p:{}%,r:{}%,loss:{}% rate={}kbit queue={}b blackhole={}",
            self.delay_ms,
            self.jitter_ms,
            self.loss_pct,
            b.p,
            b.r,
            b.loss_in_bad,
            self.rate_kbit,
            self.queue_bytes,
            if self.blackhole { "on" } else { "off" }
        )
    }
}

fn err(key: &str, reason: &str) -> ParseError {
    ParseError {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A finite, non-negative number followed by one of `units` (the first is
/// also assumed when none is written), scaled by that unit's factor.
fn number_with_unit(value: &str, units: &[(&str, f64)]) -> Result<f64, String> {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let factor = if unit.is_empty() {
        units[0].1
    } else {
        units
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, factor)| *factor)
            .ok_or_else(|| {
                let names: Vec<_> = units.iter().map(|(name, _)| *name).collect();
                format!("unit {unit:?} is not one of {}", names.join(", "))
            })?
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    Ok(n * factor)
}

fn duration_ms(value: &str) -> Result<f64, String> {
    number_with_unit(value, &[("ms", 1.0), ("s", 1000.0), ("us", 0.001)])
}

fn percent(value: &str) -> Result<f64, String> {
    let pct = number_with_unit(value, &[("%", 1.0)])?;
    if pct > 100.0 {
        return Err(format!("{value} is more than 100%"));
    }
    Ok(pct)
}

fn rate_kbit(value: &str) -> Result<u64, String> {
    if value == "off" {
        return Ok(0);
    }
    let kbit = number_with_unit(
        value,
        &[("kbit", 1.0), ("bit", 0.001), ("mbit", 1e3), ("gbit", 1e6)],
    )?;
    if kbit != 0.0 && kbit < 1.0 {
        return Err(format!("{value} is below 1kbit (0 or off is unlimited)"));
    }
    Ok(kbit.round() as u64)
}

fn bytes(value: &str) -> Result<u64, String> {
    let n = number_with_unit(
        value,
        &[
            ("b", 1.0),
            ("kb", 1e3),
            ("kib", 1024.0),
            ("mb", 1e6),
            ("mib", 1024.0 * 1024.0),
        ],
    )?;
    Ok(n.round() as u64)
}

/// `off`, or `p:P,r:R,loss:L` (any subset; the rest as in `current`).
fn burst(value: &str, current: &GilbertElliott) -> Result<GilbertElliott, String> {
    if value == "off" {
        return Ok(GilbertElliott::default());
    }
    let mut ge = current.clone();
    for part in value.split(',') {
        let (name, pct) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: expected p:, r: or loss: with a percentage"))?;
        let pct = percent(pct)?;
        match name {
            "p" => ge.p = pct,
            "r" => ge.r = pct,
            "loss" => ge.loss_in_bad = pct,
            _ => return Err(format!("{name:?} is not p, r or loss")),
        }
    }
    Ok(ge)
}

/// Which directions a `set` applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directions {
    /// Frames from interface A to B.
    AToB,
    /// Frames from interface B to A.
    BToA,
    /// Both.
    Both,
}

impl Directions {
    /// Whether A→B is included.
    pub fn a_to_b(self) -> bool {
        self != Directions::BToA
    }

    /// Whether B→A is included.
    pub fn b_to_a(self) -> bool {
        self != Directions::AToB
    }
}

/// The names commands use: `a2b`, `b2a`, `both`.
impl fmt::Display for Directions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Directions::AToB => "a2b",
            Directions::BToA => "b2a",
            Directions::Both => "both",
        })
    }
}

/// A control command: one line of the control socket or of a timeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `set a2b|b2a|both SETTINGS`; the settings are checked when parsed.
    Set(Directions, String),
    /// `stats`.
    Stats,
    /// `quit`: stop the tool.
    Quit,
}

impl Command {
    /// Reads a command line; errors say what is wrong in one line.
    pub fn parse(line: &str) -> Result<Command, String> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match word {
            "stats" | "quit" if !rest.is_empty() => Err(format!("{word} takes no arguments")),
            "stats" => Ok(Command::Stats),
            "quit" => Ok(Command::Quit),
            "set" => {
                let (dir, settings) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let dirs = match dir {
                    "a2b" => Directions::AToB,
                    "b2a" => Directions::BToA,
                    "both" => Directions::Both,
                    _ => return Err(format!("direction {dir:?} is not a2b, b2a or both")),
                };
                if settings.trim().is_empty() {
                    return Err("set needs settings".to_owned());
                }
                Impairment::default()
                    .apply(settings)
                    .map_err(|e| e.to_string())?;
                Ok(Command::Set(dirs, settings.trim().to_owned()))
            }
            _ => Err(format!("unknown command {word:?} (set, stats, quit)")),
        }
    }
}

/// One timed change of a timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedSet {
    /// When, in nanoseconds after start.
    pub at_ns: u64,
    /// Which directions.
    pub dirs: Directions,
    /// The settings, as for [`Impairment::apply`].
    pub settings: String,
}

/// Reads a timeline: lines `AT_SECONDS set DIRECTION SETTINGS`, blank lines
/// and `#` comments. The result is in time order (lines with the same time
/// in file order). Errors name the line.
pub fn parse_timeline(text: &str) -> Result<Vec<TimedSet>, String> {
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fail = |e: String| format!("line {}: {e}", i + 1);
        let (at, command) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let seconds: f64 = at
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| fail(format!("{at:?} is not a time in seconds")))?;
        match Command::parse(command).map_err(fail)? {
            Command::Set(dirs, settings) => events.push(TimedSet {
                at_ns: (seconds * 1e9).round() as u64,
                dirs,
                settings,
            }),
            _ => return Err(fail("only set commands can be timed".to_owned())),
        }
    }
    events.sort_by_key(|e| e.at_ns);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn link(text: &str, seed: u64) -> Link {
        let mut s = Impairment::default();
        s.apply(text).unwrap();
        Link::new(s, seed)
    }

    fn deliver_at(v: Verdict) -> u64 {
        match v {
            Verdict::DeliverAt(t) => t,
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn delay_without_jitter_is_exact() {
        let mut l = link("delay=25ms", 1);
        for i in 0..100 {
            let now = i * 3 * MS + 17;
            assert_eq!(l.offer(now, 100), Verdict::DeliverAt(now + 25 * MS));
        }
        assert_eq!(l.counters().delivered, 100);
    }

    #[test]
    fn jitter_stays_in_bounds_averages_to_the_delay_and_never_reorders() {
        let mut l = link("delay=20ms jitter=5ms", 7);
        let (mut sum, mut last) = (0.0, 0);
        for i in 0..10_000 {
            // Spaced wider than the jitter, so no frame waits for another.
            let now = i * 11 * MS;
            let at = deliver_at(l.offer(now, 100));
            let delay = (at - now) as f64 / 1e6;
            assert!((15.0..=25.0).contains(&delay), "{delay} ms");
            assert!(at >= last);
            last = at;
            sum += delay;
        }
        let mean = sum / 10_000.0;
        assert!((mean - 20.0).abs() < 0.2, "mean {mean} ms");
    }

    #[test]
    fn jitter_wider_than_the_spacing_holds_frames_in_order() {
        let mut l = link("delay=1ms jitter=5ms", 3);
        let mut last = 0;
        for i in 0..1_000 {
            let now = i * MS / 10;
            let at = deliver_at(l.offer(now, 100));
            assert!(at >= last && at >= now);
            last = at;
        }
    }

    #[test]
    fn independent_loss_is_near_its_rate() {
        let mut l = link("loss=5%", 42);
        let lost = (0..20_000)
            .filter(|i| l.offer(i * MS, 100) == Verdict::Drop(DropReason::Loss))
            .count();
        let pct = lost as f64 / 200.0;
        assert!((4.0..=6.0).contains(&pct), "{pct}%");
        assert_eq!(l.counters().loss, lost as u64);
        assert_eq!(l.counters().delivered, 20_000 - lost as u64);
    }

    /// Loss rate and mean length of runs of consecutive losses.
    fn loss_runs(l: &mut Link, frames: u64) -> (f64, f64) {
        let (mut lost, mut runs, mut in_run) = (0, 0, false);
        for i in 0..frames {
            let dropped = matches!(l.offer(i * MS, 100), Verdict::Drop(_));
            if dropped {
                lost += 1;
                runs += u64::from(!in_run);
            }
            in_run = dropped;
        }
        (lost as f64 / frames as f64, lost as f64 / runs as f64)
    }

    #[test]
    fn gilbert_elliott_loss_matches_the_model_and_clusters() {
        // p/(p+r) = 1/(1+9) of the time bad, half of it lost: 5%.
        let mut l = link("burst=p:1%,r:9%,loss:50%", 9);
        let (rate, run) = loss_runs(&mut l, 200_000);
        assert!((rate - 0.05).abs() < 0.01, "loss {rate}");
        assert_eq!(l.counters().burst_loss, (rate * 200_000.0).round() as u64);
        // Independent loss at 5% has runs of 1/(1-0.05) ≈ 1.05 frames.
        let mut indep = link("loss=5%", 9);
        let (_, indep_run) = loss_runs(&mut indep, 200_000);
        assert!(run > 1.5 && indep_run < 1.1, "runs {run} vs {indep_run}");

        // Everything lost in the bad state: a run is a stay, 1/r frames.
        let mut l = link("burst=p:2%,r:20%,loss:100%", 11);
        let (rate, run) = loss_runs(&mut l, 200_000);
        assert!((rate - 2.0 / 22.0).abs() < 0.01, "loss {rate}");
        assert!((run - 5.0).abs() < 0.3, "mean burst {run}");
    }

    #[test]
    fn rate_limit_serialises_frames() {
        let mut l = link("rate=10mbit queue=10mb", 1);
        let last = (0..1_000).map(|_| deliver_at(l.offer(0, 1_250))).last();
        // 1 250 bytes at 10 Mbit/s is 1 ms each.
        assert_eq!(last, Some(1_000 * MS));
        // After the backlog drains the link is idle again.
        assert_eq!(l.offer(2_000 * MS, 1_250), Verdict::DeliverAt(2_001 * MS));
    }

    #[test]
    fn rate_limit_adds_delay_after_serialisation() {
        let mut l = link("rate=8mbit delay=10ms", 1);
        // 1 000 bytes at 8 Mbit/s: 1 ms on the wire, then 10 ms in flight.
        assert_eq!(l.offer(0, 1_000), Verdict::DeliverAt(11 * MS));
        assert_eq!(l.offer(0, 1_000), Verdict::DeliverAt(12 * MS));
    }

    #[test]
    fn a_full_queue_drops_at_the_tail() {
        // 1 250-byte frames at 10 Mbit/s, 1 ms each; the queue holds 4 of
        // them, counting the one on the wire.
        let mut l = link("rate=10mbit queue=5000b", 1);
        let verdicts: Vec<_> = (0..8).map(|_| l.offer(0, 1_250)).collect();
        assert_eq!(
            &verdicts[..4],
            &(1..=4)
                .map(|i| Verdict::DeliverAt(i * MS))
                .collect::<Vec<_>>()[..]
        );
        assert!(verdicts[4..]
            .iter()
            .all(|v| *v == Verdict::Drop(DropReason::QueueFull)));
        assert_eq!(l.counters().queue_full, 4);
        // One frame's time later there is room for one more, behind the rest.
        assert_eq!(l.offer(MS, 1_250), Verdict::DeliverAt(5 * MS));
        assert_eq!(l.offer(MS, 1_250), Verdict::Drop(DropReason::QueueFull));
    }

    #[test]
    fn blackhole_drops_everything_until_lifted() {
        let mut l = link("blackhole=on delay=5ms", 1);
        for i in 0..100 {
            assert_eq!(l.offer(i, 60), Verdict::Drop(DropReason::Blackhole));
        }
        assert_eq!(l.counters().blackhole, 100);
        let mut s = l.settings().clone();
        s.apply("blackhole=off").unwrap();
        l.set(s);
        assert_eq!(l.offer(MS, 60), Verdict::DeliverAt(6 * MS));
    }

    #[test]
    fn lowering_the_delay_does_not_reorder() {
        let mut l = link("delay=100ms", 1);
        assert_eq!(l.offer(0, 60), Verdict::DeliverAt(100 * MS));
        l.set(Impairment::default());
        assert_eq!(l.offer(MS, 60), Verdict::DeliverAt(100 * MS));
        assert_eq!(l.offer(200 * MS, 60), Verdict::DeliverAt(200 * MS));
    }

    #[test]
    fn the_same_seed_gives_the_same_verdicts() {
        let text = "delay=10ms jitter=4ms loss=3% burst=p:1%,r:30%,loss:60% rate=2mbit queue=20kb";
        let run = |seed| {
            let mut l = link(text, seed);
            (0..5_000u64)
                .map(|i| l.offer(i * MS / 5, 200 + (i as usize * 37) % 1_300))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn parses_every_key_and_keeps_the_rest() {
        let mut s = Impairment::default();
        s.apply("delay=10ms jitter=2ms loss=1% burst=p:1%,r:20%,loss:50% rate=2mbit queue=64kb blackhole=on")
            .unwrap();
        assert_eq!(
            s,
            Impairment {
                delay_ms: 10.0,
                jitter_ms: 2.0,
                loss_pct: 1.0,
                burst: GilbertElliott {
                    p: 1.0,
                    r: 20.0,
                    loss_in_bad: 50.0
                },
                rate_kbit: 2_000,
                queue_bytes: 64_000,
                blackhole: true,
            }
        );
        s.apply("delay=1.5s loss=0 blackhole=off burst=r:10%")
            .unwrap();
        assert_eq!(s.delay_ms, 1500.0);
        assert_eq!(s.loss_pct, 0.0);
        assert!(!s.blackhole);
        assert_eq!((s.burst.p, s.burst.r), (1.0, 10.0));
        assert_eq!(s.jitter_ms, 2.0);
        s.apply("rate=512kbit queue=2KiB jitter=250us").unwrap();
        assert_eq!((s.rate_kbit, s.queue_bytes, s.jitter_ms), (512, 2048, 0.25));
        s.apply("rate=off burst=off").unwrap();
        assert_eq!((s.rate_kbit, s.burst.p), (0, 0.0));

        let shown = s.to_string();
        let mut back = Impairment::default();
        back.apply(&shown).unwrap();
        assert_eq!(back, s, "{shown}");

        s.apply("clear delay=3").unwrap();
        assert_eq!(
            s,
            Impairment {
                delay_ms: 3.0,
                ..Impairment::default()
            }
        );
    }

    #[test]
    fn bad_settings_name_the_key_and_change_nothing() {
        let mut s = Impairment::default();
        for (text, key) in [
            ("delay=10parsecs", "delay"),
            ("delay=-1ms", "delay"),
            ("jitter=fast", "jitter"),
            ("loss=101%", "loss"),
            ("loss=", "loss"),
            ("burst=p:1%,q:2%", "burst"),
            ("burst=p", "burst"),
            ("rate=10furlongs", "rate"),
            ("rate=100bit", "rate"),
            ("queue=lots", "queue"),
            ("blackhole=maybe", "blackhole"),
            ("colour=blue", "colour"),
            ("delay", "delay"),
        ] {
            let e = s.apply(&format!("delay=5ms {text}")).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        assert_eq!(s, Impairment::default());
    }

    #[test]
    fn commands_and_timelines_parse() {
        assert_eq!(Command::parse("stats"), Ok(Command::Stats));
        assert_eq!(Command::parse(" quit "), Ok(Command::Quit));
        assert_eq!(
            Command::parse("set both  loss=0 delay=0 blackhole=on"),
            Ok(Command::Set(
                Directions::Both,
                "loss=0 delay=0 blackhole=on".to_owned()
            ))
        );
        assert!(Command::parse("set a2b loss=x")
            .unwrap_err()
            .contains("loss"));
        assert!(Command::parse("set sideways delay=1ms").is_err());
        assert!(Command::parse("set b2a").is_err());
        assert!(Command::parse("stats now").is_err());
        assert!(Command::parse("reboot").is_err());

        let events = parse_timeline(
            "# a WAN that dies and comes back\n\
             5.0 set both blackhole=on\n\
             \n\
             1 set a2b delay=50ms  # slower first\n\
             7.5 set both blackhole=off\n",
        )
        .unwrap();
        assert_eq!(
            events.iter().map(|e| (e.at_ns, e.dirs)).collect::<Vec<_>>(),
            [
                (1_000 * MS, Directions::AToB),
                (5_000 * MS, Directions::Both),
                (7_500 * MS, Directions::Both)
            ]
        );
        assert_eq!(events[0].settings, "delay=50ms");
        assert!(parse_timeline("soon set both delay=1ms")
            .unwrap_err()
            .starts_with("line 1:"));
        assert!(parse_timeline("1 set both delay=1ms\n2 stats")
            .unwrap_err()
            .starts_with("line 2:"));
        assert!(parse_timeline("1 set both wobble=1")
            .unwrap_err()
            .contains("wobble"));
    }
}
