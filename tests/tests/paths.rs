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

use common::*;

struct Sites {
    id: String,
    router: Netns,
    hosts: Vec<Netns>,
    links: Vec<[Link; 3]>,
    dir: std::path::PathBuf,
}

impl Drop for Sites {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for n in 1..=2 {
            remove_runtime_dir(&format!("pp{n}{}", self.id));
        }
    }
}

impl Sites {
    fn new() -> Sites {
        let id = unique_id();
        let router = Netns::new(format!("ppr{id}"));
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut hosts = Vec::new();
        let mut links = Vec::new();
        for n in 1..=2 {
            let host = Netns::new(format!("pph{n}{id}"));
            let lan = Link::new(format!("ppl{n}{id}"), format!("ppm{n}{id}"), &host);
            let mpls = Link::new(format!("ppa{n}{id}"), format!("ppb{n}{id}"), &router);
            let inet = Link::new(format!("ppc{n}{id}"), format!("ppd{n}{id}"), &router);
            let lan_addr = format!("10.{n}.0.2/24");
            host.exec(&["ip", "addr", "add", &lan_addr, "dev", &lan.host_side]);
            let gw = format!("10.{n}.0.1");
            host.exec(&["ip", "route", "add", "default", "via", &gw]);
            for (net, link) in [(20, &mpls), (30, &inet)] {
                let addr = format!("10.{net}.{n}.254/24");
                router.exec(&["ip", "addr", "add", &addr, "dev", &link.host_side]);
            }
            hosts.push(host);
            links.push([lan, mpls, inet]);
        }
        let dir = std::env::temp_dir().join(format!("patronus-paths-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Sites {
            id,
            router,
            hosts,
            links,
            dir,
        }
    }

    fn config(&self, n: u8, private: &str, peer_public: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let [lan, mpls, inet] = &self.links[usize::from(n) - 1];
        let other = 3 - n;
        let key = self.dir.join(format!("gw{n}.key"));
        std::fs::write(&key, private).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            r#"
[dpdk]
eal_args = ["-l", "0-1", "--no-pci", {mem}, "--log-level", "lib.eal:warning",
            "--vdev", "net_af_packet0,iface={lan},framecnt=4096",
            "--vdev", "net_af_packet1,iface={mpls},framecnt=4096",
            "--vdev", "net_af_packet2,iface={inet},framecnt=4096"]

[worker]
idle_sleep_us = 50

[metrics]
listen = "127.0.0.1:0"

[[port]]
name = "lan"
device = "net_af_packet0"
addresses = ["10.{n}.0.1/24"]

[[port]]
name = "mpls"
device = "net_af_packet1"
addresses = ["10.20.{n}.1/24"]

[[port]]
name = "inet"
device = "net_af_packet2"
addresses = ["10.30.{n}.1/24"]

[tunnel]
private_key_file = "{key}"

[[uplink]]
name = "mpls"
port = "mpls"
next_hop = "10.20.{n}.254"
color = "mpls"

[[uplink]]
name = "inet"
port = "inet"
next_hop = "10.30.{n}.254"
color = "internet"

[paths]
probe_interval_ms = 20

[[peer]]
name = "site{other}"
endpoints = [
    {{ name = "mpls", address = "10.20.{other}.1", port = 51820 }},
    {{ name = "inet", address = "10.30.{other}.1", port = 51820 }},
]
sla_probes = true
wireguard = {{ public_key = "{peer_public}" }}
allowed_ips = ["10.{other}.0.0/24"]
"#,
            mem = eal_memory(&format!("pp{n}{}", self.id)),
            lan = lan.gw_side,
            mpls = mpls.gw_side,
            inet = inet.gw_side,
            key = key.display(),
        )
    }
}

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
    if need_root() {
        return;
    }
    let sites = Sites::new();
    let (private1, public1) = wg_keypair();
    let (private2, public2) = wg_keypair();
    let mut one = Dataplane::start(&sites.config(1, &private1, &public2));
    let mut two = Dataplane::start(&sites.config(2, &private2, &public1));

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

    // Restored: once the path answers again, packets move back.
    sites
        .router
        .exec(&["ip", "route", "del", "blackhole", "10.20.2.1/32"]);
    let back = eventually(Duration::from_secs(10), || {
        active(&one.scrape()) == ["local:mpls->site2:mpls"]
    });
    let m = one.scrape();
    assert!(back, "{}", m.text);
    assert!(m.sum("patronus_failover_events_total", &[("reason", "better_path")]) >= 1.0);
    assert!(
        ping(&sites.hosts[1], "10.1.0.2"),
        "ping back across the tunnel"
    );
    for gw in [&mut one, &mut two] {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
}
