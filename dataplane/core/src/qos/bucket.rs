//! A token bucket kept in exact integer units, so that its long-run rate is
//! the configured one to the bit whatever the packet sizes and however
//! often it is asked.
//!
//! Tokens are counted in nanobits: `rate` bit/s adds exactly `rate`
//! nanobits per nanosecond, and a byte costs 8·10⁹. A packet may be sent
//! whenever the bucket is not in debt, and its whole cost is then taken,
//! possibly into debt: so a packet larger than the burst (a 1500 B packet on
//! a 64 kbit/s tunnel) still goes out, and the debt it leaves delays the
//! next one by exactly its transmission time. Backlogged, the bucket sends
//! `rate × t + burst` plus at most one packet in any `t`.

/// Nanobits in a byte.
const NANOBITS_PER_BYTE: i128 = 8_000_000_000;

/// A token bucket: `rate` bit/s, holding at most `burst` bytes of credit.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bps: u64,
    burst: i128,
    tokens: i128,
    updated_ns: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`; `rate_bps` is at least 1.
    pub fn new(rate_bps: u64, burst_bytes: u32, now_ns: u64) -> Self {
        let burst = i128::from(burst_bytes) * NANOBITS_PER_BYTE;
        TokenBucket {
            rate_bps: rate_bps.max(1),
            burst,
            tokens: burst,
            updated_ns: now_ns,
        }
    }

    /// The rate (bit/s).
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// The burst (bytes).
    pub fn burst_bytes(&self) -> u32 {
        u32::try_from(self.burst / NANOBITS_PER_BYTE).unwrap_or(u32::MAX)
    }

    /// Adds the credit earned since the last refill, up to the burst.
    #[inline]
    pub fn refill(&mut self, now_ns: u64) {
        if now_ns > self.updated_ns {
            let earned = i128::from(now_ns - self.updated_ns) * i128::from(self.rate_bps);
            self.tokens = (self.tokens + earned).min(self.burst);
            self.updated_ns = now_ns;
        }
    }

    /// Whether a packet may be sent now (as of the last refill).
    #[inline]
    pub fn conforms(&self) -> bool {
        self.tokens >= 0
    }

    /// Takes the cost of `bytes`, into debt if need be.
    #[inline]
    pub fn charge(&mut self, bytes: u32) {
        self.tokens -= i128::from(bytes) * NANOBITS_PER_BYTE;
    }

    /// When the bucket next conforms (the last refill time if it does now).
    pub fn ready_at(&self) -> u64 {
        if self.tokens >= 0 {
            return self.updated_ns;
        }
        let rate = i128::from(self.rate_bps);
        let wait = (-self.tokens + rate - 1) / rate;
        self.updated_ns
            .saturating_add(u64::try_from(wait).unwrap_or(u64::MAX))
    }

    /// Credit held now (bytes; negative in debt).
    #[cfg(test)]
    fn credit_bytes(&self) -> i64 {
        i64::try_from(self.tokens / NANOBITS_PER_BYTE).unwrap_or(i64::MAX)
    }

    /// Changes rate and burst at `now_ns`, keeping the credit earned so far
    /// (at the old rate) up to the new burst, and any debt.
    pub fn set(&mut self, rate_bps: u64, burst_bytes: u32, now_ns: u64) {
        self.refill(now_ns);
        self.rate_bps = rate_bps.max(1);
        self.burst = i128::from(burst_bytes) * NANOBITS_PER_BYTE;
        self.tokens = self.tokens.min(self.burst);
        self.updated_ns = self.updated_ns.max(now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_sends_its_burst_then_waits_exactly_one_transmission_time() {
        // 8 kB/s, 1000 B burst.
        let mut bucket = TokenBucket::new(64_000, 1_000, 0);
        assert!(bucket.conforms());
        bucket.charge(1_000);
        assert!(bucket.conforms(), "exactly the burst leaves no debt");
        bucket.charge(1);
        assert!(!bucket.conforms());
        // One byte at 8 kB/s is 125 µs.
        assert_eq!(bucket.ready_at(), 125_000);
        bucket.refill(124_999);
        assert!(!bucket.conforms());
        bucket.refill(125_000);
        assert!(bucket.conforms());
    }

    #[test]
    fn a_packet_larger_than_the_burst_goes_out_and_its_debt_paces_the_next() {
        let mut bucket = TokenBucket::new(64_000, 100, 0);
        bucket.charge(1_500);
        // 1400 B of debt at 8 kB/s: 175 ms.
        assert_eq!(bucket.ready_at(), 175_000_000);
    }

    #[test]
    fn credit_is_capped_at_the_burst_and_survives_a_rate_change() {
        let mut bucket = TokenBucket::new(1_000_000, 500, 0);
        bucket.charge(500);
        bucket.refill(10_000_000_000);
        assert_eq!(bucket.credit_bytes(), 500);
        bucket.charge(1_000);
        assert_eq!(bucket.credit_bytes(), -500);
        // Ten times faster: the 500 B of debt now take 400 µs, not 4 ms.
        bucket.set(10_000_000, 500, 10_000_000_000);
        assert_eq!(bucket.ready_at(), 10_000_400_000);
    }

    #[test]
    fn ten_terabits_for_a_year_does_not_overflow() {
        let mut bucket = TokenBucket::new(10_000_000_000_000, u32::MAX, 0);
        bucket.charge(u32::MAX);
        bucket.charge(u32::MAX);
        bucket.refill(365 * 86_400 * 1_000_000_000);
        assert_eq!(bucket.credit_bytes(), i64::from(u32::MAX));
    }
}
