//! The whole worker loop on memory queues: sites joined by tunnels across
//! an in-memory WAN switch, driven round by round on a hand-moved clock.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::memory::{ManualClock, MemoryHost, MemoryQueue, MemoryRx, MemoryTx};
use super::*;
use crate::config::Config;
use crate::frame::VecFrame;
use crate::neighbor::NeighborManager;
use crate::testing::key_file;
use crate::tunnel::crypto::hash;
use crate::tunnel::noise::StaticKeys;

const MS: u64 = 1_000_000;
const LAN: usize = 0;
const WAN: usize = 1;

type TestWorker = Worker<MemoryHost, MemoryRx, MemoryTx>;

/// Site `n`'s MACs: its LAN port, its WAN port, and its LAN host.
fn lan_mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, n, 1]
}
fn wan_mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, n, 2]
}
fn host_mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, n, 0x0a]
}
fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Site `n`'s WireGuard identity.
fn secret(n: u8) -> [u8; 32] {
    hash(&[b"site", &[n]])
}
fn public_b64(n: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(StaticKeys::new(secret(n)).public())
}

/// One port of one worker, as the test sees it.
#[derive(Debug, Clone, Default)]
struct Link {
    /// What arrives at the gateway.
    to_gateway: MemoryQueue,
    /// What the gateway sent.
    from_gateway: MemoryQueue,
}

/// A gateway: site `n` with LAN 10.n.0.0/24 (its host 10.n.0.5 known
/// statically), WAN address 192.0.2.n, tunnel address 10.99.0.n, and its
/// tunnel peers (site, allowed prefixes).
struct Site {
    n: u8,
    /// Per worker, per port.
    links: Vec<[Link; 2]>,
    workers: Vec<TestWorker>,
    config: Arc<Published<Snapshot>>,
    manager: NeighborManager,
    stats: Vec<Arc<SharedCounters>>,
    tunnel_stats: Vec<Arc<SharedTunnelStats>>,
    qos_stats: Vec<Arc<SharedQosStats>>,
}

fn config_text(n: u8, peers: &[(u8, &[&str])], extra: &str) -> String {
    let key = key_file(&format!("worker-site-{n}"), secret(n));
    let mut text = format!(
        r#"
        [worker]
        flow_capacity = 1024
        [[port]]
        name = "lan"
        device = "mem0"
        addresses = ["10.{n}.0.1/24"]
        [[port]]
        name = "wan"
        device = "mem1"
        addresses = ["192.0.2.{n}/24"]
        [tunnel]
        private_key_file = "{key}"
        addresses = ["10.99.0.{n}/24"]
        [[neighbor]]
        ip = "10.{n}.0.5"
        mac = "{host}"
        port = "lan"
        {extra}
        "#,
        key = key.display(),
        host = mac_text(host_mac(n)),
    );
    for (m, allowed) in peers {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        text += &format!(
            r#"
            [[peer]]
            name = "site-{m}"
            endpoint = {{ address = "192.0.2.{m}", port = 51820 }}
            wireguard = {{ public_key = "{key}" }}
            allowed_ips = [{allowed}]
            [[neighbor]]
            ip = "192.0.2.{m}"
            mac = "{mac}"
            port = "wan"
            "#,
            key = public_b64(*m),
            allowed = allowed.join(", "),
            mac = mac_text(wan_mac(*m)),
        );
    }
    text
}

fn snapshot(text: &str, n: u8) -> Snapshot {
    let mut cfg = Config::from_toml(text)
        .expect("test config parses")
        .validate(1)
        .expect("test config is valid");
    cfg.set_port_macs(&[lan_mac(n), wan_mac(n)]);
    cfg
}

fn site(n: u8, workers: usize, peers: &[(u8, &[&str])], clock: &ManualClock) -> Site {
    site_with(n, workers, peers, "", clock)
}

fn site_with(
    n: u8,
    workers: usize,
    peers: &[(u8, &[&str])],
    extra: &str,
    clock: &ManualClock,
) -> Site {
    site_from(n, workers, &config_text(n, peers, extra), clock)
}

fn site_from(n: u8, workers: usize, text: &str, clock: &ManualClock) -> Site {
    let cfg = snapshot(text, n);
    let neighbors = Arc::new(NeighborShared::default());
    let (events, learned) = crossbeam_channel::bounded(64);
    let mut manager = NeighborManager::new(cfg.neighbors.clone(), neighbors.clone(), learned);
    manager.configure(&cfg.neighbors, &cfg.static_neighbors);
    manager.tick(clock.now());
    let config = Arc::new(Published::new(cfg));
    let inboxes = tunnel_inboxes(workers);
    let to_shape = shaper_inboxes(workers);
    let shared_uplinks = Arc::default();
    let announcements = crate::dpi::Announcements::new(workers);
    let mut site = Site {
        n,
        links: Vec::new(),
        workers: Vec::new(),
        config: config.clone(),
        manager,
        stats: Vec::new(),
        tunnel_stats: Vec::new(),
        qos_stats: Vec::new(),
    };
    for index in 0..workers {
        let links: [Link; 2] = Default::default();
        let stats = Arc::new(SharedCounters::default());
        let tunnel_stats = Arc::new(SharedTunnelStats::default());
        let qos_stats = Arc::new(SharedQosStats::default());
        let worker = Worker::new(WorkerSetup {
            index,
            rx: (0..2)
                .map(|p| (p as u16, MemoryRx(links[p].to_gateway.clone())))
                .collect(),
            tx: (0..2)
                .map(|p| MemoryTx::new(links[p].from_gateway.clone()))
                .collect(),
            host: MemoryHost::new(clock.clone(), u64::from(n) * 100 + index as u64),
            config: config.clone(),
            neighbors: neighbors.clone(),
            events: events.clone(),
            stats: stats.clone(),
            tunnel_stats: tunnel_stats.clone(),
            inboxes: inboxes.clone(),
            shared_uplinks: Arc::clone(&shared_uplinks),
            announcements: announcements.clone(),
            shaper_inboxes: to_shape.clone(),
            qos_stats: qos_stats.clone(),
            stop: Arc::default(),
            seed: u64::from(n),
        });
        site.links.push(links);
        site.workers.push(worker);
        site.stats.push(stats);
        site.tunnel_stats.push(tunnel_stats);
        site.qos_stats.push(qos_stats);
    }
    site
}

impl Site {
    /// A frame from the LAN host to `dst` arriving at worker `w`.
    fn host_sends(&self, w: usize, frame: VecFrame) {
        self.links[w][LAN].to_gateway.push(frame);
    }

    /// What the gateway sent to its LAN, from every worker.
    fn to_hosts(&self) -> Vec<VecFrame> {
        self.links
            .iter()
            .flat_map(|l| l[LAN].from_gateway.drain())
            .collect()
    }

    fn counter(&self, c: Counter) -> u64 {
        self.workers
            .iter()
            .map(|w| w.pipeline().counters.get(c))
            .sum()
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.workers
            .iter()
            .map(|w| w.pipeline().counters.drops(r))
            .sum()
    }

    fn round(&mut self) -> usize {
        self.workers.iter_mut().map(Worker::round).sum()
    }
}

/// A UDP datagram from site `from`'s host to `dst`, as the host sends it.
fn udp_from_host(from: u8, dst: [u8; 4], payload: &[u8]) -> VecFrame {
    let b = PacketBuilder::ethernet2(host_mac(from), lan_mac(from))
        .ipv4([10, from, 0, 5], dst, 64)
        .udp(4000, 5000);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

/// What a test reads of an IPv4 UDP frame.
#[derive(Debug)]
struct Udp {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    dst_port: u16,
    payload: Vec<u8>,
}

/// An IPv4 UDP frame read back (its IPv4 header checksum checked).
fn udp_of(frame: &VecFrame) -> Udp {
    let p = SlicedPacket::from_ethernet(frame.data()).expect("an Ethernet frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
        panic!("not Ethernet")
    };
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    assert_eq!(
        h.to_header().header_checksum,
        h.to_header().calc_header_checksum(),
        "a valid IPv4 header checksum"
    );
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not UDP")
    };
    Udp {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        src: h.source(),
        dst: h.destination(),
        ttl: h.ttl(),
        dst_port: udp.destination_port(),
        payload: udp.payload().to_vec(),
    }
}

/// Moves frames between the sites' WAN ports by destination MAC, into the
/// worker `pick` chooses; runs rounds until nothing moves.
fn settle_with(sites: &mut [&mut Site], clock: &ManualClock, pick: impl Fn(u8, usize) -> usize) {
    for _ in 0..64 {
        let mut busy = 0;
        for site in sites.iter_mut() {
            busy += site.round();
        }
        let mut moved = 0;
        for from in 0..sites.len() {
            let frames: Vec<VecFrame> = sites[from]
                .links
                .iter()
                .flat_map(|l| l[WAN].from_gateway.drain())
                .collect();
            for frame in frames {
                let dst: [u8; 6] = frame.data()[..6].try_into().unwrap();
                let Some(to) = sites.iter().position(|s| wan_mac(s.n) == dst) else {
                    continue; // a next hop nobody is: lost on the wire
                };
                let w = pick(sites[to].n, sites[to].workers.len());
                sites[to].links[w][WAN].to_gateway.push(frame);
                moved += 1;
            }
        }
        clock.advance(MS);
        if moved == 0 && busy == 0 {
            return;
        }
    }
    panic!("the sites never settled");
}

fn settle(sites: &mut [&mut Site], clock: &ManualClock) {
    settle_with(sites, clock, |_, _| 0);
}

