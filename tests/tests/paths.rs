//! Two sites with two uplinks each, four paths between them, measured by
//! in-band probes; one remote uplink blackholed and restored:
//!
//! ```text
//!                      ┌ mpls 10.20.1.0/24 ─ router ─ 10.20.2.0/24 mpls ┐
//! host 1 ─ [lan  GW1 ──┤                     (WAN)                      ├── GW2  lan] ─ host 2
//!                      └ inet 10.30.1.0/24 ─        ─ 10.30.2.0/24 inet ┘
//! ```
//!
//! The router forwards between all four subnets, so every uplink of one
//! site reaches every endpoint of the other.

mod common;

use std::time::Duration;

use common::two_uplinks::Sites;
use common::*;

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", dst])
        .status
        .success()
}

const PATHS: [&str; 4] = [
    "local:mpls->site2:mpls",
    "local:mpls->site2:inet",
    "local:inet->site2:mpls",
    "local:inet->site2:inet",
];

fn active(m: &Metrics) -> Vec<&'static str> {
    PATHS
        .into_iter()
        .filter(|p| m.sum("patronus_path_active", &[("path_id", p)]) == 1.0)
        .collect()
}

#[test]
fn four_paths_are_measured_and_a_blackholed_uplink_fails_over_and_back() {
    require_root();
    let sites = Sites::new();
    let (mut one, mut two) = sites.start(20);

    // Every path answers its probes, with a round trip measured on it.
    // The probes sent before the other gateway was up were lost: wait until
    // the window (100 probes, 2 s) holds only probes it could answer.
    let all_up = eventually(Duration::from_secs(30), || {
        let m = one.scrape();
        PATHS.iter().all(|p| {
            m.sum("patronus_path_up", &[("path_id", p)]) == 1.0
                && m.sum("patronus_path_probes_answered_total", &[("path_id", p)]) >= 100.0
                && m.sum("patronus_path_packet_loss_pct", &[("path_id", p)]) < 1.0
        })
    });
    let m = one.scrape();
    assert!(all_up, "{}", m.text);
    for p in PATHS {
        let p50 = m.sum(
            "patronus_path_latency_seconds",
            &[("path_id", p), ("percentile", "50")],
        );
        assert!(p50 > 0.0 && p50 < 0.1, "{p}: p50 {p50} s");
        let health = m.sum("patronus_path_health_score", &[("path_id", p)]);
        assert!(health > 90.0, "{p}: health {health}\n{}", m.text);
    }
    assert_eq!(active(&m), ["local:mpls->site2:mpls"]);
    promtool_check(&m.text);
    assert!(ping(&sites.hosts[0], "10.2.0.2"), "ping across the tunnel");

    // Site 2's MPLS address goes dark: the two paths to it go down, and
    // site 1's packets move to its MPLS uplink's path to site 2's internet
    // endpoint, the first in order that still answers.
    sites
        .router
        .exec(&["ip", "route", "add", "blackhole", "10.20.2.1/32"]);
    let moved = eventually(Duration::from_secs(10), || {
        active(&one.scrape()) == ["local:mpls->site2:inet"]
    });
    let m = one.scrape();
    assert!(moved, "{}", m.text);
    for (p, up) in [
        (PATHS[0], 0.0),
        (PATHS[1], 1.0),
        (PATHS[2], 0.0),
        (PATHS[3], 1.0),
    ] {
        assert_eq!(m.sum("patronus_path_up", &[("path_id", p)]), up, "{p}");
    }
    assert!(
        m.sum("patronus_failover_events_total", &[("reason", "path_down")]) >= 1.0,
        "{}",
        m.text
    );
    assert!(
        ping(&sites.hosts[0], "10.2.0.2"),
        "ping over the other path"
    );
    let logged = one.wait_for_log("traffic moved to another path", Duration::from_secs(5));
    for part in [
        "local:mpls->site2:mpls",
        "local:mpls->site2:inet",
        "path_down",
    ] {
        assert!(logged.contains(part), "{part} in {logged}");
    }

    // Restored: once the path answers again, packets move back.
    sites
        .router
        .exec(&["ip", "route", "del", "blackhole", "10.20.2.1/32"]);
    let back = eventually(Duration::from_secs(10), || {
        active(&one.scrape()) == ["local:mpls->site2:mpls"]
    });
    let m = one.scrape();
    assert!(back, "{}", m.text);
    assert!(
        m.sum(
            "patronus_failover_events_total",
            &[("reason", "better_path")]
        ) >= 1.0
    );
    assert!(
        ping(&sites.hosts[1], "10.1.0.2"),
        "ping back across the tunnel"
    );
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}

