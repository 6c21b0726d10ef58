//! Per-worker flow table: fixed capacity, no allocation after construction,
//! bounded-time lookup and insert under hostile keys, incremental idle aging.
//!
//! Each poll-mode worker owns one [`FlowTable`]; it is never shared, so nothing
//! here is atomic or locked.
//!
//! # Layout
//!
//! * **Entries**: one `Box<[FlowEntry]>` of exactly `capacity` entries (120
//!   bytes each). A [`FlowId`] is an index into it and stays valid until the
//!   flow is removed or expired.
//! * **Free list**: intrusive. A free entry's `ext` field holds the index of
//!   the next free entry, so the free list costs no memory of its own;
//!   allocation and release are O(1) and LIFO (a just-freed, cache-warm entry
//!   is reused first).
//! * **Live bitmap**: one bit per entry. It tells live entries from free
//!   ones without trusting any caller-writable field, and lets the aging
//!   clock hand skip 64 free slots with one word read.
//! * **Index**: a bucketized cuckoo hash, in the manner of DPDK's
//!   `rte_hash`. Each bucket is one 64-byte cache line holding 16 slots of
//!   one `u32` each: the low `idx_bits` bits are the entry index, the high
//!   bits are a *tag* taken from the key's hash (never zero, so a zero slot
//!   is empty). A key has two candidate buckets: `b1` from the hash, and
//!   `b2 = (g(tag) - b1) mod nbuckets`. That map is an involution, so the
//!   other bucket of any stored slot follows from the bucket it sits in and
//!   its tag: displacement never re-reads or re-hashes a key. Any bucket
//!   count works, which lets the index be sized by a slack factor rather
//!   than rounded up to a power of two.
//!
//! # Why 16 four-byte slots and not 8 × {u32 signature, u32 index}
//!
//! With a 120-byte entry, the suggested 8-byte slots would need at least
//! 8 bytes of index per flow (more with any slack, because cuckoo tables
//! cannot fill to 100 %), plus 4 bytes for a separate free stack: at least
//! 132 bytes per flow, over the 128-byte budget. Packing tag and index into
//! one `u32` halves the index, and the free list moves into the free
//! entries. It also gives each cache line 16 ways instead of 8, which
//! raises the load a two-choice table can reach: run with no slack at all
//! (index slots = entries), this one still takes 96.9 % of its capacity
//! (`load_test_accepts_95_percent_of_capacity`). The cost is a shorter tag:
//! `32 - idx_bits` bits, so 12 bits at 1M entries, against DPDK's 16. At 1M
//! flows, full, 0.46 % of lookups (half hits, half misses) compare the key
//! of one wrong entry, an extra cache miss (`tag_false_matches_are_rare_at_1m`).
//! Capacity is capped at [`MAX_CAPACITY`] (2^26) so that tags keep at
//! least 6 bits.
//!
//! # Memory (stated figure, checked by `memory_per_flow_at_1m_is_within_budget`)
//!
//! The index has `ceil(capacity * 5/4 / 16)` buckets: the index is at most
//! 80 % full when every entry is in use. At capacity 2^20 this gives
//! 120 (entry) + 5.0 (index: 81 922 buckets × 64 B) + 0.125 (live bitmap)
//! = **125.1 bytes per flow**, 131.2 MB in all. Small tables get
//! proportionally more index so that they, too, reliably fill to capacity.
//! The constructor writes every byte it allocates, so all pages are
//! faulted in at start-up and not on the packet path.
//!
//! # Cost bounds (hostile keys)
//!
//! The hash is ahash keyed by the constructor's `seed`, so an attacker who
//! does not know the seed cannot aim keys at buckets. The structure stays
//! bounded even if they could:
//!
//! * `lookup`: reads at most two buckets. The full 40-byte key is compared
//!   only for slots whose tag matches, and the entry is read only then. A
//!   hit found in the first bucket reads only that bucket and the entry.
//! * `lookup_or_insert` on a miss: both buckets, then the first free slot
//!   in `b1`, else in `b2` (so 96.5 % of flows sit in `b1` at full load and
//!   a hit usually reads one bucket). If both are full, a breadth-first
//!   search for a displacement path visits at most [`BFS_MAX_BUCKETS`] (64)
//!   buckets; at that size it is at most two levels deep, so an insert
//!   moves at most two existing slots. If the search fails the insert fails
//!   with [`TableFull`] and `insert_failed` counts it. A set of keys that
//!   all share the same two buckets can therefore take 32 slots at most;
//!   further keys of the set are refused and cost nothing else. With the
//!   default sizing the search is rare: the index is at most 80 % full.
//! * `remove`: one hash and two bucket scans.
//! * `expire(now, budget)`: moves a clock hand over at most
//!   `min(budget, capacity)` entry slots, reading one bitmap word per 64 slots
//!   and the entry of every live slot it passes.
//!
//! # Bursts
//!
//! At 1M flows nearly every lookup misses the cache twice, once on the bucket
//! and once, dependent on it, on the entry. [`FlowTable::lookup_or_insert_burst`]
//! takes a poll loop's whole rx burst: it hashes all keys and loads their
//! primary buckets, then loads each one's likely entry, and only then runs
//! the ordinary lookups in order, so that the misses of different packets
//! overlap. The results are exactly those of calling `lookup_or_insert` key
//! by key (repeats within a burst included). Safe Rust has no prefetch
//! instruction, so the read-ahead uses ordinary loads; it still cuts the
//! 1M-flow cost per packet by a quarter (lookup alone) to 40 % (lookup and
//! `touch`), and is no slower on a cache-hot table.
//!
//! # Reading the key
//!
//! The table reads a probe key as four 8-byte words (the addresses, offsets
//! 0, 8, 16, 24) and the last 8 bytes field by field. When a key has just
//! been written, each of those reads must fall inside one earlier store, or
//! the CPU cannot forward the stored data: the read then waits until the
//! stores retire, and behind a cache miss that serialises consecutive
//! lookups. Measured here with keys built right before the call: 190–250 ns
//! (1M flows) and 19 ns (1k flows) per lookup when the key is written in
//! whole words, 400–500 ns and 46 ns when the addresses are written a byte
//! at a time, as `FlowKey::v4` currently does. Keys built in a separate pass
//! over a burst, then handed to [`FlowTable::lookup_or_insert_burst`], are
//! far less exposed, since their stores have retired by the time they are read.
//!
//! # Deployment note
//!
//! The entries are 120 MB at 1M flows, so on 4 KiB pages a random entry
//! access is also a TLB miss. Backing the table with 2 MiB pages (THP
//! `always`, or `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` when THP is in
//! `madvise` mode) took 10–15 % off the 1M-flow burst figure in a test VM.
//!
//! # Time
//!
//! Times are `u64` in the caller's unit. Idle time is
//! `now.saturating_sub(last_seen)`, so a clock that steps backwards never
//! underflows: a flow whose `last_seen` is in the future counts as idle for 0.
//! [`FlowEntry::touch`] keeps `last_seen` monotonic (`max`), so timestamps
//! slightly out of order within a burst never make a flow look older.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

use crate::packet::flow_key::{Direction, FlowKey};

/// Largest accepted capacity (2^26 entries, about 8 GiB); beyond it the index's tags would get shorter than 6 bits.
pub const MAX_CAPACITY: usize = 1 << 26;

