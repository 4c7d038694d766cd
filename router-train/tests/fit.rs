//! router-train end to end on a slice of the real llmrouter data with the real encoder, and
//! every bad-input case.

mod common;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use router_core::artifact::Router;
use router_core::encoder::{Layers, Precision};
use router_core::lexical::LexicalSpec;
use router_train::data::{LoadOptions, expand_inputs, load, read_frame};
use router_train::{FitConfig, HeadChoice, HeadParams, TrainError, run_fit};

use common::{linear_and_knn, llmrouter, predicts_what_it_validated, slice_csv};

fn quick_config(data: &Path, prices: &Path, out: &Path, cache: &Path) -> FitConfig {
    let mut config = FitConfig::new(
        vec![data.display().to_string()],
        prices.to_owned(),
        out.to_owned(),
    );
    config.cache_dir = Some(cache.to_owned());
    config.net.max_epochs = 30;
    config.net.patience = 5;
    config.head = HeadChoice::Mlp {
        hidden: 64,
        dropout: 0.1,
    };
    config
}

#[test]
fn fit_save_load_predicts_the_same_numbers() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 300)?;
    let (_, prices) = llmrouter();
    let out = tmp.path().join("router");
    let cache = tmp.path().join("cache");
    let config = quick_config(&data, &prices, &out, &cache);
    let report = run_fit(&config)?;
    assert_eq!(report.manifest.models.len(), 9);
    assert!(report.embedded.encoded > 0);
    assert_eq!(report.manifest.training.validation.len(), 9);
    assert!(report.to_string().contains("AUC"));

    // int8 by default, recorded, and what the loaded router's encoder runs.
    let (router, encoder, predicted) = predicts_what_it_validated(&out, &report)?;
    assert_eq!(router.manifest.encoder.precision, Precision::Int8);
    assert_eq!(encoder.precision(), Precision::Int8);
    // Predictions are qualities: inside 0–1.
    assert!(predicted.iter().flatten().all(|p| (0.0..=1.0).contains(p)));

    // A second run on the same data encodes nothing.
    let again = run_fit(&config)?;
    assert_eq!(again.embedded.encoded, 0);
    assert!(again.embedded.cached > 0);
    Ok(())
}

#[test]
fn a_router_with_lexical_features_predicts_from_disk_what_it_validated() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 200)?;
    let (_, prices) = llmrouter();
    let out = tmp.path().join("router");
    let mut config = quick_config(&data, &prices, &out, &tmp.path().join("cache"));
    config.lexical = Some(LexicalSpec {
        dim: 256,
        ..LexicalSpec::default()
    });
    config.head = linear_and_knn();
    let report = run_fit(&config)?;
    assert_eq!(report.manifest.lexical.map(|l| l.dim), Some(256));
    let (router, encoder, predicted) = predicts_what_it_validated(&out, &report)?;
    assert_eq!(router.manifest.input_dim(), 3 * 384 + 256);
    assert_eq!(router.lexical_features("Why?").len(), 256);
    let texts: Vec<&str> = report
        .validation_prompts
        .iter()
        .map(String::as_str)
        .collect();
    // The features are part of the prediction: other texts, same embeddings, other numbers.
    let shouted: Vec<String> = texts.iter().map(|t| t.to_uppercase()).collect();
    let shouted: Vec<&str> = shouted.iter().map(String::as_str).collect();
    assert_ne!(
        router.predict(&shouted, &encoder.embed(&texts)?)?,
        predicted
    );
    Ok(())
}