/// How many of a gateway's paths have their BFD session in `state`.
fn sessions_in(m: &Metrics, state: &str) -> f64 {
    m.sum("patronus_bfd_session_status", &[("state", state)])
}

#[test]
fn bfd_on_every_path_takes_a_blackholed_one_out_before_the_probes_do() {
    require_root();
    let sites = Sites::new();
    let (private1, public1) = wg_keypair();
    let (private2, public2) = wg_keypair();
    // BFD at 50 ms × 3, probes slow enough (200 ms × 10) that BFD notices first.
    let paths = "probe_interval_ms = 200\ndown_after = 10";
    let mut one = Dataplane::start(&sites.bfd_config(1, &private1, &public2, paths, 50));
    let mut two = Dataplane::start(&sites.bfd_config(2, &private2, &public1, paths, 50));

    // Bring-up sends a packet a second (RFC 5880 §6.8.3); then the Poll
    // sequence moves every session to 50 ms.
    let all_up = eventually(Duration::from_secs(30), || {
        [&one, &two].iter().all(|gw| {
            let m = gw.scrape();
            sessions_in(&m, "up") == 4.0
                && m.sum("patronus_bfd_detection_time_seconds", &[]) == 4.0 * 0.15
        })
    });
    let m = one.scrape();
    assert!(all_up, "{}\n{}", m.text, two.scrape().text);
    promtool_check(&m.text);
    assert_eq!(active(&m), ["local:mpls->site2:mpls"]);
    let drops = m.sum("patronus_bfd_control_drops_total", &[]);
    assert_eq!(drops, 0.0, "{}", m.text);
    assert!(ping(&sites.hosts[0], "10.2.0.2"), "ping across the tunnel");

    // Site 2's MPLS address goes dark: BFD takes the two paths to it down
    // after 150 ms, long before ten probes of 200 ms are missed.
    let dark = std::time::Instant::now();
    sites
        .router
        .exec(&["ip", "route", "add", "blackhole", "10.20.2.1/32"]);
    let moved = eventually(Duration::from_secs(10), || {
        active(&one.scrape()) == ["local:mpls->site2:inet"]
    });
    let seen = dark.elapsed();
    assert!(moved, "{}", one.scrape().text);
    println!("traffic moved {seen:?} after the blackhole (metrics publish every 100 ms)");
    // Both paths to the dark address go down, the others stay up.
    let expected = [
        (PATHS[0], "down"),
        (PATHS[1], "up"),
        (PATHS[2], "down"),
        (PATHS[3], "up"),
    ];
    let settled = eventually(Duration::from_secs(5), || {
        let m = one.scrape();
        expected.iter().all(|(p, state)| {
            m.sum(
                "patronus_bfd_session_status",
                &[("path_id", p), ("state", state)],
            ) == 1.0
        })
    });
    let m = one.scrape();
    assert!(settled, "{}", m.text);
    let by = |reason: &str| m.sum("patronus_failover_events_total", &[("reason", reason)]);
    assert_eq!((by("bfd_down"), by("path_down")), (1.0, 0.0), "{}", m.text);
    // Down once: by its own detection time, or told by site 2's session,
    // which hears nothing of ours (the blackhole drops only what goes to
    // site 2's MPLS address) and says so in what still reaches us.
    let down = [("path_id", PATHS[0]), ("to", "down")];
    assert_eq!(
        m.sum("patronus_bfd_state_changes_total", &down),
        1.0,
        "{}",
        m.text
    );
    let logged = one.wait_for_log("traffic moved to another path", Duration::from_secs(5));
    assert!(logged.contains("bfd_down"), "{logged}");
    assert!(
        ping(&sites.hosts[0], "10.2.0.2"),
        "ping over the other path"
    );

    // Restored: the sessions come back up, and traffic with them after
    // the hold time.
    sites
        .router
        .exec(&["ip", "route", "del", "blackhole", "10.20.2.1/32"]);
    let back = eventually(Duration::from_secs(15), || {
        let m = one.scrape();
        sessions_in(&m, "up") == 4.0 && active(&m) == ["local:mpls->site2:mpls"]
    });
    assert!(back, "{}", one.scrape().text);
    assert!(
        ping(&sites.hosts[1], "10.1.0.2"),
        "ping back across the tunnel"
    );
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}

/// A path's figure from a scrape.
fn figure(m: &Metrics, name: &str, path: &str) -> f64 {
    m.sum(name, &[("path_id", path)])
}

