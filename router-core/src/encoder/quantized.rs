//! BERT's forward pass on the CPU with int8 dense layers ([`super::int8`]).
//!
//! The same computation as `candle_transformers::models::bert::BertModel` (post-norm layers,
//! absolute positions, erf GELU), with three changes: the query, key and value projections
//! are one 3·h-wide layer, the attention's 1/√d is folded into the query weights before they
//! are quantised (the per-channel scales absorb it), and the GELU runs in the intermediate
//! layer's epilogue. Embeddings, attention, softmax and layer norms stay in f32
//! ([`super::cpu_ops`]). Plain buffers throughout: no padding, no tensor per operation.

use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};

use super::Pooling;
use super::cpu_ops::{self, Heads};
use super::int8::{self, Activation, Int8Kernel, Int8Linear};

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?.to_vec1()?,
            bias: vb.get(size, "bias")?.to_vec1()?,
        })
    }
}

struct Layer {
    qkv: Int8Linear,
    attention_out: Int8Linear,
    attention_norm: Norm,
    intermediate: Int8Linear,
    output: Int8Linear,
    output_norm: Norm,
}

/// all-MiniLM-style BERT with int8 dense layers. CPU only.
pub(crate) struct QuantizedBert {
    /// `vocab × hidden`, row-major.
    word_embeddings: Vec<f32>,
    /// `positions × hidden`.
    position_embeddings: Vec<f32>,
    /// Token type 0 (sentence-transformers never sets another).
    token_type_embedding: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    eps: f32,
    kernel: Int8Kernel,
}

fn dense(
    vb: &VarBuilder,
    n: usize,
    k: usize,
    activation: Activation,
) -> candle_core::Result<Int8Linear> {
    let weight = vb.get((n, k), "weight")?.flatten_all()?.to_vec1::<f32>()?;
    let bias = vb.get(n, "bias")?.to_vec1::<f32>()?;
    pack(&weight, &bias, n, k, activation)
}

/// [`Int8Linear::new`], with an unsuitable shape as an error.
fn pack(
    weight: &[f32],
    bias: &[f32],
    n: usize,
    k: usize,
    activation: Activation,
) -> candle_core::Result<Int8Linear> {
    Int8Linear::new(weight, bias, n, k, activation)
        .ok_or_else(|| candle_core::Error::Msg(format!("a {n}×{k} layer cannot be packed")))
}

impl QuantizedBert {
    /// Whether a model of this configuration can run in int8 here.
    pub(crate) fn supports(config: &BertConfig) -> bool {
        config.hidden_act == HiddenAct::Gelu
            && config.num_attention_heads > 0
            && config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
            && config.hidden_size.is_multiple_of(64)
            && config.intermediate_size.is_multiple_of(64)
    }

