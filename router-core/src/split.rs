//! Deterministic train / validation / test split by a hash of the normalised prompt text, so
//! that the same text (even under two ids) is always on the same side, in every tool.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which side of the split a prompt is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// Trims and collapses every run of whitespace to one space.
pub fn normalize_prompt(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A number in `[0, 1)` from `seed` and the normalised text.
pub fn unit_hash(normalized: &str, seed: u64) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(normalized.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The side of `normalized` for the given fractions: test first, then validation.
pub fn assign(normalized: &str, seed: u64, test_fraction: f64, validation_fraction: f64) -> Split {
    assign_fold(normalized, seed, None, test_fraction, validation_fraction)
}

/// [`assign`], or with `test_fold = Some([i, k])` k-fold cross-validation: the test side is
/// fold `i` of `k` disjoint folds of the hash (`⌊u·k⌋ = i`, so the `k` folds cover every prompt
/// exactly once and fold 0 of 5 is the default 20 % test split), `test_fraction` is then
/// ignored, and validation is the next `validation_fraction` of the hash after the test fold.
pub fn assign_fold(
    normalized: &str,
    seed: u64,
    test_fold: Option<[usize; 2]>,
    test_fraction: f64,
    validation_fraction: f64,
) -> Split {
    let u = unit_hash(normalized, seed);
    let Some([i, k]) = test_fold else {
        return if u < test_fraction {
            Split::Test
        } else if u < test_fraction + validation_fraction {
            Split::Validation
        } else {
            Split::Train
        };
    };
    let k = k.max(1) as f64;
    if (u * k).floor() == i as f64 {
        Split::Test
    } else if (u - (i + 1) as f64 / k).rem_euclid(1.0) < validation_fraction {
        Split::Validation
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_variants_land_together() {
        let a = normalize_prompt("  What is\n2 +  2? ");
        let b = normalize_prompt("What is 2 + 2?");
        assert_eq!(a, b);
        assert_eq!(assign(&a, 7, 0.2, 0.1), assign(&b, 7, 0.2, 0.1));
    }

    #[test]
    fn fractions_are_respected() {
        let n = 20_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            match assign(&format!("prompt {i}"), 42, 0.2, 0.1) {
                Split::Test => counts[0] += 1,
                Split::Validation => counts[1] += 1,
                Split::Train => counts[2] += 1,
            }
        }
        // Binomial standard deviation at n = 20k is under 0.3 %; allow 1 %.
        assert!(
            (counts[0] as f64 / n as f64 - 0.2).abs() < 0.01,
            "{counts:?}"
        );
        assert!(
            (counts[1] as f64 / n as f64 - 0.1).abs() < 0.01,
            "{counts:?}"
        );
    }

    #[test]
    fn the_seed_changes_the_split() {
        let moved = (0..1000)
            .filter(|i| {
                let t = format!("p{i}");
                assign(&t, 1, 0.5, 0.0) != assign(&t, 2, 0.5, 0.0)
            })
            .count();
        assert!(moved > 300, "{moved}");
    }

    #[test]
    fn test_folds_partition_the_prompts_and_fold_zero_is_the_default_split() {
        let k = 5;
        for i in 0..2000 {
            let t = format!("prompt {i}");
            let tested: Vec<usize> = (0..k)
                .filter(|&f| assign_fold(&t, 42, Some([f, k]), 0.0, 0.1) == Split::Test)
                .collect();
            assert_eq!(tested.len(), 1, "{t}: {tested:?}");
            assert_eq!(
                assign_fold(&t, 42, Some([0, k]), 0.0, 0.1),
                assign(&t, 42, 0.2, 0.1),
                "{t}"
            );
        }
        // Validation stays about its fraction in every fold.
        for f in 0..k {
            let val = (0..5000)
                .filter(|i| {
                    assign_fold(&format!("p{i}"), 7, Some([f, k]), 0.0, 0.1) == Split::Validation
                })
                .count();
            assert!((val as f64 / 5000.0 - 0.1).abs() < 0.02, "fold {f}: {val}");
        }
    }
}
