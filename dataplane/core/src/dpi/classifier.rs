//! The compiled application catalogue, shared by all workers: Hyperscan
//! databases of payload signatures and server-name patterns, and the indexes
//! (host names, ALPN, ports, certificate names) the dissectors' findings are
//! looked up in.

use std::fmt;

use hyperscan::prelude::*;

use super::apps::{self, AppError, AppSpec, Transport};
use super::{
    counters, dns, stun, tls, AppPattern, Category, Classification, Method, Packet, Protocol,
};

/// How a classified flow's packets are accounted ([`Classifier::account`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// Its counter label ([`counters::label_id`] of its name and category,
    /// stable across catalogue reloads).
    pub label: u32,
    /// Its category.
    pub category: Category,
    /// What its packets still say after the verdict.
    pub reads: ReadOn,
}

/// What a classified flow's packets are still read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOn {
    /// Nothing: the verdict is all.
    Nothing,
    /// A DNS flow's answers, which name the servers of sessions to come.
    DnsAnswers,
    /// An announcer's messages, which name flows to come.
    Announcements(Announcer),
}

/// How the applications of one catalogue are numbered in another
/// ([`Classifier::renumbering`]): the flows classified before a reload keep
/// their application under the catalogue that replaced it.
#[derive(Debug, PartialEq, Eq)]
pub struct Renumbering {
    /// Indexed by an application's number in the old catalogue: its number in
    /// the new one plus one, or 0 when the new catalogue has no such application.
    apps: Vec<u16>,
}

impl Renumbering {
    /// The packed verdict `flow_app` ([`Classification::to_flow_app`]) in the
    /// new numbering. An application the new catalogue does not have is
    /// dropped; the protocol and how it was found stay.
    pub fn apply(&self, flow_app: u32) -> u32 {
        let app = (flow_app & 0xffff) as usize;
        if app == 0 {
            return flow_app;
        }
        let new = self.apps.get(app - 1).copied().unwrap_or(0);
        flow_app & !0xffff | u32::from(new)
    }
}

/// The catalogue application of FTP control connections: its passive-mode
/// replies and PORT commands announce the data connections.
const FTP_CONTROL: &str = "FTP_CONTROL";
/// The catalogue application of SIP: its session descriptions announce the
/// calls' media streams.
const SIP: &str = "SIP";

/// A protocol whose messages announce flows to come, read after its flows'
/// verdict ([`super::Inspector::learn_announced`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announcer {
    /// FTP control: the data connections (passive-mode replies, PORT and EPRT).
    Ftp,
    /// SIP: the RTP and RTCP streams its session descriptions name.
    Sip,
}

/// The compiled catalogue, shared by all workers.
pub struct Classifier {
    compiled: apps::Compiled,
    /// Unique per compiled classifier, so workers know when their scratch is stale.
    id: u64,
    /// How each (protocol, application) pair's packets are accounted once
    /// classified, by protocol then application; see [`Classifier::account`].
    accounts: Vec<Account>,
    /// The catalogue applications whose flows announce others (`FTP_CONTROL`,
    /// `SIP`), if the catalogue has them.
    ftp_control: Option<u16>,
    sip: Option<u16>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("applications", &self.compiled.names.len())
            .field("signatures", &self.compiled.rules.len())
            .field("hosts", &self.compiled.hosts.len())
            .finish()
    }
}

impl Classifier {
    /// The built-in catalogue followed by `user` definitions (whose names must
    /// not clash with it). Errors index into `user`.
    pub fn with_user_apps(user: &[AppSpec]) -> Result<Classifier, AppError> {
        let mut specs = apps::parse(apps::BUILTIN)?;
        let builtin = specs.len();
        specs.extend_from_slice(user);
        Classifier::new(&specs).map_err(|e| match e {
            AppError::Field {
                index,
                name,
                field,
                message,
            } if index >= builtin => AppError::Field {
                index: index - builtin,
                name,
                field,
                message,
            },
            AppError::Pattern {
                index,
                name,
                pattern,
                message,
            } if index >= builtin => AppError::Pattern {
                index: index - builtin,
                name,
                pattern,
                message,
            },
            other => other,
        })
    }

