//! Fine-tuning the encoder's top layers on the routing loss (`router-train fit
//! --finetune-layers N`).
//!
//! The top `N` transformer layers train together with a linear probe (one logit per model on
//! the embedding) on the heads' loss, masked BCE plus μ times the pairwise term, everything
//! below them frozen. The hidden states below the trained layers are computed once, by the same
//! int8 encoder that serves, so an epoch costs only `N` layers' forward and backward. Before the
//! layers move, the probe is fitted alone on the frozen embedding (linear probing, then
//! fine-tuning: a random probe would send noise into the layers; the probe stops early on the
//! validation loss). The validation loss is checked four times per epoch; the layers of the
//! best check are kept (check 0: the base layers, so fine-tuning never returns layers that
//! validate worse than the base).
//!
//! What was taken from the literature: RouterDC (Chen et al., NeurIPS 2024) trains the query
//! encoder with a contrastive loss that ranks the models per prompt; our pairwise term is
//! that ranking signal on our soft labels (a model-pair BCE instead of a top-k/bottom-k
//! softmax), and the heads keep their own BCE for calibrated levels. RouteLLM's BERT router
//! fine-tunes the whole encoder with a small classification head, a small learning rate and a
//! few epochs; here only the top layers train (2 CPU cores), with the same short schedule.
//!
//! The result is the layers' tensors in [`DELTA_FILE`] under the base file's names; the heads
//! are then fitted on embeddings of the fine-tuned encoder, which serving loads as base + delta.

mod layer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use router_core::encoder::{DELTA_FILE, Encoder, Pooling, Precision};
use router_core::rng::SplitMix;

use crate::error::{Result, TrainError};
use crate::fit::{SplitData, masked_bce, pairwise_bce};
use layer::{TENSORS, TrainableLayer};

/// Validation checks per epoch of fine-tuning (early stopping is decided at each).
const CHECKS_PER_EPOCH: usize = 4;

/// `--finetune-*` options.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneParams {
    /// The top layers trained (at least 1).
    pub layers: usize,
    /// AdamW's learning rate for the layers.
    pub learning_rate: f64,
    /// AdamW's learning rate for the probe.
    pub probe_learning_rate: f64,
    pub max_epochs: usize,
    /// Validation checks (four per epoch) without a better loss before stopping.
    pub patience: usize,
    /// Prompts per step.
    pub batch_size: usize,
    /// μ in `BCE + μ · pairwise BCE`.
    pub pairwise_weight: f64,
    pub seed: u64,
}

impl FinetuneParams {
    pub const DEFAULT: Self = Self {
        layers: 1,
        learning_rate: 3e-5,
        probe_learning_rate: 1e-4,
        max_epochs: 3,
        patience: 3,
        batch_size: 32,
        pairwise_weight: 1.0,
        seed: 0,
    };
}

/// What fine-tuning wrote and how it went.
#[derive(Debug, Clone)]
pub struct Finetuned {
    /// The delta, in the output directory.
    pub delta: PathBuf,
    pub hyperparameters: BTreeMap<String, f64>,
}

/// One split as the trained layers see it.
struct Inputs {
    /// Each prompt's hidden state below the trained layers, `tokens × hidden`.
    states: Vec<Vec<f32>>,
    /// Each prompt's base embedding (its blocks at depths below the trained layers are kept).
    frozen: Vec<Vec<f32>>,
    y: Tensor,
    mask: Tensor,
}

