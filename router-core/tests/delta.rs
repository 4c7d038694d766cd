//! Fine-tuned layers over the real all-MiniLM-L6-v2: a delta replaces exactly the layers it
//! holds on both paths, and a broken delta is refused with a clear error.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use router_core::Error;
use router_core::encoder::{Encoder, Layers, Precision};

const TEXTS: [&str; 3] = [
    "Write a haiku about the sea.",
    "What is the derivative of x^3 sin x? Show each step.",
    "Résumé : traduire « bonjour le monde » en allemand.",
];

/// Every tensor of layer `layer` of the base model, under its name.
fn layer_tensors(layer: usize) -> anyhow::Result<HashMap<String, Tensor>> {
    let path = common::encoder_dir().join("model.safetensors");
    let prefix = format!("encoder.layer.{layer}.");
    let out: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)?
        .into_iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .collect();
    anyhow::ensure!(out.len() == 16, "layer {layer} has {} tensors", out.len());
    Ok(out)
}

fn save(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path)?;
    Ok(path)
}

fn load(precision: Precision, delta: Option<PathBuf>) -> Result<Encoder, Error> {
    common::load(precision, Layers::Thirds, delta)
}

#[test]
fn a_delta_replaces_only_the_layers_it_holds_on_both_paths() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let same = save(tmp.path(), "same.safetensors", &layer_tensors(5)?)?;
    let mut changed = layer_tensors(5)?;
    let name = "encoder.layer.5.output.dense.weight";
    let w = changed[name].clone();
    changed.insert(name.to_owned(), (w * 1.5)?);
    let changed = save(tmp.path(), "changed.safetensors", &changed)?;
    for precision in [Precision::Int8, Precision::F32] {
        let base = load(precision, None)?.embed(&TEXTS)?;
        // The base layer as a delta: the same numbers, bit for bit.
        let encoder = load(precision, Some(same.clone()))?;
        let delta = encoder.delta().ok_or_else(|| anyhow::anyhow!("no delta"))?;
        assert_eq!(delta.layers, vec![5]);
        assert_eq!(encoder.embed(&TEXTS)?, base, "{precision:?}");
        // A changed layer 6 (index 5): the blocks of layers 2 and 4 are untouched, the last
        // block moves.
        let moved = load(precision, Some(changed.clone()))?.embed(&TEXTS)?;
        for (a, b) in moved.iter().zip(&base) {
            assert_eq!(a[..768], b[..768], "{precision:?}: a frozen block moved");
            let diff: f32 = a[768..]
                .iter()
                .zip(&b[768..])
                .map(|(x, y)| (x - y).abs())
                .sum();
            assert!(
                diff > 1e-3,
                "{precision:?}: the fine-tuned block did not move"
            );
        }
    }
    Ok(())
}

fn refused(delta: &Path) -> String {
    match load(Precision::Int8, Some(delta.to_owned())) {
        Ok(_) => panic!("{} was accepted", delta.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_broken_delta_is_refused_naming_the_file_and_the_tensor() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    let mut foreign = layer_tensors(5)?;
    foreign.insert(
        "pooler.dense.bias".to_owned(),
        Tensor::zeros(384, candle_core::DType::F32, &Device::Cpu)?,
    );
    let message = refused(&save(dir, "foreign.safetensors", &foreign)?);
    assert!(
        message.contains("pooler.dense.bias") && message.contains("foreign.safetensors"),
        "{message}"
    );

    let mut partial = layer_tensors(5)?;
    partial.remove("encoder.layer.5.intermediate.dense.bias");
    let message = refused(&save(dir, "partial.safetensors", &partial)?);
    assert!(
        message.contains("lacks") && message.contains("intermediate.dense.bias"),
        "{message}"
    );

    let mut reshaped = layer_tensors(5)?;
    reshaped.insert(
        "encoder.layer.5.output.dense.weight".to_owned(),
        Tensor::zeros((384, 384), candle_core::DType::F32, &Device::Cpu)?,
    );
    let message = refused(&save(dir, "reshaped.safetensors", &reshaped)?);
    assert!(
        message.contains("output.dense.weight") && message.contains("1536"),
        "{message}"
    );

    let mut unknown = layer_tensors(5)?;
    let moved: HashMap<String, Tensor> = unknown
        .drain()
        .map(|(k, v)| (k.replace("layer.5.", "layer.9."), v))
        .collect();
    let message = refused(&save(dir, "unknown.safetensors", &moved)?);
    assert!(message.contains("not in the base model"), "{message}");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\0\0\0\0\0\0\0{not json at all")?;
    let message = refused(&garbage);
    assert!(message.contains("garbage.safetensors"), "{message}");

    let message = refused(&dir.join("missing.safetensors"));
    assert!(message.contains("missing.safetensors"), "{message}");
    Ok(())
}
