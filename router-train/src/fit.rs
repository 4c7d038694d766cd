//! Fitting the quality heads: masked BCE with AdamW and early stopping for `linear`, `mlp` and
//! `mf`, a
//! validation-tuned shrunk kNN for `knn`, then per-model Platt calibration on validation.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use router_core::heads::calibration::{Platt, fit_platt, logit};
use router_core::heads::index::KeyIndex;
use router_core::heads::{Head, HeadSpec, Knn, Mf, Mlp, TaskMixture, shrunk_logits};

use crate::error::{Result, TrainError};

/// Training hyper-parameters of the gradient-trained heads.
#[derive(Debug, Clone)]
pub struct NetParams {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    pub patience: usize,
    pub seed: u64,
    /// Cross-validation folds (see [`fit_cross`]); below 2, one train/validation split.
    pub folds: usize,
    /// μ in the networks' training loss `BCE + μ · pairwise BCE` (see [`pairwise_bce`]); 0:
    /// the BCE alone.
    pub pairwise_weight: f64,
}

/// Parses a [`NetParams::pairwise_weight`]: a finite number ≥ 0.
pub fn parse_pairwise_weight(text: &str) -> std::result::Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(mu) if mu.is_finite() && mu >= 0.0 => Ok(mu),
        _ => Err(format!("the pairwise weight is a number ≥ 0, got `{text}`")),
    }
}

/// A split's inputs: embeddings `(n, dim)`, targets and mask `(n, models)`, row-major.
pub struct SplitData {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub mask: Vec<f32>,
    pub n: usize,
    pub dim: usize,
    pub models: usize,
    /// Each row's task, an index into `task_names` (the task column's values over the whole
    /// table, sorted), `None` where the logs give none.
    pub task: Vec<Option<u32>>,
    pub task_names: Vec<String>,
}

impl SplitData {
    /// The rows `rows`, in that order.
    pub fn subset(&self, rows: &[usize]) -> Self {
        let (d, m) = (self.dim, self.models);
        let mut out = Self {
            x: Vec::with_capacity(rows.len() * d),
            y: Vec::with_capacity(rows.len() * m),
            mask: Vec::with_capacity(rows.len() * m),
            n: rows.len(),
            dim: d,
            models: m,
            task: rows.iter().map(|&i| self.task[i]).collect(),
            task_names: self.task_names.clone(),
        };
        for &i in rows {
            out.x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
            out.y.extend_from_slice(&self.y[i * m..(i + 1) * m]);
            out.mask.extend_from_slice(&self.mask[i * m..(i + 1) * m]);
        }
        out
    }

    fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            Tensor::from_slice(&self.x, (self.n, self.dim), device)?,
            Tensor::from_slice(&self.y, (self.n, self.models), device)?,
            Tensor::from_slice(&self.mask, (self.n, self.models), device)?,
        ))
    }

    /// Weighted mean target per model (the prior), 0.5 where a model has no data.
    pub fn prior(&self) -> Vec<f32> {
        (0..self.models)
            .map(|m| {
                let (mut s, mut w) = (0.0f64, 0.0f64);
                for i in 0..self.n {
                    let k = i * self.models + m;
                    s += f64::from(self.mask[k] * self.y[k]);
                    w += f64::from(self.mask[k]);
                }
                if w > 0.0 { (s / w) as f32 } else { 0.5 }
            })
            .collect()
    }
}

/// The seeded generator of weights, shuffles, dropout and samples (re-exported from
/// router-core, where serving and evaluation draw from it too).
pub use router_core::rng::SplitMix;

/// `ln(1 + eˣ)` elementwise, as `relu(x) + ln(1 + e^−|x|)`: no overflow for large `|x|`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// Masked binary cross-entropy with logits, averaged over evaluated cells.
/// `softplus(z) − y·z` is the BCE of `σ(z)` against a soft target `y`.
pub fn masked_bce(logits: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_cell = (softplus(logits)? - y.mul(logits)?)?;
    let total = per_cell.mul(mask)?.sum_all()?;
    let count = mask.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok(total.div(&count)?)
}

/// The pairwise loss as a tensor, for training: the mean BCE of `σ(l_a − l_b)` against
/// `½ + (y_a − y_b)/2` over each prompt's ordered pairs of observed models whose targets
/// differ, a pair weighing the product of its cells' `mask` weights (as [`pairwise_loss`]).
/// Rows are taken [`PAIR_ROWS`] at a time: a prompt's pairs are `models²` values, so the whole
/// validation split at once could take gigabytes.
pub fn pairwise_bce(logits: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let pairs =
        |t: &Tensor| -> Result<Tensor> { Ok(t.unsqueeze(2)?.broadcast_sub(&t.unsqueeze(1)?)?) };
    let n = logits.dim(0)?;
    let (mut total, mut count) = (Tensor::new(0f32, logits.device())?, 0.0);
    for start in (0..n).step_by(PAIR_ROWS) {
        let rows = PAIR_ROWS.min(n - start);
        let (logits, y, mask) = (
            logits.narrow(0, start, rows)?,
            y.narrow(0, start, rows)?,
            mask.narrow(0, start, rows)?,
        );
        let z = pairs(&logits)?;
        let dy = pairs(&y)?;
        let target = ((&dy * 0.5)? + 0.5)?;
        let differ = dy.ne(0f32)?.to_dtype(DType::F32)?;
        let weight = mask
            .unsqueeze(2)?
            .broadcast_mul(&mask.unsqueeze(1)?)?
            .mul(&differ)?;
        let chunk = (softplus(&z)? - target.mul(&z)?)?.mul(&weight)?.sum_all()?;
        count += f64::from(weight.sum_all()?.to_scalar::<f32>()?);
        total = (total + chunk)?;
    }
    Ok((total / count.max(1e-12))?)
}

/// Prompts per chunk of [`pairwise_bce`].
const PAIR_ROWS: usize = 256;

/// Softmax cross-entropy of `logits` `(n, classes)` against one-hot `y`, over the rows whose
/// `mask` is 1 (a row's mask is all ones or all zeros).
pub fn masked_softmax_ce(logits: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let weight = y.mul(mask)?;
    let total = log_p.mul(&weight)?.sum_all()?.neg()?;
    let count = weight.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok(total.div(&count)?)
}

/// The task-mixture head: a softmax classifier of the task column on the embeddings (AdamW,
/// early stopping on the validation cross-entropy), and per task each model's mean training
/// score, shrunk toward the model's mean by one pseudo-observation (a task training never saw
/// predicts the model's mean).
fn fit_task(
    train: &SplitData,
    val: &SplitData,
    prior: &[f32],
    params: &NetParams,
) -> Result<Fitted> {
    let tasks = train.task_names.len();
    if tasks < 2 || train.task.iter().flatten().count() == 0 {
        return Err(TrainError::TooFewTasks(tasks));
    }
    let m = train.models;
    let (mut sums, mut counts) = (vec![0.0f32; tasks * m], vec![0.0f32; tasks * m]);
    for (i, t) in train.task.iter().enumerate() {
        let Some(t) = t.map(|t| t as usize) else {
            continue;
        };
        for j in 0..m {
            let w = train.mask[i * m + j];
            sums[t * m + j] += w * train.y[i * m + j];
            counts[t * m + j] += w;
        }
    }
    let means: Vec<f32> = (0..tasks * m)
        .map(|c| (sums[c] + prior[c % m]) / (counts[c] + 1.0))
        .collect();
    // The classification problem: one-hot targets, rows without a task masked out.
    let one_hot = |d: &SplitData| {
        let mut y = vec![0.0f32; d.n * tasks];
        let mut mask = vec![0.0f32; d.n * tasks];
        for (i, t) in d.task.iter().enumerate() {
            if let Some(t) = t {
                y[i * tasks + *t as usize] = 1.0;
                mask[i * tasks..(i + 1) * tasks].fill(1.0);
            }
        }
        SplitData {
            x: d.x.clone(),
            y,
            mask,
            n: d.n,
            dim: d.dim,
            models: tasks,
            task: d.task.clone(),
            task_names: d.task_names.clone(),
        }
    };
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let head = TaskMixture::new(vb.pp("task"), train.dim, tasks, m)?;
    let mut rng = SplitMix::new(params.seed);
    seeded_init(&varmap, &[], "", &mut rng)?;
    let forward =
        |x: &Tensor, _: Option<&mut SplitMix>| -> Result<Tensor> { Ok(head.task_logits(x)?) };
    let mut hp = train_net(
        &varmap,
        forward,
        &masked_softmax_ce,
        &one_hot(train),
        &one_hot(val),
        params,
        &mut rng,
    )?;
    hp.insert("tasks".into(), tasks as f64);
    // The means are not trained: set them once the classifier is.
    restore(
        &varmap,
        &HashMap::from([(
            "task.means".to_owned(),
            Tensor::from_vec(means, (tasks, m), &device)?,
        )]),
    )?;
    net_fitted(
        HeadSpec::Task {
            tasks: train.task_names.clone(),
        },
        &varmap,
        train,
        hp,
    )
}

