//! Per-worker counters.
//!
//! A worker counts into a plain array it owns ([`Counters`]), with no atomic
//! read-modify-write per packet, and copies the array into its
//! [`SharedCounters`] (relaxed stores, single writer) every millisecond or
//! so. The metrics exporter reads the shared copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::labels::labelled_enum;
use crate::packet::parse::ParseError;
use crate::qos::{Class, ClassCounters};
use crate::tunnel::{PeerStats, TunnelCounters, TunnelDrop, TunnelEvent};

labelled_enum! {
    /// Why the forwarding stage dropped a well-formed packet.
    DropReason {
        /// Unicast to another MAC address.
        NotForUs => "not_for_us";
        /// 802.1Q-tagged frame; VLAN sub-interfaces are not configured.
        VlanUnsupported => "vlan_unsupported";
        /// No route to the destination.
        NoRoute => "no_route";
        /// IP source is multicast or the IPv4 limited broadcast address (RFC 1812 5.3.7).
        InvalidSourceAddress => "invalid_source_address";
        /// TTL or hop limit ran out.
        TtlExceeded => "ttl_exceeded";
        /// Larger than the outgoing MTU (the gateway does not fragment).
        TooBig => "too_big";
        /// Broadcast, multicast, link-local or martian destination: never forwarded.
        NotRoutable => "not_routable";
        /// Addressed to the gateway, for a service it does not offer.
        LocalUnsupported => "local_unsupported";
        /// Neighbour Discovery message that fails RFC 4861 validation.
        BadNeighborDiscovery => "bad_neighbor_discovery";
        /// The next hop did not answer ARP / ND.
        NeighborUnresolved => "neighbor_unresolved";
        /// Too many packets already wait for next hops.
        PendingFull => "pending_full";
        /// Chained buffer that could not be linearised.
        MultiSegment => "multi_segment";
        /// No buffer to build a reply or resolution request in.
        NoBuffer => "no_buffer";
        /// A tunnel datagram whose endpoint has no route out of a device.
        TunnelEndpointUnreachable => "tunnel_endpoint_unreachable";
        /// Tunnel work for another worker found its queue full.
        TunnelHandoffFull => "tunnel_handoff_full";
        /// A policy rule denies the flow (also counted per rule).
        PolicyDenied => "policy_denied";
        /// A message of the tunnel's extension that is no probe or echo this version knows.
        ExtensionUnknown => "extension_unknown";
        /// An egress shaper refused or dropped it (counted by class and
        /// reason with the shaper), or held it at shutdown.
        Shaper => "shaper";
        /// A packet for another worker's shaper found its queue full.
        ShaperHandoffFull => "shaper_handoff_full";
    }
}

labelled_enum! {
    /// Everything else a worker counts.
    Counter {
        /// Frames received.
        RxPackets => "rx_packets";
        /// Bytes received.
        RxBytes => "rx_bytes";
        /// Packets forwarded toward a next hop.
        Forwarded => "forwarded_packets";
        /// Bytes forwarded.
        ForwardedBytes => "forwarded_bytes";
        /// IP fragments seen (forwarded like any packet; not reassembled).
        Fragments => "fragments";
        /// ICMP / ICMPv6 echo replies sent.
        EchoReplies => "echo_replies";
        /// ICMP / ICMPv6 errors sent.
        IcmpErrors => "icmp_errors";
        /// ICMP errors suppressed by the rate limit.
        IcmpRateLimited => "icmp_rate_limited";
        /// ARP replies sent.
        ArpReplies => "arp_replies";
        /// ARP requests sent.
        ArpRequests => "arp_requests";
        /// Neighbor Advertisements sent.
        NdAdvertisements => "nd_advertisements";
        /// Neighbor Solicitations sent.
        NdSolicitations => "nd_solicitations";
        /// Neighbour learning events lost to a full channel.
        LearnEventsLost => "learn_events_lost";
        /// Packets the tx rings refused.
        TxDropped => "tx_dropped";
        /// Flows created.
        FlowsCreated => "flows_created";
        /// Flows aged out.
        FlowsExpired => "flows_expired";
        /// Packets that found the flow table full (forwarded without flow state).
        FlowInsertFailed => "flow_insert_failed";
        /// Flows in the table now (gauge).
        FlowsActive => "flows_active";
        /// Packets waiting for a next hop now (gauge).
        PendingPackets => "pending_packets";
        /// TSC cycles spent on rounds that moved packets.
        BusyCycles => "busy_cycles";
        /// TSC cycles in the loop.
        TotalCycles => "total_cycles";
        /// Busy share of the last second, in parts per million (gauge).
        BusyRatioPpm => "busy_ratio_ppm";
    }
}

