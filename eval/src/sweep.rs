//! The band sweep on test prompts, the baselines, and bootstrap intervals.

use std::collections::BTreeMap;

use router_core::policy::{Policy, choose};
use serde::Serialize;

use crate::metrics::{self, PgrPoint, Point};

/// The test prompts, with every model's realised score and cost, in the router's model order.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub models: Vec<String>,
    pub prompts: Vec<String>,
    pub tasks: Vec<Option<String>>,
    /// Realised (normalised) score, `n × models`; meaningful where `mask`.
    pub scores: Vec<f32>,
    pub mask: Vec<bool>,
    /// Realised cost in USD, `n × models`.
    pub costs: Vec<f64>,
    /// Index of the best single model, chosen on the *training* prompts.
    pub best_single: usize,
    /// Mean training score per model (what chose `best_single`).
    pub train_quality: Vec<f64>,
    /// Models evaluated on (almost) every prompt: the only fair single-model baselines.
    pub full_coverage: Vec<bool>,
}

impl EvalSet {
    pub fn n(&self) -> usize {
        self.prompts.len()
    }

    pub fn m(&self) -> usize {
        self.models.len()
    }

    /// Mean score of model `j` over the prompts it was evaluated on.
    pub fn model_quality(&self, j: usize) -> f64 {
        let m = self.m();
        let (s, c) = (0..self.n())
            .filter(|&i| self.mask[i * m + j])
            .fold((0.0, 0.0), |(s, c), i| {
                (s + f64::from(self.scores[i * m + j]), c + 1.0)
            });
        s / c
    }
}

/// One band of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub band: f64,
    pub quality: f64,
    pub cost: f64,
    /// Mean calibrated predicted quality of the chosen models.
    pub predicted_quality: f64,
    /// Predicted drop from band 0 (the promise) and the drop measured.
    pub predicted_drop: f64,
    pub measured_drop: f64,
    /// Share of traffic per model.
    pub shares: BTreeMap<String, f64>,
}

/// The bands swept: 0 to 1 in steps of 0.005.
pub fn bands() -> Vec<f64> {
    (0..=200).map(|i| f64::from(i) / 200.0).collect()
}

/// Per band, the model chosen for each prompt, among the models the router may route to
/// (`routable`) that were evaluated on that prompt; when none of those was, among every model
/// evaluated on it.
pub fn choices(
    set: &EvalSet,
    policy: Policy,
    predictions: &[f32],
    expected_costs: &[f64],
    routable: &[bool],
    bands: &[f64],
) -> router_core::Result<Vec<Vec<usize>>> {
    let m = set.m();
    let allowed: Vec<Vec<bool>> = (0..set.n())
        .map(|i| {
            let evaluated = &set.mask[i * m..(i + 1) * m];
            let both: Vec<bool> = evaluated
                .iter()
                .zip(routable)
                .map(|(&e, &r)| e && r)
                .collect();
            if both.iter().any(|&a| a) {
                both
            } else {
                evaluated.to_vec()
            }
        })
        .collect();
    bands
        .iter()
        .map(|&band| {
            (0..set.n())
                .map(|i| {
                    let row = i * m..(i + 1) * m;
                    choose(
                        policy,
                        &predictions[row.clone()],
                        &expected_costs[row],
                        band,
                        Some(&allowed[i]),
                    )
                    .map(|d| d.chosen)
                })
                .collect()
        })
        .collect()
}

/// Realised per-prompt (score, cost) of a choice vector.
fn realised(set: &EvalSet, chosen: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let m = set.m();
    chosen
        .iter()
        .enumerate()
        .map(|(i, &c)| (f64::from(set.scores[i * m + c]), set.costs[i * m + c]))
        .unzip()
}

/// The oracle's per-prompt choice: best score, cheapest among ties.
pub fn oracle_choice(set: &EvalSet) -> Vec<usize> {
    let m = set.m();
    (0..set.n())
        .map(|i| {
            (0..m)
                .filter(|&j| set.mask[i * m + j])
                .max_by(|&a, &b| {
                    set.scores[i * m + a]
                        .total_cmp(&set.scores[i * m + b])
                        .then(set.costs[i * m + b].total_cmp(&set.costs[i * m + a]))
                })
                .unwrap_or(0)
        })
        .collect()
}

