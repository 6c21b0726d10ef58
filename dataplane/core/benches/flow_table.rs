//! Flow table benchmarks: hit lookups with 1M resident flows (random access,
//! memory bound) and 1k resident flows (cache hot), one key at a time and in
//! bursts of 32; misses; and insert+expire churn.
//!
//! Run with `cargo bench -p patronus-core --bench flow_table`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use patronus_core::flow::table::{FlowTable, TableFull};
use patronus_core::packet::flow_key::{ip_proto, Direction, FlowKey};

const CAPACITY: usize = 1 << 20;
const SEED: u64 = 0x5EED_F10E;

/// xorshift64, to pick flows at random without a lookup table of keys.
struct Rng(u64);

impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A distinct IPv4 TCP key for every `i < 2^32` (UDP with `miss`), computed
/// rather than stored so that the key itself costs no cache miss.
///
/// Equal to `FlowKey::v4(..).0` for the same endpoints, but built from whole
/// words: `FlowKey::v4` currently writes the mapped addresses a byte at a
/// time, and the table's 8-byte reads of a key written that way just before
/// the call cannot be store-forwarded (see the `lookup_or_insert_hit_v4key`
/// benchmark and the flow table's "Reading the key" documentation).
#[inline]
fn key_of(i: u64, miss: bool) -> FlowKey {
    let (src, dst, src_port, dst_port) = endpoints(i);
    let mapped = |a: u32| (0xFFFF_u128 << 32) | u128::from(a);
    let (s, d) = (mapped(src), mapped(dst));
    let ((lo, port_lo), (hi, port_hi)) = if (s, src_port) <= (d, dst_port) {
        ((s, src_port), (d, dst_port))
    } else {
        ((d, dst_port), (s, src_port))
    };
    FlowKey {
        addr_lo: lo.to_be_bytes(),
        addr_hi: hi.to_be_bytes(),
        port_lo,
        port_hi,
        proto: if miss { ip_proto::UDP } else { ip_proto::TCP },
        family: 4,
        pad: [0; 2],
    }
}

/// The same key through `FlowKey::v4`.
#[inline]
fn key_of_v4(i: u64) -> FlowKey {
    let (src, dst, src_port, dst_port) = endpoints(i);
    FlowKey::v4(
        Ipv4Addr::from(src),
        Ipv4Addr::from(dst),
        src_port,
        dst_port,
        ip_proto::TCP,
    )
    .0
}

#[inline]
fn endpoints(i: u64) -> (u32, u32, u16, u16) {
    let src = (i as u32) ^ 0x0A00_0000;
    let dst = 0xAC10_0000 | ((i.wrapping_mul(0x9E37_79B9) >> 16) as u32 & 0xFFFF);
    (src, dst, 1024 + (i % 50_000) as u16, 443)
}

fn filled(resident: u64) -> FlowTable {
    let mut t = FlowTable::new(CAPACITY, u64::MAX, SEED);
    for i in 0..resident {
        t.lookup_or_insert(&key_of(i, false), 0)
            .expect("table sized for the benchmark");
    }
    assert_eq!(t.len() as u64, resident);
    t
}

fn hits(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_table");
    g.throughput(Throughput::Elements(1));
    for i in [0, 1, 12345, 1 << 19] {
        assert_eq!(key_of(i, false), key_of_v4(i));
    }
    g.bench_function("keygen_baseline", |b| {
        let mut rng = Rng(1);
        b.iter(|| black_box(key_of(rng.next() & (CAPACITY as u64 - 1), false)));
    });
    g.bench_function("keygen_baseline_v4", |b| {
        let mut rng = Rng(1);
        b.iter(|| black_box(key_of_v4(rng.next() & (CAPACITY as u64 - 1))));
    });

    for (name, resident) in [("1M_random", CAPACITY as u64), ("1k_hot", 1024)] {
        let mut t = filled(resident);
        let mask = resident - 1;
        g.bench_function(format!("lookup_or_insert_hit/{name}"), |b| {
            let mut rng = Rng(2);
            b.iter(|| {
                let k = key_of(rng.next() & mask, false);
                black_box(t.lookup_or_insert(black_box(&k), 1))
            });
        });
        g.bench_function(format!("lookup_or_insert_hit_v4key/{name}"), |b| {
            let mut rng = Rng(2);
            b.iter(|| {
                let k = key_of_v4(rng.next() & mask);
                black_box(t.lookup_or_insert(black_box(&k), 1))
            });
        });
        g.bench_function(format!("lookup_or_insert_hit_touch/{name}"), |b| {
            let mut rng = Rng(3);
            let mut now = 1;
            b.iter(|| {
                now += 1;
                let k = key_of(rng.next() & mask, false);
                if let Ok((id, _)) = t.lookup_or_insert(black_box(&k), now) {
                    t.get_mut(id).touch(Direction::LoToHi, 64, now);
                }
            });
        });
        g.bench_function(format!("lookup_miss/{name}"), |b| {
            let mut rng = Rng(4);
            b.iter(|| {
                let k = key_of(rng.next() & mask, true);
                black_box(t.lookup(black_box(&k)))
            });
        });
        // A poll loop's rx burst of 32 through `lookup_or_insert_burst`
        // (reads buckets and entries ahead so that their misses overlap).
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("lookup_or_insert_hit_burst32/{name}"), |b| {
            let mut rng = Rng(5);
            let mut out = [Err(TableFull); 32];
            b.iter_batched_ref(
                || std::array::from_fn::<FlowKey, 32, _>(|_| key_of(rng.next() & mask, false)),
                |keys| {
                    t.lookup_or_insert_burst(keys, 1, &mut out);
                    black_box(&out);
                },
                BatchSize::SmallInput,
            );
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

fn churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_table");
    g.throughput(Throughput::Elements(1));
    // One new flow per tick plus expire(budget 4): the clock hand sweeps the
    // table every capacity/4 ticks, so at most timeout + capacity/4 flows are
    // resident and inserts never fail.
    for (name, capacity) in [("1M", CAPACITY), ("4k", 4096)] {
        let timeout = capacity as u64 / 2;
        let mut t = FlowTable::new(capacity, timeout, SEED);
        let mut now = 0u64;
        g.bench_function(format!("churn_insert_expire4/{name}"), |b| {
            b.iter(|| {
                now += 1;
                let r = t.lookup_or_insert(&key_of(now, false), now);
                black_box(r).ok();
                black_box(t.expire(now, 4))
            });
        });
        assert_eq!(
            t.stats().insert_failed,
            0,
            "churn benchmark overflowed the table"
        );
        println!(
            "churn/{name}: {} resident after {} inserts, {} expired",
            t.len(),
            t.stats().inserted,
            t.stats().expired
        );
    }
    g.finish();
}

criterion_group!(benches, hits, churn);
criterion_main!(benches);
