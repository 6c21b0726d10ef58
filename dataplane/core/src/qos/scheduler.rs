//! The egress scheduler: enqueue and dequeue over the hierarchy described
//! in the module docs of [`super`].
//!
//! Everything lives in flat arrays linked by `u32` indices: packet slots
//! (a free list, and one FIFO per flow queue), flow queues (the new and old
//! lists of each class), tunnels (the egress's round robin). Enqueue and
//! dequeue are O(1) but for waking tunnels that wait on their rate (a heap).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::codel::{Codel, CodelQueue};
use super::{default_burst, Class, DropReason, Layout, ShaperConfig, TokenBucket, TunnelRate};

const NIL: u32 = u32::MAX;
/// Ways of the set-associative flow lookup.
const WAYS: usize = 8;
/// What a flow queue may send per round (bytes): one full-size frame.
const FLOW_QUANTUM: i32 = 1_514;
/// What a tunnel may send per round of the egress (bytes).
const TUNNEL_QUANTUM: i32 = 2 * 1_514;
/// Bytes of a class's round per unit of weight.
const WEIGHT_QUANTUM: i32 = 128;
/// Class buckets hold this much time at their rate (ns), at least two frames.
const CLASS_BURST_NS: u64 = 5_000_000;
const CLASSES: usize = Class::COUNT;

/// A packet the scheduler refused, handed back with the reason.
#[derive(Debug)]
pub struct Rejected<H> {
    /// The packet, for the caller to free.
    pub packet: H,
    /// Why.
    pub reason: DropReason,
}

/// A packet leaving the scheduler.
#[derive(Debug, PartialEq, Eq)]
pub enum Released<H> {
    /// To be sent now.
    Sent {
        /// The packet.
        packet: H,
        /// Its class.
        class: Class,
        /// How long it was held (ns).
        sojourn_ns: u64,
    },
    /// Dropped by CoDel, for the caller to free.
    Dropped {
        /// The packet.
        packet: H,
        /// Its class.
        class: Class,
    },
}

/// One class's counters over every tunnel of an egress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounters {
    /// Packets held now.
    pub queued_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent, as charged (wire bytes and framing overhead).
    pub tx_bytes: u64,
    /// Packets dropped, by [`DropReason`] index.
    pub drops: [u64; DropReason::COUNT],
}

/// A singly linked FIFO of indices into some array.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

/// An element of a [`List`].
trait Linked {
    fn link(&mut self) -> &mut u32;
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    fn is_empty(&self) -> bool {
        self.head == NIL
    }

    fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    fn push_back<T: Linked>(&mut self, items: &mut [T], index: u32) {
        *items[index as usize].link() = NIL;
        if self.tail == NIL {
            self.head = index;
        } else {
            *items[self.tail as usize].link() = index;
        }
        self.tail = index;
    }

    fn pop_front<T: Linked>(&mut self, items: &mut [T]) -> Option<u32> {
        if self.head == NIL {
            return None;
        }
        let index = self.head;
        self.head = *items[index as usize].link();
        if self.head == NIL {
            self.tail = NIL;
        }
        Some(index)
    }
}

struct Slot<H> {
    packet: Option<H>,
    next: u32,
    cost: u32,
    enqueued_ns: u64,
}

impl<H> Linked for Slot<H> {
    fn link(&mut self) -> &mut u32 {
        &mut self.next
    }
}

struct FlowQueue {
    packets: List,
    next: u32,
    bytes: u32,
    deficit: i32,
    codel: Codel,
}

impl Linked for FlowQueue {
    fn link(&mut self) -> &mut u32 {
        &mut self.next
    }
}

