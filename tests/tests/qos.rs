//! Shaping on the gateway between two real hosts: host A (netns) — veth —
//! port `lan` · port `wan`, shaped as uplink `branch` — veth — host B.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The uplink's rate (bit/s).
const RATE: f64 = 20e6;

/// What the shaper charges for the frames host B received so far: each
/// frame's IP packet and 38 B of Ethernet framing (the frame counted 14).
fn charged_bits(topo: &Topology) -> f64 {
    let bytes = topo.b.if_stat(&topo.link_b.host_side, "rx_bytes") as f64;
    let packets = topo.b.if_stat(&topo.link_b.host_side, "rx_packets") as f64;
    (bytes + 24.0 * packets) * 8.0
}

/// A figure from `recv`'s summary line (`... name value ...`).
fn field(line: &str, name: &str) -> f64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == name)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    words[at + 1].parse().unwrap()
}

#[test]
fn a_shaped_uplink_carries_its_rate_and_a_call_stays_fast_behind_a_bulk_transfer() {
    require_root();
    let topo = Topology::new();
    let mut dp = Dataplane::start(&topo.config(
        1,
        r#"
[[uplink]]
name = "branch"
port = "wan"
rate_mbps = 20
"#,
    ));
    topo.a.exec(&["ping", "-c", "1", "-W", "2", B4]);

    let mut bulk_server = topo.b.spawn(&["iperf3", "-s", "-1", "-B", B4]);
    let call = spawn_listening(&topo.b, &["rtp_stream.py", "recv", "5004", "7"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            topo.b
                .try_exec(&["ss", "-ltn", "sport = :5201"])
                .stdout
                .len()
                > 60
        }),
        "iperf3 listens"
    );
    let mut bulk = topo.a.spawn(&["iperf3", "-c", B4, "-t", "10", "-P", "2"]);
    // The transfer fills the shaper's queue first; then the call starts.
    std::thread::sleep(Duration::from_secs(2));
    let calling = topo
        .a
        .spawn(&["python3", &tools("rtp_stream.py"), "send", B4, "5004", "6"]);

    // The rate, measured at host B over 5 s of the transfer.
    let (bits0, t0) = (charged_bits(&topo), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (bits1, t1) = (charged_bits(&topo), Instant::now());
    let rate = (bits1 - bits0) / (t1 - t0).as_secs_f64();

    let sent = calling.wait_with_output().unwrap();
    let heard = call.wait_with_output().unwrap();
    let heard = String::from_utf8_lossy(&heard.stdout);
    let heard = heard.lines().last().unwrap_or_default().to_owned();
    let m = dp.scrape();
    let _ = bulk.kill();
    let _ = bulk_server.kill();
    let _ = bulk.wait();
    let _ = bulk_server.wait();

    let sent: f64 = String::from_utf8_lossy(&sent.stdout)
        .trim()
        .parse()
        .unwrap();
    let realtime = [("egress", "branch"), ("class", "RealTime")];
    let delay = "patronus_qos_queue_delay_seconds_bucket";
    let waited = m.sum("patronus_qos_queue_delay_seconds_count", &realtime);
    let within_5ms = m.sum(
        delay,
        &[("egress", "branch"), ("class", "RealTime"), ("le", "0.005")],
    );
    let standard = [("egress", "branch"), ("class", "Standard")];
    let bulk_packets = m.sum("patronus_qos_tx_packets_total", &standard);
    println!(
        "rate {:.3} Mbit/s ({:+.2}%); call: {heard}; gateway: {within_5ms} of {waited} \
         RealTime packets waited at most 5 ms; {bulk_packets} Standard packets sent",
        rate / 1e6,
        (rate / RATE - 1.0) * 100.0
    );
    assert!((rate / RATE - 1.0).abs() < 0.02, "rate {rate} bit/s");
    assert_eq!(
        field(&heard, "received"),
        sent,
        "the call lost nothing: {heard}"
    );
    assert_eq!(field(&heard, "lost"), 0.0, "{heard}");
    assert!(
        field(&heard, "p99_ms") < 5.0,
        "the call's one-way delay: {heard}"
    );
    // From its second packet on, DPI knows the call as RTP (VoIP: RealTime).
    assert!(waited >= sent - 1.0, "{waited} RealTime packets of {sent}");
    assert!(
        within_5ms >= 0.99 * waited,
        "the call's p99 wait in the shaper is under 5 ms ({within_5ms} of {waited})"
    );
    assert!(
        bulk_packets > 10_000.0,
        "the transfer went through the shaper"
    );
    assert!(
        m.sum(
            "patronus_qos_drops_total",
            &[("egress", "branch"), ("reason", "codel")]
        ) > 0.0,
        "CoDel kept the transfer's queue short"
    );

    let status = dp.stop();
    let log = dp.log_text();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("packet buffers still in use: 0"), "{log}");
}
