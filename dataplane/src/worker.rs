//! The poll-mode worker on DPDK: the cores' worker loop
//! ([`patronus_core::worker`]) over DPDK receive and transmit queues, the
//! packet buffer pool, the TSC and the operating system's entropy.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// A pair of readings of the time-stamp counter and the system's monotonic
/// clock further apart than this (ticks) is taken again: the thread was
/// interrupted between them.
const MAX_PAIR_TICKS: u64 = 50_000;

/// The time-stamp counter and the monotonic clock read at (nearly) the same
/// instant: the counter's reading is the midpoint of two around the clock's.
fn paired_reading() -> (u64, Instant) {
    let mut reading = (0, Instant::now());
    for _ in 0..1_000 {
        let before = rdtsc();
        let now = Instant::now();
        let after = rdtsc();
        reading = (before + after.saturating_sub(before) / 2, now);
        if after.saturating_sub(before) < MAX_PAIR_TICKS {
            break;
        }
    }
    reading
}

impl Clock {
    /// A clock starting now at the rate the time-stamp counter keeps
    /// against the system's monotonic clock over `window` (which it
    /// sleeps). EAL's figure may be the processor's nominal rate rather
    /// than the counter's: on a virtual machine here it says 2.000 GHz of
    /// a counter the kernel measures at 1.996 GHz, and every shaper would
    /// send 0.19% below its rate.
    pub fn calibrated(window: Duration) -> Self {
        let (tsc0, t0) = paired_reading();
        std::thread::sleep(window);
        let (tsc1, t1) = paired_reading();
        let ns = (t1 - t0).as_nanos().max(1);
        let hz = u128::from(tsc1.saturating_sub(tsc0)) * 1_000_000_000 / ns;
        Clock {
            base_tsc: tsc1,
            hz: u64::try_from(hz).unwrap_or(u64::MAX).max(1),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibrated_clock_keeps_the_system_clocks_time() {
        let clock = Clock::calibrated(Duration::from_millis(200));
        let (tsc0, t0) = paired_reading();
        std::thread::sleep(Duration::from_millis(300));
        let (tsc1, t1) = paired_reading();
        let counted = clock.ns_at(tsc1) - clock.ns_at(tsc0);
        let elapsed = (t1 - t0).as_nanos() as f64;
        let error = counted as f64 / elapsed - 1.0;
        assert!(error.abs() < 0.001, "{:+.4}% off", error * 100.0);
    }
}