struct ClassQueue {
    new_flows: List,
    old_flows: List,
    packets: u32,
    deficit: i32,
    /// RealTime: the share served at strict priority. Others: the minimum.
    assured: Option<TokenBucket>,
    /// The limit (weighted classes below 100%).
    ceiling: Option<TokenBucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelState {
    /// Nothing held.
    Idle,
    /// In the egress's round robin.
    Active,
    /// Waiting on its rate or its classes' limits, in the wake-up heap.
    Waiting,
}

struct Tunnel {
    rate: Option<TokenBucket>,
    classes: [ClassQueue; CLASSES],
    packets: u32,
    state: TunnelState,
    next: u32,
    deficit: i32,
    /// The weighted class the round robin is at (0-3: Interactive-Bulk).
    cursor: u8,
}

impl Linked for Tunnel {
    fn link(&mut self) -> &mut u32 {
        &mut self.next
    }
}

/// How a class got its turn, which decides what it is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// RealTime within its strict-priority share, or a class within its
    /// minimum.
    Assured,
    /// A weighted class by round robin.
    Shared,
    /// RealTime beyond its share, when no other class could send.
    Spare,
}

/// One egress's shaper over packets of type `H` (an mbuf on the worker).
pub struct Scheduler<H> {
    layout: Layout,
    config: ShaperConfig,
    egress: TokenBucket,
    tunnels: Vec<Tunnel>,
    flows: Vec<FlowQueue>,
    /// The flow hash of each flow queue, apart so that a set's eight are
    /// one 32 B read.
    tags: Vec<u32>,
    /// Per set of eight flow queues, which are on their class's new or old
    /// list (always so while they hold packets); the others are free.
    listed: Vec<u8>,
    flow_queues: usize,
    slots: Vec<Slot<H>>,
    free: List,
    held: u32,
    active: List,
    waiting: BinaryHeap<Reverse<(u64, u32)>>,
    counters: [ClassCounters; CLASSES],
}

impl<H> std::fmt::Debug for Scheduler<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("rate_bps", &self.config.rate_bps)
            .field("tunnels", &self.tunnels.len())
            .field("held", &self.held)
            .finish()
    }
}

impl<H> Scheduler<H> {
    /// A scheduler with every slot and queue of `layout` allocated, shaping
    /// per `config` from `now_ns`; tunnels start without a rate of their own.
    pub fn new(layout: Layout, config: ShaperConfig, now_ns: u64) -> Result<Self, String> {
        layout.validate()?;
        config.validate()?;
        let tunnels = (0..layout.tunnels)
            .map(|_| Tunnel {
                rate: None,
                classes: class_queues(&config, config.rate_bps, now_ns),
                packets: 0,
                state: TunnelState::Idle,
                next: NIL,
                deficit: 0,
                cursor: 0,
            })
            .collect();
        let flow_count = layout.tunnels * CLASSES * layout.flow_queues;
        let flows = (0..flow_count)
            .map(|_| FlowQueue {
                packets: List::EMPTY,
                next: NIL,
                bytes: 0,
                deficit: 0,
                codel: Codel::default(),
            })
            .collect();
        let mut slots: Vec<Slot<H>> = (0..layout.packets)
            .map(|_| Slot {
                packet: None,
                next: NIL,
                cost: 0,
                enqueued_ns: 0,
            })
            .collect();
        let mut free = List::EMPTY;
        for index in 0..layout.packets as u32 {
            free.push_back(&mut slots, index);
        }
        Ok(Scheduler {
            layout,
            egress: TokenBucket::new(config.rate_bps, config.effective_burst_bytes(), now_ns),
            config,
            tunnels,
            flows,
            tags: vec![0; flow_count],
            listed: vec![0; flow_count / WAYS],
            flow_queues: layout.flow_queues,
            slots,
            free,
            held: 0,
            active: List::EMPTY,
            // Each tunnel waits at most once, plus stale entries that rate
            // changes leave behind.
            waiting: BinaryHeap::with_capacity(2 * layout.tunnels),
            counters: [ClassCounters::default(); CLASSES],
        })
    }

