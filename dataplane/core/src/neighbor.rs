//! The neighbour table (ARP for IPv4, Neighbor Discovery for IPv6).
//!
//! Workers see the table as an immutable [`NeighborSnapshot`] published
//! through `arc-swap`; they never lock. What they learn from ARP and ND
//! packets travels to the [`NeighborManager`] (on the control thread) over a
//! bounded channel; the manager merges, ages and republishes. A full channel
//! loses a learning event, never a packet: resolution is retried anyway.
//!
//! Entries follow a simplified RFC 4861 life cycle: *reachable* for
//! `reachable_s` after confirmation, then *stale* (still used, while the
//! worker that uses it re-probes), and removed `stale_s` later.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::config::{NeighborSection, StaticNeighbor};
use crate::published::Published;

/// Most entries the table holds; learning beyond it is refused (and counted),
/// so a flood of forged ARP cannot exhaust memory.
pub const MAX_ENTRIES: usize = 65_536;

/// One resolved neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborEntry {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// When it was last confirmed (ns on the data-plane clock).
    pub confirmed_ns: u64,
    /// Configured, never aged.
    pub is_static: bool,
}

impl NeighborEntry {
    /// Whether it needs re-confirmation at `now_ns`.
    #[inline]
    pub fn is_stale(&self, now_ns: u64, reachable_ns: u64) -> bool {
        !self.is_static && now_ns.saturating_sub(self.confirmed_ns) > reachable_ns
    }
}

/// An immutable view of the table that workers read.
#[derive(Debug, Default)]
pub struct NeighborSnapshot {
    /// Increases with every publication.
    pub generation: u64,
    entries: HashMap<(u16, IpAddr), NeighborEntry, ahash::RandomState>,
}

impl NeighborSnapshot {
    /// The entry for `ip` on port `port`.
    #[inline]
    pub fn get(&self, port: u16, ip: IpAddr) -> Option<&NeighborEntry> {
        self.entries.get(&(port, ip))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, for display.
    pub fn iter(&self) -> impl Iterator<Item = (&(u16, IpAddr), &NeighborEntry)> {
        self.entries.iter()
    }
}

/// Something a worker saw on the wire about a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborEvent {
    /// Port it was seen on.
    pub port: u16,
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// When (ns).
    pub now_ns: u64,
    /// May create an entry (a reply to us, or a request addressed to us);
    /// otherwise it only refreshes an existing one (gratuitous ARP, RFC 826's merge rule).
    pub create: bool,
}

/// Where workers find the current snapshot.
#[derive(Debug)]
pub struct NeighborShared {
    snapshot: Published<NeighborSnapshot>,
    refused: AtomicU64,
}

impl Default for NeighborShared {
    fn default() -> Self {
        NeighborShared {
            snapshot: Published::new(NeighborSnapshot::default()),
            refused: AtomicU64::new(0),
        }
    }
}

impl NeighborShared {
    /// The generation of the current snapshot: one atomic load, cheap enough
    /// to check every burst.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.snapshot.generation()
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<NeighborSnapshot> {
        self.snapshot.load()
    }

    /// Learning events refused because the table was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Owns the authoritative table; runs on the control thread.
#[derive(Debug)]
pub struct NeighborManager {
    entries: HashMap<(u16, IpAddr), NeighborEntry, ahash::RandomState>,
    settings: NeighborSection,
    shared: Arc<NeighborShared>,
    events: Receiver<NeighborEvent>,
    dirty: bool,
}

impl NeighborManager {
    /// A manager publishing to `shared` and fed by `events`.
    pub fn new(
        settings: NeighborSection,
        shared: Arc<NeighborShared>,
        events: Receiver<NeighborEvent>,
    ) -> Self {
        NeighborManager {
            entries: HashMap::default(),
            settings,
            shared,
            events,
            dirty: true,
        }
    }

    /// Replaces the static entries and timing settings (on start and on reload).
    pub fn configure(&mut self, settings: &NeighborSection, statics: &[StaticNeighbor]) {
        self.settings = settings.clone();
        self.entries.retain(|_, e| !e.is_static);
        for s in statics {
            self.entries.insert(
                (s.port, s.ip),
                NeighborEntry {
                    mac: s.mac,
                    confirmed_ns: 0,
                    is_static: true,
                },
            );
        }
        self.dirty = true;
    }

