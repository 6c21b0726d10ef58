//! The pipeline's behaviour on frames built with etherparse, without DPDK.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crossbeam_channel::Receiver;
use etherparse::checksum::Sum16BitWords;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::config::Config;
use crate::frame::VecFrame;
use crate::neighbor::{NeighborManager, NeighborShared};
use crate::packet::checksum_adjust;
use crate::stats::{Counter, DropReason};
use crate::testing::key_file;
use crate::tunnel::memory::MemoryIo;
use crate::tunnel::TunnelDrop;

const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x01];
const HOST_A: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x0a];
const HOST_B: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x0b];
const S: u64 = 1_000_000_000;

/// What became of a frame, as the worker carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Sent out of this port.
    Transmit(u16),
    /// Held until `next_hop` on `port` resolves.
    Resolve { port: u16, next_hop: IpAddr },
    /// Consumed, or dropped and counted.
    Gone,
}

impl Verdict {
    fn of(next: Next) -> Verdict {
        match next {
            Next::Transmit(port) => Verdict::Transmit(port),
            Next::Resolve { port, next_hop } => Verdict::Resolve { port, next_hop },
            Next::Gone => Verdict::Gone,
            other => panic!("the pipeline left a packet at {other:?}"),
        }
    }
}

struct Rig {
    cfg: Snapshot,
    neighbors: std::sync::Arc<NeighborSnapshot>,
    pipeline: Pipeline<VecFrame>,
    burst: Box<Burst<VecFrame>>,
    env: MemoryIo,
    events: Receiver<NeighborEvent>,
    /// What the last run added to the burst (datagrams the tunnel originated).
    extra: Vec<(Verdict, Option<VecFrame>)>,
}

fn rig_with(extra: &str) -> Rig {
    let text = format!(
        r#"
        [worker]
        flow_capacity = 1024
        [icmp]
        errors_per_s = 1
        errors_burst = 3
        [[port]]
        name = "lan"
        device = "net_ring0"
        addresses = ["10.0.1.1/24", "fd00:1::1/64"]
        [[port]]
        name = "wan"
        device = "net_ring1"
        mtu = 1400
        addresses = ["10.0.2.1/24", "fd00:2::1/64"]
        [[route]]
        prefix = "192.168.0.0/16"
        via = "10.0.2.254"
        {extra}
        "#
    );
    let config = Config::from_toml(&text).expect("test config parses");
    let mut cfg = config.validate(1).expect("test config is valid");
    cfg.set_port_macs(&[LAN_MAC, WAN_MAC]);
    let (tx, events) = crossbeam_channel::bounded(64);
    let setup = PipelineSetup {
        worker: 0,
        inboxes: crate::worker::tunnel_inboxes(1),
        shared_uplinks: std::sync::Arc::default(),
        announcements: crate::dpi::Announcements::new(1),
        events: tx,
        seed: 7,
        now_ns: 0,
    };
    Rig {
        pipeline: Pipeline::new(&cfg, setup),
        cfg,
        neighbors: std::sync::Arc::new(NeighborSnapshot::default()),
        burst: Burst::boxed(),
        env: MemoryIo::seeded(7),
        events,
        extra: Vec::new(),
    }
}

fn rig() -> Rig {
    rig_with("")
}

impl Rig {
    fn learn(&mut self, port: u16, ip: &str, mac: [u8; 6]) {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let shared = std::sync::Arc::new(NeighborShared::default());
        let mut m = NeighborManager::new(self.cfg.neighbors.clone(), shared.clone(), rx);
        for (&(p, a), e) in self.neighbors.iter() {
            tx.send(NeighborEvent {
                port: p,
                ip: a,
                mac: e.mac,
                now_ns: e.confirmed_ns,
                create: true,
            })
            .unwrap();
            m.tick(e.confirmed_ns);
        }
        tx.send(NeighborEvent {
            port,
            ip: ip.parse().unwrap(),
            mac,
            now_ns: 0,
            create: true,
        })
        .unwrap();
        m.tick(0);
        self.neighbors = shared.load();
    }

    /// Runs one frame received on `in_port`; it is left in `frame` when it
    /// is still there to look at.
    fn run(&mut self, in_port: u16, frame: &mut VecFrame, generation: u32, now_ns: u64) -> Verdict {
        let taken = std::mem::replace(frame, VecFrame::empty());
        let mut out = self.run_burst(in_port, vec![taken], generation, now_ns);
        let (verdict, left) = out.remove(0);
        if let Some(left) = left {
            *frame = left;
        }
        self.extra = out;
        verdict
    }

    /// Runs frames received on `in_port` as one burst: what became of each
    /// slot, in order, those the pipeline added included.
    fn run_burst(
        &mut self,
        in_port: u16,
        frames: Vec<VecFrame>,
        generation: u32,
        now_ns: u64,
    ) -> Vec<(Verdict, Option<VecFrame>)> {
        for frame in frames {
            self.burst.push_received(in_port, frame).unwrap();
        }
        let ctx = Context {
            cfg: &self.cfg,
            neighbors: &self.neighbors,
            fwd_generation: generation,
            now_ns,
        };
        self.env.now_ns = now_ns;
        self.pipeline.run(&ctx, &mut self.burst, &mut self.env);
        let nexts: Vec<Next> = self.burst.next_all().collect();
        let mut left = Vec::new();
        self.burst.drain(|_, _, frame| left.push(frame));
        let mut left = left.into_iter();
        nexts
            .into_iter()
            .map(|next| {
                let frame = (next != Next::Gone).then(|| left.next().unwrap());
                (Verdict::of(next), frame)
            })
            .collect()
    }