/// Most buckets one insert's displacement search may visit before it gives up.
pub const BFS_MAX_BUCKETS: usize = 64;

/// Keys that [`FlowTable::lookup_or_insert_burst`] reads ahead at a time.
pub const BURST: usize = 32;

/// Slots per index bucket (one 64-byte cache line of `u32`).
const SLOTS: usize = 16;

/// Free-list terminator.
const NIL: u32 = u32::MAX;

/// Per-direction cached forwarding decision; `generation == 0` means empty. Filled by the forwarding stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardCache {
    /// Generation of the forwarding state this decision was taken from; 0 = empty.
    pub generation: u32,
    /// Output port.
    pub port: u16,
    /// Next-hop MAC address; for the tunnel port, the peer (see [`ForwardCache::to_peer`]).
    pub dst_mac: [u8; 6],
}

impl ForwardCache {
    /// A decision to send into the tunnel port `port`, to `peer`: the peer's
    /// number takes the place of the MAC, which a tunnel has no use for, so
    /// the flow entry stays the same size.
    pub fn to_peer(generation: u32, port: u16, peer: u32) -> Self {
        let mut dst_mac = [0; 6];
        dst_mac[..4].copy_from_slice(&peer.to_le_bytes());
        ForwardCache {
            generation,
            port,
            dst_mac,
        }
    }

    /// The peer of a decision made by [`ForwardCache::to_peer`].
    pub fn peer(&self) -> u32 {
        u32::from_le_bytes([
            self.dst_mac[0],
            self.dst_mac[1],
            self.dst_mac[2],
            self.dst_mac[3],
        ])
    }
}

/// One flow's state. Later subsystems (DPI, tunnels) hang state off it by index, so keep `app` and `ext` fields.
///
/// `Default` gives an empty entry with `ext == u32::MAX` (no extension state), not 0.
#[derive(Clone, Copy, Debug)]
pub struct FlowEntry {
    /// The flow's canonical key. Do not modify it through [`FlowTable::get_mut`]: the index locates the entry by it.
    pub key: FlowKey,
    /// Time the flow was created, in the caller's unit (nanoseconds in practice).
    pub first_seen: u64,
    /// Time of the latest packet, in the caller's unit.
    pub last_seen: u64,
    /// Packets per direction, indexed by [`Direction::index`].
    pub packets: [u64; 2],
    /// Bytes per direction, indexed by [`Direction::index`].
    pub bytes: [u64; 2],
    /// Cached forwarding decision per direction, indexed by [`Direction::index`].
    pub forward: [ForwardCache; 2],
    /// Application id set by DPI; 0 = unclassified.
    pub app: u32,
    /// Index into per-worker extension state; `u32::MAX` = none.
    pub ext: u32,
}

impl Default for FlowEntry {
    #[inline]
    fn default() -> Self {
        FlowEntry {
            key: FlowKey::default(),
            first_seen: 0,
            last_seen: 0,
            packets: [0; 2],
            bytes: [0; 2],
            forward: [ForwardCache::default(); 2],
            app: 0,
            ext: u32::MAX,
        }
    }
}

impl FlowEntry {
    /// Counts one packet of `bytes` bytes in direction `dir` and moves `last_seen` forward to `now` (never backwards).
    #[inline]
    pub fn touch(&mut self, dir: Direction, bytes: u32, now: u64) {
        let d = dir.index();
        self.packets[d] = self.packets[d].wrapping_add(1);
        self.bytes[d] = self.bytes[d].wrapping_add(u64::from(bytes));
        self.last_seen = self.last_seen.max(now);
    }
}

/// Stable handle to an entry while it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowId(u32);

impl FlowId {
    /// The entry's index, in `0..capacity`; usable to index per-worker side arrays.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Monotonic counters, read by the metrics exporter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTableStats {
    /// Flows created (by [`FlowTable::lookup_or_insert`] and its variants).
    pub inserted: u64,
    /// Flows removed by [`FlowTable::expire`].
    pub expired: u64,
    /// Inserts refused because every entry was in use, or both buckets were full and displacement found no room.
    pub insert_failed: u64,
}

/// The flow could not be created: no free entry, or no room in the index for this key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

impl fmt::Display for TableFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("flow table full")
    }
}

impl std::error::Error for TableFull {}

/// One cache line of index slots: `tag | entry index`, 0 = empty.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket([u32; SLOTS]);

impl Bucket {
    /// Bit `i` set iff `slot[i] & mask == want`.
    #[inline(always)]
    fn matches(&self, want: u32, mask: u32) -> u32 {
        let mut m = 0u32;
        for (i, &s) in self.0.iter().enumerate() {
            m |= u32::from(s & mask == want) << i;
        }
        m
    }

    /// Bit `i` set iff slot `i` is empty.
    #[inline(always)]
    fn empties(&self) -> u32 {
        self.matches(0, u32::MAX)
    }
}

/// One node of the displacement search: a bucket, and which slot of which earlier node leads to it.
#[derive(Clone, Copy, Default)]
struct BfsNode {
    bucket: u32,
    parent: u8,
    slot: u8,
}

/// Marks the two root nodes of the displacement search.
const ROOT: u8 = u8::MAX;
const _: () = assert!(BFS_MAX_BUCKETS < ROOT as usize);

/// Per-worker flow table; see the module documentation.
pub struct FlowTable {
    entries: Box<[FlowEntry]>,
    buckets: Box<[Bucket]>,
    live: Box<[u64]>,
    hasher: ahash::RandomState,
    /// Number of buckets, as u64 for the multiply-shift range reduction.
    nbuckets: u64,
    /// Low bits of a slot that hold the entry index.
    idx_mask: u32,
    free_head: u32,
    len: usize,
    hand: usize,
    idle_timeout: u64,
    stats: FlowTableStats,
}