#[test]
fn probes_measure_the_delay_loss_and_jitter_the_wan_imposes() {
    require_root();
    // Site 1's MPLS uplink: 10 ms each way, 2 ms of jitter and 2% loss on
    // the way out. Its internet uplink and site 2's are clean.
    let wan = env!("CARGO_BIN_EXE_patronus-wan");
    let sites = Sites::with_impaired(
        wan,
        &[("mpls", "delay=10ms jitter=2ms loss=2%", "delay=10ms")],
    );
    let (mut one, mut two) = sites.start(10);
    let ready = eventually(Duration::from_secs(30), || {
        let m = one.scrape();
        PATHS
            .iter()
            .all(|p| figure(&m, "patronus_path_probes_answered_total", p) >= 100.0)
    });
    let before = one.scrape();
    assert!(ready, "{}", before.text);
    // 2 000 probes on each path.
    let answered = eventually(Duration::from_secs(60), || {
        let m = one.scrape();
        PATHS.iter().all(|p| {
            figure(&m, "patronus_path_probes_sent_total", p)
                - figure(&before, "patronus_path_probes_sent_total", p)
                >= 2_000.0
        })
    });
    let after = one.scrape();
    assert!(answered, "{}", after.text);
    let delta = |name: &str, p: &str| figure(&after, name, p) - figure(&before, name, p);
    let rtt = |p: &str| {
        1000.0
            * after.sum(
                "patronus_path_latency_seconds",
                &[("path_id", p), ("percentile", "50")],
            )
    };
    let jitter = |p: &str| 1000.0 * figure(&after, "patronus_path_jitter_seconds", p);
    let clean = "local:inet->site2:inet";
    for p in PATHS {
        let sent = delta("patronus_path_probes_sent_total", p);
        let answered = delta("patronus_path_probes_answered_total", p);
        eprintln!(
            "{p}: {sent} probes, {:.2}% lost, round trip p50 {:.2} ms, jitter {:.2} ms",
            100.0 * (1.0 - answered / sent),
            rtt(p),
            jitter(p)
        );
    }
    for impaired in ["local:mpls->site2:mpls", "local:mpls->site2:inet"] {
        let loss = 100.0
            * (1.0
                - delta("patronus_path_probes_answered_total", impaired)
                    / delta("patronus_path_probes_sent_total", impaired));
        assert!(
            (1.0..=3.0).contains(&loss),
            "{impaired}: {loss}% lost, 2% configured"
        );
        // The clean path does not cross patronus-wan, so the impaired one
        // also carries the bridge's own cost: two userspace hops and their
        // wake-ups each way, well under a millisecond idle, more on a busy
        // two-core machine. Well below the configured delay would be a measuring error.
        let added = rtt(impaired) - rtt(clean);
        assert!(
            (19.0..=23.0).contains(&added),
            "{impaired}: {added} ms more than {clean}, 20 ms configured"
        );
        assert!(
            jitter(impaired) > 0.3,
            "{impaired}: jitter {} ms",
            jitter(impaired)
        );
    }
    for p in [clean, "local:inet->site2:mpls"] {
        let lost = delta("patronus_path_probes_sent_total", p)
            - delta("patronus_path_probes_answered_total", p);
        // Probes in flight at the second scrape are not lost.
        assert!(lost <= 2.0, "{p}: {lost} probes lost on a clean path");
        assert!(
            jitter(p) < 1.0,
            "{p}: jitter {} ms on a clean path",
            jitter(p)
        );
    }
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}

