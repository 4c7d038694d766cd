//! The benchmark table: every head on every dataset in `datasets/`, each evaluated on its
//! dataset's test split, summarised in one Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use router_core::encoder::{EncoderSource, Layers, Precision};
use router_core::lexical::LexicalSpec;
use router_core::policy::Policy;
use router_train::fit::parse_pairwise_weight;
use router_train::{FinetuneParams, FitConfig, HeadChoice, HeadParams, run_fit};

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
    /// The encoder every head is trained on unless its name says otherwise (`/enc=`). The
    /// references always read the all-MiniLM-L6-v2 ([`EncoderSource::default`]).
    pub encoder: EncoderSource,
    /// Also re-measure the reference routers on each dataset's split (see
    /// [`reference_heads`]) and compare the default head with them, paired.
    pub references: bool,
    /// Above 1, k-fold evaluation: every head is trained `test_folds` times, each time holding
    /// out one of `test_folds` disjoint folds of the prompts, and the summary pools the folds'
    /// test prompts (every prompt, each predicted by routers that never saw it; intervals over
    /// all of them). No per-dataset report is written then.
    pub test_folds: usize,
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
                max_keys: HeadParams::DEFAULT.knn_max_keys,
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

/// A head name ending in this trains the head on the embedding and the default lexical
/// features ([`LexicalSpec::default`]) instead of the embedding alone.
pub const WITH_LEXICAL: &str = "/lex";

/// A head name ending in this and a number K (`ensemble/cf5`) trains the head with K-fold
/// cross-fitting (router-train's `--folds K`).
pub const CROSS_FITTED: &str = "/cf";

/// A head name ending in this and layers joined by dots (`ensemble/layers=2.4.6`; `--heads`
/// splits at commas), `last` or `thirds` trains the head on those encoder layers pooled
/// (router-train's `--layers`); `layers=` alone: the last layer.
pub const WITH_LAYERS: &str = "/layers=";

/// A head name ending in this and a number μ (`ensemble/pw=1`) trains the networks with the
/// pairwise term weighted μ (router-train's `--pairwise-weight`).
pub const PAIRWISE_WEIGHT: &str = "/pw=";

/// A head name followed by this and an encoder (`ensemble/enc=BAAI/bge-small-en-v1.5`: a hub
/// id, optionally `@revision`, or a local directory; router-train's `--encoder`) trains the
/// head on that encoder's embeddings, so that two encoders are compared in one run, paired.
pub const WITH_ENCODER: &str = "/enc=";

/// A head name ending in this and a number N (`ensemble/ft=1`) fine-tunes the encoder's top N
/// layers before fitting the head (router-train's `--finetune-layers`).
pub const FINETUNE: &str = "/ft=";

/// A bench head: [`head_choice`] of the name and what its suffixes ask for.
#[derive(Debug, Clone, PartialEq)]
struct BenchHead {
    choice: HeadChoice,
    /// `/lex`: lexical features beside the embedding.
    lexical: Option<LexicalSpec>,
    /// `/cfK`: K-fold cross-fitting, K ≥ 2 (0: none).
    folds: usize,
    /// `/layers=…`: the encoder layers pooled (`None`: router-train's default).
    layers: Option<Layers>,
    /// `/pw=μ`: the networks' pairwise weight (0: none).
    pairwise_weight: f64,
    /// `/enc=…`: the encoder (`None`: the bench's).
    encoder: Option<EncoderSource>,
    /// `/ft=N`: the encoder layers fine-tuned (0: none).
    finetune: usize,
}