#[test]
fn a_router_on_pooled_layers_records_them_and_predicts_from_disk() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 200)?;
    let (_, prices) = llmrouter();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("router");
    // The default, the thirds of MiniLM-L6's depth: layers 2, 4 and 6.
    let mut config = quick_config(&data, &prices, &out, &cache);
    config.head = linear_and_knn();
    let report = run_fit(&config)?;
    assert_eq!(report.manifest.encoder.layers, [2, 4, 6]);
    assert_eq!(report.manifest.encoder.dim, 3 * 384);
    let (router, encoder, _) = predicts_what_it_validated(&out, &report)?;
    assert_eq!(encoder.layers(), [2, 4, 6]);
    assert_eq!(router.manifest.input_dim(), 3 * 384);
    let manifest = std::fs::read_to_string(out.join("router.json"))?;
    assert!(manifest.contains("\"layers\""), "{manifest}");

    // The last layer alone is another embedding: its own cache file, encoded afresh, and a
    // router without the field (as routers written before it existed).
    let plain_out = tmp.path().join("plain");
    let mut plain = quick_config(&data, &prices, &plain_out, &cache);
    plain.head = linear_and_knn();
    plain.encoder_options.layers = Layers::Last;
    let plain_report = run_fit(&plain)?;
    assert_eq!(plain_report.embedded.cached, 0);
    assert_eq!(plain_report.manifest.encoder.dim, 384);
    let manifest = std::fs::read_to_string(plain_out.join("router.json"))?;
    assert!(!manifest.contains("\"layers\""), "{manifest}");
    Ok(())
}

#[test]
fn a_capped_knn_index_keeps_a_sample_and_predicts_from_disk() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 200)?;
    let (_, prices) = llmrouter();
    let cache = tmp.path().join("cache");
    // One split (k and α on validation) and three folds (on leave-one-out predictions, every
    // row predicted though only the sampled ones are keys).
    for folds in [0, 3] {
        let out = tmp.path().join(format!("capped{folds}"));
        let mut config = quick_config(&data, &prices, &out, &cache);
        config.net.folds = folds;
        config.head = HeadChoice::Knn {
            k: None,
            alpha: None,
            max_keys: 40,
        };
        let report = run_fit(&config)?;
        let hp = &report.manifest.training.hyperparameters;
        assert_eq!(hp.get("keys"), Some(&40.0), "{hp:?}");
        assert!(hp.get("k").is_some_and(|&k| k <= 40.0), "{hp:?}");
        predicts_what_it_validated(&out, &report)?;
    }
    Ok(())
}

#[test]
fn same_seed_same_weights_and_every_head_fits() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 200)?;
    let (_, prices) = llmrouter();
    let cache = tmp.path().join("cache");
    let weights = |name: &str, head: HeadChoice| -> anyhow::Result<Vec<u8>> {
        let out = tmp.path().join(name);
        let mut config = quick_config(&data, &prices, &out, &cache);
        config.head = head;
        run_fit(&config)?;
        Router::load(&out)?;
        Ok(std::fs::read(out.join("head.safetensors"))?)
    };
    let mlp = HeadChoice::Mlp {
        hidden: 32,
        dropout: 0.2,
    };
    assert_eq!(weights("a", mlp.clone())?, weights("b", mlp)?);
    let mf = HeadChoice::Mf { dim: 16 };
    assert_eq!(weights("mf1", mf.clone())?, weights("mf2", mf)?);
    let task = weights("task1", HeadChoice::Task)?;
    assert_eq!(task, weights("task2", HeadChoice::Task)?);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("task1/router.json"))?)?;
    assert_eq!(
        spec["head"],
        serde_json::json!({ "kind": "task", "tasks": ["agentverse-logicgrid", "agentverse-mgsm"] })
    );
    let linear = weights("lin1", HeadChoice::Linear)?;
    assert_eq!(linear, weights("lin2", HeadChoice::Linear)?);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("lin1/router.json"))?)?;
    assert_eq!(spec["head"], serde_json::json!({ "kind": "linear" }));
    let knn = weights(
        "knn",
        HeadChoice::Knn {
            k: None,
            alpha: None,
            max_keys: HeadParams::DEFAULT.knn_max_keys,
        },
    )?;
    assert!(!knn.is_empty());
    let ensemble = HeadChoice::Ensemble(vec![
        HeadChoice::Linear,
        HeadChoice::Mlp {
            hidden: 32,
            dropout: 0.2,
        },
        HeadChoice::Knn {
            k: Some(10),
            alpha: Some(1.0),
            max_keys: HeadParams::DEFAULT.knn_max_keys,
        },
    ]);
    assert_eq!(
        weights("ens1", ensemble.clone())?,
        weights("ens2", ensemble)?
    );
    Ok(())
}