#[test]
fn lan_packets_cross_the_tunnel_both_ways() {
    let clock = ManualClock::default();
    let mut a = site(1, 1, &[(2, &["10.2.0.0/24"])], &clock);
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24"])], &clock);

    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], b"hello"));
    settle(&mut [&mut a, &mut b], &clock);
    let got = b.to_hosts();
    assert_eq!(got.len(), 1, "delivered once, after the handshake");
    let udp = udp_of(&got[0]);
    assert_eq!((udp.src_mac, udp.dst_mac), (lan_mac(2), host_mac(2)));
    assert_eq!((udp.src, udp.dst), ([10, 1, 0, 5], [10, 2, 0, 5]));
    assert_eq!(udp.ttl, 62, "one hop at each gateway");
    assert_eq!(udp.payload, b"hello");

    // The answer goes back on the session the first packet made.
    b.host_sends(0, udp_from_host(2, [10, 1, 0, 5], b"hello back"));
    settle(&mut [&mut a, &mut b], &clock);
    let got = a.to_hosts();
    assert_eq!(got.len(), 1);
    let udp = udp_of(&got[0]);
    assert_eq!(
        (udp.dst_mac, udp.src, udp.ttl),
        (host_mac(1), [10, 2, 0, 5], 62)
    );
    assert_eq!(udp.payload, b"hello back");
    for s in [&a, &b] {
        let engine = s.workers[0].pipeline().tunnels().unwrap();
        assert_eq!(engine.queued(0), 0);
        assert!(
            engine
                .peer_stats(
                    0,
                    &s.config.load().tunnel.as_ref().unwrap().config,
                    clock.now()
                )
                .session_up
        );
        assert_eq!(s.counter(Counter::FlowInsertFailed), 0);
        let dropped: u64 = DropReason::ALL.iter().map(|r| s.drops(*r)).sum();
        assert_eq!(dropped, 0, "site {} dropped nothing", s.n);
    }
}

#[test]
fn a_hub_forwards_between_two_tunnels_in_one_pass() {
    // B and C reach each other only through A: B's packet is decrypted at
    // A and, in the same pass, routed and encrypted for C.
    let clock = ManualClock::default();
    let mut a = site(
        1,
        1,
        &[(2, &["10.2.0.0/24"]), (3, &["10.3.0.0/24"])],
        &clock,
    );
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24", "10.3.0.0/24"])], &clock);
    let mut c = site(3, 1, &[(1, &["10.1.0.0/24", "10.2.0.0/24"])], &clock);

    b.host_sends(0, udp_from_host(2, [10, 3, 0, 5], b"via the hub"));
    settle(&mut [&mut a, &mut b, &mut c], &clock);
    let got = c.to_hosts();
    assert_eq!(got.len(), 1);
    let udp = udp_of(&got[0]);
    assert_eq!(
        (udp.dst_mac, udp.src, udp.dst),
        (host_mac(3), [10, 2, 0, 5], [10, 3, 0, 5])
    );
    assert_eq!(udp.ttl, 61, "three gateways");
    assert_eq!(udp.payload, b"via the hub");
    assert!(a.to_hosts().is_empty(), "nothing for the hub's own LAN");
    let engine = a.workers[0].pipeline().tunnels().unwrap();
    assert_eq!(
        engine
            .peer_stats(
                0,
                &a.config.load().tunnel.as_ref().unwrap().config,
                clock.now()
            )
            .rx_packets,
        1
    );
    assert_eq!(
        engine
            .peer_stats(
                1,
                &a.config.load().tunnel.as_ref().unwrap().config,
                clock.now()
            )
            .tx_packets,
        1
    );
}

#[test]
fn an_initiation_landing_on_another_worker_is_answered_by_the_owner() {
    // B speaks first, and everything from B arrives at the worker of A
    // that does not own B: it opens B's initiation and hands it over
    // opened; the owner's response goes back out and B's data follows.
    let clock = ManualClock::default();
    let mut a = site(1, 2, &[(2, &["10.2.0.0/24"])], &clock);
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24"])], &clock);
    let o = a.workers[0].pipeline().tunnels().unwrap().owner(0);
    let other = 1 - o;
    b.host_sends(0, udp_from_host(2, [10, 1, 0, 5], b"first word"));
    settle_with(&mut [&mut a, &mut b], &clock, move |n, _| {
        if n == 1 {
            other
        } else {
            0
        }
    });
    let got = a.links[o][LAN].from_gateway.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(udp_of(&got[0]).payload, b"first word");
    let config = a.config.load();
    let config = &config.tunnel.as_ref().unwrap().config;
    let owner = a.workers[o].pipeline().tunnels().unwrap();
    assert_eq!(
        owner.peer_stats(0, config, clock.now()).handshakes_received,
        1
    );
    let w = a.workers[other].pipeline().tunnels().unwrap();
    assert_eq!(w.peer_stats(0, config, clock.now()), Default::default());
}

#[test]
fn a_peers_packets_are_handed_to_the_worker_that_owns_it() {
    // A has two workers; its only peer (B, peer 0) belongs to worker `o`
    // (by its key), but the LAN packet and every datagram from B arrive at
    // the other one.
    let clock = ManualClock::default();
    let mut a = site(1, 2, &[(2, &["10.2.0.0/24"])], &clock);
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24"])], &clock);
    let o = a.workers[0].pipeline().tunnels().unwrap().owner(0);
    let other = 1 - o;
    let to_the_other = move |n: u8, _: usize| if n == 1 { other } else { 0 };

    a.host_sends(other, udp_from_host(1, [10, 2, 0, 5], b"handed over"));
    settle_with(&mut [&mut a, &mut b], &clock, to_the_other);
    let got = b.to_hosts();
    assert_eq!(got.len(), 1);
    assert_eq!(udp_of(&got[0]).payload, b"handed over");

    b.host_sends(0, udp_from_host(2, [10, 1, 0, 5], b"and back"));
    settle_with(&mut [&mut a, &mut b], &clock, to_the_other);
    // Decrypted by the owner, so sent to the LAN by it.
    assert!(a.links[other][LAN].from_gateway.is_empty());
    let got = a.links[o][LAN].from_gateway.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(udp_of(&got[0]).payload, b"and back");
    // The other worker never sealed or opened anything: it has no session.
    let w = a.workers[other].pipeline().tunnels().unwrap();
    assert_eq!(
        w.peer_stats(
            0,
            &a.config.load().tunnel.as_ref().unwrap().config,
            clock.now()
        ),
        Default::default()
    );
    assert_eq!(a.drops(DropReason::TunnelHandoffFull), 0);
}

#[test]
fn packets_wait_for_their_next_hop_and_leave_when_it_answers() {
    // Host 10.1.0.7 on A's LAN is not known yet: B's packet for it is held
    // and A asks for it with ARP.
    let clock = ManualClock::default();
    let mut a = site(1, 1, &[(2, &["10.2.0.0/24"])], &clock);
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24"])], &clock);
    b.host_sends(0, udp_from_host(2, [10, 1, 0, 7], b"for a stranger"));
    settle(&mut [&mut a, &mut b], &clock);
    let asked = a.to_hosts();
    assert_eq!(asked.len(), 1, "one ARP request");
    let arp = SlicedPacket::from_ethernet(asked[0].data()).unwrap();
    let Some(NetSlice::Arp(arp)) = arp.net else {
        panic!("not ARP")
    };
    assert_eq!(arp.target_protocol_addr(), [10, 1, 0, 7]);
    assert_eq!(a.workers[0].pending.packets(), 1);

    // The host answers; the control thread publishes what the worker learned.
    let stranger = [2, 0, 0, 0, 1, 0x77];
    let b_ = PacketBuilder::ethernet2(stranger, lan_mac(1)).arp(
        etherparse::ArpPacket::new(
            etherparse::ArpHardwareId::ETHERNET,
            etherparse::EtherType::IPV4,
            etherparse::ArpOperation::REPLY,
            &stranger,
            &[10, 1, 0, 7],
            &lan_mac(1),
            &[10, 1, 0, 1],
        )
        .unwrap(),
    );
    let mut out = Vec::new();
    b_.write(&mut out).unwrap();
    a.host_sends(0, VecFrame::new(&out));
    a.round();
    assert!(a.manager.tick(clock.now()), "the reply was learned");
    a.round();
    let got = a.to_hosts();
    assert_eq!(got.len(), 1, "released");
    let udp = udp_of(&got[0]);
    assert_eq!(
        (udp.src_mac, udp.dst_mac, udp.dst),
        (lan_mac(1), stranger, [10, 1, 0, 7])
    );
    assert_eq!(udp.payload, b"for a stranger");
    assert_eq!(a.workers[0].pending.packets(), 0);
}

/// A route to 203.0.113.0/24 out of the WAN port, by a router known statically.
const WAN_ROUTE: &str = r#"
    [[route]]
    prefix = "203.0.113.0/24"
    via = "192.0.2.254"
    [[neighbor]]
    ip = "192.0.2.254"
    mac = "02:00:00:00:00:fe"
    port = "wan"
"#;

#[test]
fn a_new_snapshot_applies_from_the_next_burst_and_voids_cached_routes() {
    let clock = ManualClock::default();
    let mut a = site_with(1, 1, &[], WAN_ROUTE, &clock);
    let packet = || udp_from_host(1, [203, 0, 113, 9], b"out");
    a.host_sends(0, packet());
    a.round();
    assert_eq!(a.links[0][WAN].from_gateway.drain().len(), 1, "routed");

    // The route goes; the flow's cached decision must go with it.
    let without = snapshot(&config_text(1, &[], ""), 1);
    a.config.store(without);
    a.host_sends(0, packet());
    a.round();
    assert!(a.links[0][WAN].from_gateway.is_empty());
    let back = a.to_hosts();
    assert_eq!(back.len(), 1, "net unreachable, to the host");
    assert_eq!(a.drops(DropReason::NoRoute), 1);
    assert_eq!(a.workers[0].pipeline().flows().len(), 1, "the same flow");
}

