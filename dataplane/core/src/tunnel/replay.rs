//! The receive-side replay window of a session (whitepaper section 5.4.6,
//! with the bitmap of RFC 6479): a ring of 64-bit blocks, so that moving
//! the window forward clears whole blocks instead of shifting bits.

/// Blocks in the ring; one of them is always being recycled.
const BLOCKS: usize = 128;
const BLOCK_BITS: u64 = 64;

/// Counters this far behind the highest one seen are still accepted once.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Counters at or above this are never accepted: the sender must rekey first.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Which counters of a session were already received.
#[derive(Clone)]
pub struct ReplayWindow {
    highest: u64,
    ring: [u64; BLOCKS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            highest: 0,
            ring: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` could still be accepted; a cheap test before
    /// spending a decryption on it. Changes nothing.
    #[inline]
    pub fn may_accept(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter > self.highest {
            return true;
        }
        if self.highest - counter > WINDOW {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & (1 << bit) == 0
    }

    /// Whether `counter` is inside the window and was already received: a
    /// second copy (the same packet sent over two paths, or a replay of a
    /// recent one), as opposed to one too old to tell.
    #[inline]
    pub fn seen(&self, counter: u64) -> bool {
        if counter > self.highest || self.highest - counter > WINDOW {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & (1 << bit) != 0
    }

    /// Records `counter` of an authenticated packet; false when it was
    /// already seen or is too old (the packet must then be dropped).
    #[inline]
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.may_accept(counter) {
            return false;
        }
        if counter > self.highest {
            let current = self.highest / BLOCK_BITS;
            let target = counter / BLOCK_BITS;
            let advance = (target - current).min(BLOCKS as u64);
            for i in 1..=advance {
                self.ring[((current + i) % BLOCKS as u64) as usize] = 0;
            }
            self.highest = counter;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] |= 1 << bit;
        true
    }

    #[inline]
    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / BLOCK_BITS) % BLOCKS as u64) as usize,
            counter % BLOCK_BITS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_accepted_once_in_any_order() {
        let mut w = ReplayWindow::default();
        let order = [0u64, 5, 3, 1, 2, 4, 100, 64, 63, 99];
        for c in order {
            assert!(w.accept(c), "{c} first time");
        }
        for c in order {
            assert!(!w.accept(c), "{c} replayed");
        }
    }

    #[test]
    fn the_window_is_at_least_2048_packets_deep() {
        const { assert!(WINDOW >= 2048) };
        let mut w = ReplayWindow::default();
        assert!(w.accept(10_000));
        assert!(
            w.accept(10_000 - WINDOW),
            "the oldest counter inside the window"
        );
        assert!(!w.accept(10_000 - WINDOW - 1), "just outside");
        assert!(w.accept(10_000 - 2048));
    }

    #[test]
    fn jumping_far_ahead_forgets_everything_behind_the_window() {
        let mut w = ReplayWindow::default();
        for c in 0..300 {
            assert!(w.accept(c));
        }
        let far = 1_000_000;
        assert!(w.accept(far));
        assert!(!w.accept(299), "now far outside the window");
        // Bits of recycled blocks were cleared, not left to alias.
        for c in far - 200..far {
            assert!(w.accept(c), "{c}");
        }
    }

    #[test]
    fn counters_near_the_limit_are_refused() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(REJECT_AFTER_MESSAGES));
        assert!(!w.accept(u64::MAX));
        assert!(w.accept(REJECT_AFTER_MESSAGES - 1));
    }

    #[test]
    fn matches_a_set_model_on_a_pseudo_random_sequence() {
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut highest = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly forward with reordering and duplicates, sometimes a jump.
            let c = match x % 100 {
                0 => highest + 5000,
                1..=60 => highest + (x >> 8) % 4,
                _ => highest.saturating_sub((x >> 8) % 9000),
            };
            let expected = !seen.contains(&c) && (c > highest || highest - c <= WINDOW);
            assert_eq!(w.accept(c), expected, "counter {c}, highest {highest}");
            if expected {
                seen.insert(c);
                highest = highest.max(c);
            }
        }
    }
}
