//! Application definitions: the built-in catalogue and user-defined ones,
//! in one TOML schema, compiled into a Hyperscan database and a host-name index.

use std::collections::HashMap;

use hyperscan::prelude::*;
use hyperscan::BlockMode;
use serde::Deserialize;

use super::Category;

/// The built-in catalogue (data, not code): host-name lists and payload signatures.
pub const BUILTIN: &str = include_str!("../../../dpi/applications.toml");

/// One application as users write it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Name shown in metrics and in the offline CSV.
    pub name: String,
    /// One of the ten categories.
    pub category: Category,
    /// Host names (and every name under them) that belong to this application,
    /// matched against TLS/QUIC server names, HTTP Host headers and DNS queries.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Hyperscan expressions matched against each inspected payload (block mode, `s` flag set).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Restricts `patterns` to one transport.
    #[serde(default)]
    pub transport: Transport,
    /// When set, `patterns` only count on flows with one of these ports at
    /// either end. Each item is a port or an inclusive range, `"5000-5500"`.
    #[serde(default, deserialize_with = "port_list")]
    pub ports: Vec<u16>,
    /// TLS and QUIC sessions with one of these server ports belong to this
    /// application (IMAPS on 993, DNS over TLS on 853), whatever server name
    /// they carry. Ports or ranges, as `ports`.
    #[serde(default, deserialize_with = "port_list")]
    pub tls_ports: Vec<u16>,
    /// TLS and QUIC sessions whose client offers one of these ALPN protocols
    /// first belong to this application. One ending in `*` stands for every
    /// id that starts with the rest (`anydesk/*`: AnyDesk puts its version there).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Hyperscan expressions over TLS/QUIC server names (lower case), for
    /// services whose names follow a convention rather than a list
    /// (`^doh[0-9]*\.` for DNS-over-HTTPS resolvers). Tried after `hosts`.
    #[serde(default)]
    pub host_patterns: Vec<String>,
    /// TLS sessions whose server certificate has one of these common names
    /// (exactly, ignoring case) belong to this application, for products that
    /// use their own certificates rather than a host name (`AnyDesk Client`).
    #[serde(default)]
    pub certificate_names: Vec<String>,
    /// STUN messages carrying an attribute of one of these types belong to
    /// this application: types only its agents send (Microsoft's MS-TURN and
    /// MS-ICE2 extensions), never the standard ones every agent may send.
    #[serde(default)]
    pub stun_attributes: Vec<u16>,
}

/// Whether any STUN agent may send attributes of type `t`: the IETF's
/// comprehension-required range and the standard comprehension-optional
/// attributes of IANA's registry (and 0x8020, XOR-MAPPED-ADDRESS as the
/// drafts before RFC 5389 numbered it).
fn standard_stun_attribute(t: u16) -> bool {
    matches!(t, 0x0000..=0x3fff | 0x8000..=0x8004 | 0x8020 | 0x8022..=0x8030)
}

/// Reads a list of ports and `"first-last"` ranges (vendors document their
/// media ports as ranges: Zoom's 8801-8810) into the ports it covers.
fn port_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Port(u16),
        Range(String),
    }
    let mut ports = Vec::new();
    for item in Vec::<Item>::deserialize(d)? {
        match item {
            Item::Port(port) => ports.push(port),
            Item::Range(text) => {
                let range = text.split_once('-').and_then(|(first, last)| {
                    let first: u16 = first.trim().parse().ok()?;
                    let last: u16 = last.trim().parse().ok()?;
                    (first <= last).then_some(first..=last)
                });
                let range = range.ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{text:?} is neither a port nor a range \"first-last\" of ports"
                    ))
                })?;
                ports.extend(range);
            }
        }
    }
    Ok(ports)
}

/// Transport a signature applies to.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP or UDP.
    #[default]
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

/// A file of application definitions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    /// The definitions, in priority order (the first matching signature wins).
    #[serde(default, rename = "application")]
    pub applications: Vec<AppSpec>,
}

/// Why a set of application definitions was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The TOML did not parse or did not fit the schema.
    #[error("application definitions: {0}")]
    Syntax(String),
    /// A field is invalid.
    #[error("application[{index}] ({name}): {field}: {message}")]
    Field {
        /// Position in the list.
        index: usize,
        /// The application's name.
        name: String,
        /// The field in error.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Hyperscan refused a pattern.
    #[error("application[{index}] ({name}): pattern {pattern:?} rejected by Hyperscan: {message}")]
    Pattern {
        /// Position in the list.
        index: usize,
        /// The application's name.
        name: String,
        /// The expression as written.
        pattern: String,
        /// Hyperscan's message.
        message: String,
    },
}