#[test]
fn handshake_retransmissions_follow_the_engines_deadlines() {
    // B never answers: the worker sends each retransmission when the
    // engine's next deadline comes, not before.
    let clock = ManualClock::default();
    let mut a = site(1, 1, &[(2, &["10.2.0.0/24"])], &clock);
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], b"lost"));
    a.round();
    assert_eq!(
        a.links[0][WAN].from_gateway.drain().len(),
        1,
        "the first initiation"
    );
    for attempt in 2..=4 {
        let deadline = a.workers[0]
            .pipeline()
            .poll_timeout()
            .expect("a retransmission is armed");
        clock.set(deadline - 1);
        a.round();
        assert!(
            a.links[0][WAN].from_gateway.is_empty(),
            "not before the deadline"
        );
        clock.set(deadline);
        a.round();
        let sent = a.links[0][WAN].from_gateway.drain();
        assert_eq!(sent.len(), 1, "initiation {attempt}");
        assert_eq!(sent[0].data()[42], 1, "a handshake initiation");
    }
}

#[test]
fn stopping_frees_what_waits_and_publishes_the_final_counters() {
    let clock = ManualClock::default();
    let mut a = site(1, 1, &[(2, &["10.2.0.0/24"])], &clock);
    // One packet waits for an unknown LAN host (routed out of the LAN to
    // 10.1.0.8), one for a handshake that never completes.
    let mut tunnel_packet = udp_from_host(1, [10, 2, 0, 5], b"staged");
    a.host_sends(0, std::mem::replace(&mut tunnel_packet, VecFrame::empty()));
    let b = PacketBuilder::ethernet2(wan_mac(9), wan_mac(1))
        .ipv4([192, 0, 2, 9], [10, 1, 0, 8], 64)
        .udp(1, 2);
    let mut out = Vec::new();
    b.write(&mut out, b"pending").unwrap();
    a.links[0][WAN].to_gateway.push(VecFrame::new(&out));
    a.round();
    assert_eq!(a.workers[0].pending.packets(), 1);
    assert_eq!(a.workers[0].pipeline().tunnels().unwrap().queued(0), 1);

    let w = a.workers.pop().unwrap();
    w.stop.store(true, Ordering::Relaxed);
    w.run();
    let published = a.stats[0].read();
    assert_eq!(published.drops(DropReason::NeighborUnresolved), 1);
    assert_eq!(published.get(Counter::RxPackets), 2);
}

/// Site `n` with two uplinks on its WAN port, "mpls" (192.0.2.n) and
/// "inet" (198.51.100.n), and peer site `m` reachable at both, probed.
fn multipath_text(n: u8, m: u8) -> String {
    let key = key_file(&format!("worker-site-{n}"), secret(n));
    format!(
        r#"
        [worker]
        flow_capacity = 1024
        [[port]]
        name = "lan"
        device = "mem0"
        addresses = ["10.{n}.0.1/24"]
        [[port]]
        name = "wan"
        device = "mem1"
        addresses = ["192.0.2.{n}/24", "198.51.100.{n}/24"]
        [tunnel]
        private_key_file = "{key}"
        addresses = ["10.99.0.{n}/24"]
        [[uplink]]
        name = "mpls"
        port = "wan"
        address = "192.0.2.{n}"
        color = "mpls"
        [[uplink]]
        name = "inet"
        port = "wan"
        address = "198.51.100.{n}"
        color = "internet"
        [paths]
        probe_interval_ms = 20
        down_after = 5
        up_after = 3
        hold_ms = 100
        [[neighbor]]
        ip = "10.{n}.0.5"
        mac = "{host}"
        port = "lan"
        [[peer]]
        name = "site-{m}"
        endpoints = [
            {{ name = "mpls", address = "192.0.2.{m}", port = 51820 }},
            {{ name = "inet", address = "198.51.100.{m}", port = 51820 }},
        ]
        sla_probes = true
        wireguard = {{ public_key = "{peer_key}" }}
        allowed_ips = ["10.{m}.0.0/24"]
        [[neighbor]]
        ip = "192.0.2.{m}"
        mac = "{peer_mac}"
        port = "wan"
        [[neighbor]]
        ip = "198.51.100.{m}"
        mac = "{peer_mac}"
        port = "wan"
        "#,
        key = key.display(),
        host = mac_text(host_mac(n)),
        peer_key = public_b64(m),
        peer_mac = mac_text(wan_mac(m)),
    )
}

/// What the WAN does with a frame.
enum Wire {
    /// Delivers it at the next step.
    Pass,
    /// Delivers it after this many more milliseconds.
    Delay(u64),
    /// Eats it.
    Lost,
}

/// Runs the sites for `duration`, a millisecond a step, moving WAN frames
/// between them as `wire` says (a frame takes at least one step).
fn run_wan(
    sites: &mut [&mut Site],
    clock: &ManualClock,
    duration: u64,
    mut wire: impl FnMut(&Udp) -> Wire,
) -> std::time::Duration {
    // What the first site's rounds took, on the machine's clock.
    let mut first_busy = std::time::Duration::ZERO;
    // By arrival time: the site, and whether the frame is BFD's on the
    // underlay (received by the site's last worker, as a NIC's RSS may do).
    let mut in_flight: Vec<(u64, (usize, bool), VecFrame)> = Vec::new();
    for _ in 0..duration / MS {
        for (i, site) in sites.iter_mut().enumerate() {
            let start = std::time::Instant::now();
            if i == 0 {
                first_site_round(site);
            } else {
                site.round();
            }
            if i == 0 {
                first_busy += start.elapsed();
            }
        }
        for from in 0..sites.len() {
            let frames: Vec<VecFrame> = sites[from]
                .links
                .iter()
                .flat_map(|l| l[WAN].from_gateway.drain())
                .collect();
            for frame in frames {
                let udp = udp_of(&frame);
                let bfd = udp.dst_port == 3784;
                let due = match wire(&udp) {
                    Wire::Pass => clock.now(),
                    Wire::Delay(ms) => clock.now() + ms * MS,
                    Wire::Lost => continue,
                };
                let dst: [u8; 6] = frame.data()[..6].try_into().unwrap();
                if let Some(to) = sites.iter().position(|s| wan_mac(s.n) == dst) {
                    in_flight.push((due, (to, bfd), frame));
                }
            }
        }
        let now = clock.now();
        for (_, (to, bfd), frame) in in_flight.extract_if(.., |(due, _, _)| *due <= now) {
            let worker = if bfd { sites[to].links.len() - 1 } else { 0 };
            sites[to].links[worker][WAN].to_gateway.push(frame);
        }
        clock.advance(MS);
    }
    first_busy
}

/// The first site's round, out of line so that callgrind can count its
/// instructions alone (scripts/bench/bfd.sh).
#[inline(never)]
fn first_site_round(site: &mut Site) {
    site.round();
}

/// [`run_wan`] with a wire that passes or loses frames.
fn run_for(
    sites: &mut [&mut Site],
    clock: &ManualClock,
    duration: u64,
    mut lost: impl FnMut(&Udp) -> bool,
) -> std::time::Duration {
    run_wan(sites, clock, duration, |u| {
        if lost(u) {
            Wire::Lost
        } else {
            Wire::Pass
        }
    })
}

impl Site {
    /// Worker 0's paths as it last published them, by path id.
    fn paths(&self) -> Vec<(String, crate::stats::PathReport)> {
        let cfg = self.config.load();
        let table = &cfg.tunnel.as_ref().unwrap().paths;
        self.tunnel_stats[0]
            .paths()
            .paths
            .iter()
            .map(|r| (table.paths[usize::from(r.index)].id.to_string(), r.clone()))
            .collect()
    }

    fn active_path(&self) -> String {
        let paths = self.paths();
        let active: Vec<_> = paths.iter().filter(|(_, r)| r.active).collect();
        assert_eq!(active.len(), 1, "one active path: {paths:?}");
        active[0].0.clone()
    }

    /// Failovers of `policy` by reason: path down, SLA broken, better
    /// path, BFD down.
    fn failovers(&self, policy: &str) -> [u64; 4] {
        let report = self.tunnel_stats[0].paths();
        let found = report.failovers.iter().find(|(p, _)| p == policy);
        found.map_or([0; 4], |(_, counts)| *counts)
    }
}

