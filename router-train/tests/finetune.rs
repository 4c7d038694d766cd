//! `fit --finetune-layers`: on a slice of the real llmrouter data with the real encoder, the
//! router stores the changed layers, serving loads base + delta and predicts what training
//! validated, a swapped or missing delta is refused, and what cannot be trained is an error.

mod common;

use std::path::Path;

use router_core::artifact::Router;
use router_core::encoder::{DELTA_FILE, Layers, Precision};
use router_train::{FinetuneParams, FitConfig, run_fit};

use common::{linear_and_knn, llmrouter, predicts_what_it_validated, slice_csv};

fn finetune_config(data: &Path, out: &Path, cache: &Path) -> FitConfig {
    let (_, prices) = llmrouter();
    let mut config = FitConfig::new(vec![data.display().to_string()], prices, out.to_owned());
    config.cache_dir = Some(cache.to_owned());
    config.net.max_epochs = 20;
    config.net.patience = 3;
    config.head = linear_and_knn();
    config.finetune = Some(FinetuneParams {
        // Large enough to move the layer in one short epoch.
        learning_rate: 1e-3,
        max_epochs: 1,
        ..FinetuneParams::DEFAULT
    });
    config
}

#[test]
fn a_finetuned_router_stores_its_layers_and_predicts_from_disk_what_it_validated()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 160)?;
    let out = tmp.path().join("router");
    let report = run_fit(&finetune_config(&data, &out, &tmp.path().join("cache")))?;
    let spec = report
        .manifest
        .encoder
        .finetune
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no fine-tuned layers recorded"))?;
    assert_eq!(spec.layers, vec![5], "the top layer of six");
    assert_eq!(
        spec.sha256,
        router_core::encoder::sha256_file(&out.join(DELTA_FILE))?
    );
    let hp = &report.manifest.training.hyperparameters;
    assert_eq!(hp.get("finetune_layers"), Some(&1.0));
    assert!(hp.contains_key("finetune_best_validation_loss"));
    // Only the layer's 16 tensors are stored, not the model.
    let stored = candle_core::safetensors::load(out.join(DELTA_FILE), &candle_core::Device::Cpu)?;
    assert_eq!(stored.len(), 16);
    assert!(stored.keys().all(|k| k.starts_with("encoder.layer.5.")));

    // Serving loads base + delta (int8) and predicts what training validated.
    let (_, encoder, _) = predicts_what_it_validated(&out, &report)?;
    assert_eq!(encoder.precision(), Precision::Int8);
    assert_eq!(encoder.delta().map(|d| d.layers.clone()), Some(vec![5]));
    Ok(())
}

#[test]
fn a_router_whose_delta_was_swapped_or_lost_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 120)?;
    let cache = tmp.path().join("cache");
    let a = tmp.path().join("a");
    run_fit(&finetune_config(&data, &a, &cache))?;

    // Other weights in its place: a valid file of the same layer, the wrong digest.
    let delta = a.join(DELTA_FILE);
    let mut tensors = candle_core::safetensors::load(&delta, &candle_core::Device::Cpu)?;
    let name = "encoder.layer.5.output.dense.bias";
    let bias = (tensors[name].clone() + 0.01)?;
    tensors.insert(name.to_owned(), bias);
    candle_core::safetensors::save(&tensors, &delta)?;
    let router = Router::load(&a)?;
    let message = match router.load_encoder(&candle_core::Device::Cpu) {
        Ok(_) => anyhow::bail!("a swapped delta was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("sha256"), "{message}");

    std::fs::remove_file(a.join(DELTA_FILE))?;
    let message = match router.load_encoder(&candle_core::Device::Cpu) {
        Ok(_) => anyhow::bail!("a missing delta was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains(DELTA_FILE), "{message}");

    // Refitting without fine-tuning into a directory that holds a delta removes it.
    std::fs::write(&delta, b"left over")?;
    let mut plain = finetune_config(&data, &a, &cache);
    plain.finetune = None;
    run_fit(&plain)?;
    assert!(!delta.exists());
    Router::load(&a)?.load_encoder(&candle_core::Device::Cpu)?;
    Ok(())
}

#[test]
fn finetuning_what_cannot_be_trained_is_a_clear_error() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 60)?;
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("router");
    let message = |config: &FitConfig| match run_fit(config) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };

    let mut too_deep = finetune_config(&data, &out, &cache);
    if let Some(params) = too_deep.finetune.as_mut() {
        params.layers = 7;
    }
    assert!(message(&too_deep).contains("from 1 to the encoder's 6"));

    let mut f32 = finetune_config(&data, &out, &cache);
    f32.encoder_options.precision = Precision::F32;
    assert!(message(&f32).contains("int8"));

    // Layers 2 and 4 pooled, the top layer trained: the embedding could not change.
    let mut unpooled = finetune_config(&data, &out, &cache);
    unpooled.encoder_options.layers = Layers::These(vec![2, 4]);
    assert!(message(&unpooled).contains("nothing would change"));
    assert!(!out.join(DELTA_FILE).exists());
    Ok(())
}
