//! A worker's share of the site's paths: a meter for each probed path of
//! the peers it owns, the path each of those peers' packets take now, and
//! per-path traffic counters.
//!
//! The choice is the site's default order (uplinks in configuration order,
//! then the peer's endpoints): the first path that is up, or that is not
//! probed; when every probed path is down, the first one (nothing better is
//! known, and its probes tell when it is back). A path that goes down moves
//! the peer's packets to the next at the next burst; when an earlier path
//! comes back (`up_after` echoes in a row), they move back. Each move is a
//! failover, counted by reason.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Snapshot, TunnelSnapshot};
use crate::frame::Frame;
use crate::paths::probe::{Kind, ProbeMessage, PROBE_LEN};
use crate::paths::sla::PathMeter;
use crate::paths::PathTable;
use crate::stats::{FailoverReason, PathReport, PathsReport};
use crate::tunnel::{TunnelEnv, Tunnels};

/// No uplink chosen: the datagram follows the route table.
pub(super) const NO_UPLINK: u8 = u8::MAX;
const NO_PATH: u16 = u16::MAX;

/// One path's state on the worker that owns its peer.
#[derive(Debug)]
struct PathState {
    meter: Option<PathMeter>,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

/// The worker's paths.
#[derive(Debug, Default)]
pub(super) struct Paths {
    /// The tunnel snapshot whose path table this follows.
    tunnel: Option<Arc<TunnelSnapshot>>,
    /// By path index; meters only for probed paths of owned peers.
    state: Vec<PathState>,
    /// By peer: the path its packets take (owned peers with paths only).
    active: Vec<u16>,
    /// Earliest time a meter has work.
    next_due_ns: u64,
    failovers: [u64; FailoverReason::COUNT],
}

impl Paths {
    /// Follows `cfg`'s path table: meters of paths that are still there
    /// (same id and endpoint) keep their history, new ones start now.
    pub(super) fn reconfigure(&mut self, cfg: &Snapshot, worker: usize, workers: usize, now: u64) {
        let Some(t) = cfg.tunnel.as_ref() else {
            *self = Paths::default();
            return;
        };
        if self
            .tunnel
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(old, t) || old.paths == t.paths)
        {
            self.tunnel = Some(t.clone());
            return;
        }
        let old_table = self.tunnel.as_ref().map(|o| &o.paths);
        let mut old_state: Vec<Option<PathState>> = std::mem::take(&mut self.state)
            .into_iter()
            .map(Some)
            .collect();
        let table = &t.paths;
        let owned = |peer: u32| peer as usize % workers.max(1) == worker;
        for p in &table.paths {
            let kept = old_table
                .and_then(|old| old.paths.iter().position(|o| o.tag == p.tag))
                .filter(|_| old_table.is_some_and(|o| o.meter == table.meter))
                .and_then(|i| old_state.get_mut(i).and_then(Option::take));
            let state = match kept {
                Some(s) if s.meter.is_some() == (p.probed && owned(p.peer)) => s,
                _ => PathState {
                    meter: (p.probed && owned(p.peer)).then(|| PathMeter::new(table.meter, now)),
                    tx_packets: 0,
                    tx_bytes: 0,
                    rx_packets: 0,
                    rx_bytes: 0,
                },
            };
            self.state.push(state);
        }
        let peers = t.config.peers.len();
        self.active = vec![NO_PATH; peers];
        self.tunnel = Some(t.clone());
        for peer in 0..peers as u32 {
            if owned(peer) {
                self.choose(peer);
            }
        }
        self.next_due_ns = now;
    }

    /// The earliest time a meter has work, if any path is probed.
    pub(super) fn poll_timeout(&self) -> Option<u64> {
        self.state
            .iter()
            .filter_map(|s| s.meter.as_ref().map(PathMeter::poll_timeout))
            .min()
    }

    fn table(&self) -> Option<&PathTable> {
        self.tunnel.as_deref().map(|t| &t.paths)
    }

    /// The path `peer`'s packets take now: its uplink and, for a peer with
    /// several endpoints, the endpoint (else wherever the peer is).
    #[inline]
    pub(super) fn route(&self, peer: u32) -> Option<(usize, u8, Option<SocketAddr>)> {
        let i = *self.active.get(peer as usize)?;
        let p = self.table()?.paths.get(usize::from(i))?;
        Some((usize::from(i), p.uplink, p.endpoint))
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
        let s = &mut self.state[i];
        s.rx_packets += 1;
        s.rx_bytes += bytes as u64;
    }

