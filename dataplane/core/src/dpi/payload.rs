//! What of a parsed frame classification reads: its L4 payload, its TCP
//! sequence number, and the [`Packet`] the inspector is given.

use crate::packet::flow_key::Direction;
use crate::packet::parse::{PacketMeta, L4};

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
    /// True when either end of the flow uses `port`.
    pub(super) fn has_port(&self, port: u16) -> bool {
        self.src_port == port || self.dst_port == port
    }
}
