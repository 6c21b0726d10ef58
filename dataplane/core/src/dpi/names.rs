//! The names the gateway saw resolved: each address in a DNS answer that
//! passed through it, with the catalogue application of the name asked (or
//! of an alias on the way to the address), for as long as a client may use
//! the answer. A web session to such an address whose own packets name no
//! application (no server name, a certificate that names none) takes the
//! resolved name's: the session to an address the client just resolved as
//! `*.nflxvideo.net` is Netflix.
//!
//! One cache per worker ([`NameCache`]), bounded: when it is full the entry
//! written longest ago goes.

use std::net::IpAddr;

use super::recent::Recent;

/// Addresses remembered per worker.
pub const CAPACITY: usize = 4096;

/// How long an answer is remembered at least, whatever its TTL: clients keep
/// answers longer than short CDN TTLs say (browsers hold them for a minute).
const MIN_TTL_S: u32 = 60;
/// How long an answer is remembered at most.
const MAX_TTL_S: u32 = 3600;

/// Addresses and the application of the name they were resolved for.
pub type NameCache = Recent<IpAddr, u16>;

/// Until when an answer with `ttl_s` read at `now_ns` is used: its TTL,
/// held within the bounds above.
pub fn expiry(ttl_s: u32, now_ns: u64) -> u64 {
    let ttl_ns = u64::from(ttl_s.clamp(MIN_TTL_S, MAX_TTL_S)) * 1_000_000_000;
    now_ns.saturating_add(ttl_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn an_answer_is_used_for_its_ttl_within_the_bounds() {
        assert_eq!(expiry(300, 10 * S), 310 * S);
        // A TTL of 1 s still holds for a minute, one of a day for an hour.
        assert_eq!(expiry(1, 0), 60 * S);
        assert_eq!(expiry(86_400, 0), 3600 * S);
        assert_eq!(expiry(300, u64::MAX), u64::MAX, "no overflow");
    }
}
