//! A tiny deterministic generator (SplitMix64) seeded per event, so that any event can be
//! regenerated on its own from (seed, event number).

/// SplitMix64: fast, good enough for test data, and stable across platforms and releases.
pub struct Rng(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator for event `n` of a run seeded with `seed`.
    pub fn for_event(seed: u64, n: u64) -> Self {
        Rng(mix(seed.wrapping_mul(GOLDEN) ^ mix(n.wrapping_add(GOLDEN))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Append `len` random lowercase letters.
    pub fn push_word(&mut self, out: &mut String, len: usize) {
        let mut bits = 0u64;
        for i in 0..len {
            if i % 12 == 0 {
                bits = self.next_u64();
            }
            out.push((b'a' + (bits % 26) as u8) as char);
            bits /= 26;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_event_same_values() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_event(1, 5).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::for_event(1, 5).next_u64(),
            Rng::for_event(1, 6).next_u64()
        );
        assert_ne!(
            Rng::for_event(1, 5).next_u64(),
            Rng::for_event(2, 5).next_u64()
        );
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::for_event(3, 3);
        assert!((0..10_000).all(|_| r.below(7) < 7));
        assert!((0..10_000).all(|_| (0.0..1.0).contains(&r.unit())));
    }
}
