//! Policies on the packet path: what a deny rule names is dropped end to
//! end, counted per rule, and a reload changes it without a restart.

mod common;

use std::time::Duration;

use common::*;

const NO_PING: &str = r#"
[[policy]]
name = "no-ping"
[[policy.rule]]
action = "deny"
priority = 10
conditions = [{ type = "protocol", value = "icmp" }]
"#;

const NO_STREAM: &str = r#"
[[policy]]
name = "no-stream"
[[policy.rule]]
action = "deny"
priority = 10
conditions = [{ type = "destination-port", value = "5201" }, { type = "protocol", value = "tcp" }]
"#;

/// Puts `extra` in force with a SIGHUP and waits for the new generation.
fn reload(topo: &Topology, dp: &mut Dataplane, extra: &str) {
    let before = dp.scrape().sum("patronus_config_generation", &[]);
    std::fs::write(&dp.config_path, topo.config(1, extra)).unwrap();
    dp.signal("HUP");
    let applied = eventually(Duration::from_secs(5), || {
        dp.scrape().sum("patronus_config_generation", &[]) > before
    });
    assert!(applied, "the reload was not applied: {}", dp.log_text());
}

fn pings(topo: &Topology) -> bool {
    topo.a
        .try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", B4])
        .status
        .success()
}

fn drops(dp: &Dataplane, policy: &str) -> f64 {
    dp.scrape().sum(
        "patronus_policy_drops_total",
        &[("policy", policy), ("rule", "0")],
    )
}

#[test]
fn deny_rules_drop_exactly_their_traffic_and_a_reload_lifts_them() {
    require_root();
    let topo = Topology::new();
    let mut dp = Dataplane::start(&topo.config(1, NO_PING));

    // ICMP is denied both ways; TCP passes.
    assert!(!pings(&topo), "ping went through a deny rule");
    let counted = eventually(Duration::from_secs(3), || drops(&dp, "no-ping") == 3.0);
    assert!(counted, "{} drops counted", drops(&dp, "no-ping"));
    transfer(&topo.a, &topo.b, B4, 1 << 20);

    // Now the stream's port is denied instead: ping passes, the connection
    // to port 5201 never opens (its SYNs are dropped, not refused).
    reload(&topo, &mut dp, NO_STREAM);
    assert!(pings(&topo));
    let server = spawn_listening(&topo.b, &["stream.py", "serve", "5201"]);
    let connect = format!("import socket; socket.create_connection(('{B4}', 5201), timeout=2)");
    let out = topo.a.try_exec(&["python3", "-c", &connect]);
    assert!(!out.status.success(), "connected through a deny rule");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    let stream_drops = drops(&dp, "no-stream");
    assert!(stream_drops >= 1.0, "the SYNs were not counted");
    let mut server = server;
    server.kill().unwrap();
    server.wait().unwrap();

    // Without rules everything passes again, in the same process.
    reload(&topo, &mut dp, "");
    assert!(pings(&topo));
    transfer(&topo.a, &topo.b, B4, 1 << 20);
    // Nothing else was dropped by a rule: the pings and the stream's SYNs.
    assert_eq!(
        dp.scrape().sum(
            "patronus_forward_drops_total",
            &[("reason", "policy_denied")]
        ),
        3.0 + stream_drops
    );
    assert!(dp.stop().success());
}
