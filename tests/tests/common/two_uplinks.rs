//! Two sites with two uplinks each, joined across a router namespace:
//!
//! ```text
//!                      ┌ mpls 10.20.1.0/24 ─ router ─ 10.20.2.0/24 mpls ┐
//! host 1 ─ [lan  GW1 ──┤                     (WAN)                      ├── GW2  lan] ─ host 2
//!                      └ inet 10.30.1.0/24 ─        ─ 10.30.2.0/24 inet ┘
//! ```
//!
//! The router forwards between all four subnets, so every uplink of one
//! site reaches every endpoint of the other: four paths each way.

use super::*;

/// The namespaces and links of the topology, removed on drop.
pub struct Sites {
    id: String,
    /// The WAN router (forwards between the four subnets).
    pub router: Netns,
    /// Host 1 (10.1.0.2) and host 2 (10.2.0.2).
    pub hosts: Vec<Netns>,
    links: Vec<[Link; 3]>,
    dir: std::path::PathBuf,
    /// `patronus-wan` on each of site 1's impaired uplinks.
    wans: Vec<Wan>,
}

/// A `patronus-wan` between a gateway's uplink and the router.
struct Wan {
    uplink: String,
    child: std::process::Child,
    /// Its namespace, removed after the tool has stopped.
    _ns: Netns,
    control: std::path::PathBuf,
}

impl Drop for Sites {
    fn drop(&mut self) {
        for wan in &mut self.wans {
            let _ = wan.child.kill();
            let _ = wan.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for n in 1..=2 {
            remove_runtime_dir(&format!("pp{n}{}", self.id));
        }
    }
}

impl Sites {
    /// Creates the namespaces and links.
    pub fn new() -> Sites {
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
            wans: Vec::new(),
        }
    }

