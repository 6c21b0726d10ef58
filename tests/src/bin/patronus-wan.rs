//! `patronus-wan`: a seeded WAN impairment bridge for tests and demos, for
//! kernels without netem.
//!
//! It joins two interfaces of one network namespace at layer 2 and forwards
//! every Ethernet frame from one to the other, applying per direction a
//! delay, jitter, independent and bursty (Gilbert–Elliott) loss, a rate limit
//! with a tail-dropping queue, or a blackhole, all changeable while it runs.
//! The model is [`patronus_e2e::impair`]; `docs/wan-impairment.md` has more.
//!
//! ```text
//! patronus-wan --a IFACE --b IFACE [--seed N] [--control PATH] [--timeline FILE]
//!              [--a-to-b SETTINGS] [--b-to-a SETTINGS] [--both SETTINGS]
//! ```
//!
//! Run it inside the namespace holding both interfaces (which must be up,
//! with offloads off so frames are no larger than the MTU). `a2b` is what
//! arrives on `--a` and leaves on `--b`. The settings options apply in the
//! order given, e.g. `--both delay=20ms --a-to-b loss=1%`. SETTINGS are
//! words such as `delay=10ms jitter=2ms loss=1% burst=p:1%,r:20%,loss:50%
//! rate=2mbit queue=64kb blackhole=on|off clear`.
//!
//! The control socket (`--control PATH`, a Unix stream socket) takes one
//! command per line and answers each with one line:
//!
//! - `set a2b|b2a|both SETTINGS` → `ok` or `error: ...`; frames arriving
//!   after it get the new settings;
//! - `stats` → `a2b.offered=… a2b.delivered=… … b2a.offered=… …`;
//! - `quit` → `ok`, then the tool stops as on SIGTERM.
//!
//! The timeline file (`--timeline FILE`) holds lines `AT_SECONDS set
//! DIRECTION SETTINGS`, e.g. `5.0 set both blackhole=on`, and `#` comments;
//! each applies that many seconds after start.
//!
//! On SIGTERM or SIGINT it prints the final counters to stderr and exits 0.
//! Bad arguments exit 2, failures while running 1.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patronus_e2e::impair::{parse_timeline, Command, Directions, Impairment, Link, Verdict};
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};
use signal_hook::consts::{SIGINT, SIGTERM};
use socket2::{Domain, SockFilter, Socket, Type};

const USAGE: &str = "usage: patronus-wan --a IFACE --b IFACE [--seed N] [--control PATH] \
[--timeline FILE] [--a-to-b SETTINGS] [--b-to-a SETTINGS] [--both SETTINGS]";

/// Longest a thread blocks, in a read, a send or a wait for the next
/// frame, before it looks at the stop flag again.
const TICK: Duration = Duration::from_millis(20);
/// Frames held per direction, bounding memory when a long delay meets a
/// fast sender (the rate limiter's queue is the one to use for realism).
const MAX_HELD: usize = 65_536;
/// Large enough for any frame an interface with offloads off can receive.
const FRAME_BUFFER: usize = 65_536;
/// Makes B→A draw other numbers than A→B from the same seed.
const B_TO_A_SALT: u64 = 0xd1b5_4a32_d192_ed03;

/// A classic BPF program that drops the frames leaving the interface (those
/// this tool or the namespace's own stack send there, which an AF_PACKET
/// socket sees too) and accepts all others. The kernel has to tell them
/// apart: the receiving half hands out frames without their packet type.
const DROP_OUTGOING: [SockFilter; 4] = [
    // A = the packet type (BPF_LD | BPF_B | BPF_ABS), an ancillary field
    // read at SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE (4).
    SockFilter::new(0x30, 0, 0, (-0x1000i32 + 4) as u32),
    // A == PACKET_OUTGOING (4)? (BPF_JMP | BPF_JEQ | BPF_K)
    SockFilter::new(0x15, 0, 1, 4),
    // Yes: keep 0 bytes, that is, drop it (BPF_RET | BPF_K).
    SockFilter::new(0x06, 0, 0, 0),
    // No: keep up to 256 KiB, more than any frame the receive buffer takes,
    // so that `truncated` still counts frames over it.
    SockFilter::new(0x06, 0, 0, 0x40000),
];

