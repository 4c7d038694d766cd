//! The router artifact: a directory with `router.json` (the manifest) and `head.safetensors`.
//!
//! Written by `router-train`, read by `router-serve` and `router-eval` through [`Router::load`],
//! which checks every invariant (format version, dimensions, model count, calibration length,
//! tensor shapes) and fails with [`Error::Artifact`] naming the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::encoder::{
    DELTA_FILE, Encoder, EncoderOptions, EncoderSource, Layers, Pooling, Precision, Truncation,
};
use crate::error::{Error, Result};
use crate::heads::calibration::Platt;
use crate::heads::{Head, HeadSpec};
use crate::lexical::{IDF_TENSOR, Lexical, LexicalSpec};
use crate::models::ModelInfo;
use crate::split::{Split, assign_fold};

pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "router.json";
pub const HEAD_FILE: &str = "head.safetensors";

/// The encoder a router was trained with; serving must use the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    pub id: String,
    pub revision: String,
    pub weights_sha256: String,
    pub dim: usize,
    pub max_seq_length: usize,
    pub truncation: Truncation,
    pub pooling: Pooling,
    /// The hidden layers pooled into the embedding ([`EncoderOptions::layers`]); absent: the
    /// last one, as for routers written before the field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
    /// The dense layers' arithmetic the embeddings were computed with; `f32` for routers
    /// written before the field existed.
    #[serde(default)]
    pub precision: Precision,
    /// With `int8`: the version of the int8 arithmetic ([`crate::encoder::int8::SCHEME`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_scheme: Option<u32>,
    /// Fine-tuned layers over the base weights, in [`DELTA_FILE`] beside the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneSpec>,
}

/// The encoder layers a router fine-tuned ([`crate::encoder::delta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    /// The replaced transformer layers, 0-based.
    pub layers: Vec<usize>,
    /// The digest of [`DELTA_FILE`].
    pub sha256: String,
}

impl EncoderSpec {
    /// What `encoder` embeds with, as a router artifact records it.
    pub fn of(encoder: &Encoder) -> Self {
        Self {
            id: encoder.model_id().to_owned(),
            revision: encoder.revision().to_owned(),
            weights_sha256: encoder.weights_sha256().to_owned(),
            dim: encoder.dim(),
            max_seq_length: encoder.max_seq_length(),
            truncation: encoder.truncation(),
            pooling: encoder.pooling(),
            layers: encoder.layers().to_vec(),
            precision: encoder.precision(),
            int8_scheme: encoder.int8_scheme(),
            finetune: encoder.delta().map(|d| FinetuneSpec {
                layers: d.layers.clone(),
                sha256: d.sha256.clone(),
            }),
        }
    }
}

/// What the scores in the training data meant, and how they were normalised to 0–1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// `binary` (0/1), `probability` (0–1) or `graded` (any other range, normalised).
    pub kind: String,
    pub raw_min: f64,
    pub raw_max: f64,
    /// True when the range was detected from the data rather than given.
    pub range_detected: bool,
}

/// Per-model validation metrics, after calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMetrics {
    pub model: String,
    pub n: usize,
    /// ROC AUC against scores ≥ 0.5 as positives; null when one class is absent.
    pub auc: Option<f64>,
    pub brier: f64,
    /// Expected calibration error over 10 equal-width bins.
    pub ece: f64,
}

/// Where the router came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub files: Vec<String>,
    /// sha256 over the normalised training table (prompt, model, score), order-independent.
    pub data_fingerprint: String,
    pub split_seed: u64,
    pub test_fraction: f64,
    /// `[i, k]`: the test prompts are fold `i` of `k` (see [`crate::split::assign_fold`]);
    /// absent for the plain `test_fraction` split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fold: Option<[usize; 2]>,
    pub validation_fraction: f64,
    pub n_train: usize,
    pub n_validation: usize,
    pub n_test: usize,
    pub hyperparameters: BTreeMap<String, f64>,
    pub validation: Vec<ModelMetrics>,
    pub seconds: BTreeMap<String, f64>,
}

