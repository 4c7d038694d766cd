//! `router-train`: from eval logs (prompt, model, score) to a router artifact.
//!
//! [`data`] reads the logs with polars and builds the prompt × model score table,
//! [`embed_cache`] embeds every distinct prompt once (cached on disk), [`fit`] trains the
//! quality head and its calibration, and [`run_fit`] ties the stages together and writes
//! `router.json` + `head.safetensors` through `router_core::artifact`.
//!
//! ```no_run
//! use router_train::{FitConfig, run_fit};
//! # fn main() -> anyhow::Result<()> {
//! let config = FitConfig::new(
//!     vec!["datasets/llmrouter/labels.parquet".into()],
//!     "datasets/llmrouter/models.csv".into(),
//!     "models/llmrouter".into(),
//! );
//! let report = run_fit(&config)?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

pub mod data;
pub mod embed_cache;
pub mod error;
pub mod finetune;
pub mod fit;
pub mod metrics;
pub mod prices;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use router_core::artifact::{
    EncoderSpec, FORMAT_VERSION, Manifest, ModelMetrics, Router, TrainingInfo, rfc3339_utc,
};
use router_core::device::parse_device;
use router_core::encoder::{Encoder, EncoderOptions, EncoderSource, Layers, Precision, Truncation};
use router_core::heads::calibration::Platt;
use router_core::lexical::{IDF_TENSOR, Lexical, LexicalSpec};
use router_core::models::{CHARS_PER_TOKEN, DEFAULT_EXPECTED_OUTPUT_TOKENS, ModelInfo};
use router_core::split::{Split, assign_fold};

pub use error::{Result, TrainError};
pub use finetune::FinetuneParams;
pub use fit::{Calibration, DEFAULT_ENSEMBLE, HeadChoice, HeadParams};

/// The encoder layers pooled into the embedding by default: a third, two thirds and all of
/// the encoder's depth ([`Layers::Thirds`]), layers 2, 4 and 6 of all-MiniLM-L6-v2. The earlier
/// layers keep more of the prompt's form (wording, format) than the last one, which sentence
/// training tuned for meaning; the heads read both.
pub const DEFAULT_LAYERS: Layers = Layers::Thirds;

use crate::data::{LoadOptions, Table};
use crate::fit::{NetParams, SplitData};
use crate::prices::Price;

/// `--propensity-cap`'s default.
pub const DEFAULT_PROPENSITY_CAP: f64 = 10.0;

/// Everything `fit` needs, validated by the CLI.
#[derive(Debug, Clone)]
pub struct FitConfig {
    pub data: Vec<String>,
    pub prices: PathBuf,
    pub out: PathBuf,
    pub head: HeadChoice,
    pub encoder: EncoderSource,
    /// How the encoder runs: truncation, the dense layers' arithmetic and the pooled layers, all
    /// recorded in the artifact, so serving embeds the same way.
    pub encoder_options: EncoderOptions,
    pub device: String,
    /// Lexical features read by the head beside the embedding (`None`, the default: the
    /// embedding alone).
    pub lexical: Option<LexicalSpec>,
    pub load: LoadOptions,
    pub test_fraction: f64,
    /// `[i, k]`: hold out fold `i` of `k` instead of `test_fraction` (k-fold evaluation).
    pub test_fold: Option<[usize; 2]>,
    pub validation_fraction: f64,
    pub split_seed: u64,
    pub cache_dir: Option<PathBuf>,
    pub encode_batch_size: usize,
    pub net: NetParams,
    pub progress: bool,
    /// Mark models that another model beats on the training prompts at no higher price for
    /// any prompt length; the policy never routes to them.
    pub prune_dominated: bool,
    /// Pooled (default), shared or per-model Platt scaling.
    pub calibration: Calibration,
    /// Weight each label by the inverse of its logged `propensity` (self-normalised per
    /// model; see [`data::Table::propensity_weighted_mask`]): for logs written with router-serve's
    /// `routing.explore`, where the router's own choices decided which cells were labelled.
    pub propensity_weights: bool,
    /// The largest weight one label gets from its propensity, before normalising (clipped
    /// inverse propensity weighting: a rarely explored label would otherwise drown the rest).
    pub propensity_cap: f64,
    /// What to do with a model the price table gives no price.
    pub missing_price: prices::MissingPrice,
    /// Fine-tune the encoder's top layers before fitting the head (`None`: the base encoder).
    pub finetune: Option<FinetuneParams>,
}

