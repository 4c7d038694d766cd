//! `router-eval`: offline savings-versus-quality reports for LLM routers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use router_core::encoder::EncoderSource;
use router_core::policy::Policy;
use router_eval::bench::{BenchConfig, run_bench};
use router_eval::{EvalConfig, run_eval};

#[derive(Parser)]
#[command(
    name = "router-eval",
    version,
    about = "Savings versus quality of LLM routers on held-out prompts",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Train every head on every dataset and write the benchmark summary table.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// Router artifact directories; several compare heads in one report.
    #[arg(long, env = "ROUTER_EVAL_ROUTER", value_delimiter = ',')]
    router: Vec<PathBuf>,
    /// Labelled data (Parquet, CSV, JSONL; files or globs), same columns as router-train.
    #[arg(long, env = "ROUTER_EVAL_DATA", value_delimiter = ',')]
    data: Vec<String>,
    /// Price table overriding the routers' prices (also disables logged cost_usd).
    #[arg(long, env = "ROUTER_EVAL_PRICES")]
    prices: Option<PathBuf>,
    /// Output directory for report.json, report.md, report.html and the SVG plots.
    #[arg(long, env = "ROUTER_EVAL_OUT")]
    out: Option<PathBuf>,
    /// Evaluate on every prompt of the data (for data the routers never saw) instead of their
    /// test split.
    #[arg(long)]
    all_prompts: bool,
    /// Also evaluate the "told the task label" reference (each model's mean training score on
    /// the prompt's `task`), routed with the first router's prices.
    #[arg(long)]
    task_reference: bool,
}

#[derive(Args)]
struct CommonArgs {
    /// Band (0–1 quality points) at which routing shares and per-task numbers are reported.
    #[arg(long, default_value_t = 0.05, global = true)]
    report_band: f64,
    /// How a model is chosen within the band: value (the best value for money, the serving
    /// default) or cheapest.
    #[arg(long, env = "ROUTER_POLICY", default_value = "value", global = true)]
    policy: Policy,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = 1000, global = true)]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0, global = true)]
    seed: u64,
    /// Embedding cache directory (default: $ROUTER_CACHE_DIR or ~/.cache/llm-router/embeddings).
    #[arg(long, env = "ROUTER_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Device for the encoder: cpu, cuda or cuda:N.
    #[arg(long, env = "ROUTER_DEVICE", default_value = "cpu", global = true)]
    device: String,
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "warn", global = true)]
    log: String,
}

#[derive(Args)]
struct BenchArgs {
    /// Folder of datasets, one sub-folder each with labels.parquet and models.csv.
    #[arg(long, default_value = "datasets")]
    datasets: PathBuf,
    /// Only these datasets (comma-separated folder names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Heads to train: linear, task, mlp, mf, knn, ensemble (mlp+mf+knn+task~), or plain heads
    /// joined by + into an ensemble, where `head?` is kept only if it lowers the validation
    /// pairwise loss, and `head~` too, with a weight tuned on validation where that clearly
    /// lowers the loss further. Suffixes, in this order: `/enc=E` trains that head on another
    /// encoder (a hub id or a directory, `ensemble/enc=BAAI/bge-small-en-v1.5`; see --encoder),
    /// `/layers=2.4.6` on those encoder layers pooled (also `last` or `thirds`; `/layers=`: the
    /// last layer; see router-train's `--layers`),
    /// `/lex` with lexical features beside the embedding (`ensemble/lex`; see router-train's
    /// `--lexical-dim`), `/cfK` with K-fold cross-fitting (`ensemble/cf5`; see router-train's
    /// `--folds`), `/pw=μ` with the networks' pairwise weight μ (`ensemble/pw=1`; see
    /// router-train's `--pairwise-weight`), `/ft=N` with the encoder's top N layers
    /// fine-tuned first (`ensemble/ft=1`; see router-train's `--finetune-layers`).
    #[arg(long, value_delimiter = ',', default_value = "mlp,mf,knn,ensemble")]
    heads: Vec<String>,
    /// Output folder: routers/, one report folder per dataset, summary.md.
    #[arg(long, default_value = "eval/results")]
    out: PathBuf,
    /// Also evaluate the default head under these policies (reports in `<dataset>-<policy>/`,
    /// rows in the summary), e.g. `cheapest` to compare with routers published under it.
    #[arg(long, value_delimiter = ',', default_value = "cheapest")]
    also_policies: Vec<Policy>,
    /// The encoder's dense layers while training: int8 (router-train's default) or f32, to
    /// compare the two.
    #[arg(long, env = "ROUTER_PRECISION", default_value = "int8")]
    precision: router_core::encoder::Precision,
    /// The encoder every head is trained on (a hub id, optionally `@revision`, or a local
    /// directory), unless its name says `/enc=`. The references always read
    /// all-MiniLM-L6-v2, as the issue defines them.
    #[arg(long, env = "ROUTER_ENCODER", default_value = router_core::encoder::DEFAULT_ENCODER)]
    encoder: String,
    /// Skip re-measuring the reference routers (RouterBench kNN with k = 20, per-model
    /// logistic regression, told the task label) and the paired comparison with them.
    #[arg(long)]
    no_references: bool,
    /// k-fold evaluation: train every head K times, each time testing on one of K disjoint
    /// folds of the prompts, and pool the folds in `summary-Kfold.md` (every prompt is a test
    /// prompt once: at K = 5 five times the default split's test prompts, so intervals about
    /// 0.45× as wide). 1: the routers' default split, with per-dataset reports.
    #[arg(long, default_value_t = 1)]
    test_folds: usize,
}

fn eval_config(
    common: &CommonArgs,
    routers: Vec<PathBuf>,
    data: Vec<String>,
    out: PathBuf,
) -> anyhow::Result<EvalConfig> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&common.report_band),
        "--report-band must be in [0, 1]"
    );
    anyhow::ensure!(common.bootstrap > 0, "--bootstrap must be at least 1");
    let mut config = EvalConfig::new(routers, data, out);
    config.report_band = common.report_band;
    config.policy = common.policy;
    config.bootstrap = common.bootstrap;
    config.seed = common.seed;
    if let Some(dir) = &common.cache_dir {
        config.cache_dir = Some(dir.clone());
    }
    config.device.clone_from(&common.device);
    config.progress = !common.quiet;
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Bench(args)) => {
            let eval = eval_config(&cli.common, Vec::new(), Vec::new(), args.out.clone())?;
            let summary = run_bench(&BenchConfig {
                datasets: args.datasets,
                only: args.only,
                heads: args.heads,
                also_policies: args.also_policies,
                precision: args.precision,
                encoder: EncoderSource::parse(&args.encoder),
                references: !args.no_references,
                test_folds: args.test_folds,
                out: args.out,
                eval,
            })?;
            println!("{summary}");
        }
        None => {
            let r = cli.report;
            anyhow::ensure!(
                !r.router.is_empty(),
                "--router is required (or use the `bench` subcommand)"
            );
            anyhow::ensure!(!r.data.is_empty(), "--data is required");
            let out = r.out.ok_or_else(|| anyhow::anyhow!("--out is required"))?;
            let mut config = eval_config(&cli.common, r.router, r.data, out.clone())?;
            config.prices = r.prices;
            config.all_prompts = r.all_prompts;
            config.task_reference = r.task_reference;
            let report = run_eval(&config)?;
            println!("{}", report.headline_table());
            println!("report written to {}", out.join("report.html").display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.common.log))
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