/// Fine-tunes the top `params.layers` of `encoder` on `train` (early stopping on `val`) and
/// writes the delta into `out`. `train_texts` and `val_texts` are the splits' prompts, in the
/// splits' order.
pub fn finetune(
    encoder: &Encoder,
    (train_texts, train): (&[&str], &SplitData),
    (val_texts, val): (&[&str], &SplitData),
    params: &FinetuneParams,
    out: &Path,
    progress: bool,
) -> Result<Finetuned> {
    let plan = Plan::of(encoder, params)?;
    let train_in = plan.inputs(encoder, train_texts, train, progress)?;
    let val_in = plan.inputs(encoder, val_texts, val, progress)?;

    let layers = VarMap::new();
    plan.load_base(encoder, &layers)?;
    let stack = plan.build(encoder, &layers)?;
    let probe_vars = VarMap::new();
    let probe = candle_nn::linear(
        encoder.dim(),
        train.models,
        VarBuilder::from_varmap(&probe_vars, DType::F32, &Device::Cpu).pp("probe"),
    )?;
    let loss = |logits: &Tensor, y: &Tensor, mask: &Tensor| -> Result<Tensor> {
        let bce = masked_bce(logits, y, mask)?;
        Ok((bce + (pairwise_bce(logits, y, mask)? * params.pairwise_weight)?)?)
    };
    let frozen = |inputs: &Inputs| -> Result<Tensor> {
        let rows: Vec<f32> = inputs.frozen.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(
            rows,
            (inputs.frozen.len(), encoder.dim()),
            &Device::Cpu,
        )?)
    };
    let probe_steps = fit_probe(
        &probe,
        &probe_vars,
        (&frozen(&train_in)?, &train_in),
        (&frozen(&val_in)?, &val_in),
        &loss,
    )?;

    let mut rng = SplitMix::new(params.seed);
    let mut layer_opt = adamw(&layers, params.learning_rate)?;
    let mut probe_opt = adamw(&probe_vars, params.probe_learning_rate)?;
    let validate = |stack: &Stack| -> Result<f64> {
        let logits = stack.logits(&probe, &val_in, params.batch_size)?;
        Ok(f64::from(
            loss(&logits, &val_in.y, &val_in.mask)?.to_scalar::<f32>()?,
        ))
    };
    let base_loss = validate(&stack)?;
    // (loss, step) of the best check; step 0: the base layers.
    let mut best = (base_loss, 0usize);
    let mut saved = snapshot(&layers)?;
    let batches = length_batches(&train_in.states, plan.hidden, params.batch_size);
    let check_every = batches.len().div_ceil(CHECKS_PER_EPOCH).max(1);
    let bar = epoch_bar(progress, batches.len() * params.max_epochs);
    let mut step = 0;
    'epochs: for _ in 0..params.max_epochs {
        let mut order = batches.clone();
        rng.shuffle(&mut order);
        for rows in &order {
            let logits = probe.forward(&stack.embed(&train_in, rows)?)?;
            let idx = Tensor::from_slice(&as_u32(rows), rows.len(), &Device::Cpu)?;
            let (y, mask) = (
                train_in.y.index_select(&idx, 0)?,
                train_in.mask.index_select(&idx, 0)?,
            );
            let grads = loss(&logits, &y, &mask)?.backward()?;
            layer_opt.step(&grads)?;
            probe_opt.step(&grads)?;
            step += 1;
            bar.inc(1);
            if step % check_every != 0 {
                continue;
            }
            let val_loss = validate(&stack)?;
            bar.set_message(format!(
                "validation loss {val_loss:.5} (base {base_loss:.5})"
            ));
            tracing::info!(step, val_loss, base_loss, "fine-tuning check");
            if val_loss < best.0 - 1e-5 {
                best = (val_loss, step);
                saved = snapshot(&layers)?;
            } else if (step - best.1) / check_every >= params.patience {
                break 'epochs;
            }
        }
    }
    bar.finish_and_clear();
    let delta = out.join(DELTA_FILE);
    std::fs::create_dir_all(out).map_err(|source| router_core::Error::Io {
        path: out.to_owned(),
        source,
    })?;
    candle_core::safetensors::save(&saved, &delta)?;
    let hyperparameters = BTreeMap::from([
        ("finetune_layers".into(), params.layers as f64),
        ("finetune_learning_rate".into(), params.learning_rate),
        (
            "finetune_probe_learning_rate".into(),
            params.probe_learning_rate,
        ),
        ("finetune_probe_steps".into(), probe_steps as f64),
        ("finetune_batch_size".into(), params.batch_size as f64),
        ("finetune_pairwise_weight".into(), params.pairwise_weight),
        ("finetune_max_epochs".into(), params.max_epochs as f64),
        ("finetune_steps_run".into(), step as f64),
        ("finetune_best_step".into(), best.1 as f64),
        ("finetune_steps_per_epoch".into(), batches.len() as f64),
        ("finetune_base_validation_loss".into(), base_loss),
        ("finetune_best_validation_loss".into(), best.0),
        ("finetune_seed".into(), params.seed as f64),
    ]);
    Ok(Finetuned {
        delta,
        hyperparameters,
    })
}

