//! Stage `parse`: every received frame's headers, parsed once into the
//! burst; malformed frames are counted by reason and dropped here.

use super::{Burst, Next};
use crate::frame::Frame;
use crate::packet::parse;
use crate::stats::{Counter, Counters};

// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(counters: &mut Counters, burst: &mut Burst<F>) {
    let (mut packets, mut bytes) = (0, 0);
    for i in burst.slots() {
        if !matches!(burst.meta[i].next, Next::Parse) {
            continue;
        }
        let Some(frame) = &burst.frames[i] else {
            unreachable!("a received slot holds its frame")
        };
        let data = frame.data();
        packets += 1;
        bytes += data.len() as u64;
        // Parsed straight into its slot: no by-value copy of the result,
        // whose wide reads would stall on the parser's narrow stores.
        parse::parse_into(data, &mut burst.headers[i]);
        match burst.headers[i] {
            Ok(_) => burst.meta[i].next = Next::Admit,
            Err(err) => {
                counters.parse_drop(err);
                burst.discard(i);
            }
        }
    }
    counters.add(Counter::RxPackets, packets);
    counters.add(Counter::RxBytes, bytes);
}
