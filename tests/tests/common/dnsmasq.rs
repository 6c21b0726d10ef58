//! A real DNS server for tests: dnsmasq (Debian's dnsmasq-base) on a
//! loopback port, answering from a hosts file. Self-contained (std only):
//! the data plane's resolver tests include this file too.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// dnsmasq answering from a hosts file with a TTL of one second; killed
/// (and its files removed) when dropped.
pub struct Dnsmasq {
    child: Child,
    hosts: PathBuf,
    dir: PathBuf,
    /// The UDP port it answers on.
    pub port: u16,
}

impl Dnsmasq {
    /// Starts it on 127.0.0.1, a free port, serving `hosts` (lines of `address name`).
    pub fn start(hosts: &str) -> Dnsmasq {
        Dnsmasq::start_in(&[], "127.0.0.1", None, hosts)
    }

    /// Starts it through `prefix` (`ip netns exec NAME`, or nothing) on
    /// `listen`, at `port` (None: a free one), serving `hosts`.
    pub fn start_in(prefix: &[&str], listen: &str, port: Option<u16>, hosts: &str) -> Dnsmasq {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "patronus-dns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let Some(port) = port else {
            // A free port of our choosing: one the kernel handed out as
            // ephemeral could be handed to another socket (the resolver's
            // own) before dnsmasq binds it, and dnsmasq would then exit.
            // Below Linux's ephemeral range, and tried again elsewhere if
            // dnsmasq could not bind it after all.
            for attempt in 0..20u16 {
                let seed = std::process::id() as u16 ^ (NEXT.load(Ordering::Relaxed) as u16);
                let port = 20_000 + (seed.wrapping_mul(7919).wrapping_add(attempt * 613)) % 12_000;
                if std::net::UdpSocket::bind((listen, port)).is_err() {
                    continue;
                }
                if let Some(dns) = Dnsmasq::spawn(prefix, listen, port, &file, &dir) {
                    return dns;
                }
            }
            panic!("dnsmasq could not bind a free port on {listen}");
        };
        Dnsmasq::spawn(prefix, listen, port, &file, &dir)
            .unwrap_or_else(|| panic!("dnsmasq could not bind {listen}:{port}"))
    }

    /// Runs dnsmasq and waits until it says it started (its sockets are
    /// bound by then); None when it exits first (it could not bind the port).
    fn spawn(
        prefix: &[&str],
        listen: &str,
        port: u16,
        file: &std::path::Path,
        dir: &std::path::Path,
    ) -> Option<Dnsmasq> {
        let user = Command::new("id").arg("-un").output().unwrap().stdout;
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("dnsmasq");
                c
            }
            None => Command::new("dnsmasq"),
        };
        let mut child = command
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--pid-file=",
                "--log-facility=-",
            ])
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--user={}", String::from_utf8_lossy(&user).trim()))
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq (Debian's dnsmasq-base, installed by scripts/setup.sh)");
        // Its log (`--log-facility=-`) says "started" once it has bound its
        // sockets; read to the end, so that it never blocks on a full pipe.
        let log = child.stderr.take().expect("stderr is piped");
        let (started, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut started = Some(started);
            for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
                if line.contains("started, version") {
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                }
            }
        });
        // Exited before starting: the channel closes with no word. The
        // files stay for the next attempt.
        if said
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_err()
        {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Dnsmasq {
            child,
            hosts: file.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
        })
    }

    /// Serves `hosts` from now on (dnsmasq rereads it on SIGHUP).
    pub fn serve(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let hup = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success(), "kill -HUP dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
