//! The engine end to end on plain buffers: two (or more) engines joined by
//! an in-memory network that the tests can delay, drop, replay and forge on.

use std::net::SocketAddr;
use std::time::Duration;

use super::crypto::hash;
use super::memory::MemoryIo;
use super::noise::{PeerKeys, StaticKeys};
use super::timers::TimerSettings;
use super::*;
use crate::frame::VecFrame;

const S: u64 = 1_000_000_000;

struct Side {
    name: &'static str,
    addr: SocketAddr,
    cfg: TunnelConfig,
    engine: Tunnels<VecFrame>,
    host: MemoryIo,
}

impl Side {
    /// Sends `packet` from the inside to peer 0, the only peer in most tests.
    fn send(&mut self, packet: VecFrame, now: u64) {
        self.send_to(0, packet, now);
    }

    /// Sends `packet` from the inside to `peer`.
    fn send_to(&mut self, peer: PeerId, packet: VecFrame, now: u64) {
        let outcome = self
            .engine
            .send(&self.cfg, peer, packet, now, &mut self.host);
        self.host.record(outcome, &mut self.engine);
    }

    /// Hands a datagram that arrived from `from` to the engine.
    fn receive(&mut self, from: SocketAddr, datagram: VecFrame, now: u64) {
        let outcome = self
            .engine
            .receive(&self.cfg, from, datagram, now, &mut self.host);
        self.host.record(outcome, &mut self.engine);
    }

    /// Runs the due timers of up to `budget` peers.
    fn poll(&mut self, now: u64, budget: usize) {
        self.engine
            .handle_timeouts(&self.cfg, now, budget, &mut self.host);
        self.host.record(Outcome::Done, &mut self.engine);
    }
}

fn secret(name: &str) -> [u8; 32] {
    hash(&[name.as_bytes()])
}

fn public(name: &str) -> [u8; 32] {
    *StaticKeys::new(secret(name)).public()
}

struct PeerSpec {
    name: &'static str,
    addr: Option<SocketAddr>,
    allowed: Vec<&'static str>,
    key: Option<[u8; 32]>,
    psk: Option<[u8; 32]>,
    compression: bool,
}

fn peer_spec(name: &'static str, addr: &str, allowed: &[&'static str]) -> PeerSpec {
    PeerSpec {
        name,
        addr: Some(addr.parse().unwrap()),
        allowed: allowed.to_vec(),
        key: None,
        psk: None,
        compression: false,
    }
}

fn side(name: &'static str, addr: &str, peers: Vec<PeerSpec>, timers: TimerSettings) -> Side {
    let keys = std::sync::Arc::new(StaticKeys::new(secret(name)));
    let peers = peers
        .into_iter()
        .map(|p| PeerConfig {
            name: p.name.into(),
            keys: PeerKeys::new(&keys, p.key.unwrap_or_else(|| public(p.name)), p.psk),
            endpoint: p.addr,
            allowed_ips: p.allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive_s: 0,
            compression: p.compression,
        })
        .collect();
    let cfg = TunnelConfig::new(keys, 51820, 1420, timers, 200, peers).unwrap();
    let engine = Tunnels::new(0, 1, &cfg, [7; 16]);
    Side {
        name,
        addr: addr.parse().unwrap(),
        cfg,
        engine,
        host: MemoryIo::seeded(name.len() as u64 * 977),
    }
}

/// Alice (10.1.0.0/24 behind her) and Bob (10.2.0.0/24), each the other's only peer.
fn pair(timers: TimerSettings) -> (Side, Side) {
    let alice = side(
        "alice",
        "192.0.2.1:51820",
        vec![peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"])],
        timers,
    );
    let bob = side(
        "bob",
        "192.0.2.2:51820",
        vec![peer_spec("alice", "192.0.2.1:51820", &["10.1.0.0/24"])],
        timers,
    );
    (alice, bob)
}

/// An IPv4 packet from `src` to `dst` with `payload`.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> VecFrame {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    VecFrame::new(&p)
}

/// Delivers every datagram in flight between the two sides, repeatedly,
/// until none is left. Returns how many moved.
fn pump(a: &mut Side, b: &mut Side, now: u64) -> usize {
    a.host.now_ns = now;
    b.host.now_ns = now;
    let mut moved = 0;
    loop {
        let from_a: Vec<_> = a.host.sent.drain(..).collect();
        let from_b: Vec<_> = b.host.sent.drain(..).collect();
        if from_a.is_empty() && from_b.is_empty() {
            return moved;
        }
        for (to, frame) in from_a {
            moved += 1;
            if to == b.addr {
                b.receive(a.addr, frame, now);
            }
        }
        for (to, frame) in from_b {
            moved += 1;
            if to == a.addr {
                a.receive(b.addr, frame, now);
            }
        }
    }
}