/// Weighted mean.
fn wmean(values: &[f64], weights: &[f64]) -> f64 {
    let (s, w) = values
        .iter()
        .zip(weights)
        .fold((0.0, 0.0), |(s, w), (v, x)| (s + v * x, w + x));
    if w > 0.0 { s / w } else { f64::NAN }
}

/// Everything needed to compute the headline numbers for one resample (weights over prompts).
#[derive(Debug, Clone)]
pub struct Precomputed {
    /// Per band: realised per-prompt scores and costs.
    pub band_scores: Vec<Vec<f64>>,
    pub band_costs: Vec<Vec<f64>>,
    pub best_scores: Vec<f64>,
    pub best_costs: Vec<f64>,
    pub best_mask: Vec<f64>,
    pub oracle_scores: Vec<f64>,
    /// Per full-coverage single model: per-prompt cost (for the AIQ cost range).
    pub single_costs: Vec<Vec<f64>>,
}

/// Headline numbers of one router, for one weighting of the prompts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Headline {
    pub best_quality: f64,
    pub best_cost: f64,
    pub oracle_quality: f64,
    pub savings_at_parity: Option<f64>,
    pub savings_within: BTreeMap<String, Option<f64>>,
    pub quality_at_best_cost: Option<f64>,
    pub headroom_captured: Option<f64>,
    pub aiq: Option<f64>,
}

pub const WITHIN: [(&str, f64); 3] = [("0.01", 0.01), ("0.05", 0.05), ("0.10", 0.10)];

impl Precomputed {
    pub fn new(set: &EvalSet, band_choices: &[Vec<usize>]) -> Self {
        let m = set.m();
        let (band_scores, band_costs) = band_choices.iter().map(|c| realised(set, c)).unzip();
        let b = set.best_single;
        let best_mask: Vec<f64> = (0..set.n())
            .map(|i| f64::from(u8::from(set.mask[i * m + b])))
            .collect();
        let best_scores = (0..set.n())
            .map(|i| f64::from(set.scores[i * m + b]))
            .collect();
        let best_costs = (0..set.n()).map(|i| set.costs[i * m + b]).collect();
        let (oracle_scores, _) = realised(set, &oracle_choice(set));
        let single_costs = (0..m)
            .filter(|&j| set.full_coverage[j])
            .map(|j| (0..set.n()).map(|i| set.costs[i * m + j]).collect())
            .collect();
        Self {
            band_scores,
            band_costs,
            best_scores,
            best_costs,
            best_mask,
            oracle_scores,
            single_costs,
        }
    }

    /// The prompts of several evaluations as one (k-fold evaluation: each fold's test prompts,
    /// predicted by routers that never saw them). The band grid and the full-coverage models
    /// must be the same in every part.
    pub fn concat(parts: &[&Self]) -> Result<Self, String> {
        let first = parts.first().ok_or("nothing to pool")?;
        if parts.iter().any(|p| {
            p.band_scores.len() != first.band_scores.len()
                || p.single_costs.len() != first.single_costs.len()
        }) {
            return Err("the evaluations to pool differ in bands or full-coverage models".into());
        }
        let cat = |get: &dyn Fn(&Self) -> &Vec<f64>| -> Vec<f64> {
            parts.iter().flat_map(|p| get(p).iter().copied()).collect()
        };
        let per = |n: usize, get: &dyn Fn(&Self, usize) -> &Vec<f64>| -> Vec<Vec<f64>> {
            (0..n)
                .map(|b| {
                    parts
                        .iter()
                        .flat_map(|p| get(p, b).iter().copied())
                        .collect()
                })
                .collect()
        };
        Ok(Self {
            band_scores: per(first.band_scores.len(), &|p, b| &p.band_scores[b]),
            band_costs: per(first.band_costs.len(), &|p, b| &p.band_costs[b]),
            best_scores: cat(&|p| &p.best_scores),
            best_costs: cat(&|p| &p.best_costs),
            best_mask: cat(&|p| &p.best_mask),
            oracle_scores: cat(&|p| &p.oracle_scores),
            single_costs: per(first.single_costs.len(), &|p, j| &p.single_costs[j]),
        })
    }

