//! Encrypted tunnels that speak the WireGuard protocol, as a sans-IO engine.
//!
//! [`Tunnels`] is one worker's share of the tunnels: packets and datagrams
//! go in with the time, in the manner of quinn-proto's `Connection`. What
//! becomes of the packet or datagram handed in is returned ([`Outcome`]:
//! a datagram to send, a decrypted packet, work for the worker that owns
//! the peer); messages the engine originates itself (handshake initiations,
//! keepalives, packets that waited for a handshake) are queued and taken
//! with [`Tunnels::poll_transmit`]; [`Tunnels::poll_timeout`] tells when
//! [`Tunnels::handle_timeouts`] next has work. Buffers, entropy and the
//! wall clock come from the host ([`TunnelEnv`]). It never touches DPDK, a
//! socket or the clock, so the whole protocol is tested on plain buffers.
//!
//! Each peer is owned by one worker, chosen by its public key
//! ([`owner_of`]) so that adding or removing other peers never moves it:
//! its handshake, sessions, replay windows and timers live there and
//! nowhere else, so nothing is shared or locked. A worker that receives
//! another worker's packet hands it over. Our session indices carry the
//! owning worker in their top byte, so a data message is steered without
//! any lookup; an initiation is opened (MACs, cookie, Diffie-Hellman) far
//! enough to learn its peer, and handed over opened, so the owner answers
//! it without doing that work again.
//!
//! Read before editing: the WireGuard whitepaper (Donenfeld, NDSS 2017),
//! sections 5 (protocol) and 6 (timers); wireguard-go's `device/` for the
//! behaviour stock peers expect.

pub mod compress;
pub mod config;
pub mod cookie;
pub mod crypto;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod messages;
pub mod noise;
pub mod outer;
mod peer;
pub mod replay;
pub mod session;
pub mod timers;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::Frame;
use crate::labels::labelled_enum;

use config::SourceRoutes;
pub use config::{PeerConfig, TunnelConfig};
use cookie::{CookieChecker, SourceLimiter};
use messages::Message;
use noise::{HandshakeError, ReceivedInitiation};
use peer::{PeerState, Slot};
use session::{OpenError, SealError};
use timers::Timer;

/// A peer's position in [`TunnelConfig::peers`].
pub type PeerId = u32;

/// The worker of `workers` that owns the peer with public key `public`.
/// A function of the key alone: a peer keeps its worker, sessions and
/// queued work whatever else the configuration adds or removes.
#[inline]
pub fn owner_of(public: &[u8; 32], workers: usize) -> usize {
    // A Curve25519 public key's low bytes are as good as a hash.
    (u64::from_le_bytes(public[..8].try_into().expect("8 bytes")) % workers.max(1) as u64) as usize
}

/// Packets waiting per peer for a session.
const STAGED_PER_PEER: usize = 64;
/// Room reserved for originated datagrams between two [`Tunnels::poll_transmit`] drains.
const TRANSMIT_QUEUE: usize = 2 * STAGED_PER_PEER;
/// Initiations from one peer closer together than this are refused (50 per second).
const INITIATION_MIN_INTERVAL_NS: u64 = 20_000_000;
/// How long the engine stays in cookie mode after the load threshold was crossed.
const UNDER_LOAD_NS: u64 = 1_000_000_000;
/// Buckets of the per-source handshake limiter.
const LIMITER_BUCKETS: usize = 4096;
/// Retransmission jitter bound (whitepaper: up to a third of a second).
const JITTER_MAX_NS: u64 = 333_000_000;
/// Most workers whose number fits the top byte of a session index.
pub const MAX_WORKERS: usize = 256;

labelled_enum! {
    /// Why the tunnel engine dropped a packet or datagram.
    TunnelDrop {
        /// Not a well-formed WireGuard message.
        Malformed => "malformed";
        /// A handshake message whose MAC1 is wrong, or a cookie reply that does not open.
        BadMac => "bad_mac";
        /// A data counter behind the replay window, or an initiation
        /// timestamp seen before.
        Replay => "replay";
        /// A data message whose counter the window already holds: the
        /// second copy of a packet duplicated over two paths, or a replay of
        /// a recent one.
        Duplicate => "duplicate";
        /// An initiation from a static key that is not a configured peer, or
        /// work handed over for a peer removed since.
        UnknownPeer => "unknown_peer";
        /// A decrypted packet whose source is outside the peer's allowed IPs.
        AllowedIps => "allowed_ips";
        /// A message for a session or handshake we do not have (or no longer use).
        NoSession => "no_session";
        /// A handshake message that failed to decrypt or used a bad key.
        HandshakeFailed => "handshake_failed";
        /// A data message that failed authentication.
        DecryptFailed => "decrypt_failed";
        /// A handshake refused by the flood limits (per source under load, or too frequent per peer).
        RateLimited => "rate_limited";
        /// A decrypted packet that is neither a whole IPv4 nor IPv6 packet.
        InvalidInner => "invalid_inner";
        /// A packet for a peer whose endpoint is unknown.
        NoEndpoint => "no_endpoint";
        /// A packet that found its peer's queue full while a handshake was under way.
        QueueFull => "queue_full";
        /// Packets waiting for a handshake that never completed.
        HandshakeTimeout => "handshake_timeout";
        /// No buffer for a handshake message, or no room in one.
        NoBuffer => "no_buffer";
    }
}

labelled_enum! {
    /// Engine-wide events.
    TunnelEvent {
        /// Handshake initiations sent.
        InitiationsSent => "initiations_sent";
        /// Handshake initiations accepted.
        InitiationsReceived => "initiations_received";
        /// Handshake responses sent.
        ResponsesSent => "responses_sent";
        /// Handshake responses accepted.
        ResponsesReceived => "responses_received";
        /// Cookie replies sent (under load).
        CookieRepliesSent => "cookie_replies_sent";
        /// Cookie replies accepted.
        CookieRepliesReceived => "cookie_replies_received";
        /// Keepalives sent.
        KeepalivesSent => "keepalives_sent";
        /// Keepalives received.
        KeepalivesReceived => "keepalives_received";
        /// Times the engine entered cookie mode.
        UnderLoad => "under_load";
    }
}