/// Parses a TOML file of definitions.
pub fn parse(text: &str) -> Result<Vec<AppSpec>, AppError> {
    toml::from_str::<AppFile>(text)
        .map(|f| f.applications)
        .map_err(|e| AppError::Syntax(e.to_string()))
}

/// What a signature match must also satisfy.
#[derive(Clone, Debug)]
pub(crate) struct SignatureRule {
    pub(crate) app: u16,
    pub(crate) transport: Transport,
    /// Sorted, without repeats (empty: any port).
    pub(crate) ports: Vec<u16>,
}

/// Compiled definitions.
pub(crate) struct Compiled {
    pub(crate) names: Vec<String>,
    pub(crate) categories: Vec<Category>,
    pub(crate) hosts: HashMap<String, u16>,
    pub(crate) tls_ports: HashMap<u16, u16>,
    pub(crate) alpn: HashMap<Vec<u8>, u16>,
    /// ALPN prefixes (entries written with a trailing `*`), in catalogue order.
    pub(crate) alpn_prefixes: Vec<(Vec<u8>, u16)>,
    pub(crate) certificate_names: HashMap<String, u16>,
    /// STUN attribute types and the application whose agents send them.
    pub(crate) stun_attributes: HashMap<u16, u16>,
    pub(crate) database: Option<BlockDatabase>,
    /// Server-name patterns; pattern id = index into `host_pattern_apps`.
    pub(crate) host_database: Option<BlockDatabase>,
    pub(crate) host_pattern_apps: Vec<u16>,
    /// Indexed by Hyperscan pattern id.
    pub(crate) rules: Vec<SignatureRule>,
}

