//! A worker's share of the site's paths: a meter for each probed path of
//! the peers it owns, the path each of those peers' packets take now, by
//! selection, and per-path traffic counters.
//!
//! A *selection* is how one kind of traffic picks among a peer's paths: the
//! site's default order (the first path that is up), or a `route` rule's
//! strategy and thresholds ([`select`]). Each (peer, selection) has a
//! current choice, re-evaluated whenever the meters ran: it moves at once
//! when the path it holds goes down or breaks the thresholds (a failover),
//! and to a clearly better path only after that one stayed better for
//! `hold` (so a flapping path is not followed back and forth). Flows of a
//! `route` rule are pinned to the path they started on while it stays
//! eligible; the rest follow the default choice. Each move is counted by
//! policy and reason, and the time from the move to the first packet that
//! takes the new path is recorded.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::bfd::packet::ControlPacket;
use crate::bfd::session::Ignored;
use crate::config::site::{RuleAction, Strategy, Thresholds};
use crate::config::{Snapshot, TunnelSnapshot};
use crate::frame::Frame;
use crate::paths::bfd::{
    control_payload, datagram_payload, BfdCounters, BfdDrop, PathBfd, MAX_DATAGRAM_LEN,
};
use crate::paths::passive::PassiveMeter;
use crate::paths::probe::{Kind, ProbeMessage, PROBE_LEN};
use crate::paths::select::{self, Candidate};
use crate::paths::sla::PathMeter;
use crate::paths::{path_tag, PathTable, SharedUplinks, MAX_UPLINKS, UPLINK_BFD_WORKER};
use crate::stats::{
    BfdReport, FailoverReason, PathMove, PathReport, PathsReport, RecoveryHistogram,
};
use crate::tunnel::outer::ETHERNET_LEN;
use crate::tunnel::{owner_of, HandshakeRoundTrip, TunnelEnv, Tunnels};

/// No uplink chosen: the datagram follows the route table.
pub(super) const NO_UPLINK: u8 = u8::MAX;
const NO_PATH: u16 = u16::MAX;
/// Flows pinned to paths, direct-mapped by flow hash (a collision re-pins
/// a flow to its selection's current choice).
const PIN_SLOTS: usize = 1 << 14;
/// Moves a worker remembers for the control loop to report.
const MOVES_KEPT: usize = 32;
/// The policy id of the site's default order in metrics and events.
pub(super) const DEFAULT_POLICY: &str = "default";

/// Whose timer a heap entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The BFD session of the uplink.
    UplinkBfd(u8),
    /// The BFD session of the path.
    PathBfd(u16),
    /// The probe meter of the path.
    Meter(u16),
}

/// How often every choice is made again besides when a path changes:
/// hold times run out, and the load measured on the uplinks moves.
const EVALUATE_EVERY_NS: u64 = 100_000_000;

/// One path's state on the worker that owns its peer.
#[derive(Debug)]
struct PathState {
    meter: Option<PathMeter>,
    /// For the paths of an owned peer that takes no probes.
    passive: Option<PassiveMeter>,
    /// For the paths of an owned peer with BFD.
    bfd: Option<PathBfd>,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    /// Bytes sent at the last evaluation, for the load estimate.
    tx_bytes_seen: u64,
    /// When its BFD session's and its meter's live timer entries are due
    /// (`u64::MAX`: none).
    bfd_at: u64,
    meter_at: u64,
}

impl PathState {
    fn new(meter: Option<PathMeter>, passive: Option<PassiveMeter>) -> Self {
        PathState {
            meter,
            passive,
            bfd: None,
            tx_packets: 0,
            tx_bytes: 0,
            rx_packets: 0,
            rx_bytes: 0,
            tx_bytes_seen: 0,
            bfd_at: u64::MAX,
            meter_at: u64::MAX,
        }
    }
}

/// How one kind of traffic picks a path.
#[derive(Debug, Clone)]
struct Selection {
    /// The policy it comes from ([`DEFAULT_POLICY`] for the site's order).
    policy: Arc<str>,
    /// `None`: the site's order.
    strategy: Option<Strategy>,
    thresholds: Thresholds,
    /// Send each packet over the second-best path too.
    duplicate: bool,
}

/// A selection's current path for one peer.
#[derive(Debug, Clone, Copy)]
struct Choice {
    /// The path new (and unpinned) flows take; [`NO_PATH`] before the first evaluation.
    path: u16,
    /// For a duplicating selection: the best other path that is up
    /// ([`NO_PATH`] when there is none).
    second: u16,
    /// The peer's paths that are eligible now, by position among them.
    eligible: u64,
    /// A clearly better path, and since when it has been.
    candidate: u16,
    since_ns: u64,
    /// When the choice last moved, until a packet takes the new path.
    moved_ns: Option<u64>,
}

const UNCHOSEN: Choice = Choice {
    path: NO_PATH,
    second: NO_PATH,
    eligible: 0,
    candidate: NO_PATH,
    since_ns: 0,
    moved_ns: None,
};

/// A flow pinned to a path.
#[derive(Debug, Clone, Copy, Default)]
struct Pin {
    /// The peer and the steering of the flow (rule and hash).
    key: (u32, u64),
    path: u16,
    /// The path table generation it was pinned under.
    generation: u16,
}