/// Per-peer figures (owned by the peer's worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Data packets sent (keepalives excluded).
    pub tx_packets: u64,
    /// Inner bytes sent.
    pub tx_bytes: u64,
    /// Data packets received and delivered.
    pub rx_packets: u64,
    /// Inner bytes received.
    pub rx_bytes: u64,
    /// Handshake messages sent (initiations and responses).
    pub handshakes_sent: u64,
    /// Handshake messages accepted.
    pub handshakes_received: u64,
    /// Handshake messages refused (decryption, replay, flood) and attempts given up.
    pub handshakes_failed: u64,
    /// Unix time (s) of the last completed handshake; 0 for never.
    pub last_handshake_unix_s: u64,
    /// Whether a session is usable now.
    pub session_up: bool,
    /// Bytes of packets sent to a peer with compression on, before compression.
    pub compress_in_bytes: u64,
    /// The same packets' bytes as sent (compressed or not, before encryption).
    pub compress_out_bytes: u64,
}

/// The high nibble of the first plaintext byte of a message of Patronus's
/// own extension (path probes): no IP version, so a stock WireGuard peer,
/// which is never sent one, would drop it as not-IP; the compression format
/// uses nibble 1.
pub const EXTENSION_VERSION: u8 = 2;

/// What a sealed plaintext is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// An IP packet (or a keepalive, when empty).
    Packet,
    /// A message of the extension.
    Extension,
    /// An IP packet the data plane itself sends over one path (BFD): never
    /// compressed, never held for a handshake, not counted as traffic.
    Control,
}

/// Counters of one worker's engine.
#[derive(Clone, Debug, Default)]
pub struct TunnelCounters {
    drops: [u64; TunnelDrop::COUNT],
    events: [u64; TunnelEvent::COUNT],
}

impl TunnelCounters {
    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: TunnelDrop) -> u64 {
        self.drops[reason.index()]
    }
    /// How often `event` happened.
    pub fn events(&self, event: TunnelEvent) -> u64 {
        self.events[event.index()]
    }
    #[inline]
    fn drop(&mut self, reason: TunnelDrop) {
        self.drops[reason.index()] += 1;
    }
    #[inline]
    fn event(&mut self, event: TunnelEvent) {
        self.events[event.index()] += 1;
    }
}

/// Work for the worker that owns a peer.
#[derive(Debug)]
pub enum Work<F> {
    /// An inner packet to encrypt and send to `peer`.
    Send {
        /// The peer cryptokey routing chose, by its position in the
        /// sender's configuration; the owner may already run another
        /// ([`TunnelConfig::resolve`] with `public_key`).
        peer: PeerId,
        /// That peer's public key, which names it in every configuration.
        public_key: [u8; 32],
        /// The IP packet (no link-layer header).
        frame: F,
    },
    /// A datagram that arrived on the listen port.
    Receive {
        /// Its source.
        from: SocketAddr,
        /// The UDP payload.
        frame: F,
    },
    /// A handshake initiation from `from` that passed the MAC and cookie
    /// checks and was opened, for [`Tunnels::answer_opened`].
    Initiation {
        /// Its source.
        from: SocketAddr,
        /// The message, whose buffer carries the response.
        frame: F,
        /// What opening it learnt (the initiator's key names the peer).
        /// Boxed: handshakes are rare (and rate-limited under load), and
        /// it keeps every other handoff small.
        opened: Box<ReceivedInitiation>,
    },
}

/// What the engine needs from its host: buffers for the messages it
/// originates, entropy, and the wall clock. Inputs only: everything the
/// engine produces is returned or queued.
pub trait TunnelEnv<F: Frame> {
    /// An empty buffer for a message the engine originates; `None` when none is free.
    fn alloc(&mut self) -> Option<F>;
    /// Fills `out` with cryptographically secure random bytes.
    fn random(&mut self, out: &mut [u8]);
    /// The wall-clock time since the Unix epoch (for handshake timestamps).
    fn unix_time(&mut self) -> Duration;
}

/// What became of a packet or datagram handed to the engine.
#[derive(Debug)]
pub enum Outcome<F> {
    /// Send this WireGuard message as a UDP payload to `to`: the packet
    /// sealed in place, or a handshake answer built in the datagram's buffer.
    Transmit {
        /// The endpoint.
        to: SocketAddr,
        /// The message.
        frame: F,
    },
    /// A decrypted IP packet from `peer`, trimmed to its length, its source
    /// checked against the peer's allowed IPs.
    Deliver {
        /// The peer it came from.
        peer: PeerId,
        /// The inner packet.
        frame: F,
    },
    /// A message of Patronus's extension (see [`EXTENSION_VERSION`]) from
    /// `peer`: authenticated and decrypted, for the host to interpret.
    Extension {
        /// The peer it came from.
        peer: PeerId,
        /// The message, from its first byte.
        frame: F,
    },
    /// Another worker owns the peer: pass `work` to worker `worker`.
    HandOff {
        /// The owning worker.
        worker: usize,
        /// The packet or datagram, unchanged.
        work: Work<F>,
    },
    /// Kept (queued until a handshake completes), or consumed: a handshake
    /// message taken in, or a drop that the engine counted.
    Done,
}