    /// How it is laid out.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The settings in force.
    pub fn config(&self) -> &ShaperConfig {
        &self.config
    }

    /// Packets held.
    pub fn held(&self) -> usize {
        self.held as usize
    }

    /// Per-class counters, by [`Class::index`].
    pub fn counters(&self) -> &[ClassCounters; CLASSES] {
        &self.counters
    }

    /// Applies new settings at `now_ns` without dropping anything held:
    /// rates change from now, credit and debt carry over, smaller queue
    /// limits only refuse new packets. A refused config changes nothing.
    pub fn reconfigure(&mut self, config: ShaperConfig, now_ns: u64) -> Result<(), String> {
        config.validate()?;
        self.config = config;
        self.egress
            .set(config.rate_bps, config.effective_burst_bytes(), now_ns);
        for index in 0..self.tunnels.len() {
            self.rerate_classes(index, now_ns);
        }
        Ok(())
    }

    /// Gives `tunnel` a rate of its own, or takes it away, at `now_ns`.
    pub fn set_tunnel_rate(
        &mut self,
        tunnel: usize,
        rate: Option<TunnelRate>,
        now_ns: u64,
    ) -> Result<(), String> {
        if rate.is_none() && self.tunnels[tunnel].rate.is_none() {
            return Ok(());
        }
        if let Some(rate) = rate {
            if rate.rate_bps < 8_000 {
                return Err(format!(
                    "rate: {} bit/s is below the least of 8 kbit/s",
                    rate.rate_bps
                ));
            }
        }
        let entry = &mut self.tunnels[tunnel];
        entry.rate = rate.map(|rate| {
            let burst = if rate.burst_bytes == 0 {
                default_burst(rate.rate_bps, CLASS_BURST_NS)
            } else {
                rate.burst_bytes
            };
            match entry.rate.take() {
                Some(mut bucket) => {
                    bucket.set(rate.rate_bps, burst, now_ns);
                    bucket
                }
                None => TokenBucket::new(rate.rate_bps, burst, now_ns),
            }
        });
        self.rerate_classes(tunnel, now_ns);
        if self.tunnels[tunnel].state == TunnelState::Waiting {
            // Its wake-up time may now be earlier: look again then.
            self.waiting.push(Reverse((now_ns, tunnel as u32)));
        }
        Ok(())
    }

    fn rerate_classes(&mut self, tunnel: usize, now_ns: u64) {
        let entry = &mut self.tunnels[tunnel];
        let parent = entry
            .rate
            .as_ref()
            .map_or(self.config.rate_bps, TokenBucket::rate_bps);
        let fresh = class_queues(&self.config, parent, now_ns);
        for (queue, fresh) in entry.classes.iter_mut().zip(fresh) {
            queue.assured = rerate(queue.assured.take(), fresh.assured, now_ns);
            queue.ceiling = rerate(queue.ceiling.take(), fresh.ceiling, now_ns);
        }
    }

    /// Queues `packet` of `class` of flow `flow_hash` for `tunnel`, costing
    /// `wire_bytes` plus the egress's framing overhead. A packet that does
    /// not fit comes back with the reason, counted.
    pub fn enqueue(
        &mut self,
        packet: H,
        tunnel: usize,
        class: Class,
        flow_hash: u32,
        wire_bytes: u32,
        now_ns: u64,
    ) -> Result<(), Rejected<H>> {
        let c = class.index();
        let limit = match class {
            Class::RealTime => self.config.realtime.queue_packets,
            _ => self.config.weighted[c - 1].queue_packets,
        };
        let reason = if self.tunnels[tunnel].classes[c].packets >= limit {
            Some(DropReason::QueueFull)
        } else if self.free.is_empty() {
            Some(DropReason::PoolFull)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.counters[c].drops[reason.index()] += 1;
            return Err(Rejected { packet, reason });
        }
        let cost = wire_bytes + u32::from(self.config.overhead_bytes);
        self.insert(packet, tunnel, c, flow_hash, cost, now_ns);
        Ok(())
    }