    /// Packets waiting for peer 0's handshake.
    fn queued_for_tunnel(&self) -> usize {
        self.pipeline.tunnels().unwrap().queued(0)
    }
}

fn udp4(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> VecFrame {
    let b = PacketBuilder::ethernet2(HOST_A, LAN_MAC)
        .ipv4(src, dst, ttl)
        .udp(4000, 53);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

fn udp6(src: &str, dst: &str, hops: u8, payload: &[u8]) -> VecFrame {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2(HOST_A, LAN_MAC)
        .ipv6(src.octets(), dst.octets(), hops)
        .udp(4000, 53);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

fn icmp4_valid(msg: &[u8]) -> bool {
    Sum16BitWords::new().add_slice(msg).ones_complement() == 0
}

fn icmp6_valid(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> bool {
    let mut s = Sum16BitWords::new();
    s = s.add_16bytes(src);
    s = s.add_16bytes(dst);
    s = s.add_4bytes((msg.len() as u32).to_be_bytes());
    s = s.add_4bytes([0, 0, 0, 58]);
    s.add_slice(msg).ones_complement() == 0
}

#[test]
fn forwards_ipv4_rewriting_macs_and_ttl() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, b"hello");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let etherparse::LinkHeader::Ethernet2(eth) = eth else {
        panic!("not ethernet")
    };
    assert_eq!((eth.destination, eth.source), (HOST_B, WAN_MAC));
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.time_to_live, 63);
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "incremental checksum update is exact"
    );
    assert_eq!(r.pipeline.counters.get(Counter::Forwarded), 1);
    assert_eq!(r.pipeline.flows().len(), 1);
}

#[test]
fn unresolved_next_hop_asks_for_resolution() {
    let mut r = rig();
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, b"x");
    assert_eq!(
        r.run(0, &mut f, 1, S),
        Verdict::Resolve {
            port: 1,
            next_hop: "10.0.2.254".parse().unwrap()
        }
    );
    // On-link destinations resolve the destination itself.
    let mut f = udp4([10, 0, 1, 2], [10, 0, 2, 9], 64, b"x");
    assert_eq!(
        r.run(0, &mut f, 1, S),
        Verdict::Resolve {
            port: 1,
            next_hop: "10.0.2.9".parse().unwrap()
        }
    );
}

#[test]
fn cached_decision_is_dropped_when_generation_changes() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    r.learn(1, "10.0.2.254", [2, 9, 9, 9, 9, 9]);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, b"x");
    r.run(0, &mut f, 1, S);
    assert_eq!(&f.data()[0..6], &HOST_B, "same generation: cached MAC");
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, b"x");
    r.run(0, &mut f, 2, S);
    assert_eq!(
        &f.data()[0..6],
        &[2, 9, 9, 9, 9, 9],
        "new generation: fresh lookup"
    );
}

#[test]
fn no_route_answers_net_unreachable() {
    let mut r = rig();
    let mut f = udp4([10, 0, 1, 2], [8, 8, 8, 8], 64, b"payload");
    let original = f.data()[14..].to_vec();
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.drops(DropReason::NoRoute), 1);
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 1, 1));
    assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 0, 1, 2));
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not icmp")
    };
    assert!(matches!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(_)
    ));
    assert_eq!(
        icmp.payload(),
        &original[..],
        "quotes the whole short datagram"
    );
    assert!(icmp4_valid(&f.data()[34..]));
    assert_eq!(&f.data()[0..6], &HOST_A);
}

#[test]
fn ttl_one_answers_time_exceeded() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 1, 1], 1, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.drops(DropReason::TtlExceeded), 1);
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not icmp")
    };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::TimeExceeded(_)));
    assert!(icmp4_valid(&f.data()[34..]));
}

#[test]
fn icmp_errors_are_rate_limited() {
    let mut r = rig();
    let mut sent = 0;
    for _ in 0..10 {
        let mut f = udp4([10, 0, 1, 2], [8, 8, 8, 8], 64, b"x");
        if r.run(0, &mut f, 1, S) == Verdict::Transmit(0) {
            sent += 1;
        }
    }
    assert_eq!(sent, 3, "burst of 3");
    assert_eq!(r.pipeline.counters.get(Counter::IcmpRateLimited), 7);
    let mut f = udp4([10, 0, 1, 2], [8, 8, 8, 8], 64, b"x");
    assert_eq!(
        r.run(0, &mut f, 1, 3 * S),
        Verdict::Transmit(0),
        "refilled at 1/s"
    );
}

#[test]
fn no_icmp_error_about_an_icmp_error() {
    let mut r = rig();
    let b = PacketBuilder::ethernet2(HOST_A, LAN_MAC)
        .ipv4([10, 0, 1, 2], [8, 8, 8, 8], 64)
        .icmpv4(Icmpv4Type::TimeExceeded(
            etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
        ));
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 28]).unwrap();
    let mut f = VecFrame::new(&out);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert_eq!(r.pipeline.counters.drops(DropReason::NoRoute), 1);
}

#[test]
fn too_big_with_df_answers_fragmentation_needed() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 1, 1], 64, &[0u8; 1450]);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.drops(DropReason::TooBig), 1);
    assert_eq!(&f.data()[34..36], &[3, 4]);
    assert_eq!(
        u16::from_be_bytes([f.data()[40], f.data()[41]]),
        1400,
        "reports the next-hop MTU"
    );
    assert_eq!(f.len(), 14 + 576, "quote limited to 576 bytes in all");
    assert!(icmp4_valid(&f.data()[34..]));
}