/// Which layers train and how the embedding is put together from them.
struct Plan {
    /// The depth of the frozen states (the trained layers are `start..depth`).
    start: usize,
    depth: usize,
    /// The pooled depths, in order.
    pooled: Vec<usize>,
    hidden: usize,
    pooling: Pooling,
}

impl Plan {
    fn of(encoder: &Encoder, params: &FinetuneParams) -> Result<Self> {
        let fail = |m: String| Err(TrainError::Finetune(m));
        let shape = encoder.shape();
        let depth = shape.config.num_hidden_layers;
        if !shape.is_bert {
            return fail(format!(
                "{} is not a BERT model; fine-tuning trains BERT layers only",
                encoder.model_id()
            ));
        }
        if encoder.precision() != Precision::Int8 {
            return fail(
                "the frozen layers run in int8, as serving runs them: use --precision int8 on \
                 the CPU"
                    .to_owned(),
            );
        }
        if encoder.delta().is_some() {
            return fail("the encoder is already fine-tuned".to_owned());
        }
        if params.layers == 0 || params.layers > depth {
            return fail(format!(
                "{} layers: from 1 to the encoder's {depth}",
                params.layers
            ));
        }
        let start = depth - params.layers;
        let pooled = match encoder.layers() {
            [] => vec![depth],
            layers => layers.to_vec(),
        };
        if pooled.last().is_none_or(|&d| d <= start) {
            return fail(format!(
                "the embedding pools layers {pooled:?}, none above the trained ones' input \
                 (layer {start}): nothing would change"
            ));
        }
        Ok(Self {
            start,
            depth,
            pooled,
            hidden: shape.config.hidden_size,
            pooling: encoder.pooling(),
        })
    }

    fn inputs(
        &self,
        encoder: &Encoder,
        texts: &[&str],
        data: &SplitData,
        progress: bool,
    ) -> Result<Inputs> {
        let bar = if progress {
            ProgressBar::new(texts.len() as u64).with_style(
                ProgressStyle::with_template(&format!(
                    "hidden states after layer {} {{bar:40}} {{pos}}/{{len}} prompts [{{elapsed_precise}} < {{eta_precise}}]",
                    self.start
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        } else {
            ProgressBar::hidden()
        };
        let (mut states, mut frozen) = (Vec::new(), Vec::new());
        for chunk in texts.chunks(32) {
            let batch = chunk
                .iter()
                .map(|t| encoder.tokenize(t))
                .collect::<router_core::Result<Vec<_>>>()?;
            let embedded = encoder.embed_with_states(&batch, self.start)?;
            frozen.extend(embedded.embeddings);
            states.extend(embedded.states);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let cells = (data.n, data.models);
        Ok(Inputs {
            states,
            frozen,
            y: Tensor::from_slice(&data.y, cells, &Device::Cpu)?,
            mask: Tensor::from_slice(&data.mask, cells, &Device::Cpu)?,
        })
    }

    /// Puts the base weights of the trained layers into `vars`, under the base file's names.
    fn load_base(&self, encoder: &Encoder, vars: &VarMap) -> Result<()> {
        let shape = encoder.shape();
        #[expect(
            unsafe_code,
            reason = "mmap of the encoder's safetensors file, which is only read"
        )]
        // SAFETY: read-only; the project never writes to a model file it has loaded.
        let base = unsafe { MmapedSafetensors::new(&shape.weights)? };
        let mut data = vars
            .data()
            .lock()
            .map_err(|_| TrainError::Finetune("a poisoned lock".to_owned()))?;
        for layer in self.start..self.depth {
            for name in TENSORS {
                let name = shape.layer_tensor(layer, name);
                let tensor = base.load(&name, &Device::Cpu)?.to_dtype(DType::F32)?;
                data.insert(name, Var::from_tensor(&tensor)?);
            }
        }
        Ok(())
    }

    fn build<'a>(&'a self, encoder: &Encoder, vars: &VarMap) -> Result<Stack<'a>> {
        let shape = encoder.shape();
        let vb = VarBuilder::from_varmap(vars, DType::F32, &Device::Cpu);
        let layers = (self.start..self.depth)
            .map(|l| {
                let prefix = shape.layer_tensor(l, "");
                TrainableLayer::load(vb.pp(prefix.trim_end_matches('.')), shape)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stack { plan: self, layers })
    }
}

/// The trained layers and the embedding they make.
struct Stack<'a> {
    plan: &'a Plan,
    layers: Vec<TrainableLayer>,
}

