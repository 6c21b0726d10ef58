//! Parser and flow-key cost per frame: 64-byte IPv4/TCP, IPv6/UDP, and a
//! VLAN-tagged IPv4 frame with options.
//!
//! Run with `cargo bench -p patronus-core --bench parse`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use patronus_core::packet::parse::parse;

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let mac = [2, 0, 0, 0, 0, 1];
    let mut tcp4 = Vec::new();
    PacketBuilder::ethernet2(mac, mac)
        .ipv4([10, 0, 0, 1], [10, 0, 1, 1], 64)
        .tcp(40000, 443, 1, 65535)
        .write(&mut tcp4, &[0u8; 6])
        .unwrap();
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(mac, mac)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(5000, 53)
        .write(&mut udp6, &[0u8; 18])
        .unwrap();
    let mut vlan4 = Vec::new();
    let mut ip = etherparse::Ipv4Header::new(
        8 + 18,
        64,
        etherparse::IpNumber::UDP,
        [10, 0, 0, 1],
        [10, 0, 1, 1],
    )
    .unwrap();
    ip.options = [1u8, 1, 1, 0][..].try_into().unwrap();
    PacketBuilder::ethernet2(mac, mac)
        .single_vlan(etherparse::VlanId::try_new(100).unwrap())
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(5000, 53)
        .write(&mut vlan4, &[0u8; 18])
        .unwrap();
    vec![
        ("ipv4_tcp_64", tcp4),
        ("ipv6_udp", udp6),
        ("vlan_ipv4_options_udp", vlan4),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        group.bench_function(name, |b| b.iter(|| parse(black_box(&frame)).unwrap()));
        group.bench_function(format!("{name}+flow_key"), |b| {
            b.iter(|| parse(black_box(&frame)).unwrap().flow_key().unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