/// Overwrites every variable with seeded values: weights uniform in ±1/√fan_in (PyTorch's
/// default), biases 0, and the per-model output bias at the logit of the model's prior, so
/// training starts from "every model scores its average".
fn seeded_init(
    varmap: &VarMap,
    prior: &[f32],
    output_bias: &str,
    rng: &mut SplitMix,
) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let len: usize = dims.iter().product();
        let values: Vec<f32> = if name == output_bias {
            prior.iter().map(|&p| logit(p)).collect()
        } else if name.ends_with("bias") {
            vec![0.0; len]
        } else {
            let fan_in = *dims.last().unwrap_or(&1) as f32;
            let bound = 1.0 / fan_in.sqrt();
            (0..len)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn restore(varmap: &VarMap, saved: &HashMap<String, Tensor>) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    for (k, v) in data.iter() {
        if let Some(t) = saved.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

/// What training produced.
pub struct Fitted {
    pub spec: HeadSpec,
    pub head: Head,
    pub tensors: HashMap<String, Tensor>,
    pub hyperparameters: BTreeMap<String, f64>,
}

/// Which head to fit, with its architecture parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadChoice {
    /// Per-model logistic regression.
    Linear,
    Mlp {
        hidden: usize,
        dropout: f32,
    },
    Mf {
        dim: usize,
    },
    /// `None` values are tuned on validation. The index keeps at most `max_keys` training
    /// prompts ([`knn_rows`]).
    Knn {
        k: Option<usize>,
        alpha: Option<f32>,
        max_keys: usize,
    },
    /// A task classifier and per-task mean scores (needs the task column).
    Task,
    /// Every member fitted alone, their logits averaged.
    Ensemble(Vec<HeadChoice>),
    /// As an ensemble member: fitted after the others, and kept only if it lowers the
    /// ensemble's pairwise loss on the validation split (out-of-fold predictions under
    /// `--folds`); dropped too when it cannot be fitted (the task head without tasks). Alone,
    /// the head itself.
    IfBetter(Box<HeadChoice>),
    /// As an ensemble member: judged like [`HeadChoice::IfBetter`], then given the weight
    /// among [`MEMBER_WEIGHTS`] with the lowest pairwise loss instead where that loss is lower
    /// by more than its standard error (the others keep their proportions; see
    /// `weigh_member`). Alone, the head itself.
    Weighted(Box<HeadChoice>),
}

/// What the plain heads are by name ([`HeadChoice::parse`]): their architecture parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadParams {
    /// MLP hidden units.
    pub hidden: usize,
    /// MLP dropout on the hidden layer.
    pub dropout: f32,
    /// Matrix-factorisation dimension.
    pub mf_dim: usize,
    /// kNN neighbours; `None`: tuned on validation.
    pub knn_k: Option<usize>,
    /// kNN shrinkage toward the model's prior; `None`: tuned on validation.
    pub knn_alpha: Option<f32>,
    /// The most training prompts the kNN index keeps (a seeded sample beyond it): one decision
    /// reads every key, so this bounds its cost however large the logs grow.
    pub knn_max_keys: usize,
}

impl HeadParams {
    pub const DEFAULT: Self = Self {
        hidden: 256,
        dropout: 0.2,
        mf_dim: 64,
        knn_k: None,
        knn_alpha: None,
        knn_max_keys: 20_000,
    };
}

impl HeadParams {
    /// `mlp` with these parameters.
    pub fn mlp(&self) -> HeadChoice {
        HeadChoice::Mlp {
            hidden: self.hidden,
            dropout: self.dropout,
        }
    }

    /// `mf` with these parameters.
    pub fn mf(&self) -> HeadChoice {
        HeadChoice::Mf { dim: self.mf_dim }
    }

    /// `knn` with these parameters.
    pub fn knn(&self) -> HeadChoice {
        HeadChoice::Knn {
            k: self.knn_k,
            alpha: self.knn_alpha,
            max_keys: self.knn_max_keys,
        }
    }
}

impl Default for HeadParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The default head, spelled as [`HeadChoice::parse`] reads it.
pub const DEFAULT_ENSEMBLE: &str = "mlp+mf+knn+task~";

/// The names [`HeadChoice::parse`] knows besides ensembles joined by `+`.
pub const HEAD_NAMES: [&str; 6] = ["linear", "task", "mlp", "mf", "knn", "ensemble"];

impl HeadChoice {
    /// The default head, [`DEFAULT_ENSEMBLE`]: the mean of `mlp`, `mf` and `knn`, plus the
    /// `task` head with a weight tuned on validation.
    pub fn ensemble(params: &HeadParams) -> Self {
        Self::Ensemble(vec![
            params.mlp(),
            params.mf(),
            params.knn(),
            Self::Weighted(Box::new(Self::Task)),
        ])
    }

    /// A head by name: `linear`, `task`, `mlp`, `mf`, `knn`, `ensemble` ([`DEFAULT_ENSEMBLE`]),
    /// or an ensemble of plain heads joined by `+` (`linear+mlp+mf+knn`), where `head?` is a
    /// member kept only if it lowers the validation pairwise loss ([`HeadChoice::IfBetter`])
    /// and `head~` one whose weight may also be tuned ([`HeadChoice::Weighted`]). `params`
    /// says what `mlp`, `mf` and `knn` are.
    pub fn parse(name: &str, params: &HeadParams) -> std::result::Result<Self, String> {
        if name.contains('+') {
            return Ok(Self::Ensemble(
                name.split('+')
                    .map(|member| Self::parse(member, params))
                    .collect::<std::result::Result<_, _>>()?,
            ));
        }
        if let Some(inner) = name.strip_suffix('?') {
            return Ok(Self::IfBetter(Box::new(Self::parse(inner, params)?)));
        }
        if let Some(inner) = name.strip_suffix('~') {
            return Ok(Self::Weighted(Box::new(Self::parse(inner, params)?)));
        }
        Ok(match name {
            "linear" => Self::Linear,
            "task" => Self::Task,
            "mlp" => params.mlp(),
            "mf" => params.mf(),
            "knn" => params.knn(),
            "ensemble" => Self::ensemble(params),
            other => {
                return Err(format!(
                    "unknown head `{other}` ({}, or heads joined by +)",
                    HEAD_NAMES.join(", ")
                ));
            }
        })
    }
}