#[test]
fn a_weighted_member_keeps_its_weight_on_disk() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // Four tasks (natural_qa, mgsm, logicgrid, commongen), on which the models rank apart.
    let data = slice_csv(tmp.path(), 600)?;
    let (_, prices) = llmrouter();
    let out = tmp.path().join("weighted");
    let mut config = quick_config(&data, &prices, &out, &tmp.path().join("cache"));
    // Two poor members, the one nearest neighbour's scores and a two-dimensional MF, beside
    // which the task member clearly has something to add.
    config.head = HeadChoice::Ensemble(vec![
        HeadChoice::Knn {
            k: Some(1),
            alpha: Some(0.0),
            max_keys: HeadParams::DEFAULT.knn_max_keys,
        },
        HeadChoice::Mf { dim: 2 },
        HeadChoice::Weighted(Box::new(HeadChoice::Task)),
    ]);
    let report = run_fit(&config)?;
    // The task member was weighed on validation and kept at one of the weights tried, which
    // the manifest records; the two others keep equal shares of the rest.
    let hp = &report.manifest.training.hyperparameters;
    assert_eq!(hp.get("task.kept"), Some(&1.0), "{hp:?}");
    let weight = hp["task.weight"] as f32;
    assert!(
        router_train::fit::MEMBER_WEIGHTS.contains(&weight),
        "{weight} {hp:?}"
    );
    assert!(hp["task.ensemble_pairwise_loss_with"] < hp["task.ensemble_pairwise_loss_without"]);
    let spec = serde_json::to_value(&report.manifest.head)?;
    assert_eq!(spec["members"][2]["kind"], "task");
    let weights: Vec<f32> = serde_json::from_value(spec["weights"].clone())?;
    let rest = (1.0 - weight) / 2.0;
    for (got, want) in weights.iter().zip([rest, rest, weight]) {
        assert!((got - want).abs() < 1e-6, "{weights:?}");
    }
    // The artifact on disk predicts what was validated, weights included.
    predicts_what_it_validated(&out, &report)?;
    Ok(())
}

#[test]
fn cross_fitting_bags_the_nets_and_reloads() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = slice_csv(tmp.path(), 150)?;
    let (_, prices) = llmrouter();
    let out = tmp.path().join("cv");
    let mut config = quick_config(&data, &prices, &out, &tmp.path().join("cache"));
    config.net.folds = 3;
    config.head = HeadChoice::Ensemble(vec![
        HeadChoice::Mf { dim: 8 },
        HeadChoice::Knn {
            k: None,
            alpha: None,
            max_keys: HeadParams::DEFAULT.knn_max_keys,
        },
        HeadChoice::Linear,
        HeadChoice::IfBetter(Box::new(HeadChoice::Task)),
    ]);
    let report = run_fit(&config)?;
    let spec = serde_json::to_value(&report.manifest.head)?;
    assert_eq!(spec["members"][0]["kind"], "bagged");
    assert_eq!(spec["members"][0]["folds"], 3);
    assert_eq!(spec["members"][2]["member"]["kind"], "linear");
    // The optional task member was judged on the out-of-fold predictions, and the verdict is
    // in the manifest whichever it was.
    let hp = &report.manifest.training.hyperparameters;
    let kept = hp.get("task.kept").copied();
    assert!(matches!(kept, Some(k) if k == 0.0 || k == 1.0), "{hp:?}");
    let members = spec["members"].as_array().map_or(0, Vec::len);
    assert_eq!(members, 3 + usize::from(kept == Some(1.0)));
    assert!(hp.contains_key("task.ensemble_pairwise_loss_without"));
    // Calibration metrics come from out-of-fold predictions on train + validation.
    let t = &report.manifest.training;
    assert_eq!(t.validation[0].n, t.n_train + t.n_validation);
    // The artifact on disk predicts what the in-memory head predicted.
    predicts_what_it_validated(&out, &report)?;
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

