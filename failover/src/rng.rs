//! The crate's only source of chance: SplitMix64, seeded by the caller (SWIM's probe order
//! and intermediaries, the simulator's delays, losses and faults).
//!
//! Invariant: the same seed gives the same sequence on every machine and build (integer
//! arithmetic only; floats are derived from the integers, never the other way round).
//!
//! It does not try to be cryptographic or to pass every statistical test: it picks message
//! delays, losses and fault victims and SWIM's probe order, where SplitMix64 is plenty.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for `purpose` (so adding draws to one stream does not shift the
    /// others).
    pub(crate) fn fork(&self, purpose: u64) -> Self {
        let mut r = Self(self.0 ^ purpose.wrapping_mul(0xA076_1D64_78BD_642F));
        Self(r.next_u64())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0); the modulo bias is negligible for our `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `0..n` as an index (0 when `n` is 0).
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }

    /// True with probability `p` (clamped to 0..=1).
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // 53 random bits as a fraction in [0, 1).
        let x = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    /// Uniform in `[lo, hi]`, in nanoseconds.
    pub(crate) fn between(&mut self, lo: Duration, hi: Duration) -> u64 {
        let lo = nanos(lo);
        let hi = nanos(hi).max(lo);
        lo + self.below(hi - lo + 1)
    }
}

/// A duration in nanoseconds, saturating (a simulated run never gets near 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_forks_differ() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(
            Rng::new(7).fork(1).next_u64(),
            Rng::new(7).fork(2).next_u64()
        );
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut r = Rng::new(1);
        let (lo, hi) = (Duration::from_millis(10), Duration::from_millis(20));
        for _ in 0..1000 {
            let d = r.between(lo, hi);
            assert!((nanos(lo)..=nanos(hi)).contains(&d));
            assert!(r.below(3) < 3);
        }
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }
}
