//! Test hosts in network namespaces and a real `patronus-dataplane` process
//! between them.
//!
//! Every namespace and interface gets a name unique to this process and
//! test, and is removed on drop, also when a test panics. Traffic stays
//! inside the namespaces and on loopback.

#![allow(dead_code)] // each test binary uses its own subset

pub mod bfdd;
pub mod dnsmasq;
/// A real etcd cluster on loopback, shared with the control plane's tests.
#[path = "../../../controlplane/tests/common/etcd.rs"]
pub mod etcd;
pub mod two_uplinks;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A short id unique to this process and call, for interface names (≤ 15 chars).
pub fn unique_id() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n}", std::process::id() % 0xfffff)
}

/// Runs a command, returning its output; panics with the command line when it cannot start.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with a clear message unless we are root, which namespaces and
/// DPDK need: an end-to-end test never passes without having run. As an
/// ordinary user, run the unit tests alone
/// (`cargo test --workspace --exclude patronus-e2e`).
pub fn require_root() {
    let uid = must(&["id", "-u"]);
    assert!(
        uid.trim() == "0",
        "end-to-end tests need root (network namespaces, DPDK): run scripts/test.sh as root, \
         or only the unit tests with --exclude patronus-e2e"
    );
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates it with loopback up.
    pub fn new(name: String) -> Netns {
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // Interfaces moved in later inherit these: no DAD delay, no
        // unsolicited router solicitations muddying the counters.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.router_solicitations=0",
        ]);
        ns
    }

    /// Runs a command inside; it must succeed.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        must(&full)
    }

    /// Runs a command inside and returns its output, success or not.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts a command inside, in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"))
    }

    /// Reads an interface counter from /sys inside the namespace.
    pub fn if_stat(&self, iface: &str, stat: &str) -> u64 {
        self.exec(&["cat", &format!("/sys/class/net/{iface}/statistics/{stat}")])
            .trim()
            .parse()
            .expect("numeric counter")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A veth whose one end stays in the root namespace (for the gateway's
/// `net_af_packet` port) and whose other end is a host's NIC in a namespace.
#[derive(Debug)]
pub struct Link {
    /// The gateway side, in the root namespace.
    pub gw_side: String,
    /// The host side, inside the namespace.
    pub host_side: String,
}

impl Link {
    /// Creates the pair and moves one end into `ns`. Checksum and segmentation
    /// offloads are turned off on both ends: an AF_PACKET socket would
    /// otherwise see frames with unfinished checksums or larger than the MTU.
    pub fn new(gw_side: String, host_side: String, ns: &Netns) -> Link {
        must(&[
            "ip", "link", "add", &gw_side, "type", "veth", "peer", "name", &host_side,
        ]);
        let link = Link { gw_side, host_side };
        must(&["ip", "link", "set", &link.host_side, "netns", &ns.name]);
        // The root namespace's stack must stay out of the gateway's way.
        must(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", link.gw_side),
        ]);
        must(&[
            "ethtool",
            "-K",
            &link.gw_side,
            "tx",
            "off",
            "tso",
            "off",
            "gso",
            "off",
            "gro",
            "off",
        ]);
        must(&["ip", "link", "set", &link.gw_side, "up"]);
        ns.exec(&[
            "ethtool",
            "-K",
            &link.host_side,
            "tx",
            "off",
            "tso",
            "off",
            "gso",
            "off",
            "gro",
            "off",
        ]);
        ns.exec(&["ip", "link", "set", &link.host_side, "up"]);
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.gw_side]);
    }
}

/// Host A — gateway — host B, addresses fixed (namespaces keep them apart).
#[derive(Debug)]
pub struct Topology {
    /// Unique id of this topology.
    pub id: String,
    /// Host A (LAN side).
    pub a: Netns,
    /// Host B (WAN side).
    pub b: Netns,
    /// Host A's link.
    pub link_a: Link,
    /// Host B's link.
    pub link_b: Link,
}

/// Host A's IPv4 address.
pub const A4: &str = "10.10.1.2";
/// Host B's IPv4 address.
pub const B4: &str = "10.10.2.2";
/// Host A's IPv6 address.
pub const A6: &str = "fd00:10:1::2";
/// Host B's IPv6 address.
pub const B6: &str = "fd00:10:2::2";

