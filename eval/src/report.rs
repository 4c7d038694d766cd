//! `report.json` (a stable contract, see the README), `report.md` and `report.html`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use router_core::artifact::Router;
use router_core::policy::Policy;
use serde::Serialize;

use crate::metrics::{self, Point};
use crate::sweep::{self, CurvePoint, EvalSet, Precomputed};
use crate::{EvalConfig, EvalError, Result, plot, write_file};

/// A single model as a baseline point.
#[derive(Debug, Clone, Serialize)]
pub struct SinglePoint {
    pub model: String,
    pub quality: f64,
    pub cost: f64,
    /// Share of test prompts this model was evaluated on.
    pub coverage: f64,
    pub train_quality: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityCost {
    pub quality: f64,
    pub cost: f64,
}

/// Per-model prediction quality on the test prompts and routing share at the report band.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub model: String,
    pub share: f64,
    pub auc: Option<f64>,
    pub brier: f64,
}

/// Per-task numbers at the report band.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub task: String,
    pub n: usize,
    pub router_quality: f64,
    pub router_cost: f64,
    pub best_single_quality: f64,
    pub best_single_cost: f64,
    pub oracle_quality: f64,
}

/// One router's results.
#[derive(Debug, Clone, Serialize)]
pub struct RouterReport {
    pub router: String,
    pub head: String,
    /// How the model was chosen within the band (`value` or `cheapest`).
    pub policy: Policy,
    pub curve: Vec<CurvePoint>,
    pub savings_at_parity: Option<f64>,
    pub savings_within: BTreeMap<String, Option<f64>>,
    pub quality_at_best_cost: Option<f64>,
    pub headroom_captured: Option<f64>,
    pub aiq: Option<f64>,
    /// RouteLLM's metrics, two-model data only.
    pub apgr: Option<f64>,
    pub cpt_50: Option<f64>,
    pub cpt_80: Option<f64>,
    /// 95 % bootstrap intervals: `[low, high]`, null where "never reached".
    pub intervals: BTreeMap<String, [Option<f64>; 2]>,
    pub report_band: f64,
    pub per_model: Vec<ModelRow>,
    pub per_task: Vec<TaskRow>,
    /// This router minus the first one (empty for the first), per bootstrapped headline
    /// number, over the same resamples.
    pub paired_with_first: BTreeMap<String, PairedDifference>,
    /// Every bootstrap resample's headline numbers, for paired comparisons between routers.
    #[serde(skip)]
    pub draws: sweep::Draws,
    /// The per-prompt outcomes behind the headline numbers, for pooling k-fold evaluations.
    #[serde(skip)]
    pub outcomes: Option<std::sync::Arc<Precomputed>>,
}

/// One router's headline number minus another's: on the full test set and over the same
/// bootstrap resamples. "Never reached" makes a difference infinite (`+∞` where only the other
/// router never reaches the target), written as null in JSON; `share_higher` tells which.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PairedDifference {
    #[serde(serialize_with = "finite_or_null")]
    pub difference: f64,
    #[serde(serialize_with = "finite_or_null")]
    pub low: f64,
    #[serde(serialize_with = "finite_or_null")]
    pub high: f64,
    /// Share of resamples where this router's number is higher.
    pub share_higher: f64,
}

fn finite_or_null<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

impl PairedDifference {
    /// `+1.2 [−0.3, +2.8]` in points (× 100).
    pub fn points(&self) -> String {
        format!(
            "{} [{}, {}]",
            signed_points(self.difference),
            signed_points(self.low),
            signed_points(self.high)
        )
    }
}

/// A difference in points (× 100), `+∞`/`−∞` where one side never reaches the target.
pub fn signed_points(v: f64) -> String {
    if v == f64::INFINITY {
        "+∞".to_owned()
    } else if v == f64::NEG_INFINITY {
        "−∞".to_owned()
    } else {
        format!("{:+.1}", v * 100.0)
    }
}