fn delivered_payloads(side: &mut Side) -> Vec<Vec<u8>> {
    side.host
        .delivered
        .drain(..)
        .map(|(_, f)| f.data()[20..].to_vec())
        .collect()
}

fn events(side: &Side, e: TunnelEvent) -> u64 {
    side.engine.counters().events(e)
}

fn drops(side: &Side, d: TunnelDrop) -> u64 {
    side.engine.counters().drops(d)
}

#[test]
fn the_first_packet_starts_a_handshake_and_is_delivered_after_it() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"hello"), S);
    assert_eq!(a.host.sent.len(), 1, "an initiation, the packet waits");
    assert_eq!(a.host.sent[0].1.data()[0], 1);
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut b), vec![b"hello".to_vec()]);
    assert_eq!(events(&a, TunnelEvent::InitiationsSent), 1);
    assert_eq!(events(&b, TunnelEvent::ResponsesSent), 1);
    assert!(a.engine.peer_stats(0, &a.cfg, S).session_up);
    assert!(
        b.engine.peer_stats(0, &b.cfg, S).session_up,
        "confirmed by the data"
    );

    // Both directions now, without another handshake.
    b.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"back"), 2 * S);
    pump(&mut a, &mut b, 2 * S);
    assert_eq!(delivered_payloads(&mut a), vec![b"back".to_vec()]);
    assert_eq!(events(&b, TunnelEvent::InitiationsSent), 0);
    let stats = a.engine.peer_stats(0, &a.cfg, 2 * S);
    assert_eq!((stats.tx_packets, stats.rx_packets), (1, 1));
    assert_eq!(stats.last_handshake_unix_s, 1_800_000_001);
}

#[test]
fn a_responder_without_data_gets_a_keepalive_that_confirms_its_keypair() {
    let (mut a, mut b) = pair(TimerSettings::default());
    // Bob starts, but sends nothing afterwards: Alice's data confirms nothing
    // until it flows, so Bob (initiator) sends a keepalive after the response.
    b.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"x"), S);
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut a), vec![b"x".to_vec()]);
    assert!(a.engine.peer_stats(0, &a.cfg, S).session_up);
    // Now Alice can send on the confirmed keypair at once.
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"y"), S);
    assert_eq!(a.host.sent.len(), 1);
    assert_eq!(a.host.sent[0].1.data()[0], 4, "data, no initiation");
}

#[test]
fn packets_queue_while_the_handshake_runs_and_all_arrive_in_order() {
    let (mut a, mut b) = pair(TimerSettings::default());
    for i in 0..10u8 {
        a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], &[i]), S);
    }
    assert_eq!(a.host.sent.len(), 1, "one initiation for ten packets");
    pump(&mut a, &mut b, S);
    let got: Vec<u8> = delivered_payloads(&mut b)
        .into_iter()
        .map(|p| p[0])
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn replayed_data_and_handshakes_are_counted_and_dropped() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    let initiation = a.host.sent[0].1.clone();
    pump(&mut a, &mut b, S);
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"2"), S);
    let data = a.host.sent[0].1.clone();
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut b).len(), 2);

    b.receive(a.addr, data, 2 * S);
    assert_eq!(
        drops(&b, TunnelDrop::Duplicate),
        1,
        "a counter the window holds"
    );
    b.receive(a.addr, initiation, 2 * S);
    assert_eq!(drops(&b, TunnelDrop::Replay), 1, "an old timestamp");
    assert!(
        b.host.sent.is_empty(),
        "no response to a replayed initiation"
    );
    assert!(b.host.delivered.is_empty());
}

#[test]
fn garbage_truncation_and_forgery_never_reach_the_inside() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    let initiation = a.host.sent[0].1.clone();
    pump(&mut a, &mut b, S);
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"2"), S);
    let data = a.host.sent.pop().unwrap().1;
    b.host.delivered.clear();

    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![4],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        initiation.data()[..100].to_vec(),
        data.data()[..20].to_vec(),
        vec![
            4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
    ];
    for input in &inputs {
        b.receive(a.addr, VecFrame::new(input), 2 * S);
    }
    // Bad MAC1: one bit of the initiation flipped.
    let mut bad = initiation.clone();
    bad.data_mut()[120] ^= 1;
    b.receive(a.addr, bad, 2 * S);
    // Tampered ciphertext.
    let mut tampered = data.clone();
    tampered.data_mut()[20] ^= 1;
    b.receive(a.addr, tampered, 2 * S);

    assert_eq!(drops(&b, TunnelDrop::Malformed), 5);
    assert_eq!(
        drops(&b, TunnelDrop::NoSession),
        1,
        "an index we never gave out"
    );
    assert_eq!(drops(&b, TunnelDrop::BadMac), 1);
    assert_eq!(drops(&b, TunnelDrop::DecryptFailed), 1);
    assert!(b.host.delivered.is_empty() && b.host.sent.is_empty());
    // The genuine message still gets through afterwards.
    b.receive(a.addr, data, 2 * S);
    assert_eq!(delivered_payloads(&mut b), vec![b"2".to_vec()]);
}

