//! Where a worker's packets go after a decision: out of a device queue,
//! into the pending queue for a next hop, into the tunnel engine, or to
//! another worker. [`Egress`] is also the tunnel engine's [`TunnelIo`]: the
//! datagrams it sends get their outer headers and a next hop here.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use ring::rand::SecureRandom;

use crate::config::{Snapshot, TUNNEL_MAC};
use crate::dpdk::{Mbuf, Mempool, TxQueue};
use crate::gateway::Verdict;
use crate::neighbor::NeighborSnapshot;
use crate::pending::{Held, PendingQueue};
use crate::stats::{Counter, Counters, DropReason};
use crate::tunnel::outer::{self, ETHERNET_LEN};
use crate::tunnel::{PeerId, TunnelIo, Tunnels, Work};

/// Most next hops a worker asks for in one round; the rest are asked by the
/// pending queue's retransmission timer.
pub const PROBES_PER_ROUND: usize = 16;

/// The worker's means of sending, borrowed for one stretch of work.
pub struct Egress<'a> {
    /// The configuration in force.
    pub cfg: &'a Snapshot,
    /// The neighbour table in force.
    pub neighbors: &'a NeighborSnapshot,
    /// Buffers for messages the tunnel engine originates.
    pub pool: &'a Mempool,
    /// The worker's transmit queue on each device port.
    pub tx: &'a mut [TxQueue],
    /// Packets waiting for a next hop.
    pub pending: &'a mut PendingQueue<Mbuf>,
    /// The worker's counters.
    pub counters: &'a mut Counters,
    /// Every worker's queue of tunnel work, by worker.
    pub inboxes: &'a [ArrayQueue<Work<Mbuf>>],
    /// Decrypted packets waiting to be forwarded.
    pub delivered: &'a mut Vec<Mbuf>,
    /// Next hops to ask for after this stretch.
    pub probes: &'a mut Vec<(u16, IpAddr)>,
    /// IPv4 identification of the next tunnel datagram.
    pub ip_id: &'a mut u16,
    /// The operating system's random source.
    pub rng: &'a ring::rand::SystemRandom,
    /// The time now.
    pub now_ns: u64,
}

impl Egress<'_> {
    /// Carries out `verdict` for `mbuf`.
    pub fn dispatch(
        &mut self,
        verdict: Verdict,
        mut mbuf: Mbuf,
        tunnels: Option<&mut Tunnels<Mbuf>>,
    ) {
        // Borrowed for 'a, not from `self`, so that `self` can serve as the engine's I/O.
        let cfg: &Snapshot = self.cfg;
        match verdict {
            Verdict::Transmit(out) if Some(out) == self.cfg.tunnel_port() => {
                // A reply the gateway built to a packet that came out of the tunnel.
                self.reply_into_tunnel(mbuf, tunnels);
            }
            Verdict::Transmit(out) => match self.tx.get_mut(usize::from(out)) {
                Some(txq) => txq.push(mbuf),
                None => self.counters.drop(DropReason::NoRoute),
            },
            Verdict::Resolve { port, next_hop } => self.hold(port, next_hop, mbuf),
            Verdict::Tunnel { peer } => match (tunnels, cfg.tunnel.as_deref()) {
                (Some(tunnels), Some(t)) if mbuf.adj(ETHERNET_LEN) => {
                    tunnels.send(&t.config, peer, mbuf, self.now_ns, self);
                }
                _ => self.counters.drop(DropReason::NoRoute),
            },
            Verdict::TunnelDatagram { from, payload } => match (tunnels, cfg.tunnel.as_deref()) {
                (Some(tunnels), Some(t)) if mbuf.adj(usize::from(payload)) => {
                    tunnels.receive(&t.config, from, mbuf, self.now_ns, self);
                }
                _ => self.counters.drop(DropReason::LocalUnsupported),
            },
            Verdict::Drop | Verdict::Consumed => drop(mbuf),
        }
    }

    /// Sends a gateway-built packet (Ethernet header in front) to the peer
    /// its destination belongs to.
    fn reply_into_tunnel(&mut self, mut mbuf: Mbuf, tunnels: Option<&mut Tunnels<Mbuf>>) {
        let cfg: &Snapshot = self.cfg;
        let (Some(tunnels), Some(t)) = (tunnels, cfg.tunnel.as_deref()) else {
            return self.counters.drop(DropReason::NoRoute);
        };
        if !mbuf.adj(ETHERNET_LEN) {
            return self.counters.drop(DropReason::NoRoute);
        }
        let dst = match mbuf.data().first().map(|b| b >> 4) {
            Some(4) if mbuf.len() >= 20 => {
                let d = mbuf.data();
                IpAddr::from([d[16], d[17], d[18], d[19]])
            }
            Some(6) if mbuf.len() >= 40 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&mbuf.data()[24..40]);
                IpAddr::from(a)
            }
            _ => return self.counters.drop(DropReason::NoRoute),
        };
        match t.config.route(dst) {
            Some(peer) => tunnels.send(&t.config, peer, mbuf, self.now_ns, self),
            None => self.counters.drop(DropReason::NoRoute),
        }
    }

    /// Queues a frame whose next hop has no MAC yet, asking for it if new.
    fn hold(&mut self, port: u16, next_hop: IpAddr, mbuf: Mbuf) {
        match self.pending.hold(port, next_hop, mbuf, self.now_ns) {
            Ok(Held::ProbeNow) => {
                if self.probes.len() < PROBES_PER_ROUND {
                    self.probes.push((port, next_hop));
                }
            }
            Ok(Held::Queued) => {}
            Err(_dropped) => self.counters.drop(DropReason::PendingFull),
        }
    }
}