const PARSE_BASE: usize = Counter::COUNT;
const DROP_BASE: usize = PARSE_BASE + ParseError::COUNT;
const TOTAL: usize = DROP_BASE + DropReason::COUNT;

/// A worker's private counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    values: [u64; TOTAL],
}

impl Default for Counters {
    fn default() -> Self {
        Counters { values: [0; TOTAL] }
    }
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.values[c.index()] = self.values[c.index()].wrapping_add(n);
    }

    /// Sets a gauge.
    #[inline]
    pub fn set(&mut self, c: Counter, v: u64) {
        self.values[c.index()] = v;
    }

    /// Reads a counter.
    #[inline]
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c.index()]
    }

    /// Counts a parse drop.
    #[inline]
    pub fn parse_drop(&mut self, e: ParseError) {
        self.values[PARSE_BASE + e.index()] += 1;
    }

    /// Reads a parse-drop counter.
    pub fn parse_drops(&self, e: ParseError) -> u64 {
        self.values[PARSE_BASE + e.index()]
    }

    /// Counts a forwarding drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.values[DROP_BASE + r.index()] += 1;
    }

    /// Counts `n` forwarding drops.
    #[inline]
    pub fn drop_n(&mut self, r: DropReason, n: u64) {
        self.values[DROP_BASE + r.index()] += n;
    }

    /// Reads a forwarding-drop counter.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.values[DROP_BASE + r.index()]
    }

    /// Every frame dropped by the parser or the forwarding stage, all reasons.
    pub fn dropped(&self) -> u64 {
        self.values[PARSE_BASE..TOTAL].iter().sum()
    }

    /// Adds another set (for totals over workers).
    pub fn accumulate(&mut self, other: &Counters) {
        for (a, b) in self.values.iter_mut().zip(other.values.iter()) {
            *a = a.wrapping_add(*b);
        }
    }
}

/// Most ports a worker reports per-port figures for (RTE_MAX_ETHPORTS).
pub const MAX_PORTS: usize = 32;

/// The published copy of one worker's counters.
#[derive(Debug)]
pub struct SharedCounters {
    values: Box<[AtomicU64]>,
    port_tx_dropped: Box<[AtomicU64]>,
}