impl Stack<'_> {
    /// The embeddings `(rows, dim)` of `rows`: the frozen blocks as they were, the blocks of
    /// trained depths pooled from the layers' output, L2-normalised and scaled by 1/√k.
    fn embed(&self, inputs: &Inputs, rows: &[usize]) -> Result<Tensor> {
        let plan = self.plan;
        let h = plan.hidden;
        let width = rows
            .iter()
            .map(|&r| inputs.states[r].len() / h)
            .max()
            .unwrap_or(1);
        let (mut x, mut mask) = (Vec::new(), Vec::new());
        for &r in rows {
            let state = &inputs.states[r];
            let tokens = state.len() / h;
            x.extend_from_slice(state);
            x.extend(std::iter::repeat_n(0f32, (width - tokens) * h));
            mask.extend((0..width).map(|t| f32::from(u8::from(t < tokens))));
        }
        let b = rows.len();
        let mut x = Tensor::from_vec(x, (b, width, h), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (b, width), &Device::Cpu)?;
        // 0 on tokens, −10⁴ on padding.
        let additive = mask
            .affine(10_000.0, -10_000.0)?
            .reshape((b, 1, 1, width))?;
        let scale = 1.0 / (plan.pooled.len() as f64).sqrt();
        let mut trained = HashMap::new();
        for (depth, layer) in (plan.start + 1..).zip(&self.layers) {
            x = layer.forward(&x, &additive)?;
            if plan.pooled.contains(&depth) {
                trained.insert(depth, (pool(&x, &mask, plan.pooling)? * scale)?);
            }
        }
        let mut blocks = Vec::with_capacity(plan.pooled.len());
        for (slot, depth) in plan.pooled.iter().enumerate() {
            match trained.remove(depth) {
                Some(block) => blocks.push(block),
                None => {
                    let frozen: Vec<f32> = rows
                        .iter()
                        .flat_map(|&r| inputs.frozen[r][slot * h..(slot + 1) * h].iter().copied())
                        .collect();
                    blocks.push(Tensor::from_vec(frozen, (b, h), &Device::Cpu)?);
                }
            }
        }
        Ok(Tensor::cat(&blocks, 1)?)
    }

    /// The probe's logits for every row of `inputs`, without gradients, `batch` rows at a time.
    fn logits(&self, probe: &candle_nn::Linear, inputs: &Inputs, batch: usize) -> Result<Tensor> {
        let parts = length_batches(&inputs.states, self.plan.hidden, batch)
            .into_iter()
            .map(|rows| {
                let logits = probe.forward(&self.embed(inputs, &rows)?)?.detach();
                Ok((rows, logits))
            })
            .collect::<Result<Vec<_>>>()?;
        // Back to the split's order.
        let mut order = Vec::new();
        let mut pieces = Vec::new();
        for (rows, logits) in parts {
            order.extend(rows);
            pieces.push(logits);
        }
        let mut inverse = vec![0u32; order.len()];
        for (i, &r) in order.iter().enumerate() {
            inverse[r] = i as u32;
        }
        let all = Tensor::cat(&pieces, 0)?;
        Ok(all.index_select(&Tensor::from_vec(inverse, order.len(), &Device::Cpu)?, 0)?)
    }
}