impl TrainingInfo {
    /// The side of the split a prompt (by its whitespace-normalised text) was on in training.
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

/// `router.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub encoder: EncoderSpec,
    /// Lexical features the head reads after the embedding; absent for routers that read the
    /// embedding alone (every router written before they existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<LexicalSpec>,
    pub head: HeadSpec,
    /// Candidate models, in the order of the head's outputs.
    pub models: Vec<ModelInfo>,
    pub score: ScoreSpec,
    /// Per-model Platt scaling, in model order.
    pub calibration: Vec<Platt>,
    pub training: TrainingInfo,
    pub created_at: String,
    pub tool: String,
}

impl Manifest {
    /// Checks the invariants that do not need the tensors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Artifact {
                path: path.to_owned(),
                message,
            })
        };
        if self.format_version != FORMAT_VERSION {
            return fail(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.models.len() < 2 {
            return fail(format!(
                "a router needs at least 2 models, this one has {}",
                self.models.len()
            ));
        }
        let mut seen = HashSet::new();
        for m in &self.models {
            if !seen.insert(m.name.as_str()) {
                return fail(format!("model `{}` is listed twice", m.name));
            }
            let prices = [
                m.input_price_per_1m,
                m.output_price_per_1m,
                m.expected_output_tokens,
            ];
            if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
                return fail(format!(
                    "model `{}` has a negative or non-finite price",
                    m.name
                ));
            }
        }
        if self.calibration.len() != self.models.len() {
            return fail(format!(
                "{} calibration entries for {} models",
                self.calibration.len(),
                self.models.len()
            ));
        }
        if self.encoder.dim == 0 {
            return fail("encoder dimension is 0".to_owned());
        }
        Ok(())
    }

    /// The length of the head's input: the embedding, then the lexical features.
    pub fn input_dim(&self) -> usize {
        self.encoder.dim + self.lexical.map_or(0, |l| l.dim)
    }

    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// A loaded router: manifest, head and calibration, ready to predict.
#[derive(Debug, Clone)]
pub struct Router {
    pub manifest: Manifest,
    pub dir: PathBuf,
    head: Head,
    lexical: Option<Lexical>,
    device: Device,
}

