//! Stage `flow`: every packet to be forwarded finds its flow, or makes
//! one. The keys of the whole burst are looked up together so that their
//! cache misses overlap ([`FlowTable::lookup_or_insert_burst`]); each entry
//! then counts its packet. A new flow's classification and policy decision
//! start afresh.

use super::{dpi, policy, Burst, Context, Next};
use crate::flow::table::{FlowTable, TableFull};
use crate::frame::Frame;
use crate::packet::flow_key::Direction;
use crate::stats::{Counter, Counters};
use crate::BURST_SIZE;

use super::burst::FlowRef;

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    flows: &mut FlowTable,
    dpi: &mut dpi::State,
    policy: &mut policy::State,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
) {
    let mut dirs = [Direction::LoToHi; BURST_SIZE];
    let mut n = 0;
    for i in burst.slots() {
        if !matches!(burst.meta[i].next, Next::Forward) {
            continue;
        }
        let Ok(meta) = &burst.headers[i] else {
            unreachable!("only parsed packets are forwarded")
        };
        if let Some((key, dir)) = meta.flow_key() {
            burst.keys[n] = key;
            burst.keyed[n] = i as u8;
            dirs[n] = dir;
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    let mut found = [Err(TableFull); BURST_SIZE];
    flows.lookup_or_insert_burst(&burst.keys[..n], ctx.now_ns, &mut found[..n]);
    let mut refused = 0;
    for k in 0..n {
        let i = usize::from(burst.keyed[k]);
        let Ok((id, created)) = found[k] else {
            refused += 1;
            continue;
        };
        if created {
            // A new flow in this entry: inspection and the policy decision
            // start over. Later packets of the burst find it already made
            // (`created` false).
            dpi.start(id);
            policy.start(id, dirs[k]);
        }
        let meta = &mut burst.meta[i];
        flows
            .get_mut(id)
            .touch(dirs[k], u32::from(meta.ip_len), ctx.now_ns);
        meta.flow = Some(FlowRef { id, dir: dirs[k] });
    }
    counters.add(Counter::FlowInsertFailed, refused);
}