/// A handshake's round trip, for passive path measurement: our initiation
/// to its response, or our response to the first message on the session it
/// made; `rtt_ns` is `None` for an initiation unanswered for `Rekey-Timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeRoundTrip {
    /// The peer.
    pub peer: PeerId,
    /// The round trip, or `None` when it went unanswered.
    pub rtt_ns: Option<u64>,
}

/// Round trips kept for [`Tunnels::poll_round_trip`] before new ones are
/// dropped (handshakes are rare: a host that never drains loses nothing else).
const ROUND_TRIPS_KEPT: usize = 256;

/// Cookie mode: entered when handshake messages arrive faster than the threshold.
#[derive(Debug, Default)]
struct LoadMeter {
    window_start_ns: u64,
    in_window: u32,
    until_ns: u64,
}

impl LoadMeter {
    /// Counts one handshake message; true while under load.
    fn observe(&mut self, now: u64, threshold_per_s: u32, counters: &mut TunnelCounters) -> bool {
        // Ten windows a second: a burst is noticed within 100 ms.
        if now.saturating_sub(self.window_start_ns) >= 100_000_000 {
            self.window_start_ns = now;
            self.in_window = 0;
        }
        self.in_window += 1;
        if self.in_window > threshold_per_s / 10 {
            if now >= self.until_ns {
                counters.event(TunnelEvent::UnderLoad);
            }
            self.until_ns = now + UNDER_LOAD_NS;
        }
        now < self.until_ns
    }
}

/// One worker's tunnel engine.
pub struct Tunnels<F> {
    worker: u32,
    workers: u32,
    peers: Vec<PeerState<F>>,
    /// By peer: the worker that owns it ([`owner_of`]).
    owners: Vec<u16>,
    /// Our session and handshake indices, to their peer.
    indices: HashMap<u32, PeerId, ahash::RandomState>,
    checker: CookieChecker,
    limiter: SourceLimiter,
    load: LoadMeter,
    poll_cursor: usize,
    identity: [u8; 32],
    counters: TunnelCounters,
    /// Where packets are compressed into and restored from.
    scratch: Box<[u8]>,
    /// The allowed-IPs answers for the sources of decrypted packets.
    source_routes: SourceRoutes,
    /// Datagrams the engine originated, for [`Tunnels::poll_transmit`].
    transmits: VecDeque<(PeerId, SocketAddr, F)>,
    /// Handshake round trips, for [`Tunnels::poll_round_trip`].
    round_trips: VecDeque<HandshakeRoundTrip>,
}

impl<F> std::fmt::Debug for Tunnels<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("worker", &self.worker)
            .field("peers", &self.peers.len())
            .field("sessions", &self.indices.len())
            .finish_non_exhaustive()
    }
}

impl<F: Frame> Tunnels<F> {
    /// Worker `worker` of `workers` (at most [`MAX_WORKERS`]), for `cfg`'s
    /// peers. `seed` keys the per-source limiter's hash.
    pub fn new(worker: usize, workers: usize, cfg: &TunnelConfig, seed: [u8; 16]) -> Self {
        assert!((1..=MAX_WORKERS).contains(&workers) && worker < workers);
        let mut t = Tunnels {
            worker: worker as u32,
            workers: workers as u32,
            peers: Vec::new(),
            owners: Vec::new(),
            indices: HashMap::with_hasher(ahash::RandomState::with_seeds(
                u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(seed[8..].try_into().expect("8 bytes")),
                0x5157_4e47,
                worker as u64,
            )),
            checker: CookieChecker::default(),
            limiter: SourceLimiter::new(LIMITER_BUCKETS, seed),
            load: LoadMeter::default(),
            poll_cursor: 0,
            identity: *cfg.keys.public(),
            counters: TunnelCounters::default(),
            scratch: vec![0; compress::SCRATCH_LEN].into_boxed_slice(),
            source_routes: SourceRoutes::default(),
            transmits: VecDeque::with_capacity(TRANSMIT_QUEUE),
            // Reserved now: the worker loop allocates nothing.
            round_trips: VecDeque::with_capacity(ROUND_TRIPS_KEPT),
        };
        t.reconfigure(cfg);
        t
    }

    /// Takes a new configuration: peers whose key (and our key) are
    /// unchanged keep their sessions; the rest start over.
    pub fn reconfigure(&mut self, cfg: &TunnelConfig) {
        let same_identity = *cfg.keys.public() == self.identity;
        self.identity = *cfg.keys.public();
        let mut old: HashMap<[u8; 32], PeerState<F>> = std::mem::take(&mut self.peers)
            .into_iter()
            .filter(|_| same_identity)
            .map(|p| (p.public, p))
            .collect();
        self.indices.clear();
        let workers = self.workers as usize;
        self.owners = cfg
            .peers
            .iter()
            .map(|pc| owner_of(pc.keys.public(), workers) as u16)
            .collect();
        for (id, pc) in cfg.peers.iter().enumerate() {
            let state = match old.remove(pc.keys.public()) {
                Some(mut kept) => {
                    if kept.configured_endpoint != pc.endpoint {
                        kept.configured_endpoint = pc.endpoint;
                        kept.endpoint = pc.endpoint;
                    }
                    kept
                }
                None => PeerState::new(*pc.keys.public(), pc.endpoint, STAGED_PER_PEER),
            };
            for index in state.indices() {
                self.indices.insert(index, id as PeerId);
            }
            self.peers.push(state);
        }
        self.poll_cursor = 0;
    }

    /// The worker that owns `peer`.
    #[inline]
    pub fn owner(&self, peer: PeerId) -> usize {
        self.owners
            .get(peer as usize)
            .map_or(0, |&w| usize::from(w))
    }

    fn owns(&self, peer: PeerId) -> bool {
        self.owner(peer) == self.worker as usize
    }

    /// This engine's counters.
    pub fn counters(&self) -> &TunnelCounters {
        &self.counters
    }