/// The weights a [`HeadChoice::Weighted`] ensemble member is tried at, beside leaving it out and
/// an equal share. The largest is below 1: the other members always keep some say.
pub const MEMBER_WEIGHTS: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Fits a head on `train`, early-stopping (or tuning) on `val`.
pub fn fit_head(
    choice: &HeadChoice,
    train: &SplitData,
    val: &SplitData,
    params: &NetParams,
) -> Result<Fitted> {
    let device = Device::Cpu;
    let prior = train.prior();
    match *choice {
        HeadChoice::Linear => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let linear = candle_nn::linear(train.dim, train.models, vb.pp("linear"))?;
            let mut rng = SplitMix::new(params.seed);
            seeded_init(&varmap, &prior, "linear.bias", &mut rng)?;
            let forward =
                |x: &Tensor, _: Option<&mut SplitMix>| -> Result<Tensor> { Ok(linear.forward(x)?) };
            let hp = train_scorer(&varmap, forward, train, val, params, &mut rng)?;
            net_fitted(HeadSpec::Linear {}, &varmap, train, hp)
        }
        HeadChoice::Mlp { hidden, dropout } => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let mlp = Mlp::new(vb.pp("mlp"), train.dim, hidden, train.models, dropout)?;
            let mut rng = SplitMix::new(params.seed);
            seeded_init(&varmap, &prior, "mlp.out.bias", &mut rng)?;
            let forward = |x: &Tensor, rng: Option<&mut SplitMix>| -> Result<Tensor> {
                let mask = match rng {
                    Some(rng) if dropout > 0.0 => {
                        let (n, h) = (x.dims2()?.0, hidden);
                        let keep = 1.0 - dropout;
                        let values: Vec<f32> = (0..n * h)
                            .map(|_| {
                                if rng.next_f32() < keep {
                                    1.0 / keep
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        Some(Tensor::from_vec(values, (n, h), x.device())?)
                    }
                    _ => None,
                };
                Ok(mlp.forward_t(x, mask.as_ref())?)
            };
            let mut hp = train_scorer(&varmap, forward, train, val, params, &mut rng)?;
            hp.insert("hidden".into(), hidden as f64);
            hp.insert("dropout".into(), f64::from(dropout));
            net_fitted(HeadSpec::Mlp { hidden, dropout }, &varmap, train, hp)
        }
        HeadChoice::Mf { dim } => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let mf = Mf::new(vb.pp("mf"), train.dim, dim, train.models)?;
            let mut rng = SplitMix::new(params.seed);
            seeded_init(&varmap, &prior, "mf.bias", &mut rng)?;
            let forward =
                |x: &Tensor, _: Option<&mut SplitMix>| -> Result<Tensor> { Ok(mf.forward(x)?) };
            let mut hp = train_scorer(&varmap, forward, train, val, params, &mut rng)?;
            hp.insert("dim".into(), dim as f64);
            net_fitted(HeadSpec::Mf { dim }, &varmap, train, hp)
        }
        HeadChoice::Knn { k, alpha, max_keys } => {
            let keys = knn_rows(train.n, max_keys, params.seed).map(|rows| train.subset(&rows));
            fit_knn(
                keys.as_ref().unwrap_or(train),
                val,
                &prior,
                k,
                alpha,
                &device,
            )
        }
        HeadChoice::Task => fit_task(train, val, &prior, params),
        HeadChoice::IfBetter(ref inner) | HeadChoice::Weighted(ref inner) => {
            fit_head(inner, train, val, params)
        }
        HeadChoice::Ensemble(ref members) => {
            let vx = Tensor::from_slice(&val.x, (val.n, val.dim), &device)?;
            let (ensemble, _) = fit_ensemble(members, val, |member| {
                let f = fit_head(member, train, val, params)?;
                let logits = f.head.logits(&vx)?.flatten_all()?.to_vec1::<f32>()?;
                Ok((f, logits))
            })?;
            Ok(ensemble)
        }
    }
}

/// Fits an ensemble's members with `fit`, which returns a member and its logits on `data`'s
/// rows (row-major): the plain members first, with equal weights, then each
/// [`HeadChoice::IfBetter`] or [`HeadChoice::Weighted`] one, weighed by [`weigh_member`] (and
/// dropped, with a log line, when it cannot be fitted). Returns the ensemble and the (weighted)
/// mean logits of its kept members on `data`.
fn fit_ensemble(
    members: &[HeadChoice],
    data: &SplitData,
    fit: impl Fn(&HeadChoice) -> Result<(Fitted, Vec<f32>)>,
) -> Result<(Fitted, Vec<f32>)> {
    let mut ensemble = Members::default();
    let mut optional = Vec::new();
    for member in members {
        match member {
            HeadChoice::IfBetter(inner) => optional.push((&**inner, false)),
            HeadChoice::Weighted(inner) => optional.push((&**inner, true)),
            plain => {
                let (f, member_logits) = fit(plain)?;
                ensemble.fitted.push(f);
                ensemble.logits.push(member_logits);
            }
        }
    }
    let mut record = BTreeMap::new();
    for (inner, tuned) in optional {
        match fit(inner) {
            Ok((f, member_logits)) => {
                weigh_member(&mut ensemble, f, member_logits, tuned, data, &mut record);
            }
            Err(e) => tracing::info!("optional ensemble member not fitted: {e}"),
        }
    }
    let logits = ensemble.mean_logits();
    let mut fitted = combine(ensemble.fitted, ensemble.weights, data.dim, data.models)?;
    fitted.hyperparameters.extend(record);
    Ok((fitted, logits))
}

/// An ensemble being fitted: its members, their logits on the judging rows, and their weights
/// (`None`: equal).
#[derive(Default)]
struct Members {
    fitted: Vec<Fitted>,
    logits: Vec<Vec<f32>>,
    weights: Option<Vec<f32>>,
}

impl Members {
    /// The members' logits averaged with their weights.
    fn mean_logits(&self) -> Vec<f32> {
        let n = self.logits.len();
        (0..self.logits.first().map_or(0, Vec::len))
            .map(|i| match &self.weights {
                None => self.logits.iter().map(|l| l[i]).sum::<f32>() / n as f32,
                Some(w) => self.logits.iter().zip(w).map(|(l, w)| w * l[i]).sum(),
            })
            .collect()
    }
}

/// Adds the fitted `member` to an ensemble, judged by the pairwise loss of the ensemble's mean
/// logits on `data` (validation or out-of-fold rows, in `logits`' row order); the other members
/// keep their proportions. First the plain verdict: an equal share (`1 / (n + 1)` beside `n`
/// members), kept if it lowers the loss. With `tuned`, the best of [`MEMBER_WEIGHTS`] then
/// replaces that verdict (0 or the equal share) if its loss is lower by more than one standard
/// error of the paired difference ([`paired_standard_error`]): a weight away from equal shares
/// is taken only where validation clearly wants it. Writes the verdict, the weight (when
/// tuned) and both losses into `record` (`{kind}.kept`, `{kind}.weight`,
/// `{kind}.ensemble_pairwise_loss_with` / `_without`) either way; returns whether it was kept.
fn weigh_member(
    ensemble: &mut Members,
    member: Fitted,
    member_logits: Vec<f32>,
    tuned: bool,
    data: &SplitData,
    record: &mut BTreeMap<String, f64>,
) -> bool {
    let loss = |l: &[f32]| pairwise_loss(l, &data.y, &data.mask, data.models);
    let current = ensemble.mean_logits();
    let without = loss(&current);
    let n = ensemble.fitted.len();
    let equal = 1.0 / (n + 1) as f32;
    let mix = |w: f32| -> Vec<f32> {
        current
            .iter()
            .zip(&member_logits)
            .map(|(c, m)| (1.0 - w) * c + w * m)
            .collect()
    };
    // The plain verdict: an equal share (alone in the ensemble, all of it), kept if it lowers
    // the loss.
    let equal_logits = if ensemble.weights.is_none() {
        // An equal share among equals: the plain mean, summed as the loaded head sums it.
        ensemble.logits.push(member_logits.clone());
        let mean = ensemble.mean_logits();
        ensemble.logits.pop();
        mean
    } else {
        mix(equal)
    };
    let (mut weight, mut with) = (equal, loss(&equal_logits));
    let mut keep = n == 0 || with < without || without.is_nan();
    let mut reweighed = false;
    if tuned && n > 0 {
        // The best of the weights tried replaces that verdict only where it orders the models
        // better by more than one standard error of the difference.
        let (base, base_loss) = if keep {
            (&equal_logits, with)
        } else {
            (&current, without)
        };
        let best = MEMBER_WEIGHTS
            .iter()
            .map(|&w| {
                let logits = mix(w);
                let l = loss(&logits);
                (w, logits, l)
            })
            .min_by(|a, b| a.2.total_cmp(&b.2));
        if let Some((best_weight, best_logits, best_loss)) = best
            && best_loss < base_loss - paired_standard_error(&best_logits, base, data)
        {
            (weight, with, keep, reweighed) = (best_weight, best_loss, true, true);
        }
    }
    let kind = member.spec.kind();
    record.insert(format!("{kind}.kept"), f64::from(u8::from(keep)));
    if tuned {
        // Rounded: the f32 weight 0.9 is 0.8999999761581421 as an f64.
        let weight = if keep { f64::from(weight) } else { 0.0 };
        record.insert(format!("{kind}.weight"), (weight * 1e6).round() / 1e6);
    }
    record.insert(format!("{kind}.ensemble_pairwise_loss_with"), with);
    record.insert(format!("{kind}.ensemble_pairwise_loss_without"), without);
    if keep {
        // Equal shares stay implicit (`None`) as long as every member has one.
        if n > 0 && (ensemble.weights.is_some() || reweighed) {
            let previous = ensemble
                .weights
                .take()
                .unwrap_or_else(|| vec![1.0 / n as f32; n]);
            ensemble.weights = Some(
                previous
                    .iter()
                    .map(|w| w * (1.0 - weight))
                    .chain([weight])
                    .collect(),
            );
        }
        ensemble.fitted.push(member);
        ensemble.logits.push(member_logits);
    } else {
        tracing::info!(
            kind,
            with,
            without,
            "optional ensemble member dropped: it does not lower the pairwise loss"
        );
    }
    keep
}

