//! BFD interop: our sans-IO session (`patronus_core::bfd`), driven over UDP
//! sockets in the root namespace, against FRR's `bfdd` (Debian's) in a
//! namespace of its own, single hop (RFC 5881) across a veth. The session
//! comes up with bfdd's three-way handshake and Poll/Final, follows bfdd's
//! administrative shutdown, detects bfdd's death within the detection
//! time, and stays up while either side changes its timers.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::bfdd::{Bfdd, BFDD};
use common::*;
use patronus_core::bfd::packet::{ControlPacket, Diagnostic, State, MAX_LEN};
use patronus_core::bfd::session::{Session, StateChange, Timers};

const OURS: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 1);
const THEIRS: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 2);
const OUR_DISCRIMINATOR: u32 = 0x5a5a_0001;

/// What our side saw.
enum Event {
    /// Our session changed state; `last_heard` is when bfdd's last packet
    /// before it arrived.
    Changed {
        change: StateChange,
        at: Instant,
        last_heard: Instant,
    },
    /// bfdd, up before, said it is down; `last_sent` is our last packet
    /// before that.
    RemoteDown { at: Instant, last_sent: Instant },
}

/// Our side: a session on its own thread, what it sees sent back with the
/// instant it happened. Muted, it sends nothing.
struct Driver {
    events: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
    /// New timers for our session, applied on its thread.
    timers: mpsc::Sender<Timers>,
    /// Our session's detection time as it last computed it, ns.
    detection_ns: Arc<AtomicU64>,
    /// bfdd's packets our session has taken.
    heard: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    fn start(timers: Timers) -> Driver {
        // RFC 5881: packets go to port 3784 from a port in 49152-65535,
        // with a TTL of 255.
        let rx = UdpSocket::bind((OURS, 3784)).expect("bind 3784");
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind((OURS, 49_152)).expect("bind 49152");
        tx.set_ttl(255).unwrap();
        tx.connect((THEIRS, 3784)).unwrap();
        let (send, events) = mpsc::channel();
        let (set_timers, new_timers) = mpsc::channel::<Timers>();
        let stop = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let detection_ns = Arc::new(AtomicU64::new(0));
        let heard = Arc::new(AtomicU64::new(0));
        let (stopping, muted, detection, heard_count) = (
            stop.clone(),
            mute.clone(),
            detection_ns.clone(),
            heard.clone(),
        );
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let now = || start.elapsed().as_nanos() as u64;
            let mut session = Session::new(timers, OUR_DISCRIMINATOR, 0x1234_5678, now());
            let mut buf = [0u8; 128];
            let mut out = [0u8; MAX_LEN];
            let (mut last_sent, mut last_heard) = (Instant::now(), Instant::now());
            let mut remote_was_up = false;
            while !stopping.load(Ordering::Relaxed) {
                let t = now();
                while let Ok(timers) = new_timers.try_recv() {
                    session.set_timers(timers, t);
                }
                session.handle_timeout(t);
                detection.store(session.detection_time_ns(), Ordering::Relaxed);
                while let Some(p) = session.poll_transmit(t) {
                    if !muted.load(Ordering::Relaxed) {
                        let len = p.encode(&mut out).unwrap();
                        let _ = tx.send(&out[..len]);
                        last_sent = Instant::now();
                    }
                }
                while let Some(change) = session.poll_change() {
                    let at = start + Duration::from_nanos(change.at_ns);
                    let _ = send.send(Event::Changed {
                        change,
                        at,
                        last_heard,
                    });
                }
                // A socket read timeout is rounded up to the kernel's tick
                // (milliseconds), which would make our detection late by as
                // much: poll instead, sleeping half a millisecond at most.
                let Ok((n, from)) = rx.recv_from(&mut buf) else {
                    let wait = session.poll_timeout().saturating_sub(now()).min(500_000);
                    std::thread::sleep(Duration::from_nanos(wait));
                    continue;
                };
                let expected: SocketAddr = (THEIRS, from.port()).into();
                let Some(p) = (from == expected)
                    .then(|| ControlPacket::parse(&buf[..n]).ok())
                    .flatten()
                else {
                    continue;
                };
                let heard = Instant::now();
                if remote_was_up && p.state == State::Down {
                    let _ = send.send(Event::RemoteDown {
                        at: heard,
                        last_sent,
                    });
                }
                remote_was_up = p.state == State::Up;
                last_heard = heard;
                heard_count.fetch_add(1, Ordering::Relaxed);
                let _ = session.handle_packet(&p, now());
            }
        });
        Driver {
            events,
            stop,
            mute,
            timers: set_timers,
            detection_ns,
            heard,
            thread: Some(thread),
        }
    }

    /// Gives our running session new timers (a Poll sequence tells bfdd).
    fn set_timers(&self, timers: Timers) {
        self.timers.send(timers).expect("the driver runs");
    }

    /// bfdd's packets our session has taken so far.
    fn heard(&self) -> u64 {
        self.heard.load(Ordering::Relaxed)
    }

    /// Our session's detection time now.
    fn detection_time(&self) -> Duration {
        Duration::from_nanos(self.detection_ns.load(Ordering::Relaxed))
    }

    /// Every state change of our session since the last call (the session
    /// is expected to have stayed as it was).
    fn changes(&self) -> Vec<StateChange> {
        self.events
            .try_iter()
            .filter_map(|e| match e {
                Event::Changed { change, .. } => Some(change),
                Event::RemoteDown { .. } => None,
            })
            .collect()
    }

    /// The next change of our session to `to` within `timeout`, skipping
    /// other events: the change, when, and when bfdd was last heard.
    fn wait_for(&self, to: State, timeout: Duration) -> Option<(StateChange, Instant, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(Event::Changed {
                    change,
                    at,
                    last_heard,
                }) if change.to == to => return Some((change, at, last_heard)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// bfdd's next declaration that it is down, within `timeout`: when, and
    /// when we last sent before it.
    fn wait_for_remote_down(&self, timeout: Duration) -> Option<(Instant, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(Event::RemoteDown { at, last_sent }) => return Some((at, last_sent)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Once up: waits until the session has stayed up with no change for
    /// half a second (the bring-up's Poll/Final done, nothing flapping).
    fn settle_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut up = true;
        loop {
            assert!(Instant::now() < deadline, "the session never settled up");
            match self.events.recv_timeout(Duration::from_millis(500)) {
                Ok(Event::Changed { change, .. }) => up = change.to == State::Up,
                Ok(Event::RemoteDown { .. }) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if up => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the driver stopped"),
            }
        }
    }

    fn set_muted(&self, muted: bool) {
        self.mute.store(muted, Ordering::Relaxed);
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

/// bfdd's configuration: peered with us at `interval_ms` × 3 both ways.
fn peer_conf(interval_ms: u32) -> String {
    format!(
        "bfd\n peer {OURS} local-address {THEIRS}\n  receive-interval {interval_ms}\n  \
         transmit-interval {interval_ms}\n  detect-multiplier 3\n !\n!\n"
    )
}

/// A namespace for bfdd and a veth to it: our address in the root
/// namespace, bfdd's inside.
fn topology() -> (String, Netns, Link) {
    assert!(
        std::path::Path::new(BFDD).exists(),
        "{BFDD} is missing: scripts/setup.sh installs Debian's frr"
    );
    let id = unique_id();
    let ns = Netns::new(format!("pbf{id}"));
    let link = Link::new(format!("pbo{id}"), format!("pbt{id}"), &ns);
    let ours = format!("{OURS}/30");
    must(&["ip", "addr", "add", &ours, "dev", &link.gw_side]);
    let theirs = format!("{THEIRS}/30");
    ns.exec(&["ip", "addr", "add", &theirs, "dev", &link.host_side]);
    ns.exec(&["ip", "link", "set", &link.host_side, "up"]);
    (id, ns, link)
}

/// bfdd and our session, both at 100 ms × 3, once ours is up; what keeps
/// the namespace and the link comes first, so that it is dropped last.
fn up_with_bfdd_at_100_ms() -> (Netns, Link, Bfdd, Driver) {
    let (id, ns, link) = topology();
    let bfdd = Bfdd::start(&ns, &id, &peer_conf(100));
    let driver = Driver::start(Timers {
        desired_min_tx_us: 100_000,
        required_min_rx_us: 100_000,
        detect_mult: 3,
    });
    let started = std::time::SystemTime::now();
    driver
        .wait_for(State::Up, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("never up:\n{}", bfdd.vtysh(&["show bfd peers"])));
    driver.settle_up();
    // Up at once, without bfdd timing us out while it leaves its bring-up
    // second (our next packet must follow the rate it then asks for).
    let flapped = bfdd.state_change_after(&OURS.to_string(), ("up", "down"), started);
    assert_eq!(flapped, None, "{}", bfdd.log());
    (ns, link, bfdd, driver)
}

#[test]
fn a_session_comes_up_with_frr_bfdd_follows_its_shutdown_and_detects_its_death() {
    require_root();
    // Up, on both sides: whichever heard the other's Down first went
    // through Init.
    let (_ns, _link, mut bfdd, driver) = up_with_bfdd_at_100_ms();
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
    let (down, ..) = driver
        .wait_for(State::Down, Duration::from_secs(5))
        .expect("down after the neighbor's shutdown");
    assert_eq!(down.diag, Diagnostic::NEIGHBOR_DOWN);
    bfdd.vtysh(&["configure terminal", "bfd", &peer, "no shutdown"]);
    driver
        .wait_for(State::Up, Duration::from_secs(10))
        .expect("up again");

    // bfdd dies without a word: detected after 3 × 100 ms of silence.
    driver.settle_up();
    let killed = Instant::now();
    bfdd.kill();
    let (down, at, _) = driver
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

/// RFC 5880 §6.8.3: timers change while Up by a Poll sequence, on either
/// side, and the session never leaves Up.
#[test]
fn timers_changed_at_run_time_on_either_side_keep_the_session_up() {
    require_root();
    let (_ns, _link, bfdd, driver) = up_with_bfdd_at_100_ms();
    driver.settle_up();
    // bfdd's count of its session going down, from its counters.
    let downs = || {
        let counters = bfdd.vtysh(&["show bfd peers counters"]);
        counters
            .split("Session down events:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no down count in:\n{counters}"))
    };
    let downs_before = downs();
    let peer = format!("peer {OURS} local-address {THEIRS}");
    let shown = || bfdd.vtysh(&["show bfd peers"]);
    let remote_timers = || {
        shown()
            .split("Remote timers:")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        eventually(Duration::from_secs(5), || driver.detection_time()
            == Duration::from_millis(300)),
        "3 × 100 ms before any change: {:?}",
        driver.detection_time()
    );

    // bfdd slows its transmission to 300 ms: our detection time follows
    // (its multiplier × its interval), announced by its Poll.
    bfdd.vtysh(&["configure terminal", "bfd", &peer, "transmit-interval 300"]);
    assert!(
        eventually(Duration::from_secs(5), || driver.detection_time()
            == Duration::from_millis(900)),
        "after bfdd's change: {:?}\n{}",
        driver.detection_time(),
        shown()
    );

    // We ask for 50 ms both ways: bfdd shows our new timers.
    driver.set_timers(Timers {
        desired_min_tx_us: 50_000,
        required_min_rx_us: 50_000,
        detect_mult: 3,
    });
    assert!(
        eventually(Duration::from_secs(5), || {
            let remote = remote_timers();
            remote.contains("Receive interval: 50ms")
                && remote.contains("Transmission interval: 50ms")
        }),
        "bfdd never took our timers:\n{}",
        shown()
    );
    // And bfdd back to 100 ms: our detection follows again.
    bfdd.vtysh(&["configure terminal", "bfd", &peer, "transmit-interval 100"]);
    assert!(
        eventually(Duration::from_secs(5), || driver.detection_time()
            == Duration::from_millis(300)),
        "after bfdd's second change: {:?}",
        driver.detection_time()
    );
    // Ten more packets from bfdd (over three detection times at 100 ms),
    // and neither side has left Up.
    let heard = driver.heard();
    assert!(
        eventually(Duration::from_secs(5), || driver.heard() >= heard + 10),
        "bfdd went quiet"
    );
    assert_eq!(driver.changes(), Vec::new(), "our session changed state");
    let now = shown();
    assert!(now.contains("Status: up"), "{now}");
    assert_eq!(downs(), downs_before, "bfdd saw the session go down");
}

#[test]
#[ignore = "a benchmark: scripts/bench/bfd.sh runs it"]
fn detection_against_frr_bfdd_at_10_50_and_300_ms() {
    require_root();
    let runs: usize = std::env::var("BFD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let intervals: Vec<u32> = std::env::var("BFD_MS")
        .unwrap_or_else(|_| "10 50 300".into())
        .split_whitespace()
        .map(|v| v.parse().expect("BFD_MS: intervals in ms"))
        .collect();
    let (id, ns, _link) = topology();
    println!(
        "| detector | configured | after the last packet heard, ms: min / median / max | runs |"
    );
    println!("|---|---|---|---|");
    for interval_ms in intervals {
        let driver = Driver::start(Timers {
            desired_min_tx_us: interval_ms * 1_000,
            required_min_rx_us: interval_ms * 1_000,
            detect_mult: 3,
        });
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let mut bfdd = Bfdd::start(
                &ns,
                &format!("{id}-{interval_ms}-{run}"),
                &peer_conf(interval_ms),
            );
            driver
                .wait_for(State::Up, Duration::from_secs(10))
                .expect("up");
            driver.settle_up();
            // We fall silent: bfdd's detection, from our last packet to its Down.
            driver.set_muted(true);
            let (at, last_sent) = driver
                .wait_for_remote_down(Duration::from_secs(5))
                .expect("bfdd detects our silence");
            theirs.push(at.duration_since(last_sent));
            driver.set_muted(false);
            driver
                .wait_for(State::Up, Duration::from_secs(10))
                .expect("up again");
            driver.settle_up();
            // bfdd dies: ours, from its last packet to our Down.
            bfdd.kill();
            let (down, at, last_heard) = driver
                .wait_for(State::Down, Duration::from_secs(5))
                .expect("we detect bfdd's death");
            assert_eq!(down.diag, Diagnostic::TIME_EXPIRED);
            ours.push(at.duration_since(last_heard));
        }
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        for (who, mut v) in [("patronus (bfd::session)", ours), ("FRR bfdd 8.4", theirs)] {
            v.sort();
            println!(
                "| {who} | {interval_ms} ms × 3 = {} ms | {:.1} / {:.1} / {:.1} | {} |",
                3 * interval_ms,
                ms(&v[0]),
                ms(&v[v.len() / 2]),
                ms(&v[v.len() - 1]),
                v.len()
            );
        }
    }
}
