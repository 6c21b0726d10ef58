//! The control plane's database on a disk that fills up (a small tmpfs):
//! writes fail as UNAVAILABLE with a clear message, health goes NOT_SERVING
//! (gRPC and `/healthz`), no acknowledged write is lost, and once space is
//! freed the database is reopened and takes writes again, without a restart.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A tmpfs of `size` mounted on a fresh directory; unmounted and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("patronus-tmpfs-{}", unique_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// An application of about 200 KB, named `n`.
fn big_application(n: usize) -> String {
    let mut yaml = format!(
        "apiVersion: patronus.io/v1\nkind: Application\nmetadata: {{name: big-{n}}}\n\
         spec:\n  appName: Big{n}\n  category: Web\n  patterns:\n"
    );
    for i in 0..200 {
        yaml += &format!("    - \"^{n:03}{i:03}{}\"\n", "x".repeat(1000));
    }
    yaml
}

/// `patronusctl apply` of `yaml` (through a file outside the tmpfs).
fn apply(server: &str, token: &Path, yaml: &str) -> std::process::Output {
    let file = std::env::temp_dir().join(format!("patronus-storage-{}.yaml", unique_id()));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(binary("patronusctl"))
        .args(["--server", server, "--token-file"])
        .arg(token)
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    out
}

fn grpc_health(addr: &str, token: &Path) -> ServingStatus {
    let token = std::fs::read_to_string(token).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", token.trim()).parse().unwrap();
        let mut client =
            HealthClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            });
        let answer = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(answer.status).unwrap()
    })
}

#[test]
fn a_full_disk_is_unavailable_and_not_serving_loses_nothing_and_recovers() {
    require_root();
    let fs = Tmpfs::mount("8m");
    let token = std::env::temp_dir().join(format!("patronus-storage-token-{}", unique_id()));
    std::fs::write(&token, "storage-test-token-0123456789\n").unwrap();
    std::os::unix::fs::chown(&token, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cp = ControlPlane::start(&fs.0.join("cp.redb"), "127.0.0.1:0", &token);
    let server = cp.server();
    let healthz = || http_get(cp.metrics, "/healthz").0;
    assert_eq!(healthz(), 200);
    assert_eq!(grpc_health(&cp.addr, &token), ServingStatus::Serving);

    // Some writes land; then everything else on the disk is taken.
    let mut acknowledged = Vec::new();
    for n in 0..3 {
        let out = apply(&server, &token, &big_application(n));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        acknowledged.push(n);
    }
    let filler = fs.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }

    // Writes go on until the database cannot grow: that one is refused with
    // the cause, and every later one fails fast, saying why.
    let mut refusal = None;
    for n in 3..20 {
        let out = apply(&server, &token, &big_application(n));
        if out.status.success() {
            acknowledged.push(n);
        } else {
            refusal = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refusal = refusal.expect("a write failed on the full disk");
    assert!(refusal.contains("No space left on device"), "{refusal}");
    let again = apply(&server, &token, &big_application(99));
    let again = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(
        again.contains("the database is unavailable until it can be reopened"),
        "{again}"
    );
    assert_eq!(healthz(), 503);
    assert_eq!(grpc_health(&cp.addr, &token), ServingStatus::NotServing);

    // Space comes back: the database is reopened by itself, and serves.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || healthz() == 200),
        "the database was not reopened after space was freed"
    );
    assert_eq!(grpc_health(&cp.addr, &token), ServingStatus::Serving);
    let out = apply(&server, &token, &big_application(100));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    acknowledged.push(100);

    // Every acknowledged write is there, across a restart too.
    let listen = cp.addr.clone();
    cp.crash();
    let cp = ControlPlane::start(&fs.0.join("cp.redb"), &listen, &token);
    let list = Command::new(binary("patronusctl"))
        .args(["--server", &cp.server(), "--token-file"])
        .arg(&token)
        .args(["get", "applications"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    for n in acknowledged {
        assert!(
            listed.contains(&format!("big-{n}")),
            "big-{n} lost:\n{listed}"
        );
    }
    drop(cp);
    let _ = std::fs::remove_file(&token);
}
