//! Who a caller is, and what it may do.
//!
//! Three roles: *admin* (the whole API), *viewer* (the API's reads and the
//! event feed) and *data plane of site X* (`DataplaneSync` for site X, and
//! nothing else). Admin and viewer present a bearer token each. A data
//! plane presents its site's token, `pdp1.<site_id>.<mac>`, where the mac is
//! HMAC-SHA256 over the site id under the control plane's data-plane key
//! (so the control plane keeps no per-site state and whoever holds the key,
//! the operator, can make a site's token without asking), or a client
//! certificate naming its site (URI SAN `spiffe://patronus/site/<site_id>`)
//! under mutual TLS. A server configured with no token and no key is open:
//! every caller is admin, except that a certificate naming a site still
//! makes its holder that site's data plane only.

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

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// The API's reads and the event feed.
    Viewer,
    /// `DataplaneSync` for this site only.
    Dataplane(String),
}

impl Role {
    /// The role's name in metrics and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Dataplane(_) => "dataplane",
        }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A read of the API (get, list, the event feed, status).
    Read,
    /// A write of the API.
    Write,
}

/// The URI SAN prefix of a data plane's certificate; the site id follows.
pub const DATAPLANE_CERT_URI: &str = "spiffe://patronus/site/";

pub use patronus_proto::secrets::DataplaneKey;

/// Recognises callers: their bearer token, or their client certificate.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    /// The admin token.
    pub admin: Option<BearerToken>,
    /// The viewer token.
    pub viewer: Option<BearerToken>,
    /// The key of the data planes' tokens.
    pub dataplanes: Option<DataplaneKey>,
}

impl Authenticator {
    /// Whether any credential is configured (otherwise the server is open).
    fn closed(&self) -> bool {
        self.admin.is_some() || self.viewer.is_some() || self.dataplanes.is_some()
    }

    /// The interceptor: the caller's [`Role`] goes into the request's
    /// extensions; UNAUTHENTICATED when it has none.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn authenticate(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let role = self.role_of(&req)?;
        req.extensions_mut().insert(role);
        Ok(req)
    }

    #[allow(clippy::result_large_err)]
    fn role_of(&self, req: &Request<()>) -> Result<Role, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) {
            if let Some(site) = self.dataplanes.as_ref().and_then(|k| k.site_of(token)) {
                return Ok(Role::Dataplane(site));
            }
            for (known, role) in [(&self.admin, Role::Admin), (&self.viewer, Role::Viewer)] {
                if known.as_ref().is_some_and(|t| t.verify(header).is_ok()) {
                    return Ok(role);
                }
            }
            if self.closed() {
                return Err(Status::unauthenticated("invalid bearer token"));
            }
        }
        if let Some(site) = certified_site(req) {
            return Ok(Role::Dataplane(site));
        }
        if self.closed() {
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>) or data-plane certificate",
            ));
        }
        Ok(Role::Admin)
    }
}

/// The site a verified client certificate names in a URI SAN
/// ([`DATAPLANE_CERT_URI`]), if any.
fn certified_site(req: &Request<()>) -> Option<String> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix(DATAPLANE_CERT_URI)
            .filter(|site| crate::validate::is_dns_label(site))
            .map(str::to_owned),
        _ => None,
    })
}

/// The role the interceptor found for `req`.
#[allow(clippy::result_large_err)]
pub fn caller<T>(req: &Request<T>) -> Result<Role, Status> {
    // Every service is behind the interceptor: no role means a wiring bug,
    // which must not open anything.
    req.extensions()
        .get::<Role>()
        .cloned()
        .ok_or_else(|| Status::internal("the caller was not authenticated"))
}

/// Lets `role` read or write the API, or says why not.
pub fn authorize_api(role: &Role, access: Access) -> Result<(), Denied> {
    match (role, access) {
        (Role::Admin, _) | (Role::Viewer, Access::Read) => Ok(()),
        (role, Access::Read) => Err(Denied(role.name(), "the API".into())),
        (role, Access::Write) => Err(Denied(role.name(), "changes to the API".into())),
    }
}

/// Lets `role` sync as a data plane of `site_id`, or says why not.
pub fn authorize_site(role: &Role, site_id: &str) -> Result<(), Denied> {
    match role {
        Role::Admin => Ok(()),
        Role::Dataplane(site) if site == site_id => Ok(()),
        Role::Dataplane(site) => Err(Denied(
            "dataplane",
            format!("site {site_id:?} (this credential is site {site:?}'s)"),
        )),
        role => Err(Denied(role.name(), "data-plane sync".into())),
    }
}

/// Why a call was refused: the role, and what it tried.
#[derive(Debug)]
pub struct Denied(pub &'static str, pub String);

impl Denied {
    /// The gRPC status the caller receives.
    pub fn status(&self) -> Status {
        Status::permission_denied(format!("the {} role may not use {}", self.0, self.1))
    }
}