#[test]
fn bfdd_as_an_uplinks_router_takes_the_uplink_out_when_it_dies() {
    use common::bfdd::Bfdd;
    require_root();
    let sites = Sites::new();
    // Site 1's MPLS router runs FRR's bfdd at 100 ms; we ask for 200 ms,
    // so each side sends every 200 ms (the slower side's wish).
    let (mut one, mut two) = sites.start_with_uplink_bfd(
        "probe_interval_ms = 100",
        "mpls",
        "{ desired_min_tx_ms = 200, required_min_rx_ms = 200 }",
    );
    let router_conf = "bfd\n peer 10.20.1.1 local-address 10.20.1.254\n  \
                       receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n";
    let id = unique_id();
    let started = std::time::SystemTime::now();
    let mut bfdd = Bfdd::start(&sites.router, &id, router_conf);
    let session = [("path_id", "local:mpls->10.20.1.254")];
    let state =
        |m: &Metrics, s: &str| m.sum("patronus_bfd_session_status", &[session[0], ("state", s)]);
    // Up, past the Poll sequence that leaves the bring-up's one second,
    // and carrying the traffic.
    let up = eventually(Duration::from_secs(20), || {
        let m = one.scrape();
        state(&m, "up") == 1.0
            && (m.sum("patronus_bfd_detection_time_seconds", &session) - 0.6).abs() < 1e-9
            && bfdd
                .vtysh(&["show bfd peers"])
                .contains("Transmission interval: 200ms")
            && active(&m) == ["local:mpls->site2:mpls"]
    });
    let theirs = bfdd.vtysh(&["show bfd peers"]);
    let m = one.scrape();
    assert!(up, "{theirs}\n{}\n{}", m.text, bfdd.log());
    // Negotiated: bfdd sees our 200 ms, and we detect its death after its
    // multiplier × the slower of its 100 ms and our 200 ms.
    assert!(
        theirs.contains("Receive interval: 200ms")
            && theirs.contains("Transmission interval: 200ms"),
        "{theirs}"
    );
    let detection = m.sum("patronus_bfd_detection_time_seconds", &session);
    assert!((detection - 0.6).abs() < 1e-9, "{detection}");
    // bfdd logged its side coming up, stamped in this run.
    let came_up = bfdd.state_change_after("10.20.1.1", ("init", "up"), started);
    assert!(
        came_up.is_some_and(|t| t <= std::time::SystemTime::now()),
        "{}",
        bfdd.log()
    );
    assert_eq!(
        m.sum("patronus_bfd_control_drops_total", &[]),
        0.0,
        "{}",
        m.text
    );

    // The router's bfdd dies (the router still forwards, so the probes see
    // nothing wrong): the session goes down by detection time, and both
    // paths over the MPLS uplink are out at once.
    bfdd.kill();
    let moved = eventually(Duration::from_secs(10), || {
        active(&one.scrape()) == ["local:inet->site2:mpls"]
    });
    let m = one.scrape();
    assert!(moved, "{}", m.text);
    assert_eq!(state(&m, "down"), 1.0);
    assert_eq!(
        m.sum(
            "patronus_bfd_state_changes_total",
            &[
                session[0],
                ("to", "down"),
                ("diag", "control_detection_time_expired")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.sum("patronus_failover_events_total", &[("reason", "bfd_down")]),
        1.0,
        "{}",
        m.text
    );
    for p in PATHS {
        assert_eq!(m.sum("patronus_path_up", &[("path_id", p)]), 1.0, "{p}");
    }
    assert!(
        ping(&sites.hosts[0], "10.2.0.2"),
        "ping over the inet uplink"
    );

    // bfdd back: the session comes up, and after the hold time traffic
    // returns to the MPLS uplink.
    let _bfdd = Bfdd::start(&sites.router, &format!("{id}b"), router_conf);
    let back = eventually(Duration::from_secs(20), || {
        let m = one.scrape();
        state(&m, "up") == 1.0 && active(&m) == ["local:mpls->site2:mpls"]
    });
    assert!(back, "{}", one.scrape().text);
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}

#[test]
fn multihop_bfd_comes_up_with_frr_bfdd_beyond_the_uplinks_router() {
    use common::bfdd::Bfdd;
    require_root();
    let sites = Sites::new();
    // Site 1's internet uplink runs multihop BFD (RFC 5883, UDP 4784) with
    // an address on the router's far side, reached through its next hop.
    let (mut one, mut two) = sites.start_with_uplink_bfd(
        "probe_interval_ms = 100",
        "internet",
        "{ address = \"10.20.2.254\", multihop = true, desired_min_tx_ms = 100, \
         required_min_rx_ms = 100 }",
    );
    let mut bfdd = Bfdd::start(
        &sites.router,
        &unique_id(),
        "bfd\n peer 10.30.1.1 multihop local-address 10.20.2.254\n  \
         receive-interval 100\n  transmit-interval 100\n !\n!\n",
    );
    let session = ("path_id", "local:inet->10.20.2.254");
    let state =
        |m: &Metrics, s: &str| m.sum("patronus_bfd_session_status", &[session, ("state", s)]);
    let up = eventually(Duration::from_secs(20), || {
        state(&one.scrape(), "up") == 1.0 && bfdd.vtysh(&["show bfd peers"]).contains("Status: up")
    });
    let theirs = bfdd.vtysh(&["show bfd peers"]);
    assert!(up, "{theirs}\n{}\n{}", one.scrape().text, bfdd.log());
    assert!(theirs.contains("multihop"), "{theirs}");

    bfdd.kill();
    let down = eventually(Duration::from_secs(10), || {
        state(&one.scrape(), "down") == 1.0
    });
    let m = one.scrape();
    assert!(down, "{}", m.text);
    assert_eq!(
        m.sum("patronus_failover_events_total", &[("reason", "bfd_down")]),
        0.0,
        "the internet uplink carried nothing to move"
    );
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}