/// A trained network head: its spec, the trained variables, and the head rebuilt from them.
fn net_fitted(
    spec: HeadSpec,
    varmap: &VarMap,
    train: &SplitData,
    hyperparameters: BTreeMap<String, f64>,
) -> Result<Fitted> {
    let tensors = snapshot(varmap)?;
    let head = Head::from_tensors(
        &spec,
        tensors.clone(),
        train.dim,
        train.models,
        &Device::Cpu,
    )?;
    Ok(Fitted {
        spec,
        head,
        tensors,
        hyperparameters,
    })
}

/// A training loss of `(logits, targets, mask)`.
type Loss<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

/// The networks' training loss: the masked BCE, plus `μ ·` [`pairwise_bce`] when
/// `params.pairwise_weight` (μ) > 0.
fn net_loss(params: &NetParams) -> impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> {
    let mu = params.pairwise_weight;
    move |logits, y, mask| {
        let bce = masked_bce(logits, y, mask)?;
        if mu > 0.0 {
            Ok((bce + (pairwise_bce(logits, y, mask)? * mu)?)?)
        } else {
            Ok(bce)
        }
    }
}

/// [`train_net`] for the heads that score models (linear, MLP, MF): the loss of
/// [`net_loss`], and μ recorded as `pairwise_weight` when it is used.
fn train_scorer(
    varmap: &VarMap,
    forward: impl Fn(&Tensor, Option<&mut SplitMix>) -> Result<Tensor>,
    train: &SplitData,
    val: &SplitData,
    params: &NetParams,
    rng: &mut SplitMix,
) -> Result<BTreeMap<String, f64>> {
    let mut hp = train_net(varmap, forward, &net_loss(params), train, val, params, rng)?;
    if params.pairwise_weight > 0.0 {
        hp.insert("pairwise_weight".into(), params.pairwise_weight);
    }
    Ok(hp)
}

fn train_net(
    varmap: &VarMap,
    forward: impl Fn(&Tensor, Option<&mut SplitMix>) -> Result<Tensor>,
    loss: Loss,
    train: &SplitData,
    val: &SplitData,
    params: &NetParams,
    rng: &mut SplitMix,
) -> Result<BTreeMap<String, f64>> {
    let device = Device::Cpu;
    let (x, y, mask) = train.tensors(&device)?;
    let (vx, vy, vmask) = val.tensors(&device)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: params.learning_rate,
            weight_decay: params.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut order: Vec<u32> = (0..train.n as u32).collect();
    let mut best = (f64::INFINITY, 0usize);
    let mut saved = snapshot(varmap)?;
    let mut epochs = 0;
    for epoch in 0..params.max_epochs {
        epochs = epoch + 1;
        rng.shuffle(&mut order);
        for chunk in order.chunks(params.batch_size.max(1)) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let (bx, by, bm) = (
                x.index_select(&idx, 0)?,
                y.index_select(&idx, 0)?,
                mask.index_select(&idx, 0)?,
            );
            let logits = forward(&bx, Some(rng))?;
            opt.backward_step(&loss(&logits, &by, &bm)?)?;
        }
        let val_loss = f64::from(loss(&forward(&vx, None)?, &vy, &vmask)?.to_scalar::<f32>()?);
        tracing::debug!(epoch, val_loss, "epoch done");
        if val_loss < best.0 - 1e-5 {
            best = (val_loss, epoch + 1);
            saved = snapshot(varmap)?;
        } else if epoch + 1 - best.1 >= params.patience {
            break;
        }
    }
    restore(varmap, &saved)?;
    Ok(BTreeMap::from([
        ("learning_rate".into(), params.learning_rate),
        ("weight_decay".into(), params.weight_decay),
        ("batch_size".into(), params.batch_size as f64),
        ("max_epochs".into(), params.max_epochs as f64),
        ("patience".into(), params.patience as f64),
        ("epochs_run".into(), epochs as f64),
        ("best_epoch".into(), best.1 as f64),
        ("best_validation_loss".into(), best.0),
        ("seed".into(), params.seed as f64),
    ]))
}

fn fit_knn(
    train: &SplitData,
    val: &SplitData,
    prior: &[f32],
    k: Option<usize>,
    alpha: Option<f32>,
    device: &Device,
) -> Result<Fitted> {
    let index = KeyIndex::new(&train.x, train.n, train.dim)?;
    let (ks, alphas) = knn_grid(k, alpha);
    let kmax = ks.iter().copied().max().unwrap_or(20);
    let neighbours = index.nearest(&val.x, kmax, |_| None)?;
    let tuned = tune_knn(&neighbours, train, prior, val, (&ks, &alphas), device)?;
    let knn = Knn::new(
        index,
        train.y.clone(),
        train.mask.clone(),
        prior.to_vec(),
        tuned.k,
        tuned.alpha,
    )?;
    knn_fitted(knn, tuned.k, tuned.alpha, "validation", tuned.score)
}

/// The kNN's `k` and `α` chosen from `grid` by the [`KnnScore`] of its predictions for
/// `judged`, whose rows have `neighbours` (nearest first) among the rows of `keys`.
struct KnnTuned {
    score: KnnScore,
    k: usize,
    alpha: f32,
    /// The chosen predictions for `judged`, one row of logits per prompt.
    logits: Vec<Vec<f32>>,
}

fn tune_knn(
    neighbours: &[Vec<usize>],
    keys: &SplitData,
    prior: &[f32],
    judged: &SplitData,
    (ks, alphas): (&[usize], &[f32]),
    device: &Device,
) -> Result<KnnTuned> {
    let logits_for = |k: usize, alpha: f32| -> Vec<Vec<f32>> {
        neighbours
            .iter()
            .map(|nb| {
                shrunk_logits(&keys.y, &keys.mask, prior, &nb[..k.min(nb.len())], alpha).collect()
            })
            .collect()
    };
    let (_, y, mask) = judged.tensors(device)?;
    let mut best: Option<KnnTuned> = None;
    for &k in ks {
        for &alpha in alphas {
            let logits = logits_for(k, alpha);
            let flat: Vec<f32> = logits.iter().flatten().copied().collect();
            let flat = Tensor::from_vec(flat, (judged.n, judged.models), device)?;
            let score = KnnScore::of(&flat, judged, &y, &mask)?;
            if best.as_ref().is_none_or(|b| score.better_than(&b.score)) {
                best = Some(KnnTuned {
                    score,
                    k,
                    alpha,
                    logits,
                });
            }
        }
    }
    Ok(best.unwrap_or_else(|| KnnTuned {
        score: KnnScore::NONE,
        k: 20,
        alpha: 0.0,
        logits: logits_for(20, 0.0),
    }))
}

