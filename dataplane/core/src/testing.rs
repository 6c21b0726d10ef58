//! Fixtures the unit tests of several modules share.

/// A private key file as `wg genkey` leaves it (mode 600), one per name.
/// The same name always holds the same key, so the file is rewritten by
/// every run (and by test threads and processes running at once) instead of
/// leaving a new one behind each time. It is written beside its final name
/// and renamed into place: a rewrite in place truncates the file first, and
/// a test reading it at that moment would find no key.
pub fn key_file(name: &str, key: [u8; 32]) -> std::path::PathBuf {
    use base64::Engine as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("patronus-test-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("private.key");
    let staging = dir.join(format!(
        "private.key.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .unwrap();
    file.write_all(
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .as_bytes(),
    )
    .unwrap();
    drop(file);
    std::fs::rename(&staging, &path).unwrap();
    path
}