/// The worker's paths.
#[derive(Debug, Default)]
pub(super) struct Paths {
    /// This worker's number and how many there are.
    worker: usize,
    workers: usize,
    /// By peer: whether this worker owns it (as the tunnel engine does, by key).
    owned: Vec<bool>,
    /// The tunnel snapshot whose path table this follows.
    tunnel: Option<Arc<TunnelSnapshot>>,
    /// Bumped when the path table changes: older pins are void.
    generation: u16,
    /// By path index; meters only for probed paths of owned peers.
    state: Vec<PathState>,
    /// Selection 0 is the site's order; then one per `route` rule.
    selections: Vec<Selection>,
    /// By snapshot rule index: its selection (0 for other rules).
    rule_selection: Vec<u16>,
    /// By peer × selection; chosen only for owned peers with paths.
    choices: Vec<Choice>,
    /// By peer: the uplink its last packet arrived on ([`NO_UPLINK`]: none yet).
    heard_on: Vec<u8>,
    pins: Vec<Pin>,
    /// Nominal bandwidth less measured load, by uplink (Mbit/s).
    spare_mbps: Vec<Option<f64>>,
    load_mbps: Vec<f64>,
    last_evaluation_ns: u64,
    /// Earliest time a meter has work.
    next_due_ns: u64,
    /// Where the candidates of one peer are gathered.
    scratch: Vec<Candidate>,
    failovers: BTreeMap<Arc<str>, [u64; FailoverReason::COUNT]>,
    recovery: RecoveryHistogram,
    /// Our tunnel address, when some path runs BFD: inner packets to it
    /// on port 3784 are BFD's.
    bfd_local: Option<Ipv4Addr>,
    /// The path of each (peer, local discriminator) with a session on a
    /// probed path: every Control packet after the first few names one.
    by_discriminator: HashMap<(u32, u32), u16, ahash::RandomState>,
    bfd_counters: BfdCounters,
    /// The sessions with the uplinks' routers, by uplink; only on
    /// [`UPLINK_BFD_WORKER`].
    uplink_bfd: Vec<Option<PathBfd>>,
    /// When each uplink session's live timer entry is due.
    uplink_bfd_at: Vec<u64>,
    /// Every meter's and session's next deadline, earliest first. An entry
    /// whose time is not its timer's live one (`bfd_at`, `meter_at`,
    /// `uplink_bfd_at`) is stale and skipped: a timer that moves earlier
    /// gets a new entry, one that moves later is found early and put back.
    /// So a pass touches only what is due, however many paths there are.
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    /// Peers whose paths changed in this pass, to choose for again.
    touched: Vec<u32>,
    /// Which uplinks BFD says are down and what every worker sent over
    /// each, shared by every worker.
    shared_uplinks: Arc<SharedUplinks>,
    /// The down bits as this worker last acted on them.
    uplinks_down_seen: u32,
    /// Every worker's bytes over each uplink when this worker last measured.
    sent_seen: Vec<u64>,
    moves: VecDeque<PathMove>,
    moves_made: u64,
}

impl Paths {
    /// Follows `cfg`'s path table and rules: meters of paths that are still
    /// there (same id and endpoint, same probe settings) keep their history,
    /// new ones start now; choices are made afresh.
    pub(super) fn reconfigure(
        &mut self,
        cfg: &Snapshot,
        (worker, workers): (usize, usize),
        shared_uplinks: &Arc<SharedUplinks>,
        now: u64,
    ) {
        self.worker = worker;
        self.workers = workers.max(1);
        self.shared_uplinks = shared_uplinks.clone();
        let Some(t) = cfg.tunnel.as_ref() else {
            self.tunnel = None;
            self.state.clear();
            self.by_discriminator.clear();
            self.choices.clear();
            self.owned.clear();
            self.bfd_local = None;
            self.uplink_bfd.clear();
            self.publish_uplinks_down();
            return;
        };
        self.owned = t
            .config
            .peers
            .iter()
            .map(|p| owner_of(p.keys.public(), self.workers) == worker)
            .collect();
        self.bfd_local = t
            .paths
            .paths
            .iter()
            .find_map(|p| p.bfd.as_ref().map(|b| b.local));
        let same_table = self.tunnel.as_ref().is_some_and(|old| old.paths == t.paths);
        if !same_table {
            self.rebuild_state(t, now);
            self.rebuild_uplink_sessions(&t.paths, now);
            self.schedule_all();
        }
        self.tunnel = Some(t.clone());
        self.selections = vec![Selection {
            policy: DEFAULT_POLICY.into(),
            strategy: None,
            thresholds: Thresholds::default(),
            duplicate: false,
        }];
        self.rule_selection = vec![0; cfg.site.rules.len()];
        for (i, rule) in cfg.site.rules.iter().enumerate() {
            if let (RuleAction::Route, Some(ps)) = (rule.action, &rule.path_selection) {
                self.rule_selection[i] = self.selections.len() as u16;
                self.selections.push(Selection {
                    policy: rule.policy.as_str().into(),
                    strategy: Some(ps.strategy),
                    thresholds: ps.thresholds.clone(),
                    duplicate: rule.duplicate,
                });
            }
        }
        let peers = t.config.peers.len();
        self.choices = vec![UNCHOSEN; peers * self.selections.len()];
        self.heard_on.resize(peers, NO_UPLINK);
        if self.pins.is_empty() && !t.paths.is_empty() {
            self.pins = vec![Pin::default(); PIN_SLOTS];
        }
        self.generation = self.generation.wrapping_add(1);
        self.spare_mbps = t
            .paths
            .uplinks
            .iter()
            .map(|u| nominal(u.bandwidth_mbps))
            .collect();
        self.load_mbps = vec![0.0; t.paths.uplinks.len()];
        // The load is measured from now on (uplinks may have been renumbered).
        self.sent_seen = (0..t.paths.uplinks.len())
            .map(|u| self.shared_uplinks.sent(u))
            .collect();
        self.last_evaluation_ns = now;
        for peer in 0..peers as u32 {
            self.evaluate(peer, now);
        }
        self.next_due_ns = now;
    }

    fn owns(&self, peer: u32) -> bool {
        self.owned.get(peer as usize).copied().unwrap_or(false)
    }