/// A frame delivered by the model, with its departure time in nanoseconds
/// since start.
type Held = (u64, Vec<u8>);

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("patronus-wan: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patronus-wan: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct Options {
    a: String,
    b: String,
    seed: u64,
    control: Option<PathBuf>,
    timeline: Option<PathBuf>,
    /// Settings options in command-line order.
    settings: Vec<(Directions, String)>,
}

impl Options {
    /// `None` when help was asked for.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
        let (mut a, mut b, mut seed) = (None, None, 1);
        let (mut control, mut timeline, mut settings) = (None, None, Vec::new());
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--a" => a = Some(value),
                "--b" => b = Some(value),
                "--seed" => {
                    seed = value
                        .parse()
                        .map_err(|_| format!("--seed {value:?} is not an unsigned integer"))?
                }
                "--control" => control = Some(PathBuf::from(value)),
                "--timeline" => timeline = Some(PathBuf::from(value)),
                "--a-to-b" | "--b-to-a" | "--both" => {
                    let dirs = match flag.as_str() {
                        "--a-to-b" => Directions::AToB,
                        "--b-to-a" => Directions::BToA,
                        _ => Directions::Both,
                    };
                    Impairment::default()
                        .apply(&value)
                        .map_err(|e| format!("{flag}: {e}"))?;
                    settings.push((dirs, value));
                }
                _ => return Err(format!("unknown option {flag:?}")),
            }
        }
        let a = a.ok_or("--a is required")?;
        let b = b.ok_or("--b is required")?;
        if a == b {
            return Err("--a and --b must be different interfaces".to_owned());
        }
        Ok(Some(Options {
            a,
            b,
            seed,
            control,
            timeline,
            settings,
        }))
    }
}

/// One direction: its model, shared with the control socket, and what the
/// forwarding thread counts beyond the model.
#[derive(Debug)]
struct Direction {
    name: &'static str,
    link: Mutex<Link>,
    /// Frames written to the outgoing interface.
    sent: AtomicU64,
    /// Frames the outgoing interface refused.
    send_errors: AtomicU64,
    /// Frames larger than the receive buffer, dropped.
    truncated: AtomicU64,
    /// Frames dropped because [`MAX_HELD`] were already waiting.
    held_full: AtomicU64,
    /// Frames waiting for their departure time now.
    waiting: AtomicU64,
}

