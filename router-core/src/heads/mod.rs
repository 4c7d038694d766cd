//! Quality heads: from a prompt embedding to one logit per candidate model.
//!
//! - [`Linear`][Head::Linear]: per-model logistic regression on the embedding (`w_m·x + b_m`),
//!   the simplest learned router and the reference the issue's table calls "per-model logistic
//!   regression".
//! - [`Mlp`]: a shared trunk (one hidden layer, GELU, dropout) with one output per model.
//! - [`Mf`]: RouteLLM-style matrix factorisation: a learned vector per model, scored against a
//!   projection of the prompt embedding, plus a per-model bias.
//! - [`Knn`]: RouterBench's non-parametric baseline: the mean score of the `k` nearest training
//!   prompts (cosine, on int8 keys: [`index`]), shrunk toward the model's prior by `alpha`
//!   pseudo-observations.
//! - [`TaskMixture`]: "told the task label" without being told: a softmax classifier of the
//!   prompt's task (a column of the training logs) and each task's mean score per model; the
//!   predicted quality is the mean score under the predicted task distribution.
//!
//! Every head outputs logits; [`calibration::Platt`] turns them into calibrated qualities.

pub mod calibration;
pub mod index;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use index::KeyIndex;

/// Which head, and its architecture parameters (what is needed to rebuild it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadSpec {
    /// Per-model logistic regression (tensors under `linear.`).
    Linear {},
    Mlp {
        hidden: usize,
        dropout: f32,
    },
    Mf {
        dim: usize,
    },
    Knn {
        k: usize,
        alpha: f32,
    },
    /// A task classifier and per-task mean scores (tensors under `task.`); `tasks` names the
    /// classifier's outputs, in order.
    Task {
        tasks: Vec<String>,
    },
    /// The mean of its members' logits (members must be of different kinds: their tensors
    /// share one file under the `linear.`, `mlp.`, `mf.`, `knn.` and `task.` prefixes),
    /// weighted by `weights` when present (one positive weight per member, summing to 1).
    Ensemble {
        members: Vec<HeadSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<Vec<f32>>,
    },
    /// `folds` copies of `member`, each trained without one cross-validation fold, their
    /// logits averaged; fold `k`'s tensors carry the prefix `fold{k}.`.
    Bagged {
        folds: usize,
        member: Box<HeadSpec>,
    },
}

impl HeadSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Linear {} => "linear",
            Self::Mlp { .. } => "mlp",
            Self::Mf { .. } => "mf",
            Self::Knn { .. } => "knn",
            Self::Task { .. } => "task",
            Self::Ensemble { .. } => "ensemble",
            Self::Bagged { member, .. } => member.kind(),
        }
    }
}

/// MLP head: `Linear(dim → hidden) → GELU → dropout → Linear(hidden → n_models)`.
#[derive(Debug, Clone)]
pub struct Mlp {
    hidden: Linear,
    out: Linear,
    dropout: f32,
}

impl Mlp {
    pub fn new(
        vb: VarBuilder,
        input_dim: usize,
        hidden: usize,
        n_models: usize,
        dropout: f32,
    ) -> Result<Self> {
        Ok(Self {
            hidden: candle_nn::linear(input_dim, hidden, vb.pp("hidden"))?,
            out: candle_nn::linear(hidden, n_models, vb.pp("out"))?,
            dropout,
        })
    }

    pub fn hidden_dim(&self) -> usize {
        self.hidden.weight().dims()[0]
    }

    pub fn dropout(&self) -> f32 {
        self.dropout
    }

    /// Logits `(batch, n_models)`. `dropout_mask`, during training only, multiplies the hidden
    /// layer (`(batch, hidden)`, already scaled by `1 / (1 − p)`): the caller draws it from a
    /// seeded generator so training is reproducible.
    pub fn forward_t(&self, x: &Tensor, dropout_mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.hidden.forward(x)?.gelu_erf()?;
        let h = match dropout_mask {
            Some(mask) => h.mul(mask)?,
            None => h,
        };
        Ok(self.out.forward(&h)?)
    }
}

/// Matrix-factorisation head: `logit[m] = ⟨P·x, v_m⟩ + b_m`.
#[derive(Debug, Clone)]
pub struct Mf {
    proj: Linear,
    models: Tensor,
    bias: Tensor,
}

