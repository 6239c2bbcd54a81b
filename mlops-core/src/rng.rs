//! A small seeded generator whose output is fixed forever.
//!
//! Training (splits, shuffles, initialization, dropout), drift subsampling and
//! traffic splitting all draw from SplitMix64 (Steele, Lea and Flood 2014): fast,
//! 64 bits of state, good enough for all of these, and independent of whatever
//! else in the process draws random numbers, so a seed gives the same results in
//! every process and release.
//!
//! ```
//! use mlops_core::rng::SplitMix64;
//!
//! let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
//! let mut x: Vec<u32> = (0..10).collect();
//! let mut y = x.clone();
//! a.shuffle(&mut x);
//! b.shuffle(&mut y);
//! assert_eq!(x, y, "the same seed, the same order");
//! assert!(a.next_f64() < 1.0);
//! ```

/// The generator's step between states (the golden ratio in 64-bit fixed point):
/// a shared counter advanced by it and read through [`mix`] is a SplitMix64
/// stream that many threads can draw from.
pub const INCREMENT: u64 = 0x9E37_79B9_7F4A_7C15;

/// The output of a SplitMix64 generator whose state is `state` before its step:
/// a stateless mix of a counter or hash into well-spread bits, the same
/// everywhere. `SplitMix64::new(s).next_u64() == mix(s)`.
pub fn mix(state: u64) -> u64 {
    let mut z = state.wrapping_add(INCREMENT);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `bits`' top 53 bits as a uniform value in `[0, 1)`.
pub fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// SplitMix64: a seeded generator (not for cryptography).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream derived from `seed` and `stream`, so one seed can
    /// feed several consumers that must not see each other's draws.
    pub fn fork(seed: u64, stream: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = mix(self.0);
        self.0 = self.0.wrapping_add(INCREMENT);
        out
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in `0..n`, by Lemire's multiply-shift: the bias is at most
    /// `n / 2^64`. An empty range (`n == 0`) gives 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_fixed_forever() {
        // The reference outputs of SplitMix64 for seed 0 (as in the authors'
        // C code): a change here changes every seeded result downstream.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn shuffles_reproducibly() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(7).shuffle(&mut a);
        SplitMix64::new(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert!((0..1000).all(|_| SplitMix64::new(3).next_f64() < 1.0));
        let mut r = SplitMix64::fork(1, 2);
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
        // Nothing to shuffle is left as it is.
        r.shuffle::<u8>(&mut []);
        let mut one = [5];
        r.shuffle(&mut one);
        assert_eq!(one, [5]);
    }
}
