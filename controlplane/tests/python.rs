//! The wire API is usable from another implementation: a Python grpcio
//! client (`tests/python/client.py`) with stubs generated from our .proto
//! files talks to the real server binary.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_python_grpcio_client_uses_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let token = common::token_file(dir.path(), "python-client-token-0123");
    let server = common::start(&dir.path().join("cp.redb"), Some(&token));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/python/client.py"))
        .arg(&server.addr)
        .arg(root.join("../proto"))
        .arg("python-client-token-0123")
        .output()
        .expect("python3");
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "python client failed (scripts/test.sh installs grpcio, grpcio-tools, grpcio-health-checking, \
         grpcio-reflection and grpcio-status from PyPI):\n{stdout}\n{stderr}"
    );
}