impl Mf {
    pub fn new(vb: VarBuilder, input_dim: usize, dim: usize, n_models: usize) -> Result<Self> {
        let proj = candle_nn::linear_no_bias(input_dim, dim, vb.pp("proj"))?;
        let models = vb.get_with_hints(
            (n_models, dim),
            "models",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.1,
            },
        )?;
        let bias = vb.get_with_hints(n_models, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { proj, models, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let z = self.proj.forward(x)?;
        Ok(z.matmul(&self.models.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Task-mixture head: `q[m] = Σ_t softmax(W·x + b)[t] · means[t, m]`, as logits.
#[derive(Debug, Clone)]
pub struct TaskMixture {
    classifier: Linear,
    means: Tensor,
}

impl TaskMixture {
    /// Quality predictions are kept this far from 0 and 1 before taking logits.
    const EPS: f64 = 1e-4;

    pub fn new(vb: VarBuilder, input_dim: usize, n_tasks: usize, n_models: usize) -> Result<Self> {
        Ok(Self {
            classifier: candle_nn::linear(input_dim, n_tasks, vb.pp("classifier"))?,
            means: vb.get_with_hints((n_tasks, n_models), "means", candle_nn::Init::Const(0.5))?,
        })
    }

    /// The classifier's logits over tasks `(batch, n_tasks)`.
    pub fn task_logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.classifier.forward(x)?)
    }

    /// Logits of the mixed mean scores `(batch, n_models)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let p = candle_nn::ops::softmax_last_dim(&self.task_logits(x)?)?;
        let q = p.matmul(&self.means)?.clamp(Self::EPS, 1.0 - Self::EPS)?;
        Ok((q.log()? - (1.0 - &q)?.log()?)?)
    }
}

/// kNN head over the training prompts' embeddings.
#[derive(Debug, Clone)]
pub struct Knn {
    index: KeyIndex,
    scores: Vec<f32>,
    mask: Vec<f32>,
    prior: Vec<f32>,
    n_models: usize,
    k: usize,
    alpha: f32,
}

impl Knn {
    /// `index` over the training prompts' L2-normalised embeddings, `scores` and `mask`
    /// `(index.len(), n_models)` row-major, `prior` the per-model mean score.
    pub fn new(
        index: KeyIndex,
        scores: Vec<f32>,
        mask: Vec<f32>,
        prior: Vec<f32>,
        k: usize,
        alpha: f32,
    ) -> Result<Self> {
        let n = index.len();
        let n_models = prior.len();
        if scores.len() != n * n_models || mask.len() != n * n_models || k == 0 {
            return Err(Error::InvalidInput(format!(
                "kNN index of {n} prompts × {n_models} models has {} scores, {} mask cells, k = {k}",
                scores.len(),
                mask.len()
            )));
        }
        Ok(Self {
            index,
            scores,
            mask,
            prior,
            n_models,
            k,
            alpha,
        })
    }

    /// The number of training prompts in the index.
    pub fn keys(&self) -> usize {
        self.index.len()
    }

    /// The tensors of `head.safetensors`: `knn.keys_i8` holds the quantised keys' bytes (two's
    /// complement `i8` in a `U8` tensor: Candle has no `I8`), `knn.key_scales` their scales.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let (n, dim) = (self.index.len(), self.index.dim());
        let device = &Device::Cpu;
        let (q, scales) = self.index.quantized();
        let bytes: Vec<u8> = q.iter().map(|v| v.cast_unsigned()).collect();
        Ok(HashMap::from([
            (
                KEYS_I8.to_owned(),
                Tensor::from_vec(bytes, (n, dim), device)?,
            ),
            (KEY_SCALES.to_owned(), Tensor::from_vec(scales, n, device)?),
            (
                "knn.scores".to_owned(),
                Tensor::from_slice(&self.scores, (n, self.n_models), device)?,
            ),
            (
                "knn.mask".to_owned(),
                Tensor::from_slice(&self.mask, (n, self.n_models), device)?,
            ),
            (
                "knn.prior".to_owned(),
                Tensor::from_slice(&self.prior, self.n_models, device)?,
            ),
        ]))
    }

    /// The index a router stored: int8 keys, or the f32 `knn.keys` of routers written before
    /// them (quantised on loading).
    fn load_index(tensors: &HashMap<String, Tensor>, input_dim: usize) -> Result<KeyIndex> {
        let (keys, quantized) = match tensors.get(KEYS_I8) {
            Some(keys) => (keys, true),
            None => (named(tensors, F32_KEYS)?, false),
        };
        let (n, dim) = keys.dims2()?;
        if dim != input_dim {
            return Err(Error::InvalidInput(format!(
                "kNN keys have dimension {dim}, the encoder {input_dim}"
            )));
        }
        if !quantized {
            return KeyIndex::new(&keys.flatten_all()?.to_vec1::<f32>()?, n, dim);
        }
        if keys.dtype() != DType::U8 {
            return Err(Error::InvalidInput(format!(
                "tensor `{KEYS_I8}` is {:?}, not U8",
                keys.dtype()
            )));
        }
        let q: Vec<i8> = keys
            .flatten_all()?
            .to_vec1::<u8>()?
            .into_iter()
            .map(u8::cast_signed)
            .collect();
        let scales = named(tensors, KEY_SCALES)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        KeyIndex::from_quantized(&q, &scales, n, dim)
    }

    /// Shrunk mean scores of the `k` nearest keys, as logits `(batch, n_models)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dims2()?.0;
        let queries = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(batch * self.n_models);
        for neighbours in self.index.nearest(&queries, self.k, |_| None)? {
            out.extend(shrunk_logits(
                &self.scores,
                &self.mask,
                &self.prior,
                &neighbours,
                self.alpha,
            ));
        }
        Ok(Tensor::from_vec(out, (batch, self.n_models), x.device())?)
    }
}