#[test]
fn a_peer_with_the_wrong_key_never_gets_a_session() {
    let (_, mut b) = pair(TimerSettings::default());
    // Mallory knows Bob's public key but is not Bob's peer.
    let mut mallory = side(
        "mallory",
        "192.0.2.66:51820",
        vec![peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"])],
        TimerSettings::default(),
    );
    for t in 1..4 {
        mallory.send(ipv4([10, 9, 0, 1], [10, 2, 0, 9], b"x"), t * 6 * S);
        for (_, f) in mallory.host.sent.drain(..) {
            b.receive(mallory.addr, f, t * 6 * S);
        }
    }
    assert_eq!(drops(&b, TunnelDrop::UnknownPeer), 1);
    assert!(b.host.sent.is_empty() && b.host.delivered.is_empty());
    // A peer configured with a key Bob does not hold fails the same way
    // from Bob's side: Alice thinks Bob's key is Carol's.
    let mut alice = side(
        "alice",
        "192.0.2.1:51820",
        vec![PeerSpec {
            key: Some(public("carol")),
            ..peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"])
        }],
        TimerSettings::default(),
    );
    alice.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), S);
    let (_, f) = alice.host.sent.pop().unwrap();
    b.receive(alice.addr, f, S);
    assert_eq!(
        drops(&b, TunnelDrop::BadMac),
        1,
        "MAC1 is keyed by Carol's key, not Bob's"
    );
    assert!(!alice.engine.peer_stats(0, &alice.cfg, S).session_up);
}

#[test]
fn preshared_keys_that_differ_fail_the_handshake() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a = side(
        a.name,
        "192.0.2.1:51820",
        vec![PeerSpec {
            psk: Some([1; 32]),
            ..peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"])
        }],
        TimerSettings::default(),
    );
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), S);
    pump(&mut a, &mut b, S);
    assert_eq!(drops(&a, TunnelDrop::HandshakeFailed), 1);
    assert!(b.host.delivered.is_empty());
}

#[test]
fn packets_from_outside_the_allowed_ips_are_dropped() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"ok"), S);
    a.send(ipv4([10, 7, 0, 5], [10, 2, 0, 9], b"spoofed"), S);
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut b), vec![b"ok".to_vec()]);
    assert_eq!(drops(&b, TunnelDrop::AllowedIps), 1);
}

#[test]
fn a_handshake_flood_engages_cookies_and_a_real_peer_still_gets_its_session() {
    let (mut a, mut b) = pair(TimerSettings::default());
    // A flood of initiations with valid MAC1 (anyone who knows Bob's public
    // key can make one) from many spoofed sources.
    let flooder = StaticKeys::new(secret("flood"));
    let bob_for_flooder = PeerKeys::new(&flooder, public("bob"), None);
    let mut jar = cookie::CookieJar::default();
    let mut cookies = 0;
    for i in 0..200u32 {
        let mut m = [0u8; messages::INITIATION_LEN];
        noise::initiate(
            &flooder,
            &bob_for_flooder,
            i,
            secret(&i.to_string()),
            &[0; 12],
            &mut m,
        )
        .unwrap();
        jar.stamp(&bob_for_flooder, &mut m, 0);
        let from = SocketAddr::from(([198, 51, 100, (i % 250) as u8], 1000 + i as u16));
        b.receive(from, VecFrame::new(&m), S + u64::from(i) * 10_000);
        cookies += b
            .host
            .sent
            .drain(..)
            .filter(|(_, f)| f.data()[0] == 3)
            .count();
    }
    assert!(events(&b, TunnelEvent::UnderLoad) >= 1);
    assert!(
        cookies > 150,
        "most of the flood was answered with cookies, not DH: {cookies}"
    );
    assert!(
        drops(&b, TunnelDrop::UnknownPeer) <= 40,
        "only the messages before cookie mode were opened"
    );

    // Alice, still under load: her first initiation earns a cookie, the
    // retransmission carries MAC2 and is answered.
    let t = S + 3_000_000;
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"hi"), t);
    pump(&mut a, &mut b, t);
    assert_eq!(events(&a, TunnelEvent::CookieRepliesReceived), 1);
    assert!(b.host.delivered.is_empty());
    a.poll(t + 6 * S, 16); // retransmit
                           // Keep Bob under load while the retransmission arrives.
    for i in 0..30u32 {
        let mut m = [0u8; messages::INITIATION_LEN];
        noise::initiate(&flooder, &bob_for_flooder, i, secret("f"), &[0; 12], &mut m).unwrap();
        jar.stamp(&bob_for_flooder, &mut m, 0);
        b.receive(
            SocketAddr::from(([198, 51, 100, 1], 9)),
            VecFrame::new(&m),
            t + 6 * S,
        );
    }
    b.host.sent.retain(|(to, _)| *to == a.addr);
    pump(&mut a, &mut b, t + 6 * S);
    assert_eq!(delivered_payloads(&mut b), vec![b"hi".to_vec()]);
}