    fn rebuild_state(&mut self, t: &TunnelSnapshot, now: u64) {
        let old_table = self.tunnel.as_ref().map(|o| &o.paths);
        let same_meter = old_table.is_some_and(|o| o.meter == t.paths.meter);
        let mut old_state: Vec<Option<PathState>> = std::mem::take(&mut self.state)
            .into_iter()
            .map(Some)
            .collect();
        for (i, p) in t.paths.paths.iter().enumerate() {
            let probed = p.probed && self.owns(p.peer);
            let passive = !p.probed && self.owns(p.peer);
            let kept = old_table
                .filter(|_| same_meter)
                .and_then(|old| old.paths.iter().position(|o| o.tag == p.tag))
                .and_then(|i| old_state.get_mut(i).and_then(Option::take))
                .filter(|s| s.meter.is_some() == probed && s.passive.is_some() == passive);
            let mut state = kept.unwrap_or_else(|| {
                PathState::new(
                    probed.then(|| PathMeter::new(t.paths.meter, now)),
                    passive.then(|| PassiveMeter::new(now)),
                )
            });
            // A session whose ends and key stay keeps running; new timers
            // go to the remote by a Poll sequence while it is Up. A stock
            // peer runs one session, kept on its first path: it knows one
            // neighbour at our tunnel address, whichever way we reach it.
            let runs_bfd = self.owns(p.peer) && (p.probed || t.paths.of_peer(p.peer).start == i);
            state.bfd = match (p.bfd.clone().filter(|_| runs_bfd), state.bfd.take()) {
                (None, _) => None,
                (Some(ends), Some(mut old))
                    if (old.ends().local, old.ends().remote, &old.ends().auth)
                        == (ends.local, ends.remote, &ends.auth) =>
                {
                    old.session.set_timers(ends.timers, now);
                    Some(old)
                }
                (Some(ends), _) => Some(PathBfd::new(
                    ends,
                    p.tag,
                    u64::from(p.tag) ^ self.worker as u64,
                    now,
                )),
            };
            self.state.push(state);
        }
        self.by_discriminator.clear();
        for (i, (p, s)) in t.paths.paths.iter().zip(&self.state).enumerate() {
            if let Some(b) = s.bfd.as_ref().filter(|_| p.probed) {
                let key = (p.peer, b.session.local_discriminator());
                // The first of the peer's paths, as a walk of them would find.
                self.by_discriminator.entry(key).or_insert(i as u16);
            }
        }
    }

    /// The uplinks' sessions on [`UPLINK_BFD_WORKER`]: one whose ends and
    /// key stay keeps running (new timers by a Poll sequence), others start
    /// Down.
    fn rebuild_uplink_sessions(&mut self, table: &PathTable, now: u64) {
        let mut old = std::mem::take(&mut self.uplink_bfd);
        let runs = self.worker == UPLINK_BFD_WORKER;
        self.uplink_bfd = table
            .uplinks
            .iter()
            .map(|u| {
                let b = u.bfd.as_ref().filter(|_| runs)?;
                let ends = &b.ends;
                let same = |s: &mut PathBfd| {
                    let o = s.ends();
                    (o.local, o.remote, o.hops, &o.auth)
                        == (ends.local, ends.remote, ends.hops, &ends.auth)
                };
                let kept = old.iter_mut().find_map(|s| s.take_if(|s| same(s)));
                Some(match kept {
                    Some(mut session) => {
                        session.session.set_timers(ends.timers, now);
                        session
                    }
                    None => {
                        let tag = path_tag(&b.id, None);
                        PathBfd::new(ends.clone(), tag, u64::from(tag), now)
                    }
                })
            })
            .collect();
        self.publish_uplinks_down();
    }

