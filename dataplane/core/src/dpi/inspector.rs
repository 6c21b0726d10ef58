//! Per-worker inspection: the [`Inspector`] runs a flow's packets through
//! the catalogue's signatures and the protocol dissectors, keeping each
//! flow's evidence in its [`FlowInspection`] until the verdict is final.

use std::fmt;
use std::net::IpAddr;

use hyperscan::prelude::*;

use super::names::{self, NameCache};
use super::numbered::{numbered_stream, Numbered};
use super::reassembly::{Collecting, Reassembly};
use super::recent::Recent;
use super::Announcer;
use super::{dns, ftp, http, quic, sdp, stun, tls};
use super::{Classification, Classifier, Limits, Method, Packet, Protocol};

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
    /// The id of the DNS transaction whose answer was last read (0: none, or
    /// id 0, which is then read each time), so that the same answer again is
    /// not read again.
    answered: u16,
    /// Set once the flow's first packet was looked up among the announced
    /// flows: only that packet's destination can be the announced end.
    asked: bool,
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

/// Per-worker inspection machinery.
pub struct Inspector {
    limits: Limits,
    scratch: Option<Scratch>,
    /// Id of the classifier the scratch was allocated for (0: none yet).
    scratch_for: u64,
    decrypt: Box<[u8; quic::MAX_DATAGRAM]>,
    pool: Vec<Reassembly>,
    /// Indexes of the buffers not lent to a flow (seen by the module's tests,
    /// which check that every flow gives its buffer back).
    pub(super) free: Vec<u32>,
    /// Hellos that could not be reassembled because the pool was empty.
    pool_exhausted: u64,
    /// Addresses of the names seen resolved, by the application of the name.
    names: NameCache,
    /// Id of the classifier whose applications `names` holds (0: none yet).
    names_for: u64,
    /// Receiving ends of the flows other flows announced, with what they
    /// will carry, until one arrives.
    announced: Recent<AnnouncedEnd, Awaited>,
}

/// Where an announced flow will arrive: address, port, and TCP (or UDP).
type AnnouncedEnd = (IpAddr, u16, bool);

/// What an announced flow will carry, and the only address it may come
/// from (the receiver of the announcement: the other end of an FTP control
/// connection), if the announcement says.
#[derive(Clone, Copy, Debug)]
struct Awaited {
    protocol: Protocol,
    from: Option<IpAddr>,
}

/// Flows awaited at once per worker (announced and not yet seen).
const ANNOUNCED_CAPACITY: usize = 1024;

/// A flow one worker read announced, as handed to the other workers: RSS
/// may give the announced flow to any of them ([`Announcements`]).
#[derive(Clone, Copy, Debug)]
pub struct Announcement {
    end: AnnouncedEnd,
    awaited: Awaited,
    expires_ns: u64,
}

/// Every worker's queue of the flows the others' announcers announced.
#[derive(Clone, Debug)]
pub struct Announcements(std::sync::Arc<[crossbeam_queue::ArrayQueue<Announcement>]>);

/// Announcements a worker may be behind on reading (it reads its queue once a burst).
const ANNOUNCEMENTS_QUEUED: usize = 1024;

impl Announcements {
    /// One queue for each of `workers` workers.
    pub fn new(workers: usize) -> Announcements {
        Announcements(
            (0..workers.max(1))
                .map(|_| crossbeam_queue::ArrayQueue::new(ANNOUNCEMENTS_QUEUED))
                .collect(),
        )
    }

    /// Hands `announcement` to every worker but `from`; returns to how many
    /// it could not (their queue full).
    pub fn share(&self, from: usize, announcement: Announcement) -> u64 {
        let mut unshared = 0;
        for (worker, queue) in self.0.iter().enumerate() {
            if worker != from && queue.push(announcement).is_err() {
                unshared += 1;
            }
        }
        unshared
    }