#[test]
fn an_initiator_rekeys_after_rekey_after_time_without_losing_packets() {
    let timers = TimerSettings {
        rekey_after_time_s: 3,
        reject_after_time_s: 6,
        ..TimerSettings::default()
    };
    let (mut a, mut b) = pair(timers);
    let mut sent = 0u32;
    let mut got = 0;
    for step in 0..100u64 {
        let now = S + step * 100_000_000; // 10 s in 100 ms steps
        for side in [&mut a, &mut b] {
            let (src, dst) = if side.name == "alice" {
                ([10, 1, 0, 5], [10, 2, 0, 9])
            } else {
                ([10, 2, 0, 9], [10, 1, 0, 5])
            };
            side.host.now_ns = now;
            side.send(ipv4(src, dst, &sent.to_be_bytes()), now);
            sent += 1;
            side.poll(now, 8);
        }
        pump(&mut a, &mut b, now);
        got += a.host.delivered.drain(..).count() + b.host.delivered.drain(..).count();
    }
    assert_eq!(got, sent as usize, "every packet arrived across the rekeys");
    let handshakes =
        events(&a, TunnelEvent::InitiationsSent) + events(&b, TunnelEvent::InitiationsSent);
    assert!(
        (3..=8).contains(&handshakes),
        "{handshakes} handshakes in 10 s with a 3 s rekey"
    );
    assert_eq!(
        drops(&a, TunnelDrop::NoSession) + drops(&b, TunnelDrop::NoSession),
        0
    );
}

#[test]
fn received_data_without_an_answer_gets_a_keepalive_and_silence_a_new_handshake() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    pump(&mut a, &mut b, S);
    // Bob received data and sent nothing: a keepalive after 10 s.
    b.poll(11 * S + 1, 8);
    assert_eq!(events(&b, TunnelEvent::KeepalivesSent), 1);
    pump(&mut a, &mut b, 11 * S + 1);
    assert_eq!(events(&a, TunnelEvent::KeepalivesReceived), 1);

    // Alice sends into the void: after 15 s (and jitter) she starts over.
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"2"), 20 * S);
    a.host.sent.clear();
    a.poll(36 * S, 8);
    assert_eq!(events(&a, TunnelEvent::InitiationsSent), 2);
}

#[test]
fn an_unanswered_initiation_is_retransmitted_then_abandoned() {
    let (mut a, _) = pair(TimerSettings::default());
    for i in 0..3u8 {
        a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], &[i]), S);
    }
    let mut now = S;
    for _ in 0..40 {
        now += 5_400_000_000;
        a.poll(now, 8);
    }
    assert_eq!(
        events(&a, TunnelEvent::InitiationsSent),
        18,
        "90 s of 5 s retries"
    );
    assert_eq!(drops(&a, TunnelDrop::HandshakeTimeout), 3);
    // The retransmissions are fresh initiations, each with its own index.
    let mut senders: Vec<&[u8]> = a.host.sent.iter().map(|(_, f)| &f.data()[4..8]).collect();
    senders.sort();
    senders.dedup();
    assert_eq!(senders.len(), 18);
}

#[test]
fn the_endpoint_follows_a_roaming_peer() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    pump(&mut a, &mut b, S);
    // Bob moves to a new address and sends from there.
    b.addr = "203.0.113.9:40000".parse().unwrap();
    b.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"moved"), 2 * S);
    pump(&mut a, &mut b, 2 * S);
    assert_eq!(delivered_payloads(&mut a), vec![b"moved".to_vec()]);
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"reply"), 3 * S);
    assert_eq!(a.host.sent[0].0, b.addr, "answers go to where Bob is now");
}

#[test]
fn sessions_expire_and_keys_are_erased_after_silence() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    pump(&mut a, &mut b, S);
    assert!(a.engine.peer_stats(0, &a.cfg, 100 * S).session_up);
    assert!(
        !a.engine.peer_stats(0, &a.cfg, 181 * S + 1).session_up,
        "past Reject-After-Time"
    );
    a.poll(600 * S, 8);
    assert_eq!(
        a.engine.indices.len(),
        0,
        "every index was retired with its keys"
    );
}