/// Validates and compiles `specs` (the whole set or nothing).
pub(crate) fn compile(specs: &[AppSpec]) -> Result<Compiled, AppError> {
    if specs.len() >= usize::from(u16::MAX) {
        return Err(AppError::Syntax(format!(
            "too many applications ({})",
            specs.len()
        )));
    }
    let mut names: Vec<String> = Vec::with_capacity(specs.len());
    let mut hosts = HashMap::new();
    let mut tls_ports = HashMap::new();
    let mut alpn = HashMap::new();
    let mut alpn_prefixes = Vec::new();
    let mut certificate_names = HashMap::new();
    let mut stun_attributes = HashMap::new();
    let mut patterns = Vec::new();
    let mut rules = Vec::new();
    let mut host_patterns = Vec::new();
    let mut host_pattern_apps = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let field_error = |field, message: String| AppError::Field {
            index,
            name: spec.name.clone(),
            field,
            message,
        };
        let name_ok = !spec.name.is_empty()
            && spec.name.len() <= 64
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.+".contains(&b));
        if !name_ok {
            return Err(field_error(
                "name",
                "1–64 characters of A–Z, a–z, 0–9, _ - . +".into(),
            ));
        }
        if names.contains(&spec.name) {
            return Err(field_error("name", "defined twice".into()));
        }
        let app = index as u16;
        for host in &spec.hosts {
            let host = host.trim_start_matches('.').to_ascii_lowercase();
            if super::tls::host_name(host.as_bytes()).is_none() || host.contains('*') {
                return Err(field_error("hosts", format!("{host:?} is not a host name")));
            }
            // The first definition of a host wins, like signature order.
            hosts.entry(host).or_insert(app);
        }
        if spec.ports.contains(&0) {
            return Err(field_error("ports", "port 0 is not a port".into()));
        }
        if !spec.ports.is_empty() && spec.patterns.is_empty() {
            return Err(field_error(
                "ports",
                "ports restrict patterns; give patterns too".into(),
            ));
        }
        if spec.tls_ports.contains(&0) {
            return Err(field_error("tls_ports", "port 0 is not a port".into()));
        }
        for &port in &spec.tls_ports {
            tls_ports.entry(port).or_insert(app);
        }
        for protocol in &spec.alpn {
            let prefix = protocol.strip_suffix('*');
            let id = prefix.unwrap_or(protocol);
            if id.is_empty() || id.len() > 255 || id.contains('*') {
                return Err(field_error(
                    "alpn",
                    format!(
                        "{protocol:?} is not an ALPN protocol id (or a prefix of ids, ending in *)"
                    ),
                ));
            }
            match prefix {
                Some(prefix) => alpn_prefixes.push((prefix.as_bytes().to_vec(), app)),
                None => {
                    alpn.entry(id.as_bytes().to_vec()).or_insert(app);
                }
            }
        }
        for name in &spec.certificate_names {
            let printable = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            if !printable {
                return Err(field_error(
                    "certificate_names",
                    format!("{name:?} is not 1-64 printable ASCII characters"),
                ));
            }
            certificate_names
                .entry(name.to_ascii_lowercase())
                .or_insert(app);
        }
        for &t in &spec.stun_attributes {
            if standard_stun_attribute(t) {
                return Err(field_error(
                    "stun_attributes",
                    format!("0x{t:04x} is a standard attribute any STUN agent may send; give types only this application's agents send"),
                ));
            }
            stun_attributes.entry(t).or_insert(app);
        }
        for expr in &spec.host_patterns {
            let flags = CompileFlags::SINGLEMATCH;
            let pattern =
                Pattern::with_flags(expr.as_str(), flags).map_err(|e| AppError::Pattern {
                    index,
                    name: spec.name.clone(),
                    pattern: expr.clone(),
                    message: e.to_string(),
                })?;
            let id = host_patterns.len();
            host_patterns.push(Pattern {
                id: Some(id),
                ..pattern
            });
            host_pattern_apps.push(app);
        }
        let identified_by = spec.hosts.len()
            + spec.host_patterns.len()
            + spec.patterns.len()
            + spec.tls_ports.len()
            + spec.alpn.len()
            + spec.certificate_names.len()
            + spec.stun_attributes.len();
        if identified_by == 0 {
            return Err(field_error(
                "patterns",
                "an application needs hosts, host_patterns, patterns, tls_ports, alpn, certificate_names or stun_attributes"
                    .into(),
            ));
        }
        for expr in &spec.patterns {
            let flags = CompileFlags::DOTALL | CompileFlags::SINGLEMATCH;
            let pattern =
                Pattern::with_flags(expr.as_str(), flags).map_err(|e| AppError::Pattern {
                    index,
                    name: spec.name.clone(),
                    pattern: expr.clone(),
                    message: e.to_string(),
                })?;
            let id = patterns.len();
            patterns.push(Pattern {
                id: Some(id),
                ..pattern
            });
            let mut ports = spec.ports.clone();
            ports.sort_unstable();
            ports.dedup();
            rules.push(SignatureRule {
                app,
                transport: spec.transport,
                ports,
            });
        }
        names.push(spec.name.clone());
    }
    let database = if patterns.is_empty() {
        None
    } else {
        let owners: Vec<u16> = rules.iter().map(|r| r.app).collect();
        Some(compile_patterns(specs, &owners, patterns)?)
    };
    let host_database = if host_patterns.is_empty() {
        None
    } else {
        Some(compile_patterns(specs, &host_pattern_apps, host_patterns)?)
    };
    Ok(Compiled {
        names,
        categories: specs.iter().map(|s| s.category).collect(),
        hosts,
        tls_ports,
        alpn,
        alpn_prefixes,
        certificate_names,
        stun_attributes,
        database,
        host_database,
        host_pattern_apps,
        rules,
    })
}

/// Builds the block-mode database; on failure names the offending pattern.
/// `owners[id]` is the application that pattern `id` belongs to.
fn compile_patterns(
    specs: &[AppSpec],
    owners: &[u16],
    patterns: Vec<Pattern>,
) -> Result<BlockDatabase, AppError> {
    let all = Patterns(patterns);
    all.build().map_err(|err| {
        // Hyperscan names the failing expression by index; when it cannot,
        // find it by compiling one at a time (only on this error path).
        let (message, index) = match &err {
            hyperscan::Error::Hyperscan(hyperscan::HsError::CompileError(e)) => {
                (e.message().to_owned(), e.expression())
            }
            other => (other.to_string(), None),
        };
        let failing = index
            .filter(|&i| i < all.0.len())
            .or_else(|| all.0.iter().position(|p| p.build::<BlockMode>().is_err()));
        match failing {
            Some(id) => {
                let app = usize::from(owners[id]);
                AppError::Pattern {
                    index: app,
                    name: specs[app].name.clone(),
                    pattern: all.0[id].expression.clone(),
                    message,
                }
            }
            None => AppError::Syntax(format!("pattern database: {message}")),
        }
    })
}