impl Default for SharedCounters {
    fn default() -> Self {
        SharedCounters {
            values: (0..TOTAL).map(|_| AtomicU64::new(0)).collect(),
            port_tx_dropped: (0..MAX_PORTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl SharedCounters {
    /// Copies the worker's counters out (single writer: plain relaxed stores).
    pub fn publish(&self, c: &Counters) {
        for (dst, src) in self.values.iter().zip(c.values.iter()) {
            dst.store(*src, Ordering::Relaxed);
        }
    }

    /// Publishes how many packets the worker's tx queue on `port` dropped.
    pub fn set_port_tx_dropped(&self, port: usize, dropped: u64) {
        if let Some(slot) = self.port_tx_dropped.get(port) {
            slot.store(dropped, Ordering::Relaxed);
        }
    }

    /// Packets the worker's tx queue on `port` dropped.
    pub fn port_tx_dropped(&self, port: usize) -> u64 {
        self.port_tx_dropped
            .get(port)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Reads a consistent-enough copy (each value is exact; they may be from
    /// neighbouring milliseconds).
    pub fn read(&self) -> Counters {
        let mut out = Counters::default();
        for (dst, src) in out.values.iter_mut().zip(self.values.iter()) {
            *dst = src.load(Ordering::Relaxed);
        }
        out
    }
}

/// Most peers whose figures are reported per peer.
pub const MAX_TUNNEL_PEERS: usize = 16384;
const PEER_FIELDS: usize = 11;

labelled_enum! {
    /// Why a peer's packets moved to another path.
    FailoverReason {
        /// The path they took went down (probes unanswered).
        PathDown => "path_down";
        /// The path they took broke the policy's thresholds.
        SlaViolation => "sla_violation";
        /// A clearly better path (or, for the site's order, an earlier one
        /// that came back) stayed so for the hold time.
        BetterPath => "better_path";
        /// The path they took went down by BFD (its session left Up).
        BfdDown => "bfd_down";
    }
}

/// Bounds (seconds) of the buckets of [`RecoveryHistogram`].
pub const RECOVERY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Time from a failover to the first packet on the new path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryHistogram {
    /// Observations at or below each bound of [`RECOVERY_BUCKETS`] (not cumulative).
    pub buckets: [u64; RECOVERY_BUCKETS.len()],
    /// Observations above the last bound.
    pub over: u64,
    /// Sum of the observations (s).
    pub sum_s: f64,
}

impl RecoveryHistogram {
    /// Records one recovery of `ns` nanoseconds.
    pub fn observe(&mut self, ns: u64) {
        let s = ns as f64 / 1e9;
        match RECOVERY_BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum_s += s;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.over
    }
}

/// Upper bounds (ns) of the buckets of [`SojournHistogram`].
pub const SOJOURN_BUCKETS_NS: [u64; 12] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// How long packets waited in a shaper.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SojournHistogram {
    /// Observations at or below each bound of [`SOJOURN_BUCKETS_NS`] (not cumulative).
    pub buckets: [u64; SOJOURN_BUCKETS_NS.len()],
    /// Observations above the last bound.
    pub over: u64,
    /// Sum of the observations (ns).
    pub sum_ns: u64,
}

impl SojournHistogram {
    /// Records one wait of `ns` nanoseconds.
    #[inline]
    pub fn observe(&mut self, ns: u64) {
        match SOJOURN_BUCKETS_NS.iter().position(|b| ns <= *b) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.over
    }
}

/// One shaped egress's figures, as its owner last published them.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressReport {
    /// The uplink's name.
    pub name: Arc<str>,
    /// Per class, in [`Class`] order.
    pub classes: [ClassCounters; Class::COUNT],
    /// How long packets of each class waited.
    pub sojourn: [SojournHistogram; Class::COUNT],
}

/// The published copy of the egresses one worker shapes.
#[derive(Debug, Default)]
pub struct SharedQosStats(arc_swap::ArcSwap<Vec<EgressReport>>);

impl SharedQosStats {
    /// Publishes the worker's egresses (a few times a second: it allocates).
    pub fn publish(&self, report: Vec<EgressReport>) {
        self.0.store(Arc::new(report));
    }

    /// The worker's egresses as last published.
    pub fn egresses(&self) -> Arc<Vec<EgressReport>> {
        self.0.load_full()
    }
}

/// One path's figures as its worker last published them.
#[derive(Debug, Clone, PartialEq)]
pub struct PathReport {
    /// Its index in the path table in force when published.
    pub index: u16,
    /// Its tag, to check it is still that path.
    pub tag: u32,
    /// Whether its peer's packets take it now.
    pub active: bool,
    /// What its meter says; `None` for an unprobed path.
    pub figures: Option<crate::paths::sla::PathFigures>,
    /// Datagrams sent over it (probes included).
    pub tx_packets: u64,
    /// Their bytes (WireGuard messages, before the outer headers).
    pub tx_bytes: u64,
    /// Packets received over it (decrypted).
    pub rx_packets: u64,
    /// Their bytes (inner).
    pub rx_bytes: u64,
    /// Its BFD session, when its peer has BFD.
    pub bfd: Option<BfdReport>,
}

/// A path's BFD session as its worker last published it.
#[derive(Debug, Clone, PartialEq)]
pub struct BfdReport {
    /// The session's state.
    pub state: crate::bfd::packet::State,
    /// State changes, by state entered (in [`crate::paths::bfd::STATES`]
    /// order) and diagnostic (0-8, then the reserved ones).
    pub changes: [[u64; crate::paths::bfd::DIAGNOSTICS]; 4],
    /// The detection time negotiated now (ns; 0 before the remote is heard).
    pub detection_time_ns: u64,
    /// The remote's state, as its last packet said.
    pub remote_state: crate::bfd::packet::State,
    /// Our discriminator and the remote's (0 until heard).
    pub discriminators: (u32, u32),
    /// The diagnostic we send.
    pub diagnostic: crate::bfd::packet::Diagnostic,
    /// Our transmit interval as negotiated now (ns).
    pub tx_interval_ns: u64,
    /// How long before the report the session last changed state (ns);
    /// `None` when it never did.
    pub since_change_ns: Option<u64>,
}

/// One move of traffic to another path, as the worker that made it recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathMove {
    /// Numbers this worker's moves from 1, so that a reader can tell new ones.
    pub seq: u64,
    /// The policy whose selection moved (`default`: the site's order).
    pub policy: String,
    /// The path it left and the one it took (path ids).
    pub from: std::sync::Arc<str>,
    /// See `from`.
    pub to: std::sync::Arc<str>,
    /// Why.
    pub reason: FailoverReason,
}

/// A worker's paths: the peers it owns, as last published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathsReport {
    /// Every path of the peers it owns.
    pub paths: Vec<PathReport>,
    /// Failovers by policy (`default` for the site's order), by [`FailoverReason`].
    pub failovers: Vec<(String, [u64; FailoverReason::COUNT])>,
    /// Time from each failover to the first packet on the new path.
    pub recovery: RecoveryHistogram,
    /// The latest moves, oldest first (a few dozen at most).
    pub moves: Vec<PathMove>,
    /// Its BFD Control packets.
    pub bfd: crate::paths::bfd::BfdCounters,
    /// The sessions with the uplinks' routers it runs, by uplink index.
    pub uplink_bfd: Vec<(u8, BfdReport)>,
}

/// The published copy of one worker's tunnel figures: engine-wide drops and
/// events, and per-peer figures indexed by the peer's position in the
/// configuration in force (zero for peers the worker does not own).
#[derive(Debug)]
pub struct SharedTunnelStats {
    drops: Box<[AtomicU64]>,
    events: Box<[AtomicU64]>,
    peers: Box<[AtomicU64]>,
    paths: arc_swap::ArcSwap<PathsReport>,
}

impl Default for SharedTunnelStats {
    fn default() -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        SharedTunnelStats {
            drops: zeros(TunnelDrop::COUNT),
            events: zeros(TunnelEvent::COUNT),
            peers: zeros(MAX_TUNNEL_PEERS * PEER_FIELDS),
            paths: arc_swap::ArcSwap::default(),
        }
    }
}

impl SharedTunnelStats {
    /// Copies the engine's counters out (single writer).
    pub fn publish_counters(&self, c: &TunnelCounters) {
        for d in TunnelDrop::ALL {
            self.drops[d.index()].store(c.drops(*d), Ordering::Relaxed);
        }
        for e in TunnelEvent::ALL {
            self.events[e.index()].store(c.events(*e), Ordering::Relaxed);
        }
    }

