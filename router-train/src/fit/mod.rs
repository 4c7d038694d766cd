//! Fitting the quality heads: masked BCE with AdamW and early stopping for `linear`, `mlp` and
//! `mf`, a validation-tuned shrunk kNN for `knn`, the ensemble of them, then per-model Platt
//! calibration on validation. This file holds the head choices and [`fit_head`]; the training
//! loops are in `nets`, the losses and validation criteria in `loss`, the kNN in `knn`, the
//! ensemble in `ensemble`, cross-fitting in `cross` and calibration in `calibrate`.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use router_core::heads::calibration::{Platt, fit_platt, logit};
use router_core::heads::index::KeyIndex;
use router_core::heads::{Head, HeadSpec, Knn, Mf, Mlp, TaskMixture, shrunk_logits};

use crate::error::{Result, TrainError};

mod calibrate;
mod cross;
mod ensemble;
mod knn;
mod loss;
mod nets;

pub use self::calibrate::{
    Calibration, MAX_PLATT_SLOPE, POOLING_PSEUDO_CELLS, apply_calibration, calibrate,
};
pub use self::cross::fit_cross;
pub use self::knn::knn_rows;
pub use self::loss::{masked_bce, masked_softmax_ce, pairwise_bce, pairwise_loss};
use self::{ensemble::*, knn::*, loss::*, nets::*};

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

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::heads::calibration::sigmoid;

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
}