    /// Number of prompts.
    pub fn n(&self) -> usize {
        self.best_scores.len()
    }

    /// The router's curve points under `weights`.
    pub fn points(&self, weights: &[f64]) -> Vec<Point> {
        self.band_scores
            .iter()
            .zip(&self.band_costs)
            .map(|(s, c)| Point {
                cost: wmean(c, weights),
                quality: wmean(s, weights),
            })
            .collect()
    }

    pub fn headline(&self, weights: &[f64]) -> Headline {
        let points = self.points(weights);
        let best_w: Vec<f64> = weights
            .iter()
            .zip(&self.best_mask)
            .map(|(w, m)| w * m)
            .collect();
        let best_quality = wmean(&self.best_scores, &best_w);
        let best_cost = wmean(&self.best_costs, &best_w);
        let oracle_quality = wmean(&self.oracle_scores, weights);
        let quality_at_best_cost = metrics::quality_at_cost(&points, best_cost);
        let gap = oracle_quality - best_quality;
        let single: Vec<f64> = self
            .single_costs
            .iter()
            .map(|c| wmean(c, weights))
            .collect();
        let c_min = single.iter().copied().fold(f64::INFINITY, f64::min);
        let c_max = single.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Headline {
            best_quality,
            best_cost,
            oracle_quality,
            savings_at_parity: metrics::savings_reaching(&points, best_quality, best_cost),
            savings_within: WITHIN
                .iter()
                .map(|&(k, x)| {
                    (
                        (*k).to_owned(),
                        metrics::savings_reaching(&points, best_quality * (1.0 - x), best_cost),
                    )
                })
                .collect(),
            quality_at_best_cost,
            headroom_captured: quality_at_best_cost
                .filter(|_| gap > 1e-12)
                .map(|q| (q - best_quality) / gap),
            aiq: metrics::aiq(&points, c_min, c_max),
        }
    }
}

/// The full band curve with shares and the band promise.
pub fn curve(
    set: &EvalSet,
    predictions: &[f32],
    bands: &[f64],
    band_choices: &[Vec<usize>],
    pre: &Precomputed,
) -> Vec<CurvePoint> {
    let m = set.m();
    let n = set.n() as f64;
    let ones = vec![1.0; set.n()];
    let points = pre.points(&ones);
    let predicted: Vec<f64> = band_choices
        .iter()
        .map(|c| {
            c.iter()
                .enumerate()
                .map(|(i, &j)| f64::from(predictions[i * m + j]))
                .sum::<f64>()
                / n
        })
        .collect();
    bands
        .iter()
        .enumerate()
        .map(|(b, &band)| {
            let mut counts = vec![0usize; m];
            for &j in &band_choices[b] {
                counts[j] += 1;
            }
            CurvePoint {
                band,
                quality: points[b].quality,
                cost: points[b].cost,
                predicted_quality: predicted[b],
                predicted_drop: predicted[0] - predicted[b],
                measured_drop: points[0].quality - points[b].quality,
                shares: set
                    .models
                    .iter()
                    .zip(&counts)
                    .filter(|&(_, &c)| c > 0)
                    .map(|(name, &c)| (name.clone(), c as f64 / n))
                    .collect(),
            }
        })
        .collect()
}

/// Two-model data: RouteLLM's PGR points (strong = the dearer model on average).
pub fn pgr_points(
    set: &EvalSet,
    band_choices: &[Vec<usize>],
    pre: &Precomputed,
) -> Option<(Vec<PgrPoint>, usize)> {
    if set.m() != 2 {
        return None;
    }
    let ones = vec![1.0; set.n()];
    let mean_cost = |j: usize| (0..set.n()).map(|i| set.costs[i * 2 + j]).sum::<f64>();
    let strong = usize::from(mean_cost(1) > mean_cost(0));
    let (q_strong, q_weak) = (set.model_quality(strong), set.model_quality(1 - strong));
    if (q_strong - q_weak).abs() < 1e-12 {
        return None;
    }
    let points = pre.points(&ones);
    Some((
        band_choices
            .iter()
            .zip(points)
            .map(|(c, p)| PgrPoint {
                strong_share: c.iter().filter(|&&j| j == strong).count() as f64 / set.n() as f64,
                pgr: (p.quality - q_weak) / (q_strong - q_weak),
            })
            .collect(),
        strong,
    ))
}

