//! Packet parsing and flow identity, and the header edits a gateway makes.

pub mod dscp;
pub mod flow_key;
pub mod parse;

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), in one's complement
/// arithmetic: a checksum after one 16-bit word changed from `old` to `new`.
#[inline]
pub fn checksum_adjust(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