#[test]
fn answers_echo_to_own_address() {
    let mut r = rig();
    let b = PacketBuilder::ethernet2(HOST_A, LAN_MAC)
        .ipv4([10, 0, 1, 2], [10, 0, 2, 1], 64)
        .icmpv4_echo_request(77, 3);
    let mut out = Vec::new();
    b.write(&mut out, b"ping-data").unwrap();
    let mut f = VecFrame::new(&out);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 2, 1));
    assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 0, 1, 2));
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not icmp")
    };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::EchoReply(e) if e.id == 77 && e.seq == 3));
    assert_eq!(icmp.payload(), b"ping-data");
    assert!(icmp4_valid(&f.data()[34..]));
}

#[test]
fn answers_arp_for_own_address_and_learns_sender() {
    let mut r = rig();
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&HOST_A);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&HOST_A);
    frame.extend_from_slice(&[10, 0, 1, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 0, 1, 1]);
    frame.resize(60, 0);
    let mut f = VecFrame::new(&frame);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    let d = f.data();
    assert_eq!(&d[0..6], &HOST_A);
    assert_eq!(&d[6..12], &LAN_MAC);
    assert_eq!(&d[20..22], &[0, 2], "reply");
    assert_eq!(&d[22..28], &LAN_MAC);
    assert_eq!(&d[28..32], &[10, 0, 1, 1]);
    assert_eq!(&d[32..38], &HOST_A);
    assert_eq!(&d[38..42], &[10, 0, 1, 2]);
    let ev = r.events.try_recv().expect("sender learned");
    assert_eq!(
        (ev.port, ev.ip, ev.mac, ev.create),
        (0, "10.0.1.2".parse().unwrap(), HOST_A, true)
    );
    // A request for someone else's address is not answered, and only refreshes.
    frame[41] = 99;
    let mut f = VecFrame::new(&frame);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert!(!r.events.try_recv().unwrap().create);
}

#[test]
fn solicits_with_arp_and_ns() {
    let mut r = rig();
    let mut f = VecFrame::empty();
    assert!(r
        .pipeline
        .solicit(&r.cfg, 1, "10.0.2.9".parse().unwrap(), &mut f));
    let d = f.data();
    assert_eq!(d.len(), 60);
    assert_eq!(&d[0..6], &[0xff; 6]);
    assert_eq!(
        &d[28..32],
        &[10, 0, 2, 1],
        "asks from the port's address on that subnet"
    );
    assert_eq!(&d[38..42], &[10, 0, 2, 9]);

    let mut f = VecFrame::empty();
    assert!(r
        .pipeline
        .solicit(&r.cfg, 1, "fd00:2::9".parse().unwrap(), &mut f));
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    assert_eq!(
        ip.header().destination_addr(),
        "ff02::1:ff00:9".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(ip.header().hop_limit(), 255);
    assert_eq!(&f.data()[0..6], &[0x33, 0x33, 0xff, 0, 0, 9]);
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("not icmpv6")
    };
    assert_eq!(icmp.type_u8(), 135);
    assert!(icmp6_valid(
        ip.header().source(),
        ip.header().destination(),
        &f.data()[54..]
    ));
    assert_eq!(r.pipeline.counters.get(Counter::ArpRequests), 1);
    assert_eq!(r.pipeline.counters.get(Counter::NdSolicitations), 1);
}

#[test]
fn answers_neighbor_solicitation_and_learns() {
    let mut r = rig();
    // Build an NS from a host for our fd00:1::1 by letting the gateway write one, then readdress it.
    let mut ns = VecFrame::empty();
    assert!(super::write_solicitation(
        &r.cfg.ports[0],
        "fd00:1::1".parse().unwrap(),
        &mut ns
    ));
    let host: Ipv6Addr = "fd00:1::2".parse().unwrap();
    let group: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    {
        let d = ns.data_mut();
        d[6..12].copy_from_slice(&HOST_A);
        d[22..38].copy_from_slice(&host.octets());
        d[80..86].copy_from_slice(&HOST_A);
        d[56..58].copy_from_slice(&[0, 0]);
        let csum = super::icmp::checksum_v6(host, group, &d[54..]);
        d[56..58].copy_from_slice(&csum.to_be_bytes());
    }
    assert_eq!(r.run(0, &mut ns, 1, S), Verdict::Transmit(0));
    let p = SlicedPacket::from_ethernet(ns.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().destination_addr(), host);
    assert_eq!(
        ip.header().source_addr(),
        "fd00:1::1".parse::<Ipv6Addr>().unwrap()
    );
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("not icmpv6")
    };
    assert!(
        matches!(icmp.icmp_type(), Icmpv6Type::NeighborAdvertisement(h) if h.router && h.solicited && h.r#override)
    );
    assert!(icmp6_valid(
        ip.header().source(),
        ip.header().destination(),
        &ns.data()[54..]
    ));
    assert_eq!(&ns.data()[0..6], &HOST_A);
    let ev = r.events.try_recv().unwrap();
    assert_eq!((ev.ip, ev.mac, ev.create), (IpAddr::V6(host), HOST_A, true));

    // The same NS with a hop limit below 255 is invalid (RFC 4861 7.1.1).
    let mut bad = VecFrame::empty();
    super::write_solicitation(&r.cfg.ports[0], "fd00:1::1".parse().unwrap(), &mut bad);
    bad.data_mut()[21] = 64;
    assert_eq!(r.run(0, &mut bad, 1, S), Verdict::Gone);
    assert_eq!(
        r.pipeline.counters.drops(DropReason::BadNeighborDiscovery),
        1
    );
}

