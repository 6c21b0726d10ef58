//! The gateway's own addresses, as the packet path asks about them.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A few addresses behind a one-word filter: a packet to forward (whose
/// destination is almost never one of them) is answered by one bit test,
/// the list is scanned only when the address's bit is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSet<A> {
    filter: u64,
    addrs: Vec<A>,
}

impl<A> Default for AddressSet<A> {
    fn default() -> Self {
        AddressSet {
            filter: 0,
            addrs: Vec::new(),
        }
    }
}

/// An address folded to a bit of the filter.
pub trait FilterBit: Copy + PartialEq {
    /// The bit (one of 64) this address sets.
    fn bit(self) -> u64;
}

impl FilterBit for Ipv4Addr {
    #[inline]
    fn bit(self) -> u64 {
        // Fibonacci hashing: the top six bits of the product.
        1 << (u32::from(self).wrapping_mul(0x9e37_79b1) >> 26)
    }
}

impl FilterBit for Ipv6Addr {
    #[inline]
    fn bit(self) -> u64 {
        let v = u128::from(self);
        let folded = (v as u64) ^ ((v >> 64) as u64);
        1 << (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
    }
}

impl<A: FilterBit> AddressSet<A> {
    /// Whether `addr` is in the set.
    #[inline]
    pub fn contains(&self, addr: A) -> bool {
        self.filter & addr.bit() != 0 && self.addrs.contains(&addr)
    }
}

impl<A: FilterBit> FromIterator<A> for AddressSet<A> {
    fn from_iter<I: IntoIterator<Item = A>>(iter: I) -> Self {
        let addrs: Vec<A> = iter.into_iter().collect();
        AddressSet {
            filter: addrs.iter().fold(0, |f, a| f | a.bit()),
            addrs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_and_others_are_not() {
        let v4: AddressSet<Ipv4Addr> = ["10.0.1.1", "10.0.2.1", "192.0.2.255"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for a in ["10.0.1.1", "10.0.2.1", "192.0.2.255"] {
            assert!(v4.contains(a.parse().unwrap()), "{a}");
        }
        // Every address of a /16 that is not a member is refused, whether
        // its filter bit collides with a member's or not.
        for i in 0..=u16::MAX {
            let a = Ipv4Addr::from(0x0a00_0000 | u32::from(i));
            let member = ["10.0.1.1", "10.0.2.1"].contains(&a.to_string().as_str());
            assert_eq!(v4.contains(a), member, "{a}");
        }
        let v6: AddressSet<Ipv6Addr> = ["fd00::1", "fe80::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert!(v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("fd00::2".parse().unwrap()));
        assert!(!AddressSet::<Ipv6Addr>::default().contains("fd00::1".parse().unwrap()));
    }
}
