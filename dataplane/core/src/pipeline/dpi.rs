//! Stage `dpi`: while a flow is unclassified, each of its packets goes
//! through the inspector; once it has a verdict, its bytes are counted
//! under the flow's application. DNS answers are read all along: the
//! addresses they give name the servers of the web sessions that follow.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Burst, Context, Next};
use crate::config::Snapshot;
use crate::dpi::counters::DpiCounters;
use crate::dpi::{self, Announcements, Classifier, FlowInspection, Inspector, ReadOn};
use crate::flow::table::{FlowId, FlowTable};
use crate::frame::Frame;
use crate::packet::parse::{L3, L4};

/// Per-worker classification state: the inspector and one inspection
/// state per flow-table entry.
#[derive(Debug)]
pub(super) struct State {
    inspector: Inspector,
    /// Indexed by [`FlowId::index`]; reset when the entry starts a new flow.
    flows: Vec<FlowInspection>,
    /// The catalogue the flow table's verdicts are numbered by.
    numbered_by: Arc<Classifier>,
    /// This worker's number, and every worker's queue of the flows others announced.
    worker: usize,
    announcements: Announcements,
    pub counters: Arc<DpiCounters>,
}

impl State {
    pub(super) fn new(cfg: &Snapshot, worker: usize, announcements: Announcements) -> Self {
        // Reassembly buffers as configured, but never more than flows the worker can hold.
        let buffers = (cfg.dpi.reassembly_buffers as usize).min(cfg.worker.flow_capacity as usize);
        State {
            inspector: Inspector::new(cfg.dpi.limits, buffers),
            flows: vec![FlowInspection::default(); cfg.worker.flow_capacity as usize],
            numbered_by: cfg.dpi.classifier.clone(),
            worker,
            announcements,
            counters: Arc::default(),
        }
    }

    /// Applies `cfg`'s limits; when its catalogue numbers the applications
    /// otherwise (a user application added or removed), renumbers the
    /// verdicts in `flows`, so that a classified flow keeps its application
    /// for policies and counters rather than taking the one now at its number.
    pub(super) fn reconfigure(&mut self, cfg: &Snapshot, flows: &mut FlowTable) {
        self.inspector.set_limits(cfg.dpi.limits);
        let classifier = &cfg.dpi.classifier;
        if Arc::ptr_eq(&self.numbered_by, classifier) {
            return;
        }
        if let Some(renumbering) = classifier.renumbering(&self.numbered_by) {
            for entry in flows.entries_mut() {
                entry.app = renumbering.apply(entry.app);
            }
        }
        self.numbered_by = classifier.clone();
    }

    /// What a classified flow's packet still says, by its account: a DNS
    /// answer's addresses go into the names cache (see
    /// [`Inspector::learn_names`]); an announcer's flows to come are awaited
    /// here and handed to the other workers (see [`Inspector::learn_announced`]).
    fn read_on(
        &mut self,
        classifier: &Classifier,
        reads: ReadOn,
        flow: FlowId,
        packet: Said<'_>,
        now_ns: u64,
    ) {
        match reads {
            ReadOn::DnsAnswers if packet.answer => {
                let inspection = &mut self.flows[flow.index()];
                self.inspector
                    .learn_names(classifier, inspection, packet.payload, now_ns);
            }
            ReadOn::Announcements(announcer) => {
                let Some([dst, src]) = packet.ends else {
                    return;
                };
                let (announcements, worker) = (&self.announcements, self.worker);
                let mut unshared = 0;
                self.inspector.learn_announced(
                    announcer,
                    packet.payload,
                    [src, dst],
                    now_ns,
                    |announcement| unshared += announcements.share(worker, announcement),
                );
                if unshared > 0 {
                    self.counters.announcements_unshared(unshared);
                }
            }
            ReadOn::DnsAnswers | ReadOn::Nothing => {}
        }
    }

    /// A new flow took entry `id`: its inspection starts over.
    pub(super) fn start(&mut self, id: FlowId) {
        self.flows[id.index()] = FlowInspection::default();
    }
}

/// What [`State::read_on`] reads of a packet.
#[derive(Clone, Copy)]
struct Said<'a> {
    payload: &'a [u8],
    /// A UDP datagram from port 53.
    answer: bool,
    /// Its destination and source addresses (None for ARP).
    ends: Option<[IpAddr; 2]>,
}

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    state: &mut State,
    flows: &mut FlowTable,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
) {
    let settings = &ctx.cfg.dpi;
    if !settings.enabled {
        return;
    }
    let classifier = &*settings.classifier;
    while let Some(announcement) = state.announcements.next(state.worker) {
        state.inspector.await_announced(announcement, ctx.now_ns);
    }
    for i in burst.slots() {
        let meta = &burst.meta[i];
        let (Next::Forward, Some(flow)) = (meta.next, meta.flow) else {
            continue;
        };
        let ip_len = u64::from(meta.ip_len);
        let entry = flows.get_mut(flow.id);
        // The common case, a classified flow's packet: one table lookup.
        let account = classifier.account(entry.app);
        if let Some(account) = account {
            state
                .counters
                .bytes(account.label, account.category, ip_len);
            if account.reads == ReadOn::Nothing {
                continue;
            }
        }
        let Ok(headers) = &burst.headers[i] else {
            unreachable!("only parsed packets are forwarded")
        };
        let (tcp, src_port, dst_port) = match headers.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            } => (true, src_port, dst_port),
            L4::Udp { src_port, dst_port } => (false, src_port, dst_port),
            _ => continue,
        };
        let data = burst.frame(i).data();
        let ends = match headers.l3 {
            L3::Ipv4(ip) => Some([ip.dst.into(), ip.src.into()]),
            L3::Ipv6(ip) => Some([ip.dst.into(), ip.src.into()]),
            L3::Arp(_) => None,
        };
        let said = Said {
            payload: dpi::l4_payload(data, headers).unwrap_or(&[]),
            answer: !tcp && src_port == 53,
            ends,
        };
        if let Some(account) = account {
            state.read_on(classifier, account.reads, flow.id, said, ctx.now_ns);
            continue;
        }
        let inspection = &mut state.flows[flow.id.index()];
        let announced = match ends {
            Some([dst, src]) if state.inspector.awaits_announced() => state.inspector.announced(
                inspection,
                tcp,
                (src, src_port),
                (dst, dst_port),
                ctx.now_ns,
            ),
            _ => None,
        };
        let packet = dpi::Packet {
            seq: dpi::tcp_seq(data, headers),
            tcp,
            src_port,
            dst_port,
            dir: flow.dir,
            payload: said.payload,
        };
        let verdict =
            announced.or_else(|| state.inspector.inspect(classifier, inspection, &packet));
        let Some(verdict) = verdict else {
            continue;
        };
        let verdict = match ends {
            Some(ends) => state
                .inspector
                .recall_name(classifier, verdict, ends, ctx.now_ns),
            None => verdict,
        };
        entry.app = verdict.to_flow_app();
        let packets = inspection.packets();
        state
            .counters
            .set_reassembly_exhausted(state.inspector.pool_exhausted());
        // Counted and read on by the new verdict's account, as its later packets will be.
        let Some(account) = classifier.account(entry.app) else {
            continue;
        };
        // The flow's bytes so far, this packet's included (the flow stage counted it).
        let bytes = entry.bytes[0] + entry.bytes[1];
        state.counters.classified(
            account.label,
            account.category,
            verdict.method,
            bytes,
            packets,
        );
        state.read_on(classifier, account.reads, flow.id, said, ctx.now_ns);
    }
}