    /// Queues `packet` (costing `cost` in all, arrived at `enqueued_ns`)
    /// in the flow queue of `flow_hash` in class `c` of `tunnel`, with no
    /// limit checked: the caller has made sure a packet slot is free.
    fn insert(
        &mut self,
        packet: H,
        tunnel: usize,
        c: usize,
        flow_hash: u32,
        cost: u32,
        enqueued_ns: u64,
    ) {
        let slot = self.free.pop_front(&mut self.slots).expect("a free slot");
        self.slots[slot as usize] = Slot {
            packet: Some(packet),
            next: NIL,
            cost,
            enqueued_ns,
        };
        let flow = self.flow_queue(tunnel, c, flow_hash);
        let queue = &mut self.flows[flow as usize];
        queue.packets.push_back(&mut self.slots, slot);
        queue.bytes += cost;
        let entry = &mut self.tunnels[tunnel];
        let (set, way) = (flow as usize / WAYS, flow as usize % WAYS);
        if self.listed[set] & (1 << way) == 0 {
            self.listed[set] |= 1 << way;
            queue.deficit = FLOW_QUANTUM;
            entry.classes[c].new_flows.push_back(&mut self.flows, flow);
        }
        entry.classes[c].packets += 1;
        entry.packets += 1;
        self.held += 1;
        self.counters[c].queued_packets += 1;
        if entry.state == TunnelState::Idle {
            entry.state = TunnelState::Active;
            entry.deficit = TUNNEL_QUANTUM;
            self.active.push_back(&mut self.tunnels, tunnel as u32);
        }
    }

    /// Lays the scheduler out anew at `now_ns` without dropping anything it
    /// holds: every packet moves, in its flow's order and with its time of
    /// arrival, to the same class and flow of the same tunnel (of tunnel 0
    /// when the new layout has no such tunnel, whatever the class limits);
    /// tunnels keep their rates and every bucket its credit. CoDel starts
    /// afresh on every flow. Refused, changing nothing, when the new layout
    /// is invalid or has fewer packet slots than packets are held.
    pub fn resize(&mut self, layout: Layout, now_ns: u64) -> Result<(), String> {
        if layout.packets < self.held() {
            return Err(format!(
                "packets: {} slots cannot hold the {} packets held",
                layout.packets,
                self.held()
            ));
        }
        let mut fresh = Scheduler::new(layout, self.config, now_ns)?;
        std::mem::swap(&mut fresh.egress, &mut self.egress);
        fresh.counters = self.counters;
        for counters in &mut fresh.counters {
            counters.queued_packets = 0;
        }
        for (old, new) in self.tunnels.iter_mut().zip(&mut fresh.tunnels) {
            new.rate = old.rate.take();
            for (old, new) in old.classes.iter_mut().zip(&mut new.classes) {
                new.assured = old.assured.take();
                new.ceiling = old.ceiling.take();
            }
        }
        for tunnel in 0..self.tunnels.len() {
            let target = if tunnel < layout.tunnels { tunnel } else { 0 };
            for c in 0..CLASSES {
                let queue = &self.tunnels[tunnel].classes[c];
                for list in [queue.new_flows, queue.old_flows] {
                    let mut flow = list.head;
                    while flow != NIL {
                        let tag = self.tags[flow as usize];
                        let mut slot = self.flows[flow as usize].packets.head;
                        while slot != NIL {
                            let held = &mut self.slots[slot as usize];
                            let packet = held.packet.take().expect("a queued slot holds a packet");
                            fresh.insert(packet, target, c, tag, held.cost, held.enqueued_ns);
                            slot = held.next;
                        }
                        flow = self.flows[flow as usize].next;
                    }
                }
            }
        }
        *self = fresh;
        Ok(())
    }

