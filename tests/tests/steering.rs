//! Application-aware steering end to end, over the two-uplink topology with
//! site 1's uplinks behind `patronus-wan`: route rules by DPI category pick
//! their paths by strategy and keep their flows there, a flapping uplink is
//! left once and not followed, and a duplicated stream survives independent
//! loss on both uplinks. Paths are told apart by site 1's per-path counters.

mod common;

use std::process::Child;
use std::time::Duration;

use common::two_uplinks::Sites;
use common::*;

const WAN: &str = env!("CARGO_BIN_EXE_patronus-wan");

/// The paths of site 1 by its local uplink.
const MPLS: [&str; 2] = ["local:mpls->site2:mpls", "local:mpls->site2:inet"];
const INET: [&str; 2] = ["local:inet->site2:mpls", "local:inet->site2:inet"];

/// A SIP request, which the classifier calls VoIP.
const SIP_INVITE: &str = "INVITE sip:bob@10.2.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.2\r\n";
/// A BitTorrent DHT ping (BEP 5), which the classifier calls FileTransfer.
const DHT_PING: &str = "d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

/// Two route rules by category: VoIP on the lowest latency, FileTransfer
/// on the least cost.
const VOICE_AND_BULK: &str = r#"
[[policy]]
name = "voice"
[[policy.rule]]
action = "route"
priority = 20
conditions = [{ type = "category", value = "VoIP" }]
path_selection = { strategy = "lowest-latency" }

[[policy]]
name = "bulk"
[[policy.rule]]
action = "route"
priority = 10
conditions = [{ type = "category", value = "FileTransfer" }]
path_selection = { strategy = "least-cost" }
"#;

