//! The routing decision: embed the prompt, predict every model's quality, choose the cheapest
//! model within the band of the best.

use std::path::Path;
use std::time::Instant;

use router_core::artifact::Router;
use router_core::device::parse_device;
use router_core::encoder::Encoder;
use router_core::policy::choose;
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
    pub in_band: bool,
}

/// The decision and why.
#[derive(Debug, Clone, Serialize)]
pub struct RouteDecision {
    pub chosen: String,
    pub best_predicted: String,
    pub band: f64,
    pub input_tokens: usize,
    pub candidates: Vec<Candidate>,
    pub reason: &'static str,
    pub decision_ms: f64,
}

impl Route {
    /// Loads the artifact in `dir` and the encoder it names, on `device`.
    pub fn load(dir: &Path, device: &str) -> router_core::Result<Self> {
        let device = parse_device(device)?;
        let router = Router::load_on(dir, &device)?;
        let encoder = router.load_encoder(&device)?;
        Ok(Self { router, encoder })
    }

    /// Decides which model answers `prompt` at quality band `band` (0–1 points).
    pub fn decide(&self, prompt: &str, band: f64) -> router_core::Result<RouteDecision> {
        let start = Instant::now();
        let tokens = self.encoder.tokenize(prompt)?;
        let embedding = self
            .encoder
            .embed_tokenized(std::slice::from_ref(&tokens))?;
        let quality = self
            .router
            .predict(&embedding)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let costs = self.router.expected_costs(tokens.untruncated_len);
        let decision = choose(&quality, &costs, band, Some(&self.router.routable()))?;
        let names = self.router.model_names();
        let candidates = names
            .iter()
            .enumerate()
            .map(|(i, name)| Candidate {
                model: (*name).to_owned(),
                predicted_quality: quality[i],
                expected_cost_usd: costs[i],
                in_band: decision.in_band.contains(&i),
            })
            .collect();
        Ok(RouteDecision {
            chosen: names[decision.chosen].to_owned(),
            best_predicted: names[decision.best].to_owned(),
            band,
            input_tokens: tokens.untruncated_len,
            candidates,
            reason: "band",
            decision_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }
}