    /// Publishes the worker's paths (a few times a second: it allocates).
    pub fn publish_paths(&self, report: PathsReport) {
        self.paths.store(Arc::new(report));
    }

    /// The worker's paths as last published.
    pub fn paths(&self) -> Arc<PathsReport> {
        self.paths.load_full()
    }

    /// Publishes `peer`'s figures (ignored past [`MAX_TUNNEL_PEERS`]).
    pub fn publish_peer(&self, peer: usize, s: &PeerStats) {
        let Some(slot) = self.peers.get(peer * PEER_FIELDS..(peer + 1) * PEER_FIELDS) else {
            return;
        };
        let values = [
            s.tx_packets,
            s.tx_bytes,
            s.rx_packets,
            s.rx_bytes,
            s.handshakes_sent,
            s.handshakes_received,
            s.handshakes_failed,
            s.last_handshake_unix_s,
            u64::from(s.session_up),
            s.compress_in_bytes,
            s.compress_out_bytes,
        ];
        for (dst, v) in slot.iter().zip(values) {
            dst.store(v, Ordering::Relaxed);
        }
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: TunnelDrop) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Times `event` happened.
    pub fn events(&self, event: TunnelEvent) -> u64 {
        self.events[event.index()].load(Ordering::Relaxed)
    }