/// Starts a paced UDP stream from host 1 to host 2's `port`, from
/// `from_port`, opened by one datagram of `first` when given.
fn stream(
    sites: &Sites,
    port: u16,
    from_port: u16,
    pps: u32,
    seconds: f64,
    first: Option<&str>,
) -> Child {
    let mut args = vec![
        UDP_SEQ.to_owned(),
        "send".to_owned(),
        "10.2.0.2".to_owned(),
        port.to_string(),
        pps.to_string(),
        seconds.to_string(),
        "--from-port".to_owned(),
        from_port.to_string(),
    ];
    if let Some(first) = first {
        args.extend(["--first".to_owned(), first.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sites.hosts[0].spawn(&args)
}

fn finish(sender: Child) {
    let out = sender.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets site 1 sent over the paths of one local uplink.
fn sent_over(m: &Metrics, paths: [&str; 2]) -> f64 {
    paths
        .iter()
        .map(|p| m.sum("patronus_path_tx_packets_total", &[("path_id", p)]))
        .sum()
}

/// Packets site 1 (`one`) sent over the paths of its MPLS and of its
/// internet uplink while `run` ran.
fn sent_during(one: &Dataplane, run: impl FnOnce()) -> (f64, f64) {
    let before = one.scrape();
    run();
    let after = one.scrape();
    (
        sent_over(&after, MPLS) - sent_over(&before, MPLS),
        sent_over(&after, INET) - sent_over(&before, INET),
    )
}

fn failovers(m: &Metrics, policy: &str, reason: &str) -> f64 {
    m.sum(
        "patronus_failover_events_total",
        &[("policy_id", policy), ("reason", reason)],
    )
}

/// Waits until all four paths are up and measured.
fn wait_for_paths(one: &Dataplane) {
    let ready = eventually(Duration::from_secs(30), || {
        let m = one.scrape();
        m.sum("patronus_path_up", &[]) == 4.0
            && MPLS
                .iter()
                .chain(&INET)
                .all(|p| m.sum("patronus_path_probes_answered_total", &[("path_id", p)]) >= 40.0)
    });
    assert!(ready, "paths never came up:\n{}", one.scrape().text);
}

fn stop(gateways: [&mut Dataplane; 2]) {
    for gw in gateways {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}

#[test]
fn voice_takes_the_fastest_uplink_bulk_the_cheapest_and_flows_stay_put() {
    require_root();
    // MPLS: 10 ms round trip, 1.0 per GB; the internet: 30 ms, 0.1 per GB.
    let sites = Sites::with_impaired(
        WAN,
        &[
            ("mpls", "delay=5ms", "delay=5ms"),
            ("inet", "delay=15ms", "delay=15ms"),
        ],
    );
    // Probes every 50 ms, figures over the last 20 of them, a better path
    // takes new flows after 1 s.
    let paths = "probe_interval_ms = 50\nwindow = 20\nhold_ms = 1000";
    let (mut one, mut two) = sites.start_with(paths, VOICE_AND_BULK);
    wait_for_paths(&one);
    // Probes and echoes put about 250 packets on each uplink in 3 s; each
    // stream puts 3 000 on its own.
    let quiet = 1_000.0;
    let voice =
        |from_port, seconds| stream(&sites, 5060, from_port, 1_000, seconds, Some(SIP_INVITE));

    let (mpls, inet) = sent_during(&one, || finish(voice(5004, 3.0)));
    assert!(
        mpls >= 3_000.0 && inet < quiet,
        "VoIP: {mpls} packets over MPLS, {inet} over the internet"
    );

    let (mpls, inet) = sent_during(&one, || {
        finish(stream(&sites, 6881, 6881, 1_000, 3.0, Some(DHT_PING)))
    });
    assert!(
        inet >= 3_000.0 && mpls < quiet,
        "FileTransfer: {mpls} packets over MPLS, {inet} over the internet"
    );

    // MPLS slows to 50 ms while a call runs on it: new calls move to the
    // internet after the hold time, the running one stays where it is (its
    // path is still eligible: the rule has no thresholds).
    let before = one.scrape();
    let first_call = voice(5004, 15.0);
    // The call is on MPLS (and pinned there) before MPLS slows.
    let flowing = eventually(Duration::from_secs(5), || {
        sent_over(&one.scrape(), MPLS) - sent_over(&before, MPLS) >= 1_000.0
    });
    assert!(flowing, "the first call never reached MPLS");
    sites.impair("mpls", "set both delay=25ms");
    let moved = eventually(Duration::from_secs(8), || {
        failovers(&one.scrape(), "voice", "better_path") >= 1.0
    });
    assert!(moved, "new calls never moved:\n{}", one.scrape().text);
    let (mpls, inet) = sent_during(&one, || finish(voice(5006, 3.0)));
    // Each uplink carries one call (3 000 packets in those 3 s) and little else.
    assert!(
        (2_700.0..4_000.0).contains(&mpls) && (2_700.0..4_000.0).contains(&inet),
        "with the first call pinned to MPLS and the second on the internet: \
         {mpls} packets over MPLS, {inet} over the internet"
    );
    assert!(
        first_call_still_running(first_call),
        "the first call ended before the second: the test ran too slowly to tell"
    );
    for reason in ["path_down", "sla_violation"] {
        assert_eq!(failovers(&one.scrape(), "voice", reason), 0.0, "{reason}");
    }
    stop([&mut one, &mut two]);
}

/// Whether `sender` was still sending; it is waited for either way.
fn first_call_still_running(mut sender: Child) -> bool {
    let running = sender.try_wait().unwrap().is_none();
    finish(sender);
    running
}

#[test]
fn a_flapping_uplink_is_left_once_and_not_followed_back_and_forth() {
    require_root();
    let sites = Sites::with_impaired(WAN, &[("mpls", "clear", "clear")]);
    // A recovered path takes traffic back only after 3 s of being up.
    let (mut one, mut two) = sites.start_with("probe_interval_ms = 20\nhold_ms = 3000", "");
    wait_for_paths(&one);
    let active = |m: &Metrics| m.sum("patronus_path_active", &[("path_id", MPLS[0])]) == 1.0;
    // Paths that went down while the peer was starting come back after the hold.
    let settled = eventually(Duration::from_secs(15), || active(&one.scrape()));
    assert!(settled, "traffic is not on MPLS:\n{}", one.scrape().text);
    let before = one.scrape();
    // MPLS flaps 2 s down, 2 s up, five times over 20 s.
    for _ in 0..5 {
        sites.impair("mpls", "set both blackhole=on");
        std::thread::sleep(Duration::from_secs(2));
        sites.impair("mpls", "set both blackhole=off");
        std::thread::sleep(Duration::from_secs(2));
    }
    let after = one.scrape();
    let moves =
        |reason| failovers(&after, "default", reason) - failovers(&before, "default", reason);
    assert_eq!(
        (moves("path_down"), moves("better_path")),
        (1.0, 0.0),
        "five flaps must make one failover:\n{}",
        after.text
    );
    // Once MPLS stays up for the hold time, traffic returns, once.
    let back = eventually(Duration::from_secs(10), || active(&one.scrape()));
    let last = one.scrape();
    assert!(back, "never returned to MPLS:\n{}", last.text);
    assert_eq!(
        failovers(&last, "default", "better_path") - failovers(&before, "default", "better_path"),
        1.0
    );
    stop([&mut one, &mut two]);
}

#[test]
fn a_duplicated_stream_survives_independent_loss_on_both_uplinks() {
    require_root();
    // 5% loss, drawn independently, on the way out of each of site 1's uplinks.
    let sites = Sites::with_impaired(
        WAN,
        &[("mpls", "loss=5%", "clear"), ("inet", "loss=5%", "clear")],
    );
    let voice = r#"
[[policy]]
name = "voice"
[[policy.rule]]
action = "route"
priority = 20
conditions = [{ type = "destination-port", value = "5060" }]
path_selection = { strategy = "lowest-latency" }
duplicate = true
"#;
    let (mut one, mut two) = sites.start_with("probe_interval_ms = 50", voice);
    wait_for_paths(&one);
    let (pps, seconds) = (1_000, 8.0);
    let receive = |port: &str| {
        spawn_listening(
            &sites.hosts[1],
            &[UDP_SEQ, "recv", port, &format!("{}", seconds - 0.5)],
        )
    };
    let receivers = [receive("5060"), receive("7000")];
    let senders = [
        stream(&sites, 5060, 5004, pps, seconds, None),
        stream(&sites, 7000, 7004, pps, seconds, None),
    ];
    senders.into_iter().for_each(finish);
    let [duplicated, single] = receivers.map(|r| {
        let out = r.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "received R lost L max_gap_ms G"
        let fields: Vec<&str> = text.split_whitespace().collect();
        let number = |key: &str| -> f64 {
            let i = fields
                .iter()
                .position(|f| *f == key)
                .unwrap_or_else(|| panic!("{text}"));
            fields[i + 1].parse().unwrap()
        };
        100.0 * number("lost") / (number("received") + number("lost"))
    });
    println!("duplicated: {duplicated:.2}% lost, single: {single:.2}% lost");
    assert!(duplicated <= 0.5, "duplicated: {duplicated}% lost");
    assert!((3.0..=7.0).contains(&single), "single: {single}% lost");
    // The receiver dropped the second copies as duplicates, not replays.
    let m = two.scrape();
    let copies = m.sum("patronus_tunnel_drops_total", &[("reason", "duplicate")]);
    assert!(
        copies >= 0.8 * f64::from(pps) * seconds,
        "{copies} second copies dropped"
    );
    assert_eq!(
        m.sum("patronus_tunnel_drops_total", &[("reason", "replay")]),
        0.0
    );
    stop([&mut one, &mut two]);
}
