//! Application classification (DPI): what each flow is, from its first packets.
//!
//! # Design
//!
//! * [`Classifier`] is immutable and shared by all workers: the compiled
//!   application catalogue ([`apps`]: the built-in data file plus user
//!   definitions), a Hyperscan block-mode database of payload signatures and
//!   a host-name index. A new set of definitions compiles into a new
//!   `Classifier` off the packet path and is swapped in whole.
//! * [`Inspector`] is per worker: the Hyperscan scratch, a decryption buffer
//!   for QUIC and a fixed pool of reassembly buffers. Nothing is allocated
//!   per packet.
//! * [`FlowInspection`] is the per-flow state (24 bytes plus an optional
//!   reassembly buffer borrowed from the pool while a TLS or QUIC hello is
//!   incomplete). Inspection stops at [`Limits`] (packets and bytes with
//!   payload); the flow's verdict is then final.
//!
//! # Why block mode, not stream mode
//!
//! Stream mode would keep Hyperscan stream state for every flow under
//! inspection, hundreds of bytes per flow for this database and more as users
//! add patterns, to match expressions that span packet boundaries. The
//! signatures here describe the start of a protocol message, which sits at
//! the start of a packet; the only messages that routinely span packets,
//! TLS and QUIC hellos, are reassembled by their own parsers. Block mode
//! therefore costs no per-flow Hyperscan memory at all: one scratch per worker.
//!
//! # Order of evidence
//!
//! Per packet with payload: payload signatures (the catalogue's order is
//! their priority), then the protocol dissectors (DNS, TLS, QUIC, HTTP,
//! STUN). A dissector that names a server (SNI, Host, query name) looks it up
//! in the host index: `TLS` to `www.youtube.com` becomes `TLS.YouTube`,
//! category Video. Protocols that only carry another application (TLS, QUIC,
//! HTTP, STUN) take the application's category unless it is `Unknown`;
//! name-resolution protocols stay DNS whatever name they resolve.

pub mod apps;
pub mod counters;
pub mod dns;
pub mod http;
pub mod offline;
pub mod quic;
pub mod stun;
pub mod tls;

use std::fmt;

use hyperscan::prelude::*;
use serde::Deserialize;

use crate::labels::labelled_enum;
use crate::packet::flow_key::Direction;
use crate::packet::parse::{PacketMeta, L4};
use apps::{AppError, AppSpec, Transport};

labelled_enum! {
    /// Application category: what policy and QoS act on.
    #[derive(Deserialize)]
    Category {
        /// Web browsing and app APIs over HTTP, TLS and QUIC.
        Web => "Web";
        /// Video streaming.
        Video => "Video";
        /// Real-time voice and video calls.
        VoIP => "VoIP";
        /// Games.
        Gaming => "Gaming";
        /// File transfer and remote file access.
        FileTransfer => "FileTransfer";
        /// Database protocols.
        Database => "Database";
        /// Name resolution.
        DNS => "DNS";
        /// Remote shells and desktops.
        RemoteAccess => "RemoteAccess";
        /// Mail.
        Email => "Email";
        /// Anything else, and flows not (yet) identified.
        Unknown => "Unknown";
    }
}

labelled_enum! {
    /// Protocols recognised by a dissector in code (the rest are catalogue signatures).
    Protocol {
        /// TLS over TCP.
        Tls => "TLS";
        /// QUIC.
        Quic => "QUIC";
        /// HTTP/1.x.
        Http => "HTTP";
        /// DNS.
        Dns => "DNS";
        /// Multicast DNS.
        Mdns => "MDNS";
        /// Link-Local Multicast Name Resolution.
        Llmnr => "LLMNR";
        /// STUN/TURN.
        Stun => "STUN";
        /// RTP media (two packets of one stream in a row).
        Rtp => "RTP";
        /// RTCP media control.
        Rtcp => "RTCP";
        /// RakNet, the game-networking transport (its data datagrams).
        RakNet => "RakNet";
    }
}

impl Protocol {
    /// The category of the protocol itself, before the application it carries is known.
    fn category(self) -> Category {
        match self {
            Protocol::Tls | Protocol::Quic | Protocol::Http => Category::Web,
            Protocol::Dns | Protocol::Mdns | Protocol::Llmnr => Category::DNS,
            Protocol::Stun | Protocol::Rtp | Protocol::Rtcp => Category::VoIP,
            Protocol::RakNet => Category::Gaming,
        }
    }