    /// Counts a drop for `reason`; the packet's buffer goes with the caller's frame.
    fn dropped(&mut self, reason: TunnelDrop) -> Outcome<F> {
        self.counters.drop(reason);
        Outcome::Done
    }

    /// Packets waiting for `peer`'s handshake (on its owner).
    pub fn queued(&self, peer: PeerId) -> usize {
        self.peers.get(peer as usize).map_or(0, |p| p.staged.len())
    }

    /// Figures of `peer` (meaningful on its owner only).
    pub fn peer_stats(&self, peer: PeerId, cfg: &TunnelConfig, now: u64) -> PeerStats {
        self.peers
            .get(peer as usize)
            .map_or_else(PeerStats::default, |p| {
                let mut s = p.stats;
                s.session_up = p.usable(now, &cfg.timers).is_some();
                s
            })
    }

    /// Encrypts IP packet `frame` for `peer`: the datagram to send, or
    /// [`Outcome::Done`] when it waits for a handshake (or was dropped).
    pub fn send(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        if !self.owns(peer) {
            let Some(pc) = cfg.peers.get(peer as usize) else {
                return self.dropped(TunnelDrop::UnknownPeer);
            };
            return Outcome::HandOff {
                worker: self.owner(peer),
                work: Work::Send {
                    peer,
                    public_key: *pc.keys.public(),
                    frame,
                },
            };
        }
        match self.send_owned(cfg, peer, frame, now, Payload::Packet, env) {
            Some((to, frame)) => Outcome::Transmit { to, frame },
            None => Outcome::Done,
        }
    }

    /// Seals a message of Patronus's extension (its first byte's high
    /// nibble [`EXTENSION_VERSION`]) for `peer`, which this worker must own.
    /// Never queued: without a usable session it is dropped (a handshake is
    /// started), since a late probe measures nothing. `None` then.
    pub fn send_extension(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Option<(SocketAddr, F)> {
        debug_assert!(
            self.owns(peer),
            "extension messages leave from the peer's owner"
        );
        debug_assert_eq!(
            frame.data().first().map(|b| b >> 4),
            Some(EXTENSION_VERSION)
        );
        self.send_owned(cfg, peer, frame, now, Payload::Extension, env)
    }

    /// Seals an IP packet the data plane originates for `peer` (a BFD
    /// Control packet) in the peer's session: like [`Tunnels::send_extension`],
    /// it is dropped, not held, when there is no session (one is started),
    /// and the caller picks the path it leaves by. Only on the peer's owner.
    pub fn send_control(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Option<(SocketAddr, F)> {
        debug_assert!(
            self.owns(peer),
            "control packets leave from the peer's owner"
        );
        self.send_owned(cfg, peer, frame, now, Payload::Control, env)
    }

    /// The peer of a [`Work::Send`] handed over under another
    /// configuration, in `cfg`; a peer removed since is counted as
    /// [`TunnelDrop::UnknownPeer`] and `None` returned.
    pub fn resolve_handed(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        public_key: &[u8; 32],
    ) -> Option<PeerId> {
        let found = cfg.resolve(peer, public_key);
        if found.is_none() {
            self.counters.drop(TunnelDrop::UnknownPeer);
        }
        found
    }

    /// Runs work another worker handed over (see [`Outcome::HandOff`]).
    pub fn handle_work(
        &mut self,
        cfg: &TunnelConfig,
        work: Work<F>,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        match work {
            Work::Send {
                peer,
                public_key,
                frame,
            } => match self.resolve_handed(cfg, peer, &public_key) {
                Some(peer) => self.send(cfg, peer, frame, now, env),
                None => Outcome::Done,
            },
            Work::Receive { from, frame } => self.receive(cfg, from, frame, now, env),
            Work::Initiation {
                from,
                frame,
                opened,
            } => self.answer_opened(cfg, from, frame, &opened, now, env),
        }
    }

    /// The next datagram the engine originated (handshake messages,
    /// keepalives, packets released by a completed handshake), with the
    /// peer it is for and its endpoint. Drain it after every call that may
    /// have queued one.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, SocketAddr, F)> {
        self.transmits.pop_front()
    }

    /// The next handshake round trip measured (or initiation unanswered).
    pub fn poll_round_trip(&mut self) -> Option<HandshakeRoundTrip> {
        self.round_trips.pop_front()
    }

    fn round_trip(&mut self, peer: PeerId, rtt_ns: Option<u64>) {
        if self.round_trips.len() < ROUND_TRIPS_KEPT {
            self.round_trips
                .push_back(HandshakeRoundTrip { peer, rtt_ns });
        }
    }

    /// The earliest time at which a timer of a peer this worker owns is due
    /// ([`Tunnels::handle_timeouts`] has work then), or `None` when none is
    /// armed. Walks every owned peer: for tests and idle hosts, not per packet.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(id, _)| self.owns(*id as PeerId))
            .filter_map(|(_, p)| p.timers.next_deadline())
            .min()
    }

