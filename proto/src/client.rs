//! Connecting to the control plane: what patronusctl and the data-plane
//! agent share. Clear text or TLS (with a client certificate for servers
//! that require mutual TLS), and the bearer token on every call.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::secrets::{read_secret, Readers};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// Where the control plane is and how to prove who we are.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `http://host:port` or `https://host:port`.
    pub server: String,
    /// File holding the bearer token (mode 600, or 640 for a Kubernetes Secret).
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the server's certificate must chain to; required for https.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; mode 600).
    pub tls_key: Option<PathBuf>,
    /// Sends the bearer token over clear text (`http://`) to a server that
    /// is not on loopback, which is otherwise refused.
    pub insecure: bool,
}

impl ClientOptions {
    /// Reads the files once and returns the endpoint to connect (and
    /// reconnect) to, with the interceptor that authenticates each call.
    ///
    /// # Errors
    /// A malformed address, an https server without a CA, a token for a
    /// clear-text server off loopback without `insecure`, or an unreadable
    /// or too widely readable secret file.
    pub fn endpoint(&self) -> anyhow::Result<(Endpoint, Authorization)> {
        let header = match &self.token_file {
            Some(path) => {
                let token = read_secret(path, Readers::OwnerAndGroup)?;
                let token = token.trim();
                if token.is_empty() {
                    bail!("{}: the token file is empty", path.display());
                }
                let text = zeroize::Zeroizing::new(format!("Bearer {token}"));
                let mut value: MetadataValue<Ascii> = text.parse().map_err(|_| {
                    anyhow::anyhow!("{}: the token is not a valid header value", path.display())
                })?;
                // Never indexed by HTTP/2 header compression (HPACK).
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut endpoint = Endpoint::from_shared(self.server.clone()).with_context(|| {
            format!(
                "{}: not a server address (http://host:port or https://host:port)",
                self.server
            )
        })?;
        if self.server.starts_with("https://") {
            let Some(ca) = &self.tls_ca else {
                bail!(
                    "an https:// server needs a CA certificate (the CA its certificate chains to)"
                );
            };
            let ca = std::fs::read_to_string(ca)
                .with_context(|| format!("{}: cannot read", ca.display()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                let cert = std::fs::read_to_string(cert)
                    .with_context(|| format!("{}: cannot read", cert.display()))?;
                let key = read_secret(key, Readers::OwnerAndGroup)?;
                tls = tls.identity(Identity::from_pem(cert, key.as_bytes()));
            }
            endpoint = endpoint.tls_config(tls)?;
        } else if self.tls_cert.is_some() {
            bail!(
                "{}: a client certificate needs an https:// server",
                self.server
            );
        } else if header.is_some() && !self.insecure && !is_loopback(endpoint.uri().host()) {
            bail!(
                "{}: refusing to send the bearer token in clear text off this host; use an \
                 https:// server, or allow it explicitly (--insecure, or `insecure = true` \
                 in [controlplane])",
                self.server
            );
        }
        Ok((endpoint, Authorization(header)))
    }
}

/// Whether `host` (from a URI) is this host: `localhost` or a loopback
/// address.
fn is_loopback(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Adds the bearer token to every call. Debug never shows the token.
#[derive(Clone)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.is_some() {
            "bearer token"
        } else {
            "none"
        };
        write!(f, "Authorization({state})")
    }
}

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own holding a token file (mode 600) with `token`.
    fn token_file(name: &str, token: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("patronus-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, token).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, path)
    }

    #[test]
    fn the_token_goes_out_as_a_sensitive_header_and_never_in_debug() {
        let (dir, path) = token_file("client", "s3cret-token-0123456789\n");
        let options = ClientOptions {
            server: "http://127.0.0.1:1".into(),
            token_file: Some(path),
            ..ClientOptions::default()
        };
        let (_, mut auth) = options.endpoint().unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
        let req = tonic::service::Interceptor::call(&mut auth, Request::new(())).unwrap();
        let header = req.metadata().get("authorization").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer s3cret-token-0123456789");
        assert!(header.is_sensitive(), "HPACK must not index it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_goes_in_clear_text_only_to_loopback_unless_allowed() {
        let (dir, path) = token_file("clear", "t0ken\n");
        let options = |server: &str, token: bool, insecure: bool| ClientOptions {
            server: server.into(),
            token_file: token.then(|| path.clone()),
            insecure,
            ..ClientOptions::default()
        };
        for server in [
            "http://127.0.0.1:50051",
            "http://127.9.9.9:50051",
            "http://[::1]:50051",
            "http://localhost:50051",
        ] {
            assert!(options(server, true, false).endpoint().is_ok(), "{server}");
        }
        for server in [
            "http://10.0.0.1:50051",
            "http://[fd00::1]:50051",
            "http://patronus-controlplane:50051",
        ] {
            let error = options(server, true, false).endpoint().unwrap_err();
            assert!(
                error.to_string().contains("--insecure"),
                "{server}: {error}"
            );
            assert!(options(server, true, true).endpoint().is_ok(), "{server}");
            assert!(
                options(server, false, false).endpoint().is_ok(),
                "{server}: no token"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