/// The headline numbers of every bootstrap resample, in draw order. Two routers' draws with
/// the same [`Draws::key`] were computed on the same resampled prompts (the weights depend only
/// on the seed, the number of prompts and the number of resamples), so their differences are
/// paired.
#[derive(Debug, Clone, Default)]
pub struct Draws {
    /// `(seed, prompts, resamples)`.
    pub key: (u64, usize, usize),
    /// Per headline key; "never reached" is `-∞`.
    pub samples: BTreeMap<String, Vec<f64>>,
}

/// The keys [`bootstrap`] resamples.
pub const BOOTSTRAPPED: [&str; 4] = [
    "savings_at_parity",
    "savings_within_0.05",
    "quality_at_best_cost",
    "aiq",
];

/// The [`BOOTSTRAPPED`] numbers, in that order, from a headline's fields (a resample's, or
/// a report's on the full test set); `None` where a target is never reached.
pub fn bootstrapped_values(
    savings_at_parity: Option<f64>,
    savings_within: &BTreeMap<String, Option<f64>>,
    quality_at_best_cost: Option<f64>,
    aiq: Option<f64>,
) -> [Option<f64>; 4] {
    [
        savings_at_parity,
        savings_within.get("0.05").copied().flatten(),
        quality_at_best_cost,
        aiq,
    ]
}

/// 95 % percentile interval of (unsorted, non-empty) samples; an end at ±∞ stays infinite.
fn percentile_interval(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.025), at(0.975)]
}

/// Bootstrap resamples of the test prompts, seeded: the headline numbers of each
/// ([`BOOTSTRAPPED`]), and their 95 % percentile intervals. A resample where a target is
/// never reached counts as "never" (the lowest value); an interval end that falls there is
/// `None`.
pub fn bootstrap(
    pre: &Precomputed,
    n: usize,
    resamples: usize,
    seed: u64,
) -> (BTreeMap<String, [Option<f64>; 2]>, Draws) {
    let mut rng = router_core::rng::SplitMix::new(seed);
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut weights = vec![0.0; n];
    for _ in 0..resamples {
        weights.iter_mut().for_each(|w| *w = 0.0);
        for _ in 0..n {
            weights[(rng.next_u64() % n as u64) as usize] += 1.0;
        }
        let h = pre.headline(&weights);
        let values = bootstrapped_values(
            h.savings_at_parity,
            &h.savings_within,
            h.quality_at_best_cost,
            h.aiq,
        );
        for (key, value) in BOOTSTRAPPED.iter().zip(values) {
            samples
                .entry((*key).to_owned())
                .or_default()
                .push(value.unwrap_or(f64::NEG_INFINITY));
        }
    }
    let intervals = samples
        .iter()
        .map(|(k, v)| {
            let [lo, hi] = percentile_interval(v.clone());
            (
                k.clone(),
                [lo.is_finite().then_some(lo), hi.is_finite().then_some(hi)],
            )
        })
        .collect();
    (
        intervals,
        Draws {
            key: (seed, n, resamples),
            samples,
        },
    )
}

/// The paired bootstrap of one headline number's difference `a − b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// 95 % percentile interval of the per-resample differences.
    pub interval: [f64; 2],
    /// Share of resamples where `a` is higher.
    pub share_higher: f64,
}

/// `a − b` where "never reached" is `−∞`: `+∞` where only `b` never reaches the target, `−∞`
/// where only `a` does, 0 where neither does.
pub fn difference(a: f64, b: f64) -> f64 {
    if a == b { 0.0 } else { a - b }
}

