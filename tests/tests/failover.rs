//! The failover benchmark (`scripts/bench/failover.sh` runs it): a paced
//! UDP stream from host 1 to host 2 over the two-uplink topology; the
//! remote MPLS endpoint is blackholed in the middle of it, and the receiver
//! reports the packets lost and the longest silence (the blackout). Runs
//! for each probe interval and stream rate, `FAILOVER_RUNS` times each
//! (default 5), and prints the figures as a table.

mod common;

use std::time::Duration;

use common::two_uplinks::Sites;
use common::*;

/// One run's figures.
struct Outcome {
    lost: u64,
    blackout_ms: f64,
}

fn one_run(sites: &Sites, pps: u32) -> Outcome {
    let seconds = 6.0;
    let receiver = spawn_listening(
        &sites.hosts[1],
        &["udp_seq.py", "recv", "7000", &format!("{}", seconds - 0.5)],
    );
    let sender_args = [
        "python3".to_owned(),
        tools("udp_seq.py"),
        "send".to_owned(),
        "10.2.0.2".to_owned(),
        "7000".to_owned(),
        pps.to_string(),
        seconds.to_string(),
    ];
    let args: Vec<&str> = sender_args.iter().map(String::as_str).collect();
    let mut sender = sites.hosts[0].spawn(&args);
    std::thread::sleep(Duration::from_secs(2));
    sites
        .router
        .exec(&["ip", "route", "add", "blackhole", "10.20.2.1/32"]);
    let status = sender.wait().unwrap();
    assert!(status.success(), "the sender failed");
    let out = receiver.wait_with_output().unwrap();
    sites
        .router
        .exec(&["ip", "route", "del", "blackhole", "10.20.2.1/32"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "received R lost L max_gap_ms G"
    let fields: Vec<&str> = text.split_whitespace().collect();
    let at = |key: &str| {
        let i = fields
            .iter()
            .position(|f| *f == key)
            .unwrap_or_else(|| panic!("{text}"));
        fields[i + 1].parse::<f64>().unwrap()
    };
    Outcome {
        lost: at("lost") as u64,
        blackout_ms: at("max_gap_ms"),
    }
}

/// One row of a benchmark's table: the runs' packets lost and blackouts,
/// min / median / max.
fn print_row(detector: &str, pps: u32, outcomes: &[Outcome], bound: &str) {
    let mut lost: Vec<u64> = outcomes.iter().map(|o| o.lost).collect();
    let mut blackout: Vec<f64> = outcomes.iter().map(|o| o.blackout_ms).collect();
    lost.sort_unstable();
    blackout.sort_by(f64::total_cmp);
    let (mid, last) = (outcomes.len() / 2, outcomes.len() - 1);
    println!(
        "| {detector} | {pps} pps | {} / {} / {} | {:.0} / {:.0} / {:.0} | {bound} |",
        lost[0], lost[mid], lost[last], blackout[0], blackout[mid], blackout[last],
    );
}

#[test]
#[ignore = "a benchmark of several minutes: scripts/bench/failover.sh runs it"]
fn failover_blackout_by_probe_interval_and_rate() {
    require_root();
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("| probe interval × down_after | stream | lost min / median / max | blackout ms min / median / max | detection bound |");
    println!("|---|---|---|---|---|");
    for probe_ms in [10u32, 20, 100] {
        for pps in [1_000u32, 10_000] {
            let sites = Sites::new();
            let (mut one, mut two) = sites.start(probe_ms);
            let ready = eventually(Duration::from_secs(30), || {
                let m = one.scrape();
                m.sum("patronus_path_up", &[]) == 4.0
                    && m.sum(
                        "patronus_path_active",
                        &[("path_id", "local:mpls->site2:mpls")],
                    ) == 1.0
            });
            assert!(ready, "paths never came up:\n{}", one.scrape().text);
            let mut outcomes = Vec::new();
            for _ in 0..runs {
                outcomes.push(one_run(&sites, pps));
                // Back on the first path before the next run.
                let back = eventually(Duration::from_secs(20), || {
                    let m = one.scrape();
                    m.sum(
                        "patronus_path_active",
                        &[("path_id", "local:mpls->site2:mpls")],
                    ) == 1.0
                });
                assert!(back, "{}", one.scrape().text);
            }
            print_row(
                &format!("{probe_ms} ms × 5"),
                pps,
                &outcomes,
                &format!("{}–{} ms", 5 * probe_ms, 6 * probe_ms),
            );
            for gw in [&mut one, &mut two] {
                let status = gw.stop();
                assert!(status.success(), "exit {status}:\n{}", gw.log_text());
            }
        }
    }
}

#[test]
#[ignore = "a benchmark of several minutes: scripts/bench/failover.sh runs it"]
fn failover_blackout_with_bfd_as_the_detector() {
    require_root();
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Probes at 1 s × 10 never decide first: BFD does.
    let paths = "probe_interval_ms = 1000\ndown_after = 10";
    println!("| BFD interval × 3 | stream | lost min / median / max | blackout ms min / median / max | detection bound |");
    println!("|---|---|---|---|---|");
    // FAILOVER_BFD_MS="50,300" picks intervals.
    let intervals: Vec<u32> = std::env::var("FAILOVER_BFD_MS")
        .map(|v| {
            v.split(',')
                .filter_map(|ms| ms.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|_| vec![10, 50, 300]);
    for bfd_ms in intervals {
        for pps in [1_000u32, 10_000] {
            let sites = Sites::new();
            let (private1, public1) = wg_keypair();
            let (private2, public2) = wg_keypair();
            let mut one =
                Dataplane::start(&sites.bfd_config(1, &private1, &public2, paths, bfd_ms));
            let mut two =
                Dataplane::start(&sites.bfd_config(2, &private2, &public1, paths, bfd_ms));
            let on_mpls = |m: &Metrics| {
                m.sum(
                    "patronus_path_active",
                    &[("path_id", "local:mpls->site2:mpls")],
                ) == 1.0
                    && m.sum("patronus_bfd_session_status", &[("state", "up")]) == 4.0
            };
            let ready = eventually(Duration::from_secs(30), || on_mpls(&one.scrape()));
            assert!(ready, "sessions never came up:\n{}", one.scrape().text);
            let mut outcomes = Vec::new();
            for _ in 0..runs {
                outcomes.push(one_run(&sites, pps));
                let back = eventually(Duration::from_secs(20), || on_mpls(&one.scrape()));
                assert!(back, "{}", one.scrape().text);
            }
            let m = one.scrape();
            let by = |reason: &str| m.sum("patronus_failover_events_total", &[("reason", reason)]);
            assert_eq!(
                by("path_down"),
                0.0,
                "BFD, not the probes, decided:\n{}",
                m.text
            );
            print_row(
                &format!("{bfd_ms} ms × 3"),
                pps,
                &outcomes,
                &format!("{} ms", 3 * bfd_ms),
            );
            for gw in [&mut one, &mut two] {
                let status = gw.stop();
                assert!(status.success(), "exit {status}:\n{}", gw.log_text());
            }
        }
    }
}

#[test]
#[ignore = "a benchmark of ten minutes: scripts/bench/failover.sh runs it"]
fn no_false_failover_at_one_percent_loss() {
    require_root();
    let seconds: u64 = std::env::var("FAILOVER_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    // 1% random loss each way on site 1's MPLS link, probes every 20 ms,
    // down after 5 unanswered in a row.
    let wan = env!("CARGO_BIN_EXE_patronus-wan");
    let sites = Sites::with_impaired(wan, &[("mpls", "loss=1%", "loss=1%")]);
    let (mut one, mut two) = sites.start(20);
    let ready = eventually(Duration::from_secs(30), || {
        let m = one.scrape();
        m.sum(
            "patronus_path_active",
            &[("path_id", "local:mpls->site2:mpls")],
        ) == 1.0
            && m.sum("patronus_path_probes_answered_total", &[]) > 400.0
    });
    assert!(ready, "{}", one.scrape().text);
    let before = one.scrape();
    std::thread::sleep(Duration::from_secs(seconds));
    let after = one.scrape();
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let path = [("path_id", "local:mpls->site2:mpls")];
    let sent = delta("patronus_path_probes_sent_total", &path);
    let lost = sent - delta("patronus_path_probes_answered_total", &path);
    let failovers = delta("patronus_failover_events_total", &[]);
    println!(
        "| {seconds} s at 1% loss each way, 20 ms × 5 | {sent} probes on the MPLS path, {:.2}% lost | {failovers} failovers |",
        100.0 * lost / sent
    );
    assert_eq!(failovers, 0.0, "a false failover:\n{}", after.text);
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}