    /// Compiles exactly `specs`.
    pub fn new(specs: &[AppSpec]) -> Result<Classifier, AppError> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut classifier = Classifier {
            compiled: apps::compile(specs)?,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            accounts: Vec::new(),
            ftp_control: None,
            sip: None,
        };
        let app_named = |name| match classifier.pattern(name) {
            Some(AppPattern::Either { app, .. }) => app,
            _ => None,
        };
        (classifier.ftp_control, classifier.sip) = (app_named(FTP_CONTROL), app_named(SIP));
        let apps = classifier.compiled.names.len();
        let protocols = std::iter::once(None).chain(Protocol::ALL.iter().copied().map(Some));
        for protocol in protocols {
            let combos = std::iter::once(None).chain((0..apps as u16).map(Some));
            for app in combos {
                let c = Classification {
                    protocol,
                    app,
                    method: Method::None,
                };
                let reads = match (protocol, classifier.announcer(&c)) {
                    (_, Some(announcer)) => ReadOn::Announcements(announcer),
                    (Some(Protocol::Dns), None) => ReadOn::DnsAnswers,
                    _ => ReadOn::Nothing,
                };
                let category = classifier.category(&c);
                classifier.accounts.push(Account {
                    label: counters::label_id(&classifier.name(&c), category),
                    category,
                    reads,
                });
            }
        }
        Ok(classifier)
    }

    /// How a classified flow's packets are accounted, read straight from its
    /// flow entry's packed verdict ([`Classification::to_flow_app`]) with one
    /// table lookup: the per-packet work of every classified flow. None when
    /// the flow is not classified yet, or names an application this catalogue
    /// does not number (a verdict of another catalogue: workers renumber
    /// their flows when the catalogue changes, see [`Classifier::renumbering`]).
    #[inline]
    pub fn account(&self, flow_app: u32) -> Option<Account> {
        let apps = self.compiled.names.len() + 1;
        let p = ((flow_app >> 16) & 0xff) as usize;
        let a = (flow_app & 0xffff) as usize;
        if flow_app == 0 || a >= apps {
            return None;
        }
        self.accounts.get(p * apps + a).copied()
    }

    /// How the applications `previous` numbered are numbered here; None when
    /// both catalogues number them alike (most reloads change no application).
    pub fn renumbering(&self, previous: &Classifier) -> Option<Renumbering> {
        let here: std::collections::HashMap<&str, u16> = self
            .compiled
            .names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| Some((name.as_str(), u16::try_from(i + 1).ok()?)))
            .collect();
        let apps: Vec<u16> = previous
            .compiled
            .names
            .iter()
            .map(|name| here.get(name.as_str()).copied().unwrap_or(0))
            .collect();
        let unchanged = apps
            .iter()
            .enumerate()
            .all(|(i, &n)| usize::from(n) == i + 1);
        (!unchanged).then_some(Renumbering { apps })
    }

    /// What flows classified `c` may announce (FTP's data connections, SIP's
    /// media), if anything: their packets are then read after the verdict.
    #[inline]
    pub fn announcer(&self, c: &Classification) -> Option<Announcer> {
        let app = c.app?;
        if Some(app) == self.ftp_control {
            Some(Announcer::Ftp)
        } else if Some(app) == self.sip {
            Some(Announcer::Sip)
        } else {
            None
        }
    }

    /// The category of a classification.
    pub fn category(&self, c: &Classification) -> Category {
        let app = c
            .app
            .and_then(|a| self.compiled.categories.get(usize::from(a)).copied());
        match (c.protocol, app) {
            (Some(p), Some(cat)) if p.is_carrier() && cat != Category::Unknown => cat,
            (Some(p), _) => p.category(),
            (None, Some(cat)) => cat,
            (None, None) => Category::Unknown,
        }
    }

    /// The application's name in `Protocol.App` form (`TLS.YouTube`, `DNS`, `BitTorrent`, `Unknown`).
    pub fn name(&self, c: &Classification) -> String {
        let app = c.app.and_then(|a| self.compiled.names.get(usize::from(a)));
        match (c.protocol, app) {
            (Some(p), Some(a)) => format!("{p}.{a}"),
            (Some(p), None) => p.to_string(),
            (None, Some(a)) => a.clone(),
            (None, None) => "Unknown".to_owned(),
        }
    }

    /// Whether policies may name `name`: an application of the catalogue, a
    /// protocol, `Protocol.Application` (as [`Classifier::name`] writes them)
    /// or `Unknown`.
    pub fn knows(&self, name: &str) -> bool {
        self.pattern(name).is_some()
    }

    /// What `name` (as [`Classifier::knows`] accepts it) stands for in this
    /// classifier's numbering.
    pub fn pattern(&self, name: &str) -> Option<AppPattern> {
        let protocol = |p: &str| Protocol::ALL.iter().copied().find(|q| q.to_string() == p);
        let app = |a: &str| {
            self.compiled
                .names
                .iter()
                .position(|n| n == a)
                .and_then(|i| u16::try_from(i).ok())
        };
        if name == "Unknown" {
            return Some(AppPattern::Unknown);
        }
        let (p, a) = (protocol(name), app(name));
        if p.is_some() || a.is_some() {
            return Some(AppPattern::Either {
                protocol: p,
                app: a,
            });
        }
        let (p, a) = name.split_once('.')?;
        Some(AppPattern::Both {
            protocol: protocol(p)?,
            app: app(a)?,
        })
    }

    /// The application a certificate common name or DNS name belongs to.
    fn certificate_app(&self, name: &str) -> Option<u16> {
        if name.len() <= 64 {
            let mut lower = [0u8; 64];
            lower[..name.len()].copy_from_slice(name.as_bytes());
            lower[..name.len()].make_ascii_lowercase();
            let by_name = std::str::from_utf8(&lower[..name.len()])
                .ok()
                .and_then(|n| self.compiled.certificate_names.get(n).copied());
            if by_name.is_some() {
                return by_name;
            }
        }
        tls::host_name(name.as_bytes()).and_then(|h| self.host_app(h))
    }

    /// The application a host name belongs to: the longest listed suffix on a label boundary.
    pub fn host_app(&self, host: &str) -> Option<u16> {
        let host = host.trim_end_matches('.');
        let mut lower = [0u8; dns::MAX_NAME];
        let bytes = host.as_bytes();
        if bytes.len() > lower.len() {
            return None;
        }
        for (d, s) in lower.iter_mut().zip(bytes) {
            *d = s.to_ascii_lowercase();
        }
        let lower = std::str::from_utf8(&lower[..bytes.len()]).ok()?;
        let mut suffix = lower;
        loop {
            if let Some(&app) = self.compiled.hosts.get(suffix) {
                return Some(app);
            }
            suffix = &suffix[suffix.find('.')? + 1..];
        }
    }

    /// The application of a TLS or QUIC session and what named it: ALPN or
    /// server port first (the port says what the session is for), then the
    /// server name.
    pub(super) fn session_app(
        &self,
        pkt: &Packet<'_>,
        hello: &tls::ClientHello<'_>,
        scratch: Option<&Scratch>,
    ) -> Option<(u16, Method)> {
        let by_alpn = hello.alpn.and_then(|a| {
            self.compiled.alpn.get(a).copied().or_else(|| {
                let prefixes = &self.compiled.alpn_prefixes;
                prefixes
                    .iter()
                    .find(|(p, _)| a.starts_with(p))
                    .map(|&(_, app)| app)
            })
        });
        let by_port = || {
            let port = |p| self.compiled.tls_ports.get(&p).copied();
            port(pkt.dst_port).or_else(|| port(pkt.src_port))
        };
        let by_name = |name: &str| {
            self.host_app(name)
                .or_else(|| self.host_pattern_app(name, scratch?))
        };
        let named = |method| move |app| (app, method);
        by_alpn
            .map(named(Method::Alpn))
            .or_else(|| by_port().map(named(Method::Port)))
            .or_else(|| {
                hello
                    .server_name
                    .and_then(by_name)
                    .map(named(Method::ServerName))
            })
    }

    /// The first application whose server-name pattern matches `name`.
    fn host_pattern_app(&self, name: &str, scratch: &Scratch) -> Option<u16> {
        let db = self.compiled.host_database.as_ref()?;
        let mut lower = [0u8; dns::MAX_NAME];
        let lower = lower.get_mut(..name.len())?;
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        let apps = &self.compiled.host_pattern_apps;
        let mut best: Option<u16> = None;
        let _ = db.scan(&*lower, scratch, |id: u32, _, _, _| {
            if let Some(&app) = apps.get(id as usize) {
                best = Some(best.map_or(app, |b| b.min(app)));
            }
            Matching::Continue
        });
        best
    }

    /// A scratch large enough for both of this classifier's databases.
    /// The application whose agents send one of a STUN message's attributes.
    pub(super) fn stun_app(&self, message: &stun::Message<'_>) -> Option<u16> {
        let known = &self.compiled.stun_attributes;
        if known.is_empty() {
            return None;
        }
        message
            .attribute_types()
            .find_map(|t| known.get(&t).copied())
    }

    pub(super) fn scratch(&self) -> Option<Scratch> {
        let dbs = [&self.compiled.database, &self.compiled.host_database];
        let mut scratch: Option<Scratch> = None;
        for db in dbs.into_iter().flatten() {
            match scratch.as_mut() {
                None => scratch = db.alloc_scratch().ok(),
                Some(s) => {
                    db.realloc_scratch(s).ok()?;
                }
            }
        }
        scratch
    }

    /// Identifies this compilation: an inspector whose scratch was made for
    /// another one makes a new scratch.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// The highest-priority catalogue signature matching this payload.
    pub(super) fn signature(&self, pkt: &Packet<'_>, scratch: Option<&Scratch>) -> Option<u16> {
        let db = self.compiled.database.as_ref()?;
        let scratch = scratch?;
        let rules = &self.compiled.rules;
        let mut best: Option<u16> = None;
        let _ = db.scan(pkt.payload, scratch, |id: u32, _from, _to, _flags| {
            let Some(rule) = rules.get(id as usize) else {
                return Matching::Continue;
            };
            let transport_ok = match rule.transport {
                Transport::Any => true,
                Transport::Tcp => pkt.tcp,
                Transport::Udp => !pkt.tcp,
            };
            let ports_ok = rule.ports.is_empty()
                || rule.ports.binary_search(&pkt.src_port).is_ok()
                || rule.ports.binary_search(&pkt.dst_port).is_ok();
            if transport_ok && ports_ok && best.is_none_or(|b| rule.app < b) {
                best = Some(rule.app);
            }
            Matching::Continue
        });
        best
    }

    /// The application named by the server certificate in `records`, if any.
    pub(super) fn certificate(&self, records: &[u8]) -> (tls::CertificateSearch, Option<u16>) {
        let mut app = None;
        let search = tls::server_certificate_names(records, |name| {
            app = self.certificate_app(name);
            app.is_some()
        });
        (search, app)
    }
}