    /// Tells every worker which uplinks BFD says are down (on the worker
    /// that runs their sessions).
    fn publish_uplinks_down(&self) {
        if self.worker != UPLINK_BFD_WORKER {
            return;
        }
        let bits = self
            .uplink_bfd
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(PathBfd::says_down))
            .fold(0u32, |bits, (u, _)| bits | 1 << u);
        self.shared_uplinks.set_down(bits);
    }

    /// Whether BFD says `uplink` is down.
    fn uplink_down(&self, uplink: u8) -> bool {
        self.uplinks_down_seen & 1u32.checked_shl(u32::from(uplink)).unwrap_or(0) != 0
    }

    /// Takes a Control packet (IPv4 `datagram`) for the session of
    /// `uplink`, on [`UPLINK_BFD_WORKER`]: checked, counted and consumed.
    pub(super) fn handle_uplink_bfd(&mut self, uplink: u8, datagram: &[u8], now: u64) {
        let counters = &mut self.bfd_counters;
        let Some(bfd) = self
            .uplink_bfd
            .get_mut(usize::from(uplink))
            .and_then(Option::as_mut)
        else {
            counters.dropped[BfdDrop::NoSession.index()] += 1;
            return;
        };
        let ends = bfd.ends();
        let Some((ttl, payload)) = datagram_payload(datagram, ends.local, ends.port()) else {
            counters.dropped[BfdDrop::NoSession.index()] += 1;
            return;
        };
        if !ends.accepts_ttl(ttl) {
            counters.dropped[BfdDrop::Ttl.index()] += 1;
            return;
        }
        let packet = match ControlPacket::parse(payload) {
            Ok(p) => p,
            Err(m) => {
                counters.malformed[m.index()] += 1;
                return;
            }
        };
        if bfd.authenticate(payload, &packet).is_err() {
            counters.dropped[BfdDrop::Auth.index()] += 1;
            return;
        }
        match bfd.session.handle_packet(&packet, now) {
            Ok(()) | Err(Ignored::AdminDown) => counters.rx += 1,
            Err(Ignored::Discriminator) => {
                counters.dropped[BfdDrop::UnknownDiscriminator.index()] += 1;
            }
        }
        let changed = bfd.take_changes().any;
        // A Final owed, or a remote that asks for packets sooner.
        let at = bfd.session.poll_timeout();
        self.schedule(Timer::UplinkBfd(uplink), at);
        if changed {
            // Every worker, this one included, acts on it at its next round.
            self.publish_uplinks_down();
        }
    }

    /// After the uplinks BFD says are down changed: a stock peer whose
    /// traffic is on one that went down moves on; every choice is made
    /// again.
    fn follow_uplinks_down(&mut self, now: u64) {
        let bits = self.shared_uplinks.down();
        if bits == self.uplinks_down_seen {
            return;
        }
        let went_down = bits & !self.uplinks_down_seen;
        self.uplinks_down_seen = bits;
        let Some(t) = self.tunnel.clone() else {
            return;
        };
        for peer in 0..t.config.peers.len() as u32 {
            if !self.owns(peer) || self.probed(peer) != Some(false) {
                continue;
            }
            let on = self.heard_on[peer as usize];
            if on != NO_UPLINK && went_down & 1u32.checked_shl(u32::from(on)).unwrap_or(0) != 0 {
                self.leave_uplink_of_stock_peer(peer);
            }
        }
        for peer in 0..t.config.peers.len() as u32 {
            self.evaluate(peer, now);
        }
    }

    /// The live due time of `timer`.
    fn scheduled_mut(&mut self, timer: Timer) -> Option<&mut u64> {
        match timer {
            Timer::UplinkBfd(u) => self.uplink_bfd_at.get_mut(usize::from(u)),
            Timer::PathBfd(i) => self.state.get_mut(usize::from(i)).map(|s| &mut s.bfd_at),
            Timer::Meter(i) => self.state.get_mut(usize::from(i)).map(|s| &mut s.meter_at),
        }
    }

    /// Makes `timer` due no later than `at`.
    fn schedule(&mut self, timer: Timer, at: u64) {
        let Some(live) = self.scheduled_mut(timer) else {
            return;
        };
        if at < *live {
            *live = at;
            self.timers.push(Reverse((at, timer)));
            self.next_due_ns = self.next_due_ns.min(at);
        }
    }

    /// Every meter's and session's timer afresh, from their deadlines.
    fn schedule_all(&mut self) {
        self.timers.clear();
        self.uplink_bfd_at = vec![u64::MAX; self.uplink_bfd.len()];
        for s in &mut self.state {
            s.bfd_at = u64::MAX;
            s.meter_at = u64::MAX;
        }
        for u in 0..self.uplink_bfd.len() {
            if let Some(b) = &self.uplink_bfd[u] {
                let at = b.session.poll_timeout();
                self.schedule(Timer::UplinkBfd(u as u8), at);
            }
        }
        for i in 0..self.state.len() {
            if let Some(b) = &self.state[i].bfd {
                let at = b.session.poll_timeout();
                self.schedule(Timer::PathBfd(i as u16), at);
            }
            if let Some(m) = &self.state[i].meter {
                let at = m.poll_timeout();
                self.schedule(Timer::Meter(i as u16), at);
            }
        }
    }

    /// Notes that `peer`'s paths changed: it is chosen for again at the
    /// end of the pass.
    fn touch(&mut self, peer: u32) {
        if !self.touched.contains(&peer) {
            self.touched.push(peer);
        }
    }

    fn table(&self) -> Option<&PathTable> {
        self.tunnel.as_deref().map(|t| &t.paths)
    }

    /// The earliest time a meter or a BFD session has work, if any path is
    /// probed or runs BFD.
    pub(super) fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The path a packet for `peer` with steering `steer` takes: its index,
    /// uplink and, for a peer with several endpoints, the endpoint (else
    /// wherever the peer is). `None` when the peer has no paths.
    #[inline]
    pub(super) fn route(
        &mut self,
        peer: u32,
        steer: u64,
        now: u64,
    ) -> Option<(usize, u8, Option<SocketAddr>)> {
        if !self.probed(peer)? {
            return self.heard_route(peer);
        }
        let selections = self.selections.len();
        let selection = self.selection_of(steer);
        let choice = self
            .choices
            .get_mut(peer as usize * selections + selection)?;
        if choice.path == NO_PATH {
            return None;
        }
        let mut path = choice.path;
        if selection != 0 {
            // A flow keeps its path while the path stays eligible.
            let start = self.tunnel.as_ref()?.paths.of_peer(peer).start as u16;
            let slot = (steer as usize ^ peer as usize) % PIN_SLOTS;
            let pin = &mut self.pins[slot];
            let key = (peer, steer);
            let bit = pin
                .path
                .checked_sub(start)
                .and_then(|i| 1u64.checked_shl(u32::from(i)))
                .unwrap_or(0);
            let kept =
                pin.key == key && pin.generation == self.generation && choice.eligible & bit != 0;
            if kept {
                path = pin.path;
            } else {
                *pin = Pin {
                    key,
                    path,
                    generation: self.generation,
                };
            }
        }
        if path == choice.path {
            if let Some(moved) = choice.moved_ns.take() {
                self.recovery.observe(now.saturating_sub(moved));
            }
        }
        let p = self.tunnel.as_ref()?.paths.paths.get(usize::from(path))?;
        Some((usize::from(path), p.uplink, p.endpoint))
    }

    /// Whether `peer`'s paths are probed; `None` when it has none.
    #[inline]
    fn probed(&self, peer: u32) -> Option<bool> {
        let t = self.table()?;
        Some(t.paths.get(t.of_peer(peer).start)?.probed)
    }

    /// The path of an unprobed peer (a stock WireGuard peer): nothing tells
    /// its paths apart, so its traffic follows the routes until it speaks,
    /// then goes back over the uplink it last spoke on.
    fn heard_route(&self, peer: u32) -> Option<(usize, u8, Option<SocketAddr>)> {
        let uplink = *self.heard_on.get(peer as usize)?;
        let t = self.table()?;
        let i = t.of_peer(peer).find(|&i| t.paths[i].uplink == uplink)?;
        Some((i, uplink, t.paths[i].endpoint))
    }

    /// The selection a packet's steering names (0: the site's order).
    #[inline]
    fn selection_of(&self, steer: u64) -> usize {
        let rule = (steer >> 32) as usize;
        match rule.checked_sub(1) {
            Some(r) => usize::from(*self.rule_selection.get(r).unwrap_or(&0)),
            None => 0,
        }
    }

    /// The second path of a packet whose selection duplicates, when there
    /// is one: its index, uplink and endpoint, as [`Paths::route`] gives.
    #[inline]
    pub(super) fn second_route(
        &self,
        peer: u32,
        steer: u64,
    ) -> Option<(usize, u8, Option<SocketAddr>)> {
        let selection = self.selection_of(steer);
        if selection == 0 || !self.selections[selection].duplicate {
            return None;
        }
        let choice = self
            .choices
            .get(peer as usize * self.selections.len() + selection)?;
        let p = self.table()?.paths.get(usize::from(choice.second))?;
        Some((usize::from(choice.second), p.uplink, p.endpoint))
    }

    /// Counts a datagram sent over path `i`.
    #[inline]
    pub(super) fn count_tx(&mut self, i: usize, bytes: usize) {
        if let Some(s) = self.state.get_mut(i) {
            s.tx_packets += 1;
            s.tx_bytes += bytes as u64;
        }
    }

    /// Counts a packet of `peer` that arrived over `uplink` from `from`.
    pub(super) fn count_rx(&mut self, peer: u32, uplink: u8, from: SocketAddr, bytes: usize) {
        let Some(i) = self.table().and_then(|t| t.find(peer, uplink, from)) else {
            return;
        };
        if let Some(heard) = self.heard_on.get_mut(peer as usize) {
            *heard = uplink;
        }
        let s = &mut self.state[i];
        s.rx_packets += 1;
        s.rx_bytes += bytes as u64;
    }

    /// Takes a handshake round trip of a peer that takes no probes, to the
    /// passive meter of the path the answer `arrived` over (uplink, source),
    /// else of the path the peer's traffic takes now.
    pub(super) fn handshake_round_trip(
        &mut self,
        rt: HandshakeRoundTrip,
        arrived: Option<(u8, SocketAddr)>,
        now: u64,
    ) {
        let Some(t) = self.table() else {
            return;
        };
        let path = match arrived {
            Some((uplink, from)) if rt.rtt_ns.is_some() => {
                let found = t.find(rt.peer, uplink, from);
                // An authenticated handshake message says where the peer is,
                // as a packet does.
                if let (Some(_), Some(heard)) = (found, self.heard_on.get_mut(rt.peer as usize)) {
                    *heard = uplink;
                }
                found
            }
            _ => self.heard_route(rt.peer).map(|(i, ..)| i),
        };
        let Some(meter) = path
            .and_then(|i| self.state.get_mut(i))
            .and_then(|s| s.passive.as_mut())
        else {
            return;
        };
        match rt.rtt_ns {
            Some(rtt) => meter.answered(rtt, now),
            None => meter.unanswered(now),
        }
    }

    /// Takes an echo of one of our probes (from `peer`); anything else
    /// is ignored. A path that comes back or goes down is acted on at once.
    pub(super) fn handle_echo(&mut self, peer: u32, m: &ProbeMessage, now: u64) {
        debug_assert_eq!(m.kind, Kind::Echo);
        let i = usize::from(m.path);
        let matches = self
            .table()
            .and_then(|t| t.paths.get(i))
            .is_some_and(|p| p.peer == peer && p.tag == m.tag);
        if !matches {
            return;
        }
        if let Some(meter) = self.state[i].meter.as_mut() {
            meter.handle_echo(m.seq, m.sent_ns, now);
            if std::iter::from_fn(|| meter.poll_event()).count() > 0 {
                self.evaluate(peer, now);
            }
        }
    }

    /// Takes an inner packet of `peer` that arrived over `uplink` from
    /// `from`, if it is a BFD Control packet for us (true: consumed, counted
    /// and dropped whatever it held). A session that changes state is acted
    /// on at once; a Poll is answered at the next timer pass.
    pub(super) fn handle_bfd(
        &mut self,
        peer: u32,
        uplink: u8,
        from: SocketAddr,
        inner: &[u8],
        now: u64,
    ) -> bool {
        let Some(local) = self.bfd_local else {
            return false;
        };
        let Some((ttl, payload)) = control_payload(inner, local) else {
            return false;
        };
        let counters = &mut self.bfd_counters;
        if ttl != 255 {
            counters.dropped[BfdDrop::Ttl.index()] += 1;
            return true;
        }
        let packet = match ControlPacket::parse(payload) {
            Ok(p) => p,
            Err(m) => {
                counters.malformed[m.index()] += 1;
                return true;
            }
        };
        let Some(t) = self.tunnel.as_deref() else {
            return true;
        };
        let range = t.paths.of_peer(peer);
        // A peer's paths are all probed or none (its `sla_probes`).
        let stock = !t.paths.paths.get(range.start).is_some_and(|p| p.probed);
        let found = if stock {
            // A stock peer's one session, whichever path it came over.
            Some(range.start).filter(|&i| {
                self.state[i].bfd.as_ref().is_some_and(|b| {
                    packet.your_discriminator == 0
                        || b.session.local_discriminator() == packet.your_discriminator
                })
            })
        } else if packet.your_discriminator != 0 {
            self.by_discriminator
                .get(&(peer, packet.your_discriminator))
                .map(|&i| usize::from(i))
        } else {
            // Before the remote knows our discriminator: the path it came
            // over is the remote's path back to us.
            t.paths
                .find(peer, uplink, from)
                .filter(|&i| self.state[i].bfd.is_some())
        };
        let Some(session_path) = found else {
            let reason = if packet.your_discriminator != 0 {
                BfdDrop::UnknownDiscriminator
            } else {
                BfdDrop::NoSession
            };
            counters.dropped[reason.index()] += 1;
            return true;
        };
        let bfd = self.state[session_path]
            .bfd
            .as_mut()
            .expect("found among the paths with a session");
        if bfd.authenticate(payload, &packet).is_err() {
            counters.dropped[BfdDrop::Auth.index()] += 1;
            return true;
        }
        match bfd.session.handle_packet(&packet, now) {
            Ok(()) | Err(Ignored::AdminDown) => counters.rx += 1,
            Err(Ignored::Discriminator) => {
                counters.dropped[BfdDrop::UnknownDiscriminator.index()] += 1;
            }
        }
        let changed = bfd.take_changes();
        // A Final owed, or a remote that asks for packets sooner.
        let at = bfd.session.poll_timeout();
        self.schedule(Timer::PathBfd(session_path as u16), at);
        if stock && changed.left_up {
            self.leave_uplink_of_stock_peer(peer);
        }
        if changed.any {
            self.evaluate(peer, now);
        }
        true
    }

    /// Runs the meters that are due: timeouts, then probes, sealed by
    /// `engine` for their peer and handed to `out` with their uplink and
    /// endpoint; then re-evaluates every choice.
    pub(super) fn handle_timeouts<F: Frame>(
        &mut self,
        engine: &mut Tunnels<F>,
        env: &mut impl TunnelEnv<F>,
        now: u64,
        mut out: impl FnMut(u8, SocketAddr, F),
        mut to_router: impl FnMut(u8, F),
    ) {
        self.follow_uplinks_down(now);
        if now < self.next_due_ns {
            return;
        }
        let Some(t) = self.tunnel.clone() else {
            return;
        };
        let mut uplinks_changed = false;
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let live = self.scheduled_mut(timer).expect("timers name what exists");
            if *live != at {
                continue; // superseded by an earlier entry
            }
            *live = u64::MAX;
            let next = match timer {
                Timer::UplinkBfd(u) => {
                    let Some(bfd) = self.uplink_bfd[usize::from(u)].as_mut() else {
                        continue;
                    };
                    bfd.session.handle_timeout(now);
                    uplinks_changed |= bfd.take_changes().any;
                    if bfd.session.transmit_due(now) {
                        // Room for the Ethernet header, which the pipeline writes.
                        let written = filled(env, ETHERNET_LEN + MAX_DATAGRAM_LEN, |buf| {
                            let n = bfd.poll_datagram(now, &mut buf[ETHERNET_LEN..])?;
                            Some(ETHERNET_LEN + n)
                        });
                        if let Some(frame) = written {
                            self.bfd_counters.tx += 1;
                            to_router(u, frame);
                        }
                    }
                    bfd.session.poll_timeout()
                }
                Timer::PathBfd(i) => {
                    let i = usize::from(i);
                    let path = &t.paths.paths[i];
                    // A stock peer's session goes where the peer's traffic
                    // goes (by the routes until the peer is heard).
                    let (over, uplink) = if path.probed {
                        (Some(i), path.uplink)
                    } else {
                        self.heard_route(path.peer)
                            .map_or((None, NO_UPLINK), |(j, uplink, _)| (Some(j), uplink))
                    };
                    let Some(bfd) = self.state[i].bfd.as_mut() else {
                        continue;
                    };
                    bfd.session.handle_timeout(now);
                    let changed = bfd.take_changes();
                    if bfd.session.transmit_due(now) {
                        if let Some((to, frame)) =
                            seal_control(bfd, &t, path.peer, engine, env, now)
                        {
                            self.bfd_counters.tx += 1;
                            if let Some(j) = over {
                                self.count_tx(j, frame.len());
                            }
                            out(uplink, path.endpoint.unwrap_or(to), frame);
                        }
                    }
                    let next = self.state[i].bfd.as_ref().expect("checked above");
                    let next = next.session.poll_timeout();
                    if changed.left_up && !path.probed {
                        self.leave_uplink_of_stock_peer(path.peer);
                    }
                    if changed.any {
                        self.touch(path.peer);
                    }
                    next
                }
                Timer::Meter(i) => {
                    let i = usize::from(i);
                    let path = &t.paths.paths[i];
                    let Some(meter) = self.state[i].meter.as_mut() else {
                        continue;
                    };
                    meter.handle_timeout(now);
                    if let Some(probe) = meter.poll_probe(now) {
                        let message = ProbeMessage {
                            kind: Kind::Probe,
                            path: i as u16,
                            tag: path.tag,
                            seq: probe.seq,
                            sent_ns: probe.sent_ns,
                        };
                        // Without a buffer or a session the probe is lost,
                        // and counted so by its meter.
                        if let Some((to, frame)) =
                            seal_probe(&message, &t, path.peer, engine, env, now)
                        {
                            self.count_tx(i, frame.len());
                            out(path.uplink, path.endpoint.unwrap_or(to), frame);
                        }
                    }
                    let meter = self.state[i].meter.as_mut().expect("checked above");
                    // Events are read back from the figures at the evaluation.
                    while meter.poll_event().is_some() {}
                    let next = meter.poll_timeout();
                    // Its figures moved: the peer's choices are made again.
                    self.touch(path.peer);
                    next
                }
            };
            self.schedule(timer, next);
        }
        if uplinks_changed {
            self.publish_uplinks_down();
            self.follow_uplinks_down(now);
        }
        // Every touched peer at once, after the pass: paths that fail in the
        // same pass make one failover, not one per path. Every peer now and
        // then, for hold times and the uplinks' load.
        if now.saturating_sub(self.last_evaluation_ns) >= EVALUATE_EVERY_NS {
            self.measure_load(&t.paths, now);
            self.touched.clear();
            for peer in 0..t.config.peers.len() as u32 {
                self.evaluate(peer, now);
            }
        } else {
            while let Some(peer) = self.touched.pop() {
                self.evaluate(peer, now);
            }
        }
        let next = self.poll_timeout().unwrap_or(u64::MAX);
        self.next_due_ns = next.min(self.last_evaluation_ns + EVALUATE_EVERY_NS);
    }

    /// Updates each uplink's spare bandwidth from what every worker sent
    /// over it since this worker's last evaluation (an exponentially
    /// weighted average over about a second): this worker adds what it
    /// sent to the shared totals, then reads them.
    fn measure_load(&mut self, table: &PathTable, now: u64) {
        let elapsed = now.saturating_sub(self.last_evaluation_ns);
        if elapsed < EVALUATE_EVERY_NS {
            return;
        }
        self.last_evaluation_ns = now;
        let mut own = [0u64; MAX_UPLINKS];
        for (p, s) in table.paths.iter().zip(&mut self.state) {
            own[usize::from(p.uplink)] += s.tx_bytes - s.tx_bytes_seen;
            s.tx_bytes_seen = s.tx_bytes;
        }
        let weight = (elapsed as f64 / 1e9).min(1.0);
        for (u, &own) in own.iter().enumerate().take(table.uplinks.len()) {
            if own > 0 {
                self.shared_uplinks.add_sent(u, own);
            }
            let total = self.shared_uplinks.sent(u);
            let bytes = total.wrapping_sub(self.sent_seen[u]);
            self.sent_seen[u] = total;
            let mbps = bytes as f64 * 8.0 / (elapsed as f64 / 1e9) / 1e6;
            self.load_mbps[u] += (mbps - self.load_mbps[u]) * weight;
            self.spare_mbps[u] =
                nominal(table.uplinks[u].bandwidth_mbps).map(|n| (n - self.load_mbps[u]).max(0.0));
        }
    }

    /// After the session of stock peer `peer` left Up: the peer's traffic
    /// leaves the uplink it was on for the next of the peer's paths. A
    /// stock peer answers wherever it last heard us from (WireGuard's
    /// roaming), so that is the whole failover; the session comes up again
    /// over the new uplink.
    fn leave_uplink_of_stock_peer(&mut self, peer: u32) {
        let Some(t) = self.tunnel.clone() else {
            return;
        };
        let range = t.paths.of_peer(peer);
        let current = self.heard_route(peer).map_or(range.start, |(i, ..)| i);
        // The next of its paths over an uplink that BFD does not say is down.
        let next = (1..range.len())
            .map(|k| range.start + (current - range.start + k) % range.len())
            .find(|&i| !self.uplink_down(t.paths.paths[i].uplink));
        let Some(next) = next else {
            return; // nowhere else to go
        };
        self.heard_on[peer as usize] = t.paths.paths[next].uplink;
        self.moves_made += 1;
        if self.moves.len() == MOVES_KEPT {
            self.moves.pop_front();
        }
        self.moves.push_back(PathMove {
            seq: self.moves_made,
            policy: DEFAULT_POLICY.into(),
            from: t.paths.paths[current].id.clone(),
            to: t.paths.paths[next].id.clone(),
            reason: FailoverReason::BfdDown,
        });
        self.failovers
            .entry(DEFAULT_POLICY.into())
            .or_insert([0; FailoverReason::COUNT])[FailoverReason::BfdDown.index()] += 1;
    }

    /// Re-makes `peer`'s choices (only peers with paths whose choices this
    /// worker keeps: owned ones).
    fn evaluate(&mut self, peer: u32, now: u64) {
        let Some(t) = self.tunnel.clone() else {
            return;
        };
        let range = t.paths.of_peer(peer);
        if range.is_empty() || !self.owns(peer) {
            return;
        }
        self.scratch.clear();
        // The peer's paths that BFD says are down, by position among them.
        let mut bfd_down = 0u64;
        for i in range.clone() {
            let p = &t.paths.paths[i];
            let figures = self.state[i].meter.as_mut().map(|m| m.figures(now));
            let uplink = &t.paths.uplinks[usize::from(p.uplink)];
            // A stock peer's session speaks for the uplink in use, not for
            // the path it is kept on.
            let down_by_bfd = self.uplink_down(p.uplink)
                || p.probed && self.state[i].bfd.as_ref().is_some_and(PathBfd::says_down);
            bfd_down |= u64::from(down_by_bfd) << (i - range.start);
            self.scratch.push(Candidate {
                up: figures.is_none_or(|f| f.up) && !down_by_bfd,
                figures,
                cost_per_gb: uplink.cost_per_gb,
                spare_mbps: self.spare_mbps[usize::from(p.uplink)],
            });
        }
        let hold = t.paths.hold_ns;
        let revertive = t.paths.revertive;
        for s in 0..self.selections.len() {
            let selection = &self.selections[s];
            let candidates = &self.scratch;
            let ok = |c: &Candidate| match selection.strategy {
                None => c.up,
                Some(_) => select::eligible(c, &selection.thresholds),
            };
            let best = match selection.strategy {
                None => candidates.iter().position(|c| c.up).unwrap_or(0),
                Some(strategy) => select::best(strategy, &selection.thresholds, candidates)
                    .expect("the peer has paths"),
            };
            let better = |a: usize, b: usize| match selection.strategy {
                None => revertive && a < b,
                Some(strategy) => select::clearly_better(strategy, &candidates[a], &candidates[b]),
            };
            let eligible = candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| ok(c))
                .fold(0u64, |m, (i, _)| m | 1 << i);
            let choice = &mut self.choices[peer as usize * self.selections.len() + s];
            choice.eligible = eligible;
            let start = range.start as u16;
            let best_path = start + best as u16;
            let first = choice.path == NO_PATH;
            if first {
                choice.path = best_path;
            }
            let current = usize::from(choice.path - start);
            let moved = if first {
                None
            } else if !ok(&candidates[current]) {
                (best != current).then(|| {
                    if candidates[current].up {
                        FailoverReason::SlaViolation
                    } else if bfd_down & 1 << current != 0 {
                        FailoverReason::BfdDown
                    } else {
                        FailoverReason::PathDown
                    }
                })
            } else if best != current && ok(&candidates[best]) && better(best, current) {
                if choice.candidate != best_path {
                    choice.candidate = best_path;
                    choice.since_ns = now;
                }
                (now.saturating_sub(choice.since_ns) >= hold).then_some(FailoverReason::BetterPath)
            } else {
                choice.candidate = NO_PATH;
                None
            };
            if let Some(reason) = moved {
                self.moves_made += 1;
                if self.moves.len() == MOVES_KEPT {
                    self.moves.pop_front();
                }
                self.moves.push_back(PathMove {
                    seq: self.moves_made,
                    policy: selection.policy.to_string(),
                    from: t.paths.paths[usize::from(choice.path)].id.clone(),
                    to: t.paths.paths[usize::from(best_path)].id.clone(),
                    reason,
                });
                choice.path = best_path;
                choice.candidate = NO_PATH;
                choice.moved_ns = Some(now);
                let counts = self
                    .failovers
                    .entry(selection.policy.clone())
                    .or_insert([0; FailoverReason::COUNT]);
                counts[reason.index()] += 1;
            }
            if selection.duplicate {
                // The best other path that is up, by the strategy, one that
                // shares neither the uplink nor the endpoint if there is one:
                // a copy on the same network is lost with the original.
                let path = |i: usize| &t.paths.paths[range.start + i];
                let current = usize::from(choice.path - start);
                let disjoint = |i: usize| {
                    path(i).uplink != path(current).uplink
                        && (path(i).endpoint.is_none()
                            || path(i).endpoint != path(current).endpoint)
                };
                let strategy = selection.strategy.unwrap_or(Strategy::LowestLatency);
                choice.second = candidates
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| *i != current && c.up)
                    .min_by(|(i, a), (j, b)| {
                        disjoint(*j)
                            .cmp(&disjoint(*i))
                            .then_with(|| select::rank(strategy, a, b))
                    })
                    .map_or(NO_PATH, |(i, _)| start + i as u16);
            }
        }
    }

    /// What the metrics endpoint shows of this worker's paths.
    pub(super) fn report(&mut self, now: u64) -> PathsReport {
        let mut paths = Vec::with_capacity(self.state.len());
        if let Some(t) = self.tunnel.clone() {
            let selections = self.selections.len();
            for (i, p) in t.paths.paths.iter().enumerate() {
                let Some(choice) = self.choices.get(p.peer as usize * selections) else {
                    continue;
                };
                if choice.path == NO_PATH {
                    continue; // another worker's peer
                }
                let active = if p.probed {
                    usize::from(choice.path) == i
                } else {
                    self.heard_on.get(p.peer as usize) == Some(&p.uplink)
                };
                let s = &mut self.state[i];
                paths.push(PathReport {
                    index: i as u16,
                    tag: p.tag,
                    active,
                    figures: match (&mut s.meter, &s.passive) {
                        (Some(m), _) => Some(m.figures(now)),
                        (None, Some(p)) => p.figures(now),
                        (None, None) => None,
                    },
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    bfd: s.bfd.as_ref().map(|b| bfd_report(b, now)),
                });
            }
        }
        PathsReport {
            paths,
            failovers: self
                .failovers
                .iter()
                .map(|(policy, counts)| (policy.to_string(), *counts))
                .collect(),
            recovery: self.recovery.clone(),
            moves: self.moves.iter().cloned().collect(),
            bfd: self.bfd_counters.clone(),
            uplink_bfd: self
                .uplink_bfd
                .iter()
                .enumerate()
                .filter_map(|(u, s)| Some((u as u8, bfd_report(s.as_ref()?, now))))
                .collect(),
        }
    }
}

