//! Tunnels with stock WireGuard: host A (LAN) — Patronus — host B, where
//! host B runs `wireguard-go` (Debian's) as a road warrior whose tunnel
//! address is 10.77.0.2. Everything host A sends to 10.77.0.0/24 crosses
//! the encrypted tunnel, and so does everything host B sends to the LAN.

mod common;

use std::process::Child;
use std::time::Duration;

use common::dnsmasq::Dnsmasq;
use common::*;

/// Host B's tunnel addresses.
const B_TUNNEL4: &str = "10.77.0.2";
const B_TUNNEL6: &str = "fd77::2";

/// A WireGuard key pair from `wg genkey` / `wg pubkey`.
struct KeyPair {
    private: String,
    public: String,
}

fn keypair() -> KeyPair {
    let (private, public) = wg_keypair();
    KeyPair { private, public }
}

/// Writes `key` to a file only root may read, as the data plane demands.
fn key_file(dir: &std::path::Path, name: &str, key: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `wireguard-go` on an interface of its own inside a namespace, stopped on drop.
struct WireGuardGo {
    ns: String,
    iface: String,
    child: Option<Child>,
}

impl WireGuardGo {
    /// Starts it in `ns` with `key`, listening on 51820, peered with the
    /// gateway (`gateway_public` at 10.10.2.1:51820) for the LAN and the
    /// tunnel subnet, with addresses 10.77.0.2/24 and fd77::2/64.
    fn start(ns: &Netns, key: &KeyPair, gateway_public: &str) -> WireGuardGo {
        let iface = format!("wg{}", unique_id());
        let child = ns.spawn(&["wireguard-go", "-f", &iface]);
        let mut wg = WireGuardGo {
            ns: ns.name.clone(),
            iface,
            child: Some(child),
        };
        let socket = format!("/var/run/wireguard/{}.sock", wg.iface);
        assert!(
            eventually(Duration::from_secs(10), || std::path::Path::new(&socket)
                .exists()),
            "wireguard-go did not create {socket}"
        );
        let dir = std::env::temp_dir().join(format!("patronus-wg-{}", wg.iface));
        let private = key_file(&dir, "private.key", &key.private);
        ns.exec(&[
            "wg",
            "set",
            &wg.iface,
            "private-key",
            private.to_str().unwrap(),
            "listen-port",
            "51820",
            "peer",
            gateway_public,
            "endpoint",
            "10.10.2.1:51820",
            "allowed-ips",
            "10.10.1.0/24,10.77.0.0/24,fd00:10:1::/64,fd77::/64",
        ]);
        let _ = std::fs::remove_dir_all(&dir);
        ns.exec(&["ip", "addr", "add", "10.77.0.2/24", "dev", &wg.iface]);
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd77::2/64",
            "dev",
            &wg.iface,
            "nodad",
        ]);
        ns.exec(&["ip", "link", "set", &wg.iface, "up"]);
        ns.exec(&["ip", "route", "add", "10.10.1.0/24", "dev", &wg.iface]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:10:1::/64",
            "dev",
            &wg.iface,
        ]);
        wg.ns = ns.name.clone();
        wg
    }

    /// `wg show <iface> <what>` inside the namespace.
    fn show(&self, what: &str) -> String {
        must(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "wg",
            "show",
            &self.iface,
            what,
        ])
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface));
    }
}

impl Drop for WireGuardGo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway's `[tunnel]` and the road warrior as its peer.
fn tunnel_config(
    dir: &std::path::Path,
    gateway: &KeyPair,
    peer_public: &str,
    tunnel_extra: &str,
    peer_address: &str,
) -> String {
    let key = key_file(dir, "gateway.key", &gateway.private);
    format!(
        r#"
[tunnel]
private_key_file = "{key}"
addresses = ["10.77.0.1/24", "fd77::1/64"]
{tunnel_extra}

[[peer]]
name = "roadwarrior"
endpoint = {{ address = "{peer_address}", port = 51820 }}
wireguard = {{ public_key = "{peer_public}" }}
allowed_ips = ["10.77.0.2/32", "fd77::2/128"]
"#,
        key = key.display()
    )
}