#[test]
fn a_peer_without_an_endpoint_can_call_in() {
    let mut a = side(
        "alice",
        "192.0.2.1:51820",
        vec![PeerSpec {
            addr: None,
            ..peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"])
        }],
        TimerSettings::default(),
    );
    let mut b = side(
        "bob",
        "192.0.2.2:51820",
        vec![peer_spec("alice", "192.0.2.1:51820", &["10.1.0.0/24"])],
        TimerSettings::default(),
    );
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"lost"), S);
    assert_eq!(drops(&a, TunnelDrop::NoEndpoint), 1);
    b.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"hi"), S);
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut a), vec![b"hi".to_vec()]);
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"now"), S);
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut b), vec![b"now".to_vec()]);
}

#[test]
fn work_for_another_workers_peer_is_handed_over_and_indices_steer_data() {
    // Alice runs two workers; whichever owns Bob (by his key) is `o`, the other `n`.
    let timers = TimerSettings::default();
    let mut alice = gateway(
        2,
        vec![
            peer_spec("carol", "192.0.2.3:51820", &["10.3.0.0/24"]),
            peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"]),
        ],
    );
    let o = alice[0].engine.owner(1);
    let n = 1 - o;
    let mut b = side(
        "bob",
        "192.0.2.2:51820",
        vec![peer_spec("alice", "192.0.2.1:51820", &["10.1.0.0/24"])],
        timers,
    );

    // A LAN packet for Bob lands on the other worker: it goes to his owner.
    alice[n].send_to(1, ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), S);
    let (worker, work) = alice[n].host.handoffs.pop().unwrap();
    assert_eq!(worker, o);
    let Work::Send { peer: 1, .. } = work else {
        panic!("a send to Bob")
    };
    alice[o].handle(work, S);
    let (_, initiation) = alice[o].host.sent.pop().unwrap();
    assert_eq!(usize::from(initiation.data()[7]), o, "the owner's index");

    // Bob's response arrives at the other worker (the NIC's hash chose
    // it): steered by its receiver index.
    b.receive(alice[o].addr, initiation, S);
    let (_, response) = b.host.sent.pop().unwrap();
    alice[n].receive(b.addr, response, S);
    let (worker, work @ Work::Receive { .. }) = alice[n].host.handoffs.pop().unwrap() else {
        panic!("a receive")
    };
    assert_eq!(worker, o);
    alice[o].handle(work, S);
    let alice_addr = alice[o].addr;
    for (_, f) in alice[o].host.sent.drain(..) {
        b.receive(alice_addr, f, S);
    }
    assert_eq!(delivered_payloads(&mut b), vec![b"x".to_vec()]);

    // Bob's own initiation lands on the other worker, which checks and
    // opens it, and hands it over opened: the owner answers it.
    let mut b2 = side(
        "bob",
        "192.0.2.2:51820",
        vec![peer_spec("alice", "192.0.2.1:51820", &["10.1.0.0/24"])],
        timers,
    );
    b2.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"y"), 2 * S);
    let (_, init) = b2.host.sent.pop().unwrap();
    alice[n].receive(b2.addr, init, 2 * S);
    let (worker, work @ Work::Initiation { .. }) = alice[n].host.handoffs.pop().unwrap() else {
        panic!("an opened initiation")
    };
    assert_eq!(worker, o);
    alice[o].handle(work, 2 * S);
    assert_eq!(events(&alice[o], TunnelEvent::ResponsesSent), 1);
    assert_eq!(events(&alice[n], TunnelEvent::ResponsesSent), 0);
    let (to, response) = alice[o].host.sent.pop().unwrap();
    assert_eq!(to, b2.addr);
    b2.receive(alice[o].addr, response, 2 * S);
    assert_eq!(events(&b2, TunnelEvent::ResponsesReceived), 1);
}

/// Alice's gateway as `workers` workers: one engine each, all on the same
/// configuration (built once per worker, as each worker reads its own).
fn gateway(workers: usize, peers: Vec<PeerSpec>) -> Vec<Side> {
    let specs: Vec<_> = peers
        .iter()
        .map(|p| (p.name, p.addr, p.allowed.clone()))
        .collect();
    (0..workers)
        .map(|w| {
            let peers = specs
                .iter()
                .map(|(name, addr, allowed)| PeerSpec {
                    name,
                    addr: *addr,
                    allowed: allowed.clone(),
                    key: None,
                    psk: None,
                    compression: false,
                })
                .collect();
            let mut worker = side("alice", "192.0.2.1:51820", peers, TimerSettings::default());
            worker.engine = Tunnels::new(w, workers, &worker.cfg, [w as u8; 16]);
            worker.host = MemoryIo::seeded(7 + w as u64);
            worker
        })
        .collect()
}

/// A peer of Alice's gateway, Alice its only peer.
fn remote(name: &'static str, addr: &str) -> Side {
    side(
        name,
        addr,
        vec![peer_spec("alice", "192.0.2.1:51820", &["10.1.0.0/24"])],
        TimerSettings::default(),
    )
}