#[test]
fn forwards_ipv6_and_answers_hop_limit_exceeded() {
    let mut r = rig_with("[[route]]\nprefix = \"2001:db8::/32\"\nvia = \"fd00:2::fe\"");
    r.learn(1, "fd00:2::fe", HOST_B);
    let mut f = udp6("fd00:1::2", "2001:db8::5", 9, b"v6");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    assert_eq!(f.data()[21], 8, "hop limit decremented");
    assert_eq!(&f.data()[0..6], &HOST_B);

    let mut f = udp6("fd00:1::2", "2001:db8::5", 1, b"v6");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    assert_eq!(
        ip.header().source_addr(),
        "fd00:1::1".parse::<Ipv6Addr>().unwrap()
    );
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("not icmpv6")
    };
    assert!(matches!(icmp.icmp_type(), Icmpv6Type::TimeExceeded(_)));
    assert!(icmp6_valid(
        ip.header().source(),
        ip.header().destination(),
        &f.data()[54..]
    ));

    let mut f = udp6("fd00:1::2", "2001:db9::5", 9, b"v6");
    assert_eq!(
        r.run(0, &mut f, 1, S),
        Verdict::Transmit(0),
        "no route: destination unreachable"
    );
    assert_eq!(f.data()[54], 1);
}

#[test]
fn answers_echo_to_its_link_local_address() {
    // The link-local address comes from the port's MAC, known only once the
    // device has started: it must count as ours from then on.
    let mut r = rig();
    let src: Ipv6Addr = "fe80::2".parse().unwrap();
    let dst = crate::config::link_local_from_mac(LAN_MAC);
    let b = PacketBuilder::ethernet2(HOST_A, LAN_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(5, 6);
    let mut out = Vec::new();
    b.write(&mut out, b"abc").unwrap();
    let mut f = VecFrame::new(&out);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.get(Counter::EchoReplies), 1);
}

#[test]
fn answers_ipv6_echo() {
    let mut r = rig();
    let src: Ipv6Addr = "fd00:1::2".parse().unwrap();
    let dst: Ipv6Addr = "fd00:2::1".parse().unwrap();
    let b = PacketBuilder::ethernet2(HOST_A, LAN_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(5, 6);
    let mut out = Vec::new();
    b.write(&mut out, b"abc").unwrap();
    let mut f = VecFrame::new(&out);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    let p = SlicedPacket::from_ethernet(f.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    assert_eq!(
        (ip.header().source_addr(), ip.header().destination_addr()),
        (dst, src)
    );
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("not icmpv6")
    };
    assert!(matches!(icmp.icmp_type(), Icmpv6Type::EchoReply(e) if e.id == 5 && e.seq == 6));
    assert!(icmp6_valid(dst.octets(), src.octets(), &f.data()[54..]));
}

#[test]
fn never_forwards_broadcast_multicast_or_foreign_unicast() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4([10, 0, 1, 2], [10, 0, 1, 255], 64, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone, "directed broadcast");
    let mut f = udp4([10, 0, 1, 2], [224, 0, 0, 5], 64, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone, "multicast");
    assert_eq!(r.pipeline.counters.drops(DropReason::NotRoutable), 2);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 1, 1], 64, b"x");
    f.data_mut()[0..6].copy_from_slice(&[2, 7, 7, 7, 7, 7]);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert_eq!(r.pipeline.counters.drops(DropReason::NotForUs), 1);
}

#[test]
fn malformed_frames_are_counted_by_reason() {
    let mut r = rig();
    let mut f = udp4([10, 0, 1, 2], [192, 168, 1, 1], 64, b"x");
    f.data_mut()[14] = 0x44; // IHL 4
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    let mut f = VecFrame::new(&[0u8; 10]);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    let total: u64 = crate::packet::parse::ParseError::ALL
        .iter()
        .map(|e| r.pipeline.counters.parse_drops(*e))
        .sum();
    assert_eq!(total, 2);
    assert_eq!(
        r.pipeline
            .counters
            .parse_drops(crate::packet::parse::ParseError::TruncatedEthernet),
        1
    );
}

#[test]
fn udp_to_gateway_answers_port_unreachable() {
    let mut r = rig();
    let mut f = udp4([10, 0, 1, 2], [10, 0, 1, 1], 64, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(&f.data()[34..36], &[3, 3]);
    assert_eq!(r.pipeline.counters.drops(DropReason::LocalUnsupported), 1);
}

#[test]
fn checksum_adjust_matches_full_recompute() {
    // RFC 1624's example values and a sweep of TTLs.
    for ttl in 2..=255u8 {
        let mut h = etherparse::Ipv4Header::new(
            20,
            ttl,
            etherparse::IpNumber::UDP,
            [10, 0, 0, 1],
            [10, 9, 9, 9],
        )
        .unwrap();
        h.header_checksum = h.calc_header_checksum();
        let old = u16::from_be_bytes([ttl, 17]);
        let new = u16::from_be_bytes([ttl - 1, 17]);
        let adjusted = checksum_adjust(h.header_checksum, old, new);
        h.time_to_live -= 1;
        assert_eq!(adjusted, h.calc_header_checksum(), "ttl {ttl}");
    }
}

#[test]
fn forwards_fragments_and_counts_them() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, &[7u8; 64]);
    // More-fragments, offset 0: the first fragment.
    f.data_mut()[20] = 0x20;
    fix_ipv4_checksum(&mut f);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    // Offset 64 bytes, last: no L4 header, keyed on addresses alone.
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, &[7u8; 64]);
    f.data_mut()[20..22].copy_from_slice(&8u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    assert_eq!(r.pipeline.counters.get(Counter::Fragments), 2);
    assert_eq!(r.pipeline.counters.get(Counter::Forwarded), 2);
    assert_eq!(f.data()[22], 63, "TTL decremented on a later fragment too");
}

