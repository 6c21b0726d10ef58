//! Starting the real `patronus-controlplane` binary for a test.
#![allow(dead_code)] // each test binary uses its own subset

pub mod etcd;
pub mod fixtures;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server; killed (SIGKILL) when dropped.
pub struct Running {
    /// The process.
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// `host:port` of its `/metrics`.
    pub metrics: String,
    /// Its latest log lines, shown when a test fails.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Log lines of a server kept for a failing test's report.
const LOG_KEPT: usize = 400;

impl Running {
    /// Its `/metrics` text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for line in self.log.lock().unwrap().iter() {
                eprintln!("  controlplane {}| {line}", self.addr);
            }
        }
    }
}

/// Starts the server on an ephemeral loopback port with database `db`.
pub fn start(db: &Path, token_file: Option<&Path>) -> Running {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(t) = token_file {
        args.extend(["--token-file".into(), t.into()]);
    }
    start_with(db, &args)
}

/// Starts the server with extra arguments.
pub fn start_with(db: &Path, extra: &[std::ffi::OsString]) -> Running {
    let mut args = store_args(db);
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Starts the server on the redb file `db`, whichever backend the tests run on.
pub fn start_on_file(db: &Path) -> Running {
    spawn(&["--db".into(), db.into()])
}

/// Whether the tests run on etcd (`PATRONUS_TEST_STORE=etcd`) rather than
/// on the redb file: the same tests, on either backend.
pub fn on_etcd() -> bool {
    std::env::var("PATRONUS_TEST_STORE").as_deref() == Ok("etcd")
}

/// The arguments that keep a control plane's state at `db`: the file, or
/// on etcd a key prefix named after it (the same path finds the same
/// state again after a restart; another path is another store).
pub fn store_args(db: &Path) -> Vec<std::ffi::OsString> {
    if on_etcd() {
        vec![
            "--store".into(),
            etcd::shared().into(),
            "--etcd-prefix".into(),
            etcd_prefix(db).into(),
        ]
    } else {
        vec!["--db".into(), db.into()]
    }
}

fn etcd_prefix(db: &Path) -> String {
    format!("/t{}/", db.display())
}

/// Opens the store at `db` in this process, as [`store_args`] places it.
pub async fn open_store(db: &Path) -> patronus_controlplane::store::Store {
    use patronus_controlplane::store::{etcd::Settings, Location, Store};
    if on_etcd() {
        let Ok(Location::Etcd(endpoints)) = etcd::shared().parse() else {
            unreachable!("the shared cluster's argument names etcd")
        };
        let settings = Settings {
            prefix: etcd_prefix(db),
            ..Settings::new(endpoints)
        };
        return Store::open_etcd(settings).await.unwrap();
    }
    // A stopped server's writer thread lets go of the file a moment after the server stops.
    let mut attempts = 0;
    loop {
        match Store::open_redb(db) {
            Ok(store) => return store,
            Err(_) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Starts the server on the store `store` names (`etcd:URLS`), with extra arguments.
pub fn start_on(store: &str, extra: &[&str]) -> Running {
    let mut args: Vec<std::ffi::OsString> = vec!["--store".into(), store.into()];
    args.extend(extra.iter().map(Into::into));
    spawn(&args)
}

/// Starts the server on ephemeral loopback ports with `args`.
fn spawn(args: &[std::ffi::OsString]) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patronus-controlplane"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args);
    let mut child = cmd
        .env("RUST_LOG", "info,patronus_controlplane=debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start patronus-controlplane");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            {
                let mut kept = kept.lock().unwrap();
                if kept.len() == LOG_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line.clone());
            }
            let addr = line
                .split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
            if line.contains("fleet metrics listening") {
                let _ = tx.send((false, addr));
            } else if line.contains("control plane listening") {
                let _ = tx.send((true, addr));
            }
        }
    });
    let (mut addr, mut metrics) = (String::new(), String::new());
    while addr.is_empty() {
        let (api, listening) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server listening");
        if api {
            addr = listening;
        } else {
            metrics = listening;
        }
    }
    Running {
        child,
        addr,
        metrics,
        log,
    }
}

/// Writes a token file only its owner can read.
pub fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    private_file(dir, "token", &format!("{token}\n"))
}

/// Writes `text` to `dir/name`, readable by its owner only (mode 600).
pub fn private_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}
