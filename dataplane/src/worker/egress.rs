//! Where a worker's packets go after a decision: out of a device queue,
//! into the pending queue for a next hop, into the tunnel engine, or to
//! another worker. [`Egress`] is also the tunnel engine's [`TunnelIo`]: the
//! datagrams it sends get their outer headers and a next hop here.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use ring::rand::SecureRandom;

use crate::dpdk::{Mbuf, Mempool, TxQueue};
use patronus_core::config::{Snapshot, TUNNEL_MAC};
use patronus_core::gateway::Verdict;
use patronus_core::neighbor::NeighborSnapshot;
use patronus_core::pending::{Held, PendingQueue};
use patronus_core::stats::{Counter, Counters, DropReason};
use patronus_core::tunnel::outer::{self, OuterHeaders, ETHERNET_LEN};
use patronus_core::tunnel::{PeerId, TunnelIo, Tunnels, Work};

/// Most next hops a worker asks for in one round; the rest are asked by the
/// pending queue's retransmission timer.
pub const PROBES_PER_ROUND: usize = 16;

/// Endpoints whose outer headers a worker remembers.
const ENDPOINT_SLOTS: usize = 256;

/// How tunnel datagrams leave for each endpoint (port, headers with the
/// next hop's MAC), worked out once per endpoint and forwarding generation
/// instead of a route and neighbour lookup per datagram. Direct-mapped: an
/// endpoint that collides with another is just looked up again.
#[derive(Debug)]
pub struct EndpointCache {
    slots: Box<[Option<EndpointRoute>]>,
}

/// One endpoint's way out.
#[derive(Clone, Copy, Debug)]
struct EndpointRoute {
    to: SocketAddr,
    generation: u32,
    port: u16,
    headers: OuterHeaders,
}

impl Default for EndpointCache {
    fn default() -> Self {
        EndpointCache {
            slots: vec![None; ENDPOINT_SLOTS].into_boxed_slice(),
        }
    }
}

impl EndpointCache {
    fn slot(to: SocketAddr) -> usize {
        let ip = match to.ip() {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                (v as u64) ^ ((v >> 64) as u64)
            }
        };
        let h = (ip ^ u64::from(to.port())).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 56) as usize % ENDPOINT_SLOTS
    }

    fn get(&self, to: SocketAddr, generation: u32) -> Option<(u16, &OuterHeaders)> {
        match &self.slots[Self::slot(to)] {
            Some(r) if r.to == to && r.generation == generation => Some((r.port, &r.headers)),
            _ => None,
        }
    }

    fn put(&mut self, to: SocketAddr, generation: u32, port: u16, headers: OuterHeaders) {
        self.slots[Self::slot(to)] = Some(EndpointRoute {
            to,
            generation,
            port,
            headers,
        });
    }
}

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
    /// Outer headers per endpoint.
    pub endpoints: &'a mut EndpointCache,
    /// The forwarding generation (config and neighbours) now.
    pub fwd_generation: u32,
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
        *self.ip_id = self.ip_id.wrapping_add(1);
        if let Some((port, headers)) = self.endpoints.get(to, self.fwd_generation) {
            if !headers.apply(&mut frame, *self.ip_id) {
                return self.counters.drop(DropReason::NoBuffer);
            }
            self.counters.add(Counter::Forwarded, 1);
            self.counters
                .add(Counter::ForwardedBytes, frame.len() as u64);
            return self.tx[usize::from(port)].push(frame);
        }
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
        let from = SocketAddr::new(source, t.config.listen_port);
        let next_hop_mac = self.neighbors.get(hop.port, hop.addr).map(|e| e.mac);
        let Some(headers) = OuterHeaders::new(from, to, port.mac, next_hop_mac.unwrap_or_default())
        else {
            return self.counters.drop(DropReason::TunnelEndpointUnreachable);
        };
        if !headers.apply(&mut frame, *self.ip_id) {
            return self.counters.drop(DropReason::NoBuffer);
        }
        match next_hop_mac {
            Some(_) => {
                self.endpoints
                    .put(to, self.fwd_generation, hop.port, headers);
                self.counters.add(Counter::Forwarded, 1);
                self.counters
                    .add(Counter::ForwardedBytes, frame.len() as u64);
                self.tx[usize::from(hop.port)].push(frame);
            }
            // The MACs are filled in when the next hop answers.
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