/// What the metrics and the control plane are shown of a session at `now`.
fn bfd_report(b: &PathBfd, now: u64) -> BfdReport {
    let s = &b.session;
    BfdReport {
        state: s.state(),
        changes: *b.changes(),
        detection_time_ns: s.detection_time_ns(),
        remote_state: s.remote_state(),
        discriminators: (s.local_discriminator(), s.remote_discriminator()),
        diagnostic: s.diagnostic(),
        tx_interval_ns: s.transmit_interval_ns(),
        since_change_ns: b.last_change_ns().map(|at| now.saturating_sub(at)),
    }
}

/// A nominal bandwidth, when known.
fn nominal(mbps: u32) -> Option<f64> {
    (mbps > 0).then_some(f64::from(mbps))
}

/// `message` in a buffer of its own, sealed for `peer`.
fn seal_probe<F: Frame>(
    message: &ProbeMessage,
    t: &TunnelSnapshot,
    peer: u32,
    engine: &mut Tunnels<F>,
    env: &mut impl TunnelEnv<F>,
    now: u64,
) -> Option<(SocketAddr, F)> {
    let frame = filled(env, PROBE_LEN, |buf| {
        let buf: &mut [u8; PROBE_LEN] = buf.try_into().expect("the length was set");
        message.write(buf);
        Some(PROBE_LEN)
    })?;
    engine.send_extension(&t.config, peer, frame, now, env)
}

