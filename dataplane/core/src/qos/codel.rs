//! CoDel (RFC 8289), the active queue management of every flow queue: it
//! lets bursts through but drops at the head of a queue whose packets have
//! waited longer than `target` for a whole `interval`, at a rate that grows
//! with the square root of the drops so far, until the standing queue is
//! gone.

/// CoDel's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodelParams {
    /// The sojourn time a queue may keep standing (ns); 5 ms by default.
    pub target_ns: u64,
    /// How long it may stand above `target` before drops start (ns), about
    /// a worst-case round trip; 100 ms by default.
    pub interval_ns: u64,
    /// A queue of at most this many bytes is never judged (one full packet).
    pub mtu_bytes: u32,
}

impl Default for CodelParams {
    fn default() -> Self {
        CodelParams {
            target_ns: 5_000_000,
            interval_ns: 100_000_000,
            mtu_bytes: 1_514,
        }
    }
}

/// The queue CoDel manages: it hands out its head and drops what CoDel
/// says to.
pub trait CodelQueue {
    /// A queued packet.
    type Packet;
    /// Takes the head: the packet, when it was queued (ns) and the bytes
    /// left behind it.
    fn pop(&mut self) -> Option<(Self::Packet, u64, u32)>;
    /// Drops a packet CoDel judged.
    fn drop_packet(&mut self, packet: Self::Packet);
}

/// CoDel's state for one queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codel {
    /// When the sojourn time first stayed above target for an interval
    /// (0: it is below).
    first_above_ns: u64,
    drop_next_ns: u64,
    count: u32,
    last_count: u32,
    dropping: bool,
}

impl Codel {
    /// The next packet to send from `queue`, dropping at its head as the
    /// RFC's dequeue does.
    pub fn dequeue<Q: CodelQueue>(
        &mut self,
        queue: &mut Q,
        now_ns: u64,
        params: &CodelParams,
    ) -> Option<Q::Packet> {
        let (mut packet, mut ok_to_drop) = self.take(queue, now_ns, params)?;
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
            }
            while self.dropping && now_ns >= self.drop_next_ns {
                queue.drop_packet(packet);
                self.count = self.count.saturating_add(1);
                let Some((next, ok)) = self.take(queue, now_ns, params) else {
                    self.dropping = false;
                    return None;
                };
                packet = next;
                ok_to_drop = ok;
                if ok_to_drop {
                    self.drop_next_ns = control_law(self.drop_next_ns, self.count, params);
                } else {
                    self.dropping = false;
                }
            }
        } else if ok_to_drop {
            queue.drop_packet(packet);
            let next = self.take(queue, now_ns, params);
            self.dropping = true;
            // Resume near the drop rate that last worked if this episode
            // follows the last one closely.
            let delta = self.count.wrapping_sub(self.last_count);
            self.count = if delta > 1
                && now_ns.saturating_sub(self.drop_next_ns) < 16 * params.interval_ns
            {
                delta
            } else {
                1
            };
            self.drop_next_ns = control_law(now_ns, self.count, params);
            self.last_count = self.count;
            let (next, _) = next?;
            packet = next;
        }
        Some(packet)
    }

    /// Pops the head and says whether it may be dropped.
    fn take<Q: CodelQueue>(
        &mut self,
        queue: &mut Q,
        now_ns: u64,
        params: &CodelParams,
    ) -> Option<(Q::Packet, bool)> {
        let Some((packet, enqueued_ns, backlog)) = queue.pop() else {
            self.first_above_ns = 0;
            return None;
        };
        let sojourn = now_ns.saturating_sub(enqueued_ns);
        let mut ok_to_drop = false;
        if sojourn < params.target_ns || backlog <= params.mtu_bytes {
            self.first_above_ns = 0;
        } else if self.first_above_ns == 0 {
            self.first_above_ns = now_ns + params.interval_ns;
        } else if now_ns >= self.first_above_ns {
            ok_to_drop = true;
        }
        Some((packet, ok_to_drop))
    }
}

/// The next drop: `interval / sqrt(count)` after `t`.
fn control_law(t: u64, count: u32, params: &CodelParams) -> u64 {
    let gap = params.interval_ns as f64 / f64::from(count.max(1)).sqrt();
    t + gap as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A FIFO of (id, enqueue time, size) that records what CoDel drops.
    struct Fifo {
        packets: VecDeque<(u32, u64, u32)>,
        dropped: Vec<u32>,
    }

    impl CodelQueue for Fifo {
        type Packet = u32;
        fn pop(&mut self) -> Option<(u32, u64, u32)> {
            let (id, at, _) = self.packets.pop_front()?;
            let backlog = self.packets.iter().map(|p| p.2).sum();
            Some((id, at, backlog))
        }
        fn drop_packet(&mut self, packet: u32) {
            self.dropped.push(packet);
        }
    }

    #[test]
    fn a_queue_below_target_is_never_dropped_from() {
        let params = CodelParams::default();
        let mut codel = Codel::default();
        let mut fifo = Fifo {
            packets: VecDeque::new(),
            dropped: Vec::new(),
        };
        // A packet every ms, sent 4 ms after it came: 4 ms sojourn, forever.
        for ms in 0..10_000u64 {
            fifo.packets.push_back((ms as u32, ms * 1_000_000, 1_500));
            if ms >= 4 {
                let now = ms * 1_000_000;
                assert!(codel.dequeue(&mut fifo, now, &params).is_some());
            }
        }
        assert!(fifo.dropped.is_empty());
    }

    #[test]
    fn a_standing_queue_is_dropped_from_after_one_interval_then_faster() {
        let params = CodelParams::default();
        let mut codel = Codel::default();
        let mut fifo = Fifo {
            packets: VecDeque::new(),
            dropped: Vec::new(),
        };
        // Two packets in per ms, one out: the queue and its sojourn grow.
        let mut id = 0;
        let mut first_drop_ms = None;
        for ms in 0..1_000u64 {
            for _ in 0..2 {
                fifo.packets.push_back((id, ms * 1_000_000, 1_500));
                id += 1;
            }
            let before = fifo.dropped.len();
            codel.dequeue(&mut fifo, ms * 1_000_000, &params);
            if fifo.dropped.len() > before && first_drop_ms.is_none() {
                first_drop_ms = Some(ms);
            }
        }
        // Sojourn passes 5 ms after about 5 ms; drops start one interval
        // later.
        let first = first_drop_ms.expect("CoDel never dropped");
        assert!((100..=110).contains(&first), "first drop at {first} ms");
        // Then the drop rate climbs: drops spaced interval/sqrt(n) make
        // about (t / 2·interval)² in t, more than one per interval here.
        assert!(fifo.dropped.len() > 9, "{} drops", fifo.dropped.len());
    }
}
