//! BFD interop: our sans-IO session (`patronus_core::bfd`), driven over UDP
//! sockets in the root namespace, against FRR's `bfdd` (Debian's) in a
//! namespace of its own, single hop (RFC 5881) across a veth. The session
//! comes up with bfdd's three-way handshake and Poll/Final, follows bfdd's
//! administrative shutdown, and detects bfdd's death within the detection
//! time.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use patronus_core::bfd::packet::{ControlPacket, Diagnostic, State, MAX_LEN};
use patronus_core::bfd::session::{Session, StateChange, Timers};

const BFDD: &str = "/usr/lib/frr/bfdd";
const OURS: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 1);
const THEIRS: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 2);
const OUR_DISCRIMINATOR: u32 = 0x5a5a_0001;

/// Our side: a session on its own thread, its state changes sent back with
/// the instant they happened.
struct Driver {
    changes: mpsc::Receiver<(StateChange, Instant)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    fn start(timers: Timers) -> Driver {
        // RFC 5881: packets go to port 3784 from a port in 49152-65535,
        // with a TTL of 255.
        let rx = UdpSocket::bind((OURS, 3784)).expect("bind 3784");
        let tx = UdpSocket::bind((OURS, 49_152)).expect("bind 49152");
        tx.set_ttl(255).unwrap();
        tx.connect((THEIRS, 3784)).unwrap();
        let (send, changes) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let now = || start.elapsed().as_nanos() as u64;
            let mut session = Session::new(timers, OUR_DISCRIMINATOR, 0x1234_5678, now());
            let mut buf = [0u8; 128];
            let mut out = [0u8; MAX_LEN];
            while !stopping.load(Ordering::Relaxed) {
                let t = now();
                session.handle_timeout(t);
                while let Some(p) = session.poll_transmit(t) {
                    let len = p.encode(&mut out).unwrap();
                    let _ = tx.send(&out[..len]);
                }
                while let Some(c) = session.poll_change() {
                    let at = start + Duration::from_nanos(c.at_ns);
                    let _ = send.send((c, at));
                }
                let wait = session
                    .poll_timeout()
                    .saturating_sub(now())
                    .clamp(100_000, 20_000_000);
                rx.set_read_timeout(Some(Duration::from_nanos(wait)))
                    .unwrap();
                if let Ok((n, from)) = rx.recv_from(&mut buf) {
                    let expected: SocketAddr = (THEIRS, from.port()).into();
                    if from == expected {
                        if let Ok(p) = ControlPacket::parse(&buf[..n]) {
                            let _ = session.handle_packet(&p, now());
                        }
                    }
                }
            }
        });
        Driver {
            changes,
            stop,
            thread: Some(thread),
        }
    }

    /// The next change to `to` within `timeout`, skipping others.
    fn wait_for(&self, to: State, timeout: Duration) -> Option<(StateChange, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.changes.recv_timeout(left) {
                Ok((c, at)) if c.to == to => return Some((c, at)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// bfdd in `ns`, killed on drop.
struct Bfdd {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    ns: String,
}

impl Bfdd {
    fn start(ns: &Netns, id: &str) -> Bfdd {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("patronus-bfdd-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        // bfdd drops to the frr user, which must reach its sockets.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.join("bfdd.conf");
        std::fs::write(
            &conf,
            format!(
                "bfd\n peer {OURS} local-address {THEIRS}\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let child = ns.spawn(&[
            BFDD,
            "-f",
            &path("bfdd.conf"),
            "-i",
            &path("bfdd.pid"),
            "--vty_socket",
            dir.to_str().unwrap(),
            "-z",
            &path("zserv.api"),
            "--bfdctl",
            &path("bfdd.sock"),
            "--log",
            &format!("file:{}", path("bfdd.log")),
        ]);
        let b = Bfdd {
            child: Some(child),
            dir,
            ns: ns.name.clone(),
        };
        assert!(
            eventually(Duration::from_secs(10), || b.dir.join("bfdd.vty").exists()),
            "bfdd did not start"
        );
        b
    }

    fn vtysh(&self, commands: &[&str]) -> String {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &self.ns,
            "vtysh",
            "--vty_socket",
            self.dir.to_str().unwrap(),
        ];
        for c in commands {
            args.extend(["-c", c]);
        }
        must(&args)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bfdd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_session_comes_up_with_frr_bfdd_follows_its_shutdown_and_detects_its_death() {
    if need_root() {
        return;
    }
    if !std::path::Path::new(BFDD).exists() {
        panic!("{BFDD} is missing: scripts/setup.sh installs Debian's frr");
    }
    let id = unique_id();
    let ns = Netns::new(format!("pbf{id}"));
    let link = Link::new(format!("pbo{id}"), format!("pbt{id}"), &ns);
    must(&[
        "ip",
        "addr",
        "add",
        &format!("{OURS}/30"),
        "dev",
        &link.gw_side,
    ]);
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{THEIRS}/30"),
        "dev",
        &link.host_side,
    ]);
    ns.exec(&["ip", "link", "set", &link.host_side, "up"]);
    let mut bfdd = Bfdd::start(&ns, &id);
    let timers = Timers {
        desired_min_tx_us: 100_000,
        required_min_rx_us: 100_000,
        detect_mult: 3,
    };
    let driver = Driver::start(timers);

    // Up, on both sides: whichever heard the other's Down first went
    // through Init.
    driver
        .wait_for(State::Up, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("never up:\n{}", bfdd.vtysh(&["show bfd peers"])));
    let peer_up = || bfdd.vtysh(&["show bfd peers"]);
    assert!(
        eventually(Duration::from_secs(5), || peer_up().contains("Status: up")),
        "{}",
        peer_up()
    );
    let shown = peer_up();
    assert!(
        shown.contains(&format!("Remote ID: {OUR_DISCRIMINATOR}")),
        "bfdd knows our discriminator:\n{shown}"
    );
    // It took our timers once we were up (our 1 s of bring-up, then 100 ms
    // announced with a Poll and acknowledged with a Final).
    let remote = shown.split("Remote timers:").nth(1).unwrap_or_default();
    let got_ours = || {
        let shown = peer_up();
        let remote = shown
            .split("Remote timers:")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        remote.contains("Receive interval: 100ms")
            && remote.contains("Transmission interval: 100ms")
    };
    assert!(eventually(Duration::from_secs(5), got_ours), "{remote}");

    // bfdd shut down by its operator: AdminDown, which takes us down with
    // the neighbor's reason; back up when it is lifted.
    let peer = format!("peer {OURS} local-address {THEIRS}");
    bfdd.vtysh(&["configure terminal", "bfd", &peer, "shutdown"]);
    let (down, _) = driver
        .wait_for(State::Down, Duration::from_secs(5))
        .expect("down after the neighbor's shutdown");
    assert_eq!(down.diag, Diagnostic::NEIGHBOR_DOWN);
    bfdd.vtysh(&["configure terminal", "bfd", &peer, "no shutdown"]);
    driver
        .wait_for(State::Up, Duration::from_secs(10))
        .expect("up again");

    // bfdd dies without a word: detected after 3 × 100 ms of silence.
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    bfdd.kill();
    let (down, at) = driver
        .wait_for(State::Down, Duration::from_secs(5))
        .expect("the silence is detected");
    assert_eq!(down.diag, Diagnostic::TIME_EXPIRED);
    let detection = at.duration_since(killed);
    println!("bfdd killed: down after {detection:?} (3 × 100 ms configured)");
    assert!(
        detection <= Duration::from_millis(1_000),
        "detected after {detection:?}"
    );
}
