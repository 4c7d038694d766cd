//! The network heads' training loops (`linear`, `mlp`, `mf`, the `task` classifier): AdamW with
//! early stopping on validation, seeded initialisation.

use super::*;

/// The task-mixture head: a softmax classifier of the task column on the embeddings (AdamW,
/// early stopping on the validation cross-entropy), and per task each model's mean training
/// score, shrunk toward the model's mean by one pseudo-observation (a task training never saw
/// predicts the model's mean).
pub(super) fn fit_task(
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
pub(super) fn seeded_init(
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

pub(super) fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

pub(super) fn restore(varmap: &VarMap, saved: &HashMap<String, Tensor>) -> Result<()> {
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

/// A trained network head: its spec, the trained variables, and the head rebuilt from them.
pub(super) fn net_fitted(
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
pub(super) fn net_loss(params: &NetParams) -> impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> {
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
pub(super) fn train_scorer(
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

pub(super) fn train_net(
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