    /// True when the protocol carries another application, whose category then wins.
    fn is_carrier(self) -> bool {
        !matches!(self, Protocol::Dns | Protocol::Mdns | Protocol::Llmnr)
    }
}

/// A flow's identification: a dissected protocol, a catalogue application, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Classification {
    /// The protocol found by a dissector.
    pub protocol: Option<Protocol>,
    /// Index of the catalogue application in the classifier that produced it.
    pub app: Option<u16>,
}

impl Classification {
    /// True when nothing was identified.
    pub fn is_unknown(&self) -> bool {
        self.protocol.is_none() && self.app.is_none()
    }

    /// Packs a final classification into a flow entry's `app` field (never 0,
    /// which means "not classified yet").
    #[inline]
    pub fn to_flow_app(&self) -> u32 {
        let p = self.protocol.map_or(0, |p| p.index() as u32 + 1);
        let a = self.app.map_or(0, |a| u32::from(a) + 1);
        1 << 31 | p << 16 | a
    }

    /// Unpacks [`Classification::to_flow_app`]; None for 0 (not classified yet).
    #[inline]
    pub fn from_flow_app(v: u32) -> Option<Classification> {
        if v == 0 {
            return None;
        }
        let p = ((v >> 16) & 0xff) as usize;
        let a = v & 0xffff;
        Some(Classification {
            protocol: p.checked_sub(1).and_then(|i| Protocol::ALL.get(i).copied()),
            app: a.checked_sub(1).map(|a| a as u16),
        })
    }
}

/// How much of each flow is inspected.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Packets with payload inspected per flow (both directions together).
    #[serde(default = "Limits::default_packets")]
    pub max_packets: u16,
    /// Payload bytes inspected per flow.
    #[serde(default = "Limits::default_bytes")]
    pub max_bytes: u32,
}

impl Limits {
    fn default_packets() -> u16 {
        Limits::default().max_packets
    }
    fn default_bytes() -> u32 {
        Limits::default().max_bytes
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packets: 12,
            max_bytes: 16 * 1024,
        }
    }
}

/// The compiled catalogue, shared by all workers.
pub struct Classifier {
    compiled: apps::Compiled,
    /// Unique per compiled classifier, so workers know when their scratch is stale.
    id: u64,
    /// Counter label id of every (protocol, application) pair; see [`Classifier::label`].
    labels: Vec<u32>,
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
            labels: Vec::new(),
        };
        let apps = classifier.compiled.names.len();
        let protocols = std::iter::once(None).chain(Protocol::ALL.iter().copied().map(Some));
        for protocol in protocols {
            let combos = std::iter::once(None).chain((0..apps as u16).map(Some));
            for app in combos {
                let c = Classification { protocol, app };
                let label = counters::label_id(&classifier.name(&c), classifier.category(&c));
                classifier.labels.push(label);
            }
        }
        Ok(classifier)
    }

    /// The counter label id of a classification (stable across catalogue reloads).
    #[inline]
    pub fn label(&self, c: &Classification) -> u32 {
        let apps = self.compiled.names.len() + 1;
        let p = c.protocol.map_or(0, |p| p.index() + 1);
        let a = c.app.map_or(0, |a| usize::from(a) + 1);
        self.labels
            .get(p * apps + a)
            .copied()
            .unwrap_or(counters::OVERFLOW_LABEL)
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
        let is_protocol = |p: &str| Protocol::ALL.iter().any(|q| q.to_string() == p);
        let is_app = |a: &str| self.compiled.names.iter().any(|n| n == a);
        match name.split_once('.') {
            _ if name == "Unknown" || is_protocol(name) || is_app(name) => true,
            Some((protocol, app)) => is_protocol(protocol) && is_app(app),
            None => false,
        }
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

    /// The application of a TLS or QUIC session: by ALPN or server port first
    /// (the port says what the session is for), then by server name.
    fn session_app(
        &self,
        pkt: &Packet<'_>,
        hello: &tls::ClientHello<'_>,
        scratch: Option<&Scratch>,
    ) -> Option<u16> {
        let by_alpn = hello.alpn.and_then(|a| self.compiled.alpn.get(a).copied());
        let by_port = || {
            let port = |p| self.compiled.tls_ports.get(&p).copied();
            port(pkt.dst_port).or_else(|| port(pkt.src_port))
        };
        let by_name = |name: &str| {
            self.host_app(name)
                .or_else(|| self.host_pattern_app(name, scratch?))
        };
        by_alpn
            .or_else(by_port)
            .or_else(|| hello.server_name.and_then(by_name))
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
    fn scratch(&self) -> Option<Scratch> {
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
}

/// The TCP or UDP payload of a parsed frame (None for other protocols).
pub fn l4_payload<'f>(frame: &'f [u8], meta: &PacketMeta) -> Option<&'f [u8]> {
    let l4 = usize::from(meta.l4_offset);
    let end = usize::from(meta.ip_end).min(frame.len());
    let start = match meta.l4 {
        L4::Tcp { .. } => l4 + usize::from(frame.get(l4 + 12)? >> 4) * 4,
        L4::Udp { .. } => l4 + 8,
        _ => return None,
    };
    frame.get(start..end)
}

