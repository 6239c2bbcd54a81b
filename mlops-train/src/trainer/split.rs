//! The seeded, stratified split into training and validation rows.

use mlops_core::rng::SplitMix64;

/// A seeded split into (train, validation) row indices, stratified by class.
pub(super) fn split(
    n: usize,
    classes: Option<(&[usize], usize)>,
    fraction: f64,
    seed: u64,
) -> (Vec<u32>, Vec<u32>) {
    let mut rng = SplitMix64::fork(seed, 1);
    let groups: Vec<Vec<u32>> = match classes {
        Some((ids, k)) => {
            let mut g = vec![Vec::new(); k];
            for (row, &c) in ids.iter().enumerate() {
                g[c].push(row as u32);
            }
            g
        }
        None => vec![(0..n as u32).collect()],
    };
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for mut g in groups {
        rng.shuffle(&mut g);
        let mut n_valid = (g.len() as f64 * fraction).round() as usize;
        if g.len() >= 2 {
            n_valid = n_valid.clamp(1, g.len() - 1);
        } else {
            n_valid = 0;
        }
        valid.extend_from_slice(&g[..n_valid]);
        train.extend_from_slice(&g[n_valid..]);
    }
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}
