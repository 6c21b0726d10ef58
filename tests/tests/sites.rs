//! Two sites joined by a Patronus-to-Patronus tunnel:
//!
//! ```text
//! host 1 ─ [lan  GW1  wan] ─ router (WAN namespace) ─ [wan  GW2  lan] ─ host 2
//! 10.1.0.2   10.1.0.1  10.20.1.1   .254 | .254     10.20.2.1  10.2.0.1   10.2.0.2
//! ```
//!
//! Four namespaces (two hosts, the router, and the root namespace the
//! gateways' `net_af_packet` ports live in). The router forwards between
//! the two WAN subnets, so each gateway reaches the other's endpoint through
//! a next hop it resolves like any other.

mod common;

use std::time::Duration;

use common::*;

/// One site: its host, its gateway's links and keys.
struct Site {
    host: Netns,
    lan: Link,
    wan: Link,
}

struct Sites {
    id: String,
    /// The WAN between the sites; kept for as long as they are.
    _router: Netns,
    one: Site,
    two: Site,
    dir: std::path::PathBuf,
}

impl Drop for Sites {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for n in 1..=2 {
            remove_runtime_dir(&format!("ps{n}{}", self.id));
        }
    }
}

impl Sites {
    fn new() -> Sites {
        let id = unique_id();
        let router = Netns::new(format!("psr{id}"));
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        router.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mut sites = Vec::new();
        for n in 1..=2 {
            let host = Netns::new(format!("psh{n}{id}"));
            let lan = Link::new(format!("psl{n}{id}"), format!("psm{n}{id}"), &host);
            let wan = Link::new(format!("psw{n}{id}"), format!("psx{n}{id}"), &router);
            host.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.{n}.0.2/24"),
                "dev",
                &lan.host_side,
            ]);
            host.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd0{n}::2/64"),
                "dev",
                &lan.host_side,
                "nodad",
            ]);
            host.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{n}.0.1"),
            ]);
            host.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd0{n}::1"),
            ]);
            router.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.20.{n}.254/24"),
                "dev",
                &wan.host_side,
            ]);
            router.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd20:{n}::fe/64"),
                "dev",
                &wan.host_side,
                "nodad",
            ]);
            sites.push(Site { host, lan, wan });
        }
        let two = sites.pop().unwrap();
        let one = sites.pop().unwrap();
        let dir = std::env::temp_dir().join(format!("patronus-sites-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Sites {
            id,
            _router: router,
            one,
            two,
            dir,
        }
    }

    /// Gateway `n`'s configuration: its peer is the other gateway, reached
    /// over the IPv4 or IPv6 underlay, with or without compression.
    fn config(
        &self,
        n: u8,
        private: &str,
        peer_public: &str,
        ipv6_underlay: bool,
        compression: bool,
    ) -> String {
        use std::os::unix::fs::PermissionsExt;
        let site = if n == 1 { &self.one } else { &self.two };
        let other = 3 - n;
        let key = self.dir.join(format!("gw{n}.key"));
        std::fs::write(&key, private).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let endpoint = if ipv6_underlay {
            format!("fd20:{other}::1")
        } else {
            format!("10.20.{other}.1")
        };
        let prefix = format!("ps{n}{}", self.id);
        format!(
            r#"
[dpdk]
eal_args = ["-l", "0-1", "--no-pci", {mem}, "--log-level", "lib.eal:warning",
            "--vdev", "net_af_packet0,iface={lan},framecnt=4096",
            "--vdev", "net_af_packet1,iface={wan},framecnt=4096"]

[worker]
flow_capacity = 65536
idle_sleep_us = 50

[metrics]
listen = "127.0.0.1:0"

[[port]]
name = "lan"
device = "net_af_packet0"
addresses = ["10.{n}.0.1/24", "fd0{n}::1/64"]

[[port]]
name = "wan"
device = "net_af_packet1"
addresses = ["10.20.{n}.1/24", "fd20:{n}::1/64"]

[[route]]
prefix = "0.0.0.0/0"
via = "10.20.{n}.254"

[[route]]
prefix = "::/0"
via = "fd20:{n}::fe"

[tunnel]
private_key_file = "{key}"

[[peer]]
name = "site{other}"
endpoint = {{ address = "{endpoint}", port = 51820 }}
wireguard = {{ public_key = "{peer_public}" }}
allowed_ips = ["10.{other}.0.0/24", "fd0{other}::/64"]
compression = {compression}
"#,
            mem = eal_memory(&prefix),
            lan = site.lan.gw_side,
            wan = site.wan.gw_side,
            key = key.display(),
        )
    }

    /// Starts both gateways.
    fn start(&self, ipv6_underlay: bool, compression: bool) -> (Dataplane, Dataplane) {
        let (private1, public1) = wg_keypair();
        let (private2, public2) = wg_keypair();
        let one =
            Dataplane::start(&self.config(1, &private1, &public2, ipv6_underlay, compression));
        let two =
            Dataplane::start(&self.config(2, &private2, &public1, ipv6_underlay, compression));
        (one, two)
    }
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", dst])
        .status
        .success()
}

/// Both directions, both inner families, a checked TCP stream each way.
fn exercise(sites: &Sites) {
    for (from, to) in [
        (&sites.one.host, "10.2.0.2"),
        (&sites.two.host, "10.1.0.2"),
        (&sites.one.host, "fd02::2"),
        (&sites.two.host, "fd01::2"),
    ] {
        assert!(ping(from, to), "ping {to} across the tunnel");
    }
    transfer(&sites.one.host, &sites.two.host, "10.2.0.2", 2 << 20);
    transfer(&sites.two.host, &sites.one.host, "fd01::2", 2 << 20);
}

fn check_and_stop(mut gw: Dataplane, peer: &str) -> Metrics {
    // Workers publish tunnel figures every 100 ms, later when the machine is busy.
    let settled = eventually(Duration::from_secs(5), || {
        gw.scrape()
            .sum("patronus_tunnel_rx_packets_total", &[("peer", peer)])
            > 500.0
    });
    let m = gw.scrape();
    assert_eq!(
        m.sum(
            "patronus_tunnel_status",
            &[("peer", peer), ("status", "up")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert!(settled, "few packets from {peer}:\n{}", m.text);
    for reason in [
        "decrypt_failed",
        "replay",
        "duplicate",
        "allowed_ips",
        "invalid_inner",
        "no_session",
    ] {
        assert_eq!(
            m.sum("patronus_tunnel_drops_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    promtool_check(&m.text);
    let status = gw.stop();
    assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    m
}

#[test]
fn two_sites_tunnel_over_an_ipv4_underlay() {
    require_root();
    let sites = Sites::new();
    let (one, two) = sites.start(false, false);
    exercise(&sites);
    let m = check_and_stop(one, "site2");
    assert!(!m.has("patronus_compression_ratio"), "compression is off");
    check_and_stop(two, "site1");
}

#[test]
fn two_sites_tunnel_over_an_ipv6_underlay_with_compression() {
    require_root();
    let sites = Sites::new();
    let (one, two) = sites.start(true, true);
    exercise(&sites);
    // The test stream's repeating pattern compresses well.
    for (gw, peer) in [(one, "site2"), (two, "site1")] {
        let m = check_and_stop(gw, peer);
        let ratio = m.sum("patronus_compression_ratio", &[("peer", peer)]);
        assert!(ratio > 2.0, "compression ratio {ratio}");
    }
}
