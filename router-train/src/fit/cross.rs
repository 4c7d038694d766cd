//! Cross-fitting: every row predicted by models that never saw it.

use super::*;

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