/// The TCP sequence number of a parsed frame (0 when it is not TCP).
pub fn tcp_seq(frame: &[u8], meta: &PacketMeta) -> u32 {
    let l4 = usize::from(meta.l4_offset);
    match (meta.l4, frame.get(l4 + 4..l4 + 8)) {
        (L4::Tcp { .. }, Some(b)) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        _ => 0,
    }
}

/// One packet as the classifier sees it.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// True for TCP, false for UDP.
    pub tcp: bool,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Direction within the flow.
    pub dir: Direction,
    /// TCP sequence number of the payload's first byte (0 for UDP): places
    /// segments in hello reassembly whatever their order or repetition.
    pub seq: u32,
    /// The L4 payload.
    pub payload: &'a [u8],
}

impl Packet<'_> {
    fn has_port(&self, port: u16) -> bool {
        self.src_port == port || self.dst_port == port
    }
}

/// Bytes one reassembly buffer holds (a ClientHello with a post-quantum key share fits).
pub const REASSEMBLY_BYTES: usize = 4096;

/// Per-flow inspection state.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowInspection {
    packets: u16,
    bytes: u32,
    /// The best evidence so far (a TLS record without a hello, a QUIC packet not opened).
    tentative: Classification,
    /// Reassembly buffer index + 1; 0 = none.
    buffer: u32,
    /// Set once the verdict is final.
    done: bool,
    /// The last packet of a numbered datagram stream (RTP, RakNet).
    numbered: Option<Numbered>,
}

impl FlowInspection {
    /// Packets with payload inspected so far.
    pub fn packets(&self) -> u16 {
        self.packets
    }

    /// True once the verdict is final.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// What one reassembly buffer collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collecting {
    /// TLS records from the client's direction of a TCP stream.
    Tls(Direction),
    /// TLS records that should hold a certificate (the server's, or a client's).
    TlsCertificate(Direction),
    /// QUIC CRYPTO frames (client direction).
    Quic(Direction),
}

/// A reassembly buffer: bytes placed at offsets, with the filled ranges.
struct Reassembly {
    what: Collecting,
    /// Sequence number of the first byte collected (TCP; 0 for QUIC's CRYPTO offsets).
    base_seq: u32,
    data: Box<[u8; REASSEMBLY_BYTES]>,
    /// Filled ranges, sorted and merged; at most [`MAX_RANGES`].
    ranges: [(u16, u16); MAX_RANGES],
    nranges: u8,
}

const MAX_RANGES: usize = 8;

impl Reassembly {
    fn new() -> Reassembly {
        Reassembly {
            what: Collecting::Tls(Direction::LoToHi),
            base_seq: 0,
            data: Box::new([0; REASSEMBLY_BYTES]),
            ranges: [(0, 0); MAX_RANGES],
            nranges: 0,
        }
    }

    /// Places `bytes` at `offset`; bytes beyond the buffer are dropped.
    fn put(&mut self, offset: u64, bytes: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= REASSEMBLY_BYTES || bytes.is_empty() {
            return;
        }
        let end = (start + bytes.len()).min(REASSEMBLY_BYTES);
        self.data[start..end].copy_from_slice(&bytes[..end - start]);
        let (mut s, mut e) = (start as u16, end as u16);
        // Merge with overlapping or touching ranges.
        let mut kept = [(0u16, 0u16); MAX_RANGES];
        let mut n = 0;
        for &(rs, re) in &self.ranges[..usize::from(self.nranges)] {
            if re < s || rs > e {
                kept[n] = (rs, re);
                n += 1;
            } else {
                s = s.min(rs);
                e = e.max(re);
            }
        }
        if n == MAX_RANGES {
            return; // too fragmented: keep what we have
        }
        kept[n] = (s, e);
        n += 1;
        kept[..n].sort_unstable();
        self.ranges = kept;
        self.nranges = n as u8;
    }