#[test]
fn every_path_is_probed_and_a_dead_one_fails_over_and_back() {
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &multipath_text(1, 2), &clock);
    let mut b = site_from(2, 1, &multipath_text(2, 1), &clock);
    let mpls = |u: &Udp| u.src[..3] == [192, 0, 2] || u.dst[..3] == [192, 0, 2];

    // Two uplinks × two endpoints: four paths, all answering.
    run_for(&mut [&mut a, &mut b], &clock, 1_000 * MS, |_| false);
    let paths = a.paths();
    let ids: Vec<&str> = paths.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "local:mpls->site-2:mpls",
            "local:mpls->site-2:inet",
            "local:inet->site-2:mpls",
            "local:inet->site-2:inet"
        ]
    );
    for (id, r) in &paths {
        let f = r.figures.expect("probed");
        assert!(f.up, "{id} is up");
        assert!(f.sent >= 45, "{id}: a probe every 20 ms ({})", f.sent);
        // One millisecond on the wire each way, and up to one more waiting
        // for the next round.
        let [p50, _, p99] = f.rtt_ms.expect("measured");
        assert!(
            (1.9..=4.1).contains(&p50) && p99 <= 4.1,
            "{id}: {p50} / {p99} ms"
        );
        assert!(
            f.received + 3 >= f.sent,
            "{id}: nothing lost but the first few"
        );
    }
    assert_eq!(a.active_path(), "local:mpls->site-2:mpls");

    // Host traffic takes the active path (probes are far shorter).
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], &[b'm'; 300]));
    let mut outer = Vec::new();
    run_for(&mut [&mut a, &mut b], &clock, 5 * MS, |u| {
        if u.payload.len() > 300 {
            outer.push((u.src, u.dst));
        }
        false
    });
    assert_eq!(outer, [([192, 0, 2, 1], [192, 0, 2, 2])]);
    assert_eq!(b.to_hosts().len(), 1);

    // The MPLS network goes dark: every path touching it goes down within
    // down_after intervals and traffic moves to inet->inet.
    run_for(&mut [&mut a, &mut b], &clock, 200 * MS, mpls);
    assert_eq!(a.active_path(), "local:inet->site-2:inet");
    assert_eq!(a.failovers("default"), [1, 0, 0, 0]);
    for (id, r) in a.paths() {
        assert_eq!(
            r.figures.unwrap().up,
            id == "local:inet->site-2:inet",
            "{id}"
        );
    }
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], &[b'i'; 300]));
    let mut outer = Vec::new();
    run_for(&mut [&mut a, &mut b], &clock, 5 * MS, |u| {
        if u.payload.len() > 300 {
            outer.push((u.src, u.dst));
        }
        mpls(u)
    });
    assert_eq!(outer, [([198, 51, 100, 1], [198, 51, 100, 2])]);
    assert_eq!(b.to_hosts().len(), 1);

    // It comes back: up after up_after echoes, chosen again once it stayed
    // up for the hold time.
    run_for(&mut [&mut a, &mut b], &clock, 100 * MS, |_| false);
    assert_eq!(a.active_path(), "local:inet->site-2:inet", "held");
    run_for(&mut [&mut a, &mut b], &clock, 100 * MS, |_| false);
    assert_eq!(a.active_path(), "local:mpls->site-2:mpls");
    assert_eq!(a.failovers("default"), [1, 0, 1, 0]);
    let dropped: u64 = DropReason::ALL.iter().map(|r| a.drops(*r)).sum();
    assert_eq!(dropped, 0, "nothing dropped at the gateway");
}

/// [`multipath_text`] with BFD at 10 ms × 3 on every path, and probes
/// slow enough (100 ms × 5) that BFD is the first to notice.
fn bfd_text(n: u8, m: u8) -> String {
    multipath_text(n, m)
        .replacen("probe_interval_ms = 20", "probe_interval_ms = 100", 1)
        .replacen(
            "sla_probes = true",
            &format!(
                "sla_probes = true\n        bfd_enabled = true\n        \
                 tunnel_address = \"10.99.0.{m}\"\n        \
                 bfd = {{ desired_min_tx_ms = 10, required_min_rx_ms = 10, detect_multiplier = 3 }}"
            ),
            1,
        )
        .replacen(
            &format!("allowed_ips = [\"10.{m}.0.0/24\"]"),
            &format!("allowed_ips = [\"10.{m}.0.0/24\", \"10.99.0.{m}/32\"]"),
            1,
        )
}

impl Site {
    /// Each path's BFD session state, in path order.
    fn bfd_states(&self) -> Vec<(String, crate::bfd::packet::State)> {
        self.paths()
            .into_iter()
            .map(|(id, r)| (id, r.bfd.expect("the path runs BFD").state))
            .collect()
    }
}

#[test]
fn bfd_on_every_path_takes_a_dead_one_out_before_the_probes_notice() {
    use crate::bfd::packet::State;
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &bfd_text(1, 2), &clock);
    let mut b = site_from(2, 1, &bfd_text(2, 1), &clock);
    let mpls = |u: &Udp| u.src[..3] == [192, 0, 2] || u.dst[..3] == [192, 0, 2];
    let up = |s: &Site| s.bfd_states().iter().all(|(_, st)| *st == State::Up);

    // Bring-up sends a packet a second (RFC 5880 §6.8.3): every session of
    // both sites is Up within a few.
    run_for(&mut [&mut a, &mut b], &clock, 3_000 * MS, |_| false);
    assert!(
        up(&a) && up(&b),
        "{:?}\n{:?}",
        a.bfd_states(),
        b.bfd_states()
    );
    assert_eq!(a.active_path(), "local:mpls->site-2:mpls");
    let report = a.tunnel_stats[0].paths();
    let r = &report.paths[0];
    assert_eq!(
        r.bfd.as_ref().unwrap().detection_time_ns,
        30 * MS,
        "10 ms × 3"
    );
    assert!(report.bfd.rx > 100, "{:?}", report.bfd);
    assert_eq!(
        report.bfd.dropped,
        [0; crate::paths::bfd::BfdDrop::COUNT],
        "{:?}",
        report.bfd
    );
    assert_eq!(report.bfd.malformed.iter().sum::<u64>(), 0);

    // The MPLS network goes dark: BFD declares its paths down after 30 ms,
    // long before five probes of 100 ms are missed, and traffic moves. (The
    // figures read here are published every 100 ms.)
    run_for(&mut [&mut a, &mut b], &clock, 150 * MS, mpls);
    assert_eq!(
        a.active_path(),
        "local:inet->site-2:inet",
        "{:?}\n{:?}",
        a.bfd_states(),
        a.paths()
    );
    // Moved by BFD only: once, or once per path as each of the three that
    // touch MPLS is found down in turn (the order their detection times
    // run out in decides).
    let [path_down, sla, better, by_bfd] = a.failovers("default");
    assert_eq!(
        [path_down, sla, better],
        [0, 0, 0],
        "{:?}",
        a.failovers("default")
    );
    assert!((1..=3).contains(&by_bfd), "{by_bfd}");
    for (id, r) in a.paths() {
        let touches_mpls = id.contains("mpls");
        let bfd = r.bfd.unwrap();
        assert_eq!(bfd.state == State::Up, !touches_mpls, "{id}: {bfd:?}");
        if touches_mpls {
            // Down once, by detection time expired (diagnostic 1).
            assert_eq!(bfd.changes[1][1], 1, "{id}: {bfd:?}");
        }
        assert!(
            r.figures.unwrap().up,
            "{id}: the probes have not noticed yet"
        );
    }

    // It comes back: the sessions come Up again, and traffic returns once
    // the paths stayed up for the hold time.
    run_for(&mut [&mut a, &mut b], &clock, 3_000 * MS, |_| false);
    assert!(up(&a), "{:?}", a.bfd_states());
    assert_eq!(a.active_path(), "local:mpls->site-2:mpls");
    assert_eq!(a.failovers("default"), [0, 0, 1, by_bfd]);
    let dropped: u64 = DropReason::ALL.iter().map(|r| a.drops(*r)).sum();
    assert_eq!(dropped, 0, "nothing dropped at the gateway");
}

/// Site `n` knowing site `m` as a stock WireGuard peer (one endpoint, its
/// MPLS address, no probes) with BFD at 10 ms × 3: one session, over
/// whichever of the two uplinks the peer's traffic takes.
fn stock_bfd_text(n: u8, m: u8) -> String {
    let mut text = bfd_text(n, m).replacen("sla_probes = true\n", "", 1);
    let start = text.find("endpoints = [").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    text.replace_range(
        start..end,
        &format!("endpoint = {{ address = \"192.0.2.{m}\", port = 51820 }}"),
    );
    text
}

#[test]
fn bfd_toward_a_stock_peer_moves_its_traffic_to_the_next_uplink() {
    use crate::bfd::packet::State;
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &stock_bfd_text(1, 2), &clock);
    let mut b = site_from(2, 1, &stock_bfd_text(2, 1), &clock);
    // One session per peer, kept on its first path.
    let session = |s: &Site| {
        let paths = s.paths();
        assert!(paths[1].1.bfd.is_none(), "{paths:?}");
        paths[0].1.bfd.clone().expect("the peer runs BFD")
    };
    run_for(&mut [&mut a, &mut b], &clock, 3_000 * MS, |_| false);
    assert_eq!(session(&a).state, State::Up);
    assert_eq!(session(&b).state, State::Up);
    assert_eq!(a.active_path(), "local:mpls->site-2");

    // Site 1's MPLS uplink goes dark: its session is down 30 ms after the
    // last packet it heard, and its traffic moves to the inet uplink.
    let a_mpls = |u: &Udp| u.src == [192, 0, 2, 1] || u.dst == [192, 0, 2, 1];
    run_for(&mut [&mut a, &mut b], &clock, 150 * MS, a_mpls);
    assert_eq!(a.active_path(), "local:inet->site-2");
    eprintln!("MOVES {:?}", a.tunnel_stats[0].paths().moves);
    assert_eq!(a.failovers("default"), [0, 0, 0, 1], "one move, by BFD");
    let down = session(&a);
    assert_eq!(down.changes[1][1], 1, "down by detection time: {down:?}");

    // Site 2's session went down too (nothing of its own reached site 1),
    // and it may have moved in turn; each end answers where the other
    // speaks from (WireGuard roaming), so the session comes up again from
    // site 1's inet uplink, and host traffic flows, with the MPLS uplink
    // still dark.
    run_for(&mut [&mut a, &mut b], &clock, 3_000 * MS, a_mpls);
    assert_eq!(session(&a).state, State::Up, "{:?}", a.paths());
    assert_eq!(a.active_path(), "local:inet->site-2");
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], &[b'i'; 300]));
    let mut outer = Vec::new();
    run_for(&mut [&mut a, &mut b], &clock, 5 * MS, |u| {
        if u.payload.len() > 300 {
            outer.push((u.src, u.dst));
        }
        a_mpls(u)
    });
    assert_eq!(outer.len(), 1);
    assert_eq!(outer[0].0, [198, 51, 100, 1], "from the inet uplink");
    assert_eq!(b.to_hosts().len(), 1);
    assert_eq!(session(&b).state, State::Up);
    assert_eq!(
        a.failovers("default"),
        [0, 0, 0, 1],
        "no move back and forth"
    );
}