/// Parses `head[/enc=E][/layers=L.…][/lex][/cfK][/pw=μ][/ft=N]`: the suffixes in that order,
/// each at most once. The encoder comes first because a hub id holds a `/` itself.
fn bench_head(name: &str) -> Result<BenchHead> {
    let invalid = |why: &str| EvalError::Invalid(format!("`{name}`: {why}"));
    let (name, finetune) = match name.rsplit_once(FINETUNE) {
        Some((base, n)) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => (base, n),
            _ => {
                return Err(invalid(&format!(
                    "fine-tuning needs a number of layers ≥ 1 (`{FINETUNE}1`)"
                )));
            }
        },
        None => (name, 0),
    };
    let (name, pairwise_weight) = match name.rsplit_once(PAIRWISE_WEIGHT) {
        Some((base, mu)) => match parse_pairwise_weight(mu) {
            Ok(mu) => (base, mu),
            Err(why) => return Err(invalid(&format!("{why} (`{PAIRWISE_WEIGHT}1`)"))),
        },
        None => (name, 0.0),
    };
    let (base, folds) = match name.rsplit_once(CROSS_FITTED) {
        Some((base, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
            match k.parse::<usize>() {
                Ok(k) if k >= 2 => (base, k),
                _ => {
                    return Err(invalid(&format!(
                        "cross-fitting needs at least 2 folds (`{CROSS_FITTED}5`)"
                    )));
                }
            }
        }
        _ => (name, 0),
    };
    let (base, lexical) = match base.strip_suffix(WITH_LEXICAL) {
        Some(base) => (base, Some(LexicalSpec::default())),
        None => (base, None),
    };
    let (base, layers) = match base.split_once(WITH_LAYERS) {
        Some((base, "")) => (base, Some(Layers::Last)),
        Some((base, list)) => {
            let layers = list.replace('.', ",").parse::<Layers>().map_err(|_| {
                invalid("layers are `last`, `thirds` or numbers joined by dots (`/layers=2.4.6`)")
            })?;
            (base, Some(layers))
        }
        None => (base, None),
    };
    let (base, encoder) = match base.split_once(WITH_ENCODER) {
        Some((_, "")) => {
            return Err(invalid(
                "`/enc=` needs an encoder: a hub id or a directory (`/enc=BAAI/bge-small-en-v1.5`)",
            ));
        }
        Some((base, spec)) => (base, Some(EncoderSource::parse(spec))),
        None => (base, None),
    };
    Ok(BenchHead {
        choice: head_choice(base)?,
        lexical,
        folds,
        layers,
        pairwise_weight,
        encoder,
        finetune,
    })
}

/// A head by name, with the default architecture parameters ([`HeadChoice::parse`]).
fn head_choice(name: &str) -> Result<HeadChoice> {
    HeadChoice::parse(name, &HeadParams::DEFAULT).map_err(EvalError::Invalid)
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
    let folds = config.test_folds.max(1);
    let mut rows: Vec<(String, RouterReport)> = Vec::new();
    let mut reference_rows = Vec::new();
    // Every other head against the default head, same policy, paired.
    let mut head_rows = Vec::new();
    for dir in dirs {
        let Some((labels, prices)) = dataset_files(&dir) else {
            continue;
        };
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut fold_runs = Vec::with_capacity(folds);
        for fold in 0..folds {
            let dataset = Dataset {
                name: &name,
                labels: &labels,
                prices: &prices,
                test_fold: (folds > 1).then_some([fold, folds]),
            };
            fold_runs.push(bench_dataset(
                config,
                &dataset,
                default_head,
                &other_policies,
            )?);
        }
        let run = if folds > 1 {
            DatasetRun::pooled(&fold_runs, &config.eval)?
        } else {
            fold_runs.swap_remove(0)
        };
        let default_row = default_head.map(|h| run.rows[h].clone());
        if let Some(d) = &default_row {
            // The other heads, then the default head under the other policies.
            for (i, r) in run.rows.iter().enumerate() {
                if Some(i) != default_head {
                    head_rows.push(PairedRow {
                        dataset: name.clone(),
                        differences: r.paired_with(d),
                        router: r.clone(),
                    });
                }
            }
        }
        rows.extend(run.rows.into_iter().map(|r| (name.clone(), r)));
        for r in run.references {
            reference_rows.push(PairedRow {
                dataset: name.clone(),
                differences: default_row
                    .as_ref()
                    .map(|d| d.paired_with(&r))
                    .unwrap_or_default(),
                router: r,
            });
        }
    }
    let mut summary = summary_table(&rows);
    if !head_rows.is_empty() {
        summary.push('\n');
        summary.push_str(&paired_table(
            &head_rows,
            "head minus the default head, paired",
            config.eval.policy,
        ));
    }
    if !reference_rows.is_empty() {
        summary.push('\n');
        summary.push_str(&reference_table(&reference_rows));
    }
    std::fs::create_dir_all(&config.out).map_err(|source| EvalError::Io {
        path: config.out.clone(),
        source,
    })?;
    let file = if folds > 1 {
        summary.insert_str(
            0,
            &format!(
                "Pooled over {folds} disjoint test folds: every prompt is a test prompt once, \
                 predicted by routers trained without its fold.\n\n"
            ),
        );
        format!("summary-{folds}fold.md")
    } else {
        "summary.md".to_owned()
    };
    write_file(&config.out.join(file), &summary)?;
    Ok(summary)
}

