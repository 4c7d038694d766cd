//! Exploration: a share of routed requests answered by a model drawn from the band, so the
//! logs keep labelling every model the router deems good enough.

use std::sync::atomic::{AtomicU64, Ordering};

use router_core::rng::{GAMMA, mix};

use crate::routing::decision::{Candidate, RouteDecision};

/// Exploration: with probability `share`, a routed request goes to a model drawn uniformly
/// from its band instead of the policy's choice, so that the decision logs (and the labels
/// sent back for them) keep covering every model the router deems good enough for a prompt,
/// not only the ones it already prefers. The band is the request's promise, so by default a
/// draw never leaves it and a band of one model is never explored; an operator may widen the
/// draws to every routable model within `band` of the best instead (`routing.explore_band`).
#[derive(Debug)]
pub struct Explorer {
    share: f64,
    band: Option<f64>,
    state: AtomicU64,
}

impl Explorer {
    /// Explores `share` (0–1) of the decisions, drawing from the request's band or, when
    /// `band` is wider, from every routable model within `band` of the best prediction, with a
    /// SplitMix64 stream seeded by `seed`.
    pub fn new(share: f64, band: Option<f64>, seed: u64) -> Self {
        Self {
            share,
            band,
            state: AtomicU64::new(seed),
        }
    }

    /// The models a draw picks from: the request's band in the policy's order, then, with a
    /// wider exploration band, the other routable models within it by predicted quality.
    fn pool(&self, decision: &RouteDecision) -> Vec<String> {
        let mut pool = decision.in_band.clone();
        let Some(band) = self.band.filter(|&b| b > decision.band) else {
            return pool;
        };
        let best = decision.candidates[decision.best_index].predicted_quality;
        let mut wider: Vec<&Candidate> = decision
            .candidates
            .iter()
            .filter(|c| {
                c.routable
                    && !c.in_band
                    && f64::from(c.predicted_quality) >= f64::from(best) - band - 1e-9
            })
            .collect();
        wider.sort_by(|a, b| b.predicted_quality.total_cmp(&a.predicted_quality));
        pool.extend(wider.into_iter().map(|c| c.model.clone()));
        pool
    }

    /// The next SplitMix64 output; the state advances atomically, so concurrent requests
    /// never share a draw.
    fn next(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }

    /// Applies exploration to `decision`: its choice, reason, fallback order and propensity.
    pub fn apply(&self, decision: &mut RouteDecision) {
        if self.share <= 0.0 {
            return;
        }
        let pool = self.pool(decision);
        let n = pool.len();
        if n < 2 {
            return;
        }
        // 53 random bits for the coin, the rest of a second draw for the model.
        let coin = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let pick = (self.next() % n as u64) as usize;
        let (explored, propensity) = explore_choice(n, self.share, coin, pick);
        decision.propensity = propensity;
        let Some(chosen) = explored else {
            return;
        };
        decision.reason = "explore";
        let model = pool[chosen].clone();
        decision.chosen_index = decision
            .candidates
            .iter()
            .position(|c| c.model == model)
            .unwrap_or(decision.chosen_index);
        // The rest of the band in the policy's order (its own choice first), then the rest.
        let outside = decision
            .fallback_order
            .iter()
            .filter(|m| !decision.in_band.contains(m));
        decision.fallback_order = decision
            .in_band
            .iter()
            .chain(outside)
            .filter(|m| **m != model)
            .cloned()
            .collect();
        decision.chosen = model;
    }
}