    pub(crate) fn load(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<Self> {
        let vb = [
            "embeddings.word_embeddings.weight",
            "bert.embeddings.word_embeddings.weight",
        ]
        .iter()
        .position(|name| vb.contains_tensor(name))
        .map_or(
            vb.clone(),
            |i| if i == 1 { vb.pp("bert") } else { vb.clone() },
        );
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        let head_dim = h / heads;
        let emb = vb.pp("embeddings");
        let word_embeddings = emb
            .get((config.vocab_size, h), "word_embeddings.weight")?
            .flatten_all()?
            .to_vec1()?;
        let position_embeddings = emb
            .get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?
            .flatten_all()?
            .to_vec1()?;
        let token_type_embedding = emb
            .get((config.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?
            .to_vec1()?;
        let embedding_norm = Norm::load(emb.pp("LayerNorm"), h)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let vb = vb.pp(format!("encoder.layer.{i}"));
            let attn = vb.pp("attention");
            let own = attn.pp("self");
            let part = |name: &str, scale: f32| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
                let vb = own.pp(name);
                let w = (vb.get((h, h), "weight")? * f64::from(scale))?;
                let b = (vb.get(h, "bias")? * f64::from(scale))?;
                Ok((w.flatten_all()?.to_vec1()?, b.to_vec1()?))
            };
            let (mut w, mut b) = part("query", scale)?;
            for name in ["key", "value"] {
                let (wp, bp) = part(name, 1.0)?;
                w.extend(wp);
                b.extend(bp);
            }
            let qkv = pack(&w, &b, 3 * h, h, Activation::Identity)?;
            let inter = config.intermediate_size;
            layers.push(Layer {
                qkv,
                attention_out: dense(&attn.pp("output.dense"), h, h, Activation::Identity)?,
                attention_norm: Norm::load(attn.pp("output.LayerNorm"), h)?,
                intermediate: dense(&vb.pp("intermediate.dense"), inter, h, Activation::GeluErf)?,
                output: dense(&vb.pp("output.dense"), h, inter, Activation::Identity)?,
                output_norm: Norm::load(vb.pp("output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embedding_norm,
            layers,
            heads,
            head_dim,
            hidden: h,
            eps: config.layer_norm_eps as f32,
            kernel: int8::kernel_from_env(),
        })
    }

    pub(crate) fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// One vector of `layers.len() × hidden` per sequence: the hidden state after each of
    /// `layers` (0: the embedding layer's output; at least one) pooled and L2-normalised, the
    /// concatenation scaled by 1/√k (see [`super::EncoderOptions::layers`]).
    ///
    /// Every sequence is computed on its own rows only, so a text embeds bit for bit the same
    /// alone or in any batch (int8 rounding would otherwise amplify the last-bit differences of
    /// padded shapes). The dense layers take all rows of the batch at once.
    pub(crate) fn embed(
        &self,
        sequences: &[&[u32]],
        pooling: Pooling,
        layers: &[usize],
    ) -> candle_core::Result<Vec<f32>> {
        let h = self.hidden;
        let width = h * layers.len();
        let mut pooled = vec![0f32; sequences.len() * width];
        // Pools the hidden state `x` after `depth` layers into its slot, if it is asked for.
        let pool_at = |depth: usize, x: &[f32], pooled: &mut [f32]| {
            let Some(slot) = layers.iter().position(|&l| l == depth) else {
                return;
            };
            let mut offset = 0;
            for (seq, out) in sequences.iter().zip(pooled.chunks_exact_mut(width)) {
                let rows = &x[offset * h..(offset + seq.len()) * h];
                pool(rows, h, pooling, &mut out[slot * h..(slot + 1) * h]);
                offset += seq.len();
            }
        };
        let positions = self.position_embeddings.len() / h;
        let vocab = self.word_embeddings.len() / h;
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let mut x = Vec::with_capacity(total * h);
        for seq in sequences {
            if seq.is_empty() {
                candle_core::bail!("an empty token sequence cannot be embedded");
            }
            if seq.len() > positions {
                candle_core::bail!(
                    "{} tokens exceed the model's {positions} positions",
                    seq.len()
                );
            }
            for (p, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
                }
                let word = &self.word_embeddings[id * h..(id + 1) * h];
                let pos = &self.position_embeddings[p * h..(p + 1) * h];
                x.extend(
                    word.iter()
                        .zip(pos)
                        .zip(&self.token_type_embedding)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        let kernel = self.kernel;
        let norm = |x: &mut [f32], residual: Option<&[f32]>, n: &Norm| {
            cpu_ops::layer_norm(kernel, x, residual, &n.weight, &n.bias, self.eps);
        };
        norm(&mut x, None, &self.embedding_norm);
        pool_at(0, &x, &mut pooled);
        let shape = Heads {
            heads: self.heads,
            head_dim: self.head_dim,
        };
        let mut qkv = vec![0f32; total * 3 * h];
        let mut context = vec![0f32; total * h];
        let mut attended = vec![0f32; total * h];
        let mut inner = Vec::new();
        // No layer after the last pooled one is needed.
        let last = layers.last().copied().unwrap_or(self.layers.len());
        for (depth, layer) in (1..).zip(&self.layers).take(last) {
            int8::forward(&layer.qkv, kernel, &x, total, &mut qkv);
            let mut offset = 0;
            for seq in sequences {
                let rows = offset..offset + seq.len();
                cpu_ops::attention(
                    kernel,
                    &qkv[rows.start * 3 * h..rows.end * 3 * h],
                    shape,
                    &mut context[rows.start * h..rows.end * h],
                );
                offset = rows.end;
            }
            int8::forward(&layer.attention_out, kernel, &context, total, &mut attended);
            norm(&mut attended, Some(&x), &layer.attention_norm);
            inner.resize(total * layer.intermediate.out_features(), 0.0);
            int8::forward(&layer.intermediate, kernel, &attended, total, &mut inner);
            int8::forward(&layer.output, kernel, &inner, total, &mut x);
            norm(&mut x, Some(&attended), &layer.output_norm);
            pool_at(depth, &x, &mut pooled);
        }
        if layers.len() > 1 {
            let scale = 1.0 / (layers.len() as f32).sqrt();
            for v in &mut pooled {
                *v *= scale;
            }
        }
        Ok(pooled)
    }
}

/// Pools one sequence's `rows` (`len × h`) into `out` and L2-normalises it.
fn pool(rows: &[f32], h: usize, pooling: Pooling, out: &mut [f32]) {
    match pooling {
        Pooling::Cls => out.copy_from_slice(&rows[..h]),
        Pooling::Mean => {
            for row in rows.chunks_exact(h) {
                for (o, v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
            let n = (rows.len() / h) as f32;
            for o in out.iter_mut() {
                *o /= n;
            }
        }
    }
    // In order, one value at a time: the same sum on every CPU.
    let norm = out
        .iter()
        .fold(0f32, |s, v| v.mul_add(*v, s))
        .sqrt()
        .max(1e-12);
    for o in out.iter_mut() {
        *o /= norm;
    }
}