/// The tensor `name` of `head.safetensors`; a missing one is an error naming it.
fn named<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    tensors
        .get(name)
        .ok_or_else(|| Error::InvalidInput(format!("tensor `{name}` is missing")))
}

/// The kNN head's int8 keys and their scales in `head.safetensors` ([`Knn::tensors`]).
const KEYS_I8: &str = "knn.keys_i8";
const KEY_SCALES: &str = "knn.key_scales";
/// The f32 keys of routers written before the int8 index.
const F32_KEYS: &str = "knn.keys";

/// Per model, the logit of the mean score of `neighbours` (rows of the row-major
/// `scores`/`mask`, `prior.len()` models wide), counting only evaluated cells and shrunk
/// toward `prior` by `alpha` pseudo-observations.
pub fn shrunk_logits<'a>(
    scores: &'a [f32],
    mask: &'a [f32],
    prior: &'a [f32],
    neighbours: &'a [usize],
    alpha: f32,
) -> impl Iterator<Item = f32> + 'a {
    let m = prior.len();
    (0..m).map(move |model| {
        let (mut sum, mut count) = (0.0f32, 0.0f32);
        for &j in neighbours {
            let w = mask[j * m + model];
            sum += w * scores[j * m + model];
            count += w;
        }
        calibration::logit((sum + alpha * prior[model]) / (count + alpha).max(1e-6))
    })
}

/// A loaded quality head.
#[derive(Debug, Clone)]
pub enum Head {
    Linear(Linear),
    Task(TaskMixture),
    Mlp(Mlp),
    Mf(Mf),
    /// Boxed: its int8 index makes it the largest head by far.
    Knn(Box<Knn>),
    /// The mean of its members' logits (an ensemble, or the folds of a bagged head).
    Mean(Vec<Head>),
    /// The weighted mean of its members' logits (an ensemble with weights; they sum to 1).
    Weighted(Vec<(f32, Head)>),
}