/// One dataset, and which test fold (none: the routers' default split).
struct Dataset<'a> {
    name: &'a str,
    labels: &'a Path,
    prices: &'a Path,
    test_fold: Option<[usize; 2]>,
}

/// What one dataset (or one of its test folds) gave: a row per head (then the default head
/// under the other policies), and one per reference.
struct DatasetRun {
    rows: Vec<RouterReport>,
    references: Vec<RouterReport>,
}

impl DatasetRun {
    /// Every row pooled over the folds (same heads, policies and references in each).
    fn pooled(folds: &[Self], eval: &EvalConfig) -> Result<Self> {
        let pool = |get: &dyn Fn(&Self) -> &Vec<RouterReport>| -> Result<Vec<RouterReport>> {
            (0..get(&folds[0]).len())
                .map(|i| {
                    let parts: Vec<&RouterReport> = folds.iter().map(|f| &get(f)[i]).collect();
                    RouterReport::pooled(&parts, eval.bootstrap, eval.seed)
                })
                .collect()
        };
        Ok(Self {
            rows: pool(&|f| &f.rows)?,
            references: pool(&|f| &f.references)?,
        })
    }
}

/// Trains every head (and the references) on one dataset's training side and evaluates them
/// on its test side. With a test fold, the routers and reports are named after it and no
/// report is written (only pooled numbers are kept).
fn bench_dataset(
    config: &BenchConfig,
    dataset: &Dataset,
    default_head: Option<usize>,
    other_policies: &[Policy],
) -> Result<DatasetRun> {
    let name = dataset.name;
    let tag = dataset
        .test_fold
        .map_or_else(|| name.to_owned(), |[i, k]| format!("{name}-fold{i}of{k}"));
    let train = |head: &str, spec: BenchHead| -> Result<PathBuf> {
        let out = config
            .out
            .join("routers")
            .join(format!("{tag}-{}", head.replace('/', "-")));
        let mut fit = FitConfig::new(
            vec![dataset.labels.display().to_string()],
            dataset.prices.to_owned(),
            out.clone(),
        );
        fit.head = spec.choice;
        fit.encoder = spec.encoder.unwrap_or_else(|| config.encoder.clone());
        fit.lexical = spec.lexical;
        fit.net.folds = spec.folds;
        fit.net.pairwise_weight = spec.pairwise_weight;
        fit.finetune = (spec.finetune > 0).then_some(FinetuneParams {
            layers: spec.finetune,
            ..FinetuneParams::DEFAULT
        });
        if let Some(layers) = spec.layers {
            fit.encoder_options.layers = layers;
        }
        fit.test_fold = dataset.test_fold;
        fit.encoder_options.precision = config.precision;
        fit.cache_dir.clone_from(&config.eval.cache_dir);
        fit.progress = config.eval.progress;
        let report = run_fit(&fit)?;
        tracing::info!(dataset = %tag, head, "trained:\n{report}");
        eprintln!("trained {tag} / {head}");
        Ok(out)
    };
    let routers = config
        .heads
        .iter()
        .map(|head| train(head, bench_head(head)?))
        .collect::<Result<Vec<_>>>()?;
    let mut eval = config.eval.clone();
    eval.routers.clone_from(&routers);
    eval.data = vec![dataset.labels.display().to_string()];
    eval.out = config.out.join(name);
    eval.write = dataset.test_fold.is_none();
    let report = run_eval(&eval)?;
    eprintln!("evaluated {tag}");
    let mut rows = report.routers;
    // Rows are named as asked (`linear+knn` rather than its kind, `ensemble`).
    for (row, head) in rows.iter_mut().zip(&config.heads) {
        row.head.clone_from(head);
    }
    let mut references = Vec::new();
    if config.references {
        let mut refs = eval.clone();
        refs.routers = Vec::new();
        let mut labels = Vec::new();
        for (label, suffix, choice) in reference_heads() {
            // The references read all-MiniLM-L6-v2's sentence embedding alone (the last
            // layer, no lexical features), as the issue defines them.
            let spec = BenchHead {
                choice,
                lexical: None,
                folds: 0,
                layers: Some(Layers::Last),
                pairwise_weight: 0.0,
                encoder: Some(EncoderSource::default()),
                finetune: 0,
            };
            refs.routers
                .push(train(&format!("reference-{suffix}"), spec)?);
            labels.push(label);
        }
        refs.policy = Policy::Cheapest;
        refs.task_reference = true;
        refs.out = config.out.join(format!("{name}-references"));
        let report = run_eval(&refs)?;
        eprintln!("evaluated {tag} (references)");
        for (mut r, label) in report
            .routers
            .into_iter()
            .zip(labels.into_iter().chain(["told the task label"]))
        {
            label.clone_into(&mut r.head);
            references.push(r);
        }
    }
    if let Some(head) = default_head {
        for &policy in other_policies {
            let mut other = eval.clone();
            other.policy = policy;
            other.routers = vec![routers[head].clone()];
            other.out = config.out.join(format!("{name}-{policy}"));
            let report = run_eval(&other)?;
            eprintln!("evaluated {tag} ({policy})");
            rows.extend(report.routers);
        }
    }
    Ok(DatasetRun { rows, references })
}