const PRICES: &str = "model,input_price_per_1M,output_price_per_1M\na,1,2\nb,3,4\n";

/// Runs `fit` on `csv` with the two-model price table; errors happen before any encoding.
fn fit_csv(csv: &str, skip_invalid: bool) -> Result<router_train::FitReport, TrainError> {
    fit_csv_with(csv, skip_invalid, router_train::prices::MissingPrice::Drop)
}

fn fit_csv_with(
    csv: &str,
    skip_invalid: bool,
    missing_price: router_train::prices::MissingPrice,
) -> Result<router_train::FitReport, TrainError> {
    let tmp = tempfile::tempdir().map_err(|e| TrainError::NoRows(e.to_string()))?;
    let dir = tmp.path();
    let data = dir.join("logs.csv");
    std::fs::write(&data, csv).map_err(|e| TrainError::NoRows(e.to_string()))?;
    let prices = dir.join("models.csv");
    std::fs::write(&prices, PRICES).map_err(|e| TrainError::NoRows(e.to_string()))?;
    let mut config = FitConfig::new(vec![data.display().to_string()], prices, dir.join("out"));
    config.load.skip_invalid = skip_invalid;
    config.missing_price = missing_price;
    config.cache_dir = None;
    run_fit(&config)
}

fn message(r: Result<router_train::FitReport, TrainError>) -> String {
    match r {
        Ok(_) => "unexpectedly succeeded".to_owned(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_column_names_file_and_column() {
    let e = message(fit_csv("prompt,model\nhi,a\n", false));
    assert!(
        e.contains("logs.csv") && e.contains("`score`") && e.contains("found: prompt, model"),
        "{e}"
    );
}

#[test]
fn non_numeric_and_nan_scores_name_the_row() {
    let e = message(fit_csv("prompt,model,score\nhi,a,1\nhi,b,abc\n", false));
    assert!(
        e.contains("logs.csv")
            && e.contains("row 2")
            && e.contains("`score`")
            && e.contains("`abc`"),
        "{e}"
    );
    let e = message(fit_csv("prompt,model,score\nhi,a,1\nhi,b,NaN\n", false));
    assert!(e.contains("row 2") && e.contains("NaN"), "{e}");
}

#[test]
fn empty_file_and_unknown_extension() -> anyhow::Result<()> {
    let e = message(fit_csv("", false));
    assert!(e.contains("logs.csv") && e.contains("empty"), "{e}");
    let e = message(fit_csv("prompt,model,score\n", false));
    assert!(e.contains("empty"), "{e}");
    let tmp = tempfile::tempdir()?;
    let path = write(tmp.path(), "logs.xlsx", "x")?;
    let err = load(&[path], &LoadOptions::default()).err();
    assert!(
        matches!(err, Some(TrainError::UnknownExtension { .. })),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn model_without_price_and_single_model() {
    let strict = router_train::prices::MissingPrice::Strict;
    let e = message(fit_csv_with(
        "prompt,model,score\nhi,a,1\nhi,c,0\n",
        false,
        strict,
    ));
    assert!(
        e.contains("model `c` has no price") && e.contains("models.csv"),
        "{e}"
    );
    // By default the unpriced model is left out, which here leaves one model.
    let e = message(fit_csv("prompt,model,score\nhi,a,1\nhi,c,0\n", false));
    assert!(e.contains("single model (`a`)"), "{e}");
    let e = message(fit_csv("prompt,model,score\nhi,a,1\nho,a,0\n", false));
    assert!(e.contains("single model"), "{e}");
}

#[test]
fn skip_invalid_counts_instead_of_failing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = write(
        tmp.path(),
        "logs.csv",
        "prompt,model,score\nhi,a,1\nhi,b,oops\nho,b,0\n,a,1\n",
    )?;
    let opts = LoadOptions {
        skip_invalid: true,
        ..LoadOptions::default()
    };
    let table = load(&[path], &opts)?;
    assert_eq!(table.n_skipped, 2);
    assert_eq!(table.n_rows, 2);
    Ok(())
}

#[test]
fn missing_cells_are_masked_and_duplicates_averaged() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // "hi" has two rows for a (averaged), none for b; the whitespace variant is the same prompt.
    let path = write(
        tmp.path(),
        "logs.jsonl",
        concat!(
            r#"{"prompt": "hi", "model": "a", "score": 1}"#,
            "\n",
            r#"{"prompt": " hi ", "model": "a", "score": 0}"#,
            "\n",
            r#"{"prompt": "ho", "model": "b", "score": 1}"#,
            "\n",
        ),
    )?;
    let table = load(&[path], &LoadOptions::default())?;
    assert_eq!(table.prompts.len(), 2);
    assert_eq!(table.n_duplicates, 1);
    assert_eq!(table.cell(0, 0), Some(0.5));
    assert_eq!(table.cell(0, 1), None, "a missing cell is not a zero");
    assert_eq!(table.counts[0], 2);
    Ok(())
}

#[test]
fn propensities_weight_each_cell_by_their_inverse_per_model() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // Model a: "hi" chosen with probability ½, "ho" always (weights 2 and 1, mean 1.5).
    // Model b: "hi" logged without a propensity (1), "ho" with ¼ twice (4; mean 2.5).
    let path = write(
        tmp.path(),
        "logs.jsonl",
        concat!(
            r#"{"prompt": "hi", "model": "a", "score": 1, "propensity": 0.5}"#,
            "\n",
            r#"{"prompt": "ho", "model": "a", "score": 0, "propensity": 1.0}"#,
            "\n",
            r#"{"prompt": "hi", "model": "b", "score": 0, "propensity": null}"#,
            "\n",
            r#"{"prompt": "ho", "model": "b", "score": 1, "propensity": 0.25}"#,
            "\n",
            r#"{"prompt": "ho", "model": "b", "score": 1, "propensity": 0.25}"#,
            "\n",
        ),
    )?;
    let table = load(&[path], &LoadOptions::default())?;
    assert_eq!(table.n_propensity_rows, 4);
    let hi = table.prompts.iter().position(|p| p.text == "hi").unwrap();
    let mask = table.propensity_weighted_mask(f64::INFINITY).unwrap();
    let weight = |prompt: usize, model: usize| mask[prompt * 2 + model];
    let ho = 1 - hi;
    for (got, want) in [
        (weight(hi, 0), 2.0 / 1.5),
        (weight(ho, 0), 1.0 / 1.5),
        (weight(hi, 1), 1.0 / 2.5),
        (weight(ho, 1), 4.0 / 2.5),
    ] {
        assert!((got - want).abs() < 1e-6, "{mask:?}");
    }
    // Capped at 3: b's ¼ weighs 3, the mean is 2.
    let capped = table.propensity_weighted_mask(3.0).unwrap();
    assert!((capped[hi * 2 + 1] - 0.5).abs() < 1e-6, "{capped:?}");
    assert!((capped[ho * 2 + 1] - 1.5).abs() < 1e-6, "{capped:?}");
    // The plain mask is untouched, and logs without the column have nothing to weight.
    assert!(table.mask.iter().all(|&m| m == 1.0));
    let path = write(
        tmp.path(),
        "plain.csv",
        "prompt,model,score\nhi,a,1\nhi,b,0\n",
    )?;
    assert!(
        load(&[path], &LoadOptions::default())?
            .propensity_weighted_mask(f64::INFINITY)
            .is_none()
    );
    Ok(())
}

#[test]
fn a_jsonl_column_that_first_appears_late_is_still_read() -> anyhow::Result<()> {
    // 150 seed rows without optional columns (beyond a 100-row schema sample), then logged
    // rows with a cost and a propensity.
    let tmp = tempfile::tempdir()?;
    let mut text = String::new();
    for i in 0..75 {
        for model in ["a", "b"] {
            text.push_str(&format!(
                "{{\"prompt\": \"seed {i}\", \"model\": \"{model}\", \"score\": 1}}\n"
            ));
        }
    }
    text.push_str(
        r#"{"prompt": "logged", "model": "a", "score": 0, "cost_usd": 0.002, "propensity": 0.5}"#,
    );
    text.push('\n');
    let path = write(tmp.path(), "logs.jsonl", &text)?;
    let table = load(&[path], &LoadOptions::default())?;
    assert_eq!(table.n_rows, 151);
    assert_eq!(table.n_propensity_rows, 1);
    let logged = table
        .prompts
        .iter()
        .position(|p| p.text == "logged")
        .unwrap();
    assert_eq!(table.cell_cost_usd[logged * 2], 0.002);
    Ok(())
}

#[test]
fn bad_propensities_name_the_row_and_weights_need_the_column() -> anyhow::Result<()> {
    for bad in ["0", "1.5", "-0.2", "often"] {
        let e = message(fit_csv(
            &format!("prompt,model,score,propensity\nhi,a,1,0.5\nhi,b,0,{bad}\n"),
            false,
        ));
        assert!(
            e.contains("row 2") && e.contains("propensity") && e.contains(bad),
            "{bad}: {e}"
        );
    }
    let tmp = tempfile::tempdir()?;
    let data = write(
        tmp.path(),
        "logs.csv",
        "prompt,model,score\nhi,a,1\nhi,b,0\n",
    )?;
    let prices = write(tmp.path(), "models.csv", PRICES)?;
    let mut config = FitConfig::new(
        vec![data.display().to_string()],
        prices,
        tmp.path().join("out"),
    );
    config.cache_dir = None;
    config.propensity_weights = true;
    let e = message(run_fit(&config));
    assert!(
        e.contains("--propensity-weights") && e.contains("`propensity`"),
        "{e}"
    );
    assert!(!tmp.path().join("out").exists());
    Ok(())
}

#[test]
fn propensity_weights_lift_the_labels_the_router_rarely_chose() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (_, prices) = llmrouter();
    let csv = slice_csv(tmp.path(), 120)?;
    // Logged as if good answers had been drawn with probability ¼ and the others always: the
    // weighted labels must rate every model higher than the plain ones do.
    let mut df = read_frame(&csv)?;
    let scores = df.column("score")?.cast(&DataType::Float64)?;
    let propensity: Vec<f64> = scores
        .f64()?
        .iter()
        .map(|s| if s.unwrap_or(0.0) >= 0.5 { 0.25 } else { 1.0 })
        .collect();
    let rows = propensity.len();
    df.with_column(Column::new("propensity".into(), propensity))?;
    let logged = tmp.path().join("logged.csv");
    CsvWriter::new(std::fs::File::create(&logged)?).finish(&mut df)?;
    let fit = |name: &str, weighted: bool| {
        let out = tmp.path().join(name);
        let mut config = quick_config(&logged, &prices, &out, &tmp.path().join("cache"));
        config.head = HeadChoice::Knn {
            k: Some(10),
            alpha: Some(1.0),
            max_keys: HeadParams::DEFAULT.knn_max_keys,
        };
        config.propensity_weights = weighted;
        let report = run_fit(&config)?;
        let tensors = candle_core::safetensors::load(
            out.join("head.safetensors"),
            &candle_core::Device::Cpu,
        )?;
        let prior = tensors["knn.prior"].to_vec1::<f32>()?;
        anyhow::Ok((report, prior))
    };
    let (plain, plain_prior) = fit("plain", false)?;
    let (weighted, weighted_prior) = fit("weighted", true)?;
    let hp = |r: &router_train::FitReport| r.manifest.training.hyperparameters.clone();
    assert_eq!(hp(&weighted)["propensity_weighted_rows"], rows as f64);
    assert!(!hp(&plain).contains_key("propensity_weighted_rows"));
    let mut compared = 0;
    for (w, u) in weighted_prior.iter().zip(&plain_prior) {
        if *u > 0.01 && *u < 0.99 {
            assert!(w > u, "{weighted_prior:?} vs {plain_prior:?}");
            compared += 1;
        }
    }
    assert!(compared >= 3, "{plain_prior:?}");
    predicts_what_it_validated(&tmp.path().join("weighted"), &weighted)?;
    Ok(())
}

#[test]
fn graded_scores_are_detected_and_normalised() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = write(
        tmp.path(),
        "judge.csv",
        "prompt,model,score\nq1,a,1\nq1,b,10\nq2,a,5.5\n",
    )?;
    let table = load(std::slice::from_ref(&path), &LoadOptions::default())?;
    assert_eq!(table.score.kind, "graded");
    assert!(table.score.range_detected);
    assert_eq!((table.score.raw_min, table.score.raw_max), (1.0, 10.0));
    assert_eq!(table.cell(1, 0), Some(0.5));
    // An explicit range is used as given, and a score outside it is an error naming the row.
    let opts = LoadOptions {
        score_range: Some((0.0, 5.0)),
        ..LoadOptions::default()
    };
    let err = load(&[path], &opts)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("row 2") && err.contains("outside"), "{err}");
    Ok(())
}