impl Topology {
    /// Creates both hosts with addresses and default routes via the gateway.
    pub fn new() -> Topology {
        let id = unique_id();
        let a = Netns::new(format!("pta{id}"));
        let b = Netns::new(format!("ptb{id}"));
        let link_a = Link::new(format!("pga{id}"), format!("pha{id}"), &a);
        let link_b = Link::new(format!("pgb{id}"), format!("phb{id}"), &b);
        for (ns, link, v4, gw4, v6, gw6) in [
            (&a, &link_a, A4, "10.10.1.1", A6, "fd00:10:1::1"),
            (&b, &link_b, B4, "10.10.2.1", B6, "fd00:10:2::1"),
        ] {
            ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.accept_dad=0", link.host_side),
            ]);
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                &link.host_side,
            ]);
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                &link.host_side,
                "nodad",
            ]);
            ns.exec(&["ip", "route", "add", "default", "via", gw4]);
            ns.exec(&["ip", "-6", "route", "add", "default", "via", gw6]);
        }
        Topology {
            id,
            a,
            b,
            link_a,
            link_b,
        }
    }

    /// The gateway configuration for this topology; `qpairs` queues per port.
    pub fn config(&self, qpairs: u16, extra: &str) -> String {
        let lcores = if qpairs > 1 {
            // The main lcore and one worker per queue; on a small machine
            // workers share cores and sleep when idle.
            format!(
                "\"--lcores\", \"0@0,{}\"",
                (1..=qpairs)
                    .map(|l| format!("{l}@{}", l % 2))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            "\"-l\", \"0-1\"".to_owned()
        };
        let qp = if qpairs > 1 {
            format!(",qpairs={qpairs}")
        } else {
            String::new()
        };
        // A kernel ring of 4096 frames (the PMD's default is 512) rides out
        // the worker being descheduled for a few milliseconds on a loaded
        // 2-core machine during a TCP burst.
        let ring = ",framecnt=4096";
        format!(
            r#"
[dpdk]
eal_args = [{lcores}, "--no-pci", {mem}, "--log-level", "lib.eal:warning",
            "--vdev", "net_af_packet0,iface={ga}{qp}{ring}", "--vdev", "net_af_packet1,iface={gb}{qp}{ring}"]

[worker]
flow_capacity = 65536
idle_sleep_us = 50

[metrics]
listen = "127.0.0.1:0"

[[port]]
name = "lan"
device = "net_af_packet0"
addresses = ["10.10.1.1/24", "fd00:10:1::1/64"]

[[port]]
name = "wan"
device = "net_af_packet1"
addresses = ["10.10.2.1/24", "fd00:10:2::1/64"]
{extra}
"#,
            mem = eal_memory(&format!("pt{}", self.id)),
            ga = self.link_a.gw_side,
            gb = self.link_b.gw_side,
        )
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_runtime_dir(&format!("pt{}", self.id));
    }
}

/// Removes the directory EAL keeps under /var/run/dpdk for a file prefix
/// (it stays behind even with `--in-memory`).
pub fn remove_runtime_dir(prefix: &str) {
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
}

/// EAL memory arguments: hugepages when setup.sh found them, else `--no-huge`.
pub fn eal_memory(prefix: &str) -> String {
    match std::env::var("PATRONUS_EAL_MEMORY").as_deref() {
        Ok("no-huge") => format!(
            "\"--no-huge\", \"--no-shconf\", \"-m\", \"512\", \"--file-prefix\", \"{prefix}\""
        ),
        _ => {
            let free: u64 = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("HugePages_Free:"))
                        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
                })
                .unwrap_or(0);
            if free >= 128 {
                format!("\"--in-memory\", \"--file-prefix\", \"{prefix}\"")
            } else {
                format!("\"--no-huge\", \"--no-shconf\", \"-m\", \"512\", \"--file-prefix\", \"{prefix}\"")
            }
        }
    }
}

/// The `patronus-dataplane` binary next to this test binary.
pub fn dataplane_bin() -> PathBuf {
    if let Ok(path) = std::env::var("PATRONUS_DATAPLANE_BIN") {
        return PathBuf::from(path);
    }
    binary("patronus-dataplane")
}

/// A workspace binary (`patronus-controlplane`, `patronusctl`) next to this test binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bin {name}` first",
        bin.display()
    );
    bin
}

/// A running data plane with its log captured.
#[derive(Debug)]
pub struct Dataplane {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// The metrics endpoint it bound.
    pub metrics: SocketAddr,
    /// Where its config file lives.
    pub config_path: PathBuf,
    /// The folder `start` made for it, removed on drop.
    scratch: Option<PathBuf>,
}

