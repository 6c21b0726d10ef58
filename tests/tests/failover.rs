//! The failover benchmark (`scripts/bench/failover.sh` runs it): a paced
//! UDP stream from host 1 to host 2 over the two-uplink topology; the
//! remote MPLS endpoint is blackholed in the middle of it (or site 1's
//! MPLS link, with BFD against FRR's bfdd as the uplink's router), and the
//! receiver reports the packets lost and the longest silence (the
//! blackout). Runs for each interval and stream rate, `FAILOVER_RUNS` times
//! each (default 5), and prints the figures as a table.

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
    let blackhole = |verb: &str| {
        sites
            .router
            .exec(&["ip", "route", verb, "blackhole", "10.20.2.1/32"]);
    };
    stream_across(sites, pps, || blackhole("add"), || blackhole("del"))
}

/// A paced stream from host 1 to host 2 for six seconds, `cut` two seconds
/// in and `restore` after: the receiver's figures.
fn stream_across(sites: &Sites, pps: u32, cut: impl FnOnce(), restore: impl FnOnce()) -> Outcome {
    let seconds = 6.0;
    let receiver = spawn_listening(
        &sites.hosts[1],
        &[UDP_SEQ, "recv", "7000", &format!("{}", seconds - 0.5)],
    );
    let sender_args = [
        UDP_SEQ.to_owned(),
        "send".to_owned(),
        "10.2.0.2".to_owned(),
        "7000".to_owned(),
        pps.to_string(),
        seconds.to_string(),
    ];
    let args: Vec<&str> = sender_args.iter().map(String::as_str).collect();
    let mut sender = sites.hosts[0].spawn(&args);
    std::thread::sleep(Duration::from_secs(2));
    cut();
    let status = sender.wait().unwrap();
    assert!(status.success(), "the sender failed");
    let out = receiver.wait_with_output().unwrap();
    restore();
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

/// Runs per row: `FAILOVER_RUNS`, 5 by default.
fn runs() -> usize {
    std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Numbers from environment variable `name`, comma-separated, else `default`.
fn numbers_from_env(name: &str, default: &[u32]) -> Vec<u32> {
    std::env::var(name).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    )
}

/// Stream rates (datagrams a second) to run at: `FAILOVER_PPS="1000"`,
/// else 1 000, 10 000 and 100 000.
fn rates() -> Vec<u32> {
    numbers_from_env("FAILOVER_PPS", &[1_000, 10_000, 100_000])
}

/// BFD intervals (ms) to run at: `FAILOVER_BFD_MS="50,300"`, else 10, 50
/// and 300.
fn bfd_intervals() -> Vec<u32> {
    numbers_from_env("FAILOVER_BFD_MS", &[10, 50, 300])
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
    let runs = runs();
    println!("| probe interval × down_after | stream | lost min / median / max | blackout ms min / median / max | detection bound |");
    println!("|---|---|---|---|---|");
    for probe_ms in [10u32, 20, 100] {
        for pps in rates() {
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
    let runs = runs();
    // Probes at 1 s × 10 never decide first: BFD does.
    let paths = "probe_interval_ms = 1000\ndown_after = 10";
    println!("| BFD interval × 3 | stream | lost min / median / max | blackout ms min / median / max | detection bound |");
    println!("|---|---|---|---|---|");
    let intervals = bfd_intervals();
    for bfd_ms in intervals {
        for pps in rates() {
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

#[test]
#[ignore = "a benchmark of several minutes: scripts/bench/failover.sh runs it"]
fn reroute_by_an_uplinks_bfd_against_frr_bfdd() {
    use common::bfdd::Bfdd;
    require_root();
    let runs = runs();
    let intervals = bfd_intervals();
    // Site 1's MPLS uplink runs BFD with its router, FRR's bfdd, both at
    // the interval × 3; the link between them passes through patronus-wan,
    // which blackholes it both ways two seconds into the stream. Probes at
    // 1 s × 10 never decide first.
    let wan = env!("CARGO_BIN_EXE_patronus-wan");
    let paths = "probe_interval_ms = 1000\ndown_after = 10";
    println!(
        "| BFD interval × 3 | stream | lost min / median / max | blackout ms min / median / max \
         | bfdd detection ms min / median / max | bound: detection, lost |"
    );
    println!("|---|---|---|---|---|---|");
    for bfd_ms in intervals {
        for pps in rates() {
            let sites = Sites::with_impaired(wan, &[("mpls", "clear", "clear")]);
            let (mut one, mut two) = sites.start_with_uplink_bfd(
                paths,
                "mpls",
                &format!("{{ desired_min_tx_ms = {bfd_ms}, required_min_rx_ms = {bfd_ms} }}"),
            );
            let bfdd = Bfdd::start(
                &sites.router,
                &unique_id(),
                &format!(
                    "bfd\n peer 10.20.1.1 local-address 10.20.1.254\n  receive-interval {bfd_ms}\n  \
                     transmit-interval {bfd_ms}\n  detect-multiplier 3\n !\n!\n"
                ),
            );
            let session = [("path_id", "local:mpls->10.20.1.254")];
            let settled = |m: &Metrics| {
                let detection = m.sum("patronus_bfd_detection_time_seconds", &session);
                m.sum(
                    "patronus_path_active",
                    &[("path_id", "local:mpls->site2:mpls")],
                ) == 1.0
                    && (detection - 3.0 * f64::from(bfd_ms) / 1e3).abs() < 1e-9
            };
            let ready = eventually(Duration::from_secs(30), || settled(&one.scrape()));
            assert!(ready, "never up:\n{}\n{}", one.scrape().text, bfdd.log());
            let moves = |m: &Metrics| m.sum("patronus_failover_events_total", &[]);
            let mut outcomes = Vec::new();
            let mut theirs = Vec::new();
            // Runs in which the traffic left the uplink before the cut (a
            // session that expired while the sender and receiver started
            // on two busy CPUs): counted and run again, not averaged in.
            let mut early = 0;
            while outcomes.len() < runs {
                assert!(early < 2 * runs, "{early} runs moved before the cut");
                let before = moves(&one.scrape());
                let mut cut_at = None;
                let mut moved_early = false;
                let outcome = stream_across(
                    &sites,
                    pps,
                    || {
                        moved_early = moves(&one.scrape()) != before;
                        cut_at = Some(std::time::SystemTime::now());
                        sites.impair("mpls", "set both blackhole=on");
                    },
                    || sites.impair("mpls", "set both blackhole=off"),
                );
                let cut_at = cut_at.expect("the link was cut");
                if moved_early {
                    early += 1;
                } else {
                    let down = bfdd
                        .state_change_after("10.20.1.1", ("up", "down"), cut_at)
                        .unwrap_or_else(|| panic!("bfdd never went down:\n{}", bfdd.log()));
                    theirs.push(down.duration_since(cut_at).unwrap().as_secs_f64() * 1e3);
                    outcomes.push(outcome);
                }
                let back = eventually(Duration::from_secs(30), || settled(&one.scrape()));
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
            assert!(by("bfd_down") >= runs as f64, "{}", m.text);
            theirs.sort_by(f64::total_cmp);
            let (mid, last) = (theirs.len() / 2, theirs.len() - 1);
            let detection_ms = 3 * bfd_ms;
            // Lost at most: the detection time at the stream's rate, and a burst.
            let lost_bound = u64::from(detection_ms) * u64::from(pps) / 1_000 + 32;
            print_row(
                &format!("{bfd_ms} ms × 3"),
                pps,
                &outcomes,
                &format!(
                    "{:.1} / {:.1} / {:.1} | {detection_ms} ms, {lost_bound}{}",
                    theirs[0],
                    theirs[mid],
                    theirs[last],
                    if early > 0 {
                        format!(" ({early} run(s) moved before the cut, run again)")
                    } else {
                        String::new()
                    }
                ),
            );
            for gw in [&mut one, &mut two] {
                let status = gw.stop();
                assert!(status.success(), "exit {status}:\n{}", gw.log_text());
            }
        }
    }
}
