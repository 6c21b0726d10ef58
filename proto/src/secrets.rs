//! Secret files (tokens, private keys): who may read them besides their owner.

use std::path::Path;

use anyhow::{bail, Context as _};

/// Who besides its owner may read a secret file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Nobody: mode 600 or 400. For private keys of long-lived identities.
    OwnerOnly,
    /// The file's group may read it too (440 or 640): Kubernetes mounts a
    /// Secret that way for a pod that runs as non-root with an `fsGroup`.
    OwnerAndGroup,
}

/// Reads a secret (a token, a private key) from a file that others may not
/// read, nor, unless `readers` allows it, its group.
pub fn read_secret(path: &Path, readers: Readers) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .permissions()
        .mode();
    let (forbidden, advice, whom) = match readers {
        Readers::OwnerOnly => (0o077, "chmod 600 it", "group or others"),
        Readers::OwnerAndGroup => (0o037, "chmod 640 it", "others (or writable by group)"),
    };
    if mode & forbidden != 0 {
        bail!(
            "{}: readable by {whom} (mode {:o}); {advice}",
            path.display(),
            mode & 0o777
        );
    }
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .with_context(|| format!("{}: cannot read", path.display()))
}