impl FitConfig {
    /// Defaults for everything but the inputs and the output.
    pub fn new(data: Vec<String>, prices: PathBuf, out: PathBuf) -> Self {
        Self {
            data,
            prices,
            out,
            head: HeadChoice::ensemble(&HeadParams::DEFAULT),
            encoder: EncoderSource::default(),
            encoder_options: EncoderOptions {
                truncation: Truncation::HeadTail,
                precision: Precision::Int8,
                layers: DEFAULT_LAYERS,
                delta: None,
            },
            device: "cpu".to_owned(),
            lexical: None,
            load: LoadOptions::default(),
            test_fraction: 0.2,
            test_fold: None,
            validation_fraction: 0.1,
            split_seed: 42,
            cache_dir: default_cache_dir(),
            encode_batch_size: 32,
            net: NetParams {
                learning_rate: 1e-3,
                weight_decay: 1e-2,
                batch_size: 64,
                max_epochs: 200,
                patience: 15,
                seed: 0,
                folds: 0,
                pairwise_weight: 0.0,
            },
            progress: false,
            prune_dominated: false,
            calibration: Calibration::default(),
            propensity_weights: false,
            propensity_cap: DEFAULT_PROPENSITY_CAP,
            missing_price: prices::MissingPrice::Drop,
            finetune: None,
        }
    }

    /// The share of prompts held out for testing: `test_fraction`, or 1/K of a `test_fold`.
    pub fn held_out_fraction(&self) -> f64 {
        self.test_fold
            .map_or(self.test_fraction, |[_, k]| 1.0 / k as f64)
    }

    /// The split of a prompt (by its whitespace-normalised text) under this configuration.
    pub fn split_of(&self, normalized: &str) -> Split {
        assign_fold(
            normalized,
            self.split_seed,
            self.test_fold,
            self.test_fraction,
            self.validation_fraction,
        )
    }
}

/// `$ROUTER_CACHE_DIR`, else `$XDG_CACHE_HOME/llm-router/embeddings`, else
/// `~/.cache/llm-router/embeddings`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ROUTER_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("llm-router").join("embeddings"))
}