    /// Lets a packet of `class` for `tunnel`, costing `wire_bytes` plus the
    /// framing overhead, leave at once when nothing is held and the egress,
    /// the tunnel's rate and the class's limit all have credit at `now_ns`:
    /// it is charged and counted as sent with no wait, as an enqueue and a
    /// dequeue at the same instant would have it, without a queue touched.
    /// False: it must be enqueued. The fast path of an egress that is not
    /// congested.
    pub fn pass_through(
        &mut self,
        tunnel: usize,
        class: Class,
        wire_bytes: u32,
        now_ns: u64,
    ) -> bool {
        if self.held != 0 {
            return false;
        }
        let Some(entry) = self.tunnels.get_mut(tunnel) else {
            return false;
        };
        self.egress.refill(now_ns);
        if !self.egress.conforms() {
            return false;
        }
        if let Some(rate) = entry.rate.as_mut() {
            rate.refill(now_ns);
            if !rate.conforms() {
                return false;
            }
        }
        let c = class.index();
        let queue = &mut entry.classes[c];
        if let Some(ceiling) = queue.ceiling.as_mut() {
            ceiling.refill(now_ns);
            if !ceiling.conforms() {
                return false;
            }
        }
        let cost = wire_bytes + u32::from(self.config.overhead_bytes);
        self.egress.charge(cost);
        if let Some(rate) = entry.rate.as_mut() {
            rate.charge(cost);
        }
        if let Some(assured) = queue.assured.as_mut() {
            // As a dequeue would: served within its share while it has one.
            assured.refill(now_ns);
            if assured.conforms() {
                assured.charge(cost);
            }
        }
        if let Some(ceiling) = queue.ceiling.as_mut() {
            ceiling.charge(cost);
        }
        let counters = &mut self.counters[c];
        counters.tx_packets += 1;
        counters.tx_bytes += u64::from(cost);
        true
    }

    /// The flow queue of `flow_hash` in class `c` of `tunnel`: the one in
    /// its set that holds this flow, else a free one, else (every way busy
    /// with other flows) one it shares.
    fn flow_queue(&mut self, tunnel: usize, c: usize, flow_hash: u32) -> u32 {
        let sets = self.flow_queues / WAYS;
        let start =
            (tunnel * CLASSES + c) * self.flow_queues + (flow_hash as usize & (sets - 1)) * WAYS;
        let listed = self.listed[start / WAYS];
        let tags = &self.tags[start..start + WAYS];
        for (way, &tag) in tags.iter().enumerate() {
            if tag == flow_hash && listed & (1 << way) != 0 {
                return (start + way) as u32;
            }
        }
        if listed == u8::MAX {
            // Every way holds another flow: share one.
            return (start + (flow_hash >> 24) as usize % WAYS) as u32;
        }
        let index = start + listed.trailing_ones() as usize;
        self.tags[index] = flow_hash;
        index as u32
    }