/// Whether a decision that explores `share` of the time over a band of `n` models (the
/// policy's choice at 0) explores, for a `coin` uniform in [0, 1): `Some(pick)`, the position
/// drawn uniformly (`pick` < n, the policy's own choice included), or `None`, the policy's
/// choice stands; and the probability that the model it ends with was chosen.
fn explore_choice(n: usize, share: f64, coin: f64, pick: usize) -> (Option<usize>, f64) {
    let uniform = share / n as f64;
    if coin < share {
        (
            Some(pick),
            uniform + if pick == 0 { 1.0 - share } else { 0.0 },
        )
    } else {
        (None, 1.0 - share + uniform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::policy::Policy;

    /// A decision over three models, all in the band in the policy's order b, c, a, and one
    /// model (d) outside it.
    fn decision() -> RouteDecision {
        let candidate = |model: &str, in_band: bool| Candidate {
            model: model.to_owned(),
            predicted_quality: 0.5,
            expected_cost_usd: 0.001,
            routable: true,
            in_band,
        };
        RouteDecision {
            chosen: "b".into(),
            best_predicted: "a".into(),
            band: 0.1,
            policy: Policy::Value,
            input_tokens: 10,
            candidates: vec![
                candidate("a", true),
                candidate("b", true),
                candidate("c", true),
                candidate("d", false),
            ],
            in_band: vec!["b".into(), "c".into(), "a".into()],
            fallback_order: vec!["c".into(), "a".into(), "d".into()],
            reason: "band",
            propensity: 1.0,
            decision_ms: 0.0,
            chosen_index: 1,
            best_index: 0,
        }
    }

    #[test]
    fn an_explored_choice_has_the_probability_it_was_drawn_with() {
        // 30 % explored over 3 models: the policy's choice 0.7 + 0.1, the others 0.1 each.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let (at, p) = explore_choice(3, 0.3, 0.5, 2);
        assert_eq!(at, None);
        assert!(close(p, 0.8), "{p}");
        let (at, p) = explore_choice(3, 0.3, 0.1, 2);
        assert_eq!(at, Some(2));
        assert!(close(p, 0.1), "{p}");
        let (at, p) = explore_choice(3, 0.3, 0.1, 0);
        assert_eq!(at, Some(0));
        assert!(close(p, 0.8), "{p}");
        // Always exploring: uniform.
        assert!(close(explore_choice(4, 1.0, 0.99, 0).1, 0.25));
    }

    #[test]
    fn exploring_draws_from_the_band_at_the_configured_share() {
        let explorer = Explorer::new(0.3, None, 7);
        let draws = 20_000;
        let mut counts = std::collections::HashMap::new();
        let mut explored = 0;
        for _ in 0..draws {
            let mut d = decision();
            explorer.apply(&mut d);
            let expected = if d.chosen == "b" { 0.8 } else { 0.1 };
            assert!((d.propensity - expected).abs() < 1e-12, "{d:?}");
            assert_ne!(d.chosen, "d", "never outside the band");
            assert_eq!(d.candidates[d.chosen_index].model, d.chosen);
            if d.reason == "explore" {
                explored += 1;
                // The rest of the band in the policy's order, then the rest.
                let mut order = vec!["b", "c", "a"];
                order.retain(|m| *m != d.chosen);
                order.push("d");
                assert_eq!(d.fallback_order, order);
            } else {
                assert_eq!(d.chosen, "b");
                assert_eq!(d.fallback_order, ["c", "a", "d"]);
            }
            *counts.entry(d.chosen).or_insert(0usize) += 1;
        }
        let share = |n: usize| n as f64 / draws as f64;
        assert!((share(explored) - 0.3).abs() < 0.02, "{explored}");
        for (model, expected) in [("b", 0.8), ("c", 0.1), ("a", 0.1)] {
            assert!((share(counts[model]) - expected).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn a_wider_exploration_band_draws_beyond_the_request_band() {
        // d is routable and 0.2 below the best: outside the request's 0.1, inside 0.25.
        let pool_size = |band: f64| if band >= 0.2 { 4.0 } else { 3.0 };
        let wider = |band: f64| {
            let mut d = decision();
            d.candidates[3].predicted_quality = 0.3;
            let explorer = Explorer::new(1.0, Some(band), 3);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..400 {
                let mut each = d.clone();
                explorer.apply(&mut each);
                seen.insert(each.chosen.clone());
                assert_eq!(
                    each.in_band, d.in_band,
                    "the request's band is reported as it was"
                );
                if each.chosen == "d" {
                    assert_eq!(each.fallback_order, ["b", "c", "a"]);
                }
                assert!(
                    (each.propensity - 1.0 / pool_size(band)).abs() < 1e-12,
                    "{each:?}"
                );
            }
            seen
        };
        assert_eq!(wider(0.25).len(), 4);
        assert!(!wider(0.15).contains("d"));
        // Not routable: never drawn.
        let mut d = decision();
        d.candidates[3].predicted_quality = 0.5;
        d.candidates[3].routable = false;
        let explorer = Explorer::new(1.0, Some(1.0), 5);
        for _ in 0..200 {
            let mut each = d.clone();
            explorer.apply(&mut each);
            assert_ne!(each.chosen, "d");
        }
    }

    #[test]
    fn no_share_or_a_band_of_one_is_never_explored() {
        let mut d = decision();
        Explorer::new(0.0, None, 1).apply(&mut d);
        assert_eq!(
            (d.chosen.as_str(), d.reason, d.propensity),
            ("b", "band", 1.0)
        );
        let mut d = decision();
        d.in_band.truncate(1);
        d.fallback_order = vec!["c".into(), "a".into(), "d".into()];
        Explorer::new(1.0, None, 1).apply(&mut d);
        assert_eq!(
            (d.chosen.as_str(), d.reason, d.propensity),
            ("b", "band", 1.0)
        );
    }
}