/// What chooses the kNN's `k` and `α`: the pairwise loss, which scores how the logits order the
/// models on each prompt (all that routing uses), then the BCE where it ties or is undefined.
///
/// The BCE alone rewards predicting how hard a prompt is for every model, which a small `k`
/// does well and routing does not use: on the shipped data it picked k = 20 on zeroeval,
/// where the pairwise loss picks 100.
#[derive(Debug, Clone, Copy)]
struct KnnScore {
    bce: f64,
    pairwise: f64,
}

impl KnnScore {
    const NONE: Self = Self {
        bce: f64::NAN,
        pairwise: f64::NAN,
    };

    /// The losses of `logits` `(n, models)` against `data`, whose targets and mask are also
    /// given as tensors (`y`, `mask`).
    fn of(logits: &Tensor, data: &SplitData, y: &Tensor, mask: &Tensor) -> Result<Self> {
        Ok(Self {
            bce: f64::from(masked_bce(logits, y, mask)?.to_scalar::<f32>()?),
            pairwise: pairwise_loss(
                &logits.flatten_all()?.to_vec1()?,
                &data.y,
                &data.mask,
                data.models,
            ),
        })
    }

    fn better_than(&self, other: &Self) -> bool {
        match (self.pairwise.is_nan(), other.pairwise.is_nan()) {
            (false, false) if self.pairwise != other.pairwise => self.pairwise < other.pairwise,
            (false, true) => true,
            (true, false) => false,
            _ => self.bce < other.bce || (other.bce.is_nan() && !self.bce.is_nan()),
        }
    }
}

/// A fitted kNN head, with its tuned `k` and `alpha` and the losses that chose them (`split`
/// names the predictions they were measured on).
fn knn_fitted(knn: Knn, k: usize, alpha: f32, split: &str, score: KnnScore) -> Result<Fitted> {
    let tensors = knn.tensors()?;
    let keys = knn.keys();
    Ok(Fitted {
        spec: HeadSpec::Knn { k, alpha },
        head: Head::Knn(knn),
        tensors,
        hyperparameters: BTreeMap::from([
            ("k".into(), k as f64),
            ("alpha".into(), f64::from(alpha)),
            ("keys".into(), keys as f64),
            (format!("best_{split}_loss"), score.bce),
            (format!("{split}_pairwise_loss"), score.pairwise),
        ]),
    })
}

/// An ensemble of fitted members: their specs, their tensors in one map (distinct prefixes) and
/// their hyper-parameters under `kind.`.
fn combine(
    members: Vec<Fitted>,
    weights: Option<Vec<f32>>,
    dim: usize,
    models: usize,
) -> Result<Fitted> {
    let mut specs = Vec::with_capacity(members.len());
    let mut tensors = HashMap::new();
    let mut hyperparameters = BTreeMap::new();
    for fitted in members {
        let kind = fitted.spec.kind();
        hyperparameters.extend(
            fitted
                .hyperparameters
                .into_iter()
                .map(|(k, v)| (format!("{kind}.{k}"), v)),
        );
        tensors.extend(fitted.tensors);
        specs.push(fitted.spec);
    }
    let spec = HeadSpec::Ensemble {
        members: specs,
        weights,
    };
    let head = Head::from_tensors(&spec, tensors.clone(), dim, models, &Device::Cpu)?;
    Ok(Fitted {
        spec,
        head,
        tensors,
        hyperparameters,
    })
}

/// Cross-fitting on train + validation together: `linear`, `mlp` and `mf` are trained `folds` times, each
/// time without one fold (early-stopping on it) and predicting it; the head is the mean of the
/// `folds` models (bagging). `knn` is fitted on everything, with k and α chosen on its
/// leave-one-out predictions. Returns the head and its out-of-fold logits for every row, which
/// calibration then fits on: `folds` times more data than a validation split, and no row is
/// predicted by a model that saw it.
pub fn fit_cross(
    choice: &HeadChoice,
    data: &SplitData,
    folds: usize,
    params: &NetParams,
) -> Result<(Fitted, Vec<Vec<f32>>)> {
    let device = Device::Cpu;
    match choice {
        HeadChoice::Knn { k, alpha, max_keys } => {
            fit_knn_loo(data, *k, *alpha, *max_keys, params.seed, &device)
        }
        HeadChoice::IfBetter(inner) | HeadChoice::Weighted(inner) => {
            fit_cross(inner, data, folds, params)
        }
        HeadChoice::Ensemble(members) => {
            let (ensemble, mean) = fit_ensemble(members, data, |member| {
                let (f, oof) = fit_cross(member, data, folds, params)?;
                Ok((f, oof.concat()))
            })?;
            let oof = mean.chunks(data.models).map(<[f32]>::to_vec).collect();
            Ok((ensemble, oof))
        }
        HeadChoice::Linear | HeadChoice::Mlp { .. } | HeadChoice::Mf { .. } | HeadChoice::Task => {
            let folds = folds.clamp(2, data.n.max(2));
            let mut order: Vec<usize> = (0..data.n).collect();
            SplitMix::new(params.seed ^ 0xF01D).shuffle(&mut order);
            let mut fold_of = vec![0usize; data.n];
            for (pos, &row) in order.iter().enumerate() {
                fold_of[row] = pos % folds;
            }
            let mut oof = vec![vec![0.0f32; data.models]; data.n];
            let mut tensors = HashMap::new();
            let mut hyperparameters = BTreeMap::from([("folds".to_owned(), folds as f64)]);
            let mut member = None;
            for k in 0..folds {
                let held: Vec<usize> = (0..data.n).filter(|&i| fold_of[i] == k).collect();
                let kept: Vec<usize> = (0..data.n).filter(|&i| fold_of[i] != k).collect();
                let (train, val) = (data.subset(&kept), data.subset(&held));
                let fold_params = NetParams {
                    seed: params.seed.wrapping_add(k as u64),
                    ..params.clone()
                };
                let fitted = fit_head(choice, &train, &val, &fold_params)?;
                let x = Tensor::from_slice(&val.x, (val.n, val.dim), &device)?;
                for (&row, logits) in held.iter().zip(fitted.head.logits(&x)?.to_vec2::<f32>()?) {
                    oof[row] = logits;
                }
                for (name, v) in fitted.hyperparameters {
                    let mean = hyperparameters.entry(name).or_insert(0.0);
                    *mean += v / folds as f64;
                }
                tensors.extend(
                    fitted
                        .tensors
                        .into_iter()
                        .map(|(n, t)| (format!("fold{k}.{n}"), t)),
                );
                member = Some(fitted.spec);
            }
            let member =
                member.ok_or_else(|| candle_core::Error::Msg("no fold was fitted".into()))?;
            let spec = HeadSpec::Bagged {
                folds,
                member: Box::new(member),
            };
            let head = Head::from_tensors(&spec, tensors.clone(), data.dim, data.models, &device)?;
            Ok((
                Fitted {
                    spec,
                    head,
                    tensors,
                    hyperparameters,
                },
                oof,
            ))
        }
    }
}

/// Mean BCE of `σ(l_a − l_b)` against `½ + (y_a − y_b)/2` over every prompt's pairs of observed
/// models whose scores differ: how well the logits order the models on each prompt, which is
/// all that routing uses of them. A pair weighs the product of its two cells' `mask` weights
/// (1 each unless the labels are propensity-weighted), so the criterion that picks k, α and the
/// ensemble's members reads the same weights as the losses that fit them.
pub fn pairwise_loss(logits: &[f32], y: &[f32], mask: &[f32], models: usize) -> f64 {
    let (mut total, mut weight) = (0f64, 0f64);
    for ((l, y), m) in logits
        .chunks_exact(models)
        .zip(y.chunks_exact(models))
        .zip(mask.chunks_exact(models))
    {
        for (w, term) in prompt_pair_losses(l, y, m) {
            total += w * term;
            weight += w;
        }
    }
    if weight == 0.0 {
        f64::NAN
    } else {
        total / weight
    }
}

