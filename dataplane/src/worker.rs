//! The poll-mode worker on DPDK: the cores' worker loop
//! ([`patronus_core::worker`]) over DPDK receive and transmit queues, the
//! packet buffer pool, the TSC and the operating system's entropy.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use patronus_core::pipeline::Burst;
use patronus_core::worker::{Host, PacketRx, PacketTx, Received, Worker};
use ring::rand::SecureRandom;

use crate::dpdk::{rdtsc, Mbuf, Mempool, RxBurst, RxQueue, TxQueue};

/// A worker on DPDK queues.
pub type DpdkWorker = Worker<DpdkHost, DpdkRx, TxQueue>;

/// Converts time-stamp counter readings into nanoseconds since a common
/// start, shared by workers and the control thread.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_tsc: u64,
    hz: u64,
}

impl Clock {
    /// A clock starting now, counting at `hz` ticks per second.
    pub fn new(hz: u64) -> Self {
        Clock {
            base_tsc: rdtsc(),
            hz: hz.max(1),
        }
    }

    /// Nanoseconds since the clock started at TSC reading `tsc`.
    #[inline]
    pub fn ns_at(&self, tsc: u64) -> u64 {
        (u128::from(tsc.saturating_sub(self.base_tsc)) * 1_000_000_000 / u128::from(self.hz)) as u64
    }

    /// Nanoseconds since the clock started.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.ns_at(rdtsc())
    }

    /// Ticks per second.
    pub fn hz(&self) -> u64 {
        self.hz
    }
}

/// What a worker on DPDK uses besides its queues.
#[derive(Debug)]
pub struct DpdkHost {
    pool: Arc<Mempool>,
    clock: Clock,
    rng: ring::rand::SystemRandom,
}

impl DpdkHost {
    /// Buffers from `pool`, time from `clock`.
    pub fn new(pool: Arc<Mempool>, clock: Clock) -> Self {
        DpdkHost {
            pool,
            clock,
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl Host for DpdkHost {
    type Frame = Mbuf;

    #[inline]
    fn alloc(&mut self) -> Option<Mbuf> {
        Mbuf::alloc(&self.pool)
    }

    #[inline]
    fn ticks(&self) -> u64 {
        rdtsc()
    }

    fn ticks_per_s(&self) -> u64 {
        self.clock.hz()
    }

    #[inline]
    fn ns_at(&self, ticks: u64) -> u64 {
        self.clock.ns_at(ticks)
    }

    fn random(&mut self, out: &mut [u8]) {
        // getrandom(2) only fails before the kernel's pool is initialised,
        // long before a gateway is up; without randomness no key may be made.
        self.rng
            .fill(out)
            .expect("the operating system's random source failed");
    }

    fn unix_time(&self) -> Duration {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }

    fn sleep(&self, us: u32) {
        std::thread::sleep(Duration::from_micros(u64::from(us)));
    }
}

/// A DPDK receive queue with the array its bursts land in.
#[derive(Debug)]
pub struct DpdkRx {
    queue: RxQueue,
    received: RxBurst,
}

impl DpdkRx {
    /// Polls `queue`.
    pub fn new(queue: RxQueue) -> Self {
        DpdkRx {
            queue,
            received: RxBurst::new(),
        }
    }
}

impl PacketRx for DpdkRx {
    type Frame = Mbuf;

    #[inline]
    fn rx_burst(&mut self, port: u16, burst: &mut Burst<Mbuf>) -> Received {
        let room = patronus_core::BURST_SIZE - burst.len();
        self.queue.rx_burst(&mut self.received, room);
        let mut got = Received::default();
        while let Some(mut mbuf) = self.received.pop() {
            // The cores see one contiguous buffer; a chain that cannot be
            // folded into its first segment is dropped (and counted).
            if mbuf.segments() > 1 && !mbuf.linearize() {
                got.unusable += 1;
                continue;
            }
            match burst.push_received(port, mbuf) {
                Ok(()) => got.frames += 1,
                Err(_) => unreachable!("no more was received than the burst has room for"),
            }
        }
        got
    }
}

impl PacketTx for TxQueue {
    type Frame = Mbuf;

    #[inline]
    fn push(&mut self, frame: Mbuf) {
        TxQueue::push(self, frame);
    }

    #[inline]
    fn flush(&mut self) {
        TxQueue::flush(self);
    }

    fn dropped(&self) -> u64 {
        TxQueue::dropped(self)
    }
}
