//! Sorting floats fast (the sort-bound statistics spend most of their time here)
//! and spreading independent work over the available cores.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Below this length a comparison sort is faster than the radix sort's passes.
const RADIX_MIN_LEN: usize = 4096;
const DIGIT_BITS: u32 = 11;
const BUCKETS: usize = 1 << DIGIT_BITS;
const PASSES: usize = 6; // 6 x 11 bits >= 64

/// Maps a finite float to an integer with the same order (IEEE total order).
#[inline]
fn key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

#[inline]
fn unkey(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// Sorts floats ascending (IEEE total order; callers pass finite values): an LSD
/// radix sort on order-preserving integer keys for long inputs, which is several
/// times faster than a comparison sort on a million values.
pub(crate) fn sort_floats(values: &mut [f64]) {
    let n = values.len();
    if n < RADIX_MIN_LEN {
        values.sort_unstable_by(f64::total_cmp);
        return;
    }
    let mut keys: Vec<u64> = values.iter().map(|&v| key(v)).collect();
    let mut hist = vec![0usize; PASSES * BUCKETS];
    for &k in &keys {
        for p in 0..PASSES {
            hist[p * BUCKETS + ((k >> (p as u32 * DIGIT_BITS)) as usize & (BUCKETS - 1))] += 1;
        }
    }
    let mut buf = vec![0u64; n];
    for p in 0..PASSES {
        let h = &mut hist[p * BUCKETS..(p + 1) * BUCKETS];
        if h.contains(&n) {
            continue; // every key has the same digit here: the pass would not move anything
        }
        let mut sum = 0usize;
        for c in h.iter_mut() {
            let count = *c;
            *c = sum;
            sum += count;
        }
        let shift = p as u32 * DIGIT_BITS;
        for &k in &keys {
            let d = (k >> shift) as usize & (BUCKETS - 1);
            buf[h[d]] = k;
            h[d] += 1;
        }
        std::mem::swap(&mut keys, &mut buf);
    }
    for (v, k) in values.iter_mut().zip(keys) {
        *v = unkey(k);
    }
}

/// A sorted copy.
pub(crate) fn sorted_floats(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    sort_floats(&mut v);
    v
}

/// Runs `f` on every item, spreading the items over the available cores, and
/// returns the results in order.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Sorted copies of two samples, sorted on two threads when both are long.
pub(crate) fn sorted_pair(a: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>) {
    if a.len() + b.len() < 100_000 {
        return (sorted_floats(a), sorted_floats(b));
    }
    let mut out = par_map(&[a, b], |s| sorted_floats(s));
    let second = out.pop().unwrap_or_default();
    let first = out.pop().unwrap_or_default();
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_agrees_with_total_order() {
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state
        };
        let mut v: Vec<f64> = (0..50_000)
            .map(|i| match i % 5 {
                0 => (next() >> 11) as f64 * 1e-10 - 400.0,
                1 => -((next() >> 20) as f64),
                2 => f64::from_bits(next() >> 2),
                3 => 0.0,
                _ => -0.0,
            })
            .filter(|x| x.is_finite())
            .collect();
        let mut expected = v.clone();
        expected.sort_unstable_by(f64::total_cmp);
        sort_floats(&mut v);
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn par_map_keeps_order() {
        let items: Vec<usize> = (0..100).collect();
        assert_eq!(
            par_map(&items, |i| i * 2),
            (0..100).map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}