#[test]
fn globs_expand_and_missing_globs_fail() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    write(tmp.path(), "part-1.csv", "prompt,model,score\nq1,a,1\n")?;
    write(tmp.path(), "part-2.csv", "prompt,model,score\nq1,b,0\n")?;
    let pattern = format!("{}/part-*.csv", tmp.path().display());
    let files = expand_inputs(&[pattern])?;
    assert_eq!(files.len(), 2);
    let table = load(&files, &LoadOptions::default())?;
    assert_eq!(table.models, vec!["a", "b"]);
    let missing = format!("{}/nothing-*.csv", tmp.path().display());
    assert!(matches!(
        expand_inputs(&[missing]),
        Err(TrainError::NoFiles(_))
    ));
    Ok(())
}

#[test]
fn corrupt_parquet_is_a_read_error_naming_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = write(tmp.path(), "broken.parquet", "PAR1 this is not parquet")?;
    let err = load(&[path], &LoadOptions::default()).err();
    assert!(
        matches!(&err, Some(TrainError::Read { path, .. }) if path.ends_with("broken.parquet")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn toml_prices_read_and_bad_prices_fail() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = write(
        tmp.path(),
        "prices.toml",
        "[models.a]\ninput_price_per_1M = 1.5\noutput_price_per_1M = 2\n\n[models.\"org/b\"]\ninput_price_per_1M = 0\noutput_price_per_1M = 0.5\n",
    )?;
    let prices = router_train::prices::load_prices(&path)?;
    assert_eq!(prices.prices["a"].input_per_1m, 1.5);
    assert_eq!(prices.prices["org/b"].output_per_1m, 0.5);
    // A typo is an error, not a silent default.
    let typo = write(
        tmp.path(),
        "typo.toml",
        "[models.a]\ninput_price_per_1m = 1\noutput_price_per_1M = 2\n",
    )?;
    let err = router_train::prices::load_prices(&typo)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("typo.toml"), "{err}");
    let negative = write(
        tmp.path(),
        "neg.csv",
        "model,input_price_per_1M,output_price_per_1M\na,-1,2\n",
    )?;
    let err = router_train::prices::load_prices(&negative)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("negative"), "{err}");
    Ok(())
}

