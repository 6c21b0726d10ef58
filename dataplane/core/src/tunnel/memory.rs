//! [`MemoryIo`]: the tunnel engine's host on plain memory, for the unit
//! tests, the benchmark and the fuzz targets.

use std::net::SocketAddr;
use std::time::Duration;

use super::{PeerId, TunnelIo, Work};
use crate::frame::VecFrame;

/// A [`TunnelIo`] that keeps everything the engine sends, delivers and
/// hands over, tells the time from `now_ns`, and draws its "random" bytes
/// from a generator seeded with `seed`, so runs repeat exactly. Never for
/// real keys: its randomness is predictable by design.
#[derive(Debug, Default)]
pub struct MemoryIo {
    /// Datagrams sent, with their destination.
    pub sent: Vec<(SocketAddr, VecFrame)>,
    /// Decrypted packets, with their peer.
    pub delivered: Vec<(PeerId, VecFrame)>,
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

impl TunnelIo<VecFrame> for MemoryIo {
    fn alloc(&mut self) -> Option<VecFrame> {
        (!self.no_buffers).then(VecFrame::empty)
    }
    fn send(&mut self, to: SocketAddr, frame: VecFrame) {
        self.sent.push((to, frame));
    }
    fn deliver(&mut self, peer: PeerId, frame: VecFrame) {
        self.delivered.push((peer, frame));
    }
    fn handoff(&mut self, worker: usize, work: Work<VecFrame>) {
        self.handoffs.push((worker, work));
    }
    fn random(&mut self, out: &mut [u8]) {
        // Knuth's MMIX linear congruential generator, top byte per step.
        for b in out {
            self.seed = self
                .seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.seed >> 56) as u8;
        }
    }
    fn unix_time(&mut self) -> Duration {
        Duration::from_secs(1_800_000_000) + Duration::from_nanos(self.now_ns)
    }
}