#[test]
fn no_icmp_error_about_a_later_fragment() {
    let mut r = rig();
    let mut f = udp4([10, 0, 1, 2], [8, 8, 8, 8], 64, &[7u8; 64]);
    f.data_mut()[20..22].copy_from_slice(&8u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert_eq!(r.pipeline.counters.drops(DropReason::NoRoute), 1);
    assert_eq!(r.pipeline.counters.get(Counter::IcmpErrors), 0);
}

fn fix_ipv4_checksum(f: &mut VecFrame) {
    let d = f.data_mut();
    d[24..26].copy_from_slice(&[0, 0]);
    let csum = Sum16BitWords::new()
        .add_slice(&d[14..34])
        .ones_complement()
        .to_be();
    d[24..26].copy_from_slice(&csum.to_be_bytes());
}

#[test]
fn a_mixed_burst_gets_the_same_verdicts_as_single_frames() {
    let frames = || {
        vec![
            udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, b"fwd"),
            VecFrame::new(&[0u8; 20]),
            udp4([10, 0, 1, 2], [8, 8, 8, 8], 64, b"no route"),
            udp4([10, 0, 1, 3], [192, 168, 7, 8], 64, b"fwd2"),
            udp4([10, 0, 1, 2], [192, 168, 7, 7], 1, b"ttl"),
        ]
    };
    let mut single = rig();
    single.learn(1, "10.0.2.254", HOST_B);
    let mut one_by_one = frames();
    let expected: Vec<Verdict> = one_by_one
        .iter_mut()
        .map(|f| single.run(0, f, 1, S))
        .collect();
    assert_eq!(
        expected,
        vec![
            Verdict::Transmit(1),
            Verdict::Gone,
            Verdict::Transmit(0),
            Verdict::Transmit(1),
            Verdict::Transmit(0)
        ]
    );

    let mut batched = rig();
    batched.learn(1, "10.0.2.254", HOST_B);
    let (verdicts, burst): (Vec<Verdict>, Vec<Option<VecFrame>>) =
        batched.run_burst(0, frames(), 1, S).into_iter().unzip();
    assert_eq!(verdicts, expected);
    // Stages run in order over the whole burst, so the ICMP errors of the
    // burst (TTL from `admit`, no route from `route`) are numbered in stage
    // order rather than frame order: the same identifications, otherwise
    // the same bytes.
    let ids = |frames: &mut Vec<Option<Vec<u8>>>| {
        let mut ids: Vec<[u8; 2]> = Vec::new();
        for f in frames.iter_mut().flatten() {
            ids.push([f[18], f[19]]);
            f[18..20].fill(0);
            f[24..26].fill(0);
        }
        ids.sort();
        ids
    };
    let bytes = |f: Option<VecFrame>| f.map(|f| f.data().to_vec());
    let mut one_by_one: Vec<Option<Vec<u8>>> = one_by_one
        .into_iter()
        .zip(&expected)
        .map(|(f, v)| bytes((*v != Verdict::Gone).then_some(f)))
        .collect();
    let mut burst: Vec<Option<Vec<u8>>> = burst.into_iter().map(bytes).collect();
    assert_eq!(ids(&mut burst), ids(&mut one_by_one));
    assert_eq!(burst, one_by_one, "identical rewrites");
    assert_eq!(batched.pipeline.counters, single.pipeline.counters);
    // The unroutable packet got a flow entry too: flows are looked up before routes.
    assert_eq!(batched.pipeline.flows().len(), 3);
}

#[test]
fn forwarded_flows_are_classified_and_counted() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["www", "netflix", "com"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, &query);
    let ip_len = (f.len() - 14) as u64;
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    let dpi = r.pipeline.dpi_counters();
    assert_eq!(dpi.category_flows(crate::dpi::Category::DNS), 1);
    assert_eq!(dpi.category_bytes(crate::dpi::Category::DNS), ip_len);
    let label = crate::dpi::counters::label_id("DNS.NetFlix", crate::dpi::Category::DNS);
    assert_eq!(dpi.app_flows(label), 1);
    // Later packets of the flow only add bytes.
    let mut f = udp4([10, 0, 1, 2], [192, 168, 7, 7], 64, &query);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    assert_eq!(dpi.app_flows(label), 1);
    assert_eq!(dpi.app_bytes(label), 2 * ip_len);
}

#[test]
fn classification_can_be_disabled() {
    let mut r = rig_with("[dpi]\nenabled = false\n");
    r.learn(1, "10.0.2.254", HOST_B);
    let mut f = udp4(
        [10, 0, 1, 2],
        [192, 168, 7, 7],
        64,
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01",
    );
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(1));
    assert_eq!(
        r.pipeline
            .dpi_counters()
            .category_flows(crate::dpi::Category::DNS),
        0
    );
}

