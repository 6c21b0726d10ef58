//! The tunnel's per-packet cost on one core, without DPDK, beside its
//! ceiling: `ring`'s ChaCha20-Poly1305 sealing the same sizes in place.
//!
//! - `seal/raw`: `ring` alone, the crypto ceiling;
//! - `seal/engine`: `Tunnels::send` of an inner packet on an established
//!   session (padding, seal in place, header, timers, counters);
//! - `open/engine`: `Tunnels::receive` of a data message (replay window,
//!   open in place, allowed IPs); each iteration receives a fresh message.
//!
//! `cargo bench --bench tunnel` (scripts/bench/tunnel.sh reads the medians).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use patronus_core::frame::VecFrame;
use patronus_core::tunnel::memory::MemoryIo;
use patronus_core::tunnel::noise::{PeerKeys, StaticKeys};
use patronus_core::tunnel::timers::TimerSettings;
use patronus_core::tunnel::{Outcome, PeerConfig, TunnelConfig, TunnelDrop, Tunnels};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Inner packet sizes of the benchmark.
const SIZES: [usize; 3] = [64, 512, 1420];

fn config(me: u8, peer: u8, allowed: &str) -> TunnelConfig {
    let keys = Arc::new(StaticKeys::new([me; 32]));
    let public = *StaticKeys::new([peer; 32]).public();
    let peers = vec![PeerConfig {
        name: "peer".into(),
        keys: PeerKeys::new(&keys, public, None),
        endpoint: Some("192.0.2.9:51820".parse().unwrap()),
        allowed_ips: vec![allowed.parse().unwrap()],
        persistent_keepalive_s: 0,
        compression: false,
    }];
    TunnelConfig::new(keys, 51820, 1420, TimerSettings::default(), 1000, peers).unwrap()
}

/// An IPv4 packet of `size` bytes from 10.1.0.5.
fn packet(size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[10, 1, 0, 5]);
    p[16..20].copy_from_slice(&[10, 2, 0, 9]);
    p
}

/// Two engines with a session between them.
fn pair() -> (
    TunnelConfig,
    Tunnels<VecFrame>,
    MemoryIo,
    TunnelConfig,
    Tunnels<VecFrame>,
    MemoryIo,
) {
    let (a_cfg, b_cfg) = (config(1, 2, "10.2.0.0/16"), config(2, 1, "10.1.0.0/16"));
    let mut a = Tunnels::new(0, 1, &a_cfg, [1; 16]);
    let mut b = Tunnels::new(0, 1, &b_cfg, [2; 16]);
    let (mut ha, mut hb) = (MemoryIo::seeded(1), MemoryIo::seeded(2));
    let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let sent = a.send(&a_cfg, 0, VecFrame::new(&packet(64)), 1, &mut ha);
    ha.record(sent, &mut a);
    for _ in 0..3 {
        for (_, f) in std::mem::take(&mut ha.sent) {
            let received = b.receive(&b_cfg, from, f, 1, &mut hb);
            hb.record(received, &mut b);
        }
        for (_, f) in std::mem::take(&mut hb.sent) {
            let received = a.receive(&a_cfg, from, f, 1, &mut ha);
            ha.record(received, &mut a);
        }
    }
    assert_eq!(hb.delivered.len(), 1, "the session is up");
    (a_cfg, a, ha, b_cfg, b, hb)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).unwrap());
        let mut buf = vec![0x5a; size.next_multiple_of(16)];
        let mut counter = 0u64;
        g.bench_function(format!("raw/{size}"), |bench| {
            bench.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_le_bytes());
                key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .unwrap()
            })
        });
        let (a_cfg, mut a, mut ha, ..) = pair();
        let inner = packet(size);
        g.bench_function(format!("engine/{size}"), |bench| {
            // Buffers are made and freed outside the timing (criterion drops
            // what the routine returns afterwards).
            bench.iter_batched(
                || VecFrame::new(&inner),
                |frame| a.send(&a_cfg, 0, frame, 2, &mut ha),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let (a_cfg, mut a, mut ha, b_cfg, mut b, mut hb) = pair();
        let inner = packet(size);
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        g.bench_function(format!("engine/{size}"), |bench| {
            bench.iter_batched(
                || {
                    // A fresh message each time: the replay window refuses repeats.
                    match a.send(&a_cfg, 0, VecFrame::new(&inner), 2, &mut ha) {
                        Outcome::Transmit { frame, .. } => frame,
                        other => panic!("a data message, not {other:?}"),
                    }
                },
                |message| b.receive(&b_cfg, from, message, 2, &mut hb),
                BatchSize::SmallInput,
            )
        });
        let dropped: u64 = TunnelDrop::ALL.iter().map(|d| b.counters().drops(*d)).sum();
        assert_eq!(dropped, 0, "every message was opened and delivered");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