    /// Seals `frame` for `peer` (owned here) and returns it with its
    /// endpoint, or stages it for a handshake (`None`).
    fn send_owned(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        mut frame: F,
        now: u64,
        payload: Payload,
        env: &mut impl TunnelEnv<F>,
    ) -> Option<(SocketAddr, F)> {
        let s = &cfg.timers;
        let state = self.peers.get_mut(peer as usize)?;
        let Some(endpoint) = state.endpoint else {
            self.counters.drop(TunnelDrop::NoEndpoint);
            return None;
        };
        let len = frame.len();
        let mut rekey = false;
        let mut sealed = None;
        // Compressed only when it is about to be sealed: a queued packet is
        // compressed when it finally goes, and counted once.
        if payload == Payload::Packet
            && cfg.peers[peer as usize].compression
            && len > 0
            && state.usable(now, s).is_some()
        {
            compress::compress(&mut frame, &mut self.scratch);
            state.stats.compress_in_bytes += len as u64;
            state.stats.compress_out_bytes += frame.len() as u64;
        }
        match state.usable_mut(now, s) {
            Some(session) => match session.seal(&mut frame, usize::from(cfg.mtu)) {
                Ok(_) => {
                    rekey = session.sent() >= s.rekey_after_messages
                        || (session.initiator
                            && now.saturating_sub(session.created_ns) >= s.rekey_after_time());
                    // Extension messages expect an answer, as data does,
                    // but are counted by whoever sent them.
                    if payload != Payload::Packet {
                        state.timers.data_sent(now, s, || jitter(env));
                    } else if len > 0 {
                        state.stats.tx_packets += 1;
                        state.stats.tx_bytes += len as u64;
                        state.timers.data_sent(now, s, || jitter(env));
                    } else {
                        self.counters.event(TunnelEvent::KeepalivesSent);
                    }
                    state.timers.any_sent();
                    state
                        .timers
                        .any_traversal(now, persistent_ns(&cfg.peers[peer as usize]));
                    sealed = Some((endpoint, frame));
                }
                Err(SealError::NoRoom) => self.counters.drop(TunnelDrop::NoBuffer),
                Err(SealError::Exhausted) => {
                    if payload == Payload::Packet {
                        self.stage(peer, frame);
                    }
                    rekey = true;
                }
            },
            None => {
                if payload == Payload::Packet {
                    self.stage(peer, frame);
                }
                rekey = true;
            }
        }
        if rekey {
            self.initiate(cfg, peer, now, false, env);
        }
        sealed
    }

    fn stage(&mut self, peer: PeerId, frame: F) {
        let queue = &mut self.peers[peer as usize].staged;
        if queue.len() == STAGED_PER_PEER {
            // Like the kernel's queue: the oldest packet makes room.
            queue.pop_front();
            self.counters.drop(TunnelDrop::QueueFull);
        }
        queue.push_back(frame);
    }