    /// Takes an echo of one of our probes (from `peer`); anything else
    /// is ignored.
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
            self.settle(i);
        }
    }

    /// Runs the meters that are due: timeouts, then probes, sealed by
    /// `engine` for their peer and handed to `out` with their uplink and
    /// endpoint.
    pub(super) fn handle_timeouts<F: Frame>(
        &mut self,
        engine: &mut Tunnels<F>,
        env: &mut impl TunnelEnv<F>,
        now: u64,
        mut out: impl FnMut(u8, SocketAddr, F),
    ) {
        if now < self.next_due_ns {
            return;
        }
        let Some(t) = self.tunnel.clone() else {
            return;
        };
        let mut next = u64::MAX;
        // Peers are re-chosen after the walk, so that paths that fail in
        // the same pass make one failover, not one per path.
        let mut changed: Option<u32> = None;
        for (i, path) in t.paths.paths.iter().enumerate() {
            // A peer's paths are adjacent: choose once the walk leaves it.
            if let Some(peer) = changed.filter(|p| *p != path.peer) {
                self.choose(peer);
                changed = None;
            }
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
                // Without a buffer or a session the probe is lost, and
                // counted so by its meter.
                if let Some((to, frame)) = seal_probe(&message, &t, path.peer, engine, env, now) {
                    self.count_tx(i, frame.len());
                    out(path.uplink, path.endpoint.unwrap_or(to), frame);
                }
            }
            let meter = self.state[i].meter.as_mut().expect("checked above");
            next = next.min(meter.poll_timeout());
            if std::iter::from_fn(|| meter.poll_event()).count() > 0 {
                changed = Some(path.peer);
            }
        }
        if let Some(peer) = changed {
            self.choose(peer);
        }
        self.next_due_ns = next;
    }

    /// Applies path `i`'s state changes to its peer's choice (after an echo).
    fn settle(&mut self, i: usize) {
        let Some(meter) = self.state[i].meter.as_mut() else {
            return;
        };
        if std::iter::from_fn(|| meter.poll_event()).count() > 0 {
            let peer = self.table().map(|t| t.paths[i].peer);
            if let Some(peer) = peer {
                self.choose(peer);
            }
        }
    }

    /// Re-chooses `peer`'s path after a change; counts a failover when
    /// the choice moves.
    fn choose(&mut self, peer: u32) {
        let Some(table) = self.table() else {
            return;
        };
        let range = table.of_peer(peer);
        if range.is_empty() {
            return;
        }
        let usable = |i: &usize| self.state[*i].meter.as_ref().is_none_or(PathMeter::is_up);
        let chosen = range.clone().find(usable).unwrap_or(range.start) as u16;
        let before = self.active[peer as usize];
        if before != NO_PATH && before != chosen {
            let reason = if chosen < before {
                FailoverReason::Recovered
            } else {
                FailoverReason::PathDown
            };
            self.failovers[reason as usize] += 1;
        }
        self.active[peer as usize] = chosen;
    }

    /// What the metrics endpoint shows of this worker's paths.
    pub(super) fn report(&mut self, now: u64) -> PathsReport {
        let active = &self.active;
        let paths = self
            .tunnel
            .as_ref()
            .map(|t| {
                t.paths
                    .paths
                    .iter()
                    .zip(self.state.iter_mut())
                    .enumerate()
                    .filter(|(_, (p, _))| {
                        active.get(p.peer as usize).is_some_and(|a| *a != NO_PATH)
                    })
                    .map(|(i, (p, s))| PathReport {
                        index: i as u16,
                        tag: p.tag,
                        active: active[p.peer as usize] == i as u16,
                        figures: s.meter.as_mut().map(|m| m.figures(now)),
                        tx_packets: s.tx_packets,
                        tx_bytes: s.tx_bytes,
                        rx_packets: s.rx_packets,
                        rx_bytes: s.rx_bytes,
                    })
                    .collect()
            })
            .unwrap_or_default();
        PathsReport {
            paths,
            failovers: self.failovers,
        }
    }
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
    let mut frame = env.alloc()?;
    if !frame.set_len(PROBE_LEN) {
        return None;
    }
    let buf: &mut [u8; PROBE_LEN] = (&mut frame.data_mut()[..PROBE_LEN])
        .try_into()
        .expect("the length was set");
    message.write(buf);
    engine.send_extension(&t.config, peer, frame, now, env)
}
