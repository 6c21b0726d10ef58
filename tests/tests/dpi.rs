//! The offline classifier (`patronus-dataplane classify`) against the
//! labelled captures in `tests/corpus/dpi/`, scored by `scripts/dpi/score.py`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Flow accuracy the classifier must keep on the corpus (percent; the product
/// goal is 95, and the bar moves up with the classifier, never down).
const MIN_ACCURACY: f64 = 97.0;
/// Lowest per-category recall the classifier must keep (percent): the
/// product goal, 90 for every category.
const MIN_RECALL: f64 = 90.0;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn corpus() -> PathBuf {
    repo_root().join("tests/corpus/dpi")
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patronus-e2e-dpi-{tag}-{}", unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn classify(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(dataplane_bin())
        .arg("classify")
        .args(args)
        .output()
        .expect("run patronus-dataplane classify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn corpus_accuracy_meets_the_bar() {
    let dir = scratch_dir("corpus");
    let csv = dir.join("predictions.csv");
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(corpus().join("pcaps"))
        .expect("corpus present")
        .map(|e| e.unwrap().path())
        .collect();
    pcaps.sort();
    assert_eq!(pcaps.len(), 300, "the corpus holds 300 captures");
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["--csv".as_ref(), csv.as_os_str(), "--pcap".as_ref()];
    args.extend(pcaps.iter().map(|p| p.as_os_str()));
    let (code, stderr) = classify(&args);
    assert_eq!(code, 0, "classify failed: {stderr}");
    let header = std::fs::read_to_string(&csv).unwrap();
    assert!(
        header.starts_with("pcap,proto,addr_a,port_a,addr_b,port_b,category,application,method\n")
    );
    let score = Command::new("python3")
        .arg(repo_root().join("scripts/dpi/score.py"))
        .arg(corpus().join("labels.csv"))
        .arg(&csv)
        .args(["--min-accuracy", &MIN_ACCURACY.to_string()])
        .args(["--min-recall", &MIN_RECALL.to_string()])
        .output()
        .expect("run score.py");
    let report = String::from_utf8_lossy(&score.stdout);
    println!("{report}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        score.status.success(),
        "below the bar: {}\n{report}",
        String::from_utf8_lossy(&score.stderr)
    );
}

#[test]
fn unreadable_captures_are_reported_by_name() {
    let dir = scratch_dir("bad");
    let garbage = dir.join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").unwrap();
    let csv = dir.join("out.csv");
    let (code, stderr) = classify(&[
        "--csv".as_ref(),
        csv.as_os_str(),
        "--pcap".as_ref(),
        garbage.as_os_str(),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("garbage.pcap") && stderr.contains("neither pcap nor pcapng"),
        "{stderr}"
    );
    let missing = dir.join("missing.pcap");
    let (code, stderr) = classify(&[
        "--csv".as_ref(),
        csv.as_os_str(),
        "--pcap".as_ref(),
        missing.as_os_str(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.pcap: cannot open"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn user_applications_are_validated_whole() {
    let dir = scratch_dir("apps");
    let apps = dir.join("apps.toml");
    std::fs::write(
        &apps,
        "[[application]]\nname = \"Acme\"\ncategory = \"Database\"\npatterns = ['^ACME(']\n",
    )
    .unwrap();
    let pcap = corpus().join("pcaps/1kxun.pcap");
    let csv = dir.join("out.csv");
    let (code, stderr) = classify(&[
        "--applications".as_ref(),
        apps.as_os_str(),
        "--csv".as_ref(),
        csv.as_os_str(),
        "--pcap".as_ref(),
        pcap.as_os_str(),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("Acme") && stderr.contains("^ACME("),
        "{stderr}"
    );
    assert!(
        !csv.exists(),
        "nothing is written when the definitions are rejected"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