    /// Releases up to `budget` packets that may leave at `now_ns` (and any
    /// CoDel drops on the way) to `out`, and says when the next may leave:
    /// `None` when nothing is held, a time at or before `now_ns` when more
    /// could leave at once.
    pub fn dequeue(
        &mut self,
        now_ns: u64,
        budget: usize,
        mut out: impl FnMut(Released<H>),
    ) -> Option<u64> {
        self.egress.refill(now_ns);
        self.wake(now_ns);
        let mut sent = 0;
        while sent < budget && self.egress.conforms() {
            let Some(index) = self.active.front() else {
                break;
            };
            let tunnel = &mut self.tunnels[index as usize];
            if tunnel.packets == 0 {
                self.active.pop_front(&mut self.tunnels);
                self.tunnels[index as usize].state = TunnelState::Idle;
                continue;
            }
            if tunnel.deficit <= 0 {
                tunnel.deficit += TUNNEL_QUANTUM;
                self.active.pop_front(&mut self.tunnels);
                self.active.push_back(&mut self.tunnels, index);
                continue;
            }
            if let Some(rate) = tunnel.rate.as_mut() {
                rate.refill(now_ns);
                if !rate.conforms() {
                    let at = rate.ready_at();
                    self.park(index, at);
                    continue;
                }
            }
            let (c, turn) = match pick_class(tunnel, &self.config, now_ns) {
                Ok(pick) => pick,
                Err(at) => {
                    self.park(index, at);
                    continue;
                }
            };
            let Some((slot, sojourn_ns)) = self.dequeue_class(index as usize, c, now_ns, &mut out)
            else {
                continue;
            };
            let cost = self.slots[slot as usize].cost;
            let packet = self.release(slot);
            self.egress.charge(cost);
            let tunnel = &mut self.tunnels[index as usize];
            if let Some(rate) = tunnel.rate.as_mut() {
                rate.charge(cost);
            }
            tunnel.deficit -= cost as i32;
            let queue = &mut tunnel.classes[c];
            match turn {
                Turn::Assured => {
                    if let Some(bucket) = queue.assured.as_mut() {
                        bucket.charge(cost);
                    }
                }
                Turn::Shared => queue.deficit -= cost as i32,
                Turn::Spare => {}
            }
            if let Some(ceiling) = queue.ceiling.as_mut() {
                ceiling.charge(cost);
            }
            let counters = &mut self.counters[c];
            counters.tx_packets += 1;
            counters.tx_bytes += u64::from(cost);
            out(Released::Sent {
                packet,
                class: Class::ALL[c],
                sojourn_ns,
            });
            sent += 1;
        }
        self.next_ready(now_ns)
    }