/// A router on one dataset and its paired differences with the default head: the head minus
/// the default head for the other heads, the default head minus the reference for references
/// (empty without a default head).
#[derive(Debug, Clone)]
pub struct PairedRow {
    pub dataset: String,
    pub router: RouterReport,
    pub differences: BTreeMap<String, PairedDifference>,
}

/// dataset × head × the head minus the default head on each of [`PAIRED`]; a row under another
/// policy than `policy` names it after the head (`ensemble (cheapest)`).
fn paired_table(rows: &[PairedRow], title: &str, policy: Policy) -> String {
    let mut s = format!("| dataset | {title} |");
    for (_, name) in PAIRED {
        let _ = write!(s, " {name} |");
    }
    s.push_str("\n|---|---|---|---|---|\n");
    for row in rows {
        let r = &row.router;
        let head = if r.policy == policy {
            r.head.clone()
        } else {
            format!("{} ({})", r.head, r.policy)
        };
        let _ = writeln!(
            s,
            "| {} | {head} |{}",
            row.dataset,
            difference_cells(&row.differences)
        );
    }
    s
}

/// dataset × reference × {its savings at parity, within 5 %, AIQ} and the default head minus it.
pub fn reference_table(rows: &[PairedRow]) -> String {
    let mut s = String::from(
        "| dataset | reference (policy `cheapest`) | savings at parity | savings within 5 % | AIQ |",
    );
    for (_, name) in PAIRED {
        let _ = write!(s, " default − reference: {name} |");
    }
    s.push_str("\n|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let r = &row.router;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |{}",
            row.dataset,
            r.head,
            cell(r, "savings_at_parity"),
            cell(r, "savings_within_0.05"),
            cell(r, "aiq"),
            difference_cells(&row.differences)
        );
    }
    s
}

/// ` +1.2 [−0.3, +2.8] |` for each of [`PAIRED`] (`–` where the draws were not paired).
fn difference_cells(differences: &BTreeMap<String, PairedDifference>) -> String {
    PAIRED
        .iter()
        .map(|(key, _)| {
            let cell = differences
                .get(*key)
                .map_or_else(|| "–".to_owned(), PairedDifference::points);
            format!(" {cell} |")
        })
        .collect()
}