/// [`multipath_text`] with BFD at 10 ms × 3 on the MPLS uplink, single hop
/// to the other site's MPLS address (standing in for the uplink's router),
/// and probes slow enough (100 ms × 5) that BFD is the first to notice.
fn uplink_bfd_text(n: u8, m: u8) -> String {
    multipath_text(n, m)
        .replacen("probe_interval_ms = 20", "probe_interval_ms = 100", 1)
        .replacen(
            "color = \"mpls\"",
            &format!(
                "color = \"mpls\"\n        bfd = {{ address = \"192.0.2.{m}\", \
                 desired_min_tx_ms = 10, required_min_rx_ms = 10 }}"
            ),
            1,
        )
}

#[test]
fn bfd_with_an_uplinks_router_takes_every_path_over_it_out() {
    use crate::bfd::packet::State;
    let clock = ManualClock::default();
    // Two workers: the session runs on worker 0, and its packets arrive on
    // worker 1, which hands them over.
    let mut a = site_from(1, 2, &uplink_bfd_text(1, 2), &clock);
    let mut b = site_from(2, 1, &uplink_bfd_text(2, 1), &clock);
    let session = |s: &Site| {
        let report = s.tunnel_stats[0].paths();
        assert_eq!(report.uplink_bfd.len(), 1, "{:?}", report.uplink_bfd);
        report.uplink_bfd[0].clone()
    };
    let mpls = |u: &Udp| u.src[..3] == [192, 0, 2] || u.dst[..3] == [192, 0, 2];

    run_for(&mut [&mut a, &mut b], &clock, 3_000 * MS, |_| false);
    let (uplink, up) = session(&a);
    assert_eq!((uplink, up.state), (0, State::Up), "{up:?}");
    assert_eq!(up.detection_time_ns, 30 * MS, "10 ms × 3");
    assert_eq!(session(&b).1.state, State::Up);
    // Only worker 0 runs it.
    assert!(a.tunnel_stats[1].paths().uplink_bfd.is_empty());
    let worker_0 = a.tunnel_stats[0].paths().bfd.clone();
    assert!(worker_0.rx > 100 && worker_0.tx > 100, "{worker_0:?}");
    assert_eq!(worker_0.dropped, [0; crate::paths::bfd::BfdDrop::COUNT]);
    assert_eq!(worker_0.malformed.iter().sum::<u64>(), 0);
    let owner = (0..2)
        .find(|&w| a.tunnel_stats[w].paths().paths.iter().any(|p| p.active))
        .expect("a worker owns the peer");
    let active = |s: &Site, w: usize| {
        let cfg = s.config.load();
        let table = &cfg.tunnel.as_ref().unwrap().paths;
        let report = s.tunnel_stats[w].paths();
        let active: Vec<_> = report.paths.iter().filter(|r| r.active).collect();
        table.paths[usize::from(active[0].index)].id.to_string()
    };
    assert_eq!(active(&a, owner), "local:mpls->site-2:mpls");

    // Hostile packets from the router's address, arriving on worker 1: a
    // TTL of 254 (not from the link), a truncated one, and one for a
    // session we do not have. Each is counted by reason and dropped; the
    // session stays up.
    let control = |ttl: u8, payload: &[u8]| {
        let b = PacketBuilder::ethernet2(wan_mac(2), wan_mac(1))
            .ipv4([192, 0, 2, 2], [192, 0, 2, 1], ttl)
            .udp(49_999, 3784);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        VecFrame::new(&out)
    };
    // Version 1, Up, multiplier 3, 24 bytes, Your Discriminator 0xdeadbeef.
    let mut stranger = [0u8; 24];
    stranger[..4].copy_from_slice(&[0x20, 0xc0, 3, 24]);
    stranger[4..8].copy_from_slice(&7u32.to_be_bytes());
    stranger[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
    for frame in [
        control(254, &stranger),
        control(255, &stranger[..10]),
        control(255, &stranger),
    ] {
        a.links[1][WAN].to_gateway.push(frame);
    }
    // (Figures are published every 100 ms.)
    run_for(&mut [&mut a, &mut b], &clock, 120 * MS, |_| false);
    let counted = a.tunnel_stats[0].paths().bfd.clone();
    use crate::paths::bfd::BfdDrop;
    assert_eq!(counted.dropped[BfdDrop::Ttl.index()], 1, "{counted:?}");
    assert_eq!(counted.dropped[BfdDrop::UnknownDiscriminator.index()], 1);
    assert_eq!(counted.malformed.iter().sum::<u64>(), 1);
    assert_eq!(session(&a).1.state, State::Up);

    // The MPLS network goes dark: the uplink's session is down 30 ms after
    // the last packet it heard, and the peer's owner takes both paths over
    // the uplink out at once, long before five probes of 100 ms are missed.
    run_for(&mut [&mut a, &mut b], &clock, 150 * MS, mpls);
    assert_eq!(session(&a).1.state, State::Down);
    assert_eq!(session(&a).1.changes[1][1], 1, "by detection time");
    assert_eq!(active(&a, owner), "local:inet->site-2:mpls");
    let failovers = a.tunnel_stats[owner].paths().failovers.clone();
    assert_eq!(failovers, [("default".to_owned(), [0, 0, 0, 1])]);
    for r in &a.tunnel_stats[owner].paths().paths {
        assert!(r.figures.unwrap().up, "the probes have not noticed yet");
    }

    // It comes back: Up again, and traffic returns after the hold time.
    run_for(&mut [&mut a, &mut b], &clock, 3_000 * MS, |_| false);
    assert_eq!(session(&a).1.state, State::Up);
    assert_eq!(active(&a, owner), "local:mpls->site-2:mpls");
    let dropped: u64 = DropReason::ALL.iter().map(|r| a.drops(*r)).sum();
    assert_eq!(dropped, 0, "nothing dropped at the gateway");
}

/// A hub (site 1) with 16 uplinks and 16 spokes (sites 2-17) of 4
/// endpoints each: 1 024 paths at the hub, each running BFD at `bfd`
/// (`None`: none), probes every 10 s. All addresses share one subnet.
fn hub_and_spokes(n: u8, bfd: Option<u32>) -> String {
    let key = key_file(&format!("bfd-cost-{n}"), secret(n));
    let spokes: Vec<u8> = (2..=17).collect();
    let (own, remote): (Vec<u8>, Vec<u8>) = if n == 1 {
        ((1..=16).collect(), spokes)
    } else {
        ((1..=4).collect(), vec![1])
    };
    let subnet = |site: u8| if site == 1 { 0 } else { site };
    let mut text = format!(
        r#"
        [worker]
        flow_capacity = 1024
        [[port]]
        name = "lan"
        device = "mem0"
        addresses = ["10.{n}.0.1/24"]
        [[port]]
        name = "wan"
        device = "mem1"
        addresses = [{addresses}]
        [tunnel]
        private_key_file = "{key}"
        addresses = ["10.99.{n}.1/16"]
        [paths]
        probe_interval_ms = 10000
        probe_timeout_ms = 10000
        "#,
        addresses = own
            .iter()
            .map(|a| format!("\"100.64.{}.{a}/16\"", subnet(n)))
            .collect::<Vec<_>>()
            .join(", "),
        key = key.display(),
    );
    for a in &own {
        text += &format!(
            "[[uplink]]\nname = \"u{a}\"\nport = \"wan\"\naddress = \"100.64.{}.{a}\"\n",
            subnet(n)
        );
    }
    for &m in &remote {
        let ends: Vec<u8> = if m == 1 {
            (1..=16).collect()
        } else {
            (1..=4).collect()
        };
        let endpoints = ends
            .iter()
            .map(|e| {
                format!(
                    "{{ name = \"e{e}\", address = \"100.64.{}.{e}\", port = 51820 }}",
                    subnet(m)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let bfd = bfd.map_or(String::new(), |ms| {
            format!(
                "bfd_enabled = true\ntunnel_address = \"10.99.{m}.1\"\n\
                 bfd = {{ desired_min_tx_ms = {ms}, required_min_rx_ms = {ms} }}\n"
            )
        });
        text += &format!(
            "[[peer]]\nname = \"site-{m}\"\nendpoints = [{endpoints}]\nsla_probes = true\n{bfd}\
             wireguard = {{ public_key = \"{key}\" }}\n\
             allowed_ips = [\"10.{m}.0.0/24\", \"10.99.{m}.1/32\"]\n",
            key = public_b64(m),
        );
        for e in ends {
            text += &format!(
                "[[neighbor]]\nip = \"100.64.{}.{e}\"\nmac = \"{}\"\nport = \"wan\"\n",
                subnet(m),
                mac_text(wan_mac(m)),
            );
        }
    }
    text
}

/// A hub and its 16 spokes on their own clock, every path up (and every
/// BFD session, with BFD).
struct HubAndSpokes {
    clock: ManualClock,
    sites: Vec<Site>,
}

impl HubAndSpokes {
    fn new(bfd: Option<u32>) -> Self {
        use crate::bfd::packet::State;
        let clock = ManualClock::default();
        let mut sites: Vec<Site> = (1..=17)
            .map(|n| site_from(n, 1, &hub_and_spokes(n, bfd), &clock))
            .collect();
        let mut refs: Vec<&mut Site> = sites.iter_mut().collect();
        // Handshakes, and BFD's bring-up at a packet a second.
        run_for(&mut refs, &clock, 8_000 * MS, |_| false);
        let paths = refs[0].tunnel_stats[0].paths();
        assert_eq!(paths.paths.len(), 1024);
        if bfd.is_some() {
            let up = paths
                .paths
                .iter()
                .filter(|p| p.bfd.as_ref().is_some_and(|b| b.state == State::Up))
                .count();
            assert_eq!(up, 1024, "every session up");
        }
        HubAndSpokes { clock, sites }
    }

    /// How long the hub's rounds of one simulated second took.
    fn second(&mut self) -> std::time::Duration {
        let mut refs: Vec<&mut Site> = self.sites.iter_mut().collect();
        run_for(&mut refs, &self.clock, 1_000 * MS, |_| false)
    }
}

#[test]
#[ignore = "a benchmark: scripts/bench/bfd.sh runs it (release build)"]
fn bfd_cost_of_1024_sessions_at_50_ms_on_the_hubs_worker() {
    // Figures on the machine's clock, so run it alone: the same hub and
    // spokes with and without BFD, their simulated seconds taken in turn
    // (so that a noisy stretch of the machine falls on both), the median
    // second of each compared.
    let seconds = std::env::var("BFD_COST_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    // Under callgrind, one topology at a time (`plain` or `bfd`): the
    // script counts the first site's instructions.
    if let Ok(only) = std::env::var("BFD_COST_ONLY") {
        let mut hub = HubAndSpokes::new((only == "bfd").then_some(50));
        for _ in 0..seconds {
            hub.second();
        }
        return;
    }
    let mut plain = HubAndSpokes::new(None);
    let mut with_bfd = HubAndSpokes::new(Some(50));
    let (mut without, mut with): (Vec<_>, Vec<_>) = (0..seconds)
        .map(|_| (plain.second(), with_bfd.second()))
        .unzip();
    let median = |v: &mut Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (without, with) = (median(&mut without), median(&mut with));
    let extra = (with - without).max(0.0);
    // 1 024 sessions each send and take 20 packets a second.
    let packets = 1024.0 * 20.0 * 2.0;
    println!(
        "| 1 024 sessions at 50 ms × 3 | hub busy {:.1} ms/s without BFD, {:.1} ms/s with | \
         {:.0} ns per Control packet sent or taken | {:.2}% of the worker |",
        without * 1e3,
        with * 1e3,
        extra * 1e9 / packets,
        extra * 100.0,
    );
}

/// A UDP datagram from site `from`'s host, between the given ports.
fn udp_between(from: u8, dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> VecFrame {
    let b = PacketBuilder::ethernet2(host_mac(from), lan_mac(from))
        .ipv4([10, from, 0, 5], dst, 64)
        .udp(ports.0, ports.1);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

/// A policy `name` of one route rule for UDP/TCP destination `port`.
fn route_policy(name: &str, priority: u32, port: u16, strategy: &str, extra: &str) -> String {
    format!(
        r#"
        [[policy]]
        name = "{name}"
        [[policy.rule]]
        action = "route"
        priority = {priority}
        conditions = [{{ type = "destination-port", value = "{port}" }}]
        path_selection = {{ strategy = "{strategy}" }}
        {extra}
        "#
    )
}

#[test]
fn route_rules_pick_paths_by_strategy_and_keep_flows_on_them() {
    let rules = route_policy("voice", 20, 5060, "lowest-latency", "")
        + &route_policy("bulk", 10, 6000, "least-cost", "");
    let costs = |text: String| {
        text.replacen(
            "color = \"mpls\"",
            "color = \"mpls\"\n        cost_per_gb = 1.0",
            1,
        )
        .replacen(
            "color = \"internet\"",
            "color = \"internet\"\n        cost_per_gb = 0.1",
            1,
        )
    };
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &(costs(multipath_text(1, 2)) + &rules), &clock);
    let mut b = site_from(2, 1, &multipath_text(2, 1), &clock);
    let inet = |u: &Udp| u.src[..3] == [198, 51, 100] || u.dst[..3] == [198, 51, 100];
    // The internet is 10 ms slower each way than MPLS.
    let slow_inet = |u: &Udp| if inet(u) { Wire::Delay(10) } else { Wire::Pass };
    run_wan(&mut [&mut a, &mut b], &clock, 1_000 * MS, slow_inet);

    // Where each kind of traffic goes, read from the outer headers.
    let send = |a: &mut Site, b: &mut Site, ports: (u16, u16), wire: &dyn Fn(&Udp) -> Wire| {
        a.host_sends(0, udp_between(1, [10, 2, 0, 5], ports, &[7; 300]));
        let mut outer = Vec::new();
        run_wan(&mut [a, b], &clock, 30 * MS, |u| {
            if u.payload.len() > 300 && u.src[3] == 1 {
                outer.push((u.src, u.dst));
            }
            wire(u)
        });
        assert_eq!(b.to_hosts().len(), 1, "delivered");
        outer
    };
    let mpls_mpls = ([192, 0, 2, 1], [192, 0, 2, 2]);
    let inet_mpls = ([198, 51, 100, 1], [192, 0, 2, 2]);
    let inet_inet = ([198, 51, 100, 1], [198, 51, 100, 2]);
    assert_eq!(
        send(&mut a, &mut b, (4000, 5060), &slow_inet),
        [mpls_mpls],
        "voice: fastest"
    );
    assert_eq!(
        send(&mut a, &mut b, (4000, 6000), &slow_inet),
        [inet_mpls],
        "bulk: cheapest uplink"
    );
    assert_eq!(
        send(&mut a, &mut b, (4000, 7000), &slow_inet),
        [mpls_mpls],
        "the rest: site order"
    );

    // Now MPLS is the slow one. After the hold time new voice flows take
    // the internet; the voice flow already running stays where it is, as
    // its path is still eligible.
    let mpls = |u: &Udp| u.src[..3] == [192, 0, 2] || u.dst[..3] == [192, 0, 2];
    let slow_mpls = |u: &Udp| if mpls(u) { Wire::Delay(10) } else { Wire::Pass };
    run_wan(&mut [&mut a, &mut b], &clock, 3_000 * MS, slow_mpls);
    assert_eq!(
        send(&mut a, &mut b, (4000, 5060), &slow_mpls),
        [mpls_mpls],
        "sticky"
    );
    assert_eq!(
        send(&mut a, &mut b, (4001, 5060), &slow_mpls),
        [inet_inet],
        "a new flow moves"
    );
    assert_eq!(a.failovers("voice"), [0, 0, 1, 0]);
    assert_eq!(a.failovers("bulk"), [0, 0, 0, 0]);
    let dropped: u64 = DropReason::ALL.iter().map(|r| a.drops(*r)).sum();
    assert_eq!(dropped, 0, "nothing dropped at the gateway");
}

#[test]
fn a_flapping_path_is_left_once_not_followed_back_and_forth() {
    // MPLS flaps 2 s down / 2 s up for 20 s; with a 3 s hold, traffic
    // leaves it at the first flap and returns only once it stays up.
    let text = |n, m| multipath_text(n, m).replace("hold_ms = 100", "hold_ms = 3000");
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &text(1, 2), &clock);
    let mut b = site_from(2, 1, &text(2, 1), &clock);
    let mpls = |u: &Udp| u.src[..3] == [192, 0, 2] || u.dst[..3] == [192, 0, 2];
    run_for(&mut [&mut a, &mut b], &clock, 1_000 * MS, |_| false);
    assert_eq!(a.active_path(), "local:mpls->site-2:mpls");
    for _ in 0..5 {
        run_for(&mut [&mut a, &mut b], &clock, 2_000 * MS, mpls);
        run_for(&mut [&mut a, &mut b], &clock, 2_000 * MS, |_| false);
    }
    assert_eq!(
        a.failovers("default"),
        [1, 0, 0, 0],
        "one move for five flaps"
    );
    assert_eq!(a.active_path(), "local:inet->site-2:inet");
    run_for(&mut [&mut a, &mut b], &clock, 3_500 * MS, |_| false);
    assert_eq!(
        a.active_path(),
        "local:mpls->site-2:mpls",
        "back once stable"
    );
    assert_eq!(a.failovers("default"), [1, 0, 1, 0]);
}

#[test]
fn duplicated_packets_survive_independent_loss_on_two_paths() {
    let rules = route_policy("voice", 20, 5060, "lowest-latency", "duplicate = true");
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &(multipath_text(1, 2) + &rules), &clock);
    let mut b = site_from(2, 1, &multipath_text(2, 1), &clock);
    run_for(&mut [&mut a, &mut b], &clock, 1_000 * MS, |_| false);

    // Every frame on the WAN is lost with a probability of 5%, each on its own.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut lossy = move |_: &Udp| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % 100 < 5
    };
    let packets = 2_000;
    for _ in 0..packets {
        a.host_sends(0, udp_between(1, [10, 2, 0, 5], (4000, 5060), b"voice"));
        a.host_sends(0, udp_between(1, [10, 2, 0, 5], (4000, 7000), b"other"));
        run_for(&mut [&mut a, &mut b], &clock, MS, &mut lossy);
    }
    run_for(&mut [&mut a, &mut b], &clock, 10 * MS, |_| false);
    let got = b.to_hosts();
    let voice = got.iter().filter(|f| udp_of(f).payload == b"voice").count();
    let other = got.iter().filter(|f| udp_of(f).payload == b"other").count();
    let lost = |n: usize| 100.0 * (packets - n) as f64 / packets as f64;
    assert!(voice <= packets, "the receiver keeps one copy");
    assert!(lost(voice) <= 0.5, "duplicated: {}% lost", lost(voice));
    assert!(
        (3.0..=7.0).contains(&lost(other)),
        "single: {}% lost",
        lost(other)
    );
    let engine = b.workers[0].pipeline().tunnels().unwrap();
    let duplicates = engine
        .counters()
        .drops(crate::tunnel::TunnelDrop::Duplicate);
    assert!(
        duplicates as usize >= packets * 8 / 10,
        "{duplicates} second copies discarded"
    );
    assert_eq!(
        engine.counters().drops(crate::tunnel::TunnelDrop::Replay),
        0
    );
}

/// Site `n`'s configuration where the peer (site `m`) has one endpoint and
/// takes no probes, as a stock WireGuard peer would.
fn stock_text(n: u8, m: u8) -> String {
    multipath_text(n, m)
        .replace(
            &format!(
                "endpoints = [\n            {{ name = \"mpls\", address = \"192.0.2.{m}\", port = 51820 }},\n            {{ name = \"inet\", address = \"198.51.100.{m}\", port = 51820 }},\n        ]"
            ),
            &format!("endpoint = {{ address = \"198.51.100.{m}\", port = 51820 }}"),
        )
        .replace("sla_probes = true", "sla_probes = false")
}

#[test]
fn a_stock_peer_gets_no_probes_and_is_answered_on_the_uplink_it_spoke_on() {
    let stock = stock_text;
    assert!(
        !stock(1, 2).contains("endpoints"),
        "the peer has one endpoint"
    );
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &stock(1, 2), &clock);
    let mut b = site_from(2, 1, &stock(2, 1), &clock);
    let mut probe_sized = 0;
    let mut outer = Vec::new();
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], &[1; 300]));
    run_for(&mut [&mut a, &mut b], &clock, 1_000 * MS, |u| {
        // A probe is 64 bytes of WireGuard message; nothing else here is.
        probe_sized += usize::from(u.payload.len() == 64);
        if u.payload.len() > 300 {
            outer.push((u.src, u.dst));
        }
        false
    });
    assert_eq!(probe_sized, 0, "no probe to a peer without sla_probes");
    assert_eq!(b.to_hosts().len(), 1);
    // Before B spoke, A followed the routes: out of the port's address on
    // the endpoint's subnet.
    assert_eq!(outer, [([198, 51, 100, 1], [198, 51, 100, 2])]);
    // B answers on the uplink A's packet arrived by; A then answers there too.
    b.host_sends(0, udp_from_host(2, [10, 1, 0, 5], &[2; 300]));
    // Long enough for the workers to publish their paths again.
    run_for(&mut [&mut a, &mut b], &clock, 200 * MS, |_| false);
    assert_eq!(a.to_hosts().len(), 1);
    assert_eq!(a.active_path(), "local:inet->site-2");
}

