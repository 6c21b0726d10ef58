//! The binary refuses invalid configurations with one message naming the field.

mod common;

use std::process::Command;

use common::*;

fn run_with(config: &str, extra: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("patronus-e2e-cfg-{}", unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(dataplane_bin())
        .arg("--config")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run patronus-dataplane");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PORTS: &str = r#"
[[port]]
name = "lan"
device = "net_null0"
addresses = ["10.0.0.1/24"]
"#;

#[test]
fn invalid_configs_are_rejected_naming_the_field() {
    let cases = [
        ("[worker]\nflow_capacity = 0\n", "worker.flow_capacity"),
        (
            "[[route]]\nprefix = \"10.9.0.0/16\"\nvia = \"10.7.0.1\"\n",
            "route[0].via",
        ),
        (
            "[[route]]\nprefix = \"10.9.0.0/16\"\nport = \"wan\"\n",
            "route[0].port",
        ),
        ("[metrics]\nlisten = \"everywhere\"\n", "metrics.listen"),
        ("[worker]\nflow_capacity = \"lots\"\n", "flow_capacity"),
        ("[wroker]\nflow_capacity = 5\n", "wroker"),
        ("[dpi]\nmax_packets = 0\n", "dpi.max_packets"),
        (
            "[[dpi.application]]\nname = \"Acme\"\ncategory = \"Gaming\"\npatterns = ['^ACME(']\n",
            "dpi.application[0].patterns",
        ),
        (
            "[[dpi.application]]\nname = \"Acme\"\ncategory = \"Gaming\"\nhosts = [\"not a host\"]\n",
            "dpi.application[0].hosts",
        ),
        (
            "[[dpi.application]]\nname = \"Acme\"\ncategory = \"Fun\"\nhosts = [\"acme.example\"]\n",
            "category",
        ),
    ];
    for (extra, field) in cases {
        let (code, stderr) = run_with(&format!("{PORTS}{extra}"), &["--check"]);
        assert_eq!(code, 2, "exit status for {extra:?}: {stderr}");
        assert!(
            stderr.contains("invalid config") && stderr.contains(field),
            "{field} not named in: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    }
    let (code, stderr) = run_with(
        "[[port]]\nname = \"lan\"\ndevice = \"x\"\naddresses = [\"10.0.0.1/33\"]\n",
        &["--check"],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("port[0].addresses[0]"), "{stderr}");
    let (code, _) = run_with(PORTS, &["--check"]);
    assert_eq!(code, 0, "the valid base passes");
}

#[test]
fn missing_device_fails_at_start_naming_the_port() {
    require_root();
    let prefix = format!("ptc{}", unique_id());
    let config = format!(
        "[dpdk]\neal_args = [\"-l\", \"0-1\", \"--no-pci\", {}, \"--vdev\", \"net_null0\"]\n[metrics]\nlisten = \"\"\n\
         [[port]]\nname = \"lan\"\ndevice = \"net_null0\"\n[[port]]\nname = \"wan\"\ndevice = \"net_null7\"\n",
        eal_memory(&prefix)
    );
    let (code, stderr) = run_with(&config, &[]);
    remove_runtime_dir(&prefix);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("port \"wan\"") && stderr.contains("net_null7"),
        "{stderr}"
    );
}

#[test]
fn a_metrics_address_in_use_stops_the_workers_and_fails_naming_it() {
    // The metrics endpoint starts after the workers: when it cannot, the
    // workers stop before the ports close, and the process says why.
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let prefix = format!("ptc{}", unique_id());
    let config = format!(
        "[dpdk]\neal_args = [\"-l\", \"0-1\", \"--no-pci\", {}, \"--vdev\", \"net_null0\"]\n\
         [metrics]\nlisten = \"{address}\"\n{PORTS}",
        eal_memory(&prefix)
    );
    let (code, stderr) = run_with(&config, &[]);
    remove_runtime_dir(&prefix);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&address.to_string()), "{stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");
}
