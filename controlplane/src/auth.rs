//! Bearer-token authentication of the public API.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

pub use patronus_proto::secrets::{read_secret, Readers};

/// Shortest token accepted (bytes).
pub const MIN_TOKEN_LEN: usize = 16;

/// The token clients must present as `authorization: Bearer <token>`.
/// Never logged or printed: Debug shows its length only.
#[derive(Clone)]
pub struct BearerToken(Arc<zeroize::Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken({} bytes)", self.0.len())
    }
}

impl BearerToken {
    /// A token from its text.
    pub fn new(token: &str) -> anyhow::Result<BearerToken> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the token must be at least {MIN_TOKEN_LEN} printable characters without spaces");
        }
        Ok(BearerToken(Arc::new(zeroize::Zeroizing::new(
            token.as_bytes().to_vec(),
        ))))
    }

    /// Reads the token from a file only its owner (and group) can read.
    pub fn from_file(path: &Path) -> anyhow::Result<BearerToken> {
        let text = read_secret(path, Readers::OwnerAndGroup)?;
        BearerToken::new(&text).with_context(|| path.display().to_string())
    }

    /// The token's text, for a client's authorization header. Never log it.
    pub fn reveal(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The interceptor check: UNAUTHENTICATED unless the request carries this token.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.verify(header)
            .map(|()| req)
            .map_err(Status::unauthenticated)
    }

    /// Whether an `authorization` header's value presents this token
    /// (compared in constant time); why not, when it does not.
    pub fn verify(&self, authorization: Option<&str>) -> Result<(), &'static str> {
        match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) if bool::from(t.as_bytes().ct_eq(&self.0)) => Ok(()),
            Some(_) => Err("invalid bearer token"),
            None => Err("missing bearer token (authorization: Bearer <token>)"),
        }
    }
}