#[test]
fn multicast_or_broadcast_sources_are_never_answered_or_forwarded() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    for src in [[224, 0, 0, 1], [255, 255, 255, 255]] {
        let mut f = udp4(src, [192, 168, 7, 7], 64, b"x");
        assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
        let mut f = udp4(src, [10, 0, 1, 1], 64, b"x");
        assert_eq!(
            r.run(0, &mut f, 1, S),
            Verdict::Gone,
            "no port unreachable to {src:?}"
        );
    }
    let mut f = udp6("ff02::1", "fd00:1::1", 64, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert_eq!(
        r.pipeline.counters.drops(DropReason::InvalidSourceAddress),
        5
    );
}

fn tunnel_rig(name: &str) -> Rig {
    let key = key_file(name, [7; 32]);
    rig_with(&format!(
        r#"
        [tunnel]
        private_key_file = "{}"
        addresses = ["10.99.0.1/24"]
        [[peer]]
        name = "branch"
        endpoint = {{ address = "10.0.2.50", port = 51820 }}
        wireguard = {{ public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }}
        allowed_ips = ["10.9.0.0/24", "fd09::/64"]
        "#,
        key.display()
    ))
}

#[test]
fn packets_for_a_peers_allowed_ips_are_sent_into_the_tunnel() {
    let mut r = tunnel_rig("into");
    let endpoint = IpAddr::from([10, 0, 2, 50]);
    for round in 0..2 {
        let mut f = udp4([10, 0, 1, 5], [10, 9, 0, 7], 64, b"payload");
        assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone, "round {round}");
        assert_eq!(r.queued_for_tunnel(), round + 1, "waiting for a session");
        // The first packet starts a handshake, toward the peer's endpoint
        // (whose next hop is not resolved yet); the second waits for it.
        let initiations: Vec<Verdict> = r.extra.iter().map(|(v, _)| *v).collect();
        let expected = match round {
            0 => vec![Verdict::Resolve {
                port: 1,
                next_hop: endpoint,
            }],
            _ => vec![],
        };
        assert_eq!(initiations, expected);
    }
    let mut f = udp6("fd00:1::5", "fd09::7", 64, b"payload");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert_eq!(r.queued_for_tunnel(), 3);
    // An address of the tunnel's subnet that no peer owns is unreachable.
    let mut f = udp4([10, 0, 1, 5], [10, 99, 0, 7], 64, b"x");
    assert_eq!(
        r.run(0, &mut f, 1, S),
        Verdict::Transmit(0),
        "an ICMP error back"
    );
    assert_eq!(r.pipeline.counters.drops(DropReason::NoRoute), 1);
}

#[test]
fn packets_too_big_for_the_tunnel_are_refused_with_an_icmp_error() {
    let mut r = tunnel_rig("mtu");
    let mut f = udp4([10, 0, 1, 5], [10, 9, 0, 7], 64, &[0; 1420]);
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.drops(DropReason::TooBig), 1);
}

#[test]
fn datagrams_to_the_listen_port_are_the_tunnels() {
    let mut r = tunnel_rig("listen");
    // A handshake initiation of exactly its length, behind Ethernet
    // padding: only with the padding trimmed does the engine see an
    // initiation (and refuse its MAC1) rather than a malformed message.
    let mut initiation = [0u8; 148];
    initiation[0] = 1;
    let b = PacketBuilder::ethernet2(HOST_B, WAN_MAC)
        .ipv4([10, 0, 2, 50], [10, 0, 2, 1], 64)
        .udp(40000, 51820);
    let mut out = Vec::new();
    b.write(&mut out, &initiation).unwrap();
    out.extend_from_slice(&[0; 6]); // Ethernet padding
    let mut f = VecFrame::new(&out);
    assert_eq!(r.run(1, &mut f, 1, S), Verdict::Gone);
    let engine = r.pipeline.tunnels().unwrap();
    assert_eq!(engine.counters().drops(TunnelDrop::BadMac), 1);
    assert_eq!(engine.counters().drops(TunnelDrop::Malformed), 0);
    // Another port is not the tunnel's.
    let mut f = udp4([10, 0, 1, 5], [10, 0, 1, 1], 64, b"x");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.drops(DropReason::LocalUnsupported), 1);
}