struct Rig {
    topo: Topology,
    dp: Dataplane,
    wg: WireGuardGo,
    b_key: KeyPair,
    gw_key: KeyPair,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Host A, the gateway, and host B with wireguard-go, `tunnel_extra` in the
/// gateway's `[tunnel]`; with `wrong_key` the gateway knows host B by
/// another public key than its own.
fn rig(tunnel_extra: &str, wrong_key: bool) -> Rig {
    rig_with(tunnel_extra, wrong_key, "")
}

/// The same, with `tables` (uplinks, say) added to the gateway's configuration.
fn rig_with(tunnel_extra: &str, wrong_key: bool, tables: &str) -> Rig {
    rig_at(tunnel_extra, wrong_key, tables, "10.10.2.2")
}

/// The same, the gateway knowing host B's endpoint as `peer_address` (an
/// address or a host name).
fn rig_at(tunnel_extra: &str, wrong_key: bool, tables: &str, peer_address: &str) -> Rig {
    require_root();
    let topo = Topology::new();
    let dir = TempDir(std::env::temp_dir().join(format!("patronus-tunnel-{}", topo.id)));
    let gw_key = keypair();
    let b_key = keypair();
    let configured = if wrong_key {
        keypair().public
    } else {
        b_key.public.clone()
    };
    let extra = tunnel_config(&dir.0, &gw_key, &configured, tunnel_extra, peer_address) + tables;
    let dp = Dataplane::start_json(&topo.config(1, &extra));
    let wg = WireGuardGo::start(&topo.b, &b_key, &gw_key.public);
    Rig {
        topo,
        dp,
        wg,
        b_key,
        gw_key,
        _dir: dir,
    }
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", dst])
        .status
        .success()
}

fn event(m: &Metrics, name: &str) -> f64 {
    m.sum("patronus_tunnel_events_total", &[("event", name)])
}

#[test]
fn wireguard_go_and_patronus_carry_ping_and_tcp_with_handshakes_from_either_side() {
    let mut r = rig("", false);
    // The gateway starts the first handshake: host A's ping needs the tunnel.
    assert!(
        ping(&r.topo.a, B_TUNNEL4),
        "A pings B through the tunnel:\n{}",
        r.dp.log_text()
    );
    // Workers publish tunnel figures every 100 ms, later when the machine is busy.
    eventually(Duration::from_secs(5), || {
        let m = r.dp.scrape();
        event(&m, "responses_received") >= 1.0
    });
    let m = r.dp.scrape();
    assert_eq!(event(&m, "initiations_sent"), 1.0, "{}", m.text);
    assert_eq!(event(&m, "responses_received"), 1.0);
    assert_eq!(
        m.sum(
            "patronus_tunnel_status",
            &[("peer", "roadwarrior"), ("status", "up")]
        ),
        1.0
    );
    assert!(r
        .wg
        .show("latest-handshakes")
        .split_whitespace()
        .nth(1)
        .is_some_and(|t| t != "0"));

    assert!(ping(&r.topo.b, A4), "B pings A");
    assert!(ping(&r.topo.a, B_TUNNEL6), "IPv6 inside the tunnel");
    assert!(ping(&r.topo.b, A6));
    assert!(
        ping(&r.topo.b, "10.77.0.1"),
        "the gateway's tunnel address answers"
    );
    transfer(&r.topo.a, &r.topo.b, B_TUNNEL4, 2 << 20);
    transfer(&r.topo.b, &r.topo.a, A6, 2 << 20);

    // Now host B starts one: a fresh wireguard-go knows no session.
    r.wg.stop();
    r.wg = WireGuardGo::start(&r.topo.b, &r.b_key, &r.gw_key.public);
    assert!(
        ping(&r.topo.b, A4),
        "B pings A after restarting wireguard-go"
    );
    transfer(&r.topo.b, &r.topo.a, A4, 1 << 20);
    // Workers publish tunnel figures every 100 ms, later when the machine is busy.
    eventually(Duration::from_secs(5), || {
        let m = r.dp.scrape();
        m.sum(
            "patronus_tunnel_rx_packets_total",
            &[("peer", "roadwarrior")],
        ) > 500.0
            && event(&m, "initiations_received") >= 1.0
    });
    let m = r.dp.scrape();
    assert_eq!(event(&m, "initiations_received"), 1.0, "{}", m.text);
    assert_eq!(event(&m, "responses_sent"), 1.0);
    assert_eq!(
        event(&m, "initiations_sent"),
        1.0,
        "the gateway had no reason to start another"
    );
    let tx = m.sum(
        "patronus_tunnel_tx_packets_total",
        &[("peer", "roadwarrior")],
    );
    let rx = m.sum(
        "patronus_tunnel_rx_packets_total",
        &[("peer", "roadwarrior")],
    );
    assert!(tx > 500.0 && rx > 500.0, "tx {tx} rx {rx}");
    for reason in [
        "bad_mac",
        "decrypt_failed",
        "allowed_ips",
        "invalid_inner",
        "replay",
        "duplicate",
    ] {
        assert_eq!(
            m.sum("patronus_tunnel_drops_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    promtool_check(&m.text);

    let status = r.dp.stop();
    assert!(status.success(), "exit {status}:\n{}", r.dp.log_text());
    check_json_log(&r);
}

#[test]
fn a_peer_named_by_a_host_name_is_followed_when_its_address_changes() {
    require_root();
    // The name first points at an address on host B's link where nobody is.
    let dns = Dnsmasq::start("10.10.2.3 roadwarrior.patronus.test\n");
    let tables = format!(
        "\n[dns]\nservers = [\"127.0.0.1:{}\"]\nmin_ttl_s = 1\nmax_ttl_s = 1\n",
        dns.port
    );
    let r = rig_at("", false, &tables, "roadwarrior.patronus.test");
    assert!(
        !ping(&r.topo.a, B_TUNNEL4),
        "no handshake can reach the address the name has now"
    );
    let m = r.dp.scrape();
    assert!(event(&m, "initiations_sent") >= 1.0, "{}", m.text);
    assert_eq!(event(&m, "responses_received"), 0.0);
    assert!(m.sum("patronus_dns_lookups_total", &[("result", "answered")]) >= 1.0);

    // The name moves to host B: once its one-second TTL runs out the
    // gateway looks it up again, its handshakes go there, and A reaches B.
    dns.serve("10.10.2.2 roadwarrior.patronus.test\n");
    assert!(
        eventually(Duration::from_secs(60), || ping(&r.topo.a, B_TUNNEL4)),
        "A never reached B at the name's new address:\n{}",
        r.dp.log_text()
    );
    assert!(
        r.dp.log_text().contains("re-resolved"),
        "{}",
        r.dp.log_text()
    );
    // The counters reach the metrics endpoint at the worker's next report.
    let answered = eventually(Duration::from_secs(5), || {
        event(&r.dp.scrape(), "responses_received") >= 1.0
    });
    assert!(answered, "{}", r.dp.scrape().text);
}

/// Every line the gateway wrote is a JSON object with the documented
/// fields (DPDK's own lines included), the tunnel's coming up is one of
/// them with its peer, and no key appears anywhere.
fn check_json_log(r: &Rig) {
    let log = r.dp.json_log();
    assert!(
        log.iter()
            .any(|l| l["target"] == "dpdk" && l["level"] != "ERROR"),
        "DPDK's own lines are routed into the log:\n{}",
        r.dp.log_text()
    );
    assert!(
        log.iter()
            .any(|l| l["message"] == "tunnel up" && l["peer"] == "roadwarrior"),
        "a `tunnel up` line names its peer:\n{}",
        r.dp.log_text()
    );
    let text = r.dp.log_text();
    for (what, key) in [
        ("the gateway's private key", &r.gw_key.private),
        ("the peer's private key", &r.b_key.private),
    ] {
        assert!(!text.contains(key.as_str()), "{what} is in the log");
    }
}

#[test]
fn a_stock_peers_path_is_measured_from_its_handshakes() {
    // The WAN port as an uplink: the road warrior gets a path, measured
    // passively since it takes no probes.
    let uplink = "\n[[uplink]]\nname = \"wan\"\nport = \"wan\"\n";
    let mut r = rig_with("", false, uplink);
    let path = [("path_id", "local:wan->roadwarrior")];
    assert!(ping(&r.topo.a, B_TUNNEL4), "{}", r.dp.log_text());
    let measured = eventually(Duration::from_secs(5), || {
        r.dp.scrape()
            .sum("patronus_path_probes_answered_total", &path)
            >= 1.0
    });
    let m = r.dp.scrape();
    assert!(measured, "{}", m.text);
    assert_eq!(
        m.sum(
            "patronus_path_info",
            &[
                ("path_id", "local:wan->roadwarrior"),
                ("measured", "passive")
            ]
        ),
        1.0
    );
    // One handshake, answered, over a veth: well under 50 ms.
    assert_eq!(m.sum("patronus_path_probes_sent_total", &path), 1.0);
    let p50 = m.sum(
        "patronus_path_latency_seconds",
        &[("path_id", "local:wan->roadwarrior"), ("percentile", "50")],
    );
    assert!(p50 > 0.0 && p50 < 0.05, "handshake round trip {p50} s");
    assert_eq!(m.sum("patronus_path_up", &path), 1.0);
    assert_eq!(m.sum("patronus_path_active", &path), 1.0);
    // The worker test a_stock_peer_gets_no_probes... shows that no probe
    // goes to such a peer; here the way back works over the path too.
    assert!(ping(&r.topo.b, A4), "B pings A");
    assert_eq!(r.dp.stop().code(), Some(0));
}

#[test]
fn bfd_runs_with_frr_bfdd_on_a_wireguard_go_peer() {
    use common::bfdd::Bfdd;
    // The road warrior runs FRR's bfdd on its WireGuard interface; we run
    // one session toward it at 100 ms × 3 (these keys continue the
    // [[peer]] table), over the WAN uplink.
    let tables = "bfd_enabled = true\ntunnel_address = \"10.77.0.2\"\n\
                  bfd = { desired_min_tx_ms = 100, required_min_rx_ms = 100 }\n\
                  \n[[uplink]]\nname = \"wan\"\nport = \"wan\"\n";
    let mut r = rig_with("", false, tables);
    let path = "local:wan->roadwarrior";
    let state = |m: &Metrics, s: &str| {
        m.sum(
            "patronus_bfd_session_status",
            &[("path_id", path), ("state", s)],
        )
    };
    // Our session's first packets started a handshake before wireguard-go
    // was up; the tunnel is there at the engine's next try (5 s).
    assert!(
        eventually(Duration::from_secs(15), || ping(&r.topo.a, B_TUNNEL4)),
        "{}",
        r.dp.log_text()
    );
    let mut bfdd = Bfdd::start(
        &r.topo.b,
        &r.topo.id,
        "bfd\n peer 10.77.0.1 local-address 10.77.0.2\n  receive-interval 100\n  \
         transmit-interval 100\n  detect-multiplier 3\n !\n!\n",
    );
    // Up, and past the Poll sequence that takes both sides from the
    // bring-up's one second to 100 ms.
    let detection =
        |m: &Metrics| m.sum("patronus_bfd_detection_time_seconds", &[("path_id", path)]);
    let up = eventually(Duration::from_secs(15), || {
        let m = r.dp.scrape();
        state(&m, "up") == 1.0
            && (detection(&m) - 0.3).abs() < 1e-9
            && bfdd
                .vtysh(&["show bfd peers"])
                .contains("Transmission interval: 100ms")
    });
    let theirs = bfdd.vtysh(&["show bfd peers"]);
    assert!(up, "{theirs}\n{}\n{}", r.dp.scrape().text, bfdd.log());
    // Both sides at 100 ms: bfdd reports ours, we detect at 3 × 100 ms.
    assert!(
        theirs.contains("Receive interval: 100ms")
            && theirs.contains("Transmission interval: 100ms"),
        "{theirs}"
    );
    let m = r.dp.scrape();
    assert_eq!(
        m.sum("patronus_bfd_control_drops_total", &[]),
        0.0,
        "{}",
        m.text
    );
    // The tunnel still carries the host's traffic beside it.
    assert!(ping(&r.topo.a, B_TUNNEL4), "A pings B with BFD up");

    // bfdd dies: our session goes down by detection time, and the peer's
    // one path is all it has, so nothing moves.
    bfdd.kill();
    let down = eventually(Duration::from_secs(5), || {
        state(&r.dp.scrape(), "down") == 1.0
    });
    let m = r.dp.scrape();
    assert!(down, "{}", m.text);
    assert_eq!(
        m.sum(
            "patronus_bfd_state_changes_total",
            &[
                ("path_id", path),
                ("to", "down"),
                ("diag", "control_detection_time_expired")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(r.dp.stop().code(), Some(0));
}

#[test]
fn a_forced_rekey_loses_no_tcp_data() {
    let timers = "[tunnel.timers]\nrekey_after_time_s = 3\nreject_after_time_s = 6\n";
    let mut r = rig(timers, false);
    assert!(ping(&r.topo.a, B_TUNNEL4));
    // 10 s of traffic each way with sessions rotated every 3 s.
    let a = std::thread::scope(|s| {
        let there = s.spawn(|| transfer_paced(&r.topo.a, &r.topo.b, B_TUNNEL4, 6 << 20, 10.0));
        std::thread::sleep(Duration::from_millis(100));
        let back = s.spawn(|| {
            let server = spawn_listening(&r.topo.a, &["stream.py", "serve", "5202"]);
            let sent = r.topo.b.exec(&[
                "python3",
                &tools("stream.py"),
                "send-paced",
                A4,
                "5202",
                &(6 << 20).to_string(),
                "10",
            ]);
            let out = server.wait_with_output().unwrap();
            (
                sent,
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .to_owned(),
            )
        });
        there.join().unwrap();
        back.join().unwrap()
    });
    assert_eq!(a.0.trim(), a.1.trim(), "the stream from B arrived intact");
    // Workers publish tunnel figures every 100 ms, later when the machine is busy.
    eventually(Duration::from_secs(5), || {
        let m = r.dp.scrape();
        m.sum(
            "patronus_tunnel_handshakes_sent_total",
            &[("peer", "roadwarrior")],
        ) >= 3.0
    });
    let m = r.dp.scrape();
    let handshakes = m.sum(
        "patronus_tunnel_handshakes_sent_total",
        &[("peer", "roadwarrior")],
    );
    assert!(
        handshakes >= 3.0,
        "{handshakes} handshakes in 10 s with rekeying every 3 s"
    );
    assert_eq!(
        m.sum("patronus_tunnel_drops_total", &[("reason", "no_session")]),
        0.0
    );
    assert_eq!(
        m.sum(
            "patronus_tunnel_drops_total",
            &[("reason", "decrypt_failed")]
        ),
        0.0
    );
    let status = r.dp.stop();
    assert!(status.success(), "exit {status}:\n{}", r.dp.log_text());
}

#[test]
fn a_peer_with_the_wrong_public_key_never_gets_a_session() {
    let mut r = rig("", true);
    assert!(!ping(&r.topo.a, B_TUNNEL4), "no tunnel from A");
    assert!(!ping(&r.topo.b, A4), "no tunnel from B");
    // Workers publish tunnel figures every 100 ms, later when the machine is busy.
    eventually(Duration::from_secs(5), || {
        let m = r.dp.scrape();
        m.sum("patronus_tunnel_drops_total", &[("reason", "unknown_peer")]) >= 1.0
    });
    let m = r.dp.scrape();
    assert_eq!(
        m.sum(
            "patronus_tunnel_status",
            &[("peer", "roadwarrior"), ("status", "up")]
        ),
        0.0
    );
    assert!(
        m.sum("patronus_tunnel_drops_total", &[("reason", "unknown_peer")]) >= 1.0,
        "B's initiations come from a key the gateway does not know:\n{}",
        m.text
    );
    assert_eq!(event(&m, "responses_sent"), 0.0);
    assert_eq!(event(&m, "responses_received"), 0.0);
    assert_eq!(
        r.wg.show("latest-handshakes").split_whitespace().nth(1),
        Some("0")
    );
    let status = r.dp.stop();
    assert!(status.success(), "exit {status}:\n{}", r.dp.log_text());
}

fn hostile(ns: &Netns, args: &[&str]) -> String {
    let script = tools("wg_hostile.py");
    let mut full = vec!["python3", script.as_str()];
    full.extend_from_slice(args);
    ns.exec(&full)
}

fn drops(m: &Metrics, reason: &str) -> f64 {
    m.sum("patronus_tunnel_drops_total", &[("reason", reason)])
}

#[test]
fn hostile_input_is_counted_and_dropped_and_a_flood_engages_cookies() {
    // Cookie mode from 200 handshake messages a second.
    let mut r = rig("cookie_threshold_per_s = 200", false);
    assert!(ping(&r.topo.a, B_TUNNEL4));
    let gw = "10.10.2.1";

    let kinds: f64 = hostile(&r.topo.b, &["junk", gw, "51820"])
        .trim()
        .parse()
        .unwrap();
    hostile(&r.topo.b, &["badmac", gw, "51820", "50"]);
    // Capture host B's own data messages while it pings, and send them again.
    let replayer = r.topo.b.spawn(&[
        "python3",
        &tools("wg_hostile.py"),
        "replay",
        &r.topo.link_b.host_side,
        gw,
        "51820",
        "10",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    r.topo
        .b
        .exec(&["ping", "-c", "12", "-i", "0.1", "-W", "2", A4]);
    let replayed = replayer.wait_with_output().unwrap();
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );

    assert!(eventually(Duration::from_secs(3), || {
        let m = r.dp.scrape();
        drops(&m, "malformed") >= kinds
            && drops(&m, "bad_mac") >= 50.0
            && drops(&m, "duplicate") >= 10.0
    }));
    let m = r.dp.scrape();
    assert!(
        drops(&m, "no_session") >= 1.0,
        "the data message for an index nobody gave out"
    );
    assert!(ping(&r.topo.a, B_TUNNEL4), "the tunnel still works");

    // A flood of initiations with a valid MAC1 while host B, freshly
    // restarted, must get a session of its own.
    r.wg.stop();
    let flood = r.topo.b.spawn(&[
        "python3",
        &tools("wg_hostile.py"),
        "flood",
        gw,
        "51820",
        &r.gw_key.public,
        "14",
        "800",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    r.wg = WireGuardGo::start(&r.topo.b, &r.b_key, &r.gw_key.public);
    let got_through = eventually(Duration::from_secs(12), || {
        r.topo
            .b
            .try_exec(&["ping", "-c", "1", "-W", "1", A4])
            .status
            .success()
    });
    let flood = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&flood.stdout);
    let mut numbers = summary
        .split_whitespace()
        .map(|n| n.parse::<f64>().unwrap());
    let (sent, cookies) = (numbers.next().unwrap(), numbers.next().unwrap());
    // Workers publish tunnel figures every 100 ms, later when the machine is busy.
    eventually(Duration::from_secs(5), || {
        event(&r.dp.scrape(), "cookie_replies_sent") >= cookies
    });
    let m = r.dp.scrape();
    assert!(
        got_through,
        "host B got a session during the flood:\n{}",
        m.text
    );
    assert!(event(&m, "under_load") >= 1.0, "{}", m.text);
    assert!(
        cookies >= sent * 0.8,
        "{cookies} cookie replies for {sent} initiations"
    );
    assert!(event(&m, "cookie_replies_sent") >= cookies);
    assert!(
        drops(&m, "unknown_peer") < 200.0,
        "only the flood's first messages cost a Diffie-Hellman"
    );
    let (status, _) = r.dp.http_get("/healthz");
    assert_eq!(status, 200);
    let status = r.dp.stop();
    assert!(status.success(), "exit {status}:\n{}", r.dp.log_text());
}
