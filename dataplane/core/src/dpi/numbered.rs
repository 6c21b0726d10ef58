//! Media and game datagrams recognised by their numbering: RTP and RakNet
//! streams (two datagrams in a row continue one sequence), RakNet
//! acknowledgements and RTCP reports (one well-formed packet is enough).

use super::{Packet, Protocol};
use crate::packet::flow_key::Direction;

/// The last datagram of a flow as RTP and as RakNet would number it (one
/// packet can look like both: RakNet's first byte is a valid RTP one).
/// Packed into 12 bytes: it lives in every flow's inspection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Numbered {
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
/// packet is a well-formed RTCP header whose length fits. `last` is the
/// flow's previous numbered datagram.
pub(super) fn numbered_stream(last: &mut Option<Numbered>, pkt: &Packet<'_>) -> Option<Protocol> {
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
    let prev = last.replace(seen).filter(|prev| prev.dir == seen.dir)?;
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
    // Both datagrams' frames must fill them exactly (RakNet never pads): a
    // 16-bit counter at the start of another protocol's datagrams reads as
    // close numbers too. A datagram may follow one with the same number: a
    // retransmission while the peer has not acknowledged it.
    let delta = b.wrapping_sub(a) & 0x00ff_ffff;
    (a & b & RAKNET_EXACT != 0 && (close(delta) || delta == 0)).then_some(Protocol::RakNet)
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
