//! A report rendered end to end from a small real run: fit a router on a slice of llmrouter
//! with the real encoder, evaluate it, and check the files and the report.json contract.

use std::path::{Path, PathBuf};

use router_eval::{EvalConfig, run_eval};
use router_train::{FitConfig, HeadChoice, HeadParams, run_fit};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// Every key path of a JSON value, arrays collapsed to `[]`, sorted and unique.
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                // Per-model maps (shares) and per-metric maps have data-dependent keys.
                let dynamic = matches!(prefix.rsplit('.').next(), Some("shares"));
                let path = if dynamic {
                    format!("{prefix}.*")
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                key_paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn report_from_a_real_small_run_matches_the_contract() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = repo_root().join("datasets/llmrouter");
    let labels = data.join("labels.parquet").display().to_string();
    let cache = tmp.path().join("cache");
    let mut routers = Vec::new();
    for (name, head) in [
        (
            "mlp",
            HeadChoice::Mlp {
                hidden: 32,
                dropout: 0.1,
            },
        ),
        (
            "knn",
            HeadChoice::Knn {
                k: Some(10),
                alpha: Some(1.0),
                max_keys: HeadParams::DEFAULT.knn_max_keys,
            },
        ),
    ] {
        let out = tmp.path().join(name);
        let mut fit = FitConfig::new(vec![labels.clone()], data.join("models.csv"), out.clone());
        fit.head = head;
        fit.load.max_prompts = Some(250);
        fit.cache_dir = Some(cache.clone());
        fit.net.max_epochs = 20;
        run_fit(&fit)?;
        routers.push(out);
    }
    let out = tmp.path().join("report");
    let mut config = EvalConfig::new(routers, vec![labels], out.clone());
    config.cache_dir = Some(cache);
    config.bootstrap = 50;
    config.max_prompts = Some(250);
    config.task_reference = true;
    let report = run_eval(&config)?;
    assert_eq!(report.routers.len(), 3);
    assert_eq!(report.routers[2].head, "task label");
    // Every router after the first is compared with it, paired, on every bootstrapped number.
    assert!(report.primary.paired_with_first.is_empty());
    for r in &report.routers[1..] {
        assert_eq!(r.paired_with_first.len(), 4, "{:?}", r.paired_with_first);
        for d in r.paired_with_first.values() {
            assert!(
                d.low <= d.high && (0.0..=1.0).contains(&d.share_higher),
                "{d:?}"
            );
        }
    }
    assert_eq!(report.n_models, 9);
    assert_eq!(report.primary.curve.len(), 201);
    // Band 0 is "always the best predicted", band 1 "always the cheapest".
    let last = report
        .primary
        .curve
        .last()
        .map(|p| p.cost)
        .unwrap_or_default();
    assert!((last - report.cheapest.cost).abs() < 1e-12);
    assert!(report.oracle.quality >= report.best_single.quality);

    for file in [
        "report.json",
        "report.md",
        "report.html",
        "cost_quality.svg",
        "band_promise.svg",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html"))?;
    assert!(html.contains("<svg") && html.contains("savings at parity"));
    assert!(!html.contains("<script src"), "self-contained");
    let md = std::fs::read_to_string(out.join("report.md"))?;
    assert!(md.contains("| router | head | savings at parity"));
    assert!(md.contains("## Paired with the first router"));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    let mut keys = Vec::new();
    key_paths(&json, "", &mut keys);
    keys.sort();
    keys.dedup();
    let golden_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report_keys.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, keys.join("\n") + "\n")?;
    }
    let golden = std::fs::read_to_string(&golden_path)?;
    let expected: Vec<&str> = golden.lines().collect();
    assert_eq!(
        keys, expected,
        "report.json keys changed: update the README and the golden file"
    );
    // The contract's required fields.
    for key in [
        "best_single",
        "oracle",
        "curve",
        "savings_at_parity",
        "savings_within",
        "quality_at_best_cost",
        "headroom_captured",
        "aiq",
        "apgr",
        "n_prompts",
        "n_models",
    ] {
        assert!(json.get(key).is_some(), "report.json lacks `{key}`");
    }
    assert!(json["apgr"].is_null(), "APGR is for two-model data only");
    for within in ["0.01", "0.05", "0.10"] {
        assert!(json["savings_within"].get(within).is_some());
    }
    Ok(())
}

#[test]
fn a_router_that_does_not_exist_is_a_clear_error() {
    let config = EvalConfig::new(
        vec!["/nonexistent/router".into()],
        vec!["x.parquet".into()],
        "/tmp/unused".into(),
    );
    let err = run_eval(&config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("/nonexistent/router"), "{err}");
}