/// Mean (over the mask) or first-token pooling of `(b, t, h)`, L2-normalised: `(b, h)`.
fn pool(x: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let pooled = match pooling {
        Pooling::Mean => {
            let m = mask.unsqueeze(2)?;
            x.broadcast_mul(&m)?
                .sum(1)?
                .broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)?
        }
        Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
    };
    let norm = pooled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(pooled.broadcast_div(&norm)?)
}

/// The probe alone on the frozen embedding `(x, inputs)`, full batch, stopped early on the
/// validation loss (checked every 10 steps, at most 1,000 steps); the best probe is kept.
/// Returns the step it was taken at.
fn fit_probe(
    probe: &candle_nn::Linear,
    vars: &VarMap,
    (x, train): (&Tensor, &Inputs),
    (val_x, val): (&Tensor, &Inputs),
    loss: &impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<usize> {
    let mut opt = adamw(vars, 1e-2)?;
    let mut best = (f64::INFINITY, 0);
    let mut saved = snapshot(vars)?;
    for step in 1..=1000 {
        opt.backward_step(&loss(&probe.forward(x)?, &train.y, &train.mask)?)?;
        if step % 10 != 0 {
            continue;
        }
        let l = loss(&probe.forward(val_x)?, &val.y, &val.mask)?;
        let value = f64::from(l.to_scalar::<f32>()?);
        if value < best.0 - 1e-5 {
            best = (value, step);
            saved = snapshot(vars)?;
        } else if step - best.1 >= 50 {
            break;
        }
    }
    restore(vars, &saved)?;
    Ok(best.1)
}

/// Sets every variable to its value in `saved`.
fn restore(vars: &VarMap, saved: &HashMap<String, Tensor>) -> Result<()> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| TrainError::Finetune("a poisoned lock".to_owned()))?;
    for (name, var) in data.iter() {
        if let Some(value) = saved.get(name) {
            var.set(value)?;
        }
    }
    Ok(())
}

fn adamw(vars: &VarMap, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(
        vars.all_vars(),
        ParamsAdamW {
            lr,
            weight_decay: 0.01,
            ..ParamsAdamW::default()
        },
    )?)
}

