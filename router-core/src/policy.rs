//! The quality band: route to the cheapest model whose predicted quality is within `band` of
//! the best candidate's.

use serde::Serialize;

use crate::error::{Error, Result};

/// What the policy decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Index of the chosen model.
    pub chosen: usize,
    /// Index of the candidate with the highest predicted quality.
    pub best: usize,
    /// Candidates within the band, cheapest first.
    pub in_band: Vec<usize>,
    /// The band that was applied (0–1 quality points).
    pub band: f64,
}

/// Chooses the cheapest model whose predicted quality is at least `best − band`, where `best`
/// is the highest predicted quality among the allowed candidates. Ties in cost go to the
/// higher predicted quality, then to the lower index. `allowed`, when given, restricts the
/// candidates (a mask over models).
pub fn choose(
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
        .filter(|&i| is_allowed(i) && quality[i].is_finite())
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
    let floor = f64::from(quality[best]) - band;
    let mut in_band: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| f64::from(quality[i]) >= floor - 1e-9)
        .collect();
    in_band.sort_by(|&a, &b| {
        cost[a]
            .total_cmp(&cost[b])
            .then(quality[b].total_cmp(&quality[a]))
            .then(a.cmp(&b))
    });
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

    #[test]
    fn band_zero_takes_the_best() {
        let d = choose(&Q, &C, 0.0, None).ok();
        assert_eq!(d.map(|d| d.chosen), Some(0));
    }

    #[test]
    fn band_admits_cheaper_models_within_it() {
        let d = choose(&Q, &C, 0.05, None).ok();
        assert_eq!(d.as_ref().map(|d| d.chosen), Some(1));
        assert_eq!(d.map(|d| d.in_band), Some(vec![1, 0]));
    }

    #[test]
    fn band_one_takes_the_cheapest() {
        assert_eq!(choose(&Q, &C, 1.0, None).ok().map(|d| d.chosen), Some(2));
    }

    #[test]
    fn allowed_mask_restricts_best_and_band() {
        let allowed = [false, true, true];
        let d = choose(&Q, &C, 0.1, Some(&allowed)).ok();
        assert_eq!(d.as_ref().map(|d| d.best), Some(1));
        assert_eq!(d.map(|d| d.chosen), Some(1));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(choose(&Q, &C[..2], 0.1, None).is_err());
        assert!(choose(&Q, &C, 1.5, None).is_err());
        assert!(choose(&Q, &C, 0.1, Some(&[false; 3])).is_err());
    }
}
