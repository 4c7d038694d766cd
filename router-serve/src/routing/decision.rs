//! The routing decision: embed the prompt, predict every model's quality, choose a model within
//! the band of the best by the configured policy (the best value by default, or the cheapest).
//! This is where the band is applied: [`explain`] turns a prediction into the decision the
//! server acts on and reports; [`Route`] does the whole path synchronously (the `route` CLI).

use std::path::Path;
use std::time::Instant;

use router_core::artifact::Router;
use router_core::device::parse_device;
use router_core::encoder::Encoder;
use router_core::policy::{Policy, choose};
use serde::Serialize;

/// A router and its encoder, ready to decide.
#[derive(Debug)]
pub struct Route {
    pub router: Router,
    pub encoder: Encoder,
}

/// One candidate as the decision saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub model: String,
    pub predicted_quality: f32,
    pub expected_cost_usd: f64,
    /// Whether the policy could pick it (not dominated, has an upstream, allowed by the request).
    pub routable: bool,
    pub in_band: bool,
}

/// The decision and why.
#[derive(Debug, Clone, Serialize)]
pub struct RouteDecision {
    pub chosen: String,
    pub best_predicted: String,
    pub band: f64,
    pub policy: Policy,
    pub input_tokens: usize,
    /// Every model, in the artifact's order.
    pub candidates: Vec<Candidate>,
    /// Models inside the band, in the policy's order of preference (the policy's choice first;
    /// an explored choice may be any of them).
    pub in_band: Vec<String>,
    /// The order models are tried in if the chosen one fails: the rest of the band, then the
    /// other routable models by predicted quality.
    pub fallback_order: Vec<String>,
    /// `band`, or `explore` when `routing.explore` drew the model at random (from the band, or
    /// from `routing.explore_band`).
    pub reason: &'static str,
    /// The probability that this decision chose `chosen` (1 without exploration): what a
    /// retraining can weight the answer's label by (inverse propensity).
    pub propensity: f64,
    pub decision_ms: f64,
    #[serde(skip)]
    pub chosen_index: usize,
    #[serde(skip)]
    pub best_index: usize,
}

/// The decision for predicted `quality` (calibrated, model order) on a conversation of
/// `input_tokens` tokens at `band` under `policy`, among the models `allowed` marks.
pub fn explain(
    router: &Router,
    quality: &[f32],
    input_tokens: usize,
    band: f64,
    policy: Policy,
    allowed: &[bool],
) -> router_core::Result<RouteDecision> {
    let costs = router.expected_costs(input_tokens);
    let decision = choose(policy, quality, &costs, band, Some(allowed))?;
    let names = router.model_names();
    let candidates = names
        .iter()
        .enumerate()
        .map(|(i, name)| Candidate {
            model: (*name).to_owned(),
            predicted_quality: quality[i],
            expected_cost_usd: costs[i],
            routable: allowed.get(i).copied().unwrap_or(false),
            in_band: decision.in_band.contains(&i),
        })
        .collect();
    let mut rest: Vec<usize> = (0..names.len())
        .filter(|i| allowed.get(*i).copied().unwrap_or(false) && !decision.in_band.contains(i))
        .collect();
    rest.sort_by(|&a, &b| quality[b].total_cmp(&quality[a]).then(a.cmp(&b)));
    let in_band: Vec<String> = decision
        .in_band
        .iter()
        .map(|&i| names[i].to_owned())
        .collect();
    let fallback_order = in_band
        .iter()
        .skip(1)
        .cloned()
        .chain(rest.iter().map(|&i| names[i].to_owned()))
        .collect();
    Ok(RouteDecision {
        chosen: names[decision.chosen].to_owned(),
        best_predicted: names[decision.best].to_owned(),
        band,
        policy,
        input_tokens,
        candidates,
        in_band,
        fallback_order,
        reason: "band",
        propensity: 1.0,
        decision_ms: 0.0,
        chosen_index: decision.chosen,
        best_index: decision.best,
    })
}

impl Route {
    /// Loads the artifact in `dir` and the encoder it names, on `device`.
    pub fn load(dir: &Path, device: &str) -> router_core::Result<Self> {
        let device = parse_device(device)?;
        let router = Router::load_on(dir, &device)?;
        let encoder = router.load_encoder(&device)?;
        Ok(Self { router, encoder })
    }

    /// Decides which model answers `prompt` at quality band `band` (0–1 points) under `policy`,
    /// among the artifact's routable models.
    pub fn decide(
        &self,
        prompt: &str,
        band: f64,
        policy: Policy,
    ) -> router_core::Result<RouteDecision> {
        let start = Instant::now();
        let tokens = self.encoder.tokenize(prompt)?;
        let embedding = self
            .encoder
            .embed_tokenized(std::slice::from_ref(&tokens))?;
        let quality = self
            .router
            .predict(&[prompt], &embedding)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut decision = explain(
            &self.router,
            &quality,
            tokens.untruncated_len,
            band,
            policy,
            &self.router.routable(),
        )?;
        decision.decision_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(decision)
    }
}