    /// The contiguous bytes from offset 0.
    fn prefix(&self) -> &[u8] {
        match self.ranges[..usize::from(self.nranges)].first() {
            Some(&(0, end)) => &self.data[..usize::from(end)],
            _ => &[],
        }
    }
}

/// Per-worker inspection machinery.
pub struct Inspector {
    limits: Limits,
    scratch: Option<Scratch>,
    /// Id of the classifier the scratch was allocated for (0: none yet).
    scratch_for: u64,
    decrypt: Box<[u8; quic::MAX_DATAGRAM]>,
    pool: Vec<Reassembly>,
    free: Vec<u32>,
    /// Hellos that could not be reassembled because the pool was empty.
    pool_exhausted: u64,
}

impl fmt::Debug for Inspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspector")
            .field("limits", &self.limits)
            .field("buffers", &self.pool.len())
            .field("free", &self.free.len())
            .finish()
    }
}

impl Inspector {
    /// An inspector with `buffers` reassembly buffers (hellos in progress at once).
    pub fn new(limits: Limits, buffers: usize) -> Inspector {
        Inspector {
            limits,
            scratch: None,
            scratch_for: 0,
            decrypt: Box::new([0; quic::MAX_DATAGRAM]),
            pool: (0..buffers).map(|_| Reassembly::new()).collect(),
            free: (0..buffers as u32).rev().collect(),
            pool_exhausted: 0,
        }
    }

    /// Changes the inspection bounds (for flows inspected from now on).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Reassembly buffers not lent to a flow.
    pub fn free_buffers(&self) -> usize {
        self.free.len()
    }

    /// Hellos left unreassembled because every buffer was in use.
    pub fn pool_exhausted(&self) -> u64 {
        self.pool_exhausted
    }

    /// Inspects one packet of a flow; returns the verdict once it is final.
    pub fn inspect(
        &mut self,
        classifier: &Classifier,
        flow: &mut FlowInspection,
        pkt: &Packet<'_>,
    ) -> Option<Classification> {
        if flow.done {
            return None;
        }
        if pkt.payload.is_empty() {
            return None;
        }
        if self.scratch_for != classifier.id {
            // A new catalogue: a scratch for its databases (off the steady-state path).
            self.scratch = classifier.scratch();
            self.scratch_for = classifier.id;
        }
        flow.packets = flow.packets.saturating_add(1);
        flow.bytes = flow.bytes.saturating_add(pkt.payload.len() as u32);
        let verdict = self
            .signature(classifier, pkt)
            .map(|app| Classification {
                protocol: None,
                app: Some(app),
            })
            .or_else(|| self.dissect(classifier, flow, pkt));
        match verdict {
            Some(v) => Some(self.finish_with(flow, v)),
            None if flow.packets >= self.limits.max_packets
                || flow.bytes >= self.limits.max_bytes =>
            {
                Some(self.finish(flow))
            }
            None => None,
        }
    }

    /// Ends inspection (limits reached, flow expired or capture over) with the best evidence.
    pub fn finish(&mut self, flow: &mut FlowInspection) -> Classification {
        let tentative = flow.tentative;
        self.finish_with(flow, tentative)
    }

    fn finish_with(
        &mut self,
        flow: &mut FlowInspection,
        verdict: Classification,
    ) -> Classification {
        self.release(flow);
        flow.done = true;
        flow.tentative = verdict;
        verdict
    }

    fn release(&mut self, flow: &mut FlowInspection) {
        if flow.buffer != 0 {
            self.free.push(flow.buffer - 1);
            flow.buffer = 0;
        }
    }

