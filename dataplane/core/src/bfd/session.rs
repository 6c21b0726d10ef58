//! One BFD session in asynchronous mode (RFC 5880 §6), sans-IO: packets and
//! the time go in; packets to send, the next deadline and state changes
//! come out.
//!
//! - The state machine of §6.2 (AdminDown, Down, Init, Up) with the
//!   reception rules of §6.8.6 and detection of §6.8.4: the remote is
//!   declared down when nothing valid arrived for its Detect Mult times the
//!   agreed interval (the larger of our Required Min RX and its Desired Min
//!   TX).
//! - Transmission (§6.8.7) every max(our Desired Min TX, its Required Min
//!   RX), less 0-25% of jitter (10-25% when its Detect Mult is 1), nothing
//!   when it asks for no packets (Required Min RX of 0); at least 1 s apart
//!   while not Up (§6.8.3).
//! - Poll/Final (§6.5): a Poll is answered with a Final at once; our own
//!   Poll sequence starts when our timers change while Up (including the
//!   step from the 1 s of bring-up to the configured interval) and ends at
//!   the remote's Final. A slower transmit interval takes effect only then.
//! - Demand mode is never asked for, the Echo function is not offered
//!   (Required Min Echo RX of 0), and authentication is the caller's
//!   business (see the module docs of [`super`]).

use super::packet::{ControlPacket, Diagnostic, State};

const US: u64 = 1_000;
/// The slowest a session transmits while not Up (§6.8.3).
const BRING_UP_TX_US: u32 = 1_000_000;

/// The timers a session is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How often we would like to transmit (µs).
    pub desired_min_tx_us: u32,
    /// How often we can take packets (µs).
    pub required_min_rx_us: u32,
    /// Our detection multiplier.
    pub detect_mult: u8,
}

impl Default for Timers {
    /// 300 ms × 3, as FRR's bfdd.
    fn default() -> Self {
        Timers {
            desired_min_tx_us: 300_000,
            required_min_rx_us: 300_000,
            detect_mult: 3,
        }
    }
}

/// A change of the session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// Why, as the diagnostic we now send.
    pub diag: Diagnostic,
    /// When (ns).
    pub at_ns: u64,
}

/// Why a well-formed packet was not taken by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Its Your Discriminator names another session.
    Discriminator,
    /// We are administratively down.
    AdminDown,
}

/// One session's state.
#[derive(Debug, Clone)]
pub struct Session {
    timers: Timers,
    /// The timers the remote has acknowledged (with a Final), or agreed
    /// to by the session not being Up yet.
    acked: Timers,
    state: State,
    diag: Diagnostic,
    local_discr: u32,
    remote_discr: u32,
    remote_state: State,
    remote_min_rx_us: u32,
    remote_desired_tx_us: u32,
    remote_detect_mult: u8,
    /// Our Poll sequence is running.
    polling: bool,
    /// A Final is owed to the remote's Poll.
    final_owed: bool,
    next_tx_ns: u64,
    /// When the remote is declared down, while Init or Up.
    detect_ns: Option<u64>,
    changes: std::collections::VecDeque<StateChange>,
    rng: u64,
}

impl Session {
    /// A session, Down, with our discriminator `local_discr` (non-zero and
    /// unique among the caller's sessions), starting at `now`; `seed`
    /// draws the transmit jitter.
    pub fn new(timers: Timers, local_discr: u32, seed: u64, now_ns: u64) -> Self {
        assert_ne!(local_discr, 0, "discriminators are non-zero");
        Session {
            timers,
            acked: timers,
            state: State::Down,
            diag: Diagnostic::NONE,
            local_discr,
            remote_discr: 0,
            remote_state: State::Down,
            // §6.8.1: one packet a second until the remote says otherwise.
            remote_min_rx_us: 1,
            remote_desired_tx_us: 0,
            remote_detect_mult: 0,
            polling: false,
            final_owed: false,
            next_tx_ns: now_ns,
            detect_ns: None,
            // Reserved now: a state change never allocates.
            changes: std::collections::VecDeque::with_capacity(4),
            rng: seed | 1,
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our discriminator.
    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    /// The remote's state, as its last packet said.
    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    /// The remote's discriminator; 0 until it is heard.
    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discr
    }

    /// The diagnostic we send: why the session last changed state.
    pub fn diagnostic(&self) -> Diagnostic {
        self.diag
    }

    /// The interval between our periodic packets (ns, before jitter), as
    /// negotiated now: the slower of our wish and what the remote can take
    /// (at least a second while not Up, §6.8.3).
    pub fn transmit_interval_ns(&self) -> u64 {
        let ours = if self.state == State::Up {
            self.acked.desired_min_tx_us
        } else {
            self.acked.desired_min_tx_us.max(BRING_UP_TX_US)
        };
        u64::from(ours.max(self.remote_min_rx_us)) * US
    }

    /// The time without a valid packet after which the remote is declared
    /// down (ns), as negotiated now.
    pub fn detection_time_ns(&self) -> u64 {
        let agreed = self.acked.required_min_rx_us.max(self.remote_desired_tx_us);
        u64::from(self.remote_detect_mult) * u64::from(agreed) * US
    }

    /// When [`Session::handle_timeout`] or [`Session::poll_transmit`] next
    /// has work.
    pub fn poll_timeout(&self) -> u64 {
        self.detect_ns
            .map_or(self.next_tx_ns, |d| d.min(self.next_tx_ns))
    }

    /// Whether [`Session::poll_transmit`] has a packet at `now`.
    pub fn transmit_due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_tx_ns || self.final_owed
    }

