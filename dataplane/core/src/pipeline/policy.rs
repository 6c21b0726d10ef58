//! Stage `policy`: each forwarded flow is matched against the site's rules,
//! highest priority first, when its first packet passes and again when the
//! flow's classification changes (DPI's verdict), and whenever a new
//! configuration is in force; the decision is kept per flow in between, so
//! a packet of a decided flow costs one comparison. `deny` drops (counted
//! per rule), `allow` and `route` forward; a `route` rule's flows carry its
//! steering to `encrypt`, which picks their path by the rule's selection.
//!
//! A flow is matched on its addresses, protocol and destination port as its
//! first packet carried them (the side that started it is the source),
//! on the DSCP of the packet being evaluated, and, for application and
//! category conditions, on DPI's verdict once there is one: until then such
//! conditions are not met, so the first packets of a flow a rule denies by
//! application pass until the flow is identified (usually its first packet
//! with payload).
//!
//! The same decision gives the flow its QoS class (the matching rule's
//! `qos_class`, else its category's from DPI) and its hash, which its
//! packets carry to the egress shaper; a class with a DSCP in `[qos]`
//! marks each of its packets with it here. The stage runs for classes
//! alone when a shaped egress or a marking class exists and no rule does.

use std::sync::Arc;

use super::{Burst, Context, Next, Shaping};
use crate::config::policy::{first_match, FlowFacts};
use crate::config::site::RuleAction;
use crate::config::Snapshot;
use crate::dpi::{Category, Classification};
use crate::flow::table::{FlowId, FlowTable};
use crate::frame::Frame;
use crate::packet::dscp;
use crate::packet::flow_key::{Direction, FlowKey};
use crate::packet::parse::PacketMeta;
use crate::qos::Class;
use crate::stats::{Counters, DropReason, PolicyCounters};

/// A flow's standing with the rules.
#[derive(Debug, Clone, Copy)]
struct Decision {
    /// The configuration generation it was taken under; 0: not yet.
    generation: u32,
    /// The flow's classification (as the flow entry packs it) at the time.
    app: u32,
    /// 1 + the index of the matching rule in the snapshot's rules; 0: none.
    rule: u32,
    /// Which way the flow's first packet travelled.
    initiator: Direction,
    /// How `encrypt` steers the flow's packets when a `route` rule decided
    /// ([`steering`]); 0 otherwise.
    steer: u64,
    /// How an egress shaper queues the flow's packets.
    shaping: Shaping,
}

const UNDECIDED: Decision = Decision {
    generation: 0,
    app: 0,
    rule: 0,
    initiator: Direction::LoToHi,
    steer: 0,
    shaping: Shaping::NONE,
};

/// A route rule's steering of a flow: the rule (1 + its index in the
/// snapshot's rules) in the high half, the flow's hash in the low half, so
/// that the worker owning the peer can pin the flow to a path.
pub(super) fn steering(rule: u32, flow_hash: u64) -> u64 {
    u64::from(rule) << 32 | (flow_hash & 0xffff_ffff)
}

/// Per-worker policy state: one decision per flow-table entry.
#[derive(Debug)]
pub(super) struct State {
    decisions: Vec<Decision>,
    /// Drops per rule, shared with the metrics endpoint.
    pub counters: Arc<PolicyCounters>,
}

impl State {
    pub(super) fn new(cfg: &Snapshot) -> Self {
        State {
            decisions: vec![UNDECIDED; cfg.worker.flow_capacity as usize],
            counters: Arc::default(),
        }
    }

    /// A new flow took entry `id`, started by a packet travelling `dir`.
    pub(super) fn start(&mut self, id: FlowId, dir: Direction) {
        self.decisions[id.index()] = Decision {
            initiator: dir,
            ..UNDECIDED
        };
    }
}

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    state: &mut State,
    flows: &FlowTable,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
) {
    let rules = &ctx.cfg.site.rules;
    let marks = &ctx.cfg.qos.marks;
    let classes_matter = !ctx.cfg.shapers.is_empty() || ctx.cfg.qos.marks_any();
    if rules.is_empty() && !classes_matter {
        return;
    }
    let generation = ctx.cfg.generation;
    for i in burst.slots() {
        let (Next::Forward, Some(flow)) = (burst.meta[i].next, burst.meta[i].flow) else {
            continue;
        };
        let entry = flows.get(flow.id);
        let decision = &mut state.decisions[flow.id.index()];
        if decision.generation != generation || decision.app != entry.app {
            let Ok(headers) = &burst.headers[i] else {
                unreachable!("only parsed packets are forwarded")
            };
            decision.rule = if rules.is_empty() {
                0
            } else {
                let facts = facts(
                    ctx,
                    &entry.key,
                    decision.initiator,
                    entry.app,
                    headers,
                    burst.frame(i).data(),
                );
                first_match(rules, &facts).map_or(0, |r| r as u32 + 1)
            };
            decision.generation = generation;
            decision.app = entry.app;
            let matched = decision
                .rule
                .checked_sub(1)
                .and_then(|r| rules.get(r as usize));
            let hash = flows.hash(&entry.key);
            decision.steer = match matched {
                Some(r) if r.action == RuleAction::Route => steering(decision.rule, hash),
                _ => 0,
            };
            decision.shaping = Shaping {
                class: matched
                    .and_then(|r| r.qos_class)
                    .unwrap_or_else(|| class_of(ctx, entry.app)),
                flow_hash: hash as u32,
                ..Shaping::NONE
            };
        }
        burst.shaping[i] = decision.shaping;
        burst.steer[i] = decision.steer;
        if let Some(dscp) = marks[decision.shaping.class.index()] {
            let l3 = burst.headers[i]
                .as_ref()
                .map_or(usize::MAX, |h| h.l3_offset.into());
            if let Some(ip) = burst.frame_mut(i).data_mut().get_mut(l3..) {
                dscp::set(ip, dscp);
            }
        }
        let Some(rule) = decision
            .rule
            .checked_sub(1)
            .and_then(|r| rules.get(r as usize))
        else {
            continue;
        };
        if rule.action == RuleAction::Deny {
            state.counters.dropped(rule.slot);
            counters.drop(DropReason::PolicyDenied);
            burst.discard(i);
        }
    }
}

/// The class of a flow classified as `app` (as the flow entry packs it):
/// its category's, Standard until DPI has a verdict.
fn class_of(ctx: &Context<'_>, app: u32) -> Class {
    let category = Classification::from_flow_app(app)
        .map_or(Category::Unknown, |c| ctx.cfg.dpi.classifier.category(&c));
    Class::for_category(category)
}

/// What the rules see of a flow.
fn facts(
    ctx: &Context<'_>,
    key: &FlowKey,
    initiator: Direction,
    app: u32,
    headers: &PacketMeta,
    data: &[u8],
) -> FlowFacts {
    let (lo, hi) = (key.lo_addr(), key.hi_addr());
    let (src, dst, dst_port) = match initiator {
        Direction::LoToHi => (lo, hi, key.port_hi),
        Direction::HiToLo => (hi, lo, key.port_lo),
    };
    let classification = Classification::from_flow_app(app);
    let classifier = &ctx.cfg.dpi.classifier;
    FlowFacts {
        src,
        dst,
        protocol: key.proto,
        dst_port,
        dscp: data
            .get(usize::from(headers.l3_offset)..)
            .map_or(0, dscp::get),
        category: classification.map(|c| classifier.category(&c)),
        classification,
    }
}
