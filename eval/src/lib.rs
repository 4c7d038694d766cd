//! `router-eval`: how much a router saves and how much quality it loses, on held-out prompts,
//! against the baselines the field uses (every single model, the best one chosen on training
//! data, the random-mix hull, the oracle), with bootstrap intervals and plots.
//!
//! ```no_run
//! use router_eval::{EvalConfig, run_eval};
//! # fn main() -> anyhow::Result<()> {
//! let config = EvalConfig::new(
//!     vec!["models/llmrouter".into()],
//!     vec!["datasets/llmrouter/labels.parquet".into()],
//!     "reports/llmrouter".into(),
//! );
//! let report = run_eval(&config)?;
//! println!("savings at parity: {:?}", report.primary.savings_at_parity);
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use router_core::artifact::{EncoderSpec, Router};
use router_core::device::parse_device;
use router_core::policy::Policy;
use router_core::split::Split;
use router_train::data::{self, LoadOptions, Table};
use router_train::embed_cache;

pub use report::{Report, RouterReport};

use crate::sweep::EvalSet;

/// Errors of the evaluation (input problems name the file).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Core(#[from] router_core::Error),
    #[error(transparent)]
    Train(#[from] router_train::TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// What to evaluate and where to write the report.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub routers: Vec<PathBuf>,
    pub data: Vec<String>,
    /// Price table overriding the routers' own prices.
    pub prices: Option<PathBuf>,
    pub out: PathBuf,
    /// Evaluate on every prompt instead of the routers' test split (for data they never saw).
    pub all_prompts: bool,
    /// Band at which routing shares, per-task and per-model numbers are reported.
    pub report_band: f64,
    /// How a model is chosen within the band (the serving default: `value`).
    pub policy: Policy,
    pub bootstrap: usize,
    pub seed: u64,
    pub cache_dir: Option<PathBuf>,
    pub device: String,
    pub progress: bool,
    /// Use only the first N distinct prompts of the data.
    pub max_prompts: Option<usize>,
    /// Also evaluate the "told the task label" reference (see [`task_label_predictions`]),
    /// routed with the first router's prices and policy; its row's head is `task label`.
    pub task_reference: bool,
    /// Write the report files into `out` (off for the folds of a k-fold bench, which only
    /// pools their numbers).
    pub write: bool,
}

impl EvalConfig {
    pub fn new(routers: Vec<PathBuf>, data: Vec<String>, out: PathBuf) -> Self {
        Self {
            routers,
            data,
            prices: None,
            out,
            all_prompts: false,
            report_band: 0.05,
            policy: Policy::default(),
            bootstrap: 1000,
            seed: 0,
            cache_dir: router_train::default_cache_dir(),
            device: "cpu".to_owned(),
            progress: false,
            max_prompts: None,
            task_reference: false,
            write: true,
        }
    }
}