/// Rows grouped by length (so a batch pads little), `batch` at a time, in length order.
fn length_batches(states: &[Vec<f32>], hidden: usize, batch: usize) -> Vec<Vec<usize>> {
    let mut rows: Vec<usize> = (0..states.len()).collect();
    rows.sort_by_key(|&r| (states[r].len() / hidden, r));
    rows.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

fn as_u32(rows: &[usize]) -> Vec<u32> {
    rows.iter().map(|&r| r as u32).collect()
}

/// A copy of every variable's value, by name.
fn snapshot(vars: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| TrainError::Finetune("a poisoned lock".to_owned()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn epoch_bar(progress: bool, steps: usize) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template(
            "fine-tuning {bar:40} {pos}/{len} batches [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// [`finetune_fit`]'s result.
pub(crate) struct Tuned {
    pub encoder: Encoder,
    /// The fine-tuned embeddings of the training and validation prompts, by prompt.
    pub embeddings: HashMap<usize, Vec<f32>>,
    pub hyperparameters: BTreeMap<String, f64>,
}

/// Fine-tunes `encoder` as `config.finetune` asks, on the training rows (early stopping on
/// the validation rows), writes the delta into `config.out`, and loads the fine-tuned encoder.
/// Returns it, the embeddings of `rows` it makes (never cached: they belong to this fit alone)
/// and what fine-tuning recorded.
pub(crate) fn finetune_fit(
    config: &crate::FitConfig,
    params: &FinetuneParams,
    encoder: &Encoder,
    table: &crate::data::Table,
    (train_rows, val_rows): (&[usize], &[usize]),
    embeddings: &HashMap<usize, Vec<f32>>,
) -> Result<Tuned> {
    let split = |rows: &[usize]| {
        let texts: Vec<&str> = rows
            .iter()
            .map(|&p| table.prompts[p].text.as_str())
            .collect();
        let data = crate::split_data(table, rows, embeddings, encoder.dim(), &[]);
        (texts, data)
    };
    let (train_texts, train) = split(train_rows);
    let (val_texts, val) = split(val_rows);
    let done = finetune(
        encoder,
        (&train_texts, &train),
        (&val_texts, &val),
        params,
        &config.out,
        config.progress,
    )?;
    let options = router_core::encoder::EncoderOptions {
        delta: Some(done.delta.clone()),
        ..config.encoder_options.clone()
    };
    let tuned = Encoder::from_source(&config.encoder, encoder.device(), &options)?;
    let rows: Vec<usize> = train_rows.iter().chain(val_rows).copied().collect();
    let texts: Vec<&str> = rows
        .iter()
        .map(|&p| table.prompts[p].text.as_str())
        .collect();
    let (vectors, _) = crate::embed_cache::embed_all(
        &tuned,
        &texts,
        None,
        config.encode_batch_size,
        config.progress,
    )?;
    Ok(Tuned {
        encoder: tuned,
        embeddings: rows.into_iter().zip(vectors).collect(),
        hyperparameters: done.hyperparameters,
    })
}

#[cfg(test)]
mod tests {
    use router_core::encoder::{EncoderOptions, EncoderSource, Layers, Truncation};

    use super::*;

    /// The trained layers start from the base weights and compute what the int8 encoder
    /// computes (in f32, so to int8's rounding): the frozen blocks exactly, the top block to a
    /// cosine of 0.99. A mistake in the layer's arithmetic would train another function than
    /// the one serving runs.
    #[test]
    fn the_trainable_layers_compute_what_the_int8_encoder_does() -> Result<()> {
        let options = EncoderOptions {
            layers: Layers::Thirds,
            ..EncoderOptions::new(Truncation::HeadTail, Precision::Int8)
        };
        let encoder = Encoder::from_source(&EncoderSource::default(), &Device::Cpu, &options)?;
        let texts = [
            "Summarise the plot of Hamlet in two sentences.",
            "def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)  # make this iterative",
            "ok",
        ];
        let data = SplitData {
            x: Vec::new(),
            y: vec![0.5; 6],
            mask: vec![1.0; 6],
            n: 3,
            dim: encoder.dim(),
            models: 2,
            task: vec![None; 3],
            task_names: Vec::new(),
        };
        let params = FinetuneParams {
            layers: 2,
            ..FinetuneParams::DEFAULT
        };
        let plan = Plan::of(&encoder, &params)?;
        let inputs = plan.inputs(&encoder, &texts, &data, false)?;
        let vars = VarMap::new();
        plan.load_base(&encoder, &vars)?;
        let stack = plan.build(&encoder, &vars)?;
        let got = stack.embed(&inputs, &[0, 1, 2])?.to_vec2::<f32>()?;
        let want = encoder.embed(&texts)?;
        let h = 384;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                g[..2 * h],
                w[..2 * h],
                "the frozen blocks are the encoder's"
            );
            let dot: f32 = g[2 * h..].iter().zip(&w[2 * h..]).map(|(a, b)| a * b).sum();
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            let cosine = dot / (norm(&g[2 * h..]) * norm(&w[2 * h..]));
            assert!(cosine > 0.99, "top block cosine {cosine}");
        }
        Ok(())
    }
}