/// The paired difference `a − b` of one headline number over the same bootstrap resamples
/// (see [`difference`] for "never"). `None` when the draws are not paired.
pub fn paired_difference(a: &Draws, b: &Draws, key: &str) -> Option<Paired> {
    let (x, y) = (a.samples.get(key)?, b.samples.get(key)?);
    if a.key != b.key || x.len() != y.len() || x.is_empty() {
        return None;
    }
    let diffs: Vec<f64> = x.iter().zip(y).map(|(&x, &y)| difference(x, y)).collect();
    let share_higher = diffs.iter().filter(|&&d| d > 0.0).count() as f64 / diffs.len() as f64;
    Some(Paired {
        interval: percentile_interval(diffs),
        share_higher,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrapped_values_follow_the_keys() {
        let within = BTreeMap::from([
            ("0.01".to_owned(), Some(0.1)),
            ("0.05".to_owned(), Some(0.5)),
            ("0.10".to_owned(), None),
        ]);
        let values = bootstrapped_values(Some(0.3), &within, None, Some(0.9));
        let by_key: BTreeMap<_, _> = BOOTSTRAPPED.into_iter().zip(values).collect();
        assert_eq!(by_key["savings_at_parity"], Some(0.3));
        assert_eq!(by_key["savings_within_0.05"], Some(0.5));
        assert_eq!(by_key["quality_at_best_cost"], None);
        assert_eq!(by_key["aiq"], Some(0.9));
    }

    /// Three prompts, two models (cheap 0, dear 1): the oracle takes the cheap model where
    /// both are right (a tie) and the dear one only where it alone is right.
    fn toy() -> EvalSet {
        EvalSet {
            models: vec!["cheap".into(), "dear".into()],
            prompts: vec!["a".into(), "b".into(), "c".into()],
            tasks: vec![None; 3],
            scores: vec![1.0, 1.0, 0.0, 1.0, 0.0, 0.0],
            mask: vec![true; 6],
            costs: vec![1.0, 10.0, 1.0, 10.0, 1.0, 10.0],
            best_single: 1,
            train_quality: vec![0.3, 0.6],
            full_coverage: vec![true, true],
        }
    }

    #[test]
    fn oracle_breaks_ties_by_cost() {
        assert_eq!(oracle_choice(&toy()), vec![0, 1, 0]);
    }

    #[test]
    fn perfect_predictions_reach_the_oracle() {
        let set = toy();
        // Predictions equal to the true scores: band 0 picks the best, cheapest among ties.
        let pred = set.scores.clone();
        let bands = [0.0, 1.0];
        let ch = choices(
            &set,
            Policy::Cheapest,
            &pred,
            &set.costs,
            &[true; 2],
            &bands,
        )
        .unwrap();
        assert_eq!(ch[0], vec![0, 1, 0]);
        assert_eq!(ch[1], vec![0, 0, 0]);
        let pre = Precomputed::new(&set, &ch);
        let h = pre.headline(&[1.0; 3]);
        // Best single (dear): quality 2/3, cost 10. Router at band 0: quality 2/3, cost 4.
        assert!((h.best_quality - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(h.savings_at_parity, Some(0.6));
        assert_eq!(
            h.headroom_captured, None,
            "no headroom: oracle = best single"
        );
        let pgr = pgr_points(&set, &ch, &pre).map(|(p, strong)| (p[0], strong));
        // 1 of 3 calls to the strong model recovers the whole gap.
        assert_eq!(pgr.map(|(p, s)| (p.pgr, s)), Some((1.0, 1)));
    }

    #[test]
    fn paired_differences_follow_the_same_resamples() {
        let draws = |key: (u64, usize, usize), v: &[f64]| Draws {
            key,
            samples: BTreeMap::from([("aiq".to_owned(), v.to_vec())]),
        };
        let k = (0, 3, 4);
        let a = draws(k, &[0.5, 0.6, 0.7, 0.8]);
        let b = draws(k, &[0.4, 0.6, 0.5, 0.9]);
        // Differences 0.1, 0, 0.2, −0.1: the 2.5 % end is the smallest, the 97.5 % the largest.
        let paired = paired_difference(&a, &b, "aiq").unwrap();
        let [lo, hi] = paired.interval;
        assert!(
            (lo + 0.1).abs() < 1e-12 && (hi - 0.2).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(paired.share_higher, 0.5);
        let same = paired_difference(&a, &a, "aiq").unwrap();
        assert_eq!((same.interval, same.share_higher), ([0.0, 0.0], 0.0));
        // "Never" on one side is an infinite difference; on both, none.
        let never = f64::NEG_INFINITY;
        let c = draws(k, &[never, never, never, never]);
        let only_a = paired_difference(&a, &c, "aiq").unwrap();
        assert_eq!(only_a.interval, [f64::INFINITY, f64::INFINITY]);
        assert_eq!(only_a.share_higher, 1.0);
        let neither = paired_difference(&c, &c, "aiq").unwrap();
        assert_eq!(neither.interval, [0.0, 0.0]);
        // Other resamples, or another key: not paired.
        assert_eq!(
            paired_difference(&a, &draws((1, 3, 4), &[0.0; 4]), "aiq"),
            None
        );
        assert_eq!(paired_difference(&a, &b, "savings_at_parity"), None);
    }

    #[test]
    fn bootstrap_draws_are_the_same_resamples_for_every_router() {
        let set = toy();
        let perfect = set.scores.clone();
        let wrong: Vec<f32> = perfect.iter().map(|s| 1.0 - s).collect();
        let pre = |pred: &[f32]| {
            let ch = choices(
                &set,
                Policy::Cheapest,
                pred,
                &set.costs,
                &[true; 2],
                &bands(),
            )
            .unwrap();
            Precomputed::new(&set, &ch)
        };
        let (_, a) = bootstrap(&pre(&perfect), set.n(), 50, 7);
        let (intervals, b) = bootstrap(&pre(&wrong), set.n(), 50, 7);
        assert_eq!(a.key, b.key);
        assert_eq!(a.samples["aiq"].len(), 50);
        assert!(intervals.contains_key("aiq"));
        // Perfect predictions are never worse than inverted ones on the same resample.
        let [lo, _] = paired_difference(&a, &b, "aiq").unwrap().interval;
        assert!(lo >= 0.0, "{lo}");
    }

    #[test]
    fn pooled_folds_are_the_whole_set() {
        let set = toy();
        let pred = set.scores.clone();
        let pre_of = |rows: &[usize]| {
            let m = set.m();
            let pick = |v: &[f32]| -> Vec<f32> {
                rows.iter()
                    .flat_map(|&i| v[i * m..(i + 1) * m].to_vec())
                    .collect()
            };
            let part = EvalSet {
                prompts: rows.iter().map(|&i| set.prompts[i].clone()).collect(),
                tasks: rows.iter().map(|&i| set.tasks[i].clone()).collect(),
                scores: pick(&set.scores),
                mask: rows
                    .iter()
                    .flat_map(|&i| set.mask[i * m..(i + 1) * m].to_vec())
                    .collect(),
                costs: rows
                    .iter()
                    .flat_map(|&i| set.costs[i * m..(i + 1) * m].to_vec())
                    .collect(),
                ..set.clone()
            };
            let ch = choices(
                &part,
                Policy::Cheapest,
                &pick(&pred),
                &part.costs,
                &[true; 2],
                &bands(),
            )
            .unwrap();
            Precomputed::new(&part, &ch)
        };
        let whole = pre_of(&[0, 1, 2]);
        let pooled = Precomputed::concat(&[&pre_of(&[0, 1]), &pre_of(&[2])]).unwrap();
        assert_eq!(pooled.n(), 3);
        assert_eq!(pooled.band_scores, whole.band_scores);
        assert_eq!(pooled.band_costs, whole.band_costs);
        assert_eq!(pooled.oracle_scores, whole.oracle_scores);
        assert_eq!(pooled.single_costs, whole.single_costs);
        let ones = [1.0; 3];
        assert_eq!(
            pooled.headline(&ones).savings_at_parity,
            whole.headline(&ones).savings_at_parity
        );
        assert!(Precomputed::concat(&[]).is_err());
    }
}