/// The issue's "told the task label" reference: each model's predicted quality on a prompt is
/// its mean score over the training prompts of the same task (its mean over every training
/// prompt where the prompt has no task or a task training never saw; 0.5 where the model has
/// no training score). It shows how much routing is won by recognising the kind of prompt
/// alone. `models` in the router's order; rows of the result follow `test`.
pub fn task_label_predictions(
    table: &Table,
    models: &[String],
    train: &[usize],
    test: &[usize],
) -> Vec<f32> {
    let tm = table.n_models();
    let cols: Vec<Option<usize>> = models.iter().map(|m| table_index(table, m)).collect();
    // Per task (None: every training prompt), per model: (sum, count).
    let mut sums: BTreeMap<Option<&str>, Vec<(f64, usize)>> = BTreeMap::new();
    for &p in train {
        let task = table.prompts[p].task.as_deref();
        for key in std::iter::once(None).chain(task.map(Some)) {
            let row = sums
                .entry(key)
                .or_insert_with(|| vec![(0.0, 0); models.len()]);
            for (j, c) in cols.iter().enumerate() {
                if let Some(c) = *c
                    && table.mask[p * tm + c] > 0.0
                {
                    row[j].0 += f64::from(table.scores[p * tm + c]);
                    row[j].1 += 1;
                }
            }
        }
    }
    let mean = |key: Option<&str>, j: usize| {
        sums.get(&key)
            .map(|row| row[j])
            .filter(|&(_, n)| n > 0)
            .map(|(s, n)| (s / n as f64) as f32)
    };
    test.iter()
        .flat_map(|&p| {
            let task = table.prompts[p].task.as_deref();
            (0..models.len())
                .map(move |j| {
                    task.and_then(|t| mean(Some(t), j))
                        .or_else(|| mean(None, j))
                        .unwrap_or(0.5)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Index of `name` in the table's models.
fn table_index(table: &Table, name: &str) -> Option<usize> {
    table.models.iter().position(|m| m == name)
}

/// Builds the test set in the router's model order, with realised costs.
fn eval_set(
    table: &Table,
    router: &Router,
    prompts: &[usize],
    train_prompts: &[usize],
    input_tokens: &[usize],
    prices: Option<&BTreeMap<String, router_train::prices::Price>>,
) -> Result<(EvalSet, String)> {
    let models = &router.manifest.models;
    let tm = table.n_models();
    let cols: Vec<Option<usize>> = models.iter().map(|m| table_index(table, &m.name)).collect();
    if cols.iter().all(Option::is_none) {
        return Err(EvalError::Invalid(format!(
            "none of the router's models ({}) is in the data",
            router.model_names().join(", ")
        )));
    }
    let m = models.len();
    let mut scores = Vec::with_capacity(prompts.len() * m);
    let mut mask = Vec::with_capacity(prompts.len() * m);
    let mut costs = Vec::with_capacity(prompts.len() * m);
    let (mut logged, mut estimated) = (0usize, 0usize);
    for (k, &p) in prompts.iter().enumerate() {
        for (j, info) in models.iter().enumerate() {
            let (in_price, out_price) = prices
                .and_then(|t| t.get(&info.name))
                .map_or((info.input_price_per_1m, info.output_price_per_1m), |p| {
                    (p.input_per_1m, p.output_per_1m)
                });
            match cols[j] {
                Some(c) => {
                    let cell = p * tm + c;
                    scores.push(table.scores[cell]);
                    mask.push(table.mask[cell] > 0.0);
                    let cost = table.cell_cost_usd[cell];
                    if cost.is_finite() && prices.is_none() {
                        logged += 1;
                        costs.push(cost);
                    } else {
                        estimated += 1;
                        let out = table.cell_output_tokens[cell];
                        let out = if out.is_finite() {
                            out
                        } else {
                            info.expected_output_tokens
                        };
                        costs.push((input_tokens[k] as f64 * in_price + out * out_price) / 1e6);
                    }
                }
                None => {
                    scores.push(0.0);
                    mask.push(false);
                    costs.push(f64::NAN);
                }
            }
        }
    }
    let cost_rule = match (logged, estimated) {
        (_, 0) => "logged cost_usd of each (prompt, model)".to_owned(),
        (0, _) => "estimated: input tokens (the encoder's WordPiece count) × input price + output tokens \
                   (logged output_tokens or output_chars / 4, else the model's expected output) × output price"
            .to_owned(),
        _ => format!("logged cost_usd where present ({logged} cells), else estimated from tokens × price ({estimated} cells)"),
    };
    // Best single model: highest mean score on the training prompts, among models evaluated on
    // (almost) every prompt; ties go to the cheaper one.
    let mut train_quality = vec![f64::NAN; m];
    let mut full_coverage = vec![false; m];
    for (j, col) in cols.iter().enumerate() {
        let Some(c) = *col else { continue };
        let covered_test = prompts
            .iter()
            .filter(|&&p| table.mask[p * tm + c] > 0.0)
            .count();
        let (mut s, mut n) = (0.0, 0usize);
        for &p in train_prompts {
            if table.mask[p * tm + c] > 0.0 {
                s += f64::from(table.scores[p * tm + c]);
                n += 1;
            }
        }
        train_quality[j] = if n > 0 { s / n as f64 } else { f64::NAN };
        let train_cov = n as f64 / train_prompts.len().max(1) as f64;
        full_coverage[j] = covered_test as f64 >= 0.99 * prompts.len() as f64 && train_cov >= 0.99;
    }
    let mean_cost = |j: usize| {
        (0..prompts.len())
            .map(|i| costs[i * m + j])
            .filter(|c: &f64| c.is_finite())
            .sum::<f64>()
    };
    let best_single = (0..m)
        .filter(|&j| full_coverage[j] && train_quality[j].is_finite())
        .max_by(|&a, &b| {
            train_quality[a]
                .total_cmp(&train_quality[b])
                .then(mean_cost(b).total_cmp(&mean_cost(a)))
        })
        .ok_or_else(|| {
            EvalError::Invalid(
                "no model is evaluated on every prompt: no single-model baseline".to_owned(),
            )
        })?;
    Ok((
        EvalSet {
            models: models.iter().map(|m| m.name.clone()).collect(),
            prompts: prompts
                .iter()
                .map(|&p| table.prompts[p].text.clone())
                .collect(),
            tasks: prompts
                .iter()
                .map(|&p| table.prompts[p].task.clone())
                .collect(),
            scores,
            mask,
            costs,
            best_single,
            train_quality,
            full_coverage,
        },
        cost_rule,
    ))
}

/// Loads the data and the routers, evaluates each router on the test prompts, and writes
/// `report.json`, `report.md`, `report.html` and the SVG plots into `config.out`.
pub fn run_eval(config: &EvalConfig) -> Result<Report> {
    if config.routers.is_empty() {
        return Err(EvalError::Invalid("give at least one --router".to_owned()));
    }
    let routers = config
        .routers
        .iter()
        .map(|p| Router::load(p))
        .collect::<router_core::Result<Vec<_>>>()?;
    let first = &routers[0];
    let split_params = |r: &Router| {
        let t = &r.manifest.training;
        (
            t.split_seed,
            t.test_fraction,
            t.test_fold,
            t.validation_fraction,
        )
    };
    if !config.all_prompts
        && routers
            .iter()
            .any(|r| split_params(r) != split_params(first))
    {
        return Err(EvalError::Invalid(
            "the routers were trained with different splits: compare them with --all-prompts on unseen data".to_owned(),
        ));
    }
    let models_of = |r: &Router| r.model_names().join("\n");
    if routers.iter().any(|r| models_of(r) != models_of(first)) {
        return Err(EvalError::Invalid(
            "the routers do not share the same candidate models".to_owned(),
        ));
    }
    let files = data::expand_inputs(&config.data)?;
    let table = data::load(
        &files,
        &LoadOptions {
            max_prompts: config.max_prompts,
            ..LoadOptions::default()
        },
    )?;
    let prices = config
        .prices
        .as_deref()
        .map(router_train::prices::load_prices)
        .transpose()?
        .map(|p| p.prices.into_iter().collect::<BTreeMap<_, _>>());

    let mut test = Vec::new();
    let mut train = Vec::new();
    for (p, prompt) in table.prompts.iter().enumerate() {
        match first.manifest.training.split_of(&prompt.normalized) {
            _ if config.all_prompts => test.push(p),
            Split::Test => test.push(p),
            Split::Train => train.push(p),
            Split::Validation => {}
        }
    }
    if config.all_prompts {
        train.clone_from(&test);
    }
    if test.is_empty() {
        return Err(EvalError::Invalid("the test split is empty".to_owned()));
    }

    let device = parse_device(&config.device)?;
    let texts: Vec<&str> = test
        .iter()
        .map(|&p| table.prompts[p].text.as_str())
        .collect();
    let mut router_reports = Vec::new();
    let mut set_and_rule: Option<(EvalSet, String)> = None;
    // Token counts and embeddings of the test prompts, kept while the next router names the
    // same encoder (same id, weights, truncation): heads compared in one report share them.
    let mut prepared: Option<(EncoderSpec, Vec<usize>, Vec<Vec<f32>>)> = None;
    let mut first_expected_costs = Vec::new();
    for (router, path) in routers.iter().zip(&config.routers) {
        if prepared
            .as_ref()
            .is_none_or(|(spec, _, _)| *spec != router.manifest.encoder)
        {
            let encoder = router.load_encoder(&device)?;
            let tokens = texts
                .iter()
                .map(|t| encoder.count_tokens(t))
                .collect::<router_core::Result<Vec<_>>>()?;
            let (embeddings, _) = embed_cache::embed_all(
                &encoder,
                &texts,
                config.cache_dir.as_deref(),
                32,
                config.progress,
            )?;
            prepared = Some((router.manifest.encoder.clone(), tokens, embeddings));
        }
        let Some((_, tokens, embeddings)) = prepared.as_ref() else {
            continue;
        };
        if set_and_rule.is_none() {
            set_and_rule = Some(eval_set(
                &table,
                router,
                &test,
                &train,
                tokens,
                prices.as_ref(),
            )?);
        }
        let Some((set, _)) = set_and_rule.as_ref() else {
            continue;
        };
        let predictions: Vec<f32> = router
            .predict(&texts, embeddings)?
            .into_iter()
            .flatten()
            .collect();
        let expected_costs: Vec<f64> = tokens
            .iter()
            .flat_map(|&t| router.expected_costs(t))
            .collect();
        if config.task_reference && first_expected_costs.is_empty() {
            first_expected_costs.clone_from(&expected_costs);
        }
        router_reports.push(report::evaluate_router(
            set,
            router,
            path,
            &predictions,
            &expected_costs,
            config,
        )?);
    }
    let Some((set, cost_rule)) = set_and_rule else {
        return Err(EvalError::Invalid("nothing to evaluate".to_owned()));
    };
    if config.task_reference {
        let predictions = task_label_predictions(&table, &set.models, &train, &test);
        let mut report = report::evaluate_router(
            &set,
            first,
            &config.routers[0],
            &predictions,
            &first_expected_costs,
            config,
        )?;
        "task label".clone_into(&mut report.head);
        "reference: each model's mean training score on the prompt's task"
            .clone_into(&mut report.router);
        router_reports.push(report);
    }
    if let Some((first_report, others)) = router_reports.split_first_mut() {
        for r in others {
            r.paired_with_first = r.paired_with(first_report);
        }
    }
    let report = Report::new(&set, cost_rule, &files, config, router_reports);
    if config.write {
        report.write(&config.out)?;
    }
    Ok(report)
}

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| EvalError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_label_predictions_are_training_means_per_task() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| EvalError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let csv = dir.path().join("labels.csv");
        // Prompts 0–2 train (math ×2, code), 3–5 test (math, an unseen task, no task).
        let rows = [
            ("p0", "math", 1.0, 0.0),
            ("p1", "math", 1.0, 1.0),
            ("p2", "code", 0.0, 1.0),
            ("p3", "math", 0.0, 0.0),
            ("p4", "poetry", 1.0, 1.0),
            ("p5", "", 1.0, 1.0),
        ];
        let mut text = String::from("prompt,task,model,score\n");
        for (p, task, a, b) in rows {
            text.push_str(&format!("{p},{task},a,{a}\n{p},{task},b,{b}\n"));
        }
        write_file(&csv, &text)?;
        let table = data::load(&[csv], &LoadOptions::default())?;
        let index = |name: &str| {
            table
                .prompts
                .iter()
                .position(|p| p.text == name)
                .unwrap_or(usize::MAX)
        };
        let train: Vec<usize> = ["p0", "p1", "p2"].map(index).to_vec();
        let test: Vec<usize> = ["p3", "p4", "p5"].map(index).to_vec();
        // The router's order may differ from the table's.
        let models = ["b".to_owned(), "a".to_owned()];
        let got = task_label_predictions(&table, &models, &train, &test);
        let expected = [
            0.5,
            1.0, // math: b 0, 1; a 1, 1
            2.0 / 3.0,
            2.0 / 3.0, // unseen task: every training prompt
            2.0 / 3.0,
            2.0 / 3.0, // no task: the same
        ];
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        // A model without any training score predicts 0.5.
        let got = task_label_predictions(&table, &["c".to_owned()], &train, &test);
        assert_eq!(got, vec![0.5; 3]);
        Ok(())
    }
}
