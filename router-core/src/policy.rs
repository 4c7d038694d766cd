//! The quality band: which model answers, given every candidate's predicted quality and
//! expected cost.
//!
//! Both policies keep the band's promise: the chosen model's predicted quality is at least the
//! best candidate's minus `band`. They differ in which model of the band they take:
//!
//! - [`Policy::Cheapest`]: the cheapest model in the band.
//! - [`Policy::Value`] (the default): the model of the band with the highest value
//!   `q − λ · c / c_max`, where `λ = band / (1 − band)` and `c_max` is the dearest candidate's
//!   cost for this request. The band sets both how much quality may be given up and the rate at
//!   which it is traded for money: a model that saves a tenth of the dearest candidate's cost must
//!   lose less than a tenth of `λ` to be worth it. `Cheapest` instead gives up quality for any
//!   saving, however small, which is where it loses against a cost–quality curve: between two
//!   cheap models a few tenths of a cent apart it takes the worse one.
//!
//! At band 0 both take the best predicted model, at band 1 both take the cheapest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a model is chosen among those within the band.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The cheapest model within the band.
    Cheapest,
    /// The best value within the band: max `q − λ · c / c_max`, `λ = band / (1 − band)`.
    #[default]
    Value,
}

impl Policy {
    pub const ALL: [Self; 2] = [Self::Value, Self::Cheapest];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cheapest => "cheapest",
            Self::Value => "value",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cheapest" => Ok(Self::Cheapest),
            "value" => Ok(Self::Value),
            other => Err(Error::InvalidInput(format!(
                "unknown policy `{other}` (value, cheapest)"
            ))),
        }
    }
}

/// What the policy decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Index of the chosen model.
    pub chosen: usize,
    /// Index of the candidate with the highest predicted quality.
    pub best: usize,
    /// Candidates within the band, in the policy's order of preference (the chosen one first).
    pub in_band: Vec<usize>,
    /// The band that was applied (0–1 quality points).
    pub band: f64,
}