    /// The highest-priority catalogue signature matching this payload.
    fn signature(&mut self, classifier: &Classifier, pkt: &Packet<'_>) -> Option<u16> {
        let db = classifier.compiled.database.as_ref()?;
        let scratch = self.scratch.as_ref()?;
        let rules = &classifier.compiled.rules;
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
            let ports_ok = rule.ports.is_empty() || rule.ports.iter().any(|&p| pkt.has_port(p));
            if transport_ok && ports_ok && best.is_none_or(|b| rule.app < b) {
                best = Some(rule.app);
            }
            Matching::Continue
        });
        best
    }

    /// Runs the protocol dissectors.
    fn dissect(
        &mut self,
        classifier: &Classifier,
        flow: &mut FlowInspection,
        pkt: &Packet<'_>,
    ) -> Option<Classification> {
        let found = |protocol, app| {
            Some(Classification {
                protocol: Some(protocol),
                app,
            })
        };
        let payload = pkt.payload;
        if !pkt.tcp {
            if let Some(protocol) = dns_protocol(pkt) {
                let mut name = [0u8; dns::MAX_NAME];
                if let Some(q) = dns::question(payload, &mut name) {
                    return found(protocol, classifier.host_app(q.name));
                }
            }
            if let Some(c) = self.quic(classifier, flow, pkt) {
                return Some(c);
            }
            if stun::message(payload).is_some() {
                return found(Protocol::Stun, None);
            }
            return numbered_stream(flow, pkt).and_then(|p| found(p, None));
        }
        if pkt.has_port(53) {
            let mut name = [0u8; dns::MAX_NAME];
            if let Some(q) = dns::question_tcp(payload, &mut name) {
                return found(Protocol::Dns, classifier.host_app(q.name));
            }
        }
        if let Some(c) = self.tls(classifier, flow, pkt) {
            return Some(c);
        }
        if stun::stream_message(payload).is_some() {
            return found(Protocol::Stun, None);
        }
        if let Some(req) = http::request(payload) {
            return found(
                Protocol::Http,
                req.host.and_then(|h| classifier.host_app(h)),
            );
        }
        if http::is_response(payload) && flow.tentative.is_unknown() {
            flow.tentative = Classification {
                protocol: Some(Protocol::Http),
                app: None,
            };
        }
        None
    }

    /// TLS: reads the ClientHello (reassembled across segments when needed);
    /// when it names no server, reads the server's certificate instead.
    fn tls(
        &mut self,
        classifier: &Classifier,
        flow: &mut FlowInspection,
        pkt: &Packet<'_>,
    ) -> Option<Classification> {
        let tls_found = |app| Classification {
            protocol: Some(Protocol::Tls),
            app,
        };
        // A reassembly under way in this direction gets the packet appended.
        let collecting = (flow.buffer as usize)
            .checked_sub(1)
            .map(|b| (b, self.pool[b].what))
            .filter(|&(_, what)| matches!(what, Collecting::Tls(d) | Collecting::TlsCertificate(d) if d == pkt.dir));
        let data = match collecting {
            Some((b, _)) => {
                let buf = &mut self.pool[b];
                // Bytes go where their sequence number says: retransmitted
                // and reordered segments land in place; anything from before
                // the start (a wrapped difference) falls outside the buffer.
                buf.put(u64::from(pkt.seq.wrapping_sub(buf.base_seq)), pkt.payload);
                buf.prefix()
            }
            None => pkt.payload,
        };
        if let Some((_, Collecting::TlsCertificate(_))) = collecting {
            let found = certificate(classifier, data);
            return self.after_certificate(flow, found, None);
        }
        // What the records say, with nothing borrowed from the buffer.
        enum Seen {
            Hello { named: bool, app: Option<u16> },
            Server((tls::CertificateSearch, Option<u16>)),
            Certificate((tls::CertificateSearch, Option<u16>)),
            Other(tls::Hello<'static>),
        }
        let seen = match tls::client_hello_from_records(data) {
            tls::Hello::Client(h) => Seen::Hello {
                named: h.server_name.is_some(),
                app: classifier.session_app(pkt, &h, self.scratch.as_ref()),
            },
            tls::Hello::Server => Seen::Server(certificate(classifier, data)),
            // A later handshake record may be a client's certificate.
            tls::Hello::OtherRecord => Seen::Certificate(certificate(classifier, data)),
            tls::Hello::Incomplete { needed } => Seen::Other(tls::Hello::Incomplete { needed }),
            tls::Hello::NotTls => Seen::Other(tls::Hello::NotTls),
        };
        let seen = match seen {
            Seen::Hello { named, app } => {
                if collecting.is_some() {
                    self.release(flow);
                }
                if named || app.is_some() {
                    return Some(tls_found(app));
                }
                // No server name: the server's certificate may tell.
                flow.tentative = tls_found(None);
                return None;
            }
            Seen::Server(found) => {
                if flow.tentative.is_unknown() {
                    let app = classifier.session_app(pkt, &tls::ClientHello::default(), None);
                    flow.tentative = tls_found(app);
                }
                return self.after_certificate(
                    flow,
                    found,
                    Some((Collecting::TlsCertificate(pkt.dir), pkt.payload, pkt.seq)),
                );
            }
            Seen::Certificate(found) => {
                if flow.tentative.is_unknown() {
                    let app = classifier.session_app(pkt, &tls::ClientHello::default(), None);
                    flow.tentative = tls_found(app);
                }
                return match found {
                    (tls::CertificateSearch::Accepted, _) => {
                        self.after_certificate(flow, found, None)
                    }
                    _ => None,
                };
            }
            Seen::Other(hello) => hello,
        };
        match seen {
            tls::Hello::Client(_) | tls::Hello::Server | tls::Hello::OtherRecord => None,
            tls::Hello::Incomplete { .. } => {
                if flow.tentative.is_unknown() {
                    let app = classifier.session_app(pkt, &tls::ClientHello::default(), None);
                    flow.tentative = tls_found(app);
                }
                if collecting.is_none() {
                    self.start_collecting(flow, Collecting::Tls(pkt.dir), pkt.payload, pkt.seq);
                }
                None
            }
            tls::Hello::NotTls => {
                if collecting.is_some() {
                    self.release(flow);
                }
                None
            }
        }
    }

    /// Acts on a certificate search: a verdict when it named an application,
    /// reassembly (`start`) when it needs more, else nothing more to learn here.
    fn after_certificate(
        &mut self,
        flow: &mut FlowInspection,
        (search, app): (tls::CertificateSearch, Option<u16>),
        start: Option<(Collecting, &[u8], u32)>,
    ) -> Option<Classification> {
        match search {
            tls::CertificateSearch::Accepted => {
                self.release(flow);
                Some(Classification {
                    protocol: Some(Protocol::Tls),
                    app,
                })
            }
            tls::CertificateSearch::Incomplete => {
                if let (Some((what, first, seq)), 0) = (start, flow.buffer) {
                    self.start_collecting(flow, what, first, seq);
                }
                None
            }
            tls::CertificateSearch::Rejected | tls::CertificateSearch::Absent => {
                self.release(flow);
                None
            }
        }
    }

    /// QUIC: opens client Initials and reads the ClientHello from their CRYPTO frames.
    fn quic(
        &mut self,
        classifier: &Classifier,
        flow: &mut FlowInspection,
        pkt: &Packet<'_>,
    ) -> Option<Classification> {
        let Some(version) = quic::version(pkt.payload) else {
            // A short-header packet to or from UDP 443 is QUIC in all
            // likelihood (a capture that missed the handshake); keep it as
            // the fallback, not as a verdict.
            let short_header = pkt.payload.first().is_some_and(|b| b & 0xc0 == 0x40);
            if short_header && pkt.has_port(443) && flow.tentative.is_unknown() {
                flow.tentative = Classification {
                    protocol: Some(Protocol::Quic),
                    app: None,
                };
            }
            return None;
        };
        let quic_found = |app| Classification {
            protocol: Some(Protocol::Quic),
            app,
        };
        if version == quic::Version::GoogleQ {
            let app = quic::gquic_server_name(pkt.payload).and_then(|n| classifier.host_app(n));
            return Some(quic_found(app));
        }
        if flow.tentative.is_unknown() {
            flow.tentative = quic_found(None);
        }
        let quic::Initial::Opened(_, plain) =
            quic::open_client_initial(pkt.payload, &mut self.decrypt[..])
        else {
            return None;
        };
        if flow.buffer == 0 {
            self.start_collecting(flow, Collecting::Quic(pkt.dir), &[], 0);
        }
        let buf = self.pool.get_mut((flow.buffer as usize).checked_sub(1)?)?;
        if buf.what != Collecting::Quic(pkt.dir) {
            return None;
        }
        quic::crypto_frames(&self.decrypt[plain], |offset, data| buf.put(offset, data));
        match tls::client_hello(buf.prefix()) {
            tls::Hello::Client(h) => Some(quic_found(classifier.session_app(
                pkt,
                &h,
                self.scratch.as_ref(),
            ))),
            tls::Hello::Incomplete { .. } => None,
            _ => Some(quic_found(None)),
        }
    }

    /// Lends the flow a buffer for `what`, starting with `first`; a buffer the
    /// flow held for something else (the other direction) goes back first.
    fn start_collecting(
        &mut self,
        flow: &mut FlowInspection,
        what: Collecting,
        first: &[u8],
        seq: u32,
    ) {
        self.release(flow);
        match self.free.pop() {
            Some(b) => {
                flow.buffer = b + 1;
                let buf = &mut self.pool[b as usize];
                buf.what = what;
                buf.base_seq = seq;
                buf.nranges = 0;
                buf.put(0, first);
            }
            None => self.pool_exhausted += 1,
        }
    }
}