impl Head {
    /// Rebuilds a head from its spec and the tensors of `head.safetensors`.
    pub fn from_tensors(
        spec: &HeadSpec,
        tensors: HashMap<String, Tensor>,
        input_dim: usize,
        n_models: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(match *spec {
            HeadSpec::Ensemble {
                ref members,
                ref weights,
            } => {
                let mut kinds = std::collections::HashSet::new();
                if members.is_empty()
                    || !members
                        .iter()
                        .all(|m| !matches!(m, HeadSpec::Ensemble { .. }) && kinds.insert(m.kind()))
                {
                    return Err(Error::InvalidInput(
                        "an ensemble needs members of distinct, non-ensemble kinds".to_owned(),
                    ));
                }
                let heads = members
                    .iter()
                    .map(|m| Self::from_tensors(m, tensors.clone(), input_dim, n_models, device))
                    .collect::<Result<Vec<_>>>()?;
                match weights {
                    None => Self::Mean(heads),
                    Some(weights) => {
                        let sum: f32 = weights.iter().sum();
                        if weights.len() != heads.len()
                            || !weights.iter().all(|w| w.is_finite() && *w > 0.0)
                            || (sum - 1.0).abs() > 1e-4
                        {
                            return Err(Error::InvalidInput(format!(
                                "an ensemble's weights must be one positive weight per member, \
                                 summing to 1 (got {weights:?} for {} members)",
                                heads.len()
                            )));
                        }
                        Self::Weighted(weights.iter().copied().zip(heads).collect())
                    }
                }
            }
            HeadSpec::Bagged { folds, ref member } => {
                if folds == 0
                    || matches!(
                        **member,
                        HeadSpec::Bagged { .. } | HeadSpec::Ensemble { .. }
                    )
                {
                    return Err(Error::InvalidInput(
                        "a bagged head needs at least one fold of a plain head".to_owned(),
                    ));
                }
                Self::Mean(
                    (0..folds)
                        .map(|k| {
                            let prefix = format!("fold{k}.");
                            let sub = tensors
                                .iter()
                                .filter_map(|(name, t)| {
                                    name.strip_prefix(&prefix)
                                        .map(|n| (n.to_owned(), t.clone()))
                                })
                                .collect();
                            Self::from_tensors(member, sub, input_dim, n_models, device)
                        })
                        .collect::<Result<_>>()?,
                )
            }
            HeadSpec::Linear {} => {
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                Self::Linear(candle_nn::linear(input_dim, n_models, vb.pp("linear"))?)
            }
            HeadSpec::Task { ref tasks } => {
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                Self::Task(TaskMixture::new(
                    vb.pp("task"),
                    input_dim,
                    tasks.len(),
                    n_models,
                )?)
            }
            HeadSpec::Mlp { hidden, dropout } => {
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                Self::Mlp(Mlp::new(
                    vb.pp("mlp"),
                    input_dim,
                    hidden,
                    n_models,
                    dropout,
                )?)
            }
            HeadSpec::Mf { dim } => {
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                Self::Mf(Mf::new(vb.pp("mf"), input_dim, dim, n_models)?)
            }
            HeadSpec::Knn { k, alpha } => {
                let index = Knn::load_index(&tensors, input_dim)?;
                let n = index.len();
                let flat = |name: &str, len: usize| -> Result<Vec<f32>> {
                    let v = named(&tensors, name)?.flatten_all()?.to_vec1::<f32>()?;
                    if v.len() != len {
                        return Err(Error::InvalidInput(format!(
                            "tensor `{name}` has {} values, expected {len}",
                            v.len()
                        )));
                    }
                    Ok(v)
                };
                Self::Knn(Box::new(Knn::new(
                    index,
                    flat("knn.scores", n * n_models)?,
                    flat("knn.mask", n * n_models)?,
                    flat("knn.prior", n_models)?,
                    k,
                    alpha,
                )?))
            }
        })
    }

