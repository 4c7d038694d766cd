//! The benchmark table: every head on every dataset in `datasets/`, each evaluated on its
//! dataset's test split, summarised in one Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use router_core::encoder::Precision;
use router_core::policy::Policy;
use router_train::{FitConfig, HeadChoice, run_fit};

use crate::report::{RouterReport, pct};
use crate::{EvalConfig, EvalError, Result, run_eval, write_file};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub datasets: PathBuf,
    /// Only these datasets (folder names); all when empty.
    pub only: Vec<String>,
    pub heads: Vec<String>,
    /// Policies the default head (`ensemble` when trained, else the last head) is also
    /// evaluated under, besides `eval.policy`.
    pub also_policies: Vec<Policy>,
    /// The encoder's precision for training (and so for the evaluation, which embeds as the
    /// router says).
    pub precision: Precision,
    pub out: PathBuf,
    pub eval: EvalConfig,
}

fn head_choice(name: &str) -> Result<HeadChoice> {
    Ok(match name {
        "mlp" => HeadChoice::Mlp {
            hidden: 256,
            dropout: 0.2,
        },
        "mf" => HeadChoice::Mf { dim: 64 },
        "knn" => HeadChoice::Knn {
            k: None,
            alpha: None,
        },
        "ensemble" => HeadChoice::Ensemble(vec![
            head_choice("mlp")?,
            head_choice("mf")?,
            head_choice("knn")?,
        ]),
        other => {
            return Err(EvalError::Invalid(format!(
                "unknown head `{other}` (mlp, mf, knn, ensemble)"
            )));
        }
    })
}

/// A dataset folder: `labels.{parquet,csv,jsonl}` and `models.csv`.
fn dataset_files(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let prices = dir.join("models.csv");
    let labels = ["labels.parquet", "labels.csv", "labels.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())?;
    prices.exists().then_some((labels, prices))
}

/// Trains and evaluates; returns the summary Markdown (also written to `out/summary.md`).
pub fn run_bench(config: &BenchConfig) -> Result<String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&config.datasets)
        .map_err(|source| EvalError::Io {
            path: config.datasets.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| dataset_files(p).is_some())
        .filter(|p| {
            config.only.is_empty()
                || p.file_name().is_some_and(|n| {
                    config
                        .only
                        .iter()
                        .any(|o| o.as_str() == n.to_string_lossy())
                })
        })
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(EvalError::Invalid(format!(
            "no dataset (labels.parquet + models.csv) under {}",
            config.datasets.display()
        )));
    }
    let default_head = config
        .heads
        .iter()
        .position(|h| h == "ensemble")
        .or_else(|| config.heads.len().checked_sub(1));
    let other_policies: Vec<Policy> = config
        .also_policies
        .iter()
        .copied()
        .filter(|&p| p != config.eval.policy)
        .collect();
    let mut rows: Vec<(String, RouterReport)> = Vec::new();
    for dir in dirs {
        let Some((labels, prices)) = dataset_files(&dir) else {
            continue;
        };
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut routers = Vec::new();
        for head in &config.heads {
            let out = config.out.join("routers").join(format!("{name}-{head}"));
            let mut fit = FitConfig::new(
                vec![labels.display().to_string()],
                prices.clone(),
                out.clone(),
            );
            fit.head = head_choice(head)?;
            fit.precision = config.precision;
            fit.cache_dir.clone_from(&config.eval.cache_dir);
            fit.progress = config.eval.progress;
            let report = run_fit(&fit)?;
            tracing::info!(dataset = %name, head, "trained:\n{report}");
            eprintln!("trained {name} / {head}");
            routers.push(out);
        }
        let mut eval = config.eval.clone();
        eval.routers.clone_from(&routers);
        eval.data = vec![labels.display().to_string()];
        eval.out = config.out.join(&name);
        let report = run_eval(&eval)?;
        eprintln!("evaluated {name}: {}", eval.out.display());
        rows.extend(report.routers.into_iter().map(|r| (name.clone(), r)));
        if let Some(head) = default_head {
            for &policy in &other_policies {
                let mut other = eval.clone();
                other.policy = policy;
                other.routers = vec![routers[head].clone()];
                other.out = config.out.join(format!("{name}-{policy}"));
                let report = run_eval(&other)?;
                eprintln!("evaluated {name} ({policy}): {}", other.out.display());
                rows.extend(report.routers.into_iter().map(|r| (name.clone(), r)));
            }
        }
    }
    let summary = summary_table(&rows);
    std::fs::create_dir_all(&config.out).map_err(|source| EvalError::Io {
        path: config.out.clone(),
        source,
    })?;
    write_file(&config.out.join("summary.md"), &summary)?;
    Ok(summary)
}

fn with_interval(
    r: &RouterReport,
    value: Option<f64>,
    key: &str,
    fmt: fn(Option<f64>) -> String,
) -> String {
    match r.intervals.get(key) {
        Some([lo, hi]) => format!("{} [{}, {}]", fmt(value), fmt(*lo), fmt(*hi)),
        None => fmt(value),
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"))
}

/// dataset × head × policy × {savings at parity, within 5 %, quality at best cost, AIQ}.
pub fn summary_table(rows: &[(String, RouterReport)]) -> String {
    let mut s = String::from(
        "| dataset | head | policy | savings at parity | savings within 5 % | quality at best cost | AIQ |\n|---|---|---|---|---|---|---|\n",
    );
    for (dataset, r) in rows {
        let _ = writeln!(
            s,
            "| {dataset} | {} | {} | {} | {} | {} | {} |",
            r.head,
            r.policy,
            with_interval(r, r.savings_at_parity, "savings_at_parity", pct),
            with_interval(
                r,
                r.savings_within.get("0.05").copied().flatten(),
                "savings_within_0.05",
                pct
            ),
            with_interval(r, r.quality_at_best_cost, "quality_at_best_cost", num),
            with_interval(r, r.aiq, "aiq", num),
        );
    }
    s
}
