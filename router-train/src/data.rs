//! Eval logs → a prompt × model score table.
//!
//! Long format, one row per (prompt, model): `prompt`, `model`, `score` required; `prompt_id`,
//! `task`, `cost_usd`, `input_tokens`, `output_tokens`, `output_chars`, `weight`,
//! `propensity` optional.
//! Parquet, CSV and JSONL (by extension), several files or globs at once, read with polars.
//! Scores are normalised to 0–1; duplicate (prompt, model) rows are averaged (weighted) and
//! counted; a missing cell stays missing (masked), never 0.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use router_core::artifact::ScoreSpec;
use router_core::models::CHARS_PER_TOKEN;
use router_core::split::normalize_prompt;

use crate::error::{Result, TrainError};

/// How to read the logs.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Skip rows with invalid values (counted in the summary) instead of failing.
    pub skip_invalid: bool,
    /// Raw score range to normalise from; detected from the data when `None`.
    pub score_range: Option<(f64, f64)>,
    /// Keep only the first N distinct prompts (in file order), for quick experiments.
    pub max_prompts: Option<usize>,
}

/// One distinct prompt.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The text as first seen (what is embedded).
    pub text: String,
    /// Whitespace-normalised text (what the split and de-duplication key on).
    pub normalized: String,
    pub task: Option<String>,
}

/// What the logs say about one model's answers, for its expected output length.
#[derive(Debug, Clone, Default)]
pub struct ModelUsage {
    pub output_tokens: Vec<f64>,
    pub output_chars: Vec<f64>,
    /// (prompt index, cost in USD, input tokens when logged).
    pub costs: Vec<(usize, f64, Option<f64>)>,
}

/// The aggregated score table, prompts × models, row-major.
#[derive(Debug, Clone)]
pub struct Table {
    pub files: Vec<PathBuf>,
    pub prompts: Vec<Prompt>,
    /// Sorted model names.
    pub models: Vec<String>,
    /// Normalised mean score; meaningful only where `mask` is 1.
    pub scores: Vec<f32>,
    /// 1 where the (prompt, model) cell was evaluated, 0 where not: the weight each cell has
    /// in training (`--propensity-weights` replaces the 1s with [`Table::propensity_weighted_mask`]).
    pub mask: Vec<f32>,
    /// Rows that were averaged into each cell.
    pub counts: Vec<u32>,
    /// Mean logged `cost_usd` of each cell; NaN where the logs have none.
    pub cell_cost_usd: Vec<f64>,
    /// Mean logged output tokens of each cell (`output_tokens`, else `output_chars / 4`);
    /// NaN where the logs have none.
    pub cell_output_tokens: Vec<f64>,
    /// Mean `1/propensity` of each cell's rows that logged a `propensity` (the probability
    /// that the router chose the model, from router-serve's feedback); NaN where none did.
    pub cell_inverse_propensity: Vec<f64>,
    /// Rows that logged a `propensity`.
    pub n_propensity_rows: usize,
    pub usage: Vec<ModelUsage>,
    pub score: ScoreSpec,
    pub n_rows: usize,
    pub n_skipped: usize,
    /// Rows that repeated an existing (prompt, model) cell.
    pub n_duplicates: usize,
}

impl Table {
    pub fn n_models(&self) -> usize {
        self.models.len()
    }