#[test]
fn f32_and_int8_embeddings_never_share_a_cache_file() -> anyhow::Result<()> {
    use router_core::encoder::{Encoder, EncoderOptions, EncoderSource, Truncation};
    use router_train::embed_cache::{cache_file, embed_all};
    let load = |precision| {
        Encoder::from_source(
            &EncoderSource::default(),
            &candle_core::Device::Cpu,
            &EncoderOptions::new(Truncation::Head, precision),
        )
    };
    let (f32_encoder, int8_encoder) = (load(Precision::F32)?, load(Precision::Int8)?);
    let tmp = tempfile::tempdir()?;
    let f32_file = cache_file(tmp.path(), &f32_encoder);
    assert_ne!(f32_file, cache_file(tmp.path(), &int8_encoder));
    let text = ["which model answers this best?"];
    let (f, _) = embed_all(&f32_encoder, &text, Some(tmp.path()), 8, false)?;
    let (q, stats) = embed_all(&int8_encoder, &text, Some(tmp.path()), 8, false)?;
    assert_eq!(stats.encoded, 1, "int8 must not read the f32 cache");
    assert_ne!(f, q);
    Ok(())
}

#[test]
fn a_torn_cache_record_is_cut_off_not_misread() -> anyhow::Result<()> {
    use router_core::encoder::{Encoder, EncoderOptions, EncoderSource, Truncation};
    use router_train::embed_cache::{cache_file, embed_all};
    let encoder = Encoder::from_source(
        &EncoderSource::default(),
        &candle_core::Device::Cpu,
        &EncoderOptions::new(Truncation::Head, Precision::Int8),
    )?;
    let tmp = tempfile::tempdir()?;
    let (first, _) = embed_all(&encoder, &["what is 2 + 2?"], Some(tmp.path()), 8, false)?;
    // A crash mid-write leaves half a record at the end of the file.
    let path = cache_file(tmp.path(), &encoder);
    let mut bytes = std::fs::read(&path)?;
    bytes.extend_from_slice(&[7u8; 100]);
    std::fs::write(&path, &bytes)?;
    let texts = ["what is 2 + 2?", "name a prime larger than 10"];
    let (both, stats) = embed_all(&encoder, &texts, Some(tmp.path()), 8, false)?;
    assert_eq!((stats.cached, stats.encoded), (1, 1));
    assert_eq!(both[0], first[0]);
    // The new record was appended after the cut: everything reads back, aligned.
    let (again, stats) = embed_all(&encoder, &texts, Some(tmp.path()), 8, false)?;
    assert_eq!((stats.cached, stats.encoded), (2, 0));
    assert_eq!(again, both);
    assert_eq!(std::fs::metadata(&path)?.len() % (32 + 384 * 4), 0);
    Ok(())
}

