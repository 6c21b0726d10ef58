//! Packets waiting for their next hop's MAC address.
//!
//! Bounded twice (next hops tracked, packets per next hop) and preallocated
//! at start, so an unreachable subnet cannot eat the buffer pool or cause
//! allocation on the hot path. Resolution requests are retransmitted every
//! `retransmit` until `max_probes` have gone unanswered; then the waiting
//! packets are dropped.

use std::net::IpAddr;

struct Slot<F> {
    in_use: bool,
    port: u16,
    addr: IpAddr,
    last_probe_ns: u64,
    probes: u32,
    frames: Vec<F>,
}

/// What [`PendingQueue::hold`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// Queued behind an outstanding request.
    Queued,
    /// Queued for a next hop not asked for yet: send a request now.
    ProbeNow,
}

/// One worker's packets awaiting address resolution.
pub struct PendingQueue<F> {
    slots: Vec<Slot<F>>,
    per_neighbor: usize,
    active: usize,
    packets: usize,
}

impl<F> std::fmt::Debug for PendingQueue<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingQueue")
            .field("active", &self.active)
            .field("packets", &self.packets)
            .finish()
    }
}

impl<F> PendingQueue<F> {
    /// Room for `neighbors` next hops with `per_neighbor` packets each, allocated now.
    pub fn new(neighbors: usize, per_neighbor: usize) -> Self {
        let slots = (0..neighbors.max(1))
            .map(|_| Slot {
                in_use: false,
                port: 0,
                addr: IpAddr::from([0u8; 4]),
                last_probe_ns: 0,
                probes: 0,
                frames: Vec::with_capacity(per_neighbor.max(1)),
            })
            .collect();
        PendingQueue {
            slots,
            per_neighbor: per_neighbor.max(1),
            active: 0,
            packets: 0,
        }
    }

    /// Packets waiting.
    pub fn packets(&self) -> usize {
        self.packets
    }

    /// Next hops being resolved.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Holds `frame` until `addr` on `port` resolves. Gives the frame back
    /// when there is no room.
    ///
    /// # Errors
    /// Returns the frame when the next hop's queue or the slot table is full.
    pub fn hold(&mut self, port: u16, addr: IpAddr, frame: F, now_ns: u64) -> Result<Held, F> {
        if self.active > 0 {
            if let Some(slot) = self
                .slots
                .iter_mut()
                .find(|s| s.in_use && s.port == port && s.addr == addr)
            {
                if slot.frames.len() >= self.per_neighbor {
                    return Err(frame);
                }
                slot.frames.push(frame);
                self.packets += 1;
                return Ok(Held::Queued);
            }
        }
        let Some(slot) = self.slots.iter_mut().find(|s| !s.in_use) else {
            return Err(frame);
        };
        slot.in_use = true;
        slot.port = port;
        slot.addr = addr;
        slot.last_probe_ns = now_ns;
        slot.probes = 1;
        slot.frames.push(frame);
        self.active += 1;
        self.packets += 1;
        Ok(Held::ProbeNow)
    }

    /// Sends every frame whose next hop `lookup` now knows.
    pub fn release(
        &mut self,
        mut lookup: impl FnMut(u16, IpAddr) -> Option<[u8; 6]>,
        mut send: impl FnMut(u16, [u8; 6], F),
    ) {
        if self.active == 0 {
            return;
        }
        for slot in self.slots.iter_mut().filter(|s| s.in_use) {
            if let Some(mac) = lookup(slot.port, slot.addr) {
                self.packets -= slot.frames.len();
                for frame in slot.frames.drain(..) {
                    send(slot.port, mac, frame);
                }
                slot.in_use = false;
                self.active -= 1;
            }
        }
    }

    /// Retransmits due requests (`probe`) and gives up on next hops that
    /// stayed silent for `max_probes` requests (`dropped` gets their frames).
    pub fn poll_timers(
        &mut self,
        now_ns: u64,
        retransmit_ns: u64,
        max_probes: u32,
        mut probe: impl FnMut(u16, IpAddr),
        mut dropped: impl FnMut(F),
    ) {
        if self.active == 0 {
            return;
        }
        for slot in self.slots.iter_mut().filter(|s| s.in_use) {
            if now_ns.saturating_sub(slot.last_probe_ns) < retransmit_ns {
                continue;
            }
            if slot.probes >= max_probes {
                self.packets -= slot.frames.len();
                for frame in slot.frames.drain(..) {
                    dropped(frame);
                }
                slot.in_use = false;
                self.active -= 1;
            } else {
                slot.probes += 1;
                slot.last_probe_ns = now_ns;
                probe(slot.port, slot.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn first_packet_asks_later_ones_queue() {
        let mut q = PendingQueue::new(2, 2);
        assert_eq!(q.hold(1, ip(1), 'a', 0), Ok(Held::ProbeNow));
        assert_eq!(q.hold(1, ip(1), 'b', 0), Ok(Held::Queued));
        assert_eq!(q.hold(1, ip(1), 'c', 0), Err('c'), "per-neighbour bound");
        assert_eq!(q.hold(1, ip(2), 'd', 0), Ok(Held::ProbeNow));
        assert_eq!(q.hold(1, ip(3), 'e', 0), Err('e'), "slot bound");
        assert_eq!(q.packets(), 3);
    }

    #[test]
    fn release_sends_in_order_with_the_mac() {
        let mut q = PendingQueue::new(4, 4);
        for c in ['a', 'b', 'c'] {
            q.hold(0, ip(9), c, 0).unwrap();
        }
        q.hold(0, ip(8), 'z', 0).unwrap();
        let mut sent = Vec::new();
        q.release(
            |_, a| (a == ip(9)).then_some([2, 0, 0, 0, 0, 9]),
            |p, mac, f| sent.push((p, mac[5], f)),
        );
        assert_eq!(sent, vec![(0, 9, 'a'), (0, 9, 'b'), (0, 9, 'c')]);
        assert_eq!((q.packets(), q.active()), (1, 1));
    }

    #[test]
    fn retransmits_then_gives_up() {
        let mut q = PendingQueue::new(1, 4);
        q.hold(0, ip(1), 'a', 0).unwrap();
        q.hold(0, ip(1), 'b', 0).unwrap();
        let mut probes = 0;
        let mut dropped = Vec::new();
        q.poll_timers(
            500 * MS,
            1000 * MS,
            3,
            |_, _| probes += 1,
            |f| dropped.push(f),
        );
        assert_eq!(probes, 0, "not due yet");
        q.poll_timers(
            1000 * MS,
            1000 * MS,
            3,
            |_, _| probes += 1,
            |f| dropped.push(f),
        );
        q.poll_timers(
            2000 * MS,
            1000 * MS,
            3,
            |_, _| probes += 1,
            |f| dropped.push(f),
        );
        assert_eq!(probes, 2);
        assert!(dropped.is_empty());
        q.poll_timers(
            3000 * MS,
            1000 * MS,
            3,
            |_, _| probes += 1,
            |f| dropped.push(f),
        );
        assert_eq!(dropped, vec!['a', 'b']);
        assert_eq!((q.packets(), q.active()), (0, 0));
        assert_eq!(
            q.hold(0, ip(1), 'c', 0),
            Ok(Held::ProbeNow),
            "slot reusable"
        );
    }
}