    /// Keeps the models (columns) where `keep` is true, dropping every per-cell and per-model
    /// value of the others.
    pub fn retain_models(&mut self, keep: &[bool]) {
        /// Keeps element `i` of `v` where `keep[i % keep.len()]`.
        fn retain_cyclic<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep[(i - 1) % keep.len()]
            });
        }
        retain_cyclic(&mut self.scores, keep);
        retain_cyclic(&mut self.mask, keep);
        retain_cyclic(&mut self.counts, keep);
        retain_cyclic(&mut self.cell_cost_usd, keep);
        retain_cyclic(&mut self.cell_output_tokens, keep);
        retain_cyclic(&mut self.cell_inverse_propensity, keep);
        retain_cyclic(&mut self.models, keep);
        retain_cyclic(&mut self.usage, keep);
    }

    pub fn cell(&self, prompt: usize, model: usize) -> Option<f32> {
        let i = prompt * self.models.len() + model;
        (self.mask[i] > 0.0).then_some(self.scores[i])
    }

    /// The mask with each evaluated cell weighted by inverse propensity: its mean
    /// `1/propensity` (1 for a cell whose rows logged none) capped at `cap`, divided by the mean
    /// of that over the model's evaluated cells, so each model's cells weigh as much in all as
    /// they count (self-normalised). `None` when no row logged a propensity.
    pub fn propensity_weighted_mask(&self, cap: f64) -> Option<Vec<f32>> {
        if self.n_propensity_rows == 0 {
            return None;
        }
        let m = self.n_models();
        let weight = |i: usize| {
            let w = self.cell_inverse_propensity[i];
            if w.is_nan() { 1.0 } else { w.min(cap) }
        };
        let mut mask = self.mask.clone();
        for model in 0..m {
            let cells: Vec<usize> = (model..mask.len())
                .step_by(m)
                .filter(|&i| mask[i] > 0.0)
                .collect();
            let mean = cells.iter().map(|&i| weight(i)).sum::<f64>() / cells.len().max(1) as f64;
            for i in cells {
                mask[i] = (weight(i) / mean) as f32;
            }
        }
        Some(mask)
    }

    /// sha256 over the sorted (normalised prompt, model, score) cells.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut lines: Vec<String> = Vec::new();
        for (p, prompt) in self.prompts.iter().enumerate() {
            for (m, model) in self.models.iter().enumerate() {
                if let Some(s) = self.cell(p, m) {
                    lines.push(format!("{}\t{model}\t{s:.6}", prompt.normalized));
                }
            }
        }
        lines.sort_unstable();
        let mut hasher = Sha256::new();
        for line in &lines {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
        format!("{:x}", hasher.finalize())
    }
}

/// Expands file names and globs, in order, without repeats.
pub fn expand_inputs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        if Path::new(pattern).exists() {
            files.push(PathBuf::from(pattern));
            continue;
        }
        let matches = glob::glob(pattern).map_err(|e| TrainError::BadGlob {
            pattern: pattern.clone(),
            message: e.to_string(),
        })?;
        let mut found: Vec<PathBuf> = matches.filter_map(std::result::Result::ok).collect();
        if found.is_empty() {
            return Err(TrainError::NoFiles(pattern.clone()));
        }
        found.sort();
        files.extend(found);
    }
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