#[test]
fn a_stock_peers_paths_are_measured_from_its_handshakes() {
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &stock_text(1, 2), &clock);
    let mut b = site_from(2, 1, &stock_text(2, 1), &clock);
    let figures = |site: &Site, path: &str| {
        let paths = site.paths();
        let (_, report) = paths
            .iter()
            .find(|(id, _)| id == path)
            .unwrap_or_else(|| panic!("{paths:?}"));
        report.figures
    };
    run_for(&mut [&mut a, &mut b], &clock, 200 * MS, |_| false);
    assert_eq!(
        figures(&a, "local:inet->site-2"),
        None,
        "nothing measured yet"
    );
    // A initiates; B's response is A's round trip, A's first message on the
    // session B's.
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], &[1; 300]));
    run_for(&mut [&mut a, &mut b], &clock, 1_000 * MS, |_| false);
    for (site, peer) in [(&a, "site-2"), (&b, "site-1")] {
        let f = figures(site, &format!("local:inet->{peer}")).expect("measured");
        assert!(f.up);
        assert!(f.rtt_ms.is_some_and(|r| r[0] < 10.0), "{f:?}");
        assert_eq!(f.loss_pct, Some(0.0));
        assert_eq!(figures(site, &format!("local:mpls->{peer}")), None);
    }
    // Past Rekey-After-Time, A's next packet starts a handshake; the WAN
    // is gone, so initiations go unanswered every Rekey-Timeout: two take
    // the path down.
    run_for(&mut [&mut a, &mut b], &clock, 121_000 * MS, |_| false);
    a.host_sends(0, udp_from_host(1, [10, 2, 0, 5], &[1; 300]));
    run_for(&mut [&mut a, &mut b], &clock, 12_000 * MS, |_| true);
    let f = figures(&a, "local:inet->site-2").unwrap();
    assert!(!f.up, "{f:?}");
    assert_eq!((f.sent, f.received), (3, 1));
    assert_eq!(f.health, Some(0.0));
}

