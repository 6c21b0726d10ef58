//! Stage `rewrite`: routed packets get their next hop's and their port's
//! MAC addresses; they are then ready to leave.

use super::{Burst, Context, Next};
use crate::frame::Frame;
use crate::stats::{Counter, Counters, DropReason};

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(counters: &mut Counters, ctx: &Context<'_>, burst: &mut Burst<F>) {
    let (mut packets, mut bytes) = (0, 0);
    for i in burst.slots() {
        let Next::Rewrite { port, dst_mac } = burst.meta[i].next else {
            continue;
        };
        let Some(egress) = ctx.cfg.ports.get(usize::from(port)) else {
            counters.drop(DropReason::NoRoute);
            burst.discard(i);
            continue;
        };
        let frame = burst.frame_mut(i);
        let data = frame.data_mut();
        data[0..6].copy_from_slice(&dst_mac);
        data[6..12].copy_from_slice(&egress.mac);
        packets += 1;
        bytes += frame.len() as u64;
        burst.meta[i].next = Next::Transmit(port);
    }
    counters.add(Counter::Forwarded, packets);
    counters.add(Counter::ForwardedBytes, bytes);
}