impl TunnelIo<Mbuf> for Egress<'_> {
    fn alloc(&mut self) -> Option<Mbuf> {
        let mbuf = Mbuf::alloc(self.pool);
        if mbuf.is_none() {
            self.counters.drop(DropReason::NoBuffer);
        }
        mbuf
    }

    fn send(&mut self, to: SocketAddr, mut frame: Mbuf) {
        let cfg = self.cfg;
        let hop = cfg
            .routes
            .next_hop(to.ip())
            .filter(|hop| Some(hop.port) != cfg.tunnel_port());
        let Some((hop, port)) =
            hop.and_then(|hop| Some((hop, cfg.ports.get(usize::from(hop.port))?)))
        else {
            return self.counters.drop(DropReason::TunnelEndpointUnreachable);
        };
        let source = match to.ip() {
            IpAddr::V4(d) => port.v4_source(d).map(IpAddr::V4),
            IpAddr::V6(d) => port.v6_source(d).map(IpAddr::V6),
        };
        let (Some(source), Some(t)) = (source, &cfg.tunnel) else {
            return self.counters.drop(DropReason::TunnelEndpointUnreachable);
        };
        *self.ip_id = self.ip_id.wrapping_add(1);
        let from = SocketAddr::new(source, t.config.listen_port);
        if !outer::encapsulate(&mut frame, from, to, port.mac, *self.ip_id) {
            return self.counters.drop(DropReason::NoBuffer);
        }
        match self.neighbors.get(hop.port, hop.addr) {
            Some(entry) => {
                frame.data_mut()[0..6].copy_from_slice(&entry.mac);
                self.counters.add(Counter::Forwarded, 1);
                self.counters
                    .add(Counter::ForwardedBytes, frame.len() as u64);
                self.tx[usize::from(hop.port)].push(frame);
            }
            None => self.hold(hop.port, hop.addr, frame),
        }
    }

    fn deliver(&mut self, _peer: PeerId, mut frame: Mbuf) {
        // Room for two bursts of decrypted packets; the worker forwards them
        // after every burst, so this only refuses when something is amiss.
        if self.delivered.len() == self.delivered.capacity()
            || !outer::add_ethernet(&mut frame, TUNNEL_MAC)
        {
            return self.counters.drop(DropReason::NoBuffer);
        }
        self.delivered.push(frame);
    }

    fn handoff(&mut self, worker: usize, work: Work<Mbuf>) {
        let accepted = self.inboxes.get(worker).map(|inbox| inbox.push(work));
        if !matches!(accepted, Some(Ok(()))) {
            self.counters.drop(DropReason::TunnelHandoffFull);
        }
    }

    fn random(&mut self, out: &mut [u8]) {
        // getrandom(2) only fails before the kernel's pool is initialised,
        // long before a gateway is up; without randomness no key may be made.
        self.rng
            .fill(out)
            .expect("the operating system's random source failed");
    }

    fn unix_time(&mut self) -> Duration {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}