/// Site 1 with a route to 203.0.113.0/24 out of its WAN port, shaped to
/// `rate_mbps` as the uplink `branch`.
fn shaped_text(rate_mbps: u32) -> String {
    shaped_text_with(rate_mbps, &[])
}

/// [`shaped_text`] with these peers.
fn shaped_text_with(rate_mbps: u32, peers: &[(u8, &[&str])]) -> String {
    config_text(
        1,
        peers,
        &format!(
            r#"{WAN_ROUTE}
            [[uplink]]
            name = "branch"
            port = "wan"
            rate_mbps = {rate_mbps}
            "#
        ),
    )
}

/// A UDP datagram from site 1's host, port `sport`, to 203.0.113.`host`:`dport`.
fn udp_out(sport: u16, host: u8, dport: u16, payload: &[u8]) -> VecFrame {
    let b = PacketBuilder::ethernet2(host_mac(1), lan_mac(1))
        .ipv4([10, 1, 0, 5], [203, 0, 113, host], 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

/// What a frame costs a shaper with Ethernet's 38 B of framing: its IP
/// packet and the framing.
fn wire_bits(frame: &VecFrame) -> u64 {
    (frame.len() as u64 - 14 + 38) * 8
}

impl Site {
    /// Packets the shapers hold, and those on their way to them.
    fn shaper_held(&self) -> usize {
        let on_the_way: usize = self.workers[0]
            .shapers
            .inboxes
            .iter()
            .map(|q| q.len())
            .sum();
        on_the_way + self.workers.iter().map(|w| w.shapers.held()).sum::<usize>()
    }

    /// Every worker's shaped egresses as last published.
    fn egresses(&self) -> Vec<crate::stats::EgressReport> {
        self.qos_stats
            .iter()
            .flat_map(|q| q.egresses().to_vec())
            .collect()
    }
}

#[test]
fn a_shaped_uplink_sends_at_its_rate_follows_a_reload_and_frees_all_at_shutdown() {
    // Two workers: the second hands its packets to the one that shapes.
    let clock = ManualClock::default();
    let mut a = site_from(1, 2, &shaped_text(1), &clock);
    let mut offered = 0u64;
    let mut sent = Vec::new();
    // Each ms: one packet from the host (8 Mbit/s offered, eight flows over
    // both workers), a round, and what left (ms, bits).
    let mut run = |a: &mut Site, sent: &mut Vec<(u64, u64)>, from_ms: u64, to_ms: u64| {
        for ms in from_ms..to_ms {
            let w = (ms % 2) as usize;
            a.host_sends(w, udp_out(4000 + (ms % 8) as u16, 9, 5000, &[7; 958]));
            offered += 1;
            a.round();
            let out = a.links.iter().flat_map(|l| l[WAN].from_gateway.drain());
            sent.extend(out.map(|f| (ms, wire_bits(&f))));
            clock.advance(MS);
        }
    };
    let rate = |sent: &[(u64, u64)], from_ms: u64, to_ms: u64| {
        let bits: u64 = sent
            .iter()
            .filter(|(ms, _)| (from_ms..to_ms).contains(ms))
            .map(|(_, b)| b)
            .sum();
        bits as f64 * 1_000.0 / (to_ms - from_ms) as f64
    };
    run(&mut a, &mut sent, 0, 3_000);
    let first = rate(&sent, 500, 3_000);
    assert!((first / 1e6 - 1.0).abs() < 0.01, "{first} bit/s");
    assert!(a.shaper_held() > 0, "a standing queue");

    // Twice the rate and a hundred peers (the shaper laid out anew for
    // their tunnel slots), without losing what is held.
    let nets: Vec<[String; 1]> = (2..102).map(|m| [format!("172.16.{m}.0/24")]).collect();
    let nets: Vec<[&str; 1]> = nets.iter().map(|[net]| [net.as_str()]).collect();
    let peers: Vec<(u8, &[&str])> = (2..).zip(nets.iter().map(|n| &n[..])).collect();
    let held = a.shaper_held();
    let dropped = a.drops(DropReason::Shaper);
    a.config.store(snapshot(&shaped_text_with(2, &peers), 1));
    for w in &mut a.workers {
        w.pick_up_snapshots(clock.now());
    }
    assert_eq!(a.shaper_held(), held, "the reload kept every packet");
    assert_eq!(a.drops(DropReason::Shaper), dropped);
    run(&mut a, &mut sent, 3_000, 6_000);
    let second = rate(&sent, 3_500, 6_000);
    assert!((second / 2e6 - 1.0).abs() < 0.01, "{second} bit/s");

    // Every packet offered was sent, refused or dropped (counted), or is held.
    let dropped = a.drops(DropReason::Shaper) + a.drops(DropReason::ShaperHandoffFull);
    let held = a.shaper_held() as u64;
    assert_eq!(sent.len() as u64 + dropped + held, offered);

    // Stopping frees what the shaper holds, counted, and publishes.
    for w in &mut a.workers {
        w.shut_down();
    }
    assert_eq!(a.shaper_held(), 0);
    assert_eq!(a.drops(DropReason::Shaper), dropped + held);
    let report = a.egresses();
    assert_eq!(report.len(), 1, "one worker shapes the uplink");
    assert_eq!(&*report[0].name, "branch");
    let standard = &report[0].classes[crate::qos::Class::Standard.index()];
    assert_eq!(standard.tx_packets, sent.len() as u64);
    assert!(
        standard.drops[crate::qos::DropReason::Codel.index()] > 0,
        "CoDel dropped"
    );
}

#[test]
fn name_lookups_go_ahead_of_a_bulk_transfer_on_a_shaped_uplink() {
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &shaped_text(1), &clock);
    let query = crate::dpi::dns::tests::query("example.com");
    let mut asked = Vec::new();
    let mut answered = Vec::new();
    for ms in 0..2_000u64 {
        a.host_sends(0, udp_out(4000, 9, 5000, &[7; 958]));
        if ms % 50 == 25 {
            // Each lookup from its own port: a new flow, classified on its first packet.
            a.host_sends(0, udp_out(20_000 + ms as u16, 53, 53, &query));
            asked.push(ms);
        }
        a.round();
        for frame in a.links[0][WAN].from_gateway.drain() {
            if udp_of(&frame).dst == [203, 0, 113, 53] {
                answered.push(ms);
            }
        }
        clock.advance(MS);
    }
    assert_eq!(answered.len(), asked.len(), "no lookup lost");
    // A lookup waits at most for the bulk frame on the wire (8.4 ms at 1 Mbit/s).
    let worst = asked
        .iter()
        .zip(&answered)
        .map(|(a, b)| b - a)
        .max()
        .unwrap();
    assert!(worst <= 9, "a lookup waited {worst} ms");
    // Stopping publishes the final figures.
    a.workers[0].shut_down();
    let report = a.egresses();
    let class = |c: crate::qos::Class| report[0].classes[c.index()];
    assert_eq!(
        class(crate::qos::Class::RealTime).tx_packets,
        asked.len() as u64
    );
    assert!(class(crate::qos::Class::Standard).tx_packets > 200);
    let sojourn = &report[0].sojourn[crate::qos::Class::Standard.index()];
    assert!(
        sojourn.sum_ns / sojourn.count() > 5 * MS,
        "the bulk flow queues behind them"
    );
}

/// `frame` (Ethernet, IPv4) with its TOS byte set to `tos` and its header
/// checksum made valid again.
fn with_tos(mut frame: VecFrame, tos: u8) -> VecFrame {
    let ip = &mut frame.data_mut()[14..];
    ip[1] = tos;
    let (mut header, _) = etherparse::Ipv4Header::from_slice(ip).unwrap();
    header.header_checksum = header.calc_header_checksum();
    ip[10..12].copy_from_slice(&header.header_checksum.to_be_bytes());
    frame
}

/// The TOS byte of an Ethernet + IPv4 frame.
fn tos_of(frame: &VecFrame) -> u8 {
    frame.data()[15]
}

#[test]
fn a_rules_class_marks_its_dscp_inside_and_on_the_tunnel_header() {
    let marking = r#"
        [qos.classes.Bulk]
        dscp = 8
        [[policy]]
        name = "backup"
        [[policy.rule]]
        action = "allow"
        priority = 1
        conditions = [{ type = "destination-port", value = "6000" }]
        qos_class = "Bulk"
    "#;
    let clock = ManualClock::default();
    let mut a = site_with(1, 1, &[(2, &["10.2.0.0/24"])], marking, &clock);
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24"])], &clock);
    // A session first, so that what follows is sealed as it arrives.
    a.host_sends(0, udp_between(1, [10, 2, 0, 5], (4000, 7000), b"hello"));
    settle(&mut [&mut a, &mut b], &clock);
    assert_eq!(b.to_hosts().len(), 1);

    // Sent as EF with ECT(0): the backup flow (Standard by its category,
    // Bulk by the rule) becomes CS1, the other keeps what its host chose;
    // ECN is untouched, and the outer header shows the inner DSCP.
    for (port, expected_dscp) in [(6000, 8), (7000, 46)] {
        let sent = with_tos(
            udp_between(1, [10, 2, 0, 5], (4000, port), &[7; 100]),
            46 << 2 | 0b10,
        );
        a.host_sends(0, sent);
        a.round();
        let outer = a.links[0][WAN].from_gateway.drain();
        assert_eq!(outer.len(), 1, "port {port}");
        assert_eq!(tos_of(&outer[0]), expected_dscp << 2, "outer, port {port}");
        b.links[0][WAN].to_gateway.push(outer[0].clone());
        settle(&mut [&mut a, &mut b], &clock);
        let inner = b.to_hosts();
        assert_eq!(inner.len(), 1, "port {port}");
        assert_eq!(
            tos_of(&inner[0]),
            expected_dscp << 2 | 0b10,
            "inner, port {port}"
        );
        let _checked = udp_of(&inner[0]); // its header checksum is valid
    }
}

#[test]
fn a_peer_with_a_rate_gets_it_and_the_other_peer_the_rest_of_the_uplink() {
    let uplink = r#"
        [[uplink]]
        name = "branch"
        port = "wan"
        rate_mbps = 4
    "#;
    let text = config_text(1, &[(2, &["10.2.0.0/24"]), (3, &["10.3.0.0/24"])], uplink).replacen(
        "name = \"site-2\"",
        "name = \"site-2\"\n            rate_mbps = 1",
        1,
    );
    let clock = ManualClock::default();
    let mut a = site_from(1, 1, &text, &clock);
    let mut b = site(2, 1, &[(1, &["10.1.0.0/24"])], &clock);
    let mut c = site(3, 1, &[(1, &["10.1.0.0/24"])], &clock);
    for dst in [[10, 2, 0, 5], [10, 3, 0, 5]] {
        a.host_sends(0, udp_from_host(1, dst, b"hello"));
    }
    settle(&mut [&mut a, &mut b, &mut c], &clock);
    assert_eq!(
        b.to_hosts().len() + c.to_hosts().len(),
        2,
        "both sessions up"
    );

    // 8 Mbit/s offered toward each peer, over an uplink of 4.
    let mut bits = [0u64; 2];
    for ms in 0..3_000 {
        for dst in [[10, 2, 0, 5], [10, 3, 0, 5]] {
            a.host_sends(0, udp_from_host(1, dst, &[7; 958]));
        }
        a.round();
        for frame in a.links[0][WAN].from_gateway.drain() {
            let to = udp_of(&frame).dst[3];
            if ms >= 500 && (2..=3).contains(&to) {
                bits[usize::from(to - 2)] += wire_bits(&frame);
            }
        }
        clock.advance(MS);
    }
    let mbps = bits.map(|b| b as f64 / 2.5 / 1e6);
    assert!(
        (mbps[0] - 1.0).abs() < 0.02,
        "site 2 at its 1 Mbit/s: {mbps:?}"
    );
    assert!((mbps[1] - 3.0).abs() < 0.06, "site 3 the other 3: {mbps:?}");
}

/// A TCP segment with `payload` between `src` and `dst` (address, port),
/// from `src_mac` to `dst_mac`.
fn tcp_segment(
    [src_mac, dst_mac]: [[u8; 6]; 2],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    payload: &[u8],
) -> VecFrame {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1, 65_535);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    VecFrame::new(&out)
}