    /// The next state change, oldest first.
    pub fn poll_change(&mut self) -> Option<StateChange> {
        self.changes.pop_front()
    }

    /// Declares the remote down when its detection time ran out.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        if self.detect_ns.is_some_and(|d| now_ns >= d) {
            self.detect_ns = None;
            self.remote_discr = 0;
            self.polling = false;
            self.set_state(State::Down, Diagnostic::TIME_EXPIRED, now_ns);
        }
    }

    /// Administratively down (`true`) or back (`false`), at `now`.
    pub fn set_admin_down(&mut self, down: bool, now_ns: u64) {
        match (down, self.state) {
            (true, State::AdminDown) | (false, State::Down | State::Init | State::Up) => {}
            (true, _) => {
                self.detect_ns = None;
                self.set_state(State::AdminDown, Diagnostic::ADMIN_DOWN, now_ns);
                self.next_tx_ns = now_ns;
            }
            (false, State::AdminDown) => {
                self.set_state(State::Down, Diagnostic::NONE, now_ns);
                self.next_tx_ns = now_ns;
            }
        }
    }

    /// New timers, at `now`. While Up, a Poll sequence tells the remote; a
    /// slower transmit interval or a faster receive one waits for its Final.
    pub fn set_timers(&mut self, timers: Timers, now_ns: u64) {
        if timers == self.timers {
            return;
        }
        self.timers = timers;
        if self.state == State::Up {
            self.polling = true;
            // Faster transmission and slower reception are safe at once.
            self.acked.desired_min_tx_us =
                self.acked.desired_min_tx_us.min(timers.desired_min_tx_us);
            self.acked.required_min_rx_us =
                self.acked.required_min_rx_us.max(timers.required_min_rx_us);
            self.next_tx_ns = now_ns;
        } else {
            self.acked = timers;
        }
    }

    /// Takes a well-formed packet from the remote (§6.8.6), at `now`.
    pub fn handle_packet(&mut self, p: &ControlPacket, now_ns: u64) -> Result<(), Ignored> {
        if p.your_discriminator != 0 && p.your_discriminator != self.local_discr {
            return Err(Ignored::Discriminator);
        }
        self.remote_discr = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_desired_tx_us = p.desired_min_tx_us;
        self.remote_detect_mult = p.detect_mult;
        let rx_was = self.remote_min_rx_us;
        self.remote_min_rx_us = p.required_min_rx_us;
        if p.fin && self.polling {
            self.polling = false;
            self.acked = self.timers;
        }
        if p.poll {
            self.final_owed = true;
        }
        if self.state == State::AdminDown {
            return Err(Ignored::AdminDown);
        }
        match (self.state, p.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.set_state(State::Down, Diagnostic::NEIGHBOR_DOWN, now_ns);
            }
            (State::Down, State::Down) => self.set_state(State::Init, Diagnostic::NONE, now_ns),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, Diagnostic::NONE, now_ns);
            }
            (State::Up, State::Down) => {
                self.set_state(State::Down, Diagnostic::NEIGHBOR_DOWN, now_ns);
            }
            _ => {}
        }
        self.detect_ns = match self.state {
            State::Init | State::Up => Some(now_ns + self.detection_time_ns()),
            State::Down | State::AdminDown => None,
        };
        // A remote that slows our transmission takes effect at the next
        // packet; one that wakes us from silence (Required Min RX 0
        // before), now; one that asks for packets more often (FRR's bfdd
        // coming Up from its bring-up second), before the slower interval
        // runs out: it times us on our advertised interval already.
        if rx_was == 0 && p.required_min_rx_us != 0 {
            self.next_tx_ns = now_ns;
        } else if p.required_min_rx_us < rx_was {
            let soon = now_ns + self.jittered_interval_ns();
            self.next_tx_ns = self.next_tx_ns.min(soon);
        }
        Ok(())
    }

    /// The packet due at `now`, if one is: periodic, or a Final owed.
    pub fn poll_transmit(&mut self, now_ns: u64) -> Option<ControlPacket> {
        let periodic = now_ns >= self.next_tx_ns;
        if !periodic && !self.final_owed {
            return None;
        }
        if self.remote_min_rx_us == 0 && !self.final_owed {
            // The remote asked for silence (§6.8.7); check back later.
            self.next_tx_ns = now_ns + u64::from(BRING_UP_TX_US) * US;
            return None;
        }
        let fin = std::mem::take(&mut self.final_owed);
        let p = ControlPacket {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !fin,
            fin,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.timers.detect_mult,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote_discr,
            desired_min_tx_us: self.advertised_tx_us(),
            required_min_rx_us: self.timers.required_min_rx_us,
            required_min_echo_rx_us: 0,
            auth: None,
        };
        if periodic {
            self.next_tx_ns = now_ns + self.jittered_interval_ns();
        }
        Some(p)
    }

    /// The Desired Min TX we send: at least 1 s while not Up (§6.8.3).
    fn advertised_tx_us(&self) -> u32 {
        if self.state == State::Up {
            self.timers.desired_min_tx_us
        } else {
            self.timers.desired_min_tx_us.max(BRING_UP_TX_US)
        }
    }

    /// The interval to the next periodic packet, less its jitter.
    fn jittered_interval_ns(&mut self) -> u64 {
        let interval = self.transmit_interval_ns();
        // xorshift64: the jitter only has to be spread, not secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let (least, span) = if self.remote_detect_mult == 1 {
            (10, 15)
        } else {
            (0, 25)
        };
        let cut_pct = least + self.rng % (span + 1);
        interval - interval * cut_pct / 100
    }

    fn set_state(&mut self, to: State, diag: Diagnostic, now_ns: u64) {
        let from = self.state;
        self.state = to;
        self.diag = diag;
        if to == State::Up && self.timers.desired_min_tx_us < BRING_UP_TX_US {
            // From the 1 s of bring-up to the configured interval: faster,
            // so at once, and told to the remote with a Poll.
            self.polling = true;
            self.next_tx_ns = now_ns;
        }
        if from == State::Up {
            self.acked = self.timers;
        }
        self.changes.push_back(StateChange {
            from,
            to,
            diag,
            at_ns: now_ns,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::example;
    use super::*;

    const MS: u64 = 1_000_000;

    fn fast() -> Timers {
        Timers {
            desired_min_tx_us: 50_000,
            required_min_rx_us: 50_000,
            detect_mult: 3,
        }
    }

    /// Two sessions joined by a wire of 1 ms that can be cut; keeps every
    /// packet A sent, with its time.
    struct Pair {
        a: Session,
        b: Session,
        now: u64,
        /// Packets in flight: (arrival, to A?, packet).
        wire: Vec<(u64, bool, ControlPacket)>,
        cut: bool,
        sent_by_a: Vec<(u64, ControlPacket)>,
        /// When A last took a packet.
        last_to_a: u64,
    }

    impl Pair {
        fn new(a: Timers, b: Timers) -> Pair {
            Pair {
                a: Session::new(a, 1, 7, 0),
                b: Session::new(b, 2, 11, 0),
                now: 0,
                wire: Vec::new(),
                cut: false,
                sent_by_a: Vec::new(),
                last_to_a: 0,
            }
        }

        /// Runs until `until`, jumping from deadline to deadline.
        fn run_until(&mut self, until: u64) {
            loop {
                let next_arrival = self.wire.iter().map(|w| w.0).min().unwrap_or(u64::MAX);
                let next = self
                    .a
                    .poll_timeout()
                    .min(self.b.poll_timeout())
                    .min(next_arrival)
                    .max(self.now);
                if next > until {
                    self.now = until;
                    return;
                }
                self.now = next;
                let now = self.now;
                let (due, later): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|w| w.0 <= now);
                self.wire = later;
                for (_, to_a, p) in due {
                    if to_a {
                        self.last_to_a = now;
                        let _ = self.a.handle_packet(&p, now);
                    } else {
                        let _ = self.b.handle_packet(&p, now);
                    }
                }
                self.a.handle_timeout(now);
                self.b.handle_timeout(now);
                while let Some(p) = self.a.poll_transmit(now) {
                    self.sent_by_a.push((now, p));
                    if !self.cut {
                        self.wire.push((now + MS, false, p));
                    }
                }
                while let Some(p) = self.b.poll_transmit(now) {
                    if !self.cut {
                        self.wire.push((now + MS, true, p));
                    }
                }
            }
        }
    }

    fn states(s: &mut Session) -> Vec<(State, State)> {
        std::iter::from_fn(|| s.poll_change())
            .map(|c| (c.from, c.to))
            .collect()
    }

    #[test]
    fn two_sessions_come_up_through_init_by_the_three_way_handshake() {
        let mut p = Pair::new(fast(), fast());
        p.run_until(3_000 * MS);
        assert_eq!(p.a.state(), State::Up);
        assert_eq!(p.b.state(), State::Up);
        assert_eq!(p.a.remote_discriminator(), 2);
        assert_eq!(p.b.remote_discriminator(), 1);
        // Both heard the other's Down: Init, then Up.
        assert_eq!(
            states(&mut p.a),
            [(State::Down, State::Init), (State::Init, State::Up)]
        );
        assert_eq!(
            states(&mut p.b),
            [(State::Down, State::Init), (State::Init, State::Up)]
        );
    }

    #[test]
    fn while_not_up_packets_go_at_most_once_a_second_and_then_at_the_configured_rate() {
        let mut p = Pair::new(fast(), fast());
        p.b.set_admin_down(true, 0);
        p.run_until(5_000 * MS);
        let times: Vec<u64> = p.sent_by_a.iter().map(|(t, _)| *t).collect();
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= 750 * MS, "{times:?}");
        }
        assert!(p
            .sent_by_a
            .iter()
            .all(|(_, pk)| pk.desired_min_tx_us == 1_000_000));
        p.b.set_admin_down(false, p.now);
        p.sent_by_a.clear();
        p.run_until(p.now + 5_000 * MS);
        assert_eq!(p.a.state(), State::Up);
        let up_at = p
            .sent_by_a
            .iter()
            .position(|(_, pk)| pk.state == State::Up)
            .unwrap();
        let fast_gaps: Vec<u64> = p.sent_by_a[up_at..]
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        // 50 ms less 0-25% of jitter, once the Poll sequence has ended.
        assert!(fast_gaps.len() > 50, "{fast_gaps:?}");
        assert!(
            fast_gaps.iter().all(|g| (37 * MS..=50 * MS).contains(g)),
            "{fast_gaps:?}"
        );
        let spread = fast_gaps.iter().max().unwrap() - fast_gaps.iter().min().unwrap();
        assert!(spread > 5 * MS, "jitter spreads the packets: {spread}");
    }

    #[test]
    fn detection_is_exactly_detect_mult_times_the_agreed_interval_after_the_last_packet() {
        // The remote sends every 100 ms and we take one every 50 ms: the
        // agreed interval is 100 ms, its Detect Mult 4.
        let slow = Timers {
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            detect_mult: 4,
        };
        let mut p = Pair::new(fast(), slow);
        p.run_until(5_000 * MS);
        assert_eq!(p.a.state(), State::Up);
        assert_eq!(p.a.detection_time_ns(), 400 * MS);
        states(&mut p.a);
        // The wire goes dark; what is on it still arrives.
        p.cut = true;
        p.run_until(p.now + 2_000 * MS);
        let changes: Vec<StateChange> = std::iter::from_fn(|| p.a.poll_change()).collect();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!((changes[0].from, changes[0].to), (State::Up, State::Down));
        assert_eq!(changes[0].diag, Diagnostic::TIME_EXPIRED);
        assert_eq!(changes[0].at_ns, p.last_to_a + 400 * MS);
        assert_eq!(p.a.remote_discriminator(), 0);
    }

    #[test]
    fn the_down_is_declared_at_the_deadline_not_a_nanosecond_before() {
        let mut s = Session::new(fast(), 1, 3, 0);
        let hello = example(State::Init);
        s.handle_packet(&hello, 10 * MS).unwrap();
        assert_eq!(s.state(), State::Up);
        s.handle_packet(
            &ControlPacket {
                state: State::Up,
                ..hello
            },
            20 * MS,
        )
        .unwrap();
        // 3 × max(50 ms ours, 50 ms theirs) after the last packet.
        s.handle_timeout(170 * MS - 1);
        assert_eq!(s.state(), State::Up);
        s.handle_timeout(170 * MS);
        assert_eq!(s.state(), State::Down);
        let change = std::iter::from_fn(|| s.poll_change()).last().unwrap();
        assert_eq!(change.diag, Diagnostic::TIME_EXPIRED);
        assert_eq!(change.at_ns, 170 * MS);
    }

    #[test]
    fn every_transition_of_the_state_diagram() {
        let from_remote = example;
        // A session in `start`, reached by what the remote says.
        let session_in = |start: State| {
            let mut s = Session::new(fast(), 1, 3, 0);
            match start {
                State::Down => {}
                State::Init => s.handle_packet(&from_remote(State::Down), 0).unwrap(),
                State::Up => s.handle_packet(&from_remote(State::Init), 0).unwrap(),
                State::AdminDown => s.set_admin_down(true, 0),
            }
            assert_eq!(s.state(), start);
            s
        };
        use State::*;
        let table = [
            (Down, AdminDown, Down),
            (Down, Down, Init),
            (Down, Init, Up),
            (Down, Up, Down),
            (Init, AdminDown, Down),
            (Init, Down, Init),
            (Init, Init, Up),
            (Init, Up, Up),
            (Up, AdminDown, Down),
            (Up, Down, Down),
            (Up, Init, Up),
            (Up, Up, Up),
            (AdminDown, Down, AdminDown),
            (AdminDown, Init, AdminDown),
            (AdminDown, Up, AdminDown),
        ];
        for (start, heard, end) in table {
            let mut s = session_in(start);
            let _ = s.handle_packet(&from_remote(heard), 10 * MS);
            assert_eq!(s.state(), end, "{start:?} hearing {heard:?}");
        }
        // Init and Up fall to Down when the detection time runs out.
        for start in [Init, Up] {
            let mut s = session_in(start);
            s.handle_timeout(s.poll_timeout().max(10 * MS) + 3_000 * MS);
            assert_eq!(s.state(), Down, "{start:?} timing out");
        }
    }

    #[test]
    fn a_poll_is_answered_with_a_final_at_once() {
        let mut s = Session::new(fast(), 1, 3, 0);
        let _ = s.poll_transmit(0);
        let poll = ControlPacket {
            poll: true,
            your_discriminator: 0,
            desired_min_tx_us: 1_000_000,
            ..example(State::Down)
        };
        s.handle_packet(&poll, 5 * MS).unwrap();
        let answer = s
            .poll_transmit(5 * MS)
            .expect("a Final, before the next periodic packet");
        assert!(answer.fin && !answer.poll);
        assert_eq!(s.poll_transmit(5 * MS), None);
    }

    #[test]
    fn a_remote_that_comes_up_and_asks_for_more_packets_gets_them_at_once() {
        // FRR's bfdd asks for a packet a second while it is not Up, and for
        // its configured rate once Up, from when it times us on the
        // interval we advertise: our next packet may not wait out the
        // second it asked for before (it would declare us down).
        let mut s = Session::new(fast(), 1, 3, 0);
        let _ = s.poll_transmit(0);
        let slow_init = ControlPacket {
            desired_min_tx_us: 1_000_000,
            required_min_rx_us: 1_000_000,
            ..example(State::Init)
        };
        s.handle_packet(&slow_init, MS).unwrap();
        assert_eq!(s.state(), State::Up);
        let announced = s.poll_transmit(MS).expect("Up, at once");
        assert!(announced.poll);
        assert_eq!(announced.desired_min_tx_us, 50_000);
        assert!(s.poll_timeout() > 700 * MS, "a packet a second, as asked");
        let fast_final = ControlPacket {
            fin: true,
            ..example(State::Up)
        };
        s.handle_packet(&fast_final, 2 * MS).unwrap();
        let next = s.poll_timeout();
        assert!(
            (2 * MS..=52 * MS).contains(&next),
            "within the 50 ms now agreed: {next}"
        );
    }

    #[test]
    fn a_faster_rate_while_up_applies_before_the_final() {
        // B takes a packet every 10 ms; A sends every 50 ms, then asks for 10.
        let b = Timers {
            required_min_rx_us: 10_000,
            ..fast()
        };
        let mut p = Pair::new(fast(), b);
        p.run_until(3_000 * MS);
        assert_eq!(p.a.state(), State::Up);
        // No Final can come back: A speeds up regardless (§6.8.3 holds only
        // a slower rate until the Poll Sequence ends).
        p.cut = true;
        let faster = Timers {
            desired_min_tx_us: 10_000,
            ..fast()
        };
        p.a.set_timers(faster, p.now);
        p.sent_by_a.clear();
        // Less than A's detection time, so that it stays Up throughout.
        p.run_until(p.now + 80 * MS);
        let gaps: Vec<u64> = p.sent_by_a.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(gaps.len() >= 5, "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 10 * MS), "{gaps:?}");
    }

    #[test]
    fn new_timers_while_up_run_a_poll_sequence_and_a_slower_rate_waits_for_the_final() {
        let mut p = Pair::new(fast(), fast());
        p.run_until(3_000 * MS);
        assert_eq!(p.a.state(), State::Up);
        let slower = Timers {
            desired_min_tx_us: 200_000,
            ..fast()
        };
        p.a.set_timers(slower, p.now);
        p.sent_by_a.clear();
        p.run_until(p.now + 2_000 * MS);
        let polls = p.sent_by_a.iter().filter(|(_, pk)| pk.poll).count();
        assert!(polls >= 1, "the change is announced");
        let last_poll = p.sent_by_a.iter().rposition(|(_, pk)| pk.poll).unwrap();
        // While polling, still the old rate; after the Final, the new one.
        let after: Vec<u64> = p.sent_by_a[last_poll..]
            .windows(2)
            .skip(1)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        assert!(after.len() >= 5);
        assert!(
            after.iter().all(|g| (150 * MS..=200 * MS).contains(g)),
            "{after:?}"
        );
        assert_eq!(p.a.state(), State::Up);
        assert_eq!(p.b.state(), State::Up);
        assert_eq!(
            p.b.detection_time_ns(),
            600 * MS,
            "B detects on A's new rate"
        );
    }

    #[test]
    fn a_neighbor_going_admin_down_takes_the_session_down_with_its_reason() {
        let mut p = Pair::new(fast(), fast());
        p.run_until(3_000 * MS);
        states(&mut p.a);
        p.b.set_admin_down(true, p.now);
        p.run_until(p.now + 500 * MS);
        let change = std::iter::from_fn(|| p.a.poll_change()).collect::<Vec<_>>();
        assert_eq!(change.len(), 1, "{change:?}");
        assert_eq!(
            (change[0].to, change[0].diag),
            (State::Down, Diagnostic::NEIGHBOR_DOWN)
        );
        // An admin-down session ignores what it gets.
        assert_eq!(p.b.state(), State::AdminDown);
    }

    #[test]
    fn a_packet_for_another_discriminator_is_ignored() {
        let mut s = Session::new(fast(), 1, 3, 0);
        let other = ControlPacket {
            your_discriminator: 77,
            ..example(State::Up)
        };
        assert_eq!(s.handle_packet(&other, 0), Err(Ignored::Discriminator));
        assert_eq!(s.remote_discriminator(), 0);
    }

    #[test]
    fn a_remote_asking_for_no_packets_gets_none_but_its_finals() {
        let mut s = Session::new(fast(), 1, 3, 0);
        let quiet = ControlPacket {
            your_discriminator: 0,
            desired_min_tx_us: 1_000_000,
            required_min_rx_us: 0,
            ..example(State::Down)
        };
        s.handle_packet(&quiet, 0).unwrap();
        for t in 0..10 {
            assert_eq!(s.poll_transmit(t * 1_000 * MS), None);
        }
        s.handle_packet(
            &ControlPacket {
                poll: true,
                ..quiet
            },
            10_000 * MS,
        )
        .unwrap();
        assert!(s.poll_transmit(10_000 * MS).is_some_and(|p| p.fin));
    }
}