#[test]
fn decrypted_packets_are_forwarded_and_answered_like_received_ones() {
    let mut r = tunnel_rig("out");
    let tunnel = r.cfg.tunnel_port().unwrap();
    r.learn(0, "10.0.1.5", HOST_A);
    let from_tunnel = |src: [u8; 4], dst: [u8; 4], payload: &[u8]| {
        let b = PacketBuilder::ethernet2(crate::config::TUNNEL_MAC, crate::config::TUNNEL_MAC)
            .ipv4(src, dst, 64)
            .icmpv4_echo_request(1, 1);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        VecFrame::new(&out)
    };
    let mut f = from_tunnel([10, 9, 0, 7], [10, 0, 1, 5], b"ping");
    assert_eq!(r.run(tunnel, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(&f.data()[0..6], &HOST_A);
    // The tunnel interface's own address answers pings, back into the
    // tunnel (where the reply waits for the peer's session).
    let mut f = from_tunnel([10, 9, 0, 7], [10, 99, 0, 1], b"ping");
    assert_eq!(r.run(tunnel, &mut f, 1, S), Verdict::Gone);
    assert_eq!(r.pipeline.counters.get(Counter::EchoReplies), 1);
    assert_eq!(r.queued_for_tunnel(), 1);
}

#[test]
fn tunnel_configuration_errors_name_the_field() {
    let base = r#"
        [[port]]
        name = "wan"
        device = "net_ring0"
        addresses = ["10.0.2.1/24"]
    "#;
    let peer = r#"
        [[peer]]
        name = "branch"
        endpoint = { address = "10.0.2.50", port = 51820 }
        wireguard = { public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }
        allowed_ips = ["10.9.0.0/24"]
    "#;
    let err = |text: String| Config::from_toml(&text).unwrap().validate(1).unwrap_err();

    let e = err(format!("{base}{peer}"));
    assert_eq!(e.field, "peer[branch].allowed_ips");

    let key = key_file("perm", [7; 32]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let tunnel = format!("[tunnel]\nprivate_key_file = \"{}\"\n", key.display());
    let e = err(format!("{base}{tunnel}{peer}"));
    assert_eq!(e.field, "tunnel.private_key_file");
    assert!(e.message.contains("chmod 600"), "{}", e.message);

    let key = key_file("conflict", [7; 32]);
    let tunnel = format!("[tunnel]\nprivate_key_file = \"{}\"\n", key.display());
    let route = "[[route]]\nprefix = \"10.9.0.0/24\"\nvia = \"10.0.2.254\"\n";
    let e = err(format!("{base}{route}{tunnel}{peer}"));
    assert_eq!(e.field, "peer[branch].allowed_ips[0]");

    let e = err(format!(
        "{base}{tunnel}{}",
        peer.replace("10.9.0.0/24", "10.9.0.1/24")
    ));
    assert_eq!(e.field, "peer[branch].allowed_ips[0]");
    assert!(e.message.contains("host bits"));

    let e = err(format!("{base}{tunnel}mtu = 100\n{peer}"));
    assert_eq!(e.field, "tunnel.mtu");
}

#[test]
fn tunnel_allowed_ips_by_peer_name_route_like_the_peers_own() {
    let key = key_file("local-routes", [7; 32]);
    let mut r = rig_with(&format!(
        r#"
        [tunnel]
        private_key_file = "{}"
        [tunnel.allowed_ips]
        branch = ["10.9.0.0/24"]
        nobody = ["10.8.0.0/24"]
        [[peer]]
        name = "branch"
        endpoint = {{ address = "10.0.2.50", port = 51820 }}
        wireguard = {{ public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }}
        "#,
        key.display()
    ));
    let mut f = udp4([10, 0, 1, 5], [10, 9, 0, 7], 64, b"payload");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    assert_eq!(r.queued_for_tunnel(), 1);
    // A name without a peer routes nothing: no route, an ICMP error back.
    let mut f = udp4([10, 0, 1, 5], [10, 8, 0, 7], 64, b"payload");
    assert_eq!(r.run(0, &mut f, 1, S), Verdict::Transmit(0));
    assert_eq!(r.pipeline.counters.drops(DropReason::NoRoute), 1);

    let bad = format!(
        "[[port]]\nname = \"wan\"\ndevice = \"net_ring0\"\naddresses = [\"10.0.2.1/24\"]\n\
         [tunnel]\nprivate_key_file = \"{}\"\n[tunnel.allowed_ips]\nbranch = [\"10.9.0.1/24\"]\n",
        key.display()
    );
    let e = Config::from_toml(&bad).unwrap().validate(1).unwrap_err();
    assert_eq!(e.field, "tunnel.allowed_ips.branch[0]");
}

/// A UDP datagram between the given endpoints, as `port`'s neighbour sends it.
fn udp4_between(port: u16, src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> VecFrame {
    let (from, to) = if port == 0 {
        (HOST_A, LAN_MAC)
    } else {
        (HOST_B, WAN_MAC)
    };
    let b = PacketBuilder::ethernet2(from, to)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

/// A DNS query for `name`.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

const DENY_DNS_PORT: &str = r#"
    [[policy]]
    name = "no-dns"
    [[policy.rule]]
    action = "deny"
    priority = 10
    conditions = [{ type = "destination-port", value = "53" }, { type = "protocol", value = "udp" }]
"#;

#[test]
fn a_deny_rule_drops_both_directions_of_its_flows_and_counts_them_per_rule() {
    let mut r = rig_with(DENY_DNS_PORT);
    r.learn(1, "10.0.2.254", HOST_B);
    r.learn(0, "10.0.1.2", HOST_A);
    let slot = r.cfg.site.rules[0].slot;
    let query = udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 53), b"q");
    let answer = udp4_between(1, ([192, 168, 7, 7], 53), ([10, 0, 1, 2], 4000), b"a");
    let other = udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 54), b"x");
    for (port, mut f, expected) in [
        (0, query, Verdict::Gone),
        (1, answer, Verdict::Gone),
        (0, other, Verdict::Transmit(1)),
    ] {
        assert_eq!(r.run(port, &mut f, 1, S), expected);
    }
    assert_eq!(r.pipeline.counters.drops(DropReason::PolicyDenied), 2);
    assert_eq!(r.pipeline.policy_counters().drops(slot), 2);
}

#[test]
fn the_highest_priority_rule_that_matches_decides() {
    let mut r = rig_with(&format!(
        r#"{DENY_DNS_PORT}
        [[policy]]
        name = "resolver"
        [[policy.rule]]
        action = "allow"
        priority = 20
        conditions = [{{ type = "source-prefix", value = "10.0.1.2/32" }}]
        "#
    ));
    r.learn(1, "10.0.2.254", HOST_B);
    let mut allowed = udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 53), b"q");
    let mut denied = udp4_between(0, ([10, 0, 1, 3], 4000), ([192, 168, 7, 7], 53), b"q");
    assert_eq!(r.run(0, &mut allowed, 1, S), Verdict::Transmit(1));
    assert_eq!(r.run(0, &mut denied, 1, S), Verdict::Gone);
    assert_eq!(r.pipeline.counters.drops(DropReason::PolicyDenied), 1);
}