/// The application named by the server certificate in `records`, if any.
fn certificate(classifier: &Classifier, records: &[u8]) -> (tls::CertificateSearch, Option<u16>) {
    let mut app = None;
    let search = tls::server_certificate_names(records, |name| {
        app = classifier.certificate_app(name);
        app.is_some()
    });
    (search, app)
}

/// The last datagram of a flow as RTP and as RakNet would number it (one
/// packet can look like both: RakNet's first byte is a valid RTP one).
/// Packed into 12 bytes: it lives in every flow's inspection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Numbered {
    ssrc: u32,
    /// RakNet datagram number (24 bits).
    raknet_seq: u32,
    rtp_seq: u16,
    /// Which of the two readings hold: [`Numbered::RTP`], [`Numbered::RAKNET`].
    looks_like: u8,
    dir: Direction,
}

impl Numbered {
    const RTP: u8 = 1;
    const RAKNET: u8 = 2;
}

/// Set in a RakNet reading when the datagram's frames fill it exactly.
const RAKNET_EXACT: u32 = 1 << 24;
/// The RakNet reading of an acknowledgement (ACK or NAK) whose records fill it exactly.
const RAKNET_ACK: u32 = u32::MAX;

/// RTP and RakNet when two packets in a row of one direction continue one
/// numbered stream (one packet alone looks like too many things), RakNet
/// also on one acknowledgement whose records fill it exactly; RTCP when a
/// packet is a well-formed RTCP header whose length fits.
fn numbered_stream(flow: &mut FlowInspection, pkt: &Packet<'_>) -> Option<Protocol> {
    let p = pkt.payload;
    if rtcp(p) {
        return Some(Protocol::Rtcp);
    }
    let rtp = rtp_packet(p);
    let raknet = raknet_datagram(p);
    if raknet == Some(RAKNET_ACK) {
        // Its fixed flags byte, record count and records that must fill the
        // datagram exactly leave nothing to chance: one is enough.
        return Some(Protocol::RakNet);
    }
    let looks_like =
        u8::from(rtp.is_some()) * Numbered::RTP + u8::from(raknet.is_some()) * Numbered::RAKNET;
    if looks_like == 0 {
        return None;
    }
    let (ssrc, rtp_seq) = rtp.unwrap_or_default();
    let seen = Numbered {
        ssrc,
        raknet_seq: raknet.unwrap_or_default(),
        rtp_seq,
        looks_like,
        dir: pkt.dir,
    };
    let prev = flow
        .numbered
        .replace(seen)
        .filter(|prev| prev.dir == seen.dir)?;
    let both = prev.looks_like & seen.looks_like;
    let close = |delta: u32| (1..=16).contains(&delta);
    if both & Numbered::RTP != 0
        && prev.ssrc == seen.ssrc
        && close(u32::from(seen.rtp_seq.wrapping_sub(prev.rtp_seq)))
    {
        return Some(Protocol::Rtp);
    }
    if both & Numbered::RAKNET == 0 {
        return None;
    }
    let (a, b) = (prev.raknet_seq, seen.raknet_seq);
    // A datagram whose frames fill it exactly may follow one with the same
    // number: a retransmission while the peer has not acknowledged it.
    let delta = b.wrapping_sub(a) & 0x00ff_ffff;
    (close(delta) || (delta == 0 && a & b & RAKNET_EXACT != 0)).then_some(Protocol::RakNet)
}

