//! Holding out validation data from a training file when the user sent none.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Splits row indices `0..keys.len()` into (training, validation), holding out about
/// `fraction` of every class (`keys[i]` is row `i`'s class, or its label set for
/// multi-label data) so both sides keep the label distribution — the same idea as
/// scikit-learn's `train_test_split(stratify=…)`. A class with one example stays in
/// training; a class with more gives at least one to validation and keeps at least one.
/// Seeded, so a job's split is reproducible; both lists are sorted.
pub fn stratified_split<K: Ord>(keys: &[K], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    if fraction.is_nan() || fraction <= 0.0 {
        return ((0..keys.len()).collect(), Vec::new());
    }
    let fraction = fraction.min(1.0);
    let mut by_class: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        by_class.entry(k).or_default().push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for rows in by_class.values_mut() {
        rows.shuffle(&mut rng);
        let n = rows.len();
        let held = if n < 2 {
            0
        } else {
            ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
        };
        validation.extend_from_slice(&rows[..held]);
        train.extend_from_slice(&rows[held..]);
    }
    train.sort_unstable();
    validation.sort_unstable();
    (train, validation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_keeps_its_share_on_both_sides() {
        let keys: Vec<&str> = std::iter::repeat_n("a", 80)
            .chain(std::iter::repeat_n("b", 20))
            .chain(std::iter::once("c"))
            .collect();
        let (train, validation) = stratified_split(&keys, 0.2, 7);
        assert_eq!(train.len() + validation.len(), keys.len());
        let count = |rows: &[usize], k| rows.iter().filter(|&&i| keys[i] == k).count();
        assert_eq!(count(&validation, "a"), 16);
        assert_eq!(count(&validation, "b"), 4);
        assert_eq!(count(&validation, "c"), 0); // a single example stays in training
        let mut all: Vec<usize> = train.iter().chain(&validation).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..keys.len()).collect::<Vec<_>>());
    }

    #[test]
    fn seeded_and_small_classes_keep_one_on_each_side() {
        let keys = ["x", "x", "y", "y", "y"];
        assert_eq!(
            stratified_split(&keys, 0.1, 1),
            stratified_split(&keys, 0.1, 1)
        );
        let (train, validation) = stratified_split(&keys, 0.1, 1);
        assert_eq!((train.len(), validation.len()), (3, 2));
        let (train, validation) = stratified_split(&keys, 0.0, 1);
        assert_eq!((train.len(), validation.len()), (5, 0));
        let (_, validation) = stratified_split(&keys, 0.9, 3);
        assert_eq!(validation.len(), 3); // one of each class stays in training
        let many: Vec<u8> = (0..50).map(|i| i % 2).collect();
        assert_ne!(
            stratified_split(&many, 0.5, 1),
            stratified_split(&many, 0.5, 2)
        );
    }
}