#[test]
fn a_category_rule_applies_once_the_flow_is_classified() {
    let mut r = rig_with(
        r#"
        [[policy]]
        name = "no-name-lookups"
        [[policy.rule]]
        action = "deny"
        priority = 10
        conditions = [{ type = "category", value = "DNS" }]
        "#,
    );
    r.learn(1, "10.0.2.254", HOST_B);
    // No payload yet: nothing to classify, the flow passes.
    let mut first = udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 5353), b"");
    assert_eq!(r.run(0, &mut first, 1, S), Verdict::Transmit(1));
    // Its first query classifies it as DNS: from then on it is denied.
    let query = dns_query("www.example.com");
    for _ in 0..2 {
        let mut f = udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 5353), &query);
        assert_eq!(r.run(0, &mut f, 1, S), Verdict::Gone);
    }
    assert_eq!(r.pipeline.counters.drops(DropReason::PolicyDenied), 2);
}

#[test]
fn a_new_configuration_decides_the_flows_again() {
    let mut r = rig();
    r.learn(1, "10.0.2.254", HOST_B);
    let packet = || udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 53), b"q");
    assert_eq!(r.run(0, &mut packet(), 1, S), Verdict::Transmit(1));
    // The same flow under a configuration that denies it.
    let mut denying = rig_with(DENY_DNS_PORT).cfg;
    denying.generation = r.cfg.generation + 1;
    r.cfg = denying;
    assert_eq!(r.run(0, &mut packet(), 2, S), Verdict::Gone);
    // And allowed again without the rule.
    let mut allowing = rig().cfg;
    allowing.generation = r.cfg.generation + 1;
    r.cfg = allowing;
    assert_eq!(r.run(0, &mut packet(), 3, S), Verdict::Transmit(1));
    assert_eq!(r.pipeline.flows().len(), 1, "one flow throughout");
}

/// Two user applications, `first` then `second`, and a rule denying `Beta`.
fn apps_and_a_deny_rule(first: &str, second: &str) -> String {
    let app = |name: &str| {
        let word = name.to_uppercase();
        format!("[[dpi.application]]\nname = \"{name}\"\ncategory = \"FileTransfer\"\npatterns = ['^{word}']\ntransport = \"udp\"\n")
    };
    format!(
        r#"{}{}
        [[policy]]
        name = "no-beta"
        [[policy.rule]]
        action = "deny"
        priority = 10
        conditions = [{{ type = "application", value = "Beta" }}]
        "#,
        app(first),
        app(second)
    )
}

#[test]
fn a_flow_keeps_its_application_when_a_reload_renumbers_the_catalogue() {
    use crate::dpi::{counters::label_id, Category};
    let mut r = rig_with(&apps_and_a_deny_rule("Alpha", "Beta"));
    r.learn(1, "10.0.2.254", HOST_B);
    let packet = || {
        udp4_between(
            0,
            ([10, 0, 1, 2], 4000),
            ([192, 168, 7, 7], 7000),
            b"ALPHA hi",
        )
    };
    assert_eq!(r.run(0, &mut packet(), 1, S), Verdict::Transmit(1));
    // The same applications in the other order: Beta now has Alpha's number.
    let mut swapped = rig_with(&apps_and_a_deny_rule("Beta", "Alpha")).cfg;
    swapped.generation = r.cfg.generation + 1;
    r.pipeline.reconfigure(&swapped, S);
    r.cfg = swapped;
    assert_eq!(
        r.run(0, &mut packet(), 2, 2 * S),
        Verdict::Transmit(1),
        "still Alpha"
    );
    let dpi = r.pipeline.dpi_counters();
    let bytes = |name| dpi.app_bytes(label_id(name, Category::FileTransfer));
    let ip_len = (packet().len() - 14) as u64;
    assert_eq!((bytes("Alpha"), bytes("Beta")), (2 * ip_len, 0));
    // Without Alpha at all, the flow keeps no application, and is not Beta either.
    let mut without = rig_with(&apps_and_a_deny_rule("Beta", "Gamma")).cfg;
    without.generation = r.cfg.generation + 1;
    r.pipeline.reconfigure(&without, 3 * S);
    r.cfg = without;
    assert_eq!(
        r.run(0, &mut packet(), 3, 3 * S),
        Verdict::Transmit(1),
        "not Beta"
    );
    assert_eq!(bytes("Beta"), 0);
}

#[test]
fn dscp_conditions_read_the_packet() {
    let mut r = rig_with(
        r#"
        [[policy]]
        name = "no-scavenger"
        [[policy.rule]]
        action = "deny"
        priority = 10
        conditions = [{ type = "dscp", value = "8" }]
        "#,
    );
    r.learn(1, "10.0.2.254", HOST_B);
    let mut cs1 = udp4_between(0, ([10, 0, 1, 2], 4000), ([192, 168, 7, 7], 9), b"bulk");
    cs1.data_mut()[15] = 8 << 2;
    fix_ipv4_checksum(&mut cs1);
    let mut best_effort = udp4_between(0, ([10, 0, 1, 3], 4000), ([192, 168, 7, 7], 9), b"web");
    assert_eq!(r.run(0, &mut cs1, 1, S), Verdict::Gone);
    assert_eq!(r.run(0, &mut best_effort, 1, S), Verdict::Transmit(1));
}