impl RouterReport {
    /// One router's evaluations on disjoint test folds, pooled: the headline numbers and
    /// bootstrap intervals over every fold's prompts (the curve, breakdowns and RouteLLM's
    /// metrics are left empty). `parts` are the folds, in order, of one head under one policy.
    pub fn pooled(parts: &[&Self], resamples: usize, seed: u64) -> Result<Self> {
        let outcomes = parts
            .iter()
            .map(|p| {
                p.outcomes
                    .as_deref()
                    .ok_or_else(|| EvalError::Invalid(format!("{}: no outcomes to pool", p.router)))
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = Precomputed::concat(&outcomes).map_err(EvalError::Invalid)?;
        let n = pre.n();
        let headline = pre.headline(&vec![1.0; n]);
        let (intervals, draws) = sweep::bootstrap(&pre, n, resamples, seed);
        let first = parts[0];
        Ok(Self {
            router: format!("{} folds of {}", parts.len(), first.router),
            head: first.head.clone(),
            policy: first.policy,
            curve: Vec::new(),
            savings_at_parity: headline.savings_at_parity,
            savings_within: headline.savings_within,
            quality_at_best_cost: headline.quality_at_best_cost,
            headroom_captured: headline.headroom_captured,
            aiq: headline.aiq,
            apgr: None,
            cpt_50: None,
            cpt_80: None,
            intervals,
            report_band: first.report_band,
            per_model: Vec::new(),
            per_task: Vec::new(),
            paired_with_first: BTreeMap::new(),
            draws,
            outcomes: Some(std::sync::Arc::new(pre)),
        })
    }

    /// A bootstrapped headline number on the full test set; "never reached" is `−∞`.
    pub fn headline_value(&self, key: &str) -> f64 {
        let values = sweep::bootstrapped_values(
            self.savings_at_parity,
            &self.savings_within,
            self.quality_at_best_cost,
            self.aiq,
        );
        sweep::BOOTSTRAPPED
            .iter()
            .position(|&k| k == key)
            .and_then(|at| values[at])
            .unwrap_or(f64::NEG_INFINITY)
    }

    /// This router minus `other` on every bootstrapped headline number; empty when their
    /// bootstrap draws are not paired (other test prompts, seed or number of resamples).
    pub fn paired_with(&self, other: &Self) -> BTreeMap<String, PairedDifference> {
        sweep::BOOTSTRAPPED
            .iter()
            .filter_map(|&key| {
                let paired = sweep::paired_difference(&self.draws, &other.draws, key)?;
                Some((
                    key.to_owned(),
                    PairedDifference {
                        difference: sweep::difference(
                            self.headline_value(key),
                            other.headline_value(key),
                        ),
                        low: paired.interval[0],
                        high: paired.interval[1],
                        share_higher: paired.share_higher,
                    },
                ))
            })
            .collect()
    }
}

/// `report.json`. The first router's numbers are also at the top level.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub n_prompts: usize,
    pub n_models: usize,
    pub data: Vec<String>,
    pub prompts: String,
    pub cost_rule: String,
    pub best_single: SinglePointRef,
    pub cheapest: SinglePointRef,
    pub oracle: QualityCost,
    pub single_models: Vec<SinglePoint>,
    pub random_mix_hull: Vec<Point>,
    pub bootstrap_resamples: usize,
    #[serde(flatten)]
    pub primary: RouterReport,
    pub routers: Vec<RouterReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinglePointRef {
    pub model: String,
    pub quality: f64,
    pub cost: f64,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n > 0 { s / n as f64 } else { f64::NAN }
}

fn single_points(set: &EvalSet) -> Vec<SinglePoint> {
    let m = set.m();
    (0..m)
        .map(|j| {
            let rows: Vec<usize> = (0..set.n()).filter(|&i| set.mask[i * m + j]).collect();
            SinglePoint {
                model: set.models[j].clone(),
                quality: set.model_quality(j),
                cost: mean(rows.iter().map(|&i| set.costs[i * m + j])),
                coverage: rows.len() as f64 / set.n() as f64,
                train_quality: set.train_quality[j],
            }
        })
        .collect()
}

/// Evaluates one router on the set.
pub fn evaluate_router(
    set: &EvalSet,
    router: &Router,
    path: &Path,
    predictions: &[f32],
    expected_costs: &[f64],
    config: &EvalConfig,
) -> Result<RouterReport> {
    let bands = sweep::bands();
    let band_choices = sweep::choices(
        set,
        config.policy,
        predictions,
        expected_costs,
        &router.routable(),
        &bands,
    )?;
    let pre = Precomputed::new(set, &band_choices);
    let ones = vec![1.0; set.n()];
    let headline = pre.headline(&ones);
    let curve = sweep::curve(set, predictions, &bands, &band_choices, &pre);
    let (apgr, cpt_50, cpt_80) = match sweep::pgr_points(set, &band_choices, &pre) {
        Some((points, _)) => (
            Some(metrics::apgr(&points)),
            Some(metrics::cpt(&points, 0.5)),
            Some(metrics::cpt(&points, 0.8)),
        ),
        None => (None, None, None),
    };
    let (intervals, draws) = sweep::bootstrap(&pre, set.n(), config.bootstrap, config.seed);

    // The report band's choices, for shares and the per-task table.
    let report_band = config.report_band.clamp(0.0, 1.0);
    let rb = bands
        .iter()
        .enumerate()
        .min_by(|a, b| {
            (a.1 - report_band)
                .abs()
                .total_cmp(&(b.1 - report_band).abs())
        })
        .map_or(0, |(i, _)| i);
    let chosen = &band_choices[rb];
    let m = set.m();
    let per_model = (0..m)
        .map(|j| {
            let (mut p, mut y) = (Vec::new(), Vec::new());
            for i in 0..set.n() {
                if set.mask[i * m + j] {
                    p.push(predictions[i * m + j]);
                    y.push(set.scores[i * m + j]);
                }
            }
            ModelRow {
                model: set.models[j].clone(),
                share: chosen.iter().filter(|&&c| c == j).count() as f64 / set.n() as f64,
                auc: router_train::metrics::auc(&p, &y),
                brier: router_train::metrics::brier(&p, &y),
            }
        })
        .collect();
    let oracle = sweep::oracle_choice(set);
    let mut tasks: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in set.tasks.iter().enumerate() {
        if let Some(t) = t {
            tasks.entry(t.clone()).or_default().push(i);
        }
    }
    let b = set.best_single;
    let per_task = tasks
        .into_iter()
        .map(|(task, rows)| TaskRow {
            n: rows.len(),
            router_quality: mean(
                rows.iter()
                    .map(|&i| f64::from(set.scores[i * m + chosen[i]])),
            ),
            router_cost: mean(rows.iter().map(|&i| set.costs[i * m + chosen[i]])),
            best_single_quality: mean(rows.iter().map(|&i| f64::from(set.scores[i * m + b]))),
            best_single_cost: mean(rows.iter().map(|&i| set.costs[i * m + b])),
            oracle_quality: mean(
                rows.iter()
                    .map(|&i| f64::from(set.scores[i * m + oracle[i]])),
            ),
            task,
        })
        .collect();

    Ok(RouterReport {
        router: path.display().to_string(),
        head: router.manifest.head.kind().to_owned(),
        policy: config.policy,
        curve,
        savings_at_parity: headline.savings_at_parity,
        savings_within: headline.savings_within,
        quality_at_best_cost: headline.quality_at_best_cost,
        headroom_captured: headline.headroom_captured,
        aiq: headline.aiq,
        apgr,
        cpt_50,
        cpt_80,
        intervals,
        report_band: bands[rb],
        per_model,
        per_task,
        paired_with_first: BTreeMap::new(),
        draws,
        outcomes: Some(std::sync::Arc::new(pre)),
    })
}

/// `0.42` → `42.0 %`; `None` → `never`.
pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |v| format!("{:.1} %", v * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.4}"))
}

fn interval(r: &RouterReport, key: &str, fmt: fn(Option<f64>) -> String) -> String {
    r.intervals.get(key).map_or_else(String::new, |[lo, hi]| {
        format!(" [{}, {}]", fmt(*lo), fmt(*hi))
    })
}

impl Report {
    pub fn new(
        set: &EvalSet,
        cost_rule: String,
        files: &[PathBuf],
        config: &EvalConfig,
        routers: Vec<RouterReport>,
    ) -> Self {
        let singles = single_points(set);
        let full: Vec<&SinglePoint> = singles
            .iter()
            .zip(&set.full_coverage)
            .filter(|(_, f)| **f)
            .map(|(s, _)| s)
            .collect();
        let to_ref = |s: &SinglePoint| SinglePointRef {
            model: s.model.clone(),
            quality: s.quality,
            cost: s.cost,
        };
        let best = &singles[set.best_single];
        let cheapest = full
            .iter()
            .min_by(|a, b| a.cost.total_cmp(&b.cost))
            .map_or_else(|| to_ref(best), |s| to_ref(s));
        let oracle_choice = sweep::oracle_choice(set);
        let m = set.m();
        let oracle = QualityCost {
            quality: mean(
                oracle_choice
                    .iter()
                    .enumerate()
                    .map(|(i, &j)| f64::from(set.scores[i * m + j])),
            ),
            cost: mean(
                oracle_choice
                    .iter()
                    .enumerate()
                    .map(|(i, &j)| set.costs[i * m + j]),
            ),
        };
        let hull_points: Vec<Point> = full
            .iter()
            .map(|s| Point {
                cost: s.cost,
                quality: s.quality,
            })
            .collect();
        Self {
            n_prompts: set.n(),
            n_models: set.m(),
            data: files.iter().map(|f| f.display().to_string()).collect(),
            prompts: if config.all_prompts {
                "all prompts".to_owned()
            } else {
                "the routers' test split".to_owned()
            },
            cost_rule,
            best_single: to_ref(best),
            cheapest,
            oracle,
            single_models: singles.clone(),
            random_mix_hull: metrics::upper_hull(&hull_points),
            bootstrap_resamples: config.bootstrap,
            primary: routers[0].clone(),
            routers,
        }
    }

