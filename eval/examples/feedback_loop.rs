//! The retrain loop, simulated on real labels: what a router learns from its own decision logs,
//! with and without `routing.explore`, and with and without `--propensity-weights`.
//!
//! 1. A first router (R0) is trained on full labels for a seed share of the training prompts.
//! 2. It decides every other training prompt as router-serve does (`route::explain` at the
//!    band, then `route::Explorer` with the share explored). Only the chosen model's score is
//!    logged, with its propensity: the feedback a deployment would collect.
//! 3. Routers are retrained on the seed + those logs (with `--rounds N`, the logged prompts are
//!    decided in N parts, each by the router refitted on the logs before it), and evaluated on
//!    the dataset's test prompts (never seen by any of them), paired with the loop without
//!    exploration; a router trained on full labels for every training prompt is the ceiling.
//!
//! ```sh
//! cargo run -p router-eval --example feedback_loop -- --data datasets/llmrouter/labels.parquet \
//!     --prices datasets/llmrouter/models.csv --out /tmp/loop
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use router_core::artifact::Router;
use router_core::policy::Policy;
use router_core::split::{Split, unit_hash};
use router_eval::{EvalConfig, run_eval};
use router_serve::routing::decision::explain;
use router_serve::routing::explore::Explorer;
use router_train::data::{LoadOptions, Table, expand_inputs, load};
use router_train::{FitConfig, run_fit};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Labelled data (every model scored on every prompt, ideally).
    #[arg(long)]
    data: String,
    #[arg(long)]
    prices: PathBuf,
    /// Where the logs, the routers and the report go.
    #[arg(long)]
    out: PathBuf,
    /// Share of the training prompts with full labels for the first router.
    #[arg(long, default_value_t = 0.1)]
    seed_share: f64,
    /// The band the deployed router decides at (router-serve's `balanced` mode).
    #[arg(long, default_value_t = 0.05)]
    band: f64,
    /// Shares explored (`routing.explore`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.3")]
    explore: Vec<f64>,
    /// `routing.explore_band`: draw from every model within this band of the best (unset: the
    /// request's band).
    #[arg(long)]
    explore_band: Option<f64>,
    /// Seed of the exploration draws (the first share's; the next ones add 1, 2, …).
    #[arg(long, default_value_t = 1000)]
    explore_seed: u64,
    /// `--propensity-cap` of the propensity-weighted refits.
    #[arg(long, default_value_t = router_train::DEFAULT_PROPENSITY_CAP)]
    propensity_cap: f64,
    /// Rounds of the loop: the logged prompts are split in this many parts, each decided by
    /// the router refitted on the logs of the parts before.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Bootstrap resamples of the paired comparison.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for row in rows {
        writeln!(file, "{row}")?;
    }
    file.flush()?;
    Ok(())
}

/// Every labelled cell of `prompts` as eval-log rows (normalised scores).
fn full_rows(table: &Table, prompts: &[usize]) -> Vec<serde_json::Value> {
    let m = table.n_models();
    prompts
        .iter()
        .flat_map(|&p| {
            (0..m).filter_map(move |j| {
                table.cell(p, j).map(|score| {
                    json!({"prompt": table.prompts[p].text, "model": table.models[j], "score": score})
                })
            })
        })
        .collect()
}

fn fit(data: &Path, prices: &Path, out: &Path, propensity_cap: Option<f64>) -> anyhow::Result<()> {
    let mut config = FitConfig::new(
        vec![data.display().to_string()],
        prices.to_owned(),
        out.to_owned(),
    );
    config.load.score_range = Some((0.0, 1.0));
    if let Some(cap) = propensity_cap {
        config.propensity_weights = true;
        config.propensity_cap = cap;
    }
    let report = run_fit(&config).with_context(|| format!("fitting {}", out.display()))?;
    eprintln!(
        "fitted {} on {} rows",
        out.file_name().unwrap_or_default().display(),
        report.n_rows
    );
    Ok(())
}

