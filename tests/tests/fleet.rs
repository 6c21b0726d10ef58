//! The control plane and two real data planes, each a gateway between two
//! hosts in network namespaces: configuration applied with patronusctl
//! reaches both, an invalid snapshot is refused while the old one keeps
//! forwarding, and the data planes ride out a control-plane crash and the
//! loss of its database.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The bearer token every client of the test's control plane presents (the
/// data planes too), in a file only its owner can read.
fn token_file() -> &'static Path {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("patronus-fleet-token-{}", unique_id()));
        std::fs::write(&path, "fleet-test-token-0123456789\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    })
}

/// Runs patronusctl against `server`; returns stdout, panics on failure.
fn ctl(server: &str, args: &[&str]) -> String {
    let out = ctl_output(server, args);
    assert!(
        out.status.success(),
        "patronusctl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctl_output(server: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("patronusctl"))
        .args(["--server", server, "--token-file"])
        .arg(token_file())
        .args(args)
        .output()
        .expect("run patronusctl")
}

fn apply(server: &str, dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    ctl(server, &["apply", "-f", file.to_str().unwrap()]);
}

/// The control plane's view of one data plane (`patronusctl status -o json`).
#[derive(Debug, Clone, Default, PartialEq)]
struct Status {
    connected: bool,
    desired: u64,
    applied: u64,
    refused: u64,
    reason: String,
}

fn status(server: &str, dataplane: &str) -> Status {
    let out = ctl_output(server, &["status", "-o", "json"]);
    if !out.status.success() {
        return Status::default();
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let Some(d) = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataplaneId"] == dataplane)
    else {
        return Status::default();
    };
    Status {
        connected: d["connected"].as_bool().unwrap(),
        desired: d["desiredVersion"].as_u64().unwrap(),
        applied: d["appliedVersion"].as_u64().unwrap(),
        refused: d["refusedVersion"].as_u64().unwrap(),
        reason: d["refusedReason"].as_str().unwrap().to_owned(),
    }
}

/// Waits until `f` holds for the data plane's status, returning it.
fn wait_status(server: &str, dataplane: &str, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let mut last = Status::default();
    let ok = eventually(Duration::from_secs(20), || {
        last = status(server, dataplane);
        f(&last)
    });
    assert!(ok, "{dataplane}: {what}; last status {last:?}");
    last
}

/// The site version the data plane itself says is in force.
fn site_version(dp: &Dataplane) -> u64 {
    dp.scrape().sum("patronus_config_site_version", &[]) as u64
}

/// One site: two hosts and a gateway managed by the control plane.
struct Site {
    topo: Topology,
    dp: Dataplane,
}

impl Site {
    fn start(server: &str, site_id: &str, dataplane_id: &str) -> Site {
        Site::start_with(&format!("server = \"{server}\""), site_id, dataplane_id)
    }

    /// A site managed by several control-plane replicas.
    fn start_replicated(servers: &[String], site_id: &str, dataplane_id: &str) -> Site {
        let servers = format!("servers = {servers:?}");
        Site::start_with(&servers, site_id, dataplane_id)
    }

    fn start_with(servers: &str, site_id: &str, dataplane_id: &str) -> Site {
        let topo = Topology::new();
        let managed = format!(
            r#"
[controlplane]
{servers}
token_file = "{token}"
site_id = "{site_id}"
dataplane_id = "{dataplane_id}"
reconnect_min_ms = 100
reconnect_max_ms = 1000
telemetry_interval_ms = 200
"#,
            token = token_file().display()
        );
        let dp = Dataplane::start(&topo.config(1, &managed));
        Site { topo, dp }
    }

    /// A host-to-host ping through the gateway answers.
    fn forwards(&self) -> bool {
        self.topo
            .a
            .try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", B4])
            .status
            .success()
    }
}

const POLICY: &str = r#"apiVersion: patronus.io/v1
kind: Policy
metadata: {name: video-low-latency}
spec:
  siteSelector: {matchLabels: {tier: branch}}
  rules:
    - action: route
      priority: 100
      conditions: [{type: category, value: Video}]
      pathSelection: {strategy: lowest-latency, thresholds: {maxLatencyMs: 80}}
"#;

fn documents() -> String {
    let mut yaml = String::new();
    for (site, address) in [("branch-1", "192.0.2.10"), ("branch-2", "192.0.2.20")] {
        yaml += &format!(
            r#"---
apiVersion: patronus.io/v1
kind: Site
metadata: {{name: {site}, labels: {{tier: branch, site: {site}}}}}
spec:
  siteId: {site}
  region: eu-west-1
  tunnelEndpoint: {{address: {address}, port: 51820}}
---
apiVersion: patronus.io/v1
kind: Peer
metadata: {{name: hq-for-{site}}}
spec:
  siteId: {site}
  endpoint: {{address: 10.10.2.2, port: 51820}}
  wireguard: {{publicKey: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=}}
"#
        );
    }
    yaml
}

#[test]
fn two_data_planes_follow_the_control_plane_and_survive_its_crash() {
    require_root();
    let dir = std::env::temp_dir().join(format!("patronus-fleet-{}", unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("controlplane.redb");
    let cp = ControlPlane::start(&db, "127.0.0.1:0", token_file());
    let server = cp.server();
    let one = Site::start(&server, "branch-1", "gw-1");
    let two = Site::start(&server, "branch-2", "gw-2");

    // Both subscribe before there is anything: an empty site, applied.
    for gw in ["gw-1", "gw-2"] {
        wait_status(&server, gw, "connected, empty site applied", |s| {
            s.connected && s.applied == s.desired && s.desired > 0
        });
    }

    // Sites and peers, then a policy selecting both: one write, one version.
    apply(&server, &dir, "fleet.yaml", &documents());
    for gw in ["gw-1", "gw-2"] {
        wait_status(&server, gw, "sites and peers applied", |s| {
            s.applied == s.desired && s.desired > 2
        });
    }
    apply(&server, &dir, "policy.yaml", POLICY);
    let s1 = wait_status(&server, "gw-1", "the policy applied", |s| {
        s.applied == s.desired && s.refused == 0 && s.desired > 4
    });
    let s2 = wait_status(&server, "gw-2", "the fleet applied", |s| {
        s.applied == s1.applied
    });
    assert_eq!(s1.applied, s2.applied, "both ACK the same version");
    assert_eq!(site_version(&one.dp), s1.applied);
    assert_eq!(site_version(&two.dp), s2.applied);
    let metrics = one.dp.scrape();
    assert_eq!(metrics.sum("patronus_config_peers", &[]), 1.0);
    assert_eq!(metrics.sum("patronus_config_policy_rules", &[]), 1.0);
    assert!(one.forwards() && two.forwards());

    // The fleet view: versions, reported counters and tunnels, promtool-clean.
    let fleet = |m: &Metrics, name: &str, dp: &str| m.sum(name, &[("dataplane", dp)]);
    assert!(eventually(Duration::from_secs(10), || {
        let m = cp.scrape();
        fleet(&m, "patronus_fleet_rx_packets_total", "gw-1") > 0.0
            && m.sum(
                "patronus_tunnel_status",
                &[("peer", "hq-for-branch-2"), ("status", "down")],
            ) == 1.0
    }));
    let m = cp.scrape();
    assert_eq!(
        fleet(&m, "patronus_fleet_dataplane_applied_version", "gw-2") as u64,
        s2.applied
    );
    assert_eq!(fleet(&m, "patronus_fleet_dataplane_connected", "gw-1"), 1.0);
    promtool_check(&m.text);
    // Tunnels are not carried yet, so both sites are degraded and every path
    // is down and unmeasured.
    let topology = ctl(&server, &["topology"]);
    assert!(
        topology.contains("branch-1") && topology.contains("degraded"),
        "{topology}"
    );
    let paths = ctl(&server, &["paths", "--site", "branch-1"]);
    assert!(
        paths.contains("hq-for-branch-1") && paths.contains("down"),
        "{paths}"
    );

    // A peer of branch-1 changes: only branch-1 gets a new version, and a
    // watcher of branch-1's events sees the write and the ACK as they happen.
    let mut watcher = Command::new(binary("patronusctl"))
        .args(["--server", &server, "--token-file"])
        .arg(token_file())
        .args(["events", "--follow", "--site", "branch-1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let watched = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(watched).lines().map_while(Result::ok) {
            if seen_tx.send(line).is_err() {
                return;
            }
        }
    });
    let changed = documents().replacen("port: 51820}\n  wireguard", "port: 51821}\n  wireguard", 1);
    apply(&server, &dir, "fleet.yaml", &changed);
    let s1b = wait_status(&server, "gw-1", "the peer change applied", |s| {
        s.applied > s1.applied && s.applied == s.desired
    });
    assert_eq!(site_version(&one.dp), s1b.applied);
    assert_eq!(
        status(&server, "gw-2").applied,
        s2.applied,
        "branch-2 is not affected"
    );
    let applied = format!(
        "snapshot_applied site=branch-1 dataplane=gw-1 version={}",
        s1b.applied
    );
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains(&applied)) {
        match seen.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no {applied:?} among the events:\n{}", lines.join("\n")),
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("resource_updated site=branch-1 kind=peer name=hq-for-branch-1")),
        "{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("branch-2")),
        "filtered by site"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();

    // A policy naming an application gw-2 does not know: refused with the
    // field and the name, the old version stays in force and forwards.
    apply(
        &server,
        &dir,
        "bad.yaml",
        r#"apiVersion: patronus.io/v1
kind: Policy
metadata: {name: block-unknown-game}
spec:
  siteSelector: {matchLabels: {site: branch-2}}
  rules:
    - action: deny
      priority: 10
      conditions: [{type: application, value: NoSuchGame}]
"#,
    );
    let refused = wait_status(&server, "gw-2", "the bad snapshot refused", |s| {
        s.refused > s2.applied
    });
    assert!(
        refused
            .reason
            .contains("policy[block-unknown-game].rule[0].conditions[0].value")
            && refused.reason.contains("NoSuchGame"),
        "{}",
        refused.reason
    );
    assert_eq!(refused.applied, s2.applied);
    assert_eq!(
        site_version(&two.dp),
        s2.applied,
        "the old snapshot stays in force"
    );
    assert_eq!(
        two.dp
            .scrape()
            .sum("patronus_controlplane_snapshots_refused_total", &[]),
        1.0
    );
    assert!(
        two.forwards(),
        "the refused snapshot changed nothing on the packet path"
    );
    let events = ctl(&server, &["events", "--site", "branch-2"]);
    assert!(
        events.lines().any(
            |l| l.contains("snapshot_refused site=branch-2 dataplane=gw-2")
                && l.contains("NoSuchGame")
        ),
        "{events}"
    );
    ctl(&server, &["delete", "policy", "block-unknown-game"]);
    let s2b = wait_status(&server, "gw-2", "the repaired site applied", |s| {
        s.applied > refused.refused && s.applied == s.desired
    });

    // A user-defined application reaches every site, and a policy may name
    // it; one whose pattern Hyperscan cannot compile is refused everywhere
    // with Hyperscan's word, and the one in force stays.
    apply(
        &server,
        &dir,
        "acme.yaml",
        r#"apiVersion: patronus.io/v1
kind: Application
metadata: {name: acme-erp}
spec: {appName: AcmeERP, category: Database, patterns: ["^ACME-ERP/"], transport: tcp, ports: [7000]}
---
apiVersion: patronus.io/v1
kind: Policy
metadata: {name: no-erp-at-branch-2}
spec:
  siteSelector: {matchLabels: {site: branch-2}}
  rules:
    - action: deny
      priority: 10
      conditions: [{type: application, value: AcmeERP}]
"#,
    );
    let with_app = |s: &Status| s.applied == s.desired && s.applied > s2b.applied;
    let a1 = wait_status(&server, "gw-1", "the application applied", with_app);
    let a2 = wait_status(
        &server,
        "gw-2",
        "the application and its policy applied",
        with_app,
    );
    assert_eq!(
        two.dp.scrape().sum("patronus_config_policy_rules", &[]),
        2.0
    );
    apply(
        &server,
        &dir,
        "broken.yaml",
        r#"apiVersion: patronus.io/v1
kind: Application
metadata: {name: broken}
spec: {appName: Broken, category: Web, patterns: ["(unclosed"]}
"#,
    );
    for (gw, dp, before) in [("gw-1", &one.dp, a1.applied), ("gw-2", &two.dp, a2.applied)] {
        let r = wait_status(&server, gw, "the broken application refused", |s| {
            s.refused > before
        });
        assert!(
            r.reason.contains("application[Broken].patterns") && r.reason.contains("(unclosed"),
            "{}",
            r.reason
        );
        assert_eq!(site_version(dp), before, "{gw} keeps the version in force");
    }
    ctl(&server, &["delete", "application", "broken"]);
    let v1 = wait_status(&server, "gw-1", "repaired", |s| {
        s.applied == s.desired && s.applied > a1.applied
    });
    let v2 = wait_status(&server, "gw-2", "repaired", |s| {
        s.applied == s.desired && s.applied > a2.applied
    });

    // kill -9 the control plane: both keep forwarding on what they run.
    let listen = cp.addr.clone();
    cp.crash();
    for site in [&one, &two] {
        assert!(
            eventually(Duration::from_secs(10), || site
                .dp
                .scrape()
                .sum("patronus_controlplane_connected", &[])
                == 0.0),
            "the data plane noticed the control plane is gone"
        );
    }
    assert!(
        one.forwards() && two.forwards(),
        "forwarding goes on without the control plane"
    );
    assert_eq!(site_version(&one.dp), v1.applied);

    // Restarted on the same address and database: both resubscribe and run
    // the current versions (a restarted control plane may renumber an
    // unchanged snapshot; applying it again is a no-op), and new changes flow.
    let cp = ControlPlane::start(&db, &listen, token_file());
    let server = cp.server();
    let r1 = wait_status(&server, "gw-1", "resynchronised", |s| {
        s.connected && s.applied == s.desired
    });
    let r2 = wait_status(&server, "gw-2", "resynchronised", |s| {
        s.connected && s.applied == s.desired
    });
    assert!(r1.applied >= v1.applied && r2.applied >= v2.applied);
    assert_eq!(
        one.dp.scrape().sum("patronus_config_peers", &[]),
        1.0,
        "nothing was lost"
    );
    ctl(&server, &["delete", "peer", "hq-for-branch-2"]);
    let r2b = wait_status(&server, "gw-2", "a change after the restart applied", |s| {
        s.applied > r2.applied && s.applied == s.desired
    });
    assert_eq!(site_version(&two.dp), r2b.applied);
    assert_eq!(two.dp.scrape().sum("patronus_config_peers", &[]), 0.0);
    assert!(one.forwards() && two.forwards());

    // The database is lost: the control plane comes back on a new, empty
    // one whose count reaches the very version gw-2 runs, with other
    // content (gw-2's peer is back). Another epoch: gw-2 applies it.
    cp.crash();
    let fresh = dir.join("fresh.redb");
    {
        // Written through a control plane the data planes cannot reach.
        let writer = ControlPlane::start(&fresh, "127.0.0.1:0", token_file());
        let server = writer.server();
        apply(&server, &dir, "fleet.yaml", &documents());
        let mut revision = 0;
        for pad in 0.. {
            apply(&server, &dir, "pad.yaml", &format!(
                "apiVersion: patronus.io/v1\nkind: Site\n\
                 metadata: {{name: branch-1, labels: {{tier: branch, site: branch-1, pad: p{pad}}}}}\n\
                 spec: {{siteId: branch-1, region: eu-west-1, tunnelEndpoint: {{address: 192.0.2.10, port: 51820}}}}\n"
            ));
            let site: serde_json::Value =
                serde_json::from_str(&ctl(&server, &["get", "site", "branch-1", "-o", "json"]))
                    .unwrap();
            revision = site["metadata"]["resourceVersion"].as_u64().unwrap();
            assert!(
                revision <= r2b.applied,
                "the new database passed gw-2's version"
            );
            if revision == r2b.applied {
                break;
            }
        }
        assert_eq!(revision, r2b.applied);
        writer.crash();
    }
    let cp = ControlPlane::start(&fresh, &listen, token_file());
    let server = cp.server();
    let n2 = wait_status(
        &server,
        "gw-2",
        "the new database's snapshot applied",
        |s| s.connected && s.applied == s.desired && s.applied > 0,
    );
    assert_eq!(n2.applied, r2b.applied, "the same version number");
    assert!(
        eventually(Duration::from_secs(10), || two
            .dp
            .scrape()
            .sum("patronus_config_peers", &[])
            == 1.0),
        "gw-2 took the new database's snapshot for the one it runs"
    );
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(token_file());
}

/// The Site and Peer documents of two sites with two uplinks each, whose
/// peers come from the control plane with their endpoints, probes and BFD
/// (at 50 ms × 3 toward the other gateway's tunnel address).
fn path_documents(public: [&str; 2]) -> String {
    let mut yaml = String::new();
    for n in 1..=2 {
        let other = 3 - n;
        yaml += &format!(
            r#"---
apiVersion: patronus.io/v1
kind: Site
metadata: {{name: site{n}}}
spec:
  siteId: site{n}
  tunnelEndpoint: {{address: 10.20.{n}.1, port: 51820}}
---
apiVersion: patronus.io/v1
kind: Peer
metadata: {{name: site{other}-of-{n}}}
spec:
  siteId: site{n}
  endpoint: {{address: 10.20.{other}.1, port: 51820}}
  endpoints:
    - {{name: mpls, address: 10.20.{other}.1, port: 51820}}
    - {{name: inet, address: 10.30.{other}.1, port: 51820}}
  slaProbes: true
  wireguard: {{publicKey: {key}}}
  bfdEnabled: true
  tunnelAddress: 10.99.0.{other}
  bfd: {{desiredMinTxMs: 50, requiredMinRxMs: 50}}
"#,
            key = public[other - 1],
        );
    }
    yaml
}

#[test]
fn managed_paths_are_measured_and_listed_by_the_control_plane() {
    require_root();
    let dir = std::env::temp_dir().join(format!("patronus-fleet-paths-{}", unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cp = ControlPlane::start(&dir.join("controlplane.redb"), "127.0.0.1:0", token_file());
    let server = cp.server();
    let sites = common::two_uplinks::Sites::new();
    let keys = [wg_keypair(), wg_keypair()];
    let mut gateways = Vec::new();
    for n in 1..=2u8 {
        let other = 3 - n;
        // The file keeps what names the gateway's own ports and prefixes.
        let tunnel_extra = format!(
            "addresses = [\"10.99.0.{n}/24\"]\n\
             allowed_ips = {{ \"site{other}-of-{n}\" = [\"10.{other}.0.0/24\", \"10.99.0.{other}/32\"] }}"
        );
        let managed = format!(
            r#"
[controlplane]
server = "{server}"
token_file = "{token}"
site_id = "site{n}"
dataplane_id = "gw-{n}"
reconnect_min_ms = 100
reconnect_max_ms = 1000
telemetry_interval_ms = 200
"#,
            token = token_file().display()
        );
        let private = &keys[usize::from(n) - 1].0;
        let config =
            sites.base_config(n, private, "probe_interval_ms = 20", &tunnel_extra) + &managed;
        gateways.push(Dataplane::start(&config));
    }
    apply(
        &server,
        &dir,
        "paths.yaml",
        &path_documents([&keys[0].1, &keys[1].1]),
    );

    // Four paths per site, each measured, listed by the control plane.
    let rows = |site: &str| -> Vec<Vec<String>> {
        ctl(&server, &["paths", "--site", site])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    // SITE DATAPLANE PEER PATH ACTIVE UP BFD TUNNEL LATENCY JITTER LOSS HEALTH
    let measured = eventually(Duration::from_secs(30), || {
        let r = rows("site1");
        r.len() == 4
            && r.iter()
                .all(|row| row[5] == "yes" && row[6] == "up" && row[8] != "-")
    });
    let table = ctl(&server, &["paths", "--site", "site1"]);
    assert!(measured, "{table}");
    let ids: Vec<String> = rows("site1").iter().map(|r| r[3].clone()).collect();
    assert_eq!(
        ids,
        [
            "site1:mpls->site2-of-1:mpls",
            "site1:mpls->site2-of-1:inet",
            "site1:inet->site2-of-1:mpls",
            "site1:inet->site2-of-1:inet"
        ]
    );
    let active: Vec<String> = rows("site1")
        .iter()
        .filter(|r| r[4] == "yes")
        .map(|r| r[3].clone())
        .collect();
    assert_eq!(active, ["site1:mpls->site2-of-1:mpls"]);

    // The Peer's status carries the measured figures of the path in use.
    let peer: serde_json::Value =
        serde_json::from_str(&ctl(&server, &["get", "peer", "site2-of-1", "-o", "json"])).unwrap();
    let latency = peer["status"]["latencyMs"].as_f64().unwrap();
    assert!(latency > 0.0 && latency < 100.0, "{peer}");
    // And each path with its BFD session, as the Peer's status shows it.
    let sessions: Vec<(&str, &str)> = peer["status"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pathId"].as_str().unwrap(), p["bfd"].as_str().unwrap()))
        .collect();
    assert_eq!(sessions.len(), 4, "{peer}");
    assert!(sessions.iter().all(|(_, bfd)| *bfd == "Up"), "{peer}");
    // `patronusctl bfd` lists the sessions themselves, at the 50 ms both
    // sides ask for; each knows the other's discriminator.
    let listed: serde_json::Value =
        serde_json::from_str(&ctl(&server, &["bfd", "--site", "site1", "-o", "json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    for s in listed {
        assert_eq!(s["state"], "up", "{s}");
        assert_eq!(s["remoteState"], "up", "{s}");
        assert_ne!(s["remoteDiscriminator"], 0, "{s}");
        assert_eq!(s["txIntervalMs"], 50.0, "{s}");
        assert_eq!(s["detectionTimeMs"], 150.0, "{s}");
        assert!(s["lastChange"].is_string(), "{s}");
    }
    let table = ctl(&server, &["bfd"]);
    assert!(
        table.starts_with("SITE") && table.contains("site1:mpls->site2-of-1:mpls"),
        "{table}"
    );
    let site2_answers = || {
        sites.hosts[0]
            .try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.2"])
            .status
            .success()
    };
    assert!(
        site2_answers(),
        "hosts reach each other over the managed tunnel"
    );

    // The Site shapes its inet uplink, which the file leaves unshaped: the
    // data plane follows. Then a Site naming an uplink the file lacks is
    // refused by name, and the shaper stays as it was.
    let shaping = |uplinks: &str| {
        format!(
            "apiVersion: patronus.io/v1\nkind: Site\nmetadata: {{name: site1}}\nspec:\n  \
             siteId: site1\n  tunnelEndpoint: {{address: 10.20.1.1, port: 51820}}\n  \
             uplinks: {uplinks}\n"
        )
    };
    let inet_rate = |gw: &Dataplane| {
        gw.scrape()
            .sum("patronus_qos_rate_bytes_per_second", &[("egress", "inet")])
    };
    let before = status(&server, "gw-1");
    apply(
        &server,
        &dir,
        "shaped.yaml",
        &shaping("[{name: inet, rateMbps: 40, costPerGb: 0.1}]"),
    );
    let shaped = wait_status(&server, "gw-1", "the shaped site applied", |s| {
        s.applied > before.applied && s.applied == s.desired
    });
    assert!(
        eventually(Duration::from_secs(5), || inet_rate(&gateways[0]) == 5e6),
        "inet shaped to 40 Mbit/s: {} B/s",
        inet_rate(&gateways[0])
    );
    apply(
        &server,
        &dir,
        "unknown-uplink.yaml",
        &shaping("[{name: lte, rateMbps: 5}]"),
    );
    let refused = wait_status(&server, "gw-1", "the unknown uplink refused", |s| {
        s.refused > shaped.applied
    });
    assert_eq!(refused.applied, shaped.applied, "{refused:?}");
    assert!(refused.reason.contains("site.uplinks[lte]"), "{refused:?}");
    assert_eq!(inet_rate(&gateways[0]), 5e6, "the running shaper kept");
    assert!(site2_answers(), "still forwarding");

    // The Site marks its RealTime class EF: a call from site 1 arrives at
    // site 2's host marked, though neither file marks anything.
    apply(
        &server,
        &dir,
        "marked.yaml",
        &format!(
            "{}  qosClasses:\n    RealTime: {{dscp: 46}}\n    Bulk: {{weight: 5}}\n",
            shaping("[{name: inet, rateMbps: 40}]")
        ),
    );
    wait_status(&server, "gw-1", "the marking site applied", |s| {
        s.applied > refused.applied && s.applied == s.desired
    });
    let call = spawn_listening(&sites.hosts[1], &["rtp_stream.py", "recv", "5004", "2"]);
    let calling = sites.hosts[0].spawn(&[
        "python3",
        &tools("rtp_stream.py"),
        "send",
        "10.2.0.2",
        "5004",
        "2",
    ]);
    let sent = String::from_utf8_lossy(&calling.wait_with_output().unwrap().stdout).into_owned();
    let heard = String::from_utf8_lossy(&call.wait_with_output().unwrap().stdout).into_owned();
    let heard = heard.lines().last().unwrap_or_default();
    let word = |name: &str| -> f64 {
        let words: Vec<&str> = heard.split_whitespace().collect();
        let at = words.iter().position(|w| *w == name);
        at.and_then(|at| words.get(at + 1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {heard:?}"))
    };
    let sent: f64 = sent.trim().parse().unwrap();
    assert!(word("received") >= sent - 1.0, "sent {sent}: {heard}");
    // From its second packet on, DPI knows the call as RTP (RealTime).
    assert!(word("ef") >= word("received") - 1.0, "sent {sent}: {heard}");
    for gw in &mut gateways {
        let status = gw.stop();
        assert!(status.success(), "exit {status}:\n{}", gw.log_text());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Control-plane replicas on a real three-member etcd cluster: a data plane
/// whose replica is killed (-9) is on the other one at its next attempt,
/// runs what that replica sends (the same content, numbered by that
/// replica: never an older version), keeps forwarding, and applies the
/// next change made through the survivor.
#[test]
fn a_data_plane_fails_over_between_control_plane_replicas_on_etcd() {
    require_root();
    assert!(
        common::etcd::installed(),
        "etcd is not installed: scripts/setup.sh installs etcd-server"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = runtime.block_on(common::etcd::Cluster::start(3));
    let dir = std::env::temp_dir().join(format!("patronus-replicas-{}", unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("/fleet-{}/", unique_id());
    let a = ControlPlane::start_on_etcd(&cluster.store_arg(), &prefix, token_file());
    let b = ControlPlane::start_on_etcd(&cluster.store_arg(), &prefix, token_file());
    let (via_a, via_b) = (a.server(), b.server());
    let site = Site::start_replicated(&[via_a.clone(), via_b.clone()], "branch-1", "gw-1");

    apply(&via_a, &dir, "fleet.yaml", &documents());
    let before = wait_status(&via_a, "gw-1", "the site applied through a", |s| {
        s.connected && s.applied == s.desired && s.desired > 2
    });
    assert_eq!(site_version(&site.dp), before.applied);
    assert!(site.forwards());
    // Replica b knows the data plane it does not serve.
    let served = |cp: &ControlPlane| {
        cp.scrape()
            .sum("patronus_controlplane_dataplanes_served", &[])
    };
    assert_eq!((served(&a), served(&b)), (1.0, 0.0));
    wait_status(&via_b, "gw-1", "replica b's view of it", |s| {
        s.connected && s.applied == before.applied
    });

    a.crash();
    let crashed = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || served(&b) == 1.0),
        "the data plane is not on replica b 10 s after the crash"
    );
    let moved = wait_status(&via_b, "gw-1", "on replica b, its version applied", |s| {
        s.connected && s.applied == s.desired && s.applied >= before.applied
    });
    println!(
        "on the other replica {:?} after the crash",
        crashed.elapsed()
    );
    assert_eq!(site_version(&site.dp), moved.applied);
    assert_eq!(
        site.dp
            .scrape()
            .sum("patronus_controlplane_disconnects_total", &[]),
        1.0
    );
    assert!(site.forwards(), "forwarding on through the move");

    let changed = documents().replacen("port: 51820}\n  wireguard", "port: 51821}\n  wireguard", 1);
    apply(&via_b, &dir, "fleet.yaml", &changed);
    let after = wait_status(&via_b, "gw-1", "the change through b applied", |s| {
        s.applied > moved.applied && s.applied == s.desired
    });
    assert_eq!(site_version(&site.dp), after.applied);
    let _ = std::fs::remove_dir_all(&dir);
}