/// One prompt's terms of [`pairwise_loss`], each with its weight: one per pair of observed
/// models whose scores differ.
fn prompt_pair_losses<'a>(
    l: &'a [f32],
    y: &'a [f32],
    m: &'a [f32],
) -> impl Iterator<Item = (f64, f64)> + 'a {
    let models = l.len();
    (0..models)
        .flat_map(move |a| (a + 1..models).map(move |b| (a, b)))
        .filter(move |&(a, b)| m[a] != 0.0 && m[b] != 0.0 && y[a] != y[b])
        .map(move |(a, b)| {
            let z = f64::from(l[a] - l[b]);
            let t = 0.5 + f64::from(y[a] - y[b]) / 2.0;
            // softplus(z) − t·z, stable for large |z|.
            let term = z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z;
            (f64::from(m[a]) * f64::from(m[b]), term)
        })
}

/// The standard error of `pairwise_loss(a) − pairwise_loss(b)` on `data`'s rows, with the
/// prompts as the sampled units (a prompt's pairs move together): the ratio estimator's
/// linearisation, `√Σ_p (d_p − n_p·D)² / N` for prompt `p`'s weighted difference `d_p` over its
/// pairs of summed weight `n_p`, `N` the pairs' weight in all and the mean difference `D`. NaN
/// without pairs.
fn paired_standard_error(a: &[f32], b: &[f32], data: &SplitData) -> f64 {
    let models = data.models;
    let prompts: Vec<(f64, f64)> = a
        .chunks_exact(models)
        .zip(b.chunks_exact(models))
        .zip(
            data.y
                .chunks_exact(models)
                .zip(data.mask.chunks_exact(models)),
        )
        .map(|((a, b), (y, m))| {
            let (mut d, mut n) = (0.0, 0.0);
            for ((w, ta), (_, tb)) in prompt_pair_losses(a, y, m).zip(prompt_pair_losses(b, y, m)) {
                d += w * (ta - tb);
                n += w;
            }
            (d, n)
        })
        .collect();
    let pairs: f64 = prompts.iter().map(|p| p.1).sum();
    let mean = prompts.iter().map(|p| p.0).sum::<f64>() / pairs;
    prompts
        .iter()
        .map(|(d, n)| (d - n * mean).powi(2))
        .sum::<f64>()
        .sqrt()
        / pairs
}

/// The (k, α) candidates: the given value, or the grid tuned over.
fn knn_grid(k: Option<usize>, alpha: Option<f32>) -> (Vec<usize>, Vec<f32>) {
    (
        k.map_or_else(|| vec![5, 10, 20, 50, 100], |k| vec![k]),
        alpha.map_or_else(|| vec![0.0, 1.0, 3.0, 10.0, 30.0], |a| vec![a]),
    )
}

/// kNN on all rows; k and α chosen by the [`KnnScore`] of leave-one-out predictions (each row's
/// neighbours exclude itself), which are also the out-of-fold logits.
fn fit_knn_loo(
    data: &SplitData,
    k: Option<usize>,
    alpha: Option<f32>,
    max_keys: usize,
    seed: u64,
    device: &Device,
) -> Result<(Fitted, Vec<Vec<f32>>)> {
    let prior = data.prior();
    let (ks, alphas) = knn_grid(k, alpha);
    // The index keeps a sample of the rows when there are too many; every row is still
    // predicted (out of fold: without itself when it is a key).
    let sample = knn_rows(data.n, max_keys, seed);
    let keys = sample.as_ref().map(|rows| data.subset(rows));
    let keys = keys.as_ref().unwrap_or(data);
    let key_of_row: Vec<Option<usize>> = match &sample {
        Some(rows) => {
            let mut key_of_row = vec![None; data.n];
            for (key, &row) in rows.iter().enumerate() {
                key_of_row[row] = Some(key);
            }
            key_of_row
        }
        None => (0..data.n).map(Some).collect(),
    };
    let index = KeyIndex::new(&keys.x, keys.n, keys.dim)?;
    // Each row's nearest other rows, nearest first, computed in chunks.
    let kmax = ks.iter().copied().max().unwrap_or(20);
    let chunk = 256;
    let mut neighbours: Vec<Vec<usize>> = Vec::with_capacity(data.n);
    for (c, rows) in data.x.chunks(chunk * data.dim).enumerate() {
        neighbours.extend(index.nearest(rows, kmax, |row| key_of_row[c * chunk + row])?);
    }
    let tuned = tune_knn(&neighbours, keys, &prior, data, (&ks, &alphas), device)?;
    let (k, alpha) = (tuned.k, tuned.alpha);
    let knn = Knn::new(index, keys.y.clone(), keys.mask.clone(), prior, k, alpha)?;
    Ok((
        knn_fitted(knn, k, alpha, "leave_one_out", tuned.score)?,
        tuned.logits,
    ))
}

/// The rows of `n` a kNN index keeps: `None` (all of them) up to `max`, else `max` rows drawn
/// without replacement ([`SplitMix`] from `seed`), in increasing order.
pub fn knn_rows(n: usize, max: usize, seed: u64) -> Option<Vec<usize>> {
    if n <= max {
        return None;
    }
    let mut rows: Vec<usize> = (0..n).collect();
    SplitMix::new(seed).shuffle(&mut rows);
    rows.truncate(max);
    rows.sort_unstable();
    Some(rows)
}

/// Platt slopes above this are capped (see [`fit_platt`]).
pub const MAX_PLATT_SLOPE: f32 = 1.0;

/// How the head's logits are calibrated on the validation split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Calibration {
    /// One Platt scaling for every model, fitted on all their validation cells together: it
    /// corrects the head's overall over- or under-confidence and leaves the models' order on
    /// each prompt as the head predicted it.
    Shared,
    /// Per-model scalings shrunk toward the shared one by `POOLING_PSEUDO_CELLS` (50)
    /// pseudo-observations: a model keeps its own correction only where its validation cells
    /// clearly support it (a head that is systematically off for a model trained on few
    /// prompts), not the few points of noise in a few hundred cells.
    #[default]
    Pooled,
    /// One Platt scaling per model, on its own validation cells alone. Each model's intercept
    /// then carries the noise of a few hundred prompts (a few quality points), which shifts
    /// that model against every other on every prompt: on routerbench it cut savings within
    /// 5 % of the best model from 80 % to 53 % for a k = 100 kNN head.
    PerModel,
}

/// Strength of [`Calibration::Pooled`]'s pull toward the shared scaling, in validation cells.
pub const POOLING_PSEUDO_CELLS: f64 = 50.0;