    /// Raw logits `(batch, n_models)` for L2-normalised embeddings `(batch, dim)`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear(h) => Ok(h.forward(x)?),
            Self::Task(h) => h.forward(x),
            Self::Mlp(h) => h.forward_t(x, None),
            Self::Mf(h) => h.forward(x),
            Self::Knn(h) => h.forward(x),
            Self::Mean(members) => {
                let mut sum = members
                    .first()
                    .ok_or_else(|| Error::InvalidInput("empty ensemble".to_owned()))?
                    .logits(x)?;
                for m in &members[1..] {
                    sum = (sum + m.logits(x)?)?;
                }
                Ok((sum / members.len() as f64)?)
            }
            Self::Weighted(members) => {
                let mut terms = members
                    .iter()
                    .map(|(w, m)| Ok(m.logits(x)?.affine(f64::from(*w), 0.0)?));
                let first = terms
                    .next()
                    .ok_or_else(|| Error::InvalidInput("empty ensemble".to_owned()))??;
                terms.try_fold(first, |sum, term: Result<Tensor>| Ok((sum + term?)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_averages_neighbours_and_shrinks_to_prior() -> Result<()> {
        let dev = Device::Cpu;
        // Three keys on the unit circle; query next to key 0 and key 1.
        let keys = KeyIndex::new(&[1.0, 0.0, 0.8, 0.6, -1.0, 0.0], 3, 2)?;
        // One model; key 1 not evaluated.
        let scores = vec![1.0, 0.0, 0.0];
        let mask = vec![1.0, 0.0, 1.0];
        let knn = Knn::new(keys, scores, mask, vec![0.5], 2, 1.0)?;
        let q = Tensor::from_vec(vec![0.9f32, 0.43589], (1, 2), &dev)?;
        let p = calibration::sigmoid(knn.logits_row(&q)?[0]);
        // Neighbours 0 and 1; only key 0 counts: (1 + 1·0.5) / (1 + 1) = 0.75.
        assert!((p - 0.75).abs() < 1e-4, "{p}");
        Ok(())
    }

    #[test]
    fn knn_tensors_load_back_and_old_f32_keys_still_load() -> Result<()> {
        let dev = Device::Cpu;
        let keys = [1.0f32, 0.0, 0.8, 0.6, -1.0, 0.0];
        let knn = Knn::new(
            KeyIndex::new(&keys, 3, 2)?,
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 1.0],
            vec![0.5],
            2,
            1.0,
        )?;
        let spec = HeadSpec::Knn { k: 2, alpha: 1.0 };
        let q = Tensor::from_vec(vec![0.9f32, 0.43589], (1, 2), &dev)?;
        let want = knn.logits_row(&q)?;
        let tensors = knn.tensors()?;
        assert_eq!(tensors[KEYS_I8].dtype(), DType::U8);
        let logits = |tensors: HashMap<String, Tensor>| -> Result<Vec<f32>> {
            let head = Head::from_tensors(&spec, tensors, 2, 1, &dev)?;
            Ok(head.logits(&q)?.squeeze(0)?.to_vec1()?)
        };
        assert_eq!(logits(tensors.clone())?, want);
        // A router written before the int8 index: f32 keys, quantised on loading.
        let mut old = tensors.clone();
        old.remove(KEYS_I8);
        old.remove(KEY_SCALES);
        old.insert(
            F32_KEYS.to_owned(),
            Tensor::from_slice(&keys, (3, 2), &dev)?,
        );
        assert_eq!(logits(old)?, want);
        // Keys of the wrong type, missing scales, or keys the encoder's width does not match.
        let mut wrong_type = tensors.clone();
        wrong_type.insert(KEYS_I8.to_owned(), Tensor::zeros((3, 2), DType::F32, &dev)?);
        let mut no_scales = tensors.clone();
        no_scales.remove(KEY_SCALES);
        for (bad, why) in [(wrong_type, "U8"), (no_scales, KEY_SCALES)] {
            match Head::from_tensors(&spec, bad, 2, 1, &dev) {
                Err(Error::InvalidInput(message)) => assert!(message.contains(why), "{message}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(Head::from_tensors(&spec, tensors, 3, 1, &dev).is_err());
        Ok(())
    }

    #[test]
    fn the_task_mixture_mixes_task_means_by_the_classifier() -> Result<()> {
        let dev = Device::Cpu;
        // Two tasks, two models; the classifier reads the first coordinate only.
        let tensors = HashMap::from([
            (
                "task.classifier.weight".to_owned(),
                Tensor::new(&[[2.0f32, 0.0], [-2.0, 0.0]], &dev)?,
            ),
            (
                "task.classifier.bias".to_owned(),
                Tensor::new(&[0.0f32, 0.0], &dev)?,
            ),
            (
                "task.means".to_owned(),
                Tensor::new(&[[0.9f32, 0.2], [0.1, 0.6]], &dev)?,
            ),
        ]);
        let spec = HeadSpec::Task {
            tasks: vec!["code".into(), "chat".into()],
        };
        let head = Head::from_tensors(&spec, tensors, 2, 2, &dev)?;
        let x = Tensor::new(&[[0.5f32, 0.3], [0.0, 1.0]], &dev)?;
        let got = head.logits(&x)?.to_vec2::<f32>()?;
        for (row, first) in got.iter().zip([0.5f32, 0.0]) {
            // softmax(2a, −2a)[0] = σ(4a).
            let p = calibration::sigmoid(4.0 * first);
            for (model, logit) in row.iter().enumerate() {
                let q = [p * 0.9 + (1.0 - p) * 0.1, p * 0.2 + (1.0 - p) * 0.6][model];
                assert!((calibration::sigmoid(*logit) - q).abs() < 1e-5, "{got:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn ensembles_of_one_kind_twice_are_refused() {
        let spec = HeadSpec::Ensemble {
            members: vec![HeadSpec::Mf { dim: 2 }, HeadSpec::Mf { dim: 2 }],
            weights: None,
        };
        let err = Head::from_tensors(&spec, HashMap::new(), 4, 2, &Device::Cpu).err();
        assert!(matches!(err, Some(Error::InvalidInput(_))), "{err:?}");
    }

    #[test]
    fn a_weighted_ensemble_weighs_its_members_logits() -> Result<()> {
        let dev = Device::Cpu;
        // A linear head (logits x·w + b) and an MF head with a zero projection (logits = its
        // biases).
        let tensors = HashMap::from([
            (
                "linear.weight".to_owned(),
                Tensor::new(&[[1.0f32], [-1.0]], &dev)?,
            ),
            ("linear.bias".to_owned(), Tensor::new(&[0.5f32, 0.0], &dev)?),
            (
                "mf.proj.weight".to_owned(),
                Tensor::zeros((2, 1), DType::F32, &dev)?,
            ),
            (
                "mf.models".to_owned(),
                Tensor::zeros((2, 2), DType::F32, &dev)?,
            ),
            ("mf.bias".to_owned(), Tensor::new(&[2.0f32, -2.0], &dev)?),
        ]);
        let members = vec![HeadSpec::Linear {}, HeadSpec::Mf { dim: 2 }];
        let spec = |weights| HeadSpec::Ensemble {
            members: members.clone(),
            weights,
        };
        let x = Tensor::new(&[[1.0f32]], &dev)?;
        let logits = |weights| -> Result<Vec<f32>> {
            let head = Head::from_tensors(&spec(weights), tensors.clone(), 1, 2, &dev)?;
            Ok(head.logits(&x)?.squeeze(0)?.to_vec1()?)
        };
        // Linear: [1.5, -1.0]; MF: [2.0, -2.0].
        assert_eq!(logits(None)?, vec![1.75, -1.5]);
        let weighted = logits(Some(vec![0.25, 0.75]))?;
        for (got, want) in weighted.iter().zip([1.875f32, -1.75]) {
            assert!((got - want).abs() < 1e-6, "{weighted:?}");
        }
        // The manifest keeps the weights, omits them when there are none (as every ensemble
        // before weights was written), and reads both back.
        let json = |weights| serde_json::to_value(spec(weights)).expect("a spec serialises");
        let weighted = json(Some(vec![0.25, 0.75]));
        assert_eq!(weighted["weights"], serde_json::json!([0.25, 0.75]));
        assert!(json(None).get("weights").is_none());
        for (value, weights) in [(weighted, Some(vec![0.25, 0.75])), (json(None), None)] {
            let read: HeadSpec = serde_json::from_value(value).expect("a spec reads back");
            assert_eq!(read, spec(weights));
        }
        for bad in [
            vec![1.0],
            vec![0.5, 0.6],
            vec![1.5, -0.5],
            vec![f32::NAN, 1.0],
        ] {
            let err = Head::from_tensors(&spec(Some(bad.clone())), tensors.clone(), 1, 2, &dev);
            assert!(matches!(err, Err(Error::InvalidInput(_))), "{bad:?}");
        }
        Ok(())
    }

    impl Knn {
        fn logits_row(&self, q: &Tensor) -> Result<Vec<f32>> {
            Ok(self.forward(q)?.squeeze(0)?.to_vec1()?)
        }
    }
}
