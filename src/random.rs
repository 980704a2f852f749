//! Randomness for jitter and host order: a tiny, well-distributed generator seeded per
//! listener. Nothing here needs cryptographic randomness, so no `rand` dependency.

/// SplitMix64 (Steele, Lea and Flood, 2014): one 64-bit state, one multiply-xorshift
/// mix per number.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed` (the same seed gives the same numbers).
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator seeded differently in every process and at every call.
    pub(crate) fn from_entropy() -> Self {
        SplitMix64(random_seed())
    }

    /// The next number.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max` (close enough to uniform for jitter: the bias is below
    /// `max / 2^64`).
    pub(crate) fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next_u64() % bound,
            None => self.next_u64(),
        }
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.up_to(i as u64)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}

/// A seed that differs between processes and calls: the standard library's per-process
/// random hash keys, mixed with the clock.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ() {
        assert_ne!(random_seed(), random_seed());
    }

    #[test]
    fn same_seed_same_numbers() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn up_to_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            let n = rng.up_to(3);
            assert!(n <= 3);
            seen[n as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        assert_eq!(rng.up_to(0), 0);
        let _ = rng.up_to(u64::MAX); // no overflow
    }

    #[test]
    fn shuffle_keeps_every_item_and_moves_some() {
        let mut rng = SplitMix64::new(3);
        let mut moved = false;
        for _ in 0..20 {
            let mut items: Vec<u32> = (0..8).collect();
            rng.shuffle(&mut items);
            moved |= items != (0..8).collect::<Vec<_>>();
            items.sort_unstable();
            assert_eq!(items, (0..8).collect::<Vec<_>>());
        }
        assert!(moved);
    }
}