impl fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately leaves out the hash keys.
        f.debug_struct("FlowTable")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("buckets", &self.buckets.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The key's addresses as four 8-byte words (offsets 0, 8, 16 and 24).
#[inline(always)]
fn addr_words(k: &FlowKey) -> [u64; 4] {
    let w = |a: &[u8; 16], i: usize| {
        let [b0, b1, b2, b3, b4, b5, b6, b7] = [
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ];
        u64::from_ne_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
    };
    [
        w(&k.addr_lo, 0),
        w(&k.addr_lo, 8),
        w(&k.addr_hi, 0),
        w(&k.addr_hi, 8),
    ]
}

/// The key's last 8 bytes (ports, protocol, family, padding) packed in a
/// scrambled byte order. Keeping them out of their memory order stops the
/// compiler from reading them with one 8-byte load, which would stall when the
/// caller has just written the fields one by one (see "Reading the key").
#[inline(always)]
fn tail_word(k: &FlowKey) -> u64 {
    u64::from(k.family)
        | u64::from(k.pad[1]) << 8
        | u64::from(k.proto) << 16
        | u64::from(k.pad[0]) << 24
        | u64::from(k.port_hi) << 32
        | u64::from(k.port_lo) << 48
}

/// `a == b` without early exits, reading the key as `addr_words` and the tail field by field.
#[inline(always)]
fn key_eq(a: &FlowKey, b: &FlowKey) -> bool {
    let (wa, wb) = (addr_words(a), addr_words(b));
    let addr = (wa[0] ^ wb[0]) | (wa[1] ^ wb[1]) | (wa[2] ^ wb[2]) | (wa[3] ^ wb[3]);
    let tail = u64::from(a.port_lo ^ b.port_lo)
        | u64::from(a.port_hi ^ b.port_hi)
        | u64::from(a.proto ^ b.proto)
        | u64::from(a.family ^ b.family)
        | u64::from(a.pad[0] ^ b.pad[0])
        | u64::from(a.pad[1] ^ b.pad[1]);
    addr | tail == 0
}

/// splitmix64, to spread the one caller seed over ahash's four keys.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Index buckets for a table of `capacity` entries: 25 % slack, more for small tables.
fn default_buckets(capacity: usize) -> usize {
    let slots = capacity + capacity / 4 + 2 * SLOTS;
    slots.div_ceil(SLOTS)
}

impl FlowTable {
    /// Allocates everything up front. capacity ≥ 1 (round up internally as you need); idle_timeout in the caller's time unit.
    ///
    /// `capacity()` is exactly `capacity`. `seed` keys the hash and should be secret and random
    /// (e.g. from the OS RNG at start-up), different per worker.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or above [`MAX_CAPACITY`].
    pub fn new(capacity: usize, idle_timeout: u64, seed: u64) -> FlowTable {
        Self::with_buckets(capacity, default_buckets(capacity), idle_timeout, seed)
    }

    /// Like `new` but with an explicit bucket count (tests use it to run the index at high load).
    fn with_buckets(capacity: usize, nbuckets: usize, idle_timeout: u64, seed: u64) -> FlowTable {
        assert!(
            (1..=MAX_CAPACITY).contains(&capacity),
            "flow table capacity must be in 1..={MAX_CAPACITY}, got {capacity}"
        );
        assert!((1..=u32::MAX as usize).contains(&nbuckets));
        let idx_bits = usize::BITS - (capacity - 1).leading_zeros();
        let idx_mask = ((1u64 << idx_bits) - 1) as u32;

        let mut s = seed;
        let hasher = ahash::RandomState::with_seeds(
            splitmix64(&mut s),
            splitmix64(&mut s),
            splitmix64(&mut s),
            splitmix64(&mut s),
        );

        // Free list 0 -> 1 -> ... -> capacity-1, threaded through `ext`.
        let entries: Box<[FlowEntry]> = (0..capacity)
            .map(|i| FlowEntry {
                ext: if i + 1 < capacity {
                    (i + 1) as u32
                } else {
                    NIL
                },
                ..FlowEntry::default()
            })
            .collect();
        // Built by writing rather than `vec![0; n]` (calloc), so that every
        // page is faulted in here rather than on the packet path.
        let buckets: Box<[Bucket]> = (0..nbuckets).map(|_| Bucket([0; SLOTS])).collect();
        let live: Box<[u64]> = (0..capacity.div_ceil(64)).map(|_| 0).collect();

        FlowTable {
            entries,
            buckets,
            live,
            hasher,
            nbuckets: nbuckets as u64,
            idx_mask,
            free_head: 0,
            len: 0,
            hand: 0,
            idle_timeout,
            stats: FlowTableStats::default(),
        }
    }

    /// Number of flows the table can hold.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Number of live flows.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no flow is live.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Snapshot of the monotonic counters.
    #[inline]
    pub fn stats(&self) -> FlowTableStats {
        self.stats
    }

    /// The idle timeout in force.
    #[inline]
    pub fn idle_timeout(&self) -> u64 {
        self.idle_timeout
    }

    /// Changes the idle timeout (a configuration reload); flows are judged by
    /// the new value from the next [`FlowTable::expire`] on.
    pub fn set_idle_timeout(&mut self, idle_timeout: u64) {
        self.idle_timeout = idle_timeout;
    }

    /// Bytes held by entries + index + live bitmap (the free list is intrusive) + this struct.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[FlowEntry]>(&self.entries)
            + std::mem::size_of_val::<[Bucket]>(&self.buckets)
            + std::mem::size_of_val::<[u64]>(&self.live)
            + std::mem::size_of::<Self>()
    }

    /// Keyed hash of a key, for callers that batch their own way (see [`FlowTable::lookup_hashed`]; [`FlowTable::lookup_or_insert_burst`] does it for you).
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        let mut h = self.hasher.build_hasher();
        let w = addr_words(key);
        if key.family == 4 {
            // IPv4 addresses are stored IPv4-mapped: only their last four
            // bytes (the high halves of words 1 and 3) vary, and one
            // 16-byte write carries both and the rest of the key. The key
            // compare still reads every byte.
            let addrs = w[1] >> 32 | (w[3] & 0xffff_ffff_0000_0000);
            h.write_u128(u128::from(addrs) | u128::from(tail_word(key)) << 64);
        } else {
            h.write_u128(u128::from(w[0]) | u128::from(w[1]) << 64);
            h.write_u128(u128::from(w[2]) | u128::from(w[3]) << 64);
            h.write_u64(tail_word(key));
        }
        h.finish()
    }

    /// Primary bucket and (nonzero, shifted) tag of a hash.
    #[inline(always)]
    fn locate(&self, hash: u64) -> (usize, u32) {
        let b1 = (((hash >> 32) * self.nbuckets) >> 32) as usize;
        let tag = hash as u32 & !self.idx_mask;
        let tag = if tag == 0 {
            self.idx_mask.wrapping_add(1)
        } else {
            tag
        };
        (b1, tag)
    }

    /// The other candidate bucket of a slot with tag `tag` that sits in bucket `b`. An involution in `b`.
    #[inline(always)]
    fn alt(&self, b: usize, tag: u32) -> usize {
        let f = (u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) * self.nbuckets;
        let g = (f >> 32) as usize;
        if g >= b {
            g - b
        } else {
            g + self.nbuckets as usize - b
        }
    }

    /// Entry index of `key` if it sits in bucket `b` under `tag`.
    #[inline(always)]
    fn find_in(&self, b: usize, tag: u32, key: &FlowKey) -> Option<u32> {
        let bucket = &self.buckets[b];
        let mut m = bucket.matches(tag, !self.idx_mask);
        while m != 0 {
            let idx = bucket.0[m.trailing_zeros() as usize] & self.idx_mask;
            if key_eq(&self.entries[idx as usize].key, key) {
                return Some(idx);
            }
            m &= m - 1;
        }
        None
    }

    #[inline(always)]
    fn find(&self, key: &FlowKey, b1: usize, tag: u32) -> Option<u32> {
        match self.find_in(b1, tag, key) {
            Some(i) => Some(i),
            None => self.find_in(self.alt(b1, tag), tag, key),
        }
    }

    /// Finds a flow.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<FlowId> {
        self.lookup_hashed(key, self.hash(key))
    }

    /// [`FlowTable::lookup`] with `hash == self.hash(key)` computed by the caller.
    #[inline]
    pub fn lookup_hashed(&self, key: &FlowKey, hash: u64) -> Option<FlowId> {
        debug_assert_eq!(
            hash,
            self.hash(key),
            "lookup_hashed: hash does not match key"
        );
        let (b1, tag) = self.locate(hash);
        self.find(key, b1, tag).map(FlowId)
    }

    /// Finds the flow or creates it (zeroed counters, first_seen = last_seen = now). Returns (id, created).
    #[inline]
    pub fn lookup_or_insert(
        &mut self,
        key: &FlowKey,
        now: u64,
    ) -> Result<(FlowId, bool), TableFull> {
        let hash = self.hash(key);
        self.lookup_or_insert_hashed(key, hash, now)
    }

    /// [`FlowTable::lookup_or_insert`] with `hash == self.hash(key)` computed by the caller.
    ///
    /// A wrong hash would file the flow under the wrong buckets (checked in debug builds only).
    #[inline]
    pub fn lookup_or_insert_hashed(
        &mut self,
        key: &FlowKey,
        hash: u64,
        now: u64,
    ) -> Result<(FlowId, bool), TableFull> {
        debug_assert_eq!(
            hash,
            self.hash(key),
            "lookup_or_insert_hashed: hash does not match key"
        );
        let (b1, tag) = self.locate(hash);
        if let Some(i) = self.find_in(b1, tag, key) {
            return Ok((FlowId(i), false));
        }
        let b2 = self.alt(b1, tag);
        if let Some(i) = self.find_in(b2, tag, key) {
            return Ok((FlowId(i), false));
        }
        self.insert_new(key, now, b1, b2, tag)
    }

    /// [`FlowTable::lookup_or_insert`] for each key in turn, with exactly its results, but faster on
    /// large tables: the keys' buckets and entries are read ahead, [`BURST`] keys at a time, so their cache misses overlap.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than `keys`.
    pub fn lookup_or_insert_burst(
        &mut self,
        keys: &[FlowKey],
        now: u64,
        out: &mut [Result<(FlowId, bool), TableFull>],
    ) {
        assert!(
            out.len() >= keys.len(),
            "lookup_or_insert_burst: out shorter than keys"
        );
        for (keys, out) in keys.chunks(BURST).zip(out.chunks_mut(BURST)) {
            // Pass 1: hash, and load each key's primary bucket.
            let mut hashes = [0u64; BURST];
            let mut warm = 0u64;
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = self.hash(k);
                warm ^= u64::from(self.buckets[self.locate(*h).0].0[0]);
            }
            // Pass 2: the first tag match in the primary bucket is, nearly
            // always, the flow: note it and load its entry.
            let mut cand = [NIL; BURST];
            for (c, &h) in cand.iter_mut().zip(&hashes[..keys.len()]) {
                let (b1, tag) = self.locate(h);
                let bucket = &self.buckets[b1];
                let m = bucket.matches(tag, !self.idx_mask);
                if m != 0 {
                    *c = bucket.0[m.trailing_zeros() as usize] & self.idx_mask;
                    // The key's first line, and the lines of the fields `touch` updates.
                    let e = &self.entries[*c as usize];
                    warm ^= u64::from(e.key.addr_lo[0]) ^ e.last_seen ^ e.bytes[1];
                }
            }
            // Keeps the read-ahead loads alive.
            std::hint::black_box(warm);
            // Pass 3: in order. Only inserts happen during a burst, never
            // removals, so a candidate that was live in pass 2 and holds the
            // key is still that flow's entry.
            for (((k, &h), &c), o) in keys.iter().zip(&hashes).zip(&cand).zip(out) {
                *o = if c != NIL && key_eq(&self.entries[c as usize].key, k) {
                    Ok((FlowId(c), false))
                } else {
                    self.lookup_or_insert_hashed(k, h, now)
                };
            }
        }
    }

    /// Creates a flow known to be absent. Primary bucket first, then the alternate, then displacement.
    #[inline]
    fn insert_new(
        &mut self,
        key: &FlowKey,
        now: u64,
        b1: usize,
        b2: usize,
        tag: u32,
    ) -> Result<(FlowId, bool), TableFull> {
        if self.free_head == NIL {
            return self.refuse();
        }
        let e1 = self.buckets[b1].empties();
        let (b, s) = if e1 != 0 {
            (b1, e1.trailing_zeros() as usize)
        } else {
            let e2 = self.buckets[b2].empties();
            if e2 != 0 {
                (b2, e2.trailing_zeros() as usize)
            } else {
                match self.make_room(b1, b2) {
                    Some(place) => place,
                    None => return self.refuse(),
                }
            }
        };

        let idx = self.free_head;
        let i = idx as usize;
        self.free_head = self.entries[i].ext;
        self.entries[i] = FlowEntry {
            key: *key,
            first_seen: now,
            last_seen: now,
            ..FlowEntry::default()
        };
        self.buckets[b].0[s] = tag | idx;
        self.live[i / 64] |= 1 << (i % 64);
        self.len += 1;
        self.stats.inserted += 1;
        Ok((FlowId(idx), true))
    }

    #[cold]
    fn refuse(&mut self) -> Result<(FlowId, bool), TableFull> {
        self.stats.insert_failed += 1;
        Err(TableFull)
    }

    /// Both candidate buckets are full: breadth-first search, over at most
    /// `BFS_MAX_BUCKETS` buckets, for a chain of slots that can each move to
    /// their alternate bucket and that ends in a bucket with an empty slot.
    /// Moves the chain and returns the slot freed in `b1` or `b2`.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, b1: usize, b2: usize) -> Option<(usize, usize)> {
        let tag_mask = !self.idx_mask;
        let mut q = [BfsNode::default(); BFS_MAX_BUCKETS];
        q[0] = BfsNode {
            bucket: b1 as u32,
            parent: ROOT,
            slot: 0,
        };
        let mut len = 1;
        if b2 != b1 {
            q[1] = BfsNode {
                bucket: b2 as u32,
                parent: ROOT,
                slot: 0,
            };
            len = 2;
        }
        let mut head = 0;
        while head < len {
            let b = q[head].bucket as usize;
            let empties = self.buckets[b].empties();
            if empties != 0 {
                // Walk back to the root, moving each slot into the hole below it.
                let (mut node, mut hole_b, mut hole_s) =
                    (head, b, empties.trailing_zeros() as usize);
                while q[node].parent != ROOT {
                    let parent = q[node].parent as usize;
                    let (src_b, src_s) = (q[parent].bucket as usize, q[node].slot as usize);
                    let v = self.buckets[src_b].0[src_s];
                    debug_assert_eq!(self.alt(src_b, v & tag_mask), hole_b);
                    self.buckets[hole_b].0[hole_s] = v;
                    self.buckets[src_b].0[src_s] = 0;
                    (node, hole_b, hole_s) = (parent, src_b, src_s);
                }
                return Some((hole_b, hole_s));
            }
            for s in 0..SLOTS {
                if len == BFS_MAX_BUCKETS {
                    break;
                }
                let a = self.alt(b, self.buckets[b].0[s] & tag_mask);
                // A bucket must not appear twice on one path, or a later move
                // would take a slot an earlier move already refilled.
                let mut n = head;
                let on_path = loop {
                    if q[n].bucket as usize == a {
                        break true;
                    }
                    if q[n].parent == ROOT {
                        break false;
                    }
                    n = q[n].parent as usize;
                };
                if !on_path {
                    q[len] = BfsNode {
                        bucket: a as u32,
                        parent: head as u8,
                        slot: s as u8,
                    };
                    len += 1;
                }
            }
            head += 1;
        }
        None
    }

    /// The entry of a live flow.
    #[inline]
    pub fn get(&self, id: FlowId) -> &FlowEntry {
        debug_assert!(self.is_live(id.index()), "stale FlowId {id:?}");
        &self.entries[id.index()]
    }

    /// The entry of a live flow, for updating counters and state (but not `key`).
    #[inline]
    pub fn get_mut(&mut self, id: FlowId) -> &mut FlowEntry {
        debug_assert!(self.is_live(id.index()), "stale FlowId {id:?}");
        &mut self.entries[id.index()]
    }

    /// Every live flow's entry, for updating state (but not `key`) across
    /// the table: off the packet path (a reload's renumbering).
    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut FlowEntry> {
        let live = &self.live;
        self.entries
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| live[i / 64] & (1 << (i % 64)) != 0)
            .map(|(_, entry)| entry)
    }

    #[inline(always)]
    fn is_live(&self, i: usize) -> bool {
        self.live[i / 64] & (1 << (i % 64)) != 0
    }

    /// Removes a flow. Removing an id that is not live is a no-op; an id whose entry was since reused removes the new flow.
    #[inline]
    pub fn remove(&mut self, id: FlowId) {
        if self.is_live(id.index()) {
            self.remove_live(id.index());
        }
    }

    fn remove_live(&mut self, i: usize) {
        let hash = self.hash(&self.entries[i].key);
        let (b1, tag) = self.locate(hash);
        let v = tag | i as u32;
        let cleared = self.clear_slot(b1, v) || self.clear_slot(self.alt(b1, tag), v);
        debug_assert!(
            cleared,
            "flow {i} missing from the index (key modified through get_mut?)"
        );
        self.live[i / 64] &= !(1 << (i % 64));
        self.entries[i].ext = self.free_head;
        self.free_head = i as u32;
        self.len -= 1;
    }

    #[inline(always)]
    fn clear_slot(&mut self, b: usize, v: u32) -> bool {
        let m = self.buckets[b].matches(v, u32::MAX);
        if m == 0 {
            return false;
        }
        self.buckets[b].0[m.trailing_zeros() as usize] = 0;
        true
    }

    /// Examines at most `budget` entry slots from where the last call stopped (a clock hand), removing flows idle for longer than idle_timeout at `now`; returns how many it removed.
    ///
    /// One call never examines a slot twice (the budget is capped at `capacity`);
    /// the hand wraps from the last slot to the first.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let cap = self.entries.len();
        let mut left = budget.min(cap);
        let mut removed = 0;
        while left > 0 {
            let hand = self.hand;
            let off = hand % 64;
            let chunk = left.min(64 - off).min(cap - hand);
            let window = if chunk == 64 {
                u64::MAX
            } else {
                (1u64 << chunk) - 1
            };
            let mut bits = (self.live[hand / 64] >> off) & window;
            while bits != 0 {
                let i = hand + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if now.saturating_sub(self.entries[i].last_seen) > self.idle_timeout {
                    self.remove_live(i);
                    removed += 1;
                }
            }
            left -= chunk;
            self.hand = if hand + chunk == cap { 0 } else { hand + chunk };
        }
        self.stats.expired += removed as u64;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::flow_key::ip_proto;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    /// xorshift64*, enough for tests.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
        }
    }

    /// Distinct keys for distinct `i` (and a mix of v4 and v6).
    fn key(i: u64) -> FlowKey {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..8].copy_from_slice(&i.to_le_bytes());
        dst[8..].copy_from_slice(&(!i).to_be_bytes());
        FlowKey::new(6, src, dst, (i >> 3) as u16, 443, ip_proto::TCP).0
    }

    fn random_key(rng: &mut Rng) -> FlowKey {
        let (a, b) = (rng.next(), rng.next());
        FlowKey::v4(
            Ipv4Addr::from(a as u32),
            Ipv4Addr::from((a >> 32) as u32),
            b as u16,
            (b >> 16) as u16,
            ip_proto::UDP,
        )
        .0
    }

    /// Checks every internal invariant against the table's own state.
    fn check_invariants(t: &FlowTable) {
        let mut live = 0;
        for i in 0..t.capacity() {
            if t.is_live(i) {
                live += 1;
                assert_eq!(
                    t.lookup(&t.entries[i].key),
                    Some(FlowId(i as u32)),
                    "live entry {i} not found"
                );
            }
        }
        assert_eq!(live, t.len());
        let occupied: usize = t
            .buckets
            .iter()
            .map(|b| b.0.iter().filter(|&&s| s != 0).count())
            .sum();
        assert_eq!(occupied, t.len(), "index slots vs len");
        let (mut free, mut f) = (0, t.free_head);
        while f != NIL {
            assert!(!t.is_live(f as usize), "live entry {f} on the free list");
            free += 1;
            assert!(free <= t.capacity(), "free list cycle");
            f = t.entries[f as usize].ext;
        }
        assert_eq!(free + t.len(), t.capacity());
    }

    #[test]
    fn flow_entry_and_bucket_sizes_are_pinned() {
        assert_eq!(std::mem::size_of::<FlowEntry>(), 120);
        assert_eq!(std::mem::size_of::<ForwardCache>(), 12);
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn default_entry_has_no_extension() {
        let e = FlowEntry::default();
        assert_eq!(
            (e.ext, e.app, e.packets, e.forward[0].generation),
            (u32::MAX, 0, [0, 0], 0)
        );
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = FlowTable::new(100, 1000, 1);
        assert!(t.is_empty());
        let k = key(7);
        assert_eq!(t.lookup(&k), None);
        let (id, created) = t.lookup_or_insert(&k, 5).unwrap();
        assert!(created);
        assert_eq!((t.len(), t.lookup(&k)), (1, Some(id)));
        let e = t.get(id);
        assert_eq!(
            (
                e.key,
                e.first_seen,
                e.last_seen,
                e.packets,
                e.bytes,
                e.app,
                e.ext
            ),
            (k, 5, 5, [0; 2], [0; 2], 0, u32::MAX)
        );

        t.get_mut(id).touch(Direction::HiToLo, 1500, 9);
        t.get_mut(id).app = 42;
        assert_eq!(t.lookup_or_insert(&k, 10).unwrap(), (id, false));
        let e = t.get(id);
        assert_eq!(
            (e.packets, e.bytes, e.last_seen, e.first_seen, e.app),
            ([0, 1], [0, 1500], 9, 5, 42)
        );

        let id2 = t.lookup_or_insert(&key(8), 11).unwrap().0;
        assert_ne!(id, id2);
        t.remove(id);
        assert_eq!(
            (t.len(), t.lookup(&k), t.lookup(&key(8))),
            (1, None, Some(id2))
        );
        t.remove(id); // not live any more: no-op
        assert_eq!(t.len(), 1);

        // Re-created flows start from scratch.
        let (id3, created) = t.lookup_or_insert(&k, 20).unwrap();
        assert!(created);
        let e = t.get(id3);
        assert_eq!(
            (e.packets, e.bytes, e.first_seen, e.app, e.ext),
            ([0; 2], [0; 2], 20, 0, u32::MAX)
        );
        assert_eq!(
            t.stats(),
            FlowTableStats {
                inserted: 3,
                expired: 0,
                insert_failed: 0
            }
        );
        check_invariants(&t);
    }

    #[test]
    fn every_byte_of_the_key_counts() {
        let mut t = FlowTable::new(64, 1, 22);
        let base = key(0x0123_4567_89AB);
        t.lookup_or_insert(&base, 0).unwrap();
        let mut variants = Vec::new();
        for i in 0..16 {
            let mut k = base;
            k.addr_lo[i] ^= 0x10;
            variants.push(k);
            let mut k = base;
            k.addr_hi[i] ^= 0x01;
            variants.push(k);
        }
        let mut k = base;
        k.port_lo ^= 1;
        variants.push(k);
        let mut k = base;
        k.port_hi ^= 0x100;
        variants.push(k);
        let mut k = base;
        k.proto ^= 1;
        variants.push(k);
        let mut k = base;
        k.family ^= 2;
        variants.push(k);
        let mut k = base;
        k.pad[0] = 1;
        variants.push(k);
        let mut k = base;
        k.pad[1] = 1;
        variants.push(k);
        for k in &variants {
            assert!(!key_eq(k, &base) && key_eq(k, k), "{k:?}");
            assert_ne!(t.hash(k), t.hash(&base), "{k:?}");
            assert_eq!(t.lookup(k), None);
        }
    }

    #[test]
    fn both_directions_find_one_entry() {
        let mut t = FlowTable::new(16, 1000, 2);
        let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7));
        let (k1, d1) = FlowKey::v4(a, b, 51000, 53, ip_proto::UDP);
        let (k2, d2) = FlowKey::v4(b, a, 53, 51000, ip_proto::UDP);
        let (id, created) = t.lookup_or_insert(&k1, 1).unwrap();
        assert!(created);
        t.get_mut(id).touch(d1, 60, 1);
        assert_eq!(t.lookup_or_insert(&k2, 2).unwrap(), (id, false));
        t.get_mut(id).touch(d2, 200, 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(id).packets, [1, 1]);
        assert_eq!(t.get(id).bytes[d1.index()], 60);
        assert_eq!(t.get(id).bytes[d2.index()], 200);
    }

    #[test]
    fn fill_to_capacity_then_table_full_until_expiry() {
        for cap in [1, 2, 15, 16, 17, 100, 1000, 5000] {
            let mut t = FlowTable::new(cap, 10, cap as u64);
            for i in 0..cap as u64 {
                assert!(
                    t.lookup_or_insert(&key(i), 0).unwrap().1,
                    "cap {cap}: insert {i} failed"
                );
            }
            assert_eq!(t.len(), cap);
            assert_eq!(t.lookup_or_insert(&key(1 << 40), 1), Err(TableFull));
            assert_eq!(t.lookup_or_insert(&key(1 << 41), 1), Err(TableFull));
            assert_eq!(t.stats().insert_failed, 2);
            // Existing flows are still found when full.
            assert!(!t.lookup_or_insert(&key(0), 1).unwrap().1);
            check_invariants(&t);

            // Not idle long enough yet.
            assert_eq!(t.expire(10, cap), 0);
            assert_eq!(t.expire(11, cap), cap);
            assert!(t.is_empty());
            assert_eq!(t.stats().expired, cap as u64);
            for i in 0..cap as u64 {
                assert!(t.lookup_or_insert(&key(i + 1000), 20).unwrap().1);
            }
            assert_eq!(t.stats().inserted, 2 * cap as u64);
            check_invariants(&t);
        }
    }

    #[test]
    fn burst_gives_the_same_results_as_one_by_one() {
        let mut a = FlowTable::new(500, 10, 21);
        let mut b = FlowTable::new(500, 10, 21);
        let mut rng = Rng::new(21);
        for round in 0..200u64 {
            // Bursts longer than BURST, with repeats, new keys, and a full table.
            let n = rng.below(3 * BURST as u64) as usize;
            let keys: Vec<FlowKey> = (0..n).map(|_| key(rng.below(800))).collect();
            let mut burst = vec![Err(TableFull); n + 3];
            a.lookup_or_insert_burst(&keys, round, &mut burst);
            let single: Vec<_> = keys.iter().map(|k| b.lookup_or_insert(k, round)).collect();
            assert_eq!(&burst[..n], &single[..], "round {round}");
            assert!(
                burst[n..].iter().all(|r| *r == Err(TableFull)),
                "past the keys: untouched"
            );
            assert_eq!(a.stats(), b.stats());
            if round % 7 == 0 {
                a.expire(round, 300);
                b.expire(round, 300);
            }
        }
        assert!(a.stats().insert_failed > 0);
        check_invariants(&a);
    }

    #[test]
    fn expires_idle_flows_after_timeout() {
        let mut t = FlowTable::new(64, 100, 3);
        let idle = t.lookup_or_insert(&key(1), 1000).unwrap().0;
        let busy = t.lookup_or_insert(&key(2), 1000).unwrap().0;
        t.get_mut(busy).touch(Direction::LoToHi, 1, 1050);
        // Idle for exactly the timeout: kept.
        assert_eq!(t.expire(1100, 64), 0);
        assert_eq!(t.expire(1101, 64), 1);
        assert_eq!(t.lookup(&key(1)), None);
        assert_eq!(t.lookup(&key(2)), Some(busy));
        let _ = idle;
        assert_eq!(t.expire(1150, 64), 0);
        assert_eq!(t.expire(1151, 64), 1);
        assert!(t.is_empty());
        assert_eq!(t.stats().expired, 2);

        // A reload that shortens the timeout applies from the next expire on.
        t.lookup_or_insert(&key(3), 2000).unwrap();
        assert_eq!(t.expire(2050, 64), 0);
        t.set_idle_timeout(40);
        assert_eq!(t.idle_timeout(), 40);
        assert_eq!(t.expire(2050, 64), 1);
    }

    #[test]
    fn expire_respects_budget_and_hand_wraps() {
        let mut t = FlowTable::new(100, 10, 4);
        for i in 0..100 {
            // The free list hands out entries in index order on a fresh table.
            assert_eq!(
                t.lookup_or_insert(&key(i), 0).unwrap().0.index(),
                i as usize
            );
        }
        assert_eq!(t.expire(100, 0), 0);
        assert_eq!(t.expire(100, 30), 30); // slots 0..30
        assert_eq!(t.expire(100, 30), 30); // 30..60
        assert_eq!(t.expire(100, 30), 30); // 60..90
        assert_eq!(t.expire(100, 30), 10); // 90..100, wraps, 0..20 (empty)
        assert!(t.is_empty());

        // The hand is at 20 now. The free list is LIFO: the most recently
        // freed entries (99, 98, ...) come back first, so these land in 70..100.
        for i in 0..30 {
            t.lookup_or_insert(&key(1000 + i), 200).unwrap();
        }
        assert_eq!(t.lookup(&key(1000)).unwrap().index(), 99);
        assert_eq!(t.lookup(&key(1029)).unwrap().index(), 70);
        assert_eq!(t.expire(300, 70), 20); // 20..90: finds 70..90
        assert_eq!(t.expire(300, 30), 10); // 90..100, then wraps to 0..20
                                           // A budget above capacity examines each slot once.
        for i in 0..5 {
            t.lookup_or_insert(&key(2000 + i), 300).unwrap();
        }
        assert_eq!(t.expire(1000, usize::MAX), 5);
        assert_eq!(t.stats().expired, 135);
        check_invariants(&t);
    }

    #[test]
    fn expire_walks_word_boundaries() {
        // Capacity not a multiple of 64, budgets that straddle words.
        let mut t = FlowTable::new(200, 0, 5);
        for round in 0..5u64 {
            for i in 0..200 {
                t.lookup_or_insert(&key(round * 1000 + i), round * 10)
                    .unwrap();
            }
            let mut removed = 0;
            for _ in 0..200 / 7 + 1 {
                removed += t.expire(round * 10 + 1, 7);
            }
            assert_eq!(removed, 200, "round {round}");
            assert!(t.is_empty());
        }
    }

    #[test]
    fn time_going_backwards_does_not_underflow() {
        let mut t = FlowTable::new(8, 50, 6);
        let id = t.lookup_or_insert(&key(1), 1000).unwrap().0;
        t.get_mut(id).touch(Direction::LoToHi, 10, 400); // clock stepped back
        assert_eq!(t.get(id).last_seen, 1000, "last_seen never moves backwards");
        assert_eq!(t.expire(0, 8), 0);
        assert_eq!(t.expire(999, 8), 0);
        let id2 = t.lookup_or_insert(&key(2), 10).unwrap().0;
        assert_eq!(t.get(id2).first_seen, 10);
        assert_eq!(t.expire(5, 8), 0);
        assert_eq!(t.expire(1050, 8), 1); // key(2), idle 1040
        assert_eq!(t.expire(u64::MAX, 8), 1);
        let mut t = FlowTable::new(8, u64::MAX, 6);
        t.lookup_or_insert(&key(3), u64::MAX).unwrap();
        assert_eq!(t.expire(0, 8), 0);
        assert_eq!(t.expire(u64::MAX, 8), 0);
    }

    #[derive(Debug, Clone, Copy)]
    struct Model {
        id: u32,
        first_seen: u64,
        last_seen: u64,
        packets: [u64; 2],
        bytes: [u64; 2],
    }

    #[test]
    fn randomized_model_test_against_hashmap() {
        run_model(FlowTable::new(3000, 10_000, 99), 0xDEC0DE);
    }

    #[test]
    fn randomized_model_test_with_a_tight_index() {
        // Fewer index slots than entries: the index is the binding limit and
        // displacement runs all the time.
        run_model(
            FlowTable::with_buckets(3000, 3000 / SLOTS, 10_000, 98),
            0xC0FFEE,
        );
    }

    fn run_model(mut t: FlowTable, seed: u64) {
        const CAP: usize = 3000;
        const UNIVERSE: u64 = 6000;
        const TIMEOUT: u64 = 10_000;
        assert_eq!((t.capacity(), t.idle_timeout()), (CAP, TIMEOUT));
        let tight = t.buckets.len() * SLOTS < CAP;
        let mut rng = Rng::new(seed);
        let mut model: HashMap<FlowKey, Model> = HashMap::new();
        let mut by_id: HashMap<u32, FlowKey> = HashMap::new();
        let mut hand = 0usize;
        let mut now = 1_000u64;
        let (mut expired, mut inserted, mut failed) = (0u64, 0u64, 0u64);

        for op in 0..200_000 {
            // Mostly forward by 0..2, sometimes a step back, rarely a jump
            // past the timeout (mass expiry).
            now = match rng.below(5000) {
                0 => now + 2 * TIMEOUT,
                1..=100 => now.saturating_sub(rng.below(20)),
                _ => now + rng.below(3),
            };
            let k = key(rng.below(UNIVERSE));
            match rng.below(100) {
                0..=59 => {
                    // Single inserts, or a burst of up to 40 with repeats.
                    let mut keys = vec![k];
                    if op % 10 == 0 {
                        for _ in 0..rng.below(40) {
                            let dup = rng.below(4) == 0;
                            keys.push(if dup {
                                keys[rng.below(keys.len() as u64) as usize]
                            } else {
                                key(rng.below(UNIVERSE))
                            });
                        }
                    }
                    let mut results = vec![Err(TableFull); keys.len()];
                    if keys.len() == 1 {
                        results[0] = t.lookup_or_insert(&k, now);
                    } else {
                        t.lookup_or_insert_burst(&keys, now, &mut results);
                    }
                    for (k, r) in keys.iter().zip(results) {
                        match r {
                            Ok((id, created)) => {
                                assert_eq!(created, !model.contains_key(k), "op {op}");
                                if created {
                                    inserted += 1;
                                    assert!(
                                        by_id.insert(id.0, *k).is_none(),
                                        "op {op}: id reused while live"
                                    );
                                    model.insert(
                                        *k,
                                        Model {
                                            id: id.0,
                                            first_seen: now,
                                            last_seen: now,
                                            packets: [0; 2],
                                            bytes: [0; 2],
                                        },
                                    );
                                } else {
                                    assert_eq!(model[k].id, id.0);
                                }
                                let dir = if rng.next() & 1 == 0 {
                                    Direction::LoToHi
                                } else {
                                    Direction::HiToLo
                                };
                                let len = rng.below(1500) as u32;
                                t.get_mut(id).touch(dir, len, now);
                                let m = model.get_mut(k).unwrap();
                                m.packets[dir.index()] += 1;
                                m.bytes[dir.index()] += u64::from(len);
                                m.last_seen = m.last_seen.max(now);
                            }
                            Err(TableFull) => {
                                assert!(!model.contains_key(k));
                                if tight {
                                    let slots = t.buckets.len() * SLOTS;
                                    assert!(
                                        model.len() * 100 >= slots * 90,
                                        "op {op}: refused at {} of {slots} slots",
                                        model.len()
                                    );
                                } else {
                                    assert_eq!(model.len(), CAP, "op {op}: refused below capacity");
                                }
                                failed += 1;
                            }
                        }
                    }
                }
                60..=79 => {
                    let got = t.lookup(&k);
                    assert_eq!(got.map(|id| id.0), model.get(&k).map(|m| m.id), "op {op}");
                    if let Some(id) = got {
                        let (e, m) = (t.get(id), model[&k]);
                        assert_eq!(
                            (e.key, e.first_seen, e.last_seen, e.packets, e.bytes),
                            (k, m.first_seen, m.last_seen, m.packets, m.bytes)
                        );
                    }
                }
                80..=89 => {
                    if let Some(m) = model.remove(&k) {
                        by_id.remove(&m.id);
                        t.remove(FlowId(m.id));
                    }
                }
                _ => {
                    let budget = rng.below(200) as usize;
                    let mut want = 0;
                    for step in 0..budget.min(CAP) {
                        let slot = ((hand + step) % CAP) as u32;
                        if let Some(k) = by_id.get(&slot).copied() {
                            if now.saturating_sub(model[&k].last_seen) > TIMEOUT {
                                model.remove(&k);
                                by_id.remove(&slot);
                                want += 1;
                            }
                        }
                    }
                    hand = (hand + budget.min(CAP)) % CAP;
                    expired += want as u64;
                    assert_eq!(t.expire(now, budget), want, "op {op}");
                }
            }
            assert_eq!(t.len(), model.len());
            if op % 20_000 == 0 {
                check_invariants(&t);
            }
        }
        check_invariants(&t);
        for (k, m) in &model {
            assert_eq!(t.lookup(k), Some(FlowId(m.id)));
        }
        assert_eq!(
            t.stats(),
            FlowTableStats {
                inserted,
                expired,
                insert_failed: failed
            }
        );
        // The mix must actually have exercised fullness and expiry.
        eprintln!(
            "model: inserted {inserted} expired {expired} refused {failed} (tight index: {tight})"
        );
        assert!(
            failed > 0 && expired > 1000,
            "failed {failed} expired {expired}"
        );
    }

    #[test]
    fn load_test_accepts_95_percent_of_capacity() {
        // Default sizing: every entry is usable.
        let n = 1 << 16;
        let mut rng = Rng::new(7);
        let mut t = FlowTable::new(n, 1, 7);
        let mut accepted = 0;
        while t.lookup_or_insert(&random_key(&mut rng), 0).is_ok() {
            accepted += 1;
        }
        assert_eq!(accepted, n);

        // The index alone, run with no slack (slots == entries): displacement
        // must still get it to 95 %.
        let mut t = FlowTable::with_buckets(n, n / SLOTS, 1, 8);
        let mut accepted = 0;
        while t.lookup_or_insert(&random_key(&mut rng), 0).is_ok() {
            accepted += 1;
        }
        eprintln!("index without slack accepted {accepted} of {n}");
        assert!(
            accepted as f64 >= 0.95 * n as f64,
            "accepted {accepted} of {n}"
        );
        check_invariants(&t);
    }

    #[test]
    fn memory_per_flow_at_1m_is_within_budget() {
        let start = std::time::Instant::now();
        let t = FlowTable::new(1 << 20, 1, 1);
        eprintln!(
            "1M table: built in {:?}, {} bytes",
            start.elapsed(),
            t.memory_bytes()
        );
        assert_eq!(t.capacity(), 1 << 20);
        let per_flow = t.memory_bytes() as f64 / t.capacity() as f64;
        assert!(per_flow <= 128.0, "{per_flow} bytes per flow");
        // The figure stated in the module documentation.
        assert!(
            (125.0..125.2).contains(&per_flow),
            "{per_flow} bytes per flow"
        );
    }

    #[test]
    fn seeds_place_the_same_keys_in_different_buckets() {
        let a = FlowTable::new(1 << 16, 1, 1);
        let b = FlowTable::new(1 << 16, 1, 2);
        let same = (0..10_000)
            .filter(|&i| a.locate(a.hash(&key(i))).0 == b.locate(b.hash(&key(i))).0)
            .count();
        // Independent placement would agree for ~10_000 / 5_122 keys.
        assert!(same < 20, "{same} keys share a bucket under both seeds");
    }

    /// Keys that, under table `t`'s seed, all have the same two candidate buckets.
    fn colliding_keys(t: &FlowTable, want: usize) -> Vec<FlowKey> {
        let k0 = key(0);
        let (b1, tag) = t.locate(t.hash(&k0));
        let pair = [b1.min(t.alt(b1, tag)), b1.max(t.alt(b1, tag))];
        let mut out = vec![k0];
        let mut i = 1;
        while out.len() < want {
            let k = key(i);
            let (c1, tag) = t.locate(t.hash(&k));
            if [c1.min(t.alt(c1, tag)), c1.max(t.alt(c1, tag))] == pair {
                out.push(k);
            }
            i += 1;
        }
        out
    }

    #[test]
    fn hostile_keys_sharing_both_buckets_are_refused_in_bounded_time() {
        // An attacker who knew the seed could pick keys that all share both
        // candidate buckets. At most 2 × 16 of them fit; the rest must be
        // refused promptly (bounded displacement) without disturbing anyone.
        let mut t = FlowTable::with_buckets(4096, 64, 1, 11);
        let hostile = colliding_keys(&t, 48);
        for i in 0..600 {
            t.lookup_or_insert(&key(1 << 32 | i), 0).unwrap();
        }
        let mut ok = 0;
        for k in &hostile {
            if t.lookup_or_insert(k, 0).is_ok() {
                ok += 1;
            }
        }
        eprintln!("{ok} of {} colliding keys accepted", hostile.len());
        assert!(ok <= 2 * SLOTS, "{ok} colliding keys accepted");
        assert_eq!(t.stats().insert_failed as usize, hostile.len() - ok);
        check_invariants(&t);
        for i in 0..600 {
            assert!(t.lookup(&key(1 << 32 | i)).is_some());
        }

        // With another seed the same keys scatter and all fit.
        let mut t2 = FlowTable::with_buckets(4096, 64, 1, 12);
        for k in &hostile {
            t2.lookup_or_insert(k, 0).unwrap();
        }
        assert_eq!(t2.len(), hostile.len());
    }

    #[test]
    fn displacement_never_loops_on_an_overfull_index() {
        // Far more entries than index slots: every insert past the index's
        // limit must come back (refused), and the index must stay consistent.
        for seed in 0..20 {
            let mut t = FlowTable::with_buckets(1000, 8, 1, seed);
            let mut ok = 0;
            for i in 0..1000 {
                if t.lookup_or_insert(&key(i), 0).is_ok() {
                    ok += 1;
                }
            }
            assert!(ok <= 8 * SLOTS);
            assert!(
                ok >= 8 * SLOTS * 9 / 10,
                "seed {seed}: only {ok} of 128 slots used"
            );
            assert_eq!(t.stats().insert_failed, 1000 - ok as u64);
            check_invariants(&t);
        }
    }

    #[test]
    fn tag_false_matches_are_rare_at_1m() {
        // Counts full-key comparisons against the wrong entry on lookups at
        // full load (index 80 % occupied).
        let n = 1 << 20;
        let mut t = FlowTable::new(n, 1, 13);
        let mut rng = Rng::new(13);
        let keys: Vec<FlowKey> = (0..n).map(|_| random_key(&mut rng)).collect();
        for k in &keys {
            t.lookup_or_insert(k, 0).unwrap();
        }
        let (mut wrong, mut second) = (0usize, 0usize);
        let probes = 100_000;
        for i in 0..probes {
            // Half hits, half misses.
            let k = if i % 2 == 0 {
                keys[rng.below(n as u64) as usize]
            } else {
                random_key(&mut rng)
            };
            let (b1, tag) = t.locate(t.hash(&k));
            let hit_in_b1 = t.find_in(b1, tag, &k).is_some();
            if i % 2 == 0 && !hit_in_b1 {
                second += 1;
            }
            for b in [b1, t.alt(b1, tag)] {
                let bucket = &t.buckets[b];
                let mut m = bucket.matches(tag, !t.idx_mask);
                while m != 0 {
                    let idx = bucket.0[m.trailing_zeros() as usize] & t.idx_mask;
                    wrong += usize::from(t.entries[idx as usize].key != k);
                    m &= m - 1;
                }
                if hit_in_b1 {
                    break;
                }
            }
        }
        let rate = wrong as f64 / probes as f64;
        let second_rate = second as f64 / (probes / 2) as f64;
        eprintln!("false tag matches per lookup: {rate:.4}; hits found in the second bucket: {second_rate:.3}");
        assert!(rate < 0.01, "{rate}");
    }
}
