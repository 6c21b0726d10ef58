//! A worker's queues and host in memory: for tests of the whole loop
//! without DPDK. Queues are shared handles, so a test can wire one worker's
//! transmit queue to another's receive queue, inject frames and read what
//! left; the clock moves only when the test moves it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Host, PacketRx, PacketTx, Received};
use crate::frame::VecFrame;
use crate::pipeline::Burst;
use crate::tunnel::memory::predictable_bytes;

/// Frames in flight in one direction: a device's ring, or a wire.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueue(Arc<Mutex<VecDeque<VecFrame>>>);

impl MemoryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<VecFrame>> {
        // A test that panicked while holding it has failed already.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a frame at the end.
    pub fn push(&self, frame: VecFrame) {
        self.lock().push_back(frame);
    }

    /// Takes every frame.
    pub fn drain(&self) -> Vec<VecFrame> {
        self.lock().drain(..).collect()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A receive queue reading from a [`MemoryQueue`].
#[derive(Debug, Clone)]
pub struct MemoryRx(pub MemoryQueue);

impl PacketRx for MemoryRx {
    type Frame = VecFrame;
    fn rx_burst(&mut self, port: u16, burst: &mut Burst<VecFrame>) -> Received {
        let mut got = Received::default();
        // One lock a burst, as a device's ring is read a burst at a time.
        let mut queue = self.0.lock();
        while !burst.is_full() {
            let Some(frame) = queue.pop_front() else {
                break;
            };
            if burst.push_received(port, frame).is_ok() {
                got.frames += 1;
            }
        }
        got
    }
}

/// A transmit queue writing into a [`MemoryQueue`] when flushed, with room
/// for `capacity` frames there (beyond it frames are refused and counted,
/// as by a full ring).
#[derive(Debug)]
pub struct MemoryTx {
    queue: MemoryQueue,
    buffered: Vec<VecFrame>,
    capacity: usize,
    dropped: u64,
}

impl MemoryTx {
    /// A queue into `queue` that never fills.
    pub fn new(queue: MemoryQueue) -> Self {
        Self::with_capacity(queue, usize::MAX)
    }

    /// A queue into `queue` that holds at most `capacity` frames.
    pub fn with_capacity(queue: MemoryQueue, capacity: usize) -> Self {
        MemoryTx {
            queue,
            buffered: Vec::new(),
            capacity,
            dropped: 0,
        }
    }
}

impl PacketTx for MemoryTx {
    type Frame = VecFrame;
    fn push(&mut self, frame: VecFrame) {
        self.buffered.push(frame);
    }
    fn flush(&mut self) {
        if self.buffered.is_empty() {
            return;
        }
        let mut queue = self.queue.lock();
        for frame in self.buffered.drain(..) {
            if queue.len() < self.capacity {
                queue.push_back(frame);
            } else {
                self.dropped += 1;
            }
        }
    }
    fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A clock several workers can share, moved by hand (nanoseconds).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// The time now.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the time.
    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::Relaxed);
    }

    /// Moves the time forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::Relaxed);
    }
}

/// A host on the heap: heap frames (or none, as a pool run dry), a
/// [`ManualClock`] whose ticks are nanoseconds, and a seeded generator for
/// its "random" bytes, so runs repeat exactly. Never for real keys.
#[derive(Debug, Clone)]
pub struct MemoryHost {
    /// The clock.
    pub clock: ManualClock,
    /// The generator's state.
    pub seed: u64,
    /// Refuse every buffer.
    pub no_buffers: bool,
}

impl MemoryHost {
    /// A host on `clock` whose generator starts at `seed`.
    pub fn new(clock: ManualClock, seed: u64) -> Self {
        MemoryHost {
            clock,
            seed,
            no_buffers: false,
        }
    }
}

impl Host for MemoryHost {
    type Frame = VecFrame;
    fn alloc(&mut self) -> Option<VecFrame> {
        (!self.no_buffers).then(VecFrame::empty)
    }
    fn ticks(&self) -> u64 {
        self.clock.now()
    }
    fn ticks_per_s(&self) -> u64 {
        1_000_000_000
    }
    fn ns_at(&self, ticks: u64) -> u64 {
        ticks
    }
    fn random(&mut self, out: &mut [u8]) {
        predictable_bytes(&mut self.seed, out);
    }
    fn unix_time(&self) -> Duration {
        Duration::from_secs(1_800_000_000) + Duration::from_nanos(self.clock.now())
    }
    fn sleep(&self, _us: u32) {}
}
