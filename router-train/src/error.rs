//! The one error type of `router-train`: every input problem names the file, and where it
//! applies the row and the column.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no file matches `{0}`")]
    NoFiles(String),
    #[error("invalid glob `{pattern}`: {message}")]
    BadGlob { pattern: String, message: String },
    #[error("{path}: unknown extension (expected .parquet, .csv, .jsonl or .json)")]
    UnknownExtension { path: PathBuf },
    #[error("{path}: the file is empty")]
    EmptyFile { path: PathBuf },
    #[error("{path}: cannot read: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: missing required column `{column}` (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        found: String,
    },
    #[error("{path}: row {row}, column `{column}`: {message}")]
    InvalidValue {
        path: PathBuf,
        row: usize,
        column: String,
        message: String,
    },
    #[error("{path}: model `{model}` has no price (add it to the price table)")]
    ModelWithoutPrice { path: PathBuf, model: String },
    #[error("{path}: {message}")]
    Prices { path: PathBuf, message: String },
    #[error("the data has a single model (`{0}`): a router needs at least two")]
    SingleModel(String),
    #[error("the data has no usable rows{0}")]
    NoRows(String),
    #[error(
        "--propensity-weights: no row has a `propensity` (router-serve's feedback rows carry one when routing.explore is set)"
    )]
    NoPropensity,
    #[error("invalid --score-range `{0}`: expected LO,HI with LO < HI")]
    ScoreRange(String),
    #[error("score {value} in {path} row {row} is outside --score-range {lo},{hi}")]
    ScoreOutOfRange {
        path: PathBuf,
        row: usize,
        value: f64,
        lo: f64,
        hi: f64,
    },
    #[error(
        "the {split} split is empty: use more data or change --test-fraction / --validation-fraction"
    )]
    EmptySplit { split: &'static str },
    #[error("the task head needs the `task` column with at least two tasks; the data has {0}")]
    TooFewTasks(usize),
    #[error("embedding cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--finetune-layers: {0}")]
    Finetune(String),
    #[error(transparent)]
    Core(#[from] router_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
