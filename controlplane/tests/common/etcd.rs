//! A real etcd cluster (Debian's `etcd-server`) on loopback for a test:
//! members on free ports, in a temporary directory, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server.
const ETCD: &str = "/usr/bin/etcd";

/// Whether etcd is installed; tests that need it say so when it is not.
pub fn installed() -> bool {
    std::path::Path::new(ETCD).exists()
}

/// First port of the range members' ports come from: below the kernel's
/// ephemeral range (32768 and up), which `bind(0)` draws from, so that a
/// server starting on an ephemeral port meanwhile cannot take a port chosen
/// here before its member binds it.
const PORTS_FROM: u16 = 10_000;
/// Ports each test process takes its members' from.
const PORTS_PER_PROCESS: u16 = 200;

/// A loopback port free now, for a member to bind: from this process's
/// window of the range, in turn, skipping any in use.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let windows = (32_768 - PORTS_FROM) / PORTS_PER_PROCESS;
    let base = PORTS_FROM + (std::process::id() % u32::from(windows)) as u16 * PORTS_PER_PROCESS;
    for _ in 0..PORTS_PER_PROCESS {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % PORTS_PER_PROCESS;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + PORTS_PER_PROCESS)
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// TLS for a cluster's clients, as PEM text: the members serve `server`
/// and require a client certificate from `ca`; `client` is one.
#[derive(Clone)]
pub struct Tls {
    /// The CA of both sides.
    pub ca: String,
    /// The members' certificate (for 127.0.0.1) and key.
    pub server: (String, String),
    /// A client's certificate and key.
    pub client: (String, String),
}

/// A running cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
    tls: Option<Tls>,
}

impl Cluster {
    /// Starts `size` members and waits until the cluster takes writes.
    pub async fn start(size: usize) -> Cluster {
        Cluster::start_with(size, None).await
    }

    /// [`Cluster::start`], serving clients over TLS when `tls` is given.
    pub async fn start_with(size: usize, tls: Option<Tls>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("patronus-test-{}", uuid_like());
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            token,
            members,
            tls,
        };
        for i in 0..size {
            cluster.run(i);
        }
        cluster.wait_for_quorum().await;
        cluster
    }

    /// The `etcd:` store argument naming every member.
    pub fn store_arg(&self) -> String {
        format!("etcd:{}", self.endpoints().join(","))
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A file in the cluster's directory holding `text`, readable by its owner only.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// How a client connects: TLS with the client certificate, when the cluster has TLS.
    fn options(&self) -> etcd_client::ConnectOptions {
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca))
                    .identity(etcd_client::Identity::from_pem(
                        &tls.client.0,
                        &tls.client.1,
                    )),
            );
        }
        options
    }

    fn run(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(tls) = self.tls.clone() {
            tls_args = vec![
                "--cert-file".into(),
                self.file("server.crt", &tls.server.0).into(),
                "--key-file".into(),
                self.file("server.key", &tls.server.1).into(),
                "--trusted-ca-file".into(),
                self.file("ca.crt", &tls.ca).into(),
                "--client-cert-auth".into(),
            ];
        }
        let member = &self.members[i];
        let data: PathBuf = self.dir.path().join(&member.name);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log =
            std::fs::File::create(self.dir.path().join(format!("{}.log", member.name))).unwrap();
        let child = Command::new(ETCD)
            .args(["--name", &member.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &self.token,
                // Elections in tens of milliseconds: a test waits less for a leader.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .args(tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.run(i);
    }

    /// A client of the cluster.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), Some(self.options()))
            .await
            .unwrap()
    }

    /// Waits until a write through the cluster succeeds.
    pub async fn wait_for_quorum(&self) {
        takes_writes(self.endpoints(), self.options()).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A token unique to this run, for the cluster and key prefixes.
pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The store argument (`etcd:URL`) of one etcd member shared by every test
/// of this process, started on first use. It runs under a shell that reads
/// this process's end of a pipe (the guard's stdin, never closed before):
/// when the process exits, however it exits,
/// the pipe closes and the shell kills the member and removes its data.
pub fn shared() -> String {
    static SHARED: std::sync::OnceLock<(String, std::sync::Mutex<Child>)> =
        std::sync::OnceLock::new();
    let (arg, _guard) = SHARED.get_or_init(|| {
        assert!(
            installed(),
            "PATRONUS_TEST_STORE=etcd needs etcd: scripts/setup.sh installs etcd-server"
        );
        let dir = tempfile::Builder::new()
            .prefix("patronus-test-etcd-")
            .tempdir()
            .unwrap()
            .keep();
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let script = r#"dir=$1; shift
"$@" </dev/null >"$dir.log" 2>&1 &
member=$!
cat >/dev/null
kill -9 "$member" 2>/dev/null
wait "$member" 2>/dev/null
rm -rf "$dir" "$dir.log""#;
        let guard = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&dir)
            .arg(ETCD)
            .args(["--name", "shared", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("shared={peer_url}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        // Waited for on a thread of its own: the caller may be inside a runtime.
        let url = client_url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(takes_writes(vec![url], etcd_client::ConnectOptions::new()))
        })
        .join()
        .unwrap();
        (format!("etcd:{client_url}"), std::sync::Mutex::new(guard))
    });
    arg.clone()
}

/// Waits until a write through `endpoints` succeeds.
async fn takes_writes(endpoints: Vec<String>, options: etcd_client::ConnectOptions) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let options = options
        .with_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    loop {
        if let Ok(mut client) =
            etcd_client::Client::connect(&endpoints, Some(options.clone())).await
        {
            if client.put("/test/quorum", "1", None).await.is_ok() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "etcd at {endpoints:?} takes no writes after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
