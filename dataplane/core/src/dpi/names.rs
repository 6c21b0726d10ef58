//! The names the gateway saw resolved: each address in a DNS answer that
//! passed through it, with the catalogue application of the name asked (or
//! of an alias on the way to the address), for as long as a client may use
//! the answer. A web session to such an address whose own packets name no
//! application (no server name, a certificate that names none) takes the
//! resolved name's: the session to an address the client just resolved as
//! `*.nflxvideo.net` is Netflix.
//!
//! One cache per worker, bounded: when it is full the entry written longest
//! ago goes. Time is the caller's (the worker's clock), so aging is tested
//! with injected time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Addresses remembered per worker.
pub const CAPACITY: usize = 4096;

/// How long an answer is remembered at least, whatever its TTL: clients keep
/// answers longer than short CDN TTLs say (browsers hold them for a minute).
const MIN_TTL_S: u32 = 60;
/// How long an answer is remembered at most.
const MAX_TTL_S: u32 = 3600;

#[derive(Clone, Copy, Debug)]
struct Entry {
    app: u16,
    expires_ns: u64,
    /// When it was written, in writes: tells the live entry from its
    /// earlier writes still queued in `order`.
    written: u64,
}

/// Addresses and the application of the name they were resolved for.
#[derive(Debug)]
pub struct NameCache {
    entries: HashMap<IpAddr, Entry, ahash::RandomState>,
    /// Writes, oldest first; an entry written again is queued again, and its
    /// earlier write found stale when it reaches the front.
    order: VecDeque<(IpAddr, u64)>,
    writes: u64,
    capacity: usize,
}

impl NameCache {
    /// An empty cache of `capacity` addresses, allocated whole at its first
    /// answer (an inspector that never sees one, as most in tests and in
    /// fuzzing, never pays for it) and never grown after.
    pub fn new(capacity: usize) -> NameCache {
        NameCache {
            entries: HashMap::with_hasher(ahash::RandomState::new()),
            order: VecDeque::new(),
            writes: 0,
            capacity: capacity.max(1),
        }
    }

    /// Remembers that `addr` was resolved for a name of `app`, valid for
    /// `ttl_s` seconds (within the bounds above) from `now_ns`.
    pub fn insert(&mut self, addr: IpAddr, app: u16, ttl_s: u32, now_ns: u64) {
        if self.order.capacity() == 0 {
            self.entries.reserve(self.capacity + 1);
            self.order.reserve(2 * self.capacity + 1);
        }
        let ttl_ns = u64::from(ttl_s.clamp(MIN_TTL_S, MAX_TTL_S)) * 1_000_000_000;
        self.writes += 1;
        let entry = Entry {
            app,
            expires_ns: now_ns.saturating_add(ttl_ns),
            written: self.writes,
        };
        if self.entries.insert(addr, entry).is_none() && self.entries.len() > self.capacity {
            self.evict_one();
        }
        if self.order.len() >= 2 * self.capacity {
            // Writes of addresses written again since: drop them unread.
            self.order
                .retain(|(a, w)| self.entries.get(a).is_some_and(|e| e.written == *w));
        }
        self.order.push_back((addr, self.writes));
    }

    /// Forgets the entry written longest ago.
    fn evict_one(&mut self) {
        while let Some((addr, written)) = self.order.pop_front() {
            if self
                .entries
                .get(&addr)
                .is_some_and(|e| e.written == written)
            {
                self.entries.remove(&addr);
                return;
            }
        }
    }

    /// The application `addr` was resolved for, if that answer is still valid at `now_ns`.
    pub fn get(&self, addr: &IpAddr, now_ns: u64) -> Option<u16> {
        self.entries
            .get(addr)
            .filter(|e| now_ns < e.expires_ns)
            .map(|e| e.app)
    }

    /// Forgets everything (a new catalogue numbers its applications anew).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn addr(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn an_answer_is_used_for_its_ttl_within_the_bounds() {
        let mut cache = NameCache::new(8);
        cache.insert(addr(1), 7, 300, 10 * S);
        assert_eq!(cache.get(&addr(1), 10 * S), Some(7));
        assert_eq!(cache.get(&addr(1), 309 * S), Some(7));
        assert_eq!(cache.get(&addr(1), 310 * S), None, "expired");
        // A TTL of 1 s still holds for a minute, one of a day for an hour.
        cache.insert(addr(2), 3, 1, 0);
        assert_eq!(cache.get(&addr(2), 59 * S), Some(3));
        assert_eq!(cache.get(&addr(2), 60 * S), None);
        cache.insert(addr(3), 3, 86_400, 0);
        assert_eq!(cache.get(&addr(3), 3600 * S), None);
        // Written again: the new application and time hold.
        cache.insert(addr(1), 9, 300, 400 * S);
        assert_eq!(cache.get(&addr(1), 500 * S), Some(9));
        assert_eq!(cache.get(&addr(4), 0), None);
    }

    #[test]
    fn a_full_cache_forgets_what_was_written_longest_ago() {
        let mut cache = NameCache::new(3);
        for i in 0..3 {
            cache.insert(addr(i), i as u16, 300, 0);
        }
        // Address 0 written again: now 1 is the oldest.
        cache.insert(addr(0), 10, 300, 0);
        cache.insert(addr(3), 3, 300, 0);
        assert_eq!(cache.entries.len(), 3);
        assert_eq!(cache.get(&addr(1), 0), None);
        assert_eq!(cache.get(&addr(0), 0), Some(10));
        assert_eq!(cache.get(&addr(3), 0), Some(3));
        // Many rewrites of one address keep the queue bounded.
        for _ in 0..100 {
            cache.insert(addr(3), 3, 300, 0);
        }
        assert!(cache.order.len() <= 2 * 3);
        assert_eq!(cache.entries.len(), 3);
        cache.clear();
        assert!(cache.entries.is_empty());
    }
}