impl Side {
    /// Runs work another worker handed over.
    fn handle(&mut self, work: Work<VecFrame>, now: u64) {
        self.host.now_ns = now;
        let outcome = self
            .engine
            .handle_work(&self.cfg, work, now, &mut self.host);
        self.host.record(outcome, &mut self.engine);
    }
}

/// Moves datagrams and handed-over work between Alice's workers and her
/// peers until nothing is in flight. A datagram from peer `p` lands on
/// worker `lands(p)`; datagrams to anyone else (a flood's cookie replies)
/// are dropped.
fn settle(alice: &mut [Side], peers: &mut [Side], now: u64, lands: impl Fn(usize) -> usize) {
    for s in alice.iter_mut().chain(peers.iter_mut()) {
        s.host.now_ns = now;
    }
    loop {
        let mut moved = false;
        for w in 0..alice.len() {
            let sent: Vec<_> = alice[w].host.sent.drain(..).collect();
            for (to, frame) in sent {
                if let Some(p) = peers.iter_mut().find(|p| p.addr == to) {
                    p.receive(alice[w].addr, frame, now);
                    moved = true;
                }
            }
            let handed: Vec<_> = alice[w].host.handoffs.drain(..).collect();
            for (target, work) in handed {
                alice[target].handle(work, now);
                moved = true;
            }
        }
        for p in 0..peers.len() {
            let sent: Vec<_> = peers[p].host.sent.drain(..).collect();
            for (to, frame) in sent {
                if to == alice[0].addr {
                    let from = peers[p].addr;
                    alice[lands(p)].receive(from, frame, now);
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

/// Thirty initiations with a valid MAC1 from spoofed sources: enough to
/// put a worker in cookie mode at the tests' threshold (200 a second).
fn flood(worker: &mut Side, now: u64) {
    let flooder = StaticKeys::new(secret("flood"));
    let alice = PeerKeys::new(&flooder, public("alice"), None);
    let mut jar = cookie::CookieJar::default();
    for i in 0..30u32 {
        let mut m = [0u8; messages::INITIATION_LEN];
        noise::initiate(&flooder, &alice, i, secret("f"), &[0; 12], &mut m).unwrap();
        jar.stamp(&alice, &mut m, 0);
        let from = SocketAddr::from(([198, 51, 100, i as u8], 1000));
        worker.receive(from, VecFrame::new(&m), now);
    }
}

#[test]
fn under_a_flood_on_two_workers_every_peer_gets_its_session() {
    // Four peers, each landing first on its owner and then on the other
    // worker: the cookie one worker hands out must pass on the other, and
    // the initiation it opens must be answered by the owner without a
    // second cookie round.
    let names = [("bob", 2), ("carol", 3), ("dave", 4), ("erin", 5)];
    let mut alice = gateway(
        2,
        names
            .iter()
            .map(|&(name, n)| {
                let addr: &'static str = format!("192.0.2.{n}:51820").leak();
                let net: &'static str = format!("10.{n}.0.0/24").leak();
                peer_spec(name, addr, &[net])
            })
            .collect(),
    );
    let mut peers: Vec<Side> = names
        .iter()
        .map(|&(name, n)| remote(name, &format!("192.0.2.{n}:51820")))
        .collect();
    let owner: Vec<usize> = (0..peers.len())
        .map(|p| alice[0].engine.owner(p as PeerId))
        .collect();
    assert_eq!(
        owner,
        (0..peers.len())
            .map(|p| alice[1].engine.owner(p as PeerId))
            .collect::<Vec<_>>(),
        "both workers agree on ownership"
    );

    let t1 = S;
    for w in alice.iter_mut() {
        flood(w, t1);
        assert_eq!(events(w, TunnelEvent::UnderLoad), 1);
    }
    for (p, &(_, n)) in names.iter().enumerate() {
        peers[p].send(ipv4([10, n, 0, 9], [10, 1, 0, 5], b"hello"), t1);
    }
    settle(&mut alice, &mut peers, t1, |p| owner[p]);
    for p in &peers {
        assert_eq!(
            events(p, TunnelEvent::CookieRepliesReceived),
            1,
            "{}",
            p.name
        );
    }

    // Retransmissions, each landing on the worker that did not hand out
    // its cookie, while the flood goes on.
    let t2 = t1 + 6 * S;
    for w in alice.iter_mut() {
        flood(w, t2);
    }
    for p in peers.iter_mut() {
        p.poll(t2, 16);
    }
    settle(&mut alice, &mut peers, t2, |p| 1 - owner[p]);
    for p in &peers {
        assert_eq!(events(p, TunnelEvent::ResponsesReceived), 1, "{}", p.name);
    }
    let delivered: usize = alice.iter().map(|w| w.host.delivered.len()).sum();
    assert_eq!(delivered, peers.len(), "every peer's first packet arrived");
    for p in &peers {
        assert_eq!(
            events(p, TunnelEvent::CookieRepliesReceived),
            1,
            "{}: no second cookie round",
            p.name
        );
    }
}

#[test]
fn peers_keep_their_worker_and_sessions_when_others_are_added_and_removed() {
    // Bob, Carol and Dave have sessions through Alice's two workers. Work
    // for each is queued on the worker that does not own it; before the
    // owner takes it, Alice's configuration adds Aaron in front (every
    // position moves) and removes Carol.
    let spec = |name: &'static str, n: u8| {
        let addr: &'static str = format!("192.0.2.{n}:51820").leak();
        let net: &'static str = format!("10.{n}.0.0/24").leak();
        peer_spec(name, addr, &[net])
    };
    let mut alice = gateway(2, vec![spec("bob", 2), spec("carol", 3), spec("dave", 4)]);
    let mut peers: Vec<Side> = [("bob", 2u8), ("carol", 3), ("dave", 4)]
        .iter()
        .map(|&(name, n)| remote(name, &format!("192.0.2.{n}:51820")))
        .collect();
    let owner: Vec<usize> = (0..3).map(|p| alice[0].engine.owner(p)).collect();
    for (p, n) in [(0, 2u8), (1, 3), (2, 4)] {
        peers[p].send(ipv4([10, n, 0, 9], [10, 1, 0, 5], b"up"), S);
    }
    settle(&mut alice, &mut peers, S, |p| 1 - owner[p]);
    let delivered: usize = alice
        .iter_mut()
        .map(|w| w.host.delivered.drain(..).count())
        .sum();
    assert_eq!(delivered, 3);
    let initiations = |alice: &[Side]| -> u64 {
        alice
            .iter()
            .map(|w| events(w, TunnelEvent::InitiationsSent))
            .sum()
    };
    let sent_before = initiations(&alice);

    let t = 2 * S;
    for (p, (name, n)) in [("bob", 2u8), ("carol", 3), ("dave", 4)].iter().enumerate() {
        let packet = ipv4(
            [10, 1, 0, 5],
            [10, *n, 0, 9],
            format!("to {name}").as_bytes(),
        );
        alice[1 - owner[p]].send_to(p as PeerId, packet, t);
    }
    let queued: Vec<_> = alice
        .iter_mut()
        .flat_map(|w| w.host.handoffs.drain(..).collect::<Vec<_>>())
        .collect();
    assert_eq!(queued.len(), 3);

    let keys = std::sync::Arc::new(StaticKeys::new(secret("alice")));
    let peer = |name: &str, n: u8| PeerConfig {
        name: name.into(),
        keys: PeerKeys::new(&keys, public(name), None),
        endpoint: Some(format!("192.0.2.{n}:51820").parse().unwrap()),
        allowed_ips: vec![format!("10.{n}.0.0/24").parse().unwrap()],
        persistent_keepalive_s: 0,
        compression: false,
    };
    for w in alice.iter_mut() {
        let peers = vec![peer("aaron", 9), peer("bob", 2), peer("dave", 4)];
        w.cfg = TunnelConfig::new(
            keys.clone(),
            51820,
            1420,
            TimerSettings::default(),
            200,
            peers,
        )
        .unwrap();
        w.engine.reconfigure(&w.cfg);
    }
    assert_eq!(alice[0].engine.owner(1), owner[0], "Bob kept his worker");
    assert_eq!(alice[0].engine.owner(2), owner[2], "Dave kept his worker");

    for (target, work) in queued {
        alice[target].handle(work, t);
    }
    settle(&mut alice, &mut peers, t, |p| owner[p]);
    assert_eq!(delivered_payloads(&mut peers[0]), vec![b"to bob".to_vec()]);
    assert!(peers[1].host.delivered.is_empty(), "Carol is gone");
    assert_eq!(delivered_payloads(&mut peers[2]), vec![b"to dave".to_vec()]);
    let unknown: u64 = alice
        .iter()
        .map(|w| drops(w, TunnelDrop::UnknownPeer))
        .sum();
    assert_eq!(unknown, 1, "Carol's packet, counted");
    assert_eq!(initiations(&alice), sent_before, "no session was lost");

    // Traffic from Bob arrives as from his new position.
    peers[0].send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"still"), t);
    settle(&mut alice, &mut peers, t, |p| 1 - owner[p]);
    let from: Vec<PeerId> = alice[owner[0]]
        .host
        .delivered
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(from, vec![1]);
}

#[test]
fn reconfiguration_keeps_sessions_of_unchanged_peers() {
    let (mut a, mut b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    pump(&mut a, &mut b, S);
    // Alice adds Carol in front of Bob: Bob is now peer 1 and keeps his session.
    let keys = std::sync::Arc::new(StaticKeys::new(secret("alice")));
    let peers = vec![
        PeerConfig {
            name: "carol".into(),
            keys: PeerKeys::new(&keys, public("carol"), None),
            endpoint: None,
            allowed_ips: vec!["10.3.0.0/24".parse().unwrap()],
            persistent_keepalive_s: 0,
            compression: false,
        },
        PeerConfig {
            name: "bob".into(),
            keys: PeerKeys::new(&keys, public("bob"), None),
            endpoint: Some(b.addr),
            allowed_ips: vec!["10.2.0.0/24".parse().unwrap()],
            persistent_keepalive_s: 0,
            compression: false,
        },
    ];
    a.cfg = TunnelConfig::new(keys, 51820, 1420, TimerSettings::default(), 200, peers).unwrap();
    a.engine.reconfigure(&a.cfg);
    a.send_to(1, ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"2"), 2 * S);
    assert_eq!(a.host.sent[0].1.data()[0], 4, "data on the kept session");
    b.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"3"), 2 * S);
    pump(&mut a, &mut b, 2 * S);
    let from: Vec<PeerId> = a.host.delivered.iter().map(|(p, _)| *p).collect();
    assert_eq!(from, vec![1]);
}

