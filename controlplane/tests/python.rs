//! The wire API is usable from another implementation: a Python grpcio
//! client (`tests/python/client.py`) with stubs generated from our .proto
//! files talks to the real server binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn a_python_grpcio_client_uses_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "python-client-token-0123\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_patronus-controlplane"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("cp.redb"))
        .arg("--token-file")
        .arg(&token_file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/python/client.py"))
        .arg(&addr)
        .arg(root.join("../proto"))
        .arg("python-client-token-0123")
        .output()
        .expect("python3");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "python client failed (scripts/test.sh installs grpcio, grpcio-tools, grpcio-health-checking, \
         grpcio-reflection and grpcio-status from PyPI):\n{stdout}\n{stderr}"
    );
}
