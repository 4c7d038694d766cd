//! The benchmark table: every head on every dataset in `datasets/`, each evaluated on its
//! dataset's test split, summarised in one Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use router_core::encoder::Precision;
use router_core::policy::Policy;
use router_train::{FitConfig, HeadChoice, run_fit};

use crate::report::{PairedDifference, RouterReport, pct};
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
    /// Also re-measure the reference routers on each dataset's split (see
    /// [`REFERENCES`]) and compare the default head with them, paired.
    pub references: bool,
    pub out: PathBuf,
    pub eval: EvalConfig,
}

/// The reference routers, re-measured here on each dataset's own test split under the
/// `cheapest` policy they were defined with: (label, folder suffix, head). The third reference,
/// "told the task label", needs no training (see [`crate::task_label_predictions`]).
pub fn reference_heads() -> [(&'static str, &'static str, HeadChoice); 2] {
    [
        (
            "RouterBench kNN (k = 20)",
            "knn20",
            HeadChoice::Knn {
                k: Some(20),
                alpha: Some(0.0),
            },
        ),
        ("logistic regression", "linear", HeadChoice::Linear),
    ]
}

/// The numbers the default head is compared with references on.
const PAIRED: [(&str, &str); 3] = [
    ("savings_at_parity", "savings at parity"),
    ("savings_within_0.05", "savings within 5 %"),
    ("aiq", "AIQ"),
];

fn head_choice(name: &str) -> Result<HeadChoice> {
    Ok(match name {
        "linear" => HeadChoice::Linear,
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
                "unknown head `{other}` (linear, mlp, mf, knn, ensemble)"
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
    let mut reference_rows = Vec::new();
    for dir in dirs {
        let Some((labels, prices)) = dataset_files(&dir) else {
            continue;
        };
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let train = |head: &str, choice: HeadChoice| -> Result<PathBuf> {
            let out = config.out.join("routers").join(format!("{name}-{head}"));
            let mut fit = FitConfig::new(
                vec![labels.display().to_string()],
                prices.clone(),
                out.clone(),
            );
            fit.head = choice;
            fit.precision = config.precision;
            fit.cache_dir.clone_from(&config.eval.cache_dir);
            fit.progress = config.eval.progress;
            let report = run_fit(&fit)?;
            tracing::info!(dataset = %name, head, "trained:\n{report}");
            eprintln!("trained {name} / {head}");
            Ok(out)
        };
        let routers = config
            .heads
            .iter()
            .map(|head| train(head, head_choice(head)?))
            .collect::<Result<Vec<_>>>()?;
        let mut eval = config.eval.clone();
        eval.routers.clone_from(&routers);
        eval.data = vec![labels.display().to_string()];
        eval.out = config.out.join(&name);
        let report = run_eval(&eval)?;
        eprintln!("evaluated {name}: {}", eval.out.display());
        let default_row = default_head.map(|h| report.routers[h].clone());
        rows.extend(report.routers.into_iter().map(|r| (name.clone(), r)));
        if config.references {
            let mut refs = eval.clone();
            refs.routers = Vec::new();
            let mut ref_names = Vec::new();
            for (label, suffix, choice) in reference_heads() {
                refs.routers
                    .push(train(&format!("reference-{suffix}"), choice)?);
                ref_names.push(label);
            }
            refs.policy = Policy::Cheapest;
            refs.task_reference = true;
            refs.out = config.out.join(format!("{name}-references"));
            let report = run_eval(&refs)?;
            eprintln!("evaluated {name} (references): {}", refs.out.display());
            for (mut r, label) in report
                .routers
                .into_iter()
                .zip(ref_names.into_iter().chain(["told the task label"]))
            {
                label.clone_into(&mut r.head);
                reference_rows.push(ReferenceRow {
                    dataset: name.clone(),
                    differences: default_row
                        .as_ref()
                        .map(|d| d.paired_with(&r))
                        .unwrap_or_default(),
                    reference: r,
                });
            }
        }
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
    let mut summary = summary_table(&rows);
    if !reference_rows.is_empty() {
        summary.push('\n');
        summary.push_str(&reference_table(&reference_rows));
    }
    std::fs::create_dir_all(&config.out).map_err(|source| EvalError::Io {
        path: config.out.clone(),
        source,
    })?;
    write_file(&config.out.join("summary.md"), &summary)?;
    Ok(summary)
}

/// A reference router on one dataset and the default head's paired differences from it.
#[derive(Debug, Clone)]
pub struct ReferenceRow {
    pub dataset: String,
    pub reference: RouterReport,
    /// The default head minus the reference (empty without a default head).
    pub differences: BTreeMap<String, PairedDifference>,
}

/// dataset × reference × {its savings at parity, within 5 %, AIQ} and the default head minus it.
pub fn reference_table(rows: &[ReferenceRow]) -> String {
    let mut s = String::from(
        "| dataset | reference (policy `cheapest`) | savings at parity | savings within 5 % | AIQ |",
    );
    for (_, name) in PAIRED {
        let _ = write!(s, " default − reference: {name} |");
    }
    s.push_str("\n|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let r = &row.reference;
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} |",
            row.dataset,
            r.head,
            with_interval(r, r.savings_at_parity, "savings_at_parity", pct),
            with_interval(
                r,
                r.savings_within.get("0.05").copied().flatten(),
                "savings_within_0.05",
                pct
            ),
            with_interval(r, r.aiq, "aiq", num),
        );
        for (key, _) in PAIRED {
            let cell = row
                .differences
                .get(key)
                .map_or_else(|| "–".to_owned(), PairedDifference::points);
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
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