#[test]
fn no_buffer_for_a_handshake_is_counted_not_fatal() {
    let (mut a, _) = pair(TimerSettings::default());
    a.host.no_buffers = true;
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"1"), S);
    assert_eq!(drops(&a, TunnelDrop::NoBuffer), 1);
    a.host.no_buffers = false;
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"2"), 2 * S);
    assert_eq!(events(&a, TunnelEvent::InitiationsSent), 1);
}

#[test]
fn timestamps_sort_in_time_order() {
    let early = tai64n(Duration::new(100, 999_999_999));
    let late = tai64n(Duration::new(101, 0));
    assert!(early < late);
    assert_eq!(
        &early[..8],
        &(0x4000_0000_0000_000a_u64 + 100).to_be_bytes()
    );
}

#[test]
fn compression_shrinks_what_it_can_and_a_peer_without_it_still_reads_it() {
    let (_, mut b) = pair(TimerSettings::default());
    let mut a = side(
        "alice",
        "192.0.2.1:51820",
        vec![PeerSpec {
            compression: true,
            ..peer_spec("bob", "192.0.2.2:51820", &["10.2.0.0/24"])
        }],
        TimerSettings::default(),
    );
    let text = b"SELECT * FROM orders WHERE region = 'us-east-1';\n".repeat(24);
    let noise = super::compress::tests::noise(1200);
    for payload in [&text[..], &noise[..]] {
        a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], payload), S);
        pump(&mut a, &mut b, S);
        assert_eq!(delivered_payloads(&mut b), vec![payload.to_vec()]);
    }
    let stats = a.engine.peer_stats(0, &a.cfg, S);
    let ratio = stats.compress_in_bytes as f64 / stats.compress_out_bytes as f64;
    assert!(ratio > 1.5, "{stats:?}");
    // The noise went uncompressed: it counts in and out alike.
    assert!(stats.compress_out_bytes > noise.len() as u64);
    // Bob does not compress toward Alice.
    b.send(ipv4([10, 2, 0, 9], [10, 1, 0, 5], &text), S);
    assert!(b.host.sent[0].1.len() > text.len());
    pump(&mut a, &mut b, S);
    assert_eq!(delivered_payloads(&mut a), vec![text.to_vec()]);
}