impl Direction {
    fn new(name: &'static str, link: Link) -> Direction {
        Direction {
            name,
            link: Mutex::new(link),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            held_full: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        // `Link` has no state a panic elsewhere could leave half-updated, so
        // a poisoned lock still holds a usable model.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters as `key=value` words, keys prefixed with `prefix`.
    fn stats(&self, prefix: &str) -> String {
        let model = self.link().counters().to_string();
        let own = [
            ("sent", &self.sent),
            ("send_errors", &self.send_errors),
            ("truncated", &self.truncated),
            ("held_full", &self.held_full),
            ("waiting", &self.waiting),
        ]
        .map(|(key, n)| format!("{key}={}", n.load(Ordering::Relaxed)));
        model
            .split(' ')
            .chain(own.iter().map(String::as_str))
            .map(|kv| format!("{prefix}{kv}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Applies settings to the chosen directions, all or none.
fn apply(dirs: &[Direction; 2], which: Directions, text: &str) -> Result<(), String> {
    let chosen: Vec<&Direction> = dirs
        .iter()
        .zip([which.a_to_b(), which.b_to_a()])
        .filter_map(|(d, on)| on.then_some(d))
        .collect();
    // Always locked A→B first, so two changes at once cannot deadlock.
    let mut links: Vec<_> = chosen.iter().map(|d| d.link()).collect();
    let mut next = Vec::new();
    for link in &links {
        let mut settings = link.settings().clone();
        settings.apply(text).map_err(|e| e.to_string())?;
        next.push(settings);
    }
    for ((link, settings), d) in links.iter_mut().zip(next).zip(&chosen) {
        eprintln!("patronus-wan: {}: {settings}", d.name);
        link.set(settings);
    }
    Ok(())
}

fn stats_line(dirs: &[Direction; 2]) -> String {
    format!("{} {}", dirs[0].stats("a2b."), dirs[1].stats("b2a."))
}

fn run(options: &Options) -> Result<(), String> {
    let timeline = match &options.timeline {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_timeline(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let dirs = Arc::new([
        Direction::new("a2b", Link::new(Impairment::default(), options.seed)),
        Direction::new(
            "b2a",
            Link::new(Impairment::default(), options.seed ^ B_TO_A_SALT),
        ),
    ]);
    for (which, text) in &options.settings {
        apply(&dirs, *which, text)?;
    }
    let (a_in, a_out) = open(&options.a)?;
    let (b_in, b_out) = open(&options.b)?;
    // Set by SIGTERM, SIGINT, `quit` or a failing thread; everything winds
    // down.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("signal {signal}: {e}"))?;
    }
    // Bound only once the sockets are open, so a client that can connect
    // knows frames are being forwarded.
    let control = match &options.control {
        Some(path) => Some(ControlSocket::bind(path)?),
        None => None,
    };
    eprintln!(
        "patronus-wan: forwarding {} <-> {} (seed {})",
        options.a, options.b, options.seed
    );

    let start = Instant::now();
    let result = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for (dir, from, to) in [(&dirs[0], a_in, b_out), (&dirs[1], b_in, a_out)] {
            let (queue, queued) = mpsc::channel();
            let stop = &*stop;
            threads.push(scope.spawn(move || {
                let result = receive(dir, from, &queue, start, stop);
                stop.store(true, Ordering::Relaxed);
                result.map_err(|e| format!("{}: {e}", dir.name))
            }));
            threads.push(scope.spawn(move || {
                transmit(dir, to, &queued, start, stop);
                stop.store(true, Ordering::Relaxed);
                Ok(())
            }));
        }
        let mut events = timeline.iter().peekable();
        while !stop.load(Ordering::Relaxed) {
            let now = elapsed_ns(start);
            while let Some(event) = events.next_if(|e| e.at_ns <= now) {
                eprintln!(
                    "patronus-wan: at {:.3}s set {} {}",
                    event.at_ns as f64 / 1e9,
                    event.dirs,
                    event.settings
                );
                if let Err(e) = apply(&dirs, event.dirs, &event.settings) {
                    eprintln!("patronus-wan: timeline: {e}");
                }
            }
            if let Some(control) = &control {
                control.accept(&dirs, &stop);
            }
            let until_next = events
                .peek()
                .map_or(u64::MAX, |e| e.at_ns.saturating_sub(now));
            std::thread::sleep(Duration::from_nanos(until_next).min(TICK));
        }
        threads
            .into_iter()
            .map(|f| {
                f.join()
                    .unwrap_or_else(|_| Err("thread panicked".to_owned()))
            })
            .collect::<Result<Vec<()>, String>>()
    });
    for dir in dirs.iter() {
        eprintln!("patronus-wan: final {} {}", dir.name, dir.stats(""));
    }
    result.map(|_| ())
}

fn elapsed_ns(start: Instant) -> u64 {
    // `Instant` reads CLOCK_MONOTONIC on Linux; u64 nanoseconds last 584 years.
    start.elapsed().as_nanos() as u64
}

/// The receiving half of an interface's socket.
struct Incoming {
    rx: Box<dyn DataLinkReceiver>,
    /// The same socket by a second descriptor, to read and clear an error
    /// the receiving half cannot (see [`receive`]).
    socket: Socket,
}

/// Opens an AF_PACKET raw socket on `iface`, bound to it, in promiscuous
/// mode and without the frames leaving it, and splits it into its two
/// halves.
fn open(iface: &str) -> Result<(Incoming, Box<dyn DataLinkSender>), String> {
    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .ok_or_else(|| format!("{iface}: no such interface"))?;
    // Protocol 0 receives nothing until the bind in `channel` names the
    // interface (and ETH_P_ALL), so no frame of another interface slips in
    // before; the filter is in place before the first frame too.
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)
        .map_err(|e| format!("{iface}: socket: {e}"))?;
    socket
        .attach_filter(&DROP_OUTGOING)
        .map_err(|e| format!("{iface}: filter: {e}"))?;
    let errors = socket
        .try_clone()
        .map_err(|e| format!("{iface}: dup: {e}"))?;
    let config = pnet_datalink::Config {
        // One byte more than the largest frame taken, so a longer frame
        // shows as one that filled the buffer.
        read_buffer_size: FRAME_BUFFER + 1,
        read_timeout: Some(TICK),
        write_timeout: Some(TICK),
        promiscuous: true,
        // `channel` owns the descriptor from here and closes it, also when
        // it fails.
        socket_fd: Some(socket.into_raw_fd()),
        ..Default::default()
    };
    match pnet_datalink::channel(&interface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok((Incoming { rx, socket: errors }, tx)),
        // `Channel` may grow kinds; Linux makes only Ethernet ones.
        Ok(_) => Err(format!("{iface}: not an Ethernet channel")),
        Err(e) => Err(format!("{iface}: {e}")),
    }
}

/// Reads the frames arriving on `port`, offers them to `dir`'s model and
/// queues those it delivers for [`transmit`], until `stop`.
fn receive(
    dir: &Direction,
    mut port: Incoming,
    queue: &mpsc::Sender<Held>,
    start: Instant,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let frame = match port.rx.next() {
            Ok(frame) if frame.len() > FRAME_BUFFER => {
                dir.truncated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(frame) => frame,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            // An error the socket reports once (the interface went down,
            // say); the next read tells whether it lasts.
            Err(e) if e.raw_os_error().is_some() => {
                eprintln!("patronus-wan: {}: receive: {e}", dir.name);
                continue;
            }
            // The receiving half reads only when a frame waits, so an error
            // pending alone makes its poll return at once, again and again,
            // until SO_ERROR takes it.
            Err(e) => match port.socket.take_error()? {
                Some(pending) => {
                    eprintln!("patronus-wan: {}: receive: {pending}", dir.name);
                    continue;
                }
                None => return Err(e),
            },
        };
        let verdict = dir.link().offer(elapsed_ns(start), frame.len());
        if let Verdict::DeliverAt(due) = verdict {
            if dir.waiting.load(Ordering::Relaxed) >= MAX_HELD as u64 {
                dir.held_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Counted before it is queued, so that `transmit` never counts
            // it out first.
            dir.waiting.fetch_add(1, Ordering::Relaxed);
            if queue.send((due, frame.to_vec())).is_err() {
                // `transmit` has ended, and with it the forwarding.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sends each frame `receive` queued on `tx` at its departure time, until
/// `stop`.
fn transmit(
    dir: &Direction,
    mut tx: Box<dyn DataLinkSender>,
    queue: &mpsc::Receiver<Held>,
    start: Instant,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let (due, frame) = match queue.recv_timeout(TICK) {
            Ok(held) => held,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Departure times never decrease, so the head of the queue leaves
        // first and sleeping until its time delays no other frame.
        loop {
            let now = elapsed_ns(start);
            if now >= due {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_nanos(due - now).min(TICK));
        }
        match tx.send_to(&frame, None) {
            Some(Ok(())) => dir.sent.fetch_add(1, Ordering::Relaxed),
            _ => dir.send_errors.fetch_add(1, Ordering::Relaxed),
        };
        dir.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The control socket; its file is removed on drop.
#[derive(Debug)]
struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    fn bind(path: &Path) -> Result<ControlSocket, String> {
        // A socket left by an earlier run that died would make bind fail.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
        })
    }

    /// Takes the clients waiting to connect, each served by a thread of its
    /// own that blocks on its lines and ends with the process.
    fn accept(&self, dirs: &Arc<[Direction; 2]>, stop: &Arc<AtomicBool>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let (dirs, stop) = (Arc::clone(dirs), Arc::clone(stop));
                    std::thread::spawn(move || serve(stream, &dirs, &stop));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("patronus-wan: control socket: {e}");
                    return;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, dirs: &[Direction; 2], stop: &AtomicBool) {
    // The listener is non-blocking; its clients are not.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let mut out = &stream;
    for line in BufReader::new(&stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let command = Command::parse(&line);
        let reply = match &command {
            Ok(Command::Set(which, text)) => match apply(dirs, *which, text) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error: {e}"),
            },
            Ok(Command::Stats) => stats_line(dirs),
            Ok(Command::Quit) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        // One write for the whole line, so that a client reading once gets
        // all of it.
        let written = out.write_all(format!("{reply}\n").as_bytes());
        // A client that hangs up after `ok` has still asked to quit.
        if command == Ok(Command::Quit) {
            stop.store(true, Ordering::Relaxed);
            return;
        }
        if written.is_err() {
            return;
        }
    }
}
