//! A bounded map whose entries expire: what one flow told the worker about
//! flows to come (the names resolved in DNS answers, the data connections an
//! FTP control connection announced), kept for as long as it is useful and
//! never more than a fixed number of entries. When it is full, the entry
//! written longest ago goes. Time is the caller's (the worker's clock), so
//! aging is tested with injected time.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Clone, Copy, Debug)]
struct Entry<V> {
    value: V,
    expires_ns: u64,
    /// When it was written, in writes: tells the live entry from its
    /// earlier writes still queued in `order`.
    written: u64,
}

/// Keys and their values until each expires, at most `capacity` of them.
#[derive(Debug)]
pub struct Recent<K, V> {
    entries: HashMap<K, Entry<V>, ahash::RandomState>,
    /// Writes, oldest first; an entry written again is queued again, and its
    /// earlier write found stale when it reaches the front.
    order: VecDeque<(K, u64)>,
    writes: u64,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V: Copy> Recent<K, V> {
    /// An empty map of `capacity` entries, allocated whole at its first
    /// write (a worker, test or fuzz input that never writes one never pays
    /// for it) and never grown after.
    pub fn new(capacity: usize) -> Recent<K, V> {
        Recent {
            entries: HashMap::with_hasher(ahash::RandomState::new()),
            order: VecDeque::new(),
            writes: 0,
            capacity: capacity.max(1),
        }
    }

    /// Holds `value` for `key` until `expires_ns` (replacing what it held).
    pub fn insert(&mut self, key: K, value: V, expires_ns: u64) {
        if self.order.capacity() == 0 {
            self.entries.reserve(self.capacity + 1);
            self.order.reserve(2 * self.capacity + 1);
        }
        self.writes += 1;
        let entry = Entry {
            value,
            expires_ns,
            written: self.writes,
        };
        if self.entries.insert(key, entry).is_none() && self.entries.len() > self.capacity {
            self.evict_one();
        }
        if self.order.len() >= 2 * self.capacity {
            // Writes of keys written again since: drop them unread.
            self.order
                .retain(|(k, w)| self.entries.get(k).is_some_and(|e| e.written == *w));
        }
        self.order.push_back((key, self.writes));
    }

    /// Forgets the entry written longest ago.
    fn evict_one(&mut self) {
        while let Some((key, written)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.written == written) {
                self.entries.remove(&key);
                return;
            }
        }
    }

    /// The value held for `key`, if it has not expired at `now_ns`.
    pub fn get(&self, key: &K, now_ns: u64) -> Option<V> {
        self.entries
            .get(key)
            .filter(|e| now_ns < e.expires_ns)
            .map(|e| e.value)
    }

    /// The value held for `key`, if it has not expired at `now_ns`, which
    /// is then forgotten (an expired one too).
    pub fn take(&mut self, key: &K, now_ns: u64) -> Option<V> {
        self.entries
            .remove(key)
            .filter(|e| now_ns < e.expires_ns)
            .map(|e| e.value)
    }

    /// Forgets the entries written longest ago that have expired at
    /// `now_ns` (stopping at the first that has not: entries written later
    /// may expire sooner, and stay until they reach the front).
    pub fn forget_expired(&mut self, now_ns: u64) {
        while let Some(&(key, written)) = self.order.front() {
            match self.entries.get(&key) {
                Some(e) if e.written == written && now_ns < e.expires_ns => return,
                Some(e) if e.written == written => {
                    self.entries.remove(&key);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// True when nothing is held (expired entries count until overwritten,
    /// taken, evicted or forgotten as expired).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_holds_until_it_expires_and_a_new_write_replaces_it() {
        let mut map: Recent<u32, u16> = Recent::new(8);
        map.insert(1, 7, 310);
        assert_eq!(map.get(&1, 10), Some(7));
        assert_eq!(map.get(&1, 309), Some(7));
        assert_eq!(map.get(&1, 310), None, "expired");
        map.insert(1, 9, 900);
        assert_eq!(map.get(&1, 500), Some(9));
        assert_eq!(map.get(&4, 0), None);
    }

    #[test]
    fn a_taken_entry_is_gone() {
        let mut map: Recent<u32, ()> = Recent::new(8);
        assert!(map.is_empty());
        map.insert(5, (), 100);
        map.insert(6, (), 100);
        assert_eq!(map.take(&5, 50), Some(()));
        assert_eq!(map.take(&5, 50), None);
        assert_eq!(map.take(&6, 100), None, "expired: not given, but forgotten");
        assert!(map.is_empty());
    }

    #[test]
    fn expired_entries_at_the_front_are_forgotten() {
        let mut map: Recent<u32, ()> = Recent::new(8);
        map.insert(1, (), 100);
        map.insert(2, (), 300);
        map.insert(3, (), 50);
        map.insert(1, (), 150); // written again: its first write is stale
        map.forget_expired(120);
        // 1's stale write is passed over; 2 (live until 300) stops the walk,
        // so 3 stays though expired, and so does 1's new write.
        assert_eq!(map.entries.len(), 3);
        map.forget_expired(200);
        assert_eq!(map.entries.len(), 3, "2 still stops the walk");
        map.forget_expired(600);
        assert!(map.is_empty());
        assert!(map.order.is_empty());
    }

    #[test]
    fn a_full_map_forgets_what_was_written_longest_ago() {
        let mut map: Recent<u32, u16> = Recent::new(3);
        for i in 0..3 {
            map.insert(i, i as u16, 300);
        }
        // Key 0 written again: now 1 is the oldest.
        map.insert(0, 10, 300);
        map.insert(3, 3, 300);
        assert_eq!(map.entries.len(), 3);
        assert_eq!(map.get(&1, 0), None);
        assert_eq!(map.get(&0, 0), Some(10));
        assert_eq!(map.get(&3, 0), Some(3));
        // Many rewrites of one key keep the queue bounded.
        for _ in 0..100 {
            map.insert(3, 3, 300);
        }
        assert!(map.order.len() <= 2 * 3);
        assert_eq!(map.entries.len(), 3);
        map.clear();
        assert!(map.is_empty());
    }
}