    /// Merges one event.
    pub fn apply(&mut self, ev: NeighborEvent) {
        if ev.mac[0] & 1 != 0 || ev.mac == [0; 6] {
            return; // never resolve to a multicast or null MAC
        }
        let key = (ev.port, ev.ip);
        match self.entries.get_mut(&key) {
            Some(e) if e.is_static => {}
            Some(e) => {
                if e.mac != ev.mac {
                    self.dirty = true;
                }
                e.mac = ev.mac;
                // Refresh times are not worth a republication on their own,
                // unless the entry had gone stale (workers would keep probing).
                let reachable_ns = u64::from(self.settings.reachable_s) * 1_000_000_000;
                if e.is_stale(ev.now_ns, reachable_ns / 2) {
                    self.dirty = true;
                }
                e.confirmed_ns = e.confirmed_ns.max(ev.now_ns);
            }
            None if ev.create => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.shared.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.entries.insert(
                    key,
                    NeighborEntry {
                        mac: ev.mac,
                        confirmed_ns: ev.now_ns,
                        is_static: false,
                    },
                );
                self.dirty = true;
            }
            None => {}
        }
    }

    /// Drains pending events, removes expired entries and publishes a new
    /// snapshot if anything changed. Returns whether it published.
    pub fn tick(&mut self, now_ns: u64) -> bool {
        self.tick_with(now_ns, false)
    }

    /// Like [`NeighborManager::tick`], publishing even when nothing changed if `force`.
    pub fn tick_with(&mut self, now_ns: u64, force: bool) -> bool {
        self.dirty |= force && !self.entries.is_empty();
        while let Ok(ev) = self.events.try_recv() {
            self.apply(ev);
        }
        let lifetime_ns = (u64::from(self.settings.reachable_s) + u64::from(self.settings.stale_s))
            * 1_000_000_000;
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.is_static || now_ns.saturating_sub(e.confirmed_ns) <= lifetime_ns);
        if self.entries.len() != before {
            self.dirty = true;
        }
        if !self.dirty {
            return false;
        }
        // The manager is the only writer, so the next generation is known.
        self.shared.snapshot.store(NeighborSnapshot {
            generation: self.shared.generation() + 1,
            entries: self.entries.clone(),
        });
        self.dirty = false;
        true
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn manager() -> (
        NeighborManager,
        crossbeam_channel::Sender<NeighborEvent>,
        Arc<NeighborShared>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(16);
        let shared = Arc::new(NeighborShared::default());
        let settings = NeighborSection {
            reachable_s: 30,
            stale_s: 60,
            ..NeighborSection::default()
        };
        (
            NeighborManager::new(settings, shared.clone(), rx),
            tx,
            shared,
        )
    }

    fn ev(ip: &str, mac: u8, now: u64, create: bool) -> NeighborEvent {
        NeighborEvent {
            port: 1,
            ip: ip.parse().unwrap(),
            mac: [2, 0, 0, 0, 0, mac],
            now_ns: now,
            create,
        }
    }

    #[test]
    fn learned_entry_is_published_then_expires() {
        let (mut m, tx, shared) = manager();
        tx.send(ev("10.0.0.2", 7, 5 * S, true)).unwrap();
        assert!(m.tick(5 * S));
        let snap = shared.load();
        assert_eq!(snap.get(1, "10.0.0.2".parse().unwrap()).unwrap().mac[5], 7);
        assert_eq!(shared.generation(), snap.generation);
        assert!(!m.tick(50 * S), "nothing changed, nothing published");
        assert!(m.tick(5 * S + 91 * S), "expired after reachable + stale");
        assert!(shared.load().is_empty());
    }

    #[test]
    fn gratuitous_update_does_not_create() {
        let (mut m, tx, shared) = manager();
        tx.send(ev("10.0.0.3", 1, S, false)).unwrap();
        m.tick(S);
        assert!(shared.load().get(1, "10.0.0.3".parse().unwrap()).is_none());
        tx.send(ev("10.0.0.3", 1, S, true)).unwrap();
        tx.send(ev("10.0.0.3", 9, 2 * S, false)).unwrap();
        m.tick(2 * S);
        assert_eq!(
            shared
                .load()
                .get(1, "10.0.0.3".parse().unwrap())
                .unwrap()
                .mac[5],
            9
        );
    }

    #[test]
    fn static_entries_never_age_or_change() {
        let (mut m, tx, shared) = manager();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        m.configure(
            &NeighborSection::default(),
            &[StaticNeighbor {
                port: 1,
                ip,
                mac: [2, 1, 1, 1, 1, 1],
            }],
        );
        tx.send(ev("10.0.0.9", 5, S, true)).unwrap();
        m.tick(10_000 * S);
        let snap = shared.load();
        let e = snap.get(1, ip).unwrap();
        assert!(e.is_static);
        assert_eq!(e.mac, [2, 1, 1, 1, 1, 1]);
        assert!(!e.is_stale(u64::MAX, 1));
    }

    #[test]
    fn multicast_macs_are_ignored() {
        let (mut m, tx, shared) = manager();
        let mut e = ev("10.0.0.4", 1, S, true);
        e.mac = [1, 0, 0x5e, 0, 0, 1];
        tx.send(e).unwrap();
        m.tick(S);
        assert!(shared.load().is_empty());
    }
}
