//! Drives arbitrary frames through the whole pipeline (parse, admit, the
//! tunnel engine for datagrams to the listen port, local answers built in
//! place, flow table, DPI, route, ICMP errors, encryption toward the
//! tunnel's peer, neighbour rewrite) and checks that it never panics, that
//! every packet ends sent, held for a next hop or gone, and that every
//! frame it sends is a frame the parser accepts. The first byte also picks
//! the tunnel port as the ingress, as for a decrypted packet.
//!
//! Run from the `fuzz/` directory: `cargo +nightly fuzz run gateway_frame`

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use patronus_core::config::{Config, Snapshot};
use patronus_core::frame::{Frame, VecFrame};
use patronus_core::neighbor::{NeighborEvent, NeighborManager, NeighborShared, NeighborSnapshot};
use patronus_core::packet::parse::parse;
use patronus_core::pipeline::{Burst, Context, Next, Pipeline, PipelineSetup};
use patronus_core::tunnel::memory::MemoryIo;
use patronus_core::worker::tunnel_inboxes;

const CONFIG: &str = r#"
[worker]
flow_capacity = 4096
# A fresh gateway per input: keep the reassembly pool small.
[dpi]
reassembly_buffers = 8
[icmp]
errors_per_s = 1000000
errors_burst = 1000000
[[port]]
name = "lan"
device = "fuzz0"
addresses = ["10.0.1.1/24", "fd00:1::1/64"]
[[port]]
name = "wan"
device = "fuzz1"
mtu = 1280
addresses = ["10.0.2.1/24", "fd00:2::1/64"]
[[route]]
prefix = "0.0.0.0/0"
via = "10.0.2.254"
[[route]]
prefix = "::/0"
via = "fd00:2::fe"
[tunnel]
private_key_file = "KEY_FILE"
addresses = ["10.99.0.1/24"]
[[peer]]
name = "branch"
endpoint = { address = "10.0.2.50", port = 51820 }
wireguard = { public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }
allowed_ips = ["10.9.0.0/24", "fd09::/64", "10.99.0.2/32"]
"#;

/// A private key file the data plane accepts (mode 600), made once.
fn key_file() -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("patronus-fuzz-{}.key", std::process::id()));
    std::fs::write(&path, "GMGMLRrCbuOA8HHVPuH6Ui3L2dMmoi6bPYs9C/GTZ2k=").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

struct World {
    cfg: Snapshot,
    neighbors: Arc<NeighborSnapshot>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let text = CONFIG.replace("KEY_FILE", &key_file());
        let mut cfg = Config::from_toml(&text).unwrap().validate(1).unwrap();
        cfg.set_port_macs(&[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
        let (tx, rx) = crossbeam_channel::bounded(4);
        let shared = Arc::new(NeighborShared::default());
        let mut manager = NeighborManager::new(cfg.neighbors.clone(), shared.clone(), rx);
        for (ip, mac) in [("10.0.2.254", 0xfe), ("fd00:2::fe", 0xfe)] {
            let ev = NeighborEvent {
                port: 1,
                ip: ip.parse().unwrap(),
                mac: [2, 9, 9, 9, 9, mac],
                now_ns: 0,
                create: true,
            };
            tx.send(ev).unwrap();
        }
        manager.tick(0);
        World {
            cfg,
            neighbors: shared.load(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() || data.len() > 2048 {
        return;
    }
    let w = world();
    let (events, _rx) = crossbeam_channel::bounded(16);
    let mut pipeline = Pipeline::new(
        &w.cfg,
        PipelineSetup {
            worker: 0,
            inboxes: tunnel_inboxes(1),
            shared_uplinks: std::sync::Arc::default(),
            announcements: patronus_core::dpi::Announcements::new(1),
            events,
            seed: 1,
            now_ns: 0,
        },
    );
    let mut burst = Burst::<VecFrame>::boxed();
    let mut env = MemoryIo::seeded(1);
    // The first byte picks the ingress port; the rest is the frame, sent
    // twice so that the second pass meets a cached forwarding decision.
    let tunnel = w.cfg.tunnel_port().expect("the fuzz world has a tunnel");
    let in_port = match data[0] % 3 {
        2 => tunnel,
        p => u16::from(p),
    };
    for round in 0..2u64 {
        burst
            .push_received(in_port, VecFrame::new(&data[1..]))
            .expect("an empty burst has room");
        let ctx = Context {
            cfg: &w.cfg,
            neighbors: &w.neighbors,
            fwd_generation: 1,
            now_ns: round * 1_000_000_000,
        };
        env.now_ns = ctx.now_ns;
        pipeline.run(&ctx, &mut burst, &mut env);
        burst.drain(|next, _, frame| match next {
            // Out of a device: a frame the parser accepts (the tunnel port
            // is never transmitted on; its packets leave encrypted).
            Next::Transmit(port) => {
                assert!(port < tunnel, "transmitted on port {port}");
                assert!(
                    parse(frame.data()).is_ok(),
                    "sent a frame the parser rejects: {:02x?}",
                    frame.data()
                );
            }
            Next::Resolve { port, .. } => assert!(port < tunnel),
            other => panic!("left at {other:?}"),
        });
    }
});
