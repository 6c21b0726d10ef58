//! The worker's side of egress shaping: which ports are shaped, by which
//! worker, and the schedulers this worker runs.
//!
//! Every worker transmits on its own queue of every port, but a port's
//! rate is one budget: two workers each shaping to it would let twice the
//! rate through. So each shaped egress has one owner, worker
//! `shaper index % workers`, that runs its [`Scheduler`]; the other
//! workers hand the egress's packets to the owner through a bounded queue
//! (a full queue drops, counted as `shaper_handoff_full`). The owner
//! enqueues what it is handed and what it forwards itself, and sends what
//! the scheduler releases on its own transmit queue of the port. A packet
//! held by a scheduler keeps its buffer: nothing is copied.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::PacketTx;
use crate::config::uplinks::EgressShaper;
use crate::config::Snapshot;
use crate::frame::Frame;
use crate::pipeline::Shaping;
use crate::qos::{Class, Layout, Released, Scheduler};
use crate::stats::{Counters, DropReason, EgressReport, SojournHistogram};
use crate::tunnel::outer::ETHERNET_LEN;
use crate::BURST_SIZE;

/// Packets one worker can queue for another's shaper.
pub const SHAPER_INBOX_CAPACITY: usize = 4096;
/// Tunnel slots of a shaper at the least, so that adding a few peers
/// does not lay it out anew.
const MIN_TUNNEL_SLOTS: usize = 64;
/// Flow queues per class of each tunnel slot, at most and at the least.
const FLOW_QUEUES: (usize, usize) = (64, 8);
/// Flow queues of a shaper in all, shared out between its tunnel slots and
/// classes (64 each for 64 slots) down to the least per class: about 13 MB
/// of scheduler state for 4 096 slots, 1.3 MB for 64.
const FLOW_QUEUE_BUDGET: usize = MIN_TUNNEL_SLOTS * Class::COUNT * FLOW_QUEUES.0;
/// Packets a shaper holds in all. It stays well below the 8 128 packets of
/// a WireGuard receiver's replay window (Linux's and wireguard-go's), so
/// that a peer never refuses a data packet the scheduler let others pass.
const SHAPER_PACKETS: usize = 4096;

/// A packet for the worker that shapes its egress.
#[derive(Debug)]
pub struct ToShape<F> {
    /// The port it leaves by.
    pub port: u16,
    /// How it is queued.
    pub shaping: Shaping,
    /// The frame, headers complete.
    pub frame: F,
}

/// Every worker's queue of packets for the shapers it runs.
pub type ShaperInboxes<F> = Arc<[ArrayQueue<ToShape<F>>]>;

/// One queue of packets to shape per worker.
pub fn shaper_inboxes<F>(workers: usize) -> ShaperInboxes<F> {
    (0..workers)
        .map(|_| ArrayQueue::new(SHAPER_INBOX_CAPACITY))
        .collect()
}

/// What a worker does with packets for a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Egress {
    /// Not shaped: straight to the transmit queue.
    Direct,
    /// Shaped by this worker's `owned[index]`.
    Local(usize),
    /// Shaped by the worker of this index.
    Remote(usize),
}

/// One egress this worker shapes.
struct Owned<F> {
    name: Arc<str>,
    port: u16,
    scheduler: Scheduler<F>,
    /// When it may release again; `u64::MAX` while it holds nothing.
    due_ns: u64,
    sojourn: [SojournHistogram; Class::COUNT],
}

/// The egresses a worker shapes.
pub(super) struct Shapers<F> {
    worker: usize,
    by_port: Vec<Egress>,
    owned: Vec<Owned<F>>,
    pub(super) inboxes: ShaperInboxes<F>,
}

impl<F> std::fmt::Debug for Shapers<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shapers")
            .field("by_port", &self.by_port)
            .field("owned", &self.owned.len())
            .finish_non_exhaustive()
    }
}

impl<F: Frame> Shapers<F> {
    /// Worker `worker`'s shapers for `cfg`.
    pub(super) fn new(
        worker: usize,
        inboxes: ShaperInboxes<F>,
        cfg: &Snapshot,
        now_ns: u64,
        counters: &mut Counters,
        tx: &mut [impl PacketTx<Frame = F>],
    ) -> Self {
        let mut shapers = Shapers {
            worker,
            by_port: Vec::new(),
            owned: Vec::new(),
            inboxes,
        };
        shapers.reconfigure(cfg, now_ns, counters, tx);
        shapers
    }