    /// The same, with some of site 1's uplinks passing through
    /// `patronus-wan` (`wan` is the binary), each in a namespace of its own:
    /// `(uplink, a2b, b2a)` names the uplink (`mpls` or `inet`) and the
    /// settings it starts with in each direction, `a2b` from the gateway
    /// to the router.
    pub fn with_impaired(wan: &str, impaired: &[(&str, &str, &str)]) -> Sites {
        let mut sites = Sites::new();
        for &(uplink, a2b, b2a) in impaired {
            let (slot, net, gw_side, router_side) = match uplink {
                "mpls" => (1, 20, "ppe1", "ppb1"),
                "inet" => (2, 30, "ppf1", "ppd1"),
                other => panic!("no uplink {other}"),
            };
            let id = sites.id.clone();
            let imp = Netns::new(format!("ppw{slot}{id}"));
            // Re-plumb the link: gateway ─ [imp: g | patronus-wan | r] ─ router.
            let gw_link = Link::new(format!("{gw_side}{id}"), "g".into(), &imp);
            // The old link goes, and its end in the router with it.
            drop(std::mem::replace(&mut sites.links[0][slot], gw_link));
            let router_side = format!("{router_side}{id}");
            must(&[
                "ip",
                "link",
                "add",
                "r",
                "netns",
                &imp.name,
                "type",
                "veth",
                "peer",
                "name",
                &router_side,
                "netns",
                &sites.router.name,
            ]);
            for (ns, name) in [
                (&imp, "g"),
                (&imp, "r"),
                (&sites.router, router_side.as_str()),
            ] {
                if ns.name == imp.name {
                    ns.exec(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{name}.disable_ipv6=1"),
                    ]);
                }
                ns.exec(&[
                    "ethtool", "-K", name, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ]);
                ns.exec(&["ip", "link", "set", name, "up"]);
            }
            let address = format!("10.{net}.1.254/24");
            sites
                .router
                .exec(&["ip", "addr", "add", &address, "dev", &router_side]);
            let control = sites.dir.join(format!("wan-{uplink}.sock"));
            let child = imp.spawn(&[
                wan,
                "--a",
                "g",
                "--b",
                "r",
                "--seed",
                &(7 + slot).to_string(),
                "--control",
                control.to_str().unwrap(),
                "--a-to-b",
                a2b,
                "--b-to-a",
                b2a,
            ]);
            assert!(
                eventually(std::time::Duration::from_secs(10), || control.exists()),
                "patronus-wan did not start"
            );
            sites.wans.push(Wan {
                uplink: uplink.to_owned(),
                child,
                _ns: imp,
                control,
            });
        }
        sites
    }

    /// Sends `command` (`set a2b|b2a|both SETTINGS`) to the `patronus-wan`
    /// on site 1's `uplink`, and checks that it was taken.
    pub fn impair(&self, uplink: &str, command: &str) {
        use std::io::{BufRead, Write};
        let wan = self
            .wans
            .iter()
            .find(|w| w.uplink == uplink)
            .unwrap_or_else(|| panic!("{uplink} is not impaired"));
        let mut stream = std::os::unix::net::UnixStream::connect(&wan.control).unwrap();
        writeln!(stream, "{command}").unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut reply)
            .unwrap();
        assert_eq!(reply.trim(), "ok", "patronus-wan refused {command:?}");
    }

    /// Gateway `n`'s configuration, `paths` the body of its `[paths]`.
    pub fn config(&self, n: u8, private: &str, peer_public: &str, paths: &str) -> String {
        self.base_config(n, private, paths, "") + &peer_section(n, peer_public, "", "")
    }

    /// Gateway `n`'s configuration with BFD on every path to the other
    /// (`bfd_ms` × 3, inside the tunnel between 10.99.0.1 and 10.99.0.2),
    /// `paths` the body of its `[paths]`.
    pub fn bfd_config(
        &self,
        n: u8,
        private: &str,
        peer_public: &str,
        paths: &str,
        bfd_ms: u32,
    ) -> String {
        let other = 3 - n;
        let tunnel = format!("addresses = [\"10.99.0.{n}/24\"]");
        let bfd = format!(
            "bfd_enabled = true\ntunnel_address = \"10.99.0.{other}\"\n\
             bfd = {{ desired_min_tx_ms = {bfd_ms}, required_min_rx_ms = {bfd_ms}, detect_multiplier = 3 }}\n"
        );
        self.base_config(n, private, paths, &tunnel)
            + &peer_section(n, peer_public, &bfd, &format!(", \"10.99.0.{other}/32\""))
    }

    /// Gateway `n`'s ports, tunnel (with `tunnel_extra` in its section),
    /// uplinks (MPLS costs 1.0 per GB, the internet 0.1) and `[paths]`
    /// (`paths` its body), without peers.
    pub fn base_config(&self, n: u8, private: &str, paths: &str, tunnel_extra: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let [lan, mpls, inet] = &self.links[usize::from(n) - 1];
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
{tunnel_extra}

[[uplink]]
name = "mpls"
port = "mpls"
next_hop = "10.20.{n}.254"
color = "mpls"
cost_per_gb = 1.0

[[uplink]]
name = "inet"
port = "inet"
next_hop = "10.30.{n}.254"
color = "internet"
cost_per_gb = 0.1

[paths]
{paths}
"#,
            mem = eal_memory(&format!("pp{n}{}", self.id)),
            lan = lan.gw_side,
            mpls = mpls.gw_side,
            inet = inet.gw_side,
            key = key.display(),
        )
    }

    /// Starts both gateways, paths probed every `probe_ms`.
    pub fn start(&self, probe_ms: u32) -> (Dataplane, Dataplane) {
        self.start_with(&format!("probe_interval_ms = {probe_ms}"), "")
    }

    /// Starts both gateways with `paths` as the body of their `[paths]`,
    /// site 1's uplink of colour `color` (`mpls` or `internet`) running BFD
    /// as `bfd` (an inline table) says.
    pub fn start_with_uplink_bfd(
        &self,
        paths: &str,
        color: &str,
        bfd: &str,
    ) -> (Dataplane, Dataplane) {
        let (private1, public1) = wg_keypair();
        let (private2, public2) = wg_keypair();
        let colour = format!("color = \"{color}\"");
        let config = self.config(1, &private1, &public2, paths).replacen(
            &colour,
            &format!("{colour}\nbfd = {bfd}"),
            1,
        );
        let one = Dataplane::start(&config);
        let two = Dataplane::start(&self.config(2, &private2, &public1, paths));
        (one, two)
    }

    /// Starts both gateways with `paths` as the body of their `[paths]`
    /// and `site1_extra` (policies, say) added to gateway 1's configuration.
    pub fn start_with(&self, paths: &str, site1_extra: &str) -> (Dataplane, Dataplane) {
        let (private1, public1) = wg_keypair();
        let (private2, public2) = wg_keypair();
        let one = Dataplane::start(&(self.config(1, &private1, &public2, paths) + site1_extra));
        let two = Dataplane::start(&self.config(2, &private2, &public1, paths));
        (one, two)
    }
}

/// Gateway `n`'s peer: the other gateway at both its endpoints, probed,
/// with `extra` lines and `extra_allowed` after its LAN in `allowed_ips`.
fn peer_section(n: u8, peer_public: &str, extra: &str, extra_allowed: &str) -> String {
    let other = 3 - n;
    format!(
        r#"
[[peer]]
name = "site{other}"
endpoints = [
    {{ name = "mpls", address = "10.20.{other}.1", port = 51820 }},
    {{ name = "inet", address = "10.30.{other}.1", port = 51820 }},
]
sla_probes = true
{extra}wireguard = {{ public_key = "{peer_public}" }}
allowed_ips = ["10.{other}.0.0/24"{extra_allowed}]
"#
    )
}