    /// Sends the packets that waited for a session.
    fn flush_staged(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> bool {
        let staged = std::mem::take(&mut self.peers[peer as usize].staged);
        let any = !staged.is_empty();
        let mut staged = staged;
        while let Some(frame) = staged.pop_front() {
            if let Some((to, frame)) = self.send_owned(cfg, peer, frame, now, Payload::Packet, env)
            {
                self.transmits.push_back((peer, to, frame));
            }
        }
        // Keep the queue's allocation for next time.
        let queue = &mut self.peers[peer as usize].staged;
        if queue.is_empty() {
            *queue = staged;
        }
        any
    }

    fn send_keepalive(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) {
        let Some(frame) = env.alloc() else {
            return self.counters.drop(TunnelDrop::NoBuffer);
        };
        if let Some((to, frame)) = self.send_owned(cfg, peer, frame, now, Payload::Packet, env) {
            self.transmits.push_back((peer, to, frame));
        }
    }

    fn new_index(&mut self, peer: PeerId, env: &mut impl TunnelEnv<F>) -> u32 {
        loop {
            let mut r = [0u8; 4];
            env.random(&mut r);
            let index = (self.worker << 24) | (u32::from_le_bytes(r) & 0x00ff_ffff);
            if let std::collections::hash_map::Entry::Vacant(slot) = self.indices.entry(index) {
                slot.insert(peer);
                return index;
            }
        }
    }

    /// Starts a handshake with `peer` unless one was sent within
    /// `Rekey-Timeout` (a retransmission always goes).
    fn initiate(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        now: u64,
        retransmit: bool,
        env: &mut impl TunnelEnv<F>,
    ) {
        let s = &cfg.timers;
        let pc = &cfg.peers[peer as usize];
        let state = &mut self.peers[peer as usize];
        if !retransmit
            && (state.timers.handshake_pending()
                || state
                    .last_initiation_sent_ns
                    .is_some_and(|t| now.saturating_sub(t) < s.rekey_timeout()))
        {
            return;
        }
        let Some(endpoint) = state.endpoint else {
            self.counters.drop(TunnelDrop::NoEndpoint);
            return;
        };
        let Some(mut frame) = env.alloc() else {
            self.counters.drop(TunnelDrop::NoBuffer);
            return;
        };
        if !frame.set_len(messages::INITIATION_LEN) {
            self.counters.drop(TunnelDrop::NoBuffer);
            return;
        }
        if let Some(old) = self.peers[peer as usize].handshake.take() {
            self.indices.remove(&old.local_index);
        }
        let index = self.new_index(peer, env);
        let mut ephemeral = zeroize::Zeroizing::new([0u8; 32]);
        env.random(&mut ephemeral[..]);
        let timestamp = tai64n(env.unix_time());
        let jitter = jitter(env);
        let buf: &mut [u8; messages::INITIATION_LEN] =
            frame.data_mut().try_into().expect("length set above");
        let state = &mut self.peers[peer as usize];
        match noise::initiate(&cfg.keys, &pc.keys, index, *ephemeral, &timestamp, buf) {
            Ok(handshake) => {
                state.jar.stamp(&pc.keys, buf, now);
                state.handshake = Some(handshake);
            }
            Err(_) => {
                self.indices.remove(&index);
                state.stats.handshakes_failed += 1;
                self.counters.drop(TunnelDrop::HandshakeFailed);
                return;
            }
        }
        if !retransmit {
            state.timers.attempts = 0;
        }
        state.timers.attempts += 1;
        state.last_initiation_sent_ns = Some(now);
        state.timers.initiation_sent(now, s, jitter);
        state.timers.any_sent();
        state.timers.any_traversal(now, persistent_ns(pc));
        state.stats.handshakes_sent += 1;
        self.counters.event(TunnelEvent::InitiationsSent);
        self.transmits.push_back((peer, endpoint, frame));
    }

    /// Handles a datagram that arrived on the listen port from `from`.
    pub fn receive(
        &mut self,
        cfg: &TunnelConfig,
        from: SocketAddr,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        let kind = match messages::parse(frame.data()) {
            Ok(Message::Initiation(_)) => messages::TYPE_INITIATION,
            Ok(Message::Response(r)) => {
                return self.receive_indexed(cfg, r.receiver(), from, frame, now, env)
            }
            Ok(Message::CookieReply(c)) => {
                return self.receive_indexed(cfg, c.receiver(), from, frame, now, env)
            }
            Ok(Message::Data(d)) => {
                return self.receive_indexed(cfg, d.receiver(), from, frame, now, env)
            }
            Err(_) => return self.dropped(TunnelDrop::Malformed),
        };
        debug_assert_eq!(kind, messages::TYPE_INITIATION);
        self.receive_initiation(cfg, from, frame, now, env)
    }

    /// Steers a message addressed to one of our indices to its worker and peer.
    fn receive_indexed(
        &mut self,
        cfg: &TunnelConfig,
        receiver: u32,
        from: SocketAddr,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        let worker = (receiver >> 24) as usize;
        if worker != self.worker as usize {
            if worker < self.workers as usize {
                return Outcome::HandOff {
                    worker,
                    work: Work::Receive { from, frame },
                };
            }
            return self.dropped(TunnelDrop::NoSession);
        }
        let Some(&peer) = self.indices.get(&receiver) else {
            return self.dropped(TunnelDrop::NoSession);
        };
        match messages::parse(frame.data()) {
            Ok(Message::Data(d)) => {
                let counter = d.counter();
                self.receive_data(cfg, peer, receiver, counter, from, frame, now, env)
            }
            Ok(Message::Response(_)) => {
                self.receive_response(cfg, peer, receiver, from, frame, now, env)
            }
            Ok(Message::CookieReply(reply)) => {
                let state = &mut self.peers[peer as usize];
                match state
                    .jar
                    .consume(&cfg.peers[peer as usize].keys, &reply, now)
                {
                    Ok(()) => {
                        self.counters.event(TunnelEvent::CookieRepliesReceived);
                        Outcome::Done
                    }
                    Err(_) => self.dropped(TunnelDrop::BadMac),
                }
            }
            _ => self.dropped(TunnelDrop::Malformed),
        }
    }

    /// MAC checks of a handshake message, and cookie mode. `Ok(frame)`
    /// when processing may go on, else what became of it (a cookie reply
    /// to send, or a counted drop).
    fn admit_handshake(
        &mut self,
        cfg: &TunnelConfig,
        from: SocketAddr,
        mut frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Result<F, Outcome<F>> {
        if !CookieChecker::mac1_valid(&cfg.keys, frame.data()) {
            return Err(self.dropped(TunnelDrop::BadMac));
        }
        if !self
            .load
            .observe(now, cfg.cookie_threshold_per_s, &mut self.counters)
        {
            return Ok(frame);
        }
        let unix = env.unix_time();
        if !self.checker.mac2_valid(&cfg.keys, frame.data(), from, unix) {
            let mut nonce = [0u8; 24];
            env.random(&mut nonce);
            let reply = self
                .checker
                .reply(&cfg.keys, frame.data(), from, unix, nonce);
            // The message's own buffer carries the reply back.
            if !frame.set_len(reply.len()) {
                return Err(self.dropped(TunnelDrop::NoBuffer));
            }
            frame.data_mut().copy_from_slice(&reply);
            self.counters.event(TunnelEvent::CookieRepliesSent);
            return Err(Outcome::Transmit { to: from, frame });
        }
        if !self.limiter.allow(from.ip(), now) {
            return Err(self.dropped(TunnelDrop::RateLimited));
        }
        Ok(frame)
    }

    fn receive_initiation(
        &mut self,
        cfg: &TunnelConfig,
        from: SocketAddr,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        let frame = match self.admit_handshake(cfg, from, frame, now, env) {
            Ok(frame) => frame,
            Err(outcome) => return outcome,
        };
        let Ok(Message::Initiation(msg)) = messages::parse(frame.data()) else {
            return self.dropped(TunnelDrop::Malformed);
        };
        let opened = noise::consume_initiation(&cfg.keys, &msg, |key| {
            cfg.peer_by_key(key)
                .map(|id| (id, &cfg.peers[id as usize].keys))
        });
        let (peer, opened) = match opened {
            Ok(found) => found,
            Err(HandshakeError::UnknownPeer) => {
                return self.dropped(TunnelDrop::UnknownPeer);
            }
            Err(_) => {
                return self.dropped(TunnelDrop::HandshakeFailed);
            }
        };
        if !self.owns(peer) {
            return Outcome::HandOff {
                worker: self.owner(peer),
                work: Work::Initiation {
                    from,
                    frame,
                    opened: Box::new(opened),
                },
            };
        }
        self.answer_initiation(cfg, peer, from, frame, &opened, now, env)
    }

    /// Answers an initiation that another worker admitted and opened for a
    /// peer this worker owns ([`Work::Initiation`]): the response, or a
    /// counted drop (a replay, a peer no longer configured).
    pub fn answer_opened(
        &mut self,
        cfg: &TunnelConfig,
        from: SocketAddr,
        frame: F,
        opened: &ReceivedInitiation,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        match cfg.peer_by_key(&opened.initiator) {
            Some(peer) if self.owns(peer) => {
                self.answer_initiation(cfg, peer, from, frame, opened, now, env)
            }
            // Removed since it was opened; or (never, ownership being the
            // key's) someone else's.
            _ => self.dropped(TunnelDrop::UnknownPeer),
        }
    }

    /// The owner's half of an initiation: replay and rate checks, then the response.
    #[allow(clippy::too_many_arguments)]
    fn answer_initiation(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        from: SocketAddr,
        mut frame: F,
        received: &ReceivedInitiation,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        let s = &cfg.timers;
        let pc = &cfg.peers[peer as usize];
        let state = &mut self.peers[peer as usize];
        // Timestamps are big-endian TAI64N: byte order is time order.
        if received.timestamp <= state.last_timestamp {
            state.stats.handshakes_failed += 1;
            return self.dropped(TunnelDrop::Replay);
        }
        if state
            .last_initiation_received_ns
            .is_some_and(|t| now.saturating_sub(t) < INITIATION_MIN_INTERVAL_NS)
        {
            state.stats.handshakes_failed += 1;
            return self.dropped(TunnelDrop::RateLimited);
        }
        state.last_timestamp = received.timestamp;
        state.last_initiation_received_ns = Some(now);
        state.stats.handshakes_received += 1;
        self.counters.event(TunnelEvent::InitiationsReceived);

        let index = self.new_index(peer, env);
        let mut ephemeral = zeroize::Zeroizing::new([0u8; 32]);
        env.random(&mut ephemeral[..]);
        if !frame.set_len(messages::RESPONSE_LEN) {
            self.indices.remove(&index);
            return self.dropped(TunnelDrop::NoBuffer);
        }
        let buf: &mut [u8; messages::RESPONSE_LEN] =
            frame.data_mut().try_into().expect("length set above");
        let state = &mut self.peers[peer as usize];
        let keys = match noise::respond(&pc.keys, received, index, *ephemeral, buf) {
            Ok(keys) => keys,
            Err(_) => {
                self.indices.remove(&index);
                state.stats.handshakes_failed += 1;
                return self.dropped(TunnelDrop::HandshakeFailed);
            }
        };
        state.jar.stamp(&pc.keys, buf, now);
        let session = session::Session::new(&keys, index, received.sender, now, false);
        for retired in state.install_responder(session) {
            self.indices.remove(&retired);
        }
        state.endpoint = Some(from);
        state.timers.any_received();
        state.timers.session_derived(now, s);
        state.timers.any_sent();
        state.timers.any_traversal(now, persistent_ns(pc));
        state.stats.handshakes_sent += 1;
        self.counters.event(TunnelEvent::ResponsesSent);
        Outcome::Transmit { to: from, frame }
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_response(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        receiver: u32,
        from: SocketAddr,
        frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        if self.peers[peer as usize]
            .handshake
            .as_ref()
            .is_none_or(|h| h.local_index != receiver)
        {
            return self.dropped(TunnelDrop::NoSession);
        }
        let frame = match self.admit_handshake(cfg, from, frame, now, env) {
            Ok(frame) => frame,
            Err(outcome) => return outcome,
        };
        let Ok(Message::Response(msg)) = messages::parse(frame.data()) else {
            return self.dropped(TunnelDrop::Malformed);
        };
        let pc = &cfg.peers[peer as usize];
        let s = &cfg.timers;
        let state = &mut self.peers[peer as usize];
        let handshake = state.handshake.as_ref().expect("checked above");
        let keys = match noise::consume_response(&cfg.keys, &pc.keys, handshake, &msg) {
            Ok(keys) => keys,
            Err(_) => {
                state.stats.handshakes_failed += 1;
                return self.dropped(TunnelDrop::HandshakeFailed);
            }
        };
        let sender = msg.sender();
        drop(frame);
        state.handshake = None;
        // The handshake's index becomes the session's: it stays in the map.
        let session = session::Session::new(&keys, receiver, sender, now, true);
        for retired in state.install_initiator(session) {
            self.indices.remove(&retired);
        }
        state.endpoint = Some(from);
        state.stats.handshakes_received += 1;
        state.stats.last_handshake_unix_s = env.unix_time().as_secs();
        let rtt = state
            .last_initiation_sent_ns
            .map(|sent| now.saturating_sub(sent));
        state.timers.handshake_complete();
        state.timers.session_derived(now, s);
        state.timers.any_received();
        state.timers.any_traversal(now, persistent_ns(pc));
        self.counters.event(TunnelEvent::ResponsesReceived);
        if let Some(rtt) = rtt {
            self.round_trip(peer, Some(rtt));
        }
        // Confirm the session to the responder: with data if some waited, else a keepalive.
        if !self.flush_staged(cfg, peer, now, env) {
            self.send_keepalive(cfg, peer, now, env);
        }
        Outcome::Done
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_data(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        receiver: u32,
        counter: u64,
        from: SocketAddr,
        mut frame: F,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) -> Outcome<F> {
        let s = &cfg.timers;
        let pc = &cfg.peers[peer as usize];
        let state = &mut self.peers[peer as usize];
        let Some((slot, session)) = state.session_by_index(receiver) else {
            return self.dropped(TunnelDrop::NoSession);
        };
        if now.saturating_sub(session.created_ns) >= s.reject_after_time() {
            return self.dropped(TunnelDrop::NoSession);
        }
        match session.open(&mut frame, counter) {
            Ok(()) => {}
            Err(OpenError::Replay) => {
                return self.dropped(TunnelDrop::Replay);
            }
            Err(OpenError::Duplicate) => {
                return self.dropped(TunnelDrop::Duplicate);
            }
            Err(OpenError::Auth) => {
                return self.dropped(TunnelDrop::DecryptFailed);
            }
        }
        let rekey =
            session.initiator && now.saturating_sub(session.created_ns) >= s.rekey_on_receive_age();
        let mut confirmed = false;
        let mut responded_ns = None;
        if slot == Slot::Next {
            if !session.initiator {
                responded_ns = Some(session.created_ns);
            }
            for retired in state.confirm_next() {
                self.indices.remove(&retired);
            }
            confirmed = true;
        }
        // Roaming: the latest authenticated packet's source is where the peer is.
        state.endpoint = Some(from);
        state.timers.any_received();
        state.timers.any_traversal(now, persistent_ns(pc));
        let mut outcome = Outcome::Done;
        if frame.is_empty() {
            self.counters.event(TunnelEvent::KeepalivesReceived);
        } else {
            state.timers.data_received(now, s);
            let restored =
                compress::decompress(&mut frame, &mut self.scratch, usize::from(cfg.mtu));
            let extension = frame.data().first().map(|b| b >> 4) == Some(EXTENSION_VERSION);
            match restored.ok().and_then(|_| inner_packet(&mut frame)) {
                // Counted by whoever interprets it (the path meters).
                None if extension => {
                    outcome = Outcome::Extension { peer, frame };
                }
                None => self.counters.drop(TunnelDrop::InvalidInner),
                Some(src) if self.source_routes.route(cfg, src) != Some(peer) => {
                    self.counters.drop(TunnelDrop::AllowedIps)
                }
                Some(_) => {
                    state.stats.rx_packets += 1;
                    state.stats.rx_bytes += frame.len() as u64;
                    outcome = Outcome::Deliver { peer, frame };
                }
            }
        }
        if let Some(responded) = responded_ns {
            self.round_trip(peer, Some(now.saturating_sub(responded)));
        }
        if confirmed {
            self.flush_staged(cfg, peer, now, env);
        }
        if rekey && !self.peers[peer as usize].timers.handshake_pending() {
            self.initiate(cfg, peer, now, false, env);
        }
        outcome
    }

    /// Runs the due timers of up to `budget` owned peers (round robin), so
    /// a gateway with thousands of peers spreads the work over loop rounds.
    /// What they send is queued for [`Tunnels::poll_transmit`].
    pub fn handle_timeouts(
        &mut self,
        cfg: &TunnelConfig,
        now: u64,
        budget: usize,
        env: &mut impl TunnelEnv<F>,
    ) {
        let n = self.peers.len();
        if n == 0 {
            return;
        }
        for _ in 0..budget.min(n) {
            let peer = self.poll_cursor as PeerId;
            self.poll_cursor = (self.poll_cursor + 1) % n;
            if !self.owns(peer) {
                continue;
            }
            while let Some(timer) = self.peers[peer as usize].timers.take_due(now) {
                self.fire(cfg, peer, timer, now, env);
            }
        }
    }

    fn fire(
        &mut self,
        cfg: &TunnelConfig,
        peer: PeerId,
        timer: Timer,
        now: u64,
        env: &mut impl TunnelEnv<F>,
    ) {
        let s = &cfg.timers;
        match timer {
            Timer::RetransmitHandshake => {
                self.round_trip(peer, None);
                let state = &mut self.peers[peer as usize];
                if state.timers.attempts >= s.max_attempts() {
                    let dropped = state.staged.len() as u64;
                    state.staged.clear();
                    if let Some(h) = state.handshake.take() {
                        self.indices.remove(&h.local_index);
                    }
                    state.stats.handshakes_failed += 1;
                    state.timers.attempt_abandoned(now, s);
                    self.counters.drops[TunnelDrop::HandshakeTimeout.index()] += dropped;
                } else {
                    self.initiate(cfg, peer, now, true, env);
                }
            }
            Timer::SendKeepalive => {
                if self.peers[peer as usize].usable(now, s).is_some() {
                    self.send_keepalive(cfg, peer, now, env);
                }
                self.peers[peer as usize]
                    .timers
                    .rearm_keepalive_if_wanted(now, s);
            }
            Timer::NewHandshake => self.initiate(cfg, peer, now, false, env),
            Timer::ZeroKeys => {
                for retired in self.peers[peer as usize].erase() {
                    self.indices.remove(&retired);
                }
            }
            Timer::PersistentKeepalive => self.send_keepalive(cfg, peer, now, env),
        }
    }
}

fn persistent_ns(pc: &PeerConfig) -> u64 {
    u64::from(pc.persistent_keepalive_s) * 1_000_000_000
}

fn jitter<F: Frame>(env: &mut impl TunnelEnv<F>) -> u64 {
    let mut r = [0u8; 8];
    env.random(&mut r);
    u64::from_le_bytes(r) % JITTER_MAX_NS
}

/// TAI64N of `unix`, with the nanoseconds rounded down to about 16 ms as
/// wireguard-go does, so the timestamp does not reveal the clock finely.
pub fn tai64n(unix: Duration) -> [u8; 12] {
    const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(TAI64_EPOCH + unix.as_secs()).to_be_bytes());
    out[8..].copy_from_slice(&(unix.subsec_nanos() & !0x00ff_ffff).to_be_bytes());
    out
}

/// Trims a decrypted packet to its IP length (removing padding) and returns
/// its source address; `None` when it is not a whole IPv4 or IPv6 packet.
fn inner_packet<F: Frame>(frame: &mut F) -> Option<std::net::IpAddr> {
    let data = frame.data();
    let (len, src) = match data.first()? >> 4 {
        4 if data.len() >= 20 => {
            let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
            if len < 20 {
                return None;
            }
            let src: [u8; 4] = data[12..16].try_into().ok()?;
            (len, std::net::IpAddr::from(src))
        }
        6 if data.len() >= 40 => {
            let len = 40 + usize::from(u16::from_be_bytes([data[4], data[5]]));
            let src: [u8; 16] = data[8..24].try_into().ok()?;
            (len, std::net::IpAddr::from(src))
        }
        _ => return None,
    };
    if len > data.len() {
        return None;
    }
    frame.set_len(len);
    Some(src)
}

#[cfg(test)]
mod tests;