    /// Writes report.json, report.md, report.html, cost_quality.svg and band_promise.svg.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let json =
            serde_json::to_string_pretty(self).map_err(|e| EvalError::Invalid(e.to_string()))?;
        write_file(&dir.join("report.json"), &(json + "\n"))?;
        let cost_quality = plot::cost_quality_svg(self)?;
        let promise = plot::band_promise_svg(self)?;
        write_file(&dir.join("cost_quality.svg"), &cost_quality)?;
        write_file(&dir.join("band_promise.svg"), &promise)?;
        write_file(&dir.join("report.md"), &self.markdown())?;
        write_file(
            &dir.join("report.html"),
            &self.html(&cost_quality, &promise),
        )?;
        Ok(())
    }

    /// The headline table, one row per router.
    pub fn headline_table(&self) -> String {
        let mut s = String::new();
        s.push_str("| router | head | savings at parity | within 1 % | within 5 % | within 10 % | quality at best cost | headroom captured | AIQ |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.routers {
            let w = |k: &str| pct(r.savings_within.get(k).copied().flatten());
            let _ = writeln!(
                s,
                "| {} | {} | {}{} | {} | {}{} | {} | {}{} | {} | {}{} |",
                r.router,
                r.head,
                pct(r.savings_at_parity),
                interval(r, "savings_at_parity", pct),
                w("0.01"),
                w("0.05"),
                interval(r, "savings_within_0.05", pct),
                w("0.10"),
                num(r.quality_at_best_cost),
                interval(r, "quality_at_best_cost", num),
                pct(r.headroom_captured),
                num(r.aiq),
                interval(r, "aiq", num),
            );
        }
        s
    }