/// `bfd`'s Control packet due now, in a buffer of its own as the datagram
/// inside the tunnel, sealed for `peer`.
fn seal_control<F: Frame>(
    bfd: &mut PathBfd,
    t: &TunnelSnapshot,
    peer: u32,
    engine: &mut Tunnels<F>,
    env: &mut impl TunnelEnv<F>,
    now: u64,
) -> Option<(SocketAddr, F)> {
    let frame = filled(env, MAX_DATAGRAM_LEN, |buf| bfd.poll_datagram(now, buf))?;
    engine.send_control(&t.config, peer, frame, now, env)
}

/// A buffer of `room` bytes that `write` fills, trimmed to the length it
/// returns; `None` without a buffer or when `write` has nothing.
fn filled<F: Frame>(
    env: &mut impl TunnelEnv<F>,
    room: usize,
    write: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<F> {
    let mut frame = env.alloc()?;
    if !frame.set_len(room) {
        return None;
    }
    let len = write(&mut frame.data_mut()[..room])?;
    frame.set_len(len).then_some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::tunnel::crypto::hash;
    use crate::tunnel::noise::StaticKeys;
    use base64::Engine as _;

    /// A site with two uplinks of 100 and 80 Mbit/s and `peers` peers.
    fn snapshot(peers: u8) -> Snapshot {
        let secret = |n: u8| hash(&[b"load", &[n]]);
        let key = crate::testing::key_file("paths-load", secret(0));
        let mut text = format!(
            r#"
            [[port]]
            name = "wan"
            device = "mem0"
            addresses = ["192.0.2.1/24", "198.51.100.1/24"]
            [tunnel]
            private_key_file = "{}"
            addresses = ["10.99.0.1/24"]
            [[uplink]]
            name = "mpls"
            port = "wan"
            address = "192.0.2.1"
            bandwidth_mbps = 100
            [[uplink]]
            name = "inet"
            port = "wan"
            address = "198.51.100.1"
            bandwidth_mbps = 80
            "#,
            key.display()
        );
        for n in 1..=peers {
            let public = base64::engine::general_purpose::STANDARD
                .encode(StaticKeys::new(secret(n)).public());
            text += &format!(
                "[[peer]]\nname = \"site-{n}\"\nendpoint = {{ address = \"192.0.2.{}\", port = 51820 }}\n\
                 wireguard = {{ public_key = \"{public}\" }}\nallowed_ips = [\"10.{n}.0.0/24\"]\n",
                n + 1
            );
        }
        Config::from_toml(&text)
            .expect("test config parses")
            .validate(1)
            .expect("test config is valid")
    }

    #[test]
    fn every_worker_measures_the_load_all_workers_put_on_an_uplink() {
        let cfg = snapshot(8);
        let table = &cfg.tunnel.as_ref().unwrap().paths;
        let shared = Arc::new(SharedUplinks::default());
        let mut workers: Vec<Paths> = (0..2)
            .map(|w| {
                let mut p = Paths::default();
                p.reconfigure(&cfg, (w, 2), &shared, 0);
                p
            })
            .collect();
        // Each second each worker sends 500 kB over MPLS, by the paths of a
        // peer it owns. A worker sees another's bytes once that one has
        // measured: from the second second on, every worker sees them all.
        for second in 1..=2 {
            for w in &mut workers {
                let peer = (0..8)
                    .find(|&p| w.owns(p))
                    .expect("each worker owns a peer");
                let mpls = table.of_peer(peer).find(|&i| table.paths[i].uplink == 0);
                w.count_tx(mpls.unwrap(), 500_000);
            }
            for w in &mut workers {
                w.measure_load(table, second * 1_000_000_000);
            }
        }
        // 8 Mbit/s over MPLS in all, nothing over the internet.
        for w in &workers {
            assert!((w.load_mbps[0] - 8.0).abs() < 1e-9, "{:?}", w.load_mbps);
            assert_eq!(w.spare_mbps, [Some(92.0), Some(80.0)]);
        }
    }
}