#[test]
fn the_task_head_needs_two_tasks() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut csv = String::from("prompt,model,score\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "question number {i},a,{}\nquestion number {i},b,1\n",
            i % 2
        ));
    }
    let data = write(tmp.path(), "logs.csv", &csv)?;
    let prices = write(tmp.path(), "models.csv", PRICES)?;
    let mut config = quick_config(
        &data,
        &prices,
        &tmp.path().join("out"),
        &tmp.path().join("cache"),
    );
    config.head = HeadChoice::Task;
    let err = run_fit(&config).err();
    assert!(matches!(err, Some(TrainError::TooFewTasks(0))), "{err:?}");
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("`task` column"),
    );
    Ok(())
}

#[test]
fn bad_flags_are_cli_errors_before_anything_is_read() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (labels, prices) = llmrouter();
    let out = tmp.path().join("out");
    let cases: [(&[&str], &str); 6] = [
        (&["--head", "mlp+svm"], "--head mlp+svm: unknown head `svm`"),
        (
            &["--propensity-weights", "--propensity-cap", "0.5"],
            "--propensity-cap must be at least 1",
        ),
        (
            &["--pairwise-weight=-1"],
            "invalid value '-1' for '--pairwise-weight <PAIRWISE_WEIGHT>': the pairwise weight is a number ≥ 0, got `-1`",
        ),
        (
            &["--pairwise-weight=NaN"],
            "invalid value 'NaN' for '--pairwise-weight <PAIRWISE_WEIGHT>': the pairwise weight is a number ≥ 0, got `NaN`",
        ),
        (
            &["--finetune-layers", "1", "--finetune-lr", "0"],
            "--finetune-lr must be a positive number",
        ),
        (
            &["--finetune-layers", "1", "--finetune-epochs", "0"],
            "--finetune-epochs at least 1",
        ),
    ];
    for (flags, message) in cases {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_router-train"))
            .arg("fit")
            .arg("--data")
            .arg(&labels)
            .arg("--prices")
            .arg(&prices)
            .arg("--out")
            .arg(&out)
            .args(flags)
            .arg("--no-cache")
            .output()?;
        assert!(!run.status.success(), "{flags:?}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
        assert!(!out.exists(), "{flags:?}");
    }
    Ok(())
}