#[test]
fn the_clock_jumps_to_each_deadline_poll_timeout_names() {
    // Bob never answers: each retransmission is due exactly when
    // `poll_timeout` says (Rekey-Timeout plus the drawn jitter), nothing
    // fires a nanosecond before it, and after Rekey-Attempt-Time the
    // attempt is given up with the waiting packet counted.
    let (mut a, _b) = pair(TimerSettings::default());
    a.send(ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"lost"), 0);
    assert_eq!(a.host.sent.drain(..).count(), 1, "the first initiation");
    let mut now = 0;
    let mut initiations = 1;
    while let Some(deadline) = a.engine.poll_timeout() {
        assert!(deadline > now, "deadlines move forward");
        a.poll(deadline - 1, 16);
        assert!(a.host.sent.is_empty(), "nothing before {deadline}");
        a.poll(deadline, 16);
        now = deadline;
        initiations += a.host.sent.drain(..).count();
        if drops(&a, TunnelDrop::HandshakeTimeout) > 0 {
            break;
        }
    }
    let s = TimerSettings::default();
    assert_eq!(initiations, s.max_attempts() as usize);
    assert_eq!(drops(&a, TunnelDrop::HandshakeTimeout), 1);
    assert!(
        now >= s.rekey_timeout() * u64::from(s.max_attempts()),
        "given up after {now} ns"
    );
}
