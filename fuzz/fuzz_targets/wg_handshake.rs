//! Fuzzes the tunnel engine's state machine: a real peer (Alice) and the
//! engine under test (Bob) exchange handshakes and data while the input
//! decides what the network does to each datagram (deliver, drop, repeat,
//! corrupt a byte, deliver later), injects datagrams of its own, and moves
//! the clock.
//!
//! Checks that nothing panics and that Bob only ever delivers packets Alice
//! really sent.
//!
//! `cargo +nightly fuzz run wg_handshake corpus/wg_handshake`

#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use patronus_core::frame::{Frame, VecFrame};
use patronus_core::tunnel::memory::MemoryIo;
use patronus_core::tunnel::noise::{PeerKeys, StaticKeys};
use patronus_core::tunnel::timers::TimerSettings;
use patronus_core::tunnel::{PeerConfig, TunnelConfig, Tunnels};

fn config(me: u8, peer: u8, allowed: &str, compression: bool) -> TunnelConfig {
    let keys = Arc::new(StaticKeys::new([me; 32]));
    let public = *StaticKeys::new([peer; 32]).public();
    let peers = vec![PeerConfig {
        name: "peer".into(),
        keys: PeerKeys::new(&keys, public, None),
        endpoint: Some("192.0.2.9:51820".parse().unwrap()),
        allowed_ips: vec![allowed.parse().unwrap()],
        persistent_keepalive_s: 0,
        compression,
    }];
    let timers = TimerSettings {
        rekey_after_time_s: 2,
        reject_after_time_s: 4,
        ..TimerSettings::default()
    };
    TunnelConfig::new(keys, 51820, 1420, timers, 50, peers).unwrap()
}

fn packet(n: u16) -> VecFrame {
    let mut p = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 5, 10, 2, 0, 9,
    ];
    p.extend_from_slice(&n.to_be_bytes());
    p.extend(std::iter::repeat_n(b'x', usize::from(n % 200)));
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    VecFrame::new(&p)
}

/// `engine` takes a datagram; `host` keeps what comes of it.
fn receive(
    engine: &mut Tunnels<VecFrame>,
    cfg: &TunnelConfig,
    from: SocketAddr,
    frame: VecFrame,
    now: u64,
    host: &mut MemoryIo,
) {
    let outcome = engine.receive(cfg, from, frame, now, host);
    host.record(outcome, engine);
}

/// `engine` takes an inner packet for peer 0; `host` keeps what comes of it.
fn send(
    engine: &mut Tunnels<VecFrame>,
    cfg: &TunnelConfig,
    peer: u32,
    frame: VecFrame,
    now: u64,
    host: &mut MemoryIo,
) {
    let outcome = engine.send(cfg, peer, frame, now, host);
    host.record(outcome, engine);
}

/// `engine` runs its due timers; `host` keeps what they send.
fn timeouts(
    engine: &mut Tunnels<VecFrame>,
    cfg: &TunnelConfig,
    now: u64,
    budget: usize,
    host: &mut MemoryIo,
) {
    engine.handle_timeouts(cfg, now, budget, host);
    while let Some((_, to, frame)) = engine.poll_transmit() {
        host.sent.push((to, frame));
    }
}

fuzz_target!(|data: &[u8]| {
    let a_cfg = config(
        1,
        2,
        "10.2.0.0/24",
        data.first().is_some_and(|b| b & 1 == 1),
    );
    let b_cfg = config(2, 1, "10.1.0.0/24", false);
    let mut alice = Tunnels::<VecFrame>::new(0, 1, &a_cfg, [1; 16]);
    let mut bob = Tunnels::<VecFrame>::new(0, 1, &b_cfg, [2; 16]);
    let (mut ha, mut hb) = (MemoryIo::seeded(1), MemoryIo::seeded(2));
    let from_alice: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let from_bob: SocketAddr = "192.0.2.9:51820".parse().unwrap();
    let mut sent_payloads = HashSet::new();
    let mut delayed: Vec<VecFrame> = Vec::new();
    let mut now = 1_000_000_000u64;
    let mut n = 0u16;

    let mut input = data.iter().skip(1).copied();
    while let Some(op) = input.next() {
        let arg = input.next().unwrap_or(0);
        match op % 8 {
            0 => {
                n = n.wrapping_add(1);
                sent_payloads.insert(packet(n).data().to_vec());
                send(&mut alice, &a_cfg, 0, packet(n), now, &mut ha);
            }
            1 => now += u64::from(arg) * 50_000_000,
            2 => {
                ha.now_ns = now;
                hb.now_ns = now;
                timeouts(&mut alice, &a_cfg, now, 4, &mut ha);
                timeouts(&mut bob, &b_cfg, now, 4, &mut hb);
            }
            // What the network does to Alice's oldest datagram in flight.
            3..=6 if !ha.sent.is_empty() => {
                let mut frame = ha.sent.remove(0).1;
                match op % 8 {
                    3 => receive(&mut bob, &b_cfg, from_alice, frame, now, &mut hb),
                    4 => {
                        receive(&mut bob, &b_cfg, from_alice, frame.clone(), now, &mut hb);
                        delayed.push(frame);
                    }
                    5 => {
                        let len = frame.len();
                        if len > 0 {
                            frame.data_mut()[usize::from(arg) % len] ^= 1 << (arg % 8);
                        }
                        receive(&mut bob, &b_cfg, from_alice, frame, now, &mut hb);
                    }
                    _ => drop(frame),
                }
            }
            // A datagram of the input's own making, to Bob.
            7 => {
                let len = usize::from(arg);
                let bytes: Vec<u8> = input.by_ref().take(len).collect();
                receive(
                    &mut bob,
                    &b_cfg,
                    from_alice,
                    VecFrame::new(&bytes),
                    now,
                    &mut hb,
                );
            }
            _ => {
                if let Some(frame) = delayed.pop() {
                    receive(&mut bob, &b_cfg, from_alice, frame, now, &mut hb);
                }
            }
        }
        // Bob's answers always reach Alice.
        for (_, frame) in hb.sent.drain(..) {
            receive(&mut alice, &a_cfg, from_bob, frame, now, &mut ha);
        }
        assert!(
            ha.handoffs.is_empty() && hb.handoffs.is_empty(),
            "one worker owns every peer"
        );
        for (_, got) in hb.delivered.drain(..) {
            assert!(
                sent_payloads.contains(got.data()),
                "Bob delivered a packet Alice never sent"
            );
        }
        ha.delivered.clear();
    }
});