/// Reads a Parquet, CSV or JSONL file into a DataFrame.
pub fn read_frame(path: &Path) -> Result<DataFrame> {
    let read_err = |e: PolarsError| TrainError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !matches!(
        ext.as_str(),
        "parquet" | "csv" | "jsonl" | "ndjson" | "json"
    ) {
        return Err(TrainError::UnknownExtension {
            path: path.to_owned(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|e| TrainError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if meta.len() == 0 {
        return Err(TrainError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let open = || {
        File::open(path).map_err(|e| TrainError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    let df = match ext.as_str() {
        "parquet" => ParquetReader::new(open()?).finish().map_err(read_err)?,
        "csv" => CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(None)
            .try_into_reader_with_file_path(Some(path.to_owned()))
            .and_then(SerReader::finish)
            .map_err(read_err)?,
        // The schema is inferred from every row, as for CSV: an optional column that first
        // appears late in a file (feedback logs appended to seed labels) is still read.
        "json" => JsonReader::new(open()?)
            .with_json_format(JsonFormat::Json)
            .infer_schema_len(None)
            .finish()
            .map_err(read_err)?,
        _ => JsonReader::new(open()?)
            .with_json_format(JsonFormat::JsonLines)
            .infer_schema_len(None)
            .finish()
            .map_err(read_err)?,
    };
    if df.height() == 0 {
        return Err(TrainError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(df)
}

fn column_names(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn string_column(df: &DataFrame, path: &Path, name: &'static str) -> Result<Vec<Option<String>>> {
    let column = df.column(name).map_err(|_| TrainError::MissingColumn {
        path: path.to_owned(),
        column: name,
        found: column_names(df),
    })?;
    let cast = column
        .cast(&DataType::String)
        .map_err(|e| TrainError::Read {
            path: path.to_owned(),
            message: format!("column `{name}`: {e}"),
        })?;
    let values = cast.str().map_err(|e| TrainError::Read {
        path: path.to_owned(),
        message: format!("column `{name}`: {e}"),
    })?;
    Ok(values.iter().map(|v| v.map(str::to_owned)).collect())
}

/// A numeric column as `f64`s; strings are parsed here so a bad cell names its row.
/// `Err((row, text))` marks a cell that is not a number.
type NumericCells = Vec<std::result::Result<Option<f64>, String>>;

fn numeric_column(df: &DataFrame, path: &Path, name: &str) -> Result<Option<NumericCells>> {
    let Ok(column) = df.column(name) else {
        return Ok(None);
    };
    let err = |e: PolarsError| TrainError::Read {
        path: path.to_owned(),
        message: format!("column `{name}`: {e}"),
    };
    if column.dtype().is_primitive_numeric() || column.dtype() == &DataType::Boolean {
        let cast = column.cast(&DataType::Float64).map_err(err)?;
        let values = cast.f64().map_err(err)?;
        return Ok(Some(values.iter().map(Ok).collect()));
    }
    if column.dtype() == &DataType::Null {
        return Ok(Some(vec![Ok(None); column.len()]));
    }
    let cast = column.cast(&DataType::String).map_err(err)?;
    let values = cast.str().map_err(err)?;
    Ok(Some(
        values
            .iter()
            .map(|v| match v.map(str::trim) {
                None | Some("") => Ok(None),
                Some(text) => text.parse::<f64>().map(Some).map_err(|_| text.to_owned()),
            })
            .collect(),
    ))
}

/// A row that passed validation, with its raw score.
struct Row {
    prompt: String,
    model: String,
    score: f64,
    weight: f64,
    task: Option<String>,
    cost_usd: Option<f64>,
    input_tokens: Option<f64>,
    output_tokens: Option<f64>,
    output_chars: Option<f64>,
    propensity: Option<f64>,
    file: usize,
    row: usize,
}

/// Reads and validates every row of one file. Row numbers are 1-based data rows (for CSV,
/// the header is line 1 and row 1 is line 2).
fn read_rows(
    path: &Path,
    file_index: usize,
    opts: &LoadOptions,
    skipped: &mut usize,
) -> Result<Vec<Row>> {
    let df = read_frame(path)?;
    let prompts = string_column(&df, path, "prompt")?;
    let models = string_column(&df, path, "model")?;
    let scores = numeric_column(&df, path, "score")?.ok_or_else(|| TrainError::MissingColumn {
        path: path.to_owned(),
        column: "score",
        found: column_names(&df),
    })?;
    let tasks = match df.column("task") {
        Ok(_) => Some(string_column(&df, path, "task")?),
        Err(_) => None,
    };
    let optional = [
        "cost_usd",
        "input_tokens",
        "output_tokens",
        "output_chars",
        "weight",
        "propensity",
    ];
    let mut extra: HashMap<&str, NumericCells> = HashMap::new();
    for name in optional {
        if let Some(values) = numeric_column(&df, path, name)? {
            extra.insert(name, values);
        }
    }

    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let row = i + 1;
        let invalid = |column: &str, message: String| TrainError::InvalidValue {
            path: path.to_owned(),
            row,
            column: column.to_owned(),
            message,
        };
        let parsed = (|| {
            let prompt = prompts[i]
                .clone()
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| invalid("prompt", "empty or missing prompt".to_owned()))?;
            let model = models[i]
                .clone()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .ok_or_else(|| invalid("model", "empty or missing model".to_owned()))?;
            let score = match &scores[i] {
                Ok(Some(s)) if s.is_finite() => *s,
                Ok(Some(s)) => return Err(invalid("score", format!("score is {s}"))),
                Ok(None) => return Err(invalid("score", "missing score".to_owned())),
                Err(text) => return Err(invalid("score", format!("`{text}` is not a number"))),
            };
            let get = |name: &'static str| -> Result<Option<f64>> {
                match extra.get(name).map(|v| &v[i]) {
                    None | Some(Ok(None)) => Ok(None),
                    Some(Ok(Some(v))) if v.is_finite() && *v >= 0.0 => Ok(Some(*v)),
                    Some(Ok(Some(v))) => Err(invalid(
                        name,
                        format!("{v} is not a finite non-negative number"),
                    )),
                    Some(Err(text)) => Err(invalid(name, format!("`{text}` is not a number"))),
                }
            };
            let propensity = match get("propensity")? {
                Some(p) if p > 0.0 && p <= 1.0 => Some(p),
                Some(p) => {
                    return Err(invalid(
                        "propensity",
                        format!("{p} is not a probability in (0, 1]"),
                    ));
                }
                None => None,
            };
            Ok(Row {
                prompt,
                model,
                score,
                propensity,
                weight: get("weight")?.unwrap_or(1.0),
                task: tasks.as_ref().and_then(|t| t[i].clone()),
                cost_usd: get("cost_usd")?,
                input_tokens: get("input_tokens")?,
                output_tokens: get("output_tokens")?,
                output_chars: get("output_chars")?,
                file: file_index,
                row,
            })
        })();
        match parsed {
            Ok(r) => rows.push(r),
            Err(e) if opts.skip_invalid => {
                tracing::debug!(error = %e, "skipping invalid row");
                *skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

/// Parses `LO,HI`.
pub fn parse_score_range(text: &str) -> Result<(f64, f64)> {
    let bad = || TrainError::ScoreRange(text.to_owned());
    let (lo, hi) = text.split_once(',').ok_or_else(bad)?;
    let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Detects what the raw scores are: 0/1, 0–1 probabilities, or a graded range.
fn detect_score(rows: &[Row]) -> ScoreSpec {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut binary = true;
    for r in rows {
        lo = lo.min(r.score);
        hi = hi.max(r.score);
        binary &= r.score == 0.0 || r.score == 1.0;
    }
    let (kind, raw_min, raw_max) = if binary {
        ("binary", 0.0, 1.0)
    } else if lo >= 0.0 && hi <= 1.0 {
        ("probability", 0.0, 1.0)
    } else if lo < hi {
        ("graded", lo, hi)
    } else {
        ("graded", lo - 1.0, hi)
    };
    ScoreSpec {
        kind: kind.to_owned(),
        raw_min,
        raw_max,
        range_detected: true,
    }
}

/// Adds `value`, when there is one, to a `(sum, n)` running mean.
fn add_to_mean(acc: &mut (f64, u32), value: Option<f64>) {
    if let Some(v) = value {
        acc.0 += v;
        acc.1 += 1;
    }
}

fn mean_or_nan(&(sum, n): &(f64, u32)) -> f64 {
    if n > 0 { sum / f64::from(n) } else { f64::NAN }
}

/// Reads every file, validates, normalises scores and aggregates to a table.
pub fn load(files: &[PathBuf], opts: &LoadOptions) -> Result<Table> {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for (i, file) in files.iter().enumerate() {
        rows.extend(read_rows(file, i, opts, &mut skipped)?);
    }
    if rows.is_empty() {
        return Err(TrainError::NoRows(if skipped > 0 {
            format!(" ({skipped} invalid rows skipped)")
        } else {
            String::new()
        }));
    }
    let score = match opts.score_range {
        Some((lo, hi)) => {
            if let Some(r) = rows.iter().find(|r| r.score < lo || r.score > hi) {
                return Err(TrainError::ScoreOutOfRange {
                    path: files[r.file].clone(),
                    row: r.row,
                    value: r.score,
                    lo,
                    hi,
                });
            }
            let binary = rows.iter().all(|r| r.score == lo || r.score == hi);
            ScoreSpec {
                kind: if binary {
                    "binary"
                } else if lo == 0.0 && hi == 1.0 {
                    "probability"
                } else {
                    "graded"
                }
                .to_owned(),
                raw_min: lo,
                raw_max: hi,
                range_detected: false,
            }
        }
        None => detect_score(&rows),
    };

    let models: Vec<String> = rows
        .iter()
        .map(|r| r.model.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if models.len() < 2 {
        return Err(TrainError::SingleModel(models.join("")));
    }
    let model_index: HashMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let m = models.len();

    let mut prompts: Vec<Prompt> = Vec::new();
    let mut prompt_index: HashMap<String, usize> = HashMap::new();
    let mut sums: Vec<f64> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    // (sum, n) of logged cost, output tokens and 1/propensity per cell.
    let mut cost_acc: Vec<(f64, u32)> = Vec::new();
    let mut tokens_acc: Vec<(f64, u32)> = Vec::new();
    let mut inverse_propensity_acc: Vec<(f64, u32)> = Vec::new();
    let mut n_propensity_rows = 0;
    let mut usage = vec![ModelUsage::default(); m];
    let mut n_duplicates = 0;
    let span = score.raw_max - score.raw_min;
    for r in &rows {
        let normalized = normalize_prompt(&r.prompt);
        let p = match prompt_index.get(&normalized) {
            Some(&p) => p,
            None if opts.max_prompts.is_some_and(|max| prompts.len() >= max) => continue,
            None => {
                let p = prompts.len();
                prompt_index.insert(normalized.clone(), p);
                prompts.push(Prompt {
                    text: r.prompt.clone(),
                    normalized,
                    task: r.task.clone(),
                });
                sums.extend(std::iter::repeat_n(0.0, m));
                weights.extend(std::iter::repeat_n(0.0, m));
                counts.extend(std::iter::repeat_n(0, m));
                cost_acc.extend(std::iter::repeat_n((0.0, 0), m));
                tokens_acc.extend(std::iter::repeat_n((0.0, 0), m));
                inverse_propensity_acc.extend(std::iter::repeat_n((0.0, 0), m));
                p
            }
        };
        let mi = model_index[r.model.as_str()];
        let cell = p * m + mi;
        if counts[cell] > 0 {
            n_duplicates += 1;
        }
        let normalized_score = ((r.score - score.raw_min) / span).clamp(0.0, 1.0);
        sums[cell] += r.weight * normalized_score;
        weights[cell] += r.weight;
        counts[cell] += 1;
        add_to_mean(&mut cost_acc[cell], r.cost_usd);
        add_to_mean(
            &mut inverse_propensity_acc[cell],
            r.propensity.map(|p| 1.0 / p),
        );
        n_propensity_rows += usize::from(r.propensity.is_some());
        add_to_mean(
            &mut tokens_acc[cell],
            r.output_tokens
                .or(r.output_chars.map(|c| c / CHARS_PER_TOKEN)),
        );
        let u = &mut usage[mi];
        u.output_tokens.extend(r.output_tokens);
        u.output_chars.extend(r.output_chars);
        if let Some(cost) = r.cost_usd {
            u.costs.push((p, cost, r.input_tokens));
        }
    }
    let mut scores = vec![0.0f32; sums.len()];
    let mut mask = vec![0.0f32; sums.len()];
    for i in 0..sums.len() {
        if counts[i] > 0 {
            // Cells whose rows all weigh 0 carry no information and stay masked.
            scores[i] = if weights[i] > 0.0 {
                (sums[i] / weights[i]) as f32
            } else {
                0.0
            };
            mask[i] = if weights[i] > 0.0 { 1.0 } else { 0.0 };
        }
    }
    Ok(Table {
        files: files.to_vec(),
        prompts,
        models,
        scores,
        mask,
        counts,
        cell_cost_usd: cost_acc.iter().map(mean_or_nan).collect(),
        cell_output_tokens: tokens_acc.iter().map(mean_or_nan).collect(),
        cell_inverse_propensity: inverse_propensity_acc.iter().map(mean_or_nan).collect(),
        n_propensity_rows,
        usage,
        score,
        n_rows: rows.len(),
        n_skipped: skipped,
        n_duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_range_parses() {
        assert_eq!(parse_score_range("1,10").ok(), Some((1.0, 10.0)));
        assert!(parse_score_range("10,1").is_err());
        assert!(parse_score_range("a,b").is_err());
        assert!(parse_score_range("5").is_err());
    }
}
