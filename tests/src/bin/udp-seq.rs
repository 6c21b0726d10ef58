//! `udp-seq`: a paced UDP stream with sequence numbers, and its receiver,
//! for failover and steering tests and the demo; fast enough for 100 000
//! datagrams a second on one core.
//!
//! ```text
//! udp-seq send HOST PORT PPS SECONDS [--first TEXT] [--from-port N]
//! udp-seq recv PORT SECONDS
//! ```
//!
//! `send` sends PPS 64-byte datagrams a second for SECONDS, each starting
//! with its sequence number (8 bytes, big-endian), and prints the count
//! sent. `--first` sends one datagram of TEXT before the stream (for the
//! classifier); `--from-port` binds the source port (default: any).
//!
//! `recv` prints `listening` once bound, waits up to 30 s for the first
//! datagram, receives for SECONDS after it, then prints `received R lost L
//! max_gap_ms G`: R distinct sequence numbers, L those never seen up to the
//! highest one, and G the longest silence between two datagrams in a row
//! (the blackout of a failover).

use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Bytes of each datagram of the stream.
const SIZE: usize = 64;
/// The stream is sent a tick's worth at a time.
const TICK: Duration = Duration::from_micros(500);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("send") => send(&args[1..]),
        Some("recv") => recv(&args[1..]),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-seq: {e}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: udp-seq send HOST PORT PPS SECONDS [--first TEXT] [--from-port N] \
                     | udp-seq recv PORT SECONDS";

fn number<T: std::str::FromStr>(args: &[String], at: usize, name: &str) -> Result<T, String> {
    let text = args
        .get(at)
        .ok_or_else(|| format!("{name} missing; {USAGE}"))?;
    text.parse()
        .map_err(|_| format!("{name}: not a number: {text:?}"))
}

fn send(args: &[String]) -> Result<(), String> {
    let host = args.first().ok_or(USAGE)?;
    let port: u16 = number(args, 1, "PORT")?;
    let pps: f64 = number(args, 2, "PPS")?;
    let seconds: f64 = number(args, 3, "SECONDS")?;
    let (mut first, mut from_port) = (None, 0u16);
    let mut rest = args[4..].iter();
    while let Some(option) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| format!("{option} needs a value"))?;
        match option.as_str() {
            "--first" => first = Some(value.clone()),
            "--from-port" => from_port = value.parse().map_err(|_| "--from-port: a port")?,
            other => return Err(format!("unknown option {other}; {USAGE}")),
        }
    }
    let socket = UdpSocket::bind(("0.0.0.0", from_port)).map_err(|e| e.to_string())?;
    socket
        .connect((host.as_str(), port))
        .map_err(|e| e.to_string())?;
    if let Some(text) = first {
        socket.send(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let total = (pps * seconds) as u64;
    let mut payload = [0u8; SIZE];
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < total {
        // Catch up with the schedule in one go, then wait for the next
        // tick: the rate holds even when the scheduler is late.
        let due = ((start.elapsed().as_secs_f64() * pps) as u64 + 1).min(total);
        while seq < due {
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            // No route for a moment: the datagram is lost, as on a wire.
            let _ = socket.send(&payload);
            seq += 1;
        }
        std::thread::sleep(TICK);
    }
    println!("{total}");
    Ok(())
}

fn recv(args: &[String]) -> Result<(), String> {
    let port: u16 = number(args, 0, "PORT")?;
    let seconds: f64 = number(args, 1, "SECONDS")?;
    let socket = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| e.to_string())?;
    println!("listening");
    let mut buf = [0u8; 2048];
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut len = socket.recv(&mut buf).map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut seen = SeqSet::default();
    let (mut last, mut max_gap) = (None::<Instant>, Duration::ZERO);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(seq) = buf.get(..8).filter(|_| len >= 8) {
            seen.insert(u64::from_be_bytes(seq.try_into().expect("8 bytes")));
        }
        if let Some(last) = last {
            max_gap = max_gap.max(now - last);
        }
        last = Some(now);
        let next = loop {
            match socket.recv(&mut buf) {
                Ok(n) => break Some(n),
                Err(_) if Instant::now() < end => continue,
                Err(_) => break None,
            }
        };
        let Some(n) = next else { break };
        len = n;
    }
    let lost = seen.highest.map_or(0, |h| h + 1 - seen.count);
    println!(
        "received {} lost {lost} max_gap_ms {:.1}",
        seen.count,
        max_gap.as_secs_f64() * 1e3
    );
    Ok(())
}

/// The sequence numbers seen, as a bit set.
#[derive(Default)]
struct SeqSet {
    bits: Vec<u64>,
    count: u64,
    highest: Option<u64>,
}

impl SeqSet {
    /// Most sequence numbers tracked (64 Mi: eleven minutes at 100 000 a
    /// second); later ones are ignored.
    const LIMIT: u64 = 1 << 26;

    fn insert(&mut self, seq: u64) {
        if seq >= Self::LIMIT {
            return;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.count += 1;
            self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        }
    }
}