/// RTCP: version 2, a report type, and a length that fits (sender and
/// receiver reports have one fixed by their report count, which holds even
/// when the rest is encrypted, as in SRTCP).
fn rtcp(p: &[u8]) -> bool {
    if p.len() < 8 || p[0] >> 6 != 2 || !(200..=204).contains(&p[1]) {
        return false;
    }
    let words = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let len = (words + 1) * 4;
    let count = usize::from(p[0] & 0x1f);
    let report_ok = match p[1] {
        200 => words == 6 + 6 * count,
        201 => words == 1 + 6 * count,
        _ => false,
    };
    let next_ok = |at: usize| {
        p.get(at..at + 2)
            .is_some_and(|h| h[0] >> 6 == 2 && (200..=207).contains(&h[1]))
    };
    len <= p.len() && (report_ok || len == p.len() || next_ok(len))
}

/// An RTP-looking packet (version 2, a payload type outside RTCP's range):
/// its SSRC and sequence number.
fn rtp_packet(p: &[u8]) -> Option<(u32, u16)> {
    if p.len() < 12 || p[0] >> 6 != 2 || (72..=76).contains(&(p[1] & 0x7f)) {
        return None;
    }
    Some((
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// A RakNet datagram: a data datagram (the "valid" flag without ACK/NAK, a
/// 24-bit little-endian datagram number, then frames) whose first frame's
/// header and bit length fit the packet, read as its number, with
/// [`RAKNET_EXACT`] when its frames fill it exactly; or an ACK/NAK whose
/// records fill it exactly, read as [`RAKNET_ACK`].
fn raknet_datagram(p: &[u8]) -> Option<u32> {
    let (&flags, rest) = p.split_first()?;
    if flags == 0xc0 || flags == 0xa0 {
        return raknet_acknowledgement(rest).then_some(RAKNET_ACK);
    }
    if flags & 0xe0 != 0x80 || rest.len() < 6 {
        return None;
    }
    let seq = u32::from_le_bytes([rest[0], rest[1], rest[2], 0]);
    let mut frames = &rest[3..];
    let mut first = true;
    while !frames.is_empty() {
        match raknet_frame(frames) {
            Some(len) if len <= frames.len() => frames = &frames[len..],
            // The first frame must fit; a later one that does not only
            // makes the reading inexact.
            _ if first => return None,
            _ => return Some(seq),
        }
        first = false;
    }
    Some(seq | RAKNET_EXACT)
}

/// The length of the RakNet frame at the start of `p` (header, the indexes
/// its reliability carries, split information, body), if its header is
/// well formed. Reliable kinds add a message index (3 bytes), sequenced ones
/// a sequencing index (3), sequenced and ordered ones an order index and
/// channel (4); a split frame carries count, id and index (10).
fn raknet_frame(p: &[u8]) -> Option<usize> {
    let header = *p.first()?;
    if header & 0x0f != 0 || p.len() < 3 {
        return None;
    }
    let bits = usize::from(u16::from_be_bytes([p[1], p[2]]));
    let extra = match header >> 5 {
        1 => 3 + 4,
        2 | 6 => 3,
        3 | 7 => 3 + 4,
        4 => 3 + 3 + 4,
        _ => 0,
    } + if header & 0x10 != 0 { 10 } else { 0 };
    (bits > 0).then(|| 3 + extra + bits.div_ceil(8))
}

/// An ACK or NAK body: a record count, then that many records (a flag byte,
/// then one 24-bit number or a range of two), filling it exactly.
fn raknet_acknowledgement(p: &[u8]) -> bool {
    let Some((count, mut records)) = p.split_first_chunk::<2>() else {
        return false;
    };
    let count = u16::from_be_bytes(*count);
    if count == 0 {
        return false;
    }
    for _ in 0..count {
        let len = match records.first() {
            Some(1) => 4,
            Some(0) => 7,
            _ => return false,
        };
        let Some(rest) = records.get(len..) else {
            return false;
        };
        records = rest;
    }
    records.is_empty()
}

/// The name-resolution protocol a UDP packet's ports suggest.
fn dns_protocol(pkt: &Packet<'_>) -> Option<Protocol> {
    if pkt.has_port(5353) {
        Some(Protocol::Mdns)
    } else if pkt.has_port(5355) {
        Some(Protocol::Llmnr)
    } else if pkt.has_port(53) {
        Some(Protocol::Dns)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