    /// The next announcement handed to `worker`.
    pub fn next(&self, worker: usize) -> Option<Announcement> {
        self.0.get(worker)?.pop()
    }
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
            names: NameCache::new(names::CAPACITY),
            names_for: 0,
            announced: Recent::new(ANNOUNCED_CAPACITY),
        }
    }

    /// Learns the addresses a DNS response of `flow` (the payload of a UDP
    /// datagram from port 53) gives for a name of a catalogue application:
    /// the name asked, else the first alias on the way that is one. The
    /// answer the flow carried last, seen again (a duplicate), is not read again.
    pub fn learn_names(
        &mut self,
        classifier: &Classifier,
        flow: &mut FlowInspection,
        payload: &[u8],
        now_ns: u64,
    ) {
        let Some(id) = payload.first_chunk::<2>() else {
            return;
        };
        let transaction = u16::from_be_bytes(*id);
        if transaction != 0 && flow.answered == transaction && self.names_for == classifier.id() {
            return;
        }
        flow.answered = transaction;
        let mut name = [0u8; dns::MAX_NAME];
        let Some(question) = dns::question(payload, &mut name) else {
            return;
        };
        if !question.response {
            return;
        }
        let mut app = classifier.host_app(question.name);
        let mut addresses = [None; 16];
        let mut found = 0;
        dns::answers(payload, |answer| match answer {
            dns::Answer::Alias(alias) => {
                app = app.or_else(|| classifier.host_app(alias));
            }
            dns::Answer::Address(addr, ttl) => {
                if let Some(slot) = addresses.get_mut(found) {
                    *slot = Some((addr, ttl));
                    found += 1;
                }
            }
        });
        let Some(app) = app else { return };
        if self.names_for != classifier.id() {
            self.names.clear();
            self.names_for = classifier.id();
        }
        for (addr, ttl) in addresses.into_iter().flatten() {
            self.names.insert(addr, app, names::expiry(ttl, now_ns));
        }
    }

    /// Learns the flows a packet of a flow announces, sent by `sender` to
    /// `receiver`. An FTP control connection's data connections arrive at the
    /// listening end the message names, by the address it gives and by the
    /// sender's own (a server behind NAT announces an address its clients do
    /// not use), over TCP and from the receiver only. A SIP session
    /// description's media arrives over UDP at the address it gives, which
    /// must be the sender's own: a description that names a third party's
    /// address (a relaying proxy's, or a forged one) announces nothing. Each
    /// flow awaited is also given to `share`, for the other workers.
    pub fn learn_announced(
        &mut self,
        announcer: Announcer,
        payload: &[u8],
        [sender, receiver]: [IpAddr; 2],
        now_ns: u64,
        mut share: impl FnMut(Announcement),
    ) {
        self.announced.forget_expired(now_ns);
        let mut awaits = |end, awaited, expires_ns| {
            let announcement = Announcement {
                end,
                awaited,
                expires_ns,
            };
            self.announced.insert(end, awaited, expires_ns);
            share(announcement);
        };
        match announcer {
            Announcer::Ftp => {
                let expires_ns = now_ns.saturating_add(ftp::ANNOUNCED_TTL_NS);
                let awaited = Awaited {
                    protocol: Protocol::FtpData,
                    from: Some(receiver),
                };
                ftp::announcements(payload, |a| {
                    awaits((sender, a.port, true), awaited, expires_ns);
                    if let Some(addr) = a.addr.filter(|&addr| addr != sender) {
                        awaits((addr, a.port, true), awaited, expires_ns);
                    }
                });
            }
            Announcer::Sip => {
                let expires_ns = now_ns.saturating_add(sdp::ANNOUNCED_TTL_NS);
                sdp::streams(payload, |s| {
                    if s.addr == sender {
                        let awaited = Awaited {
                            protocol: s.protocol,
                            from: None,
                        };
                        awaits((s.addr, s.port, false), awaited, expires_ns);
                    }
                });
            }
        }
    }

    /// Awaits a flow another worker's announcer announced (as
    /// [`Inspector::learn_announced`] handed it over), unless it expired.
    pub fn await_announced(&mut self, announcement: Announcement, now_ns: u64) {
        self.announced.forget_expired(now_ns);
        if announcement.expires_ns > now_ns {
            self.announced.insert(
                announcement.end,
                announcement.awaited,
                announcement.expires_ns,
            );
        }
    }

    /// The final verdict on a flow whose first packet goes from `src` to
    /// `dst` (address and port each) when another flow announced `dst` for
    /// it: an FTP data connection, a call's RTP or RTCP. Only a flow's first
    /// packet is looked up, asked before [`Inspector::inspect`] is shown it
    /// (a flow under way before the announcement, or the announced end's own
    /// connections elsewhere, are not the one announced); the announcement
    /// is used up.
    pub fn announced(
        &mut self,
        flow: &mut FlowInspection,
        tcp: bool,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        now_ns: u64,
    ) -> Option<Classification> {
        if std::mem::replace(&mut flow.asked, true) || flow.done || flow.packets > 0 {
            return None;
        }
        let end = (dst.0, dst.1, tcp);
        let awaited = self.announced.get(&end, now_ns)?;
        if awaited.from.is_some_and(|from| from != src.0) {
            return None;
        }
        self.announced.take(&end, now_ns);
        let verdict = Classification {
            protocol: Some(awaited.protocol),
            app: None,
            method: Method::Related,
        };
        Some(self.finish_with(flow, verdict))
    }

    /// True when announced flows are awaited: only then is a flow's
    /// [`Inspector::announced`] worth asking.
    pub fn awaits_announced(&self) -> bool {
        !self.announced.is_empty()
    }

    /// Forgets the names seen resolved and the connections announced (a
    /// capture file read offline is a trace of its own).
    pub fn forget_context(&mut self) {
        self.names.clear();
        self.announced.clear();
    }

    /// `verdict` on a flow between `ends`, with the application of a name
    /// one of them was resolved for when the verdict is a web session that
    /// names none itself (nothing else: a name says what a server serves,
    /// not which protocol a flow speaks).
    pub fn recall_name(
        &self,
        classifier: &Classifier,
        verdict: Classification,
        ends: [IpAddr; 2],
        now_ns: u64,
    ) -> Classification {
        let web = matches!(
            verdict.protocol,
            Some(Protocol::Tls | Protocol::Quic | Protocol::Http)
        );
        if !web || verdict.app.is_some() || self.names_for != classifier.id() {
            return verdict;
        }
        match ends.iter().find_map(|addr| self.names.get(addr, now_ns)) {
            Some(app) => Classification {
                app: Some(app),
                method: Method::DnsCache,
                ..verdict
            },
            None => verdict,
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
        // A flow's first packet has been shown: later ones are not looked up
        // among the announced flows (see [`Inspector::announced`]).
        flow.asked = true;
        if flow.done {
            return None;
        }
        if pkt.payload.is_empty() {
            return None;
        }
        if self.scratch_for != classifier.id() {
            // A new catalogue: a scratch for its databases (off the steady-state path).
            self.scratch = classifier.scratch();
            self.scratch_for = classifier.id();
        }
        flow.packets = flow.packets.saturating_add(1);
        flow.bytes = flow.bytes.saturating_add(pkt.payload.len() as u32);
        let verdict = classifier
            .signature(pkt, self.scratch.as_ref())
            .map(|app| Classification {
                protocol: None,
                app: Some(app),
                method: Method::Signature,
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

    /// Runs the protocol dissectors.
    fn dissect(
        &mut self,
        classifier: &Classifier,
        flow: &mut FlowInspection,
        pkt: &Packet<'_>,
    ) -> Option<Classification> {
        let found = |protocol, app: Option<u16>| {
            Some(Classification::dissected(
                protocol,
                app.map(|app| (app, Method::ServerName)),
            ))
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
            if let Some(message) = stun::message(payload) {
                return stun_found(classifier, &message);
            }
            // DNS on another port: only a message that parses exactly.
            if dns::is_exact_message(payload) {
                let mut name = [0u8; dns::MAX_NAME];
                if let Some(q) = dns::question(payload, &mut name) {
                    return found(Protocol::Dns, classifier.host_app(q.name));
                }
            }
            return numbered_stream(&mut flow.numbered, pkt).and_then(|p| found(p, None));
        }
        let framed = payload
            .split_first_chunk::<2>()
            .filter(|(len, rest)| usize::from(u16::from_be_bytes(**len)) == rest.len());
        if pkt.has_port(53) || framed.is_some_and(|(_, msg)| dns::is_exact_message(msg)) {
            let mut name = [0u8; dns::MAX_NAME];
            if let Some(q) = dns::question_tcp(payload, &mut name) {
                return found(Protocol::Dns, classifier.host_app(q.name));
            }
            // On port 53 a segment may hold the message without its 2-byte
            // length, which the one before carried alone (RFC 7766 §8 asks
            // for one write; older stacks made two).
            if pkt.has_port(53) {
                if let Some(q) = dns::question(payload, &mut name) {
                    return found(Protocol::Dns, classifier.host_app(q.name));
                }
            }
        }
        if let Some(c) = self.tls(classifier, flow, pkt) {
            return Some(c);
        }
        if let Some(message) = stun::stream_message(payload) {
            return stun_found(classifier, &message);
        }
        if let Some(req) = http::request(payload) {
            return found(
                Protocol::Http,
                req.host.and_then(|h| classifier.host_app(h)),
            );
        }
        if http::is_response(payload) && flow.tentative.is_unknown() {
            flow.tentative = Classification::dissected(Protocol::Http, None);
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
        let tls_found = |app| Classification::dissected(Protocol::Tls, app);
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
            let found = classifier.certificate(data);
            return self.after_certificate(flow, found, None);
        }
        // What the records say, with nothing borrowed from the buffer.
        enum Seen {
            Hello {
                named: bool,
                app: Option<(u16, Method)>,
            },
            Server((tls::CertificateSearch, Option<u16>)),
            Certificate((tls::CertificateSearch, Option<u16>)),
            Other(tls::Hello<'static>),
        }
        let seen = match tls::client_hello_from_records(data) {
            tls::Hello::Client(h) => Seen::Hello {
                named: h.server_name.is_some(),
                app: classifier.session_app(pkt, &h, self.scratch.as_ref()),
            },
            tls::Hello::Server => Seen::Server(classifier.certificate(data)),
            // A later handshake record may be a client's certificate.
            tls::Hello::OtherRecord => Seen::Certificate(classifier.certificate(data)),
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
                Some(Classification::dissected(
                    Protocol::Tls,
                    app.map(|app| (app, Method::Certificate)),
                ))
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
                    method: Method::Port,
                };
            }
            return None;
        };
        let quic_found = |app| Classification::dissected(Protocol::Quic, app);
        if version == quic::Version::GoogleQ {
            let app = quic::gquic_server_name(pkt.payload).and_then(|n| classifier.host_app(n));
            return Some(quic_found(app.map(|app| (app, Method::ServerName))));
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
                self.pool[b as usize].start(what, seq, first);
            }
            None => self.pool_exhausted += 1,
        }
    }
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

/// A STUN message's verdict: the application whose agents send one of its
/// attributes, if the catalogue knows one.
fn stun_found(classifier: &Classifier, message: &stun::Message<'_>) -> Option<Classification> {
    let app = classifier.stun_app(message);
    Some(Classification::dissected(
        Protocol::Stun,
        app.map(|app| (app, Method::Signature)),
    ))
}