impl Dataplane {
    /// Writes the config, starts the binary and waits until it is running.
    ///
    /// DPDK 22.11's af_packet PMD names its fanout group `pid ^ ifindex`:
    /// when that collides with a group another data plane made on another
    /// interface, the kernel refuses the socket and the start fails. That
    /// is the harness's (see docs/testing.md), so such a start is retried,
    /// with a new pid.
    pub fn start(config: &str) -> Dataplane {
        Dataplane::start_logging(config, false)
    }

    /// The same, logging JSON lines (`--log-format json`); see [`Dataplane::json_log`].
    #[allow(dead_code)] // not every test binary reads the JSON log
    pub fn start_json(config: &str) -> Dataplane {
        Dataplane::start_logging(config, true)
    }

    fn start_logging(config: &str, json: bool) -> Dataplane {
        let dir = std::env::temp_dir().join(format!("patronus-e2e-{}", unique_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("dataplane.toml");
        std::fs::write(&config_path, config).unwrap();
        let listening = "metrics and health endpoint listening";
        for attempt in 1..=3 {
            let mut dp = Dataplane::spawn(config_path.clone(), json);
            let line = match dp.try_wait_for_log(listening, Duration::from_secs(60)) {
                Ok(line) => line,
                Err(log) if attempt < 3 && log.contains("could not set PACKET_FANOUT") => {
                    eprintln!("fanout group collision (a DPDK af_packet limit): starting again");
                    continue;
                }
                Err(log) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("data plane exited before logging {listening:?}:\n{log}")
                }
            };
            let addr = if json {
                let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                line["addr"]
                    .as_str()
                    .expect("addr in the listening line")
                    .to_owned()
            } else {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr= in the listening line")
                    .to_owned()
            };
            dp.metrics = addr.parse().expect("socket address");
            dp.scratch = Some(dir);
            dp.wait_for_log("data plane running", Duration::from_secs(30));
            return dp;
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(config_path: PathBuf, json: bool) -> Dataplane {
        let mut child = Command::new(dataplane_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg(if json { "json" } else { "text" })
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start patronus-dataplane");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("  dataplane| {line}");
                    log.lock().unwrap().push(line);
                }
            });
        }
        Dataplane {
            child: Some(child),
            log,
            metrics: "127.0.0.1:0".parse().unwrap(),
            config_path,
            scratch: None,
        }
    }

    /// Waits until a log line contains `needle`; panics (with the log) on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.try_wait_for_log(needle, timeout)
            .unwrap_or_else(|log| panic!("data plane exited before logging {needle:?}:\n{log}"))
    }

    /// The same; `Err` with the log when the process exited first.
    fn try_wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Let the log readers drain.
                std::thread::sleep(Duration::from_millis(200));
                return Err(format!("exit {status}\n{}", self.log_text()));
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every line logged so far (stdout and stderr), each parsed as a JSON
    /// object; panics naming the first line that is not one or lacks a
    /// field every line carries (timestamp, level, target, message).
    #[allow(dead_code)] // not every test binary reads the JSON log
    pub fn json_log(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let lines = self.log.lock().unwrap().clone();
        lines
            .iter()
            .map(|line| {
                let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) else {
                    panic!("a log line that is not a JSON object: {line}");
                };
                for key in ["timestamp", "level", "target", "message"] {
                    assert!(
                        fields.get(key).is_some_and(|v| v.is_string()),
                        "a log line without {key}: {line}"
                    );
                }
                fields
            })
            .collect()
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal by name (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        must(&["kill", &format!("-{name}"), &self.pid().to_string()]);
    }

    /// Stops it with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200)); // let the log readers drain
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("data plane did not stop within 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GETs a path from the metrics endpoint: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path)
    }

    /// Scrapes `/metrics`.
    pub fn scrape(&self) -> Metrics {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Also when the test failed.
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Fails unless `promtool check metrics` finds nothing to complain about.
pub fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .as_mut()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool: {complaints}"
    );
}

/// A minimal HTTP/1.1 GET over loopback.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Parsed Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    samples: Vec<(String, HashMap<String, String>, f64)>,
    /// The raw text.
    pub text: String,
}