    /// Every held packet, for the caller to free (at shutdown); the
    /// scheduler is left empty.
    pub fn drain(&mut self) -> impl Iterator<Item = H> + '_ {
        for tunnel in &mut self.tunnels {
            tunnel.state = TunnelState::Idle;
            tunnel.packets = 0;
            for queue in &mut tunnel.classes {
                queue.new_flows = List::EMPTY;
                queue.old_flows = List::EMPTY;
                queue.packets = 0;
            }
        }
        for flow in &mut self.flows {
            flow.packets = List::EMPTY;
            flow.bytes = 0;
            flow.codel = Codel::default();
        }
        self.listed.fill(0);
        for counters in &mut self.counters {
            counters.queued_packets = 0;
        }
        self.active = List::EMPTY;
        self.waiting.clear();
        self.held = 0;
        self.free = List::EMPTY;
        for index in 0..self.slots.len() as u32 {
            self.free.push_back(&mut self.slots, index);
        }
        self.slots.iter_mut().filter_map(|slot| slot.packet.take())
    }

    /// Takes `tunnel` out of the round robin until `at`.
    fn park(&mut self, tunnel: u32, at: u64) {
        self.active.pop_front(&mut self.tunnels);
        self.tunnels[tunnel as usize].state = TunnelState::Waiting;
        self.waiting.push(Reverse((at, tunnel)));
    }

    /// Puts back in the round robin the tunnels whose wait is over.
    fn wake(&mut self, now_ns: u64) {
        while let Some(&Reverse((at, tunnel))) = self.waiting.peek() {
            if at > now_ns {
                break;
            }
            self.waiting.pop();
            let entry = &mut self.tunnels[tunnel as usize];
            if entry.state != TunnelState::Waiting {
                continue;
            }
            if entry.packets == 0 {
                entry.state = TunnelState::Idle;
            } else {
                entry.state = TunnelState::Active;
                self.active.push_back(&mut self.tunnels, tunnel);
            }
        }
    }

    fn next_ready(&self, now_ns: u64) -> Option<u64> {
        if self.held == 0 {
            return None;
        }
        let tunnels = if self.active.is_empty() {
            self.waiting.peek().map_or(now_ns, |Reverse((at, _))| *at)
        } else {
            now_ns
        };
        Some(tunnels.max(self.egress.ready_at()))
    }

    /// The next packet of class `c` of `tunnel` by fair queuing among its
    /// flows, through each flow's CoDel; `None` when CoDel dropped all
    /// that was left.
    fn dequeue_class(
        &mut self,
        tunnel: usize,
        c: usize,
        now_ns: u64,
        out: &mut impl FnMut(Released<H>),
    ) -> Option<(u32, u64)> {
        let params = self.config.codel;
        loop {
            let queue = &mut self.tunnels[tunnel].classes[c];
            let from_new = !queue.new_flows.is_empty();
            let list = if from_new {
                &mut queue.new_flows
            } else {
                &mut queue.old_flows
            };
            let flow = list.front()?;
            let entry = &mut self.flows[flow as usize];
            if entry.deficit <= 0 {
                entry.deficit += FLOW_QUANTUM;
                list.pop_front(&mut self.flows);
                queue.old_flows.push_back(&mut self.flows, flow);
                continue;
            }
            let mut codel = entry.codel;
            let mut head = FlowHead {
                packets: &mut entry.packets,
                bytes: &mut entry.bytes,
                slots: &mut self.slots,
                free: &mut self.free,
                class: Class::ALL[c],
                out: &mut *out,
                popped: 0,
                dropped: 0,
            };
            let taken = codel.dequeue(&mut head, now_ns, &params);
            let (popped, dropped) = (head.popped, head.dropped);
            entry.codel = codel;
            queue.packets -= popped;
            let counters = &mut self.counters[c];
            counters.queued_packets -= u64::from(popped);
            counters.drops[DropReason::Codel.index()] += u64::from(dropped);
            self.tunnels[tunnel].packets -= popped;
            self.held -= popped;
            let entry = &mut self.flows[flow as usize];
            if let Some(slot) = taken {
                // The flow keeps its place at the head while it has deficit.
                let slot_entry = &self.slots[slot as usize];
                entry.deficit -= slot_entry.cost as i32;
                return Some((slot, now_ns.saturating_sub(slot_entry.enqueued_ns)));
            }
            // Emptied. A new flow goes to the old list once, so that a flow
            // cannot stay new by emptying over and over.
            let queue = &mut self.tunnels[tunnel].classes[c];
            if from_new {
                queue.new_flows.pop_front(&mut self.flows);
                if queue.old_flows.is_empty() {
                    self.unlist(flow);
                } else {
                    queue.old_flows.push_back(&mut self.flows, flow);
                }
            } else {
                queue.old_flows.pop_front(&mut self.flows);
                self.unlist(flow);
            }
        }
    }

    /// Marks flow queue `flow` free.
    fn unlist(&mut self, flow: u32) {
        self.listed[flow as usize / WAYS] &= !(1 << (flow as usize % WAYS));
    }

    /// Frees `slot` and hands back its packet.
    fn release(&mut self, slot: u32) -> H {
        let packet = self.slots[slot as usize]
            .packet
            .take()
            .expect("a queued slot holds a packet");
        self.free.push_back(&mut self.slots, slot);
        packet
    }
}