/// One bootstrapped headline number with its interval: savings as percentages, the others
/// as numbers.
fn cell(r: &RouterReport, key: &str) -> String {
    let value = Some(r.headline_value(key)).filter(|v| v.is_finite());
    let fmt: fn(Option<f64>) -> String = if key.starts_with("savings") { pct } else { num };
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
            cell(r, "savings_at_parity"),
            cell(r, "savings_within_0.05"),
            cell(r, "quality_at_best_cost"),
            cell(r, "aiq"),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_by_name_and_ensembles_joined_by_plus() {
        let members = |name: &str| match head_choice(name) {
            Ok(HeadChoice::Ensemble(m)) => m.len(),
            _ => 0,
        };
        assert_eq!(members("ensemble"), 4);
        assert!(matches!(head_choice("task?"), Ok(HeadChoice::IfBetter(_))));
        assert!(matches!(head_choice("task~"), Ok(HeadChoice::Weighted(_))));
        assert!(matches!(
            head_choice("ensemble"),
            Ok(HeadChoice::Ensemble(m)) if matches!(m[3], HeadChoice::Weighted(_))
        ));
        assert!(matches!(
            head_choice("mlp+task?"),
            Ok(HeadChoice::Ensemble(m)) if matches!(m[1], HeadChoice::IfBetter(_))
        ));
        assert_eq!(members("linear+mlp+mf+knn"), 4);
        assert!(matches!(head_choice("linear"), Ok(HeadChoice::Linear)));
        for bad in ["forest", "mlp+forest", "mlp+"] {
            assert!(head_choice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bench_heads_take_layers_lexical_and_cross_fitting_suffixes() {
        let parsed =
            |name: &str| bench_head(name).map(|h| (h.lexical.is_some(), h.folds, h.layers));
        assert_eq!(parsed("ensemble").ok(), Some((false, 0, None)));
        assert_eq!(parsed("ensemble/lex").ok(), Some((true, 0, None)));
        assert_eq!(parsed("ensemble/cf5").ok(), Some((false, 5, None)));
        assert_eq!(parsed("mlp+knn/lex/cf10").ok(), Some((true, 10, None)));
        assert_eq!(
            parsed("ensemble/layers=2.4.6/cf5").ok(),
            Some((false, 5, Some(Layers::These(vec![2, 4, 6]))))
        );
        assert_eq!(
            parsed("mlp/layers=/lex").ok(),
            Some((true, 0, Some(Layers::Last)))
        );
        assert_eq!(
            parsed("ensemble/layers=thirds").ok(),
            Some((false, 0, Some(Layers::Thirds)))
        );
        let mu = |name: &str| bench_head(name).map(|h| (h.folds, h.pairwise_weight));
        assert_eq!(mu("ensemble/pw=1").ok(), Some((0, 1.0)));
        assert_eq!(mu("ensemble/cf5/pw=0.5").ok(), Some((5, 0.5)));
        assert_eq!(mu("ensemble").ok(), Some((0, 0.0)));
        let ft = |name: &str| bench_head(name).map(|h| (h.folds, h.pairwise_weight, h.finetune));
        assert_eq!(ft("ensemble/ft=1").ok(), Some((0, 0.0, 1)));
        assert_eq!(ft("ensemble/cf5/pw=1/ft=2").ok(), Some((5, 1.0, 2)));
        let enc = |name: &str| bench_head(name).map(|h| (h.encoder, h.layers, h.folds));
        assert_eq!(enc("ensemble").ok(), Some((None, None, 0)));
        assert_eq!(
            enc("ensemble/enc=BAAI/bge-small-en-v1.5@v2/layers=last/cf5").ok(),
            Some((
                Some(EncoderSource::Hub {
                    repo: "BAAI/bge-small-en-v1.5".to_owned(),
                    revision: "v2".to_owned(),
                }),
                Some(Layers::Last),
                5
            ))
        );
        assert_eq!(
            enc("mlp+knn/enc=/opt/encoders/minilm").ok(),
            Some((
                Some(EncoderSource::Dir(PathBuf::from("/opt/encoders/minilm"))),
                None,
                0
            ))
        );
        for bad in [
            "ensemble/cf1",
            "ensemble/cf0",
            "ensemble/cf",
            "ensemble/cfx",
            "ensemble/cf5/lex",
            "ensemble/layers=2.x",
            "ensemble/lex/layers=2",
            "ensemble/pw=",
            "ensemble/pw=-1",
            "ensemble/pw=x",
            "ensemble/pw=1/cf5",
            "ensemble/enc=",
            "ensemble/enc=/layers=2",
            "ensemble/layers=2/enc=BAAI/bge-small-en-v1.5",
            "ensemble/ft=0",
            "ensemble/ft=x",
            "ensemble/ft=1/pw=1",
        ] {
            assert!(bench_head(bad).is_err(), "{bad}");
        }
    }
}