    /// Follows a new configuration: an egress it keeps shaping is re-rated
    /// with its packets in place; one it no longer shapes sends what it
    /// held straight out.
    pub(super) fn reconfigure(
        &mut self,
        cfg: &Snapshot,
        now_ns: u64,
        counters: &mut Counters,
        tx: &mut [impl PacketTx<Frame = F>],
    ) {
        let workers = self.inboxes.len();
        let mut old = std::mem::take(&mut self.owned);
        self.by_port = vec![Egress::Direct; cfg.ports.len()];
        for (index, shaper) in cfg.shapers.iter().enumerate() {
            let owner = index % workers;
            let port = usize::from(shaper.port);
            if owner != self.worker {
                self.by_port[port] = Egress::Remote(owner);
                continue;
            }
            let kept = old
                .iter()
                .position(|o| o.port == shaper.port)
                .map(|i| old.swap_remove(i));
            let layout = layout_for(cfg.site.tunnel_slots.count());
            let mut owned = match kept {
                Some(mut owned) => {
                    owned.name = shaper.name.clone();
                    let scheduler = &mut owned.scheduler;
                    scheduler
                        .reconfigure(shaper.config, now_ns)
                        .expect("the configuration validated the shaper");
                    if scheduler.layout() != layout {
                        scheduler
                            .resize(layout, now_ns)
                            .expect("the pool of packets is the same size");
                    }
                    owned
                }
                None => Owned::new(shaper, layout, now_ns),
            };
            let rates = cfg.site.tunnel_slots.rates();
            for slot in 0..layout.tunnels {
                let rate = rates.get(slot).copied().flatten();
                owned
                    .scheduler
                    .set_tunnel_rate(slot, rate, now_ns)
                    .expect("the configuration validated the peers' rates");
            }
            self.by_port[port] = Egress::Local(self.owned.len());
            self.owned.push(owned);
        }
        for mut gone in old {
            let Some(txq) = tx.get_mut(usize::from(gone.port)) else {
                let freed = gone.scheduler.drain().count();
                counters.drop_n(DropReason::NoRoute, freed as u64);
                continue;
            };
            for frame in gone.scheduler.drain() {
                txq.push(frame);
            }
        }
    }

    /// Sends `frame` out of `port`: through the port's shaper if it has
    /// one, else straight to `tx`.
    #[inline]
    pub(super) fn transmit(
        &mut self,
        port: u16,
        shaping: Shaping,
        frame: F,
        now_ns: u64,
        counters: &mut Counters,
        tx: &mut [impl PacketTx<Frame = F>],
    ) {
        match self.by_port.get(usize::from(port)) {
            None | Some(Egress::Direct) => match tx.get_mut(usize::from(port)) {
                Some(txq) => txq.push(frame),
                None => counters.drop(DropReason::NoRoute),
            },
            Some(&Egress::Local(index)) => {
                self.owned[index].offer(shaping, frame, now_ns, counters, tx)
            }
            Some(&Egress::Remote(worker)) => {
                let handed = ToShape {
                    port,
                    shaping,
                    frame,
                };
                if self.inboxes[worker].push(handed).is_err() {
                    counters.drop(DropReason::ShaperHandoffFull);
                }
            }
        }
    }

    /// Queues what other workers handed over (a burst's worth at most).
    /// Returns how much.
    pub(super) fn take_inbox(
        &mut self,
        now_ns: u64,
        counters: &mut Counters,
        tx: &mut [impl PacketTx<Frame = F>],
    ) -> usize {
        let mut taken = 0;
        while taken < BURST_SIZE {
            let Some(handed) = self.inboxes[self.worker].pop() else {
                break;
            };
            taken += 1;
            match self.by_port.get(usize::from(handed.port)) {
                Some(&Egress::Local(index)) => {
                    self.owned[index].offer(handed.shaping, handed.frame, now_ns, counters, tx)
                }
                // A reload moved the shaper while the packet was on its way.
                _ => match tx.get_mut(usize::from(handed.port)) {
                    Some(txq) => txq.push(handed.frame),
                    None => counters.drop(DropReason::NoRoute),
                },
            }
        }
        taken
    }