/// The class of `tunnel` to serve next and how it got its turn, or when
/// one could be served (every class with packets is at its limit).
fn pick_class(
    tunnel: &mut Tunnel,
    config: &ShaperConfig,
    now_ns: u64,
) -> Result<(usize, Turn), u64> {
    let realtime = &mut tunnel.classes[0];
    if realtime.packets > 0 {
        if let Some(share) = realtime.assured.as_mut() {
            share.refill(now_ns);
            if share.conforms() {
                return Ok((0, Turn::Assured));
            }
        }
    }
    let mut eligible = 0u8;
    let mut wake = u64::MAX;
    for c in 1..CLASSES {
        let queue = &mut tunnel.classes[c];
        if queue.packets == 0 {
            continue;
        }
        if let Some(ceiling) = queue.ceiling.as_mut() {
            ceiling.refill(now_ns);
            if !ceiling.conforms() {
                wake = wake.min(ceiling.ready_at());
                continue;
            }
        }
        if let Some(minimum) = queue.assured.as_mut() {
            minimum.refill(now_ns);
            if minimum.conforms() {
                return Ok((c, Turn::Assured));
            }
        }
        eligible |= 1 << c;
    }
    if eligible != 0 {
        loop {
            let c = 1 + tunnel.cursor as usize;
            if eligible & (1 << c) != 0 {
                let queue = &mut tunnel.classes[c];
                if queue.deficit > 0 {
                    return Ok((c, Turn::Shared));
                }
                queue.deficit += i32::from(config.weighted[c - 1].weight) * WEIGHT_QUANTUM;
            }
            tunnel.cursor = (tunnel.cursor + 1) % 4;
        }
    }
    if tunnel.classes[0].packets > 0 {
        return Ok((0, Turn::Spare));
    }
    Err(wake)
}

/// Fresh class queues for a parent of `rate_bps`: the RealTime share and
/// each class's minimum and limit as buckets.
fn class_queues(config: &ShaperConfig, rate_bps: u64, now_ns: u64) -> [ClassQueue; CLASSES] {
    let bucket = |percent: u8| {
        let rate = rate_bps * u64::from(percent) / 100;
        TokenBucket::new(rate, default_burst(rate, CLASS_BURST_NS), now_ns)
    };
    let queue = |assured: Option<TokenBucket>, ceiling: Option<TokenBucket>| ClassQueue {
        new_flows: List::EMPTY,
        old_flows: List::EMPTY,
        packets: 0,
        deficit: 0,
        assured,
        ceiling,
    };
    let weighted = |i: usize| {
        let class = &config.weighted[i];
        queue(
            (class.min_percent > 0).then(|| bucket(class.min_percent)),
            (class.limit_percent < 100).then(|| bucket(class.limit_percent)),
        )
    };
    [
        queue(
            (config.realtime.limit_percent > 0).then(|| bucket(config.realtime.limit_percent)),
            None,
        ),
        weighted(0),
        weighted(1),
        weighted(2),
        weighted(3),
    ]
}

/// `old` at the rate of `fresh`, keeping its credit; or `fresh`, or none.
fn rerate(
    old: Option<TokenBucket>,
    fresh: Option<TokenBucket>,
    now_ns: u64,
) -> Option<TokenBucket> {
    match (old, fresh) {
        (Some(mut old), Some(fresh)) => {
            old.set(fresh.rate_bps(), fresh.burst_bytes(), now_ns);
            Some(old)
        }
        (_, fresh) => fresh,
    }
}

/// A flow queue's head as CoDel sees it.
struct FlowHead<'a, H, F> {
    packets: &'a mut List,
    bytes: &'a mut u32,
    slots: &'a mut Vec<Slot<H>>,
    free: &'a mut List,
    class: Class,
    out: &'a mut F,
    popped: u32,
    dropped: u32,
}

impl<H, F: FnMut(Released<H>)> CodelQueue for FlowHead<'_, H, F> {
    type Packet = u32;

    fn pop(&mut self) -> Option<(u32, u64, u32)> {
        let slot = self.packets.pop_front(self.slots)?;
        let entry = &self.slots[slot as usize];
        *self.bytes -= entry.cost;
        self.popped += 1;
        Some((slot, entry.enqueued_ns, *self.bytes))
    }

    fn drop_packet(&mut self, slot: u32) {
        let packet = self.slots[slot as usize]
            .packet
            .take()
            .expect("a queued slot holds a packet");
        self.free.push_back(self.slots, slot);
        self.dropped += 1;
        (self.out)(Released::Dropped {
            packet,
            class: self.class,
        });
    }
}
