//! `router-core`: the vocabulary every part of the LLM router speaks.
//!
//! - [`encoder`]: the sentence encoder (a BERT-family sentence-transformers model on Candle) that
//!   turns a prompt into a vector, with its resolution from a directory, the hub cache, the hub
//!   or the default model's PyPI mirror.
//! - [`heads`]: the quality heads (MLP, matrix factorisation, kNN) that predict, from that
//!   vector, how well each candidate model would answer, and their calibration.
//! - [`lexical`]: hashed character n-grams of the prompt, read by the heads beside the
//!   embedding: the surface form (case, punctuation, layout) the encoder does not see.
//! - [`artifact`]: the router artifact on disk (`router.json` + `head.safetensors`), written by
//!   `router-train` and read by `router-serve` and `router-eval` through the same code.
//! - [`policy`]: the quality band: among the models whose predicted quality is within the band
//!   of the best, the best value for money (or simply the cheapest).
//!
//! ```no_run
//! use router_core::{artifact::Router, encoder::Encoder, policy::{Policy, choose}};
//! # fn main() -> router_core::Result<()> {
//! let router = Router::load(std::path::Path::new("models/llmrouter"))?;
//! let encoder = router.load_encoder(&candle_core::Device::Cpu)?;
//! let prompt = "What is the capital of France?";
//! let embedding = encoder.embed(&[prompt])?;
//! let quality = router.predict(&[prompt], &embedding)?;
//! let tokens = encoder.count_tokens(prompt)?;
//! let costs = router.expected_costs(tokens);
//! let decision = choose(Policy::Value, &quality[0], &costs, 0.05, None)?;
//! println!("route to {}", router.manifest.models[decision.chosen].name);
//! # Ok(())
//! # }
//! ```

pub mod artifact;
pub mod device;
pub mod encoder;
pub mod error;
pub mod heads;
pub mod lexical;
pub mod models;
pub mod policy;
pub mod rng;
pub mod split;

pub use error::{Error, Result};
