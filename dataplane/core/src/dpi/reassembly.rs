//! The buffers TLS and QUIC hellos are reassembled in when they span
//! packets: bytes placed where their sequence number or CRYPTO offset says,
//! whatever the order they arrive in.

use crate::packet::flow_key::Direction;

/// Bytes one reassembly buffer holds (a ClientHello with a post-quantum key share fits).
pub const REASSEMBLY_BYTES: usize = 4096;

/// What one reassembly buffer collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Collecting {
    /// TLS records from the client's direction of a TCP stream.
    Tls(Direction),
    /// TLS records that should hold a certificate (the server's, or a client's).
    TlsCertificate(Direction),
    /// QUIC CRYPTO frames (client direction).
    Quic(Direction),
}

/// A reassembly buffer: bytes placed at offsets, with the filled ranges.
pub(super) struct Reassembly {
    /// What the buffer collects, and from which direction.
    pub(super) what: Collecting,
    /// Sequence number of the first byte collected (TCP; 0 for QUIC's CRYPTO offsets).
    pub(super) base_seq: u32,
    data: Box<[u8; REASSEMBLY_BYTES]>,
    /// Filled ranges, sorted and merged; at most [`MAX_RANGES`].
    ranges: [(u16, u16); MAX_RANGES],
    nranges: u8,
}

const MAX_RANGES: usize = 8;

impl Reassembly {
    /// An empty buffer.
    pub(super) fn new() -> Reassembly {
        Reassembly {
            what: Collecting::Tls(Direction::LoToHi),
            base_seq: 0,
            data: Box::new([0; REASSEMBLY_BYTES]),
            ranges: [(0, 0); MAX_RANGES],
            nranges: 0,
        }
    }

    /// Empties the buffer for `what`, whose first byte has sequence number
    /// `seq`, and places `first` at its start.
    pub(super) fn start(&mut self, what: Collecting, seq: u32, first: &[u8]) {
        self.what = what;
        self.base_seq = seq;
        self.nranges = 0;
        self.put(0, first);
    }

    /// Places `bytes` at `offset`; bytes beyond the buffer are dropped.
    pub(super) fn put(&mut self, offset: u64, bytes: &[u8]) {
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
    pub(super) fn prefix(&self) -> &[u8] {
        match self.ranges[..usize::from(self.nranges)].first() {
            Some(&(0, end)) => &self.data[..usize::from(end)],
            _ => &[],
        }
    }
}