/// Platt parameters, one per model in model order, fitted on the validation split's logits.
pub fn calibrate(logits: &[Vec<f32>], val: &SplitData, mode: Calibration) -> Vec<Platt> {
    // Fits σ(a·(s.a·z + s.b) + b) toward the identity, i.e. toward `s`, and composes it.
    let fit = |models: &[usize], s: Platt, l2: Option<f64>| {
        let (mut z, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for (i, row) in logits.iter().enumerate() {
            for &m in models {
                let k = i * val.models + m;
                if val.mask[k] > 0.0 {
                    z.push(s.a * row[m] + s.b);
                    y.push(val.y[k]);
                    w.push(val.mask[k]);
                }
            }
        }
        // Without pooling, a ridge of one pseudo-observation per 100 keeps tiny validation
        // sets sane.
        let l2 = l2.unwrap_or(1.0 + z.len() as f64 / 100.0);
        let max_slope = if s.a > 0.0 {
            MAX_PLATT_SLOPE / s.a
        } else {
            MAX_PLATT_SLOPE
        };
        let p = fit_platt(&z, &y, &w, l2, max_slope);
        Platt {
            a: p.a * s.a,
            b: p.a * s.b + p.b,
        }
    };
    let all: Vec<usize> = (0..val.models).collect();
    let shared = fit(&all, Platt::IDENTITY, None);
    match mode {
        Calibration::Shared => vec![shared; val.models],
        Calibration::Pooled => (0..val.models)
            .map(|m| fit(&[m], shared, Some(POOLING_PSEUDO_CELLS)))
            .collect(),
        Calibration::PerModel => (0..val.models)
            .map(|m| fit(&[m], Platt::IDENTITY, None))
            .collect(),
    }
}

/// Applies calibration to logits.
pub fn apply_calibration(logits: &[Vec<f32>], platt: &[Platt]) -> Vec<Vec<f32>> {
    logits
        .iter()
        .map(|row| row.iter().zip(platt).map(|(&z, p)| p.apply(z)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::heads::calibration::sigmoid;

    #[test]
    fn shared_calibration_keeps_the_models_order_pooled_moves_it_less() {
        // Two models with the same logits on every prompt; model 1 happens to be right more
        // often on this small validation set. Shared: one scaling, equal predictions.
        // Per model: model 1 is lifted above model 0 on every prompt.
        let logits: Vec<Vec<f32>> = (0..40).map(|i| vec![(i % 5) as f32 - 2.0; 2]).collect();
        let y: Vec<f32> = (0..40)
            .flat_map(|i| [f32::from(i % 3 == 0), f32::from(i % 3 != 2)])
            .collect();
        let val = SplitData {
            x: vec![0.0; 40],
            y,
            mask: vec![1.0; 80],
            n: 40,
            dim: 1,
            models: 2,
            task: vec![None; 40],
            task_names: Vec::new(),
        };
        let shared = calibrate(&logits, &val, Calibration::Shared);
        assert_eq!(shared[0], shared[1]);
        let per_model = calibrate(&logits, &val, Calibration::PerModel);
        let gap = |p: &[Platt]| p[1].apply(0.0) - p[0].apply(0.0);
        assert!(gap(&per_model) > 0.1, "{per_model:?}");
        // Pooled: in between, pulled toward the shared scaling.
        let pooled = calibrate(&logits, &val, Calibration::Pooled);
        assert!(
            gap(&pooled) > 0.0 && gap(&pooled) < gap(&per_model),
            "{pooled:?}"
        );
    }

    #[test]
    fn an_optional_member_is_kept_only_if_it_orders_the_models_better() -> Result<()> {
        let data = two_prompts_two_models();
        // The ensemble so far is unsure: every logit 0.
        let mut ensemble = Members {
            fitted: vec![linear_member()?],
            logits: vec![vec![0.0; 4]],
            weights: None,
        };
        let mut record = BTreeMap::new();
        // A member with the orders reversed is dropped…
        let wrong = vec![-1.0, 1.0, 1.0, -1.0];
        let member = linear_member()?;
        assert!(!weigh_member(
            &mut ensemble,
            member,
            wrong,
            false,
            &data,
            &mut record
        ));
        assert_eq!((ensemble.fitted.len(), ensemble.logits.len()), (1, 1));
        assert_eq!(record["linear.kept"], 0.0);
        // …one with the right orders is kept, with an equal share (implicit).
        let right = vec![1.0, -1.0, -1.0, 1.0];
        let member = linear_member()?;
        assert!(weigh_member(
            &mut ensemble,
            member,
            right,
            false,
            &data,
            &mut record
        ));
        assert_eq!((ensemble.fitted.len(), ensemble.logits.len()), (2, 2));
        assert_eq!(ensemble.weights, None);
        assert_eq!(ensemble.mean_logits(), vec![0.5, -0.5, -0.5, 0.5]);
        assert_eq!(record["linear.kept"], 1.0);
        assert!(!record.contains_key("linear.weight"));
        assert!(
            record["linear.ensemble_pairwise_loss_with"]
                < record["linear.ensemble_pairwise_loss_without"]
        );
        Ok(())
    }

    #[test]
    fn a_tuned_member_gets_the_weight_that_orders_the_models_best() -> Result<()> {
        let data = two_prompts_two_models();
        // Two members so far, each with the first prompt's order wrong; the new member has
        // both orders right, so the more it weighs the better, up to the largest weight tried.
        let mut ensemble = Members {
            fitted: vec![linear_member()?, linear_member()?],
            logits: vec![vec![-1.0, 1.0, -1.0, 1.0], vec![-1.0, 1.0, -1.0, 1.0]],
            weights: None,
        };
        let mut record = BTreeMap::new();
        let right = vec![2.0, -2.0, -2.0, 2.0];
        let member = linear_member()?;
        assert!(weigh_member(
            &mut ensemble,
            member,
            right,
            true,
            &data,
            &mut record
        ));
        let top = MEMBER_WEIGHTS[MEMBER_WEIGHTS.len() - 1];
        assert_eq!(record["linear.weight"], 0.9);
        let weights = ensemble.weights.clone().unwrap_or_default();
        let want = [(1.0 - top) / 2.0, (1.0 - top) / 2.0, top];
        assert_eq!(weights.len(), 3);
        for (w, want) in weights.iter().zip(want) {
            assert!((w - want).abs() < 1e-6, "{weights:?}");
        }
        // The mean logits are the weighted ones: 0.05·(−1) + 0.05·(−1) + 0.9·2 on the first cell.
        assert!((ensemble.mean_logits()[0] - (top * 2.0 - (1.0 - top))).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn a_tuned_weight_needs_a_gain_beyond_its_standard_error() -> Result<()> {
        let data = two_prompts_two_models();
        // One unsure member so far. The new one is right, confidently, on the first prompt
        // and wrong, mildly, on the second: weighing it 0.1 beats the equal share (0.5) on
        // the mean, but only by trading one prompt against the other.
        let mut ensemble = Members {
            fitted: vec![linear_member()?],
            logits: vec![vec![0.0; 4]],
            weights: None,
        };
        let member_logits = vec![3.0, -3.0, 1.0, -1.0];
        let loss = |l: &[f32]| pairwise_loss(l, &data.y, &data.mask, 2);
        let at = |w: f32| -> Vec<f32> { member_logits.iter().map(|m| w * m).collect() };
        assert!(loss(&at(0.1)) < loss(&at(0.5)));
        assert!(loss(&at(0.1)) > loss(&at(0.5)) - paired_standard_error(&at(0.1), &at(0.5), &data));
        let mut record = BTreeMap::new();
        let member = linear_member()?;
        assert!(weigh_member(
            &mut ensemble,
            member,
            member_logits,
            true,
            &data,
            &mut record
        ));
        // So it keeps the equal share, which stays implicit.
        assert_eq!(record["linear.weight"], 0.5);
        assert_eq!(ensemble.weights, None);
        Ok(())
    }

    #[test]
    fn head_names_parse_and_the_default_is_spelled_as_built() {
        let params = HeadParams::DEFAULT;
        assert_eq!(
            HeadChoice::parse(DEFAULT_ENSEMBLE, &params),
            Ok(HeadChoice::ensemble(&params))
        );
        assert_eq!(
            HeadChoice::parse("ensemble", &params),
            Ok(HeadChoice::ensemble(&params))
        );
        let small = HeadParams {
            hidden: 8,
            mf_dim: 2,
            knn_k: Some(3),
            ..params
        };
        assert_eq!(
            HeadChoice::parse("mlp+mf?+knn~", &small),
            Ok(HeadChoice::Ensemble(vec![
                HeadChoice::Mlp {
                    hidden: 8,
                    dropout: 0.2
                },
                HeadChoice::IfBetter(Box::new(HeadChoice::Mf { dim: 2 })),
                HeadChoice::Weighted(Box::new(HeadChoice::Knn {
                    k: Some(3),
                    alpha: None,
                    max_keys: 20_000,
                })),
            ]))
        );
        for bad in ["", "mpl", "mlp+", "ensemble+svm", "task~~x"] {
            let err = HeadChoice::parse(bad, &params).err().unwrap_or_default();
            assert!(err.contains("unknown head"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_training_pairwise_term_is_the_pairwise_loss() -> Result<()> {
        // Over ordered pairs it counts each pair twice, with the same term both ways, so it
        // equals the criterion's mean over unordered pairs, weights included.
        let y = [1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.0, 0.75, 0.25];
        let mask = [2.0, 1.5, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0];
        let logits = [2.0, 0.5, -9.0, 0.0, 3.0, -3.0, 5.0, 1.0, -0.5];
        let t = |v: &[f32]| Tensor::from_slice(v, (3, 3), &Device::Cpu);
        let got = pairwise_bce(&t(&logits)?, &t(&y)?, &t(&mask)?)?.to_scalar::<f32>()?;
        let expected = pairwise_loss(&logits, &y, &mask, 3);
        assert!(
            (f64::from(got) - expected).abs() < 1e-6,
            "{got} vs {expected}"
        );
        // Beyond one chunk of rows, the chunks add up to the same mean.
        let (n, m) = (2 * PAIR_ROWS + 7, 4);
        let mut rng = SplitMix::new(7);
        let mut draw =
            |f: fn(f32) -> f32| -> Vec<f32> { (0..n * m).map(|_| f(rng.next_f32())).collect() };
        let (big_l, big_y, big_m) = (
            draw(|u| 6.0 * u - 3.0),
            draw(|u| (4.0 * u).floor() / 3.0),
            draw(|u| if u < 0.2 { 0.0 } else { 0.5 + u }),
        );
        let big = |v: &[f32]| Tensor::from_slice(v, (n, m), &Device::Cpu);
        let chunked = pairwise_bce(&big(&big_l)?, &big(&big_y)?, &big(&big_m)?)?;
        let chunked = f64::from(chunked.to_scalar::<f32>()?);
        let expected = pairwise_loss(&big_l, &big_y, &big_m, m);
        assert!((chunked - expected).abs() < 1e-5, "{chunked} vs {expected}");
        // μ = 0 is the BCE alone; μ = 1 adds the pairwise term.
        let zero = NetParams {
            learning_rate: 1e-3,
            weight_decay: 0.0,
            batch_size: 1,
            max_epochs: 1,
            patience: 1,
            seed: 0,
            folds: 0,
            pairwise_weight: 0.0,
        };
        let one = NetParams {
            pairwise_weight: 1.0,
            ..zero.clone()
        };
        let bce = masked_bce(&t(&logits)?, &t(&y)?, &t(&mask)?)?.to_scalar::<f32>()?;
        let loss = |p: &NetParams| -> Result<f32> {
            Ok(net_loss(p)(&t(&logits)?, &t(&y)?, &t(&mask)?)?.to_scalar::<f32>()?)
        };
        assert_eq!(loss(&zero)?, bce);
        assert!((loss(&one)? - (bce + got)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn the_paired_standard_error_by_hand() {
        let data = two_prompts_two_models();
        // a: unsure on both prompts, ln 2 each; b: [1, 0] on both, so softplus(1) − 1 on the
        // first (model 0 won) and softplus(1) on the second. The per-prompt differences are
        // ln 2 − softplus(1) + 1 and ln 2 − softplus(1), one apart: the standard error is
        // √(2 · 0.5²) / 2.
        let a = vec![0.0; 4];
        let b = vec![1.0, 0.0, 1.0, 0.0];
        let se = paired_standard_error(&a, &b, &data);
        assert!((se - 0.5f64.sqrt() / 2.0).abs() < 1e-6, "{se}");
        assert!(paired_standard_error(&a, &a, &data).abs() < 1e-12);
    }

    fn two_prompts_two_models() -> SplitData {
        // Two prompts, two models: model 0 wins the first, model 1 the second.
        SplitData {
            x: vec![0.0; 2],
            y: vec![1.0, 0.0, 0.0, 1.0],
            mask: vec![1.0; 4],
            n: 2,
            dim: 1,
            models: 2,
            task: vec![None; 2],
            task_names: Vec::new(),
        }
    }

    fn linear_member() -> Result<Fitted> {
        let linear = candle_nn::Linear::new(
            Tensor::zeros((2, 1), DType::F32, &Device::Cpu)?,
            Some(Tensor::zeros(2, DType::F32, &Device::Cpu)?),
        );
        Ok(Fitted {
            spec: HeadSpec::Linear {},
            head: Head::Linear(linear),
            tensors: HashMap::new(),
            hyperparameters: BTreeMap::new(),
        })
    }

    #[test]
    fn masked_cells_do_not_change_the_loss() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.1]], &dev)?;
        let y = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev)?;
        let mask = Tensor::new(&[[1.0f32, 1.0], [1.0, 0.0]], &dev)?;
        let base = masked_bce(&logits, &y, &mask)?.to_scalar::<f32>()?;
        // Change the target and the logit of the masked cell: the loss must not move.
        let logits2 = Tensor::new(&[[0.3f32, -1.2], [2.0, 9.0]], &dev)?;
        let y2 = Tensor::new(&[[1.0f32, 0.0], [0.0, 0.0]], &dev)?;
        let other = masked_bce(&logits2, &y2, &mask)?.to_scalar::<f32>()?;
        assert_eq!(base, other);
        // And it is the mean BCE of the three evaluated cells (reference: −ln σ(±z) by hand).
        let bce = |z: f32, y: f32| -(y * sigmoid(z).ln() + (1.0 - y) * (1.0 - sigmoid(z)).ln());
        let expected = (bce(0.3, 1.0) + bce(-1.2, 0.0) + bce(2.0, 0.0)) / 3.0;
        assert!((base - expected).abs() < 1e-5, "{base} vs {expected}");
        Ok(())
    }

    #[test]
    fn pairwise_loss_scores_the_order_within_each_prompt() {
        // Prompt 1: models 0 and 1 differ (0 right), 2 is masked. Prompt 2: all tie (no pair).
        // Prompt 3: 1 beats 2 by a graded 0.5 (target ¾), model 0 is masked.
        let y = [1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.0, 0.75, 0.25];
        let mask = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0];
        let logits = [2.0, 0.5, -9.0, 0.0, 3.0, -3.0, 5.0, 1.0, 1.0];
        // Reference by hand: softplus(z) − t·z for z = 2 − 0.5 (t = 1) and z = 0 (t = ¾).
        let softplus = |z: f64| (1.0 + z.exp()).ln();
        let expected = ((softplus(1.5) - 1.5) + softplus(0.0)) / 2.0;
        let got = pairwise_loss(&logits, &y, &mask, 3);
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        // Adding the same amount to every logit of a prompt (its difficulty) changes nothing.
        let shifted: Vec<f32> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| l + (i / 3) as f32)
            .collect();
        assert!((pairwise_loss(&shifted, &y, &mask, 3) - got).abs() < 1e-9);
        // No differing pair at all: undefined, so the BCE decides.
        assert!(pairwise_loss(&[0.0, 1.0], &[1.0, 1.0], &[1.0, 1.0], 2).is_nan());
        // Propensity-weighted cells: prompt 1's pair weighs 2 × 1.5 = 3, prompt 3's 0.5 × 1.
        let weighted = [2.0, 1.5, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0];
        let expected = (3.0 * (softplus(1.5) - 1.5) + 0.5 * softplus(0.0)) / 3.5;
        let got = pairwise_loss(&logits, &y, &weighted, 3);
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        let a = KnnScore {
            bce: 0.5,
            pairwise: f64::NAN,
        };
        let b = KnnScore {
            bce: 0.6,
            pairwise: f64::NAN,
        };
        assert!(a.better_than(&b) && !b.better_than(&a));
        let c = KnnScore {
            bce: 0.9,
            pairwise: 0.3,
        };
        let d = KnnScore {
            bce: 0.4,
            pairwise: 0.31,
        };
        assert!(c.better_than(&d), "the pairwise loss decides first");
    }

    #[test]
    fn a_knn_index_keeps_a_seeded_sample_beyond_its_cap() {
        assert_eq!(knn_rows(10, 10, 0), None);
        let rows = knn_rows(100, 30, 7).unwrap_or_default();
        assert_eq!(rows.len(), 30);
        assert!(rows.windows(2).all(|w| w[0] < w[1]) && rows[29] < 100);
        assert_eq!(knn_rows(100, 30, 7), Some(rows.clone()));
        assert_ne!(knn_rows(100, 30, 8), Some(rows));
    }
}
