//! `patronusctl` against the real server: apply is idempotent, changes are
//! applied, errors show the server's field violations, get and delete work.

mod common;

use std::process::Command;

const MANIFEST: &str = include_str!("data/production.yaml");

fn ctl(addr: &str, token: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patronusctl"))
        .args(["--server", &format!("http://{addr}"), "--token-file"])
        .arg(token)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apply_get_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let token = common::token_file(dir.path(), "patronusctl-test-token-42");
    let server = common::start(&dir.path().join("cp.redb"), Some(&token));
    let file = dir.path().join("site.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let f = file.to_str().unwrap();

    let (ok, out, err) = ctl(&server.addr, &token, &["apply", "-f", f]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "site/us-east-prod created\npeer/aws-vpc created\npolicy/video-low-latency created\n"
    );
    let (ok, out, _) = ctl(&server.addr, &token, &["apply", "-f", f]);
    assert!(ok);
    assert_eq!(
        out,
        "site/us-east-prod unchanged\npeer/aws-vpc unchanged\npolicy/video-low-latency unchanged\n"
    );

    std::fs::write(
        &file,
        MANIFEST.replace("compression: true", "compression: false"),
    )
    .unwrap();
    let (ok, out, _) = ctl(&server.addr, &token, &["apply", "-f", f]);
    assert!(ok);
    assert!(
        out.contains("peer/aws-vpc configured") && out.contains("site/us-east-prod unchanged"),
        "{out}"
    );

    let (ok, out, _) = ctl(&server.addr, &token, &["get", "peers"]);
    assert!(ok);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("NAME"));
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [
            "aws-vpc",
            "us-east-prod",
            "vpn.aws.example.com:51820",
            "false",
            "true"
        ]
    );

    // get -o yaml gives documents apply accepts unchanged.
    let (ok, yaml, _) = ctl(&server.addr, &token, &["get", "sites", "-o", "yaml"]);
    assert!(ok);
    assert!(
        yaml.contains("siteId: us-east-prod") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    std::fs::write(&file, &yaml).unwrap();
    let (ok, out, err) = ctl(&server.addr, &token, &["apply", "-f", f]);
    assert!(ok, "{err}");
    assert_eq!(out, "site/us-east-prod unchanged\n");
    let (ok, json, _) = ctl(
        &server.addr,
        &token,
        &["get", "policy", "video-low-latency", "-o", "json"],
    );
    assert!(
        ok && json.contains("\"strategy\": \"lowest-latency\""),
        "{json}"
    );

    // The server's field violations reach the user.
    std::fs::write(
        &file,
        MANIFEST.replace("port: 51820}\n  peers", "port: 0}\n  peers"),
    )
    .unwrap();
    let (ok, _, err) = ctl(&server.addr, &token, &["apply", "-f", f]);
    assert!(!ok);
    assert!(
        err.contains("site/us-east-prod")
            && err.contains("site.spec.tunnel_endpoint.port: must be 1-65535"),
        "{err}"
    );
    std::fs::write(&file, MANIFEST.replace("lowest-latency", "fastest")).unwrap();
    let (ok, _, err) = ctl(&server.addr, &token, &["apply", "-f", f]);
    assert!(
        !ok && err.contains("spec.rules[0].pathSelection.strategy"),
        "{err}"
    );

    let (ok, out, _) = ctl(
        &server.addr,
        &token,
        &["delete", "policy", "video-low-latency"],
    );
    assert!(ok && out.contains("deleted"));
    let (ok, _, err) = ctl(
        &server.addr,
        &token,
        &["get", "policy", "video-low-latency"],
    );
    assert!(!ok && err.contains("not found"), "{err}");

    // Without the token nothing is served.
    let (ok, _, err) = ctl(&server.addr, &dir.path().join("missing"), &["get", "sites"]);
    assert!(!ok && err.contains("missing"), "{err}");
}

#[test]
fn patronusctl_speaks_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| common::private_file(dir.path(), name, text);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["ops-laptop".into()]);
    let ca = write("ca.pem", &ca_pem);
    let args: Vec<std::ffi::OsString> = vec![
        "--tls-cert".into(),
        write("server.pem", &server_cert).into(),
        "--tls-key".into(),
        write("server-key.pem", &server_key).into(),
        "--tls-client-ca".into(),
        ca.clone().into(),
    ];
    let server = common::start_with(&dir.path().join("cp.redb"), &args);
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let run = |extra: &[&std::path::Path]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patronusctl"));
        cmd.args(["--server", &format!("https://localhost:{port}"), "--tls-ca"])
            .arg(&ca);
        if let [cert, key] = extra {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        cmd.args(["get", "sites"]).output().unwrap()
    };
    let (cert, key) = (
        write("client.pem", &client_cert),
        write("client-key.pem", &client_key),
    );
    let ok = run(&[&cert, &key]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("NAME"));
    assert!(
        !run(&[]).status.success(),
        "no client certificate, no service"
    );
}

#[test]
fn a_data_plane_token_and_a_viewer_token_get_only_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let admin = common::token_file(dir.path(), "patronusctl-admin-token-42");
    let write = |name: &str, text: &str| common::private_file(dir.path(), name, text);
    let viewer = write("viewer", "patronusctl-viewer-token-42\n");
    let key = write(
        "dataplane.key",
        "a-data-plane-key-of-at-least-32-characters\n",
    );
    let server = common::start_with(
        &dir.path().join("cp.redb"),
        &[
            "--token-file".into(),
            admin.clone().into(),
            "--viewer-token-file".into(),
            viewer.clone().into(),
            "--dataplane-key-file".into(),
            key.clone().into(),
        ],
    );
    let manifest = write("site.yaml", MANIFEST);
    let (ok, _, err) = ctl(
        &server.addr,
        &admin,
        &["apply", "-f", manifest.to_str().unwrap()],
    );
    assert!(ok, "{err}");

    // The viewer reads and may not write.
    let (ok, out, err) = ctl(&server.addr, &viewer, &["get", "sites"]);
    assert!(ok, "{err}");
    assert!(out.contains("us-east-prod"), "{out}");
    let (ok, _, err) = ctl(&server.addr, &viewer, &["delete", "site", "us-east-prod"]);
    assert!(!ok);
    assert!(err.contains("viewer role may not"), "{err}");

    // A site's token, made offline from the key, is a data plane's: no API.
    let made = Command::new(env!("CARGO_BIN_EXE_patronusctl"))
        .args(["dataplane-token", "us-east-prod", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8(made.stdout).unwrap();
    assert!(token.starts_with("pdp1.us-east-prod."), "{token}");
    let dataplane = write("dataplane.token", &token);
    let (ok, _, err) = ctl(&server.addr, &dataplane, &["get", "sites"]);
    assert!(!ok);
    assert!(err.contains("dataplane role may not"), "{err}");
}