    /// Sends what each shaper lets go at `now_ns`. Returns how many packets.
    pub(super) fn release(
        &mut self,
        now_ns: u64,
        counters: &mut Counters,
        tx: &mut [impl PacketTx<Frame = F>],
    ) -> usize {
        let mut sent = 0;
        for owned in &mut self.owned {
            if owned.due_ns > now_ns {
                continue;
            }
            let Some(txq) = tx.get_mut(usize::from(owned.port)) else {
                continue;
            };
            let sojourn = &mut owned.sojourn;
            let next = owned
                .scheduler
                .dequeue(now_ns, BURST_SIZE, |out| match out {
                    Released::Sent {
                        packet,
                        class,
                        sojourn_ns,
                    } => {
                        sojourn[class.index()].observe(sojourn_ns);
                        sent += 1;
                        txq.push(packet);
                    }
                    Released::Dropped { .. } => counters.drop(DropReason::Shaper),
                });
            owned.due_ns = next.unwrap_or(u64::MAX);
        }
        sent
    }

    /// Packets the shapers hold.
    pub(super) fn held(&self) -> usize {
        self.owned.iter().map(|o| o.scheduler.held()).sum()
    }

    /// The shapers' figures, for the metrics endpoint.
    pub(super) fn report(&self) -> Vec<EgressReport> {
        self.owned
            .iter()
            .map(|o| EgressReport {
                name: o.name.clone(),
                classes: *o.scheduler.counters(),
                sojourn: o.sojourn.clone(),
            })
            .collect()
    }

    /// Frees every held packet and what waits in this worker's inbox (at
    /// shutdown), counted as the shaper's drops.
    pub(super) fn shut_down(&mut self, counters: &mut Counters) {
        let mut freed = 0;
        for owned in &mut self.owned {
            freed += owned.scheduler.drain().count();
        }
        freed += std::iter::from_fn(|| self.inboxes[self.worker].pop()).count();
        counters.drop_n(DropReason::Shaper, freed as u64);
    }
}

/// The layout of a shaper for `slots` tunnel slots.
fn layout_for(slots: usize) -> Layout {
    let tunnels = slots.next_power_of_two().max(MIN_TUNNEL_SLOTS);
    let flow_queues =
        (FLOW_QUEUE_BUDGET / (tunnels * Class::COUNT)).clamp(FLOW_QUEUES.1, FLOW_QUEUES.0);
    Layout {
        tunnels,
        flow_queues,
        packets: SHAPER_PACKETS,
    }
}

impl<F> Owned<F> {
    fn new(shaper: &EgressShaper, layout: Layout, now_ns: u64) -> Self {
        Owned {
            name: shaper.name.clone(),
            port: shaper.port,
            scheduler: Scheduler::new(layout, shaper.config, now_ns)
                .expect("the configuration validated the shaper"),
            due_ns: u64::MAX,
            sojourn: Default::default(),
        }
    }
}

impl<F: Frame> Owned<F> {
    /// Sends `frame` at once when the scheduler lets it pass (nothing held,
    /// credit everywhere), else queues it; a refused one is freed and
    /// counted (by class and reason in the scheduler).
    #[inline]
    fn offer(
        &mut self,
        shaping: Shaping,
        frame: F,
        now_ns: u64,
        counters: &mut Counters,
        tx: &mut [impl PacketTx<Frame = F>],
    ) {
        // The framing overhead covers the Ethernet header.
        let wire_bytes = frame.len().saturating_sub(ETHERNET_LEN) as u32;
        let tunnel = usize::from(shaping.tunnel);
        if self
            .scheduler
            .pass_through(tunnel, shaping.class, wire_bytes, now_ns)
        {
            self.sojourn[shaping.class.index()].observe(0);
            match tx.get_mut(usize::from(self.port)) {
                Some(txq) => txq.push(frame),
                None => counters.drop(DropReason::NoRoute),
            }
            return;
        }
        let queued = self.scheduler.enqueue(
            frame,
            tunnel,
            shaping.class,
            shaping.flow_hash,
            wire_bytes,
            now_ns,
        );
        match queued {
            // Releasing may now be due (a no-op if it was already).
            Ok(()) => self.due_ns = self.due_ns.min(now_ns),
            Err(_refused) => counters.drop(DropReason::Shaper),
        }
    }
}
