//! Candidate models and their prices.

use serde::{Deserialize, Serialize};

/// Output tokens assumed for a model when the training data says nothing about it.
pub const DEFAULT_EXPECTED_OUTPUT_TOKENS: f64 = 256.0;

/// Characters per token when only a character count is known (the usual English estimate).
pub const CHARS_PER_TOKEN: f64 = 4.0;

/// One candidate model as the router knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    /// USD per million input tokens.
    pub input_price_per_1m: f64,
    /// USD per million output tokens.
    pub output_price_per_1m: f64,
    /// Mean output tokens per answer, from the training data or the documented default.
    pub expected_output_tokens: f64,
    /// Where `expected_output_tokens` came from (`output_tokens`, `output_chars`, `cost_usd`,
    /// `default`).
    pub output_tokens_source: String,
    /// Mean normalised score on the training split (the model's prior).
    pub train_mean_score: f64,
    /// Number of training prompts with a score for this model.
    pub n_train: usize,
    /// When set, a model that scored higher on the training prompts both answered and is no
    /// dearer for any prompt length: the policy never routes here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dominated_by: Option<String>,
}

impl ModelInfo {
    /// Cost in USD of `input_tokens` in and `output_tokens` out at this model's prices.
    pub fn cost_usd(&self, input_tokens: f64, output_tokens: f64) -> f64 {
        (input_tokens * self.input_price_per_1m + output_tokens * self.output_price_per_1m) / 1e6
    }

    /// Expected cost in USD of answering a prompt of `input_tokens` tokens.
    pub fn expected_cost(&self, input_tokens: usize) -> f64 {
        self.cost_usd(input_tokens as f64, self.expected_output_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_tokens_times_price() {
        let m = ModelInfo {
            name: "m".into(),
            input_price_per_1m: 2.0,
            output_price_per_1m: 10.0,
            expected_output_tokens: 100.0,
            output_tokens_source: "default".into(),
            train_mean_score: 0.5,
            n_train: 1,
            dominated_by: None,
        };
        // 1000 × 2 / 1e6 + 100 × 10 / 1e6 = 0.002 + 0.001
        assert!((m.expected_cost(1000) - 0.003).abs() < 1e-12);
    }
}