/// Chooses among the candidates whose predicted quality is at least `best − band`, where
/// `best` is the highest predicted quality among the allowed candidates, by `policy`. Ties go
/// to the cheaper model, then to the higher predicted quality, then to the lower index.
/// `allowed`, when given, restricts the candidates (a mask over models).
pub fn choose(
    policy: Policy,
    quality: &[f32],
    cost: &[f64],
    band: f64,
    allowed: Option<&[bool]>,
) -> Result<Decision> {
    if quality.len() != cost.len() {
        return Err(Error::InvalidInput(format!(
            "{} quality predictions for {} costs",
            quality.len(),
            cost.len()
        )));
    }
    if !(0.0..=1.0).contains(&band) || band.is_nan() {
        return Err(Error::InvalidInput(format!("band {band} is outside 0–1")));
    }
    let is_allowed = |i: usize| allowed.is_none_or(|a| a.get(i).copied().unwrap_or(false));
    let candidates: Vec<usize> = (0..quality.len())
        .filter(|&i| is_allowed(i) && quality[i].is_finite() && cost[i].is_finite())
        .collect();
    let best = candidates
        .iter()
        .copied()
        .max_by(|&a, &b| {
            quality[a]
                .total_cmp(&quality[b])
                .then(cost[b].total_cmp(&cost[a]))
        })
        .ok_or_else(|| Error::InvalidInput("no candidate model is allowed".to_owned()))?;
    let c_max = candidates.iter().map(|&i| cost[i]).fold(0.0f64, f64::max);
    let floor = f64::from(quality[best]) - band;
    let mut in_band: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| f64::from(quality[i]) >= floor - 1e-9)
        .collect();
    // Cheapest first; `Value` then orders by value, which this breaks ties of.
    in_band.sort_by(|&a, &b| {
        cost[a]
            .total_cmp(&cost[b])
            .then(quality[b].total_cmp(&quality[a]))
            .then(a.cmp(&b))
    });
    if policy == Policy::Value && band < 1.0 && c_max > 0.0 {
        let rate = band / (1.0 - band) / c_max;
        let value = |i: usize| f64::from(quality[i]) - rate * cost[i];
        // Stable: equal values keep the cheapest-first order.
        in_band.sort_by(|&a, &b| value(b).total_cmp(&value(a)));
    }
    Ok(Decision {
        chosen: in_band[0],
        best,
        in_band,
        band,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: [f32; 3] = [0.90, 0.86, 0.70];
    const C: [f64; 3] = [10.0, 2.0, 0.5];

    fn chosen(policy: Policy, q: &[f32], c: &[f64], band: f64) -> Option<usize> {
        choose(policy, q, c, band, None).ok().map(|d| d.chosen)
    }

    #[test]
    fn band_zero_takes_the_best() {
        for policy in Policy::ALL {
            assert_eq!(chosen(policy, &Q, &C, 0.0), Some(0), "{policy}");
        }
    }

    #[test]
    fn band_admits_cheaper_models_within_it() {
        let d = choose(Policy::Cheapest, &Q, &C, 0.05, None).ok();
        assert_eq!(d.as_ref().map(|d| d.chosen), Some(1));
        assert_eq!(d.map(|d| d.in_band), Some(vec![1, 0]));
    }

    #[test]
    fn band_one_takes_the_cheapest() {
        for policy in Policy::ALL {
            assert_eq!(chosen(policy, &Q, &C, 1.0), Some(2), "{policy}");
        }
    }

    #[test]
    fn value_does_not_give_up_quality_for_a_small_saving() {
        // Band 0.25 admits all three; λ = 0.25 / 0.75 = 1/3 per c_max = 10.
        // Values: 0.90 − 10/30 = 0.5667, 0.86 − 2/30 = 0.7933, 0.70 − 0.5/30 = 0.6833.
        // Cheapest takes model 2 and loses 0.16 to save 1.5 (15 % of c_max); value keeps 1.
        let d = choose(Policy::Value, &Q, &C, 0.25, None).ok();
        assert_eq!(d.as_ref().map(|d| d.in_band.clone()), Some(vec![1, 2, 0]));
        assert_eq!(chosen(Policy::Cheapest, &Q, &C, 0.25), Some(2));
        // At band 0.9 (λ = 9) the saving is worth it: 0.86 − 1.8 < 0.70 − 0.45.
        assert_eq!(chosen(Policy::Value, &Q, &C, 0.9), Some(2));
    }

    #[test]
    fn value_never_leaves_the_band() {
        // Model 1 has the best value at λ = 1/3 (0.85 − 0.0 vs 0.90 − 0.333), but it lies
        // 0.05 below the best and the band is 0.04.
        let q = [0.90, 0.85];
        let c = [10.0, 0.0];
        assert_eq!(chosen(Policy::Value, &q, &c, 0.04), Some(0));
        assert_eq!(chosen(Policy::Value, &q, &c, 0.05), Some(1));
    }

    #[test]
    fn value_with_free_models_breaks_ties_by_cost_then_quality() {
        let q = [0.80, 0.80, 0.70];
        let c = [0.0, 0.0, 0.0];
        assert_eq!(chosen(Policy::Value, &q, &c, 0.2), Some(0));
        let c = [2.0, 1.0, 0.0];
        // Equal quality: the cheaper of the two at any band.
        assert_eq!(chosen(Policy::Value, &q, &c, 0.0), Some(1));
    }

    #[test]
    fn allowed_mask_restricts_best_and_band() {
        let allowed = [false, true, true];
        for policy in Policy::ALL {
            let d = choose(policy, &Q, &C, 0.1, Some(&allowed)).ok();
            assert_eq!(d.as_ref().map(|d| d.best), Some(1));
            assert_eq!(d.map(|d| d.chosen), Some(1));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        for policy in Policy::ALL {
            assert!(choose(policy, &Q, &C[..2], 0.1, None).is_err());
            assert!(choose(policy, &Q, &C, 1.5, None).is_err());
            assert!(choose(policy, &Q, &C, 0.1, Some(&[false; 3])).is_err());
        }
        assert_eq!("value".parse::<Policy>().ok(), Some(Policy::Value));
        assert!("cheap".parse::<Policy>().is_err());
    }
}