/// What the deployed router's decisions logged, and what they cost while it explored.
struct Logged {
    rows: Vec<serde_json::Value>,
    unlabelled: usize,
    explored: usize,
    quality: f64,
    cost: f64,
}

fn deploy(
    table: &Table,
    prompts: &[usize],
    router: &Router,
    quality: &[Vec<f32>],
    tokens: &[usize],
    band: f64,
    explorer: &Explorer,
) -> anyhow::Result<Logged> {
    let mut logged = Logged {
        rows: Vec::new(),
        unlabelled: 0,
        explored: 0,
        quality: 0.0,
        cost: 0.0,
    };
    let routable = router.routable();
    let mut labelled = 0usize;
    for (k, &p) in prompts.iter().enumerate() {
        let mut decision = explain(
            router,
            &quality[k],
            tokens[k],
            band,
            Policy::Value,
            &routable,
        )?;
        explorer.apply(&mut decision);
        logged.explored += usize::from(decision.reason == "explore");
        logged.cost += decision.candidates[decision.chosen_index].expected_cost_usd;
        let j = table
            .models
            .iter()
            .position(|m| *m == decision.chosen)
            .context("the router chose a model the data does not have")?;
        match table.cell(p, j) {
            Some(score) => {
                labelled += 1;
                logged.quality += f64::from(score);
                logged.rows.push(json!({
                    "prompt": table.prompts[p].text,
                    "model": decision.chosen,
                    "score": score,
                    "propensity": decision.propensity,
                }));
            }
            None => logged.unlabelled += 1,
        }
    }
    logged.quality /= labelled.max(1) as f64;
    logged.cost /= prompts.len().max(1) as f64;
    Ok(logged)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let files = expand_inputs(std::slice::from_ref(&args.data))?;
    let table = load(&files, &LoadOptions::default())?;
    // Every fit below uses router-train's defaults, so its test prompts are these: kept out of
    // the seed and the logs, and evaluated on.
    let defaults = FitConfig::new(Vec::new(), PathBuf::new(), PathBuf::new());
    let (mut seed, mut rest, mut training) = (Vec::new(), Vec::new(), Vec::new());
    for (p, prompt) in table.prompts.iter().enumerate() {
        let side = defaults.split_of(&prompt.normalized);
        if side == Split::Test {
            continue;
        }
        training.push(p);
        if unit_hash(&prompt.normalized, 7) < args.seed_share {
            seed.push(p);
        } else {
            rest.push(p);
        }
    }
    eprintln!(
        "{} training prompts: {} seed (full labels), {} decided by the first router",
        training.len(),
        seed.len(),
        rest.len()
    );
    let seed_rows = full_rows(&table, &seed);
    let path = |name: &str| args.out.join(name);
    write_jsonl(&path("seed.jsonl"), &seed_rows)?;
    write_jsonl(&path("full.jsonl"), &full_rows(&table, &training))?;
    fit(&path("full.jsonl"), &args.prices, &path("full"), None)?;
    fit(&path("seed.jsonl"), &args.prices, &path("r0"), None)?;

    let r0 = Router::load(&path("r0"))?;
    let encoder = r0.load_encoder(&candle_core::Device::Cpu)?;
    let texts: Vec<&str> = rest
        .iter()
        .map(|&p| table.prompts[p].text.as_str())
        .collect();
    let (embeddings, _) = router_train::embed_cache::embed_all(
        &encoder,
        &texts,
        defaults.cache_dir.as_deref(),
        defaults.encode_batch_size,
        false,
    )?;
    let tokens = texts
        .iter()
        .map(|t| encoder.count_tokens(t))
        .collect::<router_core::Result<Vec<_>>>()?;
    // Round k's router decides part k of the logged prompts (by hash), then is refitted on
    // everything logged so far.
    let rounds = args.rounds.max(1);
    let part_of: Vec<usize> = rest
        .iter()
        .map(|&p| {
            let u = unit_hash(&table.prompts[p].normalized, 11);
            ((u * rounds as f64) as usize).min(rounds - 1)
        })
        .collect();

    let mut routers = vec![path("full"), path("r0")];
    let no_exploration = path(&format!("r{rounds}-explore0"));
    let mut deployed = String::from(
        "| router | explored | logged rows | unlabelled | logged quality | expected cost per request |\n|---|---|---|---|---|---|\n",
    );
    for (i, &share) in args.explore.iter().enumerate() {
        let weights = if share > 0.0 {
            vec![None, Some(args.propensity_cap)]
        } else {
            vec![None]
        };
        for cap in weights {
            let name = format!("explore{share}{}", if cap.is_some() { "-ipw" } else { "" });
            // The same draws for both refits of a share: their first round logs the same.
            let explorer = Explorer::new(share, args.explore_band, args.explore_seed + i as u64);
            let mut current = path("r0");
            let mut rows = seed_rows.clone();
            let (mut explored, mut logged_rows, mut unlabelled) = (0, 0, 0);
            let (mut quality_sum, mut cost_sum) = (0.0, 0.0);
            for round in 0..rounds {
                let router = Router::load(&current)?;
                let at: Vec<usize> = (0..rest.len()).filter(|&k| part_of[k] == round).collect();
                let part_texts: Vec<&str> = at.iter().map(|&k| texts[k]).collect();
                let part_embeddings: Vec<Vec<f32>> =
                    at.iter().map(|&k| embeddings[k].clone()).collect();
                let quality = router.predict(&part_texts, &part_embeddings)?;
                let part_tokens: Vec<usize> = at.iter().map(|&k| tokens[k]).collect();
                let part: Vec<usize> = at.iter().map(|&k| rest[k]).collect();
                let logged = deploy(
                    &table,
                    &part,
                    &router,
                    &quality,
                    &part_tokens,
                    args.band,
                    &explorer,
                )?;
                explored += logged.explored;
                unlabelled += logged.unlabelled;
                logged_rows += logged.rows.len();
                quality_sum += logged.quality * logged.rows.len() as f64;
                cost_sum += logged.cost * part.len() as f64;
                rows.extend(logged.rows);
                let data = path(&format!("logs-{name}-round{}.jsonl", round + 1));
                write_jsonl(&data, &rows)?;
                current = path(&format!("r{}-{name}", round + 1));
                fit(&data, &args.prices, &current, cap)?;
            }
            let _ = writeln!(
                deployed,
                "| r{rounds}-{name} | {:.1} % | {logged_rows} | {unlabelled} | {:.4} | ${:.6} |",
                100.0 * explored as f64 / rest.len() as f64,
                quality_sum / logged_rows.max(1) as f64,
                cost_sum / rest.len() as f64
            );
            routers.push(current);
        }
    }

    // Paired with the loop without exploration, which every variant tries to improve on.
    if let Some(at) = routers.iter().position(|r| *r == no_exploration) {
        let first = routers.remove(at);
        routers.insert(0, first);
    }
    let mut config = EvalConfig::new(routers, vec![args.data.clone()], path("report"));
    config.prices = Some(args.prices.clone());
    config.bootstrap = args.bootstrap;
    let report = run_eval(&config)?;
    let mut table_md = String::from(
        "| router | savings at parity | within 5 % | AIQ | AIQ minus the loop without exploration, paired |\n|---|---|---|---|---|\n",
    );
    let pct =
        |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{:.1} %", 100.0 * v));
    for r in &report.routers {
        let paired = r
            .paired_with_first
            .get("aiq")
            .map_or_else(|| "–".to_owned(), |d| d.points());
        let _ = writeln!(
            table_md,
            "| {} | {} | {} | {} | {paired} |",
            r.router,
            pct(r.savings_at_parity),
            pct(r.savings_within.get("0.05").copied().flatten()),
            r.aiq.map_or_else(|| "–".to_owned(), |a| format!("{a:.4}")),
        );
    }
    let summary = format!(
        "Seed {} prompts with full labels, {} decided at band {} over {rounds} round(s).\n\n{deployed}\n{table_md}",
        seed.len(),
        rest.len(),
        args.band
    );
    std::fs::write(path("summary.md"), &summary)?;
    println!("{summary}");
    Ok(())
}
