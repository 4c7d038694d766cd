//! Helpers shared by the router-train integration tests: slices of the real llmrouter data
//! and the check that a router on disk predicts what training validated.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use polars::prelude::*;
use router_core::artifact::Router;
use router_core::encoder::Encoder;
use router_train::HeadChoice;
use router_train::HeadParams;
use router_train::data::read_frame;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

pub fn llmrouter() -> (PathBuf, PathBuf) {
    let dir = repo_root().join("datasets/llmrouter");
    (dir.join("labels.parquet"), dir.join("models.csv"))
}

/// The first `prompts` prompts (all their models) of llmrouter, as CSV in `dir`.
pub fn slice_csv(dir: &Path, prompts: usize) -> anyhow::Result<PathBuf> {
    let (labels, _) = llmrouter();
    let df = read_frame(&labels)?;
    let ids = df.column("prompt_id")?.str()?.clone();
    let mut keep = std::collections::HashSet::new();
    let mut mask = Vec::with_capacity(df.height());
    for id in ids.iter() {
        let id = id.unwrap_or_default().to_owned();
        if keep.len() < prompts {
            keep.insert(id.clone());
        }
        mask.push(keep.contains(&id));
    }
    let mask = BooleanChunked::from_slice("keep".into(), &mask);
    let mut slice = df.filter(&mask)?;
    let path = dir.join("slice.csv");
    CsvWriter::new(std::fs::File::create(&path)?).finish(&mut slice)?;
    Ok(path)
}

/// A small ensemble that fits in a second: per-model logistic regression and a fixed kNN.
pub fn linear_and_knn() -> HeadChoice {
    HeadChoice::Ensemble(vec![
        HeadChoice::Linear,
        HeadChoice::Knn {
            k: Some(10),
            alpha: Some(1.0),
            max_keys: HeadParams::DEFAULT.knn_max_keys,
        },
    ])
}

/// Loads the router at `out` and checks that it predicts, from the validation prompts' text,
/// what training validated (to 1e-5); returns the router, its encoder and the predictions.
pub fn predicts_what_it_validated(
    out: &Path,
    report: &router_train::FitReport,
) -> anyhow::Result<(Router, Encoder, Vec<Vec<f32>>)> {
    let router = Router::load(out)?;
    let encoder = router.load_encoder(&candle_core::Device::Cpu)?;
    let texts: Vec<&str> = report
        .validation_prompts
        .iter()
        .map(String::as_str)
        .collect();
    let predicted = router.predict(&texts, &encoder.embed(&texts)?)?;
    assert_eq!(predicted.len(), report.validation_predictions.len());
    for (a, b) in predicted
        .iter()
        .flatten()
        .zip(report.validation_predictions.iter().flatten())
    {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    Ok((router, encoder, predicted))
}