/// What a fit did: the manifest it wrote plus the numbers behind the summary table.
#[derive(Debug, Clone)]
pub struct FitReport {
    pub manifest: Manifest,
    /// Models of the data left out of the router for want of a price.
    pub unpriced_models: Vec<String>,
    pub out: PathBuf,
    pub n_rows: usize,
    pub n_skipped: usize,
    pub n_duplicates: usize,
    pub embedded: embed_cache::EmbedStats,
    pub stages: Vec<(&'static str, f64)>,
    /// Validation prompts and the calibrated predictions the in-memory head made for them
    /// (so a caller can check that the artifact on disk predicts the same).
    pub validation_prompts: Vec<String>,
    pub validation_predictions: Vec<Vec<f32>>,
}

/// The rows `rows` of the table with their embeddings; `task_names` are the table's tasks,
/// sorted (see [`task_names`]).
pub(crate) fn split_data(
    table: &Table,
    rows: &[usize],
    embeddings: &HashMap<usize, Vec<f32>>,
    dim: usize,
    task_names: &[String],
) -> SplitData {
    let m = table.n_models();
    let mut data = SplitData {
        x: Vec::with_capacity(rows.len() * dim),
        y: Vec::with_capacity(rows.len() * m),
        mask: Vec::with_capacity(rows.len() * m),
        n: rows.len(),
        dim,
        models: m,
        task: rows
            .iter()
            .map(|&p| {
                let task = table.prompts[p].task.as_ref()?;
                task_names
                    .binary_search(task)
                    .ok()
                    .and_then(|i| u32::try_from(i).ok())
            })
            .collect(),
        task_names: task_names.to_vec(),
    };
    for &p in rows {
        data.x.extend_from_slice(&embeddings[&p]);
        data.y.extend_from_slice(&table.scores[p * m..(p + 1) * m]);
        data.mask.extend_from_slice(&table.mask[p * m..(p + 1) * m]);
    }
    data
}

/// The distinct values of the table's task column, sorted.
fn task_names(table: &Table) -> Vec<String> {
    table
        .prompts
        .iter()
        .filter_map(|p| p.task.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Mean output tokens per model: logged `output_tokens`, else `output_chars / 4`, else
/// back-solved from `cost_usd`, else the documented default.
fn expected_output_tokens(
    table: &Table,
    model: usize,
    price: &Price,
    encoder: &Encoder,
    token_counts: &mut HashMap<usize, usize>,
) -> Result<(f64, String)> {
    let usage = &table.usage[model];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    if !usage.output_tokens.is_empty() {
        return Ok((mean(&usage.output_tokens), "output_tokens".to_owned()));
    }
    if !usage.output_chars.is_empty() {
        return Ok((
            mean(&usage.output_chars) / CHARS_PER_TOKEN,
            "output_chars".to_owned(),
        ));
    }
    if !usage.costs.is_empty() && price.output_per_1m > 0.0 {
        let mut solved = Vec::with_capacity(usage.costs.len());
        for &(p, cost, input_tokens) in &usage.costs {
            let input = match input_tokens {
                Some(t) => t,
                None => match token_counts.get(&p) {
                    Some(&n) => n as f64,
                    None => {
                        let n = encoder.count_tokens(&table.prompts[p].text)?;
                        token_counts.insert(p, n);
                        n as f64
                    }
                },
            };
            solved.push(((cost * 1e6 - input * price.input_per_1m) / price.output_per_1m).max(0.0));
        }
        return Ok((mean(&solved), "cost_usd".to_owned()));
    }
    Ok((DEFAULT_EXPECTED_OUTPUT_TOKENS, "default".to_owned()))
}

/// Each model's price, from the price table or `config.missing_price`; models left without
/// one are dropped from `table` (returned by name, for the report), with a warning.
fn price_models(table: &mut Table, config: &FitConfig) -> Result<(Vec<Price>, Vec<String>)> {
    let prices = prices::load_prices(&config.prices)?;
    let mut model_prices = Vec::with_capacity(table.n_models());
    let mut keep = Vec::with_capacity(table.n_models());
    let mut dropped = Vec::new();
    for model in &table.models {
        match prices.price_of(model, config.missing_price, &config.prices)? {
            Some(price) => {
                model_prices.push(price);
                keep.push(true);
            }
            None => {
                eprintln!(
                    "warning: {}: model `{model}` has no price; it is left out of the router \
                     (give --default-price IN,OUT to keep it, or --strict to fail)",
                    config.prices.display()
                );
                dropped.push(model.clone());
                keep.push(false);
            }
        }
    }
    if !dropped.is_empty() {
        table.retain_models(&keep);
        if table.n_models() < 2 {
            return Err(TrainError::SingleModel(table.models.join("")));
        }
    }
    Ok((model_prices, dropped))
}

/// Runs the whole pipeline and writes the artifact to `config.out`.
pub fn run_fit(config: &FitConfig) -> Result<FitReport> {
    let mut stages: Vec<(&'static str, f64)> = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stages: &mut Vec<(&'static str, f64)>, name: &'static str| {
        stages.push((name, clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };

    // Load and check the inputs before anything slow runs.
    let files = data::expand_inputs(&config.data)?;
    let mut table = data::load(&files, &config.load)?;
    if config.propensity_weights {
        table.mask = table
            .propensity_weighted_mask(config.propensity_cap)
            .ok_or(TrainError::NoPropensity)?;
    }
    let (model_prices, unpriced_models) = price_models(&mut table, config)?;
    let mut rows: BTreeMap<Split, Vec<usize>> = BTreeMap::new();
    for (p, prompt) in table.prompts.iter().enumerate() {
        rows.entry(config.split_of(&prompt.normalized))
            .or_default()
            .push(p);
    }
    let train_rows = rows.remove(&Split::Train).unwrap_or_default();
    let val_rows = rows.remove(&Split::Validation).unwrap_or_default();
    let n_test = rows.remove(&Split::Test).map_or(0, |r| r.len());
    if train_rows.is_empty() {
        return Err(TrainError::EmptySplit { split: "training" });
    }
    if val_rows.is_empty() {
        return Err(TrainError::EmptySplit {
            split: "validation",
        });
    }
    lap(&mut stages, "load");

    let device = parse_device(&config.device)?;
    let encoder = Encoder::from_source(&config.encoder, &device, &config.encoder_options)?;
    lap(&mut stages, "load encoder");

    let wanted: Vec<usize> = train_rows.iter().chain(&val_rows).copied().collect();
    let texts: Vec<&str> = wanted
        .iter()
        .map(|&p| table.prompts[p].text.as_str())
        .collect();
    let (vectors, embedded) = embed_cache::embed_all(
        &encoder,
        &texts,
        config.cache_dir.as_deref(),
        config.encode_batch_size,
        config.progress,
    )?;
    let mut embeddings: HashMap<usize, Vec<f32>> = wanted.iter().copied().zip(vectors).collect();
    lap(&mut stages, "embed");
    let (encoder, finetuned) = match &config.finetune {
        None => (encoder, BTreeMap::new()),
        Some(params) => {
            let rows = (train_rows.as_slice(), val_rows.as_slice());
            let tuned =
                finetune::finetune_fit(config, params, &encoder, &table, rows, &embeddings)?;
            embeddings = tuned.embeddings;
            lap(&mut stages, "finetune");
            (tuned.encoder, tuned.hyperparameters)
        }
    };

    // The head reads [embedding ‖ lexical features]; the idf comes from the training and
    // validation prompts (their texts only, no labels).
    let lexical = config
        .lexical
        .map(|spec| Lexical::fit(spec, &texts))
        .transpose()?;
    if let Some(lexical) = &lexical {
        for (&p, input) in &mut embeddings {
            lexical.extend(&table.prompts[p].text, input);
        }
    }
    let dim = encoder.dim() + lexical.as_ref().map_or(0, Lexical::dim);
    let tasks = task_names(&table);
    let train = split_data(&table, &train_rows, &embeddings, dim, &tasks);
    let val = split_data(&table, &val_rows, &embeddings, dim, &tasks);
    let val_x = candle_core::Tensor::from_slice(&val.x, (val.n, dim), &candle_core::Device::Cpu)?;
    // Cross-fitting trains on train + validation and calibrates on out-of-fold logits; without
    // it, the head trains on train and calibrates on validation.
    let count_per_model = |d: &SplitData| -> Vec<usize> {
        (0..d.models)
            .map(|m| (0..d.n).filter(|&i| d.mask[i * d.models + m] > 0.0).count())
            .collect()
    };
    let (fitted, fit_data, fit_logits, prior, n_trained) = if config.net.folds >= 2 {
        let all_rows: Vec<usize> = train_rows.iter().chain(&val_rows).copied().collect();
        let all = split_data(&table, &all_rows, &embeddings, dim, &tasks);
        let (fitted, oof) = fit::fit_cross(&config.head, &all, config.net.folds, &config.net)?;
        let (prior, n_trained) = (all.prior(), count_per_model(&all));
        (fitted, all, oof, prior, n_trained)
    } else {
        let fitted = fit::fit_head(&config.head, &train, &val, &config.net)?;
        let logits = fitted.head.logits(&val_x)?.to_vec2::<f32>()?;
        let (prior, n_trained) = (train.prior(), count_per_model(&train));
        (fitted, val, logits, prior, n_trained)
    };
    lap(&mut stages, "fit");

    let calibration: Vec<Platt> = fit::calibrate(&fit_logits, &fit_data, config.calibration);
    let calibrated = fit::apply_calibration(&fit_logits, &calibration);
    let validation = model_metrics(&table, &fit_data, &calibrated);
    // What the final head predicts for the validation prompts, for callers that check the
    // artifact against memory: without cross-fitting that is what was just calibrated; with
    // it, out-of-fold numbers are not what the artifact will say.
    let val_predictions = if config.net.folds >= 2 {
        fit::apply_calibration(&fitted.head.logits(&val_x)?.to_vec2::<f32>()?, &calibration)
    } else {
        calibrated.clone()
    };
    lap(&mut stages, "calibrate");

    let mut models = Vec::with_capacity(table.n_models());
    // Prompt token counts, shared by every model whose output length is back-solved from cost.
    let mut token_counts = HashMap::new();
    for (m, name) in table.models.iter().enumerate() {
        let (expected_output_tokens, source) =
            expected_output_tokens(&table, m, &model_prices[m], &encoder, &mut token_counts)?;
        models.push(ModelInfo {
            name: name.clone(),
            input_price_per_1m: model_prices[m].input_per_1m,
            output_price_per_1m: model_prices[m].output_per_1m,
            expected_output_tokens,
            output_tokens_source: source,
            train_mean_score: f64::from(prior[m]),
            n_train: n_trained[m],
            dominated_by: None,
        });
    }
    if config.prune_dominated {
        mark_dominated(
            &mut models,
            &fit_data_for_dominance(&table, &train_rows, &val_rows),
        );
    }
    let name = config
        .out
        .file_name()
        .map_or_else(|| "router".to_owned(), |n| n.to_string_lossy().into_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut hyperparameters = fitted.hyperparameters.clone();
    hyperparameters.extend(finetuned);
    hyperparameters.insert("encode_batch_size".into(), config.encode_batch_size as f64);
    if config.propensity_weights {
        hyperparameters.insert(
            "propensity_weighted_rows".into(),
            table.n_propensity_rows as f64,
        );
        hyperparameters.insert("propensity_cap".into(), config.propensity_cap);
    }
    // 0 shared, 1 pooled, 2 per model.
    hyperparameters.insert(
        "calibration".into(),
        match config.calibration {
            Calibration::Shared => 0.0,
            Calibration::Pooled => 1.0,
            Calibration::PerModel => 2.0,
        },
    );
    // Stage times up to calibration; writing happens after the manifest is made.
    let seconds: BTreeMap<String, f64> =
        stages.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name,
        encoder: EncoderSpec::of(&encoder),
        lexical: lexical.as_ref().map(Lexical::spec),
        head: fitted.spec.clone(),
        models,
        score: table.score.clone(),
        calibration,
        training: TrainingInfo {
            files: files.iter().map(|f| f.display().to_string()).collect(),
            data_fingerprint: table.fingerprint(),
            split_seed: config.split_seed,
            test_fraction: config.held_out_fraction(),
            test_fold: config.test_fold,
            validation_fraction: config.validation_fraction,
            n_train: train.n,
            n_validation: val_rows.len(),
            n_test,
            hyperparameters,
            validation,
            seconds,
        },
        created_at: rfc3339_utc(now),
        tool: format!("router-train {}", env!("CARGO_PKG_VERSION")),
    };
    let mut tensors = fitted.tensors;
    if let Some(lexical) = &lexical {
        tensors.insert(
            IDF_TENSOR.to_owned(),
            lexical.tensor(&candle_core::Device::Cpu)?,
        );
    }
    Router::save(&config.out, &manifest, &tensors)?;
    lap(&mut stages, "write");
    Ok(FitReport {
        unpriced_models,
        manifest,
        out: config.out.clone(),
        n_rows: table.n_rows,
        n_skipped: table.n_skipped,
        n_duplicates: table.n_duplicates,
        embedded,
        stages,
        validation_prompts: val_rows
            .iter()
            .map(|&p| table.prompts[p].text.clone())
            .collect(),
        validation_predictions: val_predictions,
    })
}

/// What dominance is judged on: the training and validation prompts' scores and masks
/// (prompts × models) and their task labels.
struct DominanceData {
    scores: Vec<f32>,
    mask: Vec<f32>,
    tasks: Vec<Option<String>>,
}

fn fit_data_for_dominance(
    table: &Table,
    train_rows: &[usize],
    val_rows: &[usize],
) -> DominanceData {
    let m = table.n_models();
    let mut d = DominanceData {
        scores: Vec::new(),
        mask: Vec::new(),
        tasks: Vec::new(),
    };
    for &p in train_rows.iter().chain(val_rows) {
        d.scores
            .extend_from_slice(&table.scores[p * m..(p + 1) * m]);
        d.mask.extend_from_slice(&table.mask[p * m..(p + 1) * m]);
        d.tasks.push(table.prompts[p].task.clone());
    }
    d
}

/// Model `j` is dominated by `i` when `i` is no dearer for any prompt length (input price and
/// expected output cost both no higher) and, on the prompts both answered, scored higher
/// overall (at least 30 prompts) and no lower on any task (tasks with at least 10 shared
/// prompts), so a specialist that wins one kind of prompt is kept.
fn mark_dominated(models: &mut [ModelInfo], d: &DominanceData) {
    let m = models.len();
    let n = d.tasks.len();
    let out_cost = |x: &ModelInfo| x.expected_output_tokens * x.output_price_per_1m;
    for j in 0..m {
        let mut best: Option<(usize, f64)> = None;
        for i in (0..m).filter(|&i| i != j) {
            let cheaper = models[i].input_price_per_1m <= models[j].input_price_per_1m
                && out_cost(&models[i]) <= out_cost(&models[j]);
            if !cheaper {
                continue;
            }
            // (sum of i, sum of j, count) overall and per task.
            let mut overall = (0.0f64, 0.0f64, 0usize);
            let mut per_task: HashMap<&str, (f64, f64, usize)> = HashMap::new();
            for p in 0..n {
                if d.mask[p * m + i] > 0.0 && d.mask[p * m + j] > 0.0 {
                    let (si, sj) = (
                        f64::from(d.scores[p * m + i]),
                        f64::from(d.scores[p * m + j]),
                    );
                    overall = (overall.0 + si, overall.1 + sj, overall.2 + 1);
                    if let Some(task) = &d.tasks[p] {
                        let t = per_task.entry(task.as_str()).or_default();
                        *t = (t.0 + si, t.1 + sj, t.2 + 1);
                    }
                }
            }
            let gap = (overall.0 - overall.1) / overall.2.max(1) as f64;
            let every_task = per_task.values().all(|&(si, sj, c)| c < 10 || si >= sj);
            if overall.2 >= 30 && gap > 0.0 && every_task && best.is_none_or(|(_, g)| gap > g) {
                best = Some((i, gap));
            }
        }
        if let Some((i, _)) = best {
            models[j].dominated_by = Some(models[i].name.clone());
        }
    }
}

fn model_metrics(table: &Table, val: &SplitData, calibrated: &[Vec<f32>]) -> Vec<ModelMetrics> {
    (0..val.models)
        .map(|m| {
            let (mut p, mut y) = (Vec::new(), Vec::new());
            for (i, row) in calibrated.iter().enumerate() {
                let k = i * val.models + m;
                if val.mask[k] > 0.0 {
                    p.push(row[m]);
                    y.push(val.y[k]);
                }
            }
            ModelMetrics {
                model: table.models[m].clone(),
                n: p.len(),
                auc: metrics::auc(&p, &y),
                brier: metrics::brier(&p, &y),
                ece: metrics::ece(&p, &y, 10),
            }
        })
        .collect()
}

impl fmt::Display for FitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        let t = &m.training;
        writeln!(f, "router `{}` written to {}", m.name, self.out.display())?;
        writeln!(
            f,
            "data: {} rows ({} skipped as invalid, {} duplicate cells averaged), {} models; \
             scores {} in [{}, {}]{}",
            self.n_rows,
            self.n_skipped,
            self.n_duplicates,
            m.models.len(),
            m.score.kind,
            m.score.raw_min,
            m.score.raw_max,
            if m.score.range_detected {
                " (range detected from the data)"
            } else {
                ""
            }
        )?;
        if !self.unpriced_models.is_empty() {
            writeln!(
                f,
                "left out for want of a price: {}",
                self.unpriced_models.join(", ")
            )?;
        }
        writeln!(
            f,
            "split (seed {}): {} train / {} validation / {} test prompts",
            t.split_seed, t.n_train, t.n_validation, t.n_test
        )?;
        writeln!(
            f,
            "embeddings: {} from cache, {} encoded ({} {}, truncation {}, {}, layers {}, {} floats)",
            self.embedded.cached,
            self.embedded.encoded,
            m.encoder.id,
            m.encoder.revision,
            m.encoder.truncation,
            m.encoder.precision,
            Layers::These(m.encoder.layers.clone()),
            m.encoder.dim
        )?;
        let hp: Vec<String> = t
            .hyperparameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(f, "head: {} ({})", m.head.kind(), hp.join(", "))?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<36} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
            "model (validation)",
            "n",
            "prior",
            "AUC",
            "Brier",
            "ECE",
            "platt a",
            "$/1M out",
            "out tok"
        )?;
        for ((metrics, info), platt) in t.validation.iter().zip(&m.models).zip(&m.calibration) {
            writeln!(
                f,
                "{:<36} {:>6} {:>7.3} {:>7} {:>7.4} {:>7.4} {:>7.3} {:>9.3} {:>8.0}",
                truncate(&metrics.model, 36),
                metrics.n,
                info.train_mean_score,
                metrics
                    .auc
                    .map_or_else(|| "-".to_owned(), |a| format!("{a:.3}")),
                metrics.brier,
                metrics.ece,
                platt.a,
                info.output_price_per_1m,
                info.expected_output_tokens
            )?;
        }
        writeln!(f)?;
        let total: f64 = self.stages.iter().map(|s| s.1).sum();
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}s"))
            .collect();
        write!(f, "time: {} = {total:.2}s", stages.join(", "))
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_shot_prompts_are_embedded_with_their_question_by_default() {
        // routerbench's few-shot prompts share their first few hundred tokens: under `head`
        // truncation the router never saw their questions.
        let config = FitConfig::new(Vec::new(), PathBuf::new(), PathBuf::new());
        assert_eq!(config.encoder_options.truncation, Truncation::HeadTail);
    }

