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
        let port = port.unwrap_or_else(|| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let user = Command::new("id").arg("-un").output().unwrap().stdout;
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("dnsmasq");
                c
            }
            None => Command::new("dnsmasq"),
        };
        let child = command
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
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian's dnsmasq-base, installed by scripts/setup.sh)");
        Dnsmasq {
            child,
            hosts: file,
            dir,
            port,
        }
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