impl Metrics {
    /// Parses the text format (enough of it for our own output).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), HashMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// The paced sequence-numbered UDP stream and its receiver (`udp-seq`).
pub const UDP_SEQ: &str = env!("CARGO_BIN_EXE_udp-seq");

/// Starts a server in `ns` and waits until it listens: a script from
/// `tools/` (`*.py`) or a program.
pub fn spawn_listening(ns: &Netns, args: &[&str]) -> std::process::Child {
    let script = tools(args[0]);
    let mut full = if args[0].ends_with(".py") {
        vec!["python3", script.as_str()]
    } else {
        vec![args[0]]
    };
    full.extend_from_slice(&args[1..]);
    let mut server = ns.spawn(&full);
    let mut first = String::new();
    let stdout = server.stdout.as_mut().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    assert_eq!(first.trim(), "listening");
    server
}

/// The path of a helper script in `tests/tools/`.
pub fn tools(name: &str) -> String {
    format!("{}/tools/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A checked TCP transfer from `from` to `to_addr` (a host in `to`).
pub fn transfer(from: &Netns, to: &Netns, to_addr: &str, bytes: usize) {
    transfer_paced(from, to, to_addr, bytes, 0.0);
}

/// Like [`transfer`], spread evenly over `seconds` (0: as fast as it goes).
pub fn transfer_paced(from: &Netns, to: &Netns, to_addr: &str, bytes: usize, seconds: f64) {
    let server = spawn_listening(to, &["stream.py", "serve", "5201"]);
    let (bytes_arg, seconds_arg) = (bytes.to_string(), seconds.to_string());
    let script = tools("stream.py");
    let mut args = vec!["python3", script.as_str()];
    if seconds > 0.0 {
        args.extend(["send-paced", to_addr, "5201", &bytes_arg, &seconds_arg]);
    } else {
        args.extend(["send", to_addr, "5201", &bytes_arg]);
    }
    let sent = from.exec(&args);
    let out = server.wait_with_output().unwrap();
    let received = String::from_utf8_lossy(&out.stdout);
    let received = received.lines().last().unwrap_or_default().to_owned();
    assert_eq!(
        sent.trim(),
        received.trim(),
        "the byte stream arrived intact"
    );
    assert!(sent.starts_with(&bytes.to_string()));
}

/// A WireGuard key pair from `wg genkey` and `wg pubkey` (Debian's
/// wireguard-tools): (private, public), both base64.
pub fn wg_keypair() -> (String, String) {
    let private = must(&["wg", "genkey"]).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey (Debian package wireguard-tools)");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (private, public)
}

/// The real `patronus-controlplane`, killed with SIGKILL when dropped.
pub struct ControlPlane {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Where its gRPC API listens (`host:port`).
    pub addr: String,
    /// Where its `/metrics` and `/healthz` listen.
    pub metrics: std::net::SocketAddr,
}

impl ControlPlane {
    /// Starts it on `listen` (`127.0.0.1:0` for any port) over database
    /// `db`, with the bearer token in `token_file`.
    pub fn start(db: &Path, listen: &str, token_file: &Path) -> ControlPlane {
        ControlPlane::start_with(&["--db".as_ref(), db.as_os_str()], listen, token_file)
    }

    /// Starts a replica on the etcd cluster `store` names (`etcd:URLS`),
    /// its state under `prefix`.
    pub fn start_on_etcd(store: &str, prefix: &str, token_file: &Path) -> ControlPlane {
        let args = ["--store", store, "--etcd-prefix", prefix].map(std::ffi::OsStr::new);
        ControlPlane::start_with(&args, "127.0.0.1:0", token_file)
    }

    fn start_with(store: &[&std::ffi::OsStr], listen: &str, token_file: &Path) -> ControlPlane {
        let mut child = Command::new(binary("patronus-controlplane"))
            .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
            .args(store)
            .arg("--token-file")
            .arg(token_file)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start patronus-controlplane");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  controlplane| {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let mut addr = String::new();
        assert!(
            eventually(Duration::from_secs(20), || {
                let log = log.lock().unwrap();
                let listening = log
                    .iter()
                    .filter(|l| l.contains("control plane listening"))
                    .find_map(|l| l.split("addr=").nth(1));
                match listening {
                    Some(rest) => {
                        addr = rest.split_whitespace().next().unwrap().to_owned();
                        true
                    }
                    None => false,
                }
            }),
            "the control plane did not start listening"
        );
        let metrics = log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("fleet metrics listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .expect("the fleet metrics address is logged before the gRPC one")
            .parse()
            .unwrap();
        ControlPlane {
            child,
            log,
            addr,
            metrics,
        }
    }

    /// Its fleet metrics.
    pub fn scrape(&self) -> Metrics {
        let (status, body) = http_get(self.metrics, "/metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Its API as a URL.
    pub fn server(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `kill -9`: no chance to say goodbye to anyone.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "control plane log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
        }
    }
}
