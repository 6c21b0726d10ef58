//! [`MemoryIo`]: the tunnel engine's host on plain memory, for the unit
//! tests, the benchmark and the fuzz targets: it supplies buffers, entropy
//! and time ([`TunnelEnv`]) and keeps what the engine returns and queues.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Outcome, PeerId, TunnelEnv, Tunnels, Work};
use crate::frame::VecFrame;

/// A [`TunnelEnv`] that keeps everything the engine sends, delivers and
/// hands over ([`MemoryIo::record`]), tells the time from `now_ns`, and draws its "random" bytes
/// from a generator seeded with `seed`, so runs repeat exactly. Never for
/// real keys: its randomness is predictable by design.
#[derive(Debug, Default)]
pub struct MemoryIo {
    /// Datagrams sent, with their destination.
    pub sent: Vec<(SocketAddr, VecFrame)>,
    /// Decrypted packets, with their peer.
    pub delivered: Vec<(PeerId, VecFrame)>,
    /// Extension messages received, with their peer.
    pub extensions: Vec<(PeerId, VecFrame)>,
    /// Work handed to other workers.
    pub handoffs: Vec<(usize, Work<VecFrame>)>,
    /// The generator's state.
    pub seed: u64,
    /// The engine's clock, which the wall clock follows (from 2027-01-15).
    pub now_ns: u64,
    /// Refuse every buffer, as a pool that ran dry.
    pub no_buffers: bool,
}

impl MemoryIo {
    /// A host whose generator starts at `seed`.
    pub fn seeded(seed: u64) -> Self {
        MemoryIo {
            seed,
            ..MemoryIo::default()
        }
    }
}

impl MemoryIo {
    /// Keeps what became of a packet or datagram, then every datagram the
    /// engine queued meanwhile (in the order a worker sends them).
    pub fn record(&mut self, outcome: Outcome<VecFrame>, engine: &mut Tunnels<VecFrame>) {
        match outcome {
            Outcome::Transmit { to, frame } => self.sent.push((to, frame)),
            Outcome::Deliver { peer, frame } => self.delivered.push((peer, frame)),
            Outcome::Extension { peer, frame } => self.extensions.push((peer, frame)),
            Outcome::HandOff { worker, work } => self.handoffs.push((worker, work)),
            Outcome::Done => {}
        }
        self.sent.extend(std::iter::from_fn(|| {
            engine.poll_transmit().map(|(_, to, frame)| (to, frame))
        }));
    }
}

impl TunnelEnv<VecFrame> for MemoryIo {
    fn alloc(&mut self) -> Option<VecFrame> {
        (!self.no_buffers).then(VecFrame::empty)
    }
    fn random(&mut self, out: &mut [u8]) {
        predictable_bytes(&mut self.seed, out);
    }
    fn unix_time(&mut self) -> Duration {
        Duration::from_secs(1_800_000_000) + Duration::from_nanos(self.now_ns)
    }
}

/// Fills `out` from Knuth's MMIX linear congruential generator at `state`
/// (the top byte of each step): repeatable "randomness" for test hosts.
pub fn predictable_bytes(state: &mut u64, out: &mut [u8]) {
    for b in out {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (*state >> 56) as u8;
    }
}
