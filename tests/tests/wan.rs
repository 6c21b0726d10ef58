//! `patronus-wan` between two hosts: h1 — veth — [w: patronus-wan] — veth —
//! h2, all in one subnet since the tool bridges at layer 2.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const H1: &str = "10.77.0.1";
const H2: &str = "10.77.0.2";

/// Creates a veth pair `a`/`b` and moves the ends into `ns_a` and `ns_b`
/// with offloads off (see `Link::new` in common) and the link up.
fn veth(a: &str, ns_a: &Netns, b: &str, ns_b: &Netns) {
    must(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
    // Removes the pair should a move fail; once moved, the namespaces own it.
    struct Leftover<'a>(&'a str);
    impl Drop for Leftover<'_> {
        fn drop(&mut self) {
            let _ = run(&["ip", "link", "del", self.0]);
        }
    }
    let _leftover = Leftover(a);
    must(&["ip", "link", "set", a, "netns", &ns_a.name]);
    must(&["ip", "link", "set", b, "netns", &ns_b.name]);
    for (ns, name) in [(ns_a, a), (ns_b, b)] {
        ns.exec(&[
            "ethtool", "-K", name, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ]);
        ns.exec(&["ip", "link", "set", name, "up"]);
    }
}

/// The tool running in a namespace, killed on drop if still running.
struct Wan {
    child: Option<Child>,
    control: PathBuf,
}

impl Wan {
    fn start(ns: &Netns, args: &[&str], control: PathBuf) -> Wan {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                env!("CARGO_BIN_EXE_patronus-wan"),
            ])
            .args(args)
            .arg("--control")
            .arg(&control)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start patronus-wan");
        // Its log shows with the test's output when the test fails.
        let log = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                eprintln!("  wan| {line}");
            }
        });
        let mut wan = Wan {
            child: Some(child),
            control,
        };
        // The control socket appears once both interfaces are open.
        let up = eventually(Duration::from_secs(10), || {
            assert!(
                wan.child.as_mut().unwrap().try_wait().unwrap().is_none(),
                "patronus-wan exited at start"
            );
            UnixStream::connect(&wan.control).is_ok()
        });
        assert!(up, "no control socket at {}", wan.control.display());
        wan
    }

    /// Sends one control command and returns the reply line.
    fn command(&self, line: &str) -> String {
        let mut stream = UnixStream::connect(&self.control).expect("connect to control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        writeln!(stream, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        reply.trim().to_owned()
    }

    /// Sends SIGTERM and returns whether it exited 0 within 10 s.
    fn stop(&mut self) -> bool {
        let mut child = self.child.take().expect("running");
        must(&["kill", "-TERM", &child.id().to_string()]);
        let exited = eventually(Duration::from_secs(10), || {
            child.try_wait().unwrap().is_some()
        });
        if !exited {
            let _ = child.kill();
        }
        child.wait().unwrap().success() && exited
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.control);
    }
}

/// The average of ping's `rtt min/avg/max/mdev = …` line, in milliseconds.
fn average_rtt(ping_output: &str) -> f64 {
    let line = ping_output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no summary in:\n{ping_output}"));
    let values = line.split('=').nth(1).expect("values after =").trim();
    values
        .split('/')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no average in {line:?}"))
}

fn ping_once(from: &Netns, to: &str) -> bool {
    from.try_exec(&["ping", "-c", "1", "-W", "1", to])
        .status
        .success()
}

#[test]
fn delays_blackholes_and_restores_a_bridged_link() {
    require_root();
    let id = unique_id();
    let h1 = Netns::new(format!("pwh1{id}"));
    let h2 = Netns::new(format!("pwh2{id}"));
    let w = Netns::new(format!("pww{id}"));
    let (h1_if, wa, wb, h2_if) = (
        format!("pw1{id}"),
        format!("pwa{id}"),
        format!("pwb{id}"),
        format!("pw2{id}"),
    );
    veth(&h1_if, &h1, &wa, &w);
    veth(&wb, &w, &h2_if, &h2);
    // The bridge's own namespace stays silent on its interfaces.
    for name in [&wa, &wb] {
        w.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{name}.disable_ipv6=1"),
        ]);
    }
    h1.exec(&["ip", "addr", "add", &format!("{H1}/24"), "dev", &h1_if]);
    h2.exec(&["ip", "addr", "add", &format!("{H2}/24"), "dev", &h2_if]);

    let control = std::env::temp_dir().join(format!("patronus-wan-{id}.sock"));
    let mut wan = Wan::start(
        &w,
        &[
            "--a",
            &wa,
            "--b",
            &wb,
            "--seed",
            "7",
            "--both",
            "delay=20ms",
        ],
        control,
    );

    // Resolves ARP first, so that its round trip stays out of the average.
    assert!(
        eventually(Duration::from_secs(5), || ping_once(&h1, H2)),
        "no answer through the bridge"
    );
    let out = h1.exec(&["ping", "-c", "20", "-i", "0.05", "-q", H2]);
    let rtt = average_rtt(&out);
    eprintln!("average RTT {rtt} ms");
    assert!(
        (35.0..=45.0).contains(&rtt),
        "average RTT {rtt} ms with 20 ms each way:\n{out}"
    );

    assert_eq!(wan.command("set both loss=0 delay=0 blackhole=on"), "ok");
    let dead = h1.try_exec(&["ping", "-c", "5", "-i", "0.2", "-W", "1", H2]);
    assert!(
        !dead.status.success(),
        "ping passed a blackhole:\n{}",
        String::from_utf8_lossy(&dead.stdout)
    );
    let stats = wan.command("stats");
    let blackholed: u64 = stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("a2b.blackhole="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no a2b.blackhole in {stats:?}"));
    assert!(blackholed >= 5, "{stats}");

    assert!(wan
        .command("set both jitter=fast")
        .starts_with("error: jitter"));
    assert_eq!(wan.command("set both blackhole=off"), "ok");
    assert!(
        eventually(Duration::from_secs(5), || ping_once(&h1, H2)),
        "no answer once the blackhole is lifted"
    );

    assert!(wan.stop(), "patronus-wan did not exit 0 on SIGTERM");
}