    /// Every other router minus the first, paired over the same bootstrap resamples.
    pub fn paired_table(&self) -> String {
        let mut s = format!(
            "\n## Paired with the first router\n\nEach router minus {} on the same {} resamples, in \
             points (× 100): on the full test set [95 % interval], (share of resamples where it is \
             higher). An interval that excludes 0 is a difference the bootstrap can see.\n\n\
             | router | head | savings at parity | within 5 % | quality at best cost | AIQ |\n\
             |---|---|---|---|---|---|\n",
            self.primary.router, self.bootstrap_resamples
        );
        for r in &self.routers[1..] {
            let _ = write!(s, "| {} | {} |", r.router, r.head);
            for key in sweep::BOOTSTRAPPED {
                let cell = r.paired_with_first.get(key).map_or_else(
                    || "–".to_owned(),
                    |d| format!("{} ({:.0} %)", d.points(), d.share_higher * 100.0),
                );
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Router evaluation\n");
        let _ = writeln!(
            s,
            "{} prompts ({}), {} models. Data: {}.\n\nCost per request: {}.\n",
            self.n_prompts,
            self.prompts,
            self.n_models,
            self.data.join(", "),
            self.cost_rule
        );
        let _ = writeln!(
            s,
            "Best single model (chosen on training prompts): **{}**, quality {:.4}, ${:.6} per request. \
             Cheapest: {} ({:.4}, ${:.6}). Oracle: {:.4}, ${:.6}.\n",
            self.best_single.model,
            self.best_single.quality,
            self.best_single.cost,
            self.cheapest.model,
            self.cheapest.quality,
            self.cheapest.cost,
            self.oracle.quality,
            self.oracle.cost
        );
        let _ = writeln!(
            s,
            "Policy: **{}** ({}).\n",
            self.primary.policy,
            match self.primary.policy {
                Policy::Value => {
                    "within the band, the best value q − λ·c/c_max with λ = band / (1 − band)"
                }
                Policy::Cheapest => "the cheapest model within the band",
            }
        );
        let _ = writeln!(
            s,
            "## Headline\n\nIntervals are 95 % bootstrap intervals over {} resamples of the test prompts.\n",
            self.bootstrap_resamples
        );
        s.push_str(&self.headline_table());
        for r in &self.routers {
            if let (Some(apgr), Some(c50), Some(c80)) = (r.apgr, r.cpt_50, r.cpt_80) {
                let _ = writeln!(
                    s,
                    "\n{}: APGR {apgr:.4}, CPT(50 %) {}, CPT(80 %) {}",
                    r.router,
                    pct(Some(c50)),
                    pct(Some(c80))
                );
            }
        }
        if self.routers.len() > 1 {
            s.push_str(&self.paired_table());
        }
        s.push_str("\n![cost and quality](cost_quality.svg)\n\n## The band promise\n\n");
        s.push_str(
            "For each band, the quality drop the router predicted (mean predicted quality of its choices, \
             relative to band 0) and the drop measured on the test prompts.\n\n",
        );
        s.push_str(
            "| band | predicted drop | measured drop | quality | cost |\n|---|---|---|---|---|\n",
        );
        for p in self
            .primary
            .curve
            .iter()
            .filter(|p| (p.band * 200.0).round() as i64 % 10 == 0)
        {
            let _ = writeln!(
                s,
                "| {:.2} | {:.4} | {:.4} | {:.4} | {:.6} |",
                p.band, p.predicted_drop, p.measured_drop, p.quality, p.cost
            );
        }
        s.push_str("\n![band promise](band_promise.svg)\n\n## Single models\n\n");
        s.push_str(
            "| model | quality | cost | coverage | train quality |\n|---|---|---|---|---|\n",
        );
        for m in &self.single_models {
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.6} | {:.0} % | {:.4} |",
                m.model,
                m.quality,
                m.cost,
                m.coverage * 100.0,
                m.train_quality
            );
        }
        let r = &self.primary;
        let _ = writeln!(
            s,
            "\n## Per model ({}, band {:.2})\n\n| model | routing share | AUC | Brier |\n|---|---|---|---|",
            r.router, r.report_band
        );
        for m in &r.per_model {
            let _ = writeln!(
                s,
                "| {} | {:.1} % | {} | {:.4} |",
                m.model,
                m.share * 100.0,
                num(m.auc),
                m.brier
            );
        }
        if !r.per_task.is_empty() {
            let _ = writeln!(
                s,
                "\n## Per task (band {:.2})\n\n| task | n | router quality | router cost | best single quality | best single cost | oracle |\n|---|---|---|---|---|---|---|",
                r.report_band
            );
            for t in &r.per_task {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.4} | {:.6} | {:.4} | {:.6} | {:.4} |",
                    t.task,
                    t.n,
                    t.router_quality,
                    t.router_cost,
                    t.best_single_quality,
                    t.best_single_cost,
                    t.oracle_quality
                );
            }
        }
        s
    }

    pub fn html(&self, cost_quality_svg: &str, promise_svg: &str) -> String {
        let md = self.markdown();
        let mut body = String::new();
        let mut in_table = false;
        for line in md.lines() {
            if line.starts_with('|') {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                    continue;
                }
                if !in_table {
                    body.push_str("<table>\n");
                    in_table = true;
                    let _ = writeln!(
                        body,
                        "<tr>{}</tr>",
                        cells
                            .iter()
                            .map(|c| format!("<th>{}</th>", escape(c)))
                            .collect::<String>()
                    );
                    continue;
                }
                let _ = writeln!(
                    body,
                    "<tr>{}</tr>",
                    cells
                        .iter()
                        .map(|c| format!("<td>{}</td>", escape(c)))
                        .collect::<String>()
                );
                continue;
            }
            if in_table {
                body.push_str("</table>\n");
                in_table = false;
            }
            if let Some(h) = line.strip_prefix("## ") {
                let _ = writeln!(body, "<h2>{}</h2>", escape(h));
            } else if let Some(h) = line.strip_prefix("# ") {
                let _ = writeln!(body, "<h1>{}</h1>", escape(h));
            } else if line.starts_with("![cost") {
                body.push_str(cost_quality_svg);
            } else if line.starts_with("![band") {
                body.push_str(promise_svg);
            } else if !line.trim().is_empty() {
                let _ = writeln!(body, "<p>{}</p>", escape(line).replace("**", ""));
            }
        }
        if in_table {
            body.push_str("</table>\n");
        }
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Router evaluation</title>\n<style>\
             body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             td:first-child,th:first-child{{text-align:left}}svg{{max-width:100%;height:auto}}</style></head>\n<body>\n{body}</body></html>\n"
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
