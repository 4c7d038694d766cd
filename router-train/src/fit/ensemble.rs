//! The ensemble: members fitted, weighed by how well they order the models on validation, and
//! combined into one head.

use super::*;

/// Fits an ensemble's members with `fit`, which returns a member and its logits on `data`'s
/// rows (row-major): the plain members first, with equal weights, then each
/// [`HeadChoice::IfBetter`] or [`HeadChoice::Weighted`] one, weighed by [`weigh_member`] (and
/// dropped, with a log line, when it cannot be fitted). Returns the ensemble and the (weighted)
/// mean logits of its kept members on `data`.
pub(super) fn fit_ensemble(
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
pub(super) struct Members {
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
pub(super) fn weigh_member(
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

/// An ensemble of fitted members: their specs, their tensors in one map (distinct prefixes) and
/// their hyper-parameters under `kind.`.
pub(super) fn combine(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