    /// The published figures of `peer`.
    pub fn peer(&self, peer: usize) -> PeerStats {
        let Some(slot) = self.peers.get(peer * PEER_FIELDS..(peer + 1) * PEER_FIELDS) else {
            return PeerStats::default();
        };
        let v: [u64; PEER_FIELDS] = std::array::from_fn(|i| slot[i].load(Ordering::Relaxed));
        PeerStats {
            tx_packets: v[0],
            tx_bytes: v[1],
            rx_packets: v[2],
            rx_bytes: v[3],
            handshakes_sent: v[4],
            handshakes_received: v[5],
            handshakes_failed: v[6],
            last_handshake_unix_s: v[7],
            session_up: v[8] != 0,
            compress_in_bytes: v[9],
            compress_out_bytes: v[10],
        }
    }
}

/// The sum of every worker's figures for `peer` (its owner has them all).
pub fn peer_total(workers: &[Arc<SharedTunnelStats>], peer: usize) -> PeerStats {
    let mut total = PeerStats::default();
    for w in workers {
        let s = w.peer(peer);
        total.tx_packets += s.tx_packets;
        total.tx_bytes += s.tx_bytes;
        total.rx_packets += s.rx_packets;
        total.rx_bytes += s.rx_bytes;
        total.handshakes_sent += s.handshakes_sent;
        total.handshakes_received += s.handshakes_received;
        total.handshakes_failed += s.handshakes_failed;
        total.last_handshake_unix_s = total.last_handshake_unix_s.max(s.last_handshake_unix_s);
        total.session_up |= s.session_up;
        total.compress_in_bytes += s.compress_in_bytes;
        total.compress_out_bytes += s.compress_out_bytes;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_shared_copy() {
        let mut c = Counters::default();
        c.add(Counter::RxPackets, 3);
        c.parse_drop(ParseError::TruncatedIpv4);
        c.drop(DropReason::NoRoute);
        c.drop_n(DropReason::NoRoute, 2);
        let shared = SharedCounters::default();
        shared.publish(&c);
        let back = shared.read();
        assert_eq!(back, c);
        assert_eq!(back.get(Counter::RxPackets), 3);
        assert_eq!(back.parse_drops(ParseError::TruncatedIpv4), 1);
        assert_eq!(back.parse_drops(ParseError::TruncatedIpv6), 0);
        assert_eq!(back.drops(DropReason::NoRoute), 3);
        assert_eq!(
            back.dropped(),
            4,
            "parse and forwarding drops, not received frames"
        );
    }

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for l in DropReason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(Counter::ALL.iter().map(|c| c.as_str()))
        {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
            assert!(seen.insert(l), "duplicate label {l}");
        }
    }
}

/// Rules whose drops are counted apart; rules beyond share the last slot.
pub const MAX_RULE_SLOTS: usize = 4096;

/// The rules counters have been kept for, by slot: (policy, index of the rule in it).
fn rule_registry() -> &'static std::sync::Mutex<Vec<(String, u32)>> {
    static REGISTRY: std::sync::OnceLock<std::sync::Mutex<Vec<(String, u32)>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The counter slot of rule `index` of `policy`, the same for the life of
/// the process however often the rule is recompiled, so that its counters
/// only ever grow.
pub fn rule_slot(policy: &str, index: u32) -> u32 {
    let mut slots = rule_registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(slot) = slots.iter().position(|(p, i)| p == policy && *i == index) {
        return slot as u32;
    }
    if slots.len() == MAX_RULE_SLOTS - 1 {
        return (MAX_RULE_SLOTS - 1) as u32;
    }
    slots.push((policy.to_owned(), index));
    (slots.len() - 1) as u32
}

/// Every rule slot handed out so far, by slot, for labelling the counters.
pub fn rule_slots() -> Vec<(String, u32)> {
    rule_registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// One worker's policy counters: packets each rule dropped, by slot
/// ([`rule_slot`]). One writer (the worker), read by the metrics endpoint.
#[derive(Debug)]
pub struct PolicyCounters {
    drops: Box<[AtomicU64]>,
}

impl Default for PolicyCounters {
    fn default() -> Self {
        PolicyCounters {
            drops: (0..MAX_RULE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PolicyCounters {
    /// Counts a packet rule `slot` dropped (single writer: no read-modify-write).
    #[inline]
    pub fn dropped(&self, slot: u32) {
        if let Some(c) = self.drops.get(slot as usize) {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Packets rule `slot` dropped.
    pub fn drops(&self, slot: u32) -> u64 {
        self.drops
            .get(slot as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}