    fn model(name: &str, price: f64) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            input_price_per_1m: price,
            output_price_per_1m: price,
            expected_output_tokens: 100.0,
            output_tokens_source: "default".into(),
            train_mean_score: 0.5,
            n_train: 0,
            dominated_by: None,
        }
    }

    #[test]
    fn dominance_spares_specialists() {
        // 40 "math" and 40 "code" prompts. `cheap` (price 1) scores 0.8 on math, 0.6 on code;
        // `worse` (price 2) 0.7 and 0.5: beaten everywhere at a higher price → dominated.
        // `coder` (price 3) 0.3 and 0.9: worse overall but best on code → kept.
        let mut d = DominanceData {
            scores: Vec::new(),
            mask: Vec::new(),
            tasks: Vec::new(),
        };
        for p in 0..80 {
            let math = p < 40;
            d.scores.extend(if math {
                [0.8, 0.7, 0.3]
            } else {
                [0.6, 0.5, 0.9]
            });
            d.mask.extend([1.0; 3]);
            d.tasks
                .push(Some(if math { "math" } else { "code" }.to_owned()));
        }
        let mut models = vec![
            model("cheap", 1.0),
            model("worse", 2.0),
            model("coder", 3.0),
        ];
        mark_dominated(&mut models, &d);
        assert_eq!(models[0].dominated_by, None);
        assert_eq!(models[1].dominated_by.as_deref(), Some("cheap"));
        assert_eq!(models[2].dominated_by, None);
    }
}
