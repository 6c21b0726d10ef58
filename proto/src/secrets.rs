//! Secret files (tokens, private keys): who may read them besides their
//! owner; and the key that makes each site's data-plane token.

use std::path::Path;

use anyhow::{bail, Context as _};
use base64::Engine as _;

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

/// The prefix of a data plane's token.
const DATAPLANE_TOKEN_PREFIX: &str = "pdp1.";

/// The key that makes and checks the data planes' per-site tokens.
/// Never logged: Debug shows nothing of it.
#[derive(Clone)]
pub struct DataplaneKey(ring::hmac::Key);

impl std::fmt::Debug for DataplaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneKey")
    }
}

impl DataplaneKey {
    /// A key from its text (at least 32 printable characters).
    pub fn new(text: &str) -> anyhow::Result<DataplaneKey> {
        let text = zeroize::Zeroizing::new(text.trim().to_owned());
        if text.len() < 32 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the data-plane key must be at least 32 printable characters without spaces");
        }
        Ok(DataplaneKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            text.as_bytes(),
        )))
    }

    /// Reads the key from a file only its owner (and group) can read.
    pub fn from_file(path: &Path) -> anyhow::Result<DataplaneKey> {
        let text = read_secret(path, Readers::OwnerAndGroup)?;
        DataplaneKey::new(&text).with_context(|| path.display().to_string())
    }

    /// The token of the data planes of `site_id`. A secret: never log it.
    pub fn token_for(&self, site_id: &str) -> String {
        let tag = ring::hmac::sign(&self.0, site_id.as_bytes());
        format!(
            "{DATAPLANE_TOKEN_PREFIX}{site_id}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The site whose token `token` is, if it is one (checked in constant time).
    pub fn site_of(&self, token: &str) -> Option<String> {
        let rest = token.strip_prefix(DATAPLANE_TOKEN_PREFIX)?;
        let (site, tag) = rest.rsplit_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        ring::hmac::verify(&self.0, site.as_bytes(), &tag).ok()?;
        Some(site.to_owned())
    }
}