impl Router {
    /// Loads on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    pub fn load_on(dir: &Path, device: &Device) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text =
            std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Artifact {
            path: manifest_path.clone(),
            message: format!("invalid manifest: {e}"),
        })?;
        manifest.validate(&manifest_path)?;
        let head_path = dir.join(HEAD_FILE);
        let tensors =
            candle_core::safetensors::load(&head_path, device).map_err(|e| Error::Artifact {
                path: head_path.clone(),
                message: format!("cannot read tensors: {e}"),
            })?;
        let mismatch = |e: Error| Error::Artifact {
            path: head_path.clone(),
            message: format!("does not match router.json: {e}"),
        };
        let lexical = match manifest.lexical {
            None => None,
            Some(spec) => {
                let idf = tensors.get(IDF_TENSOR).ok_or_else(|| {
                    mismatch(Error::InvalidInput(format!(
                        "tensor `{IDF_TENSOR}` is missing"
                    )))
                })?;
                Some(Lexical::from_tensor(spec, idf).map_err(mismatch)?)
            }
        };
        let head = Head::from_tensors(
            &manifest.head,
            tensors,
            manifest.input_dim(),
            manifest.models.len(),
            device,
        )
        .map_err(mismatch)?;
        Ok(Self {
            manifest,
            dir: dir.to_owned(),
            head,
            lexical,
            device: device.clone(),
        })
    }

    /// Writes `router.json` and `head.safetensors` into `dir` (created if needed), then loads it
    /// back, so a written artifact is always a loadable one.
    pub fn save(
        dir: &Path,
        manifest: &Manifest,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        manifest.validate(&dir.join(MANIFEST_FILE))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let expected = manifest
            .encoder
            .finetune
            .as_ref()
            .map(|f| f.sha256.as_str());
        crate::encoder::delta::check_stored(&dir.join(DELTA_FILE), expected)?;
        let head_path = dir.join(HEAD_FILE);
        candle_core::safetensors::save(tensors, &head_path).map_err(|e| Error::Artifact {
            path: head_path.clone(),
            message: format!("cannot write tensors: {e}"),
        })?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(manifest).map_err(|source| Error::Json {
            path: manifest_path.clone(),
            what: "the manifest",
            source,
        })?;
        std::fs::write(&manifest_path, json + "\n").map_err(|e| Error::io(&manifest_path, e))?;
        Self::load(dir)
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn n_models(&self) -> usize {
        self.manifest.models.len()
    }

    pub fn model_names(&self) -> Vec<&str> {
        self.manifest
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect()
    }

    /// Resolves and loads the encoder named in the manifest, and checks that its weights are
    /// the ones the router was trained with.
    pub fn load_encoder(&self, device: &Device) -> Result<Encoder> {
        let spec = &self.manifest.encoder;
        // "local" marks an encoder trained from a directory: its id is that directory.
        let source = match EncoderSource::parse(&spec.id) {
            EncoderSource::Hub { repo, .. } if spec.revision != "local" => EncoderSource::Hub {
                repo,
                revision: spec.revision.clone(),
            },
            parsed => parsed,
        };
        self.load_encoder_from(&source, device)
    }

    /// Loads the encoder from `source`, checking it against the manifest.
    pub fn load_encoder_from(&self, source: &EncoderSource, device: &Device) -> Result<Encoder> {
        let spec = &self.manifest.encoder;
        let options = EncoderOptions {
            truncation: spec.truncation,
            precision: spec.precision,
            layers: Layers::These(spec.layers.clone()),
            delta: spec.finetune.as_ref().map(|_| self.dir.join(DELTA_FILE)),
        };
        let encoder = Encoder::from_source(source, device, &options)?;
        let fail = |message: String| Error::Artifact {
            path: self.dir.join(MANIFEST_FILE),
            message,
        };
        if let (Some(want), Some(got)) = (&spec.finetune, encoder.delta())
            && (want.sha256 != got.sha256 || want.layers != got.layers)
        {
            return Err(fail(format!(
                "the router's fine-tuned layers {:?} have sha256 {}, but {} holds layers {:?} \
                 with sha256 {}",
                want.layers,
                want.sha256,
                got.path.display(),
                got.layers,
                got.sha256
            )));
        }
        if encoder.weights_sha256() != spec.weights_sha256 {
            return Err(fail(format!(
                "the router was trained with encoder weights sha256 {}, but {} has {}",
                spec.weights_sha256,
                encoder.model_id(),
                encoder.weights_sha256()
            )));
        }
        if encoder.dim() != spec.dim || encoder.max_seq_length() != spec.max_seq_length {
            return Err(fail(format!(
                "encoder {} has dim {} / max_seq_length {}, the router expects {} / {}",
                encoder.model_id(),
                encoder.dim(),
                encoder.max_seq_length(),
                spec.dim,
                spec.max_seq_length
            )));
        }
        if let Some(warning) = precision_mismatch(spec, &encoder) {
            tracing::warn!(router = %self.manifest.name, "{warning}");
        }
        Ok(encoder)
    }

    /// Raw logits `(batch, n_models)` for head inputs `(batch, input_dim)` (see
    /// [`Router::inputs`]).
    pub fn logits(&self, inputs: &Tensor) -> Result<Tensor> {
        self.head.logits(&inputs.to_device(&self.device)?)
    }

    /// The head's inputs for `texts` and their `embeddings`: each embedding, followed by the
    /// text's lexical features when the router reads them.
    pub fn inputs(&self, texts: &[&str], embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let dim = self.manifest.encoder.dim;
        if texts.len() != embeddings.len() {
            return Err(Error::InvalidInput(format!(
                "{} texts for {} embeddings",
                texts.len(),
                embeddings.len()
            )));
        }
        if let Some(bad) = embeddings.iter().find(|e| e.len() != dim) {
            return Err(Error::InvalidInput(format!(
                "embedding of dimension {}, the router expects {dim}",
                bad.len()
            )));
        }
        Ok(texts
            .iter()
            .zip(embeddings)
            .map(|(text, embedding)| {
                let mut input = Vec::with_capacity(self.manifest.input_dim());
                input.extend_from_slice(embedding);
                if let Some(lexical) = &self.lexical {
                    lexical.extend(text, &mut input);
                }
                input
            })
            .collect())
    }

    /// The lexical features of `text` that follow its embedding in the head's input (empty when
    /// the router reads the embedding alone).
    pub fn lexical_features(&self, text: &str) -> Vec<f32> {
        self.lexical
            .as_ref()
            .map_or_else(Vec::new, |lexical| lexical.features(text))
    }

    /// Calibrated predicted quality (0–1) of every model, in model order, one row per prompt:
    /// `texts[i]` embedded as `embeddings[i]`.
    pub fn predict(&self, texts: &[&str], embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        self.predict_inputs(&self.inputs(texts, embeddings)?)
    }

    /// Like [`Router::predict`] for head inputs made by [`Router::inputs`] (or an embedding
    /// followed by [`Router::lexical_features`]).
    pub fn predict_inputs(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let dim = self.manifest.input_dim();
        if let Some(bad) = inputs.iter().find(|e| e.len() != dim) {
            return Err(Error::InvalidInput(format!(
                "head input of dimension {}, the router expects {dim}",
                bad.len()
            )));
        }
        let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (inputs.len(), dim), &self.device)?;
        self.predict_tensor(&x)
    }

    /// Like [`Router::predict`] for a tensor of head inputs `(batch, input_dim)`.
    pub fn predict_tensor(&self, inputs: &Tensor) -> Result<Vec<Vec<f32>>> {
        let logits = self.logits(inputs)?.to_vec2::<f32>()?;
        Ok(logits
            .into_iter()
            .map(|row| {
                row.iter()
                    .zip(&self.manifest.calibration)
                    .map(|(&z, platt)| platt.apply(z))
                    .collect()
            })
            .collect())
    }

    /// Which models the policy may route to (not dominated), in model order.
    pub fn routable(&self) -> Vec<bool> {
        self.manifest
            .models
            .iter()
            .map(|m| m.dominated_by.is_none())
            .collect()
    }

    /// Expected cost (USD) of each model for a prompt of `input_tokens` tokens.
    pub fn expected_costs(&self, input_tokens: usize) -> Vec<f64> {
        self.manifest
            .models
            .iter()
            .map(|m| m.expected_cost(input_tokens))
            .collect()
    }
}

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Why the encoder will not embed exactly as the router's training did, if it will not: a GPU
/// runs f32 for an int8 router, or another version of the int8 arithmetic. Predictions are then
/// off by the rounding (cosine ≈ 0.998 between embeddings), not wrong; retraining fixes it.
pub fn precision_mismatch(spec: &EncoderSpec, encoder: &Encoder) -> Option<String> {
    if encoder.precision() != spec.precision {
        return Some(format!(
            "the router was trained on {} embeddings, this encoder computes {}",
            spec.precision,
            encoder.precision()
        ));
    }
    match (spec.int8_scheme, encoder.int8_scheme()) {
        (Some(trained), Some(running)) if trained != running => Some(format!(
            "the router was trained on int8 scheme {trained} embeddings, this build computes scheme {running}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::encoder::{Pooling, Truncation};
    use crate::lexical::{IDF_TENSOR, Lexical, LexicalSpec};

    fn model(name: &str) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            input_price_per_1m: 1.0,
            output_price_per_1m: 2.0,
            expected_output_tokens: 100.0,
            output_tokens_source: "default".into(),
            train_mean_score: 0.5,
            n_train: 10,
            dominated_by: None,
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            name: "tiny".into(),
            encoder: EncoderSpec {
                id: "test/encoder".into(),
                revision: "main".into(),
                weights_sha256: "0".repeat(64),
                dim: 4,
                max_seq_length: 16,
                truncation: Truncation::Head,
                pooling: Pooling::Mean,
                layers: Vec::new(),
                precision: Precision::F32,
                int8_scheme: None,
                finetune: None,
            },
            lexical: None,
            head: HeadSpec::Mf { dim: 2 },
            models: vec![model("a"), model("b")],
            score: ScoreSpec {
                kind: "binary".into(),
                raw_min: 0.0,
                raw_max: 1.0,
                range_detected: true,
            },
            calibration: vec![Platt::IDENTITY; 2],
            training: TrainingInfo {
                files: vec![],
                data_fingerprint: String::new(),
                split_seed: 0,
                test_fraction: 0.2,
                test_fold: None,
                validation_fraction: 0.1,
                n_train: 1,
                n_validation: 1,
                n_test: 1,
                hyperparameters: BTreeMap::new(),
                validation: vec![],
                seconds: BTreeMap::new(),
            },
            created_at: rfc3339_utc(0),
            tool: "test".into(),
        }
    }

    /// Tensors of a 4-dimensional, 2-model MF head with known values.
    fn tensors() -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
        HashMap::from([
            (
                "mf.proj.weight".to_owned(),
                t(vec![1., 0., 0., 0., 0., 1., 0., 0.], &[2, 4]),
            ),
            ("mf.models".to_owned(), t(vec![1., 0., 0., 1.], &[2, 2])),
            ("mf.bias".to_owned(), t(vec![0.5, -0.5], &[2])),
        ])
    }

    #[test]
    fn saved_artifacts_load_and_predict() {
        let dir = tempfile::tempdir().unwrap();
        let router = Router::save(dir.path(), &manifest(), &tensors()).unwrap();
        // x = e1: logits = [1 + 0.5, 0 − 0.5] → σ(1.5), σ(−0.5).
        let p = router.predict(&["x"], &[vec![1.0, 0.0, 0.0, 0.0]]).unwrap();
        assert!((p[0][0] - 0.817_574_5).abs() < 1e-6 && (p[0][1] - 0.377_540_7).abs() < 1e-6);
        assert!(
            router.predict(&["x"], &[vec![1.0, 0.0]]).is_err(),
            "wrong dimension"
        );
        assert!(
            router.predict(&[], &[vec![1.0, 0.0, 0.0, 0.0]]).is_err(),
            "no text"
        );
    }

    #[test]
    fn a_router_with_lexical_features_reads_the_text() {
        // A 2-model linear head over [embedding (4) ‖ lexical (8)] whose weights read only the
        // lexical part: model a's logit is the sum of the features, b's is 0.
        let spec = LexicalSpec {
            dim: 8,
            ..LexicalSpec::default()
        };
        let lexical = Lexical::fit(spec, &["Why?", "why"]).unwrap();
        let mut m = manifest();
        m.lexical = Some(spec);
        m.head = HeadSpec::Linear {};
        let dev = Device::Cpu;
        let mut w = vec![0.0f32; 2 * 12];
        w[4..12].fill(1.0);
        let tensors = HashMap::from([
            (
                "linear.weight".to_owned(),
                Tensor::from_vec(w, (2, 12), &dev).unwrap(),
            ),
            (
                "linear.bias".to_owned(),
                Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap(),
            ),
            (IDF_TENSOR.to_owned(), lexical.tensor(&dev).unwrap()),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let router = Router::save(dir.path(), &m, &tensors).unwrap();
        assert_eq!(router.manifest.input_dim(), 12);
        let e = vec![0.0f32; 4];
        let p = router
            .predict(&["Why?", "why", ""], &[e.clone(), e.clone(), e])
            .unwrap();
        let expected = |text: &str| {
            let z: f32 = lexical.features(text).iter().sum();
            1.0 / (1.0 + (-z).exp())
        };
        for (row, text) in p.iter().zip(["Why?", "why", ""]) {
            assert!((row[0] - expected(text)).abs() < 1e-6, "{text}: {row:?}");
            assert!((row[1] - 0.5).abs() < 1e-6);
        }
        assert!(
            (p[0][0] - p[1][0]).abs() > 1e-3,
            "case and punctuation count"
        );
        assert!(
            (p[2][0] - 0.5).abs() < 1e-6,
            "an empty text has no features"
        );

        // The idf tensor is part of the artifact.
        let mut without = tensors.clone();
        without.remove(IDF_TENSOR);
        let e = load_error(|m| *m = router.manifest.clone(), &without);
        assert!(e.contains("lexical.idf") && e.contains("missing"), "{e}");
    }

    #[test]
    fn routers_written_before_int8_existed_load_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        Router::save(dir.path(), &manifest(), &tensors()).unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let encoder = json["encoder"].as_object_mut().unwrap();
        assert_eq!(encoder.remove("precision"), Some("f32".into()));
        std::fs::write(&path, json.to_string()).unwrap();
        let router = Router::load(dir.path()).unwrap();
        assert_eq!(router.manifest.encoder.precision, Precision::F32);

        json["encoder"]["precision"] = "int8".into();
        std::fs::write(&path, json.to_string()).unwrap();
        let router = Router::load(dir.path()).unwrap();
        assert_eq!(router.manifest.encoder.precision, Precision::Int8);

        json["encoder"]["precision"] = "fp8".into();
        std::fs::write(&path, json.to_string()).unwrap();
        let e = Router::load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("router.json") && e.contains("fp8"), "{e}");
    }

    fn load_error(edit: impl Fn(&mut Manifest), tensors: &HashMap<String, Tensor>) -> String {
        let dir = tempfile::tempdir().unwrap();
        Router::save(dir.path(), &manifest(), &self::tensors()).unwrap();
        let mut m = manifest();
        edit(&mut m);
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_string(&m).unwrap(),
        )
        .unwrap();
        candle_core::safetensors::save(tensors, dir.path().join(HEAD_FILE)).unwrap();
        match Router::load(dir.path()) {
            Ok(_) => "loaded".to_owned(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_broken_invariant_is_a_typed_error() {
        let good = tensors();
        let e = load_error(|m| m.format_version = 99, &good);
        assert!(e.contains("format version 99"), "{e}");
        let e = load_error(|m| m.calibration.pop().map(|_| ()).unwrap_or(()), &good);
        assert!(e.contains("1 calibration entries for 2 models"), "{e}");
        let e = load_error(|m| m.models.truncate(1), &good);
        assert!(e.contains("at least 2 models"), "{e}");
        let e = load_error(|m| m.models[1].name = "a".into(), &good);
        assert!(e.contains("listed twice"), "{e}");
        // The manifest says 8 dimensions; the tensors have 4.
        let e = load_error(|m| m.encoder.dim = 8, &good);
        assert!(
            e.contains("head.safetensors") && e.contains("does not match"),
            "{e}"
        );
        let e = load_error(|_| {}, &HashMap::new());
        assert!(e.contains("head.safetensors"), "{e}");
    }

    #[test]
    fn garbage_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        Router::save(dir.path(), &manifest(), &tensors()).unwrap();
        std::fs::write(dir.path().join(HEAD_FILE), b"junk").unwrap();
        let e = Router::load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("head.safetensors"), "{e}");
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{").unwrap();
        let e = Router::load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("router.json") && e.contains("invalid manifest"),
            "{e}"
        );
        let e = Router::load(&dir.path().join("nowhere"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nowhere"), "{e}");
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // 2026-11-25T08:36:42Z
        assert_eq!(rfc3339_utc(1_795_595_802), "2026-11-25T08:36:42Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
