//! Fixtures the unit tests of several modules share.

/// A private key file as `wg genkey` leaves it (mode 600), one per name.
/// The same name always holds the same key, so the file is rewritten in
/// place by every run (and by test processes running at once) instead of
/// leaving a new one behind each time.
pub fn key_file(name: &str, key: [u8; 32]) -> std::path::PathBuf {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("patronus-test-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("private.key");
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode(key)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