#[test]
fn a_data_connection_on_another_worker_is_named_by_the_announcing_one() {
    use crate::dpi::Method;
    let clock = ManualClock::default();
    let server_mac = [2, 0, 0, 0, 0x50, 0x50];
    let extra = format!(
        "[[neighbor]]\nip = \"192.0.2.50\"\nmac = \"{}\"\nport = \"wan\"\n",
        mac_text(server_mac)
    );
    let mut a = site_with(1, 2, &[], &extra, &clock);
    let (client, server) = ([10, 1, 0, 5], [192, 0, 2, 50]);
    let from_client = [host_mac(1), lan_mac(1)];
    let from_server = [server_mac, wan_mac(1)];
    // The control connection, on worker 0: the client's first segment, the
    // greeting, then the passive-mode reply naming port 195 * 256 + 80.
    a.host_sends(
        0,
        tcp_segment(from_client, (client, 40_000), (server, 21), b""),
    );
    for reply in [
        &b"220 ProFTPD Server ready.\r\n"[..],
        b"227 Entering Passive Mode (192,0,2,50,195,80).\r\n",
    ] {
        let segment = tcp_segment(from_server, (server, 21), (client, 40_000), reply);
        a.links[0][WAN].to_gateway.push(segment);
        a.round();
        clock.advance(MS);
    }
    // The data connection lands on worker 1 (RSS hashes it elsewhere).
    a.host_sends(
        1,
        tcp_segment(from_client, (client, 40_001), (server, 50_000), b""),
    );
    a.round();
    let related = |w: usize| {
        a.workers[w]
            .pipeline()
            .dpi_counters()
            .method_flows(Method::Related)
    };
    assert_eq!(
        (related(0), related(1)),
        (0, 1),
        "worker 1 named it FTP_DATA"
    );
    let unshared: u64 = (0..2)
        .map(|w| {
            a.workers[w]
                .pipeline()
                .dpi_counters()
                .announcements_unshared_total()
        })
        .sum();
    assert_eq!(unshared, 0);
}
