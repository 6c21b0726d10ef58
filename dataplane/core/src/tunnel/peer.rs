//! One peer's protocol state on its owning worker: the handshake in
//! flight, the three keypairs (previous, current, next), the cookie jar,
//! timers, and the packets waiting for a session.
//!
//! Keypair rotation follows the whitepaper (section 5.4.8) and
//! wireguard-go: an initiator uses its new keypair at once, since the
//! response proved the responder has it; a responder holds its new keypair
//! as *next* until the first data message on it confirms the initiator
//! has it too.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::cookie::CookieJar;
use super::noise::InitiatorState;
use super::replay::REJECT_AFTER_MESSAGES;
use super::session::Session;
use super::timers::{PeerTimers, TimerSettings};
use super::PeerStats;

/// A keypair sends while younger than `Reject-After-Time` and short of `Reject-After-Messages`.
fn may_send(session: &Session, now: u64, s: &TimerSettings) -> bool {
    now.saturating_sub(session.created_ns) < s.reject_after_time()
        && session.sent() < REJECT_AFTER_MESSAGES
}

/// Which keypair a data message used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Previous,
    Current,
    Next,
}

/// A peer on the worker that owns it.
pub(super) struct PeerState<F> {
    /// The peer's public key (to keep this state across reconfigurations).
    pub public: [u8; 32],
    /// Where we send now (configured, then wherever it last spoke from).
    pub endpoint: Option<SocketAddr>,
    /// The configured endpoint, to tell a configuration change from roaming.
    pub configured_endpoint: Option<SocketAddr>,
    pub jar: CookieJar,
    pub handshake: Option<InitiatorState>,
    pub last_initiation_sent_ns: Option<u64>,
    pub last_initiation_received_ns: Option<u64>,
    /// The newest TAI64N timestamp accepted from the peer.
    pub last_timestamp: [u8; 12],
    previous: Option<Session>,
    current: Option<Session>,
    next: Option<Session>,
    pub staged: VecDeque<F>,
    pub timers: PeerTimers,
    pub stats: PeerStats,
}

impl<F> PeerState<F> {
    pub fn new(public: [u8; 32], endpoint: Option<SocketAddr>, staged: usize) -> Self {
        PeerState {
            public,
            endpoint,
            configured_endpoint: endpoint,
            jar: CookieJar::default(),
            handshake: None,
            last_initiation_sent_ns: None,
            last_initiation_received_ns: None,
            last_timestamp: [0; 12],
            previous: None,
            current: None,
            next: None,
            staged: VecDeque::with_capacity(staged),
            timers: PeerTimers::default(),
            stats: PeerStats::default(),
        }
    }

    /// Every index of ours this peer holds (handshake and keypairs).
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.handshake
            .as_ref()
            .map(|h| h.local_index)
            .into_iter()
            .chain(
                [&self.previous, &self.current, &self.next]
                    .into_iter()
                    .flatten()
                    .map(|s| s.local_index),
            )
    }

    /// The current keypair if it may still send.
    pub fn usable(&self, now: u64, s: &TimerSettings) -> Option<&Session> {
        self.current.as_ref().filter(|c| may_send(c, now, s))
    }

    /// The current keypair if it may still send, writable.
    pub fn usable_mut(&mut self, now: u64, s: &TimerSettings) -> Option<&mut Session> {
        self.current.as_mut().filter(|c| may_send(c, now, s))
    }

    /// The keypair with our index `index`.
    pub fn session_by_index(&mut self, index: u32) -> Option<(Slot, &mut Session)> {
        let matches = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == index);
        if matches(&self.current) {
            return self.current.as_mut().map(|s| (Slot::Current, s));
        }
        if matches(&self.next) {
            return self.next.as_mut().map(|s| (Slot::Next, s));
        }
        if matches(&self.previous) {
            return self.previous.as_mut().map(|s| (Slot::Previous, s));
        }
        None
    }

    /// A handshake we initiated completed: the new keypair is current at
    /// once. Returns the indices of keypairs no longer kept.
    pub fn install_initiator(&mut self, session: Session) -> Vec<u32> {
        let mut retired = Vec::new();
        match self.next.take() {
            // An unconfirmed responder keypair still beats the current one as a fallback.
            Some(next) => {
                retired.extend(self.previous.replace(next).map(|s| s.local_index));
                retired.extend(self.current.take().map(|s| s.local_index));
            }
            None => {
                let old = self.current.take();
                retired.extend(std::mem::replace(&mut self.previous, old).map(|s| s.local_index));
            }
        }
        self.current = Some(session);
        retired
    }

    /// We answered an initiation: the new keypair waits as `next` until the
    /// initiator uses it. Returns the indices of keypairs no longer kept.
    pub fn install_responder(&mut self, session: Session) -> Vec<u32> {
        let mut retired = Vec::new();
        retired.extend(self.next.replace(session).map(|s| s.local_index));
        retired.extend(self.previous.take().map(|s| s.local_index));
        retired
    }

    /// The initiator used `next`: it becomes current.
    pub fn confirm_next(&mut self) -> Vec<u32> {
        let mut retired = Vec::new();
        if let Some(next) = self.next.take() {
            let old = self.current.replace(next);
            retired.extend(std::mem::replace(&mut self.previous, old).map(|s| s.local_index));
        }
        retired
    }

    /// Erases every keypair and the handshake; returns their indices.
    pub fn erase(&mut self) -> Vec<u32> {
        let retired: Vec<u32> = self.indices().collect();
        self.previous = None;
        self.current = None;
        self.next = None;
        self.handshake = None;
        self.staged.clear();
        self.timers.clear();
        retired
    }
}
