//! BERT's forward pass on the CPU with int8 dense layers ([`super::int8`]), and MPNet's.
//!
//! The same computation as `candle_transformers::models::bert::BertModel` (post-norm layers,
//! absolute positions, erf GELU), with three changes: the query, key and value projections
//! are one 3·h-wide layer, the attention's 1/√d is folded into the query weights before they
//! are quantised (the per-channel scales absorb it), and the GELU runs in the intermediate
//! layer's epilogue. Embeddings, attention, softmax and layer norms stay in f32
//! ([`super::cpu_ops`]). Plain buffers throughout: no padding, no tensor per operation.
//!
//! MPNet (`transformers`' `MPNetModel`, as in all-mpnet-base-v2) is the same layer stack under
//! other tensor names, without token types, with positions counted from `pad_token_id + 1`,
//! and with a learned bias per head and relative-position bucket (T5's bidirectional buckets)
//! added to every layer's attention scores.

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

/// The transformer families the int8 path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    Bert,
    Mpnet,
}

/// MPNet's relative-position bias, shared by every layer: `MPNET_BUCKETS × heads`, row-major.
struct RelativeBias {
    table: Vec<f32>,
}

/// The bucket of `t − i` (key minus query position), as `MPNetEncoder.
/// relative_position_bucket` with its fixed 32 buckets and distance 128: half the buckets for
/// keys after the query; in each half, exact distances below 8, logarithmic ones up to 128. In
/// f64, where the boundaries (distances 16, 32, 64) come out whole, as they do in torch's f32.
pub(crate) fn mpnet_bucket(relative: i64) -> usize {
    let half = (MPNET_BUCKETS / 2) as i64;
    let exact = half / 2;
    let n = -relative;
    let base = if n < 0 { half } else { 0 };
    let n = n.abs();
    let offset = if n < exact {
        n
    } else {
        let ratio =
            (n as f64 / exact as f64).ln() / (MPNET_MAX_DISTANCE as f64 / exact as f64).ln();
        (exact + (ratio * (half - exact) as f64) as i64).min(half - 1)
    };
    (base + offset) as usize
}

impl RelativeBias {
    /// Per head, the `2·len − 1` offsets for relative positions `−(len − 1) ..= len − 1`
    /// ([`cpu_ops::attention`]'s layout).
    fn offsets(&self, heads: usize, len: usize) -> Vec<f32> {
        let span = 2 * len - 1;
        let mut out = vec![0f32; heads * span];
        for at in 0..span {
            let bucket = mpnet_bucket(at as i64 - (len as i64 - 1));
            for head in 0..heads {
                out[head * span + at] = self.table[bucket * heads + head];
            }
        }
        out
    }
}

/// all-MiniLM-style BERT (or MPNet) with int8 dense layers. CPU only.
pub(crate) struct QuantizedBert {
    /// `vocab × hidden`, row-major.
    word_embeddings: Vec<f32>,
    /// `positions × hidden`.
    position_embeddings: Vec<f32>,
    /// Token type 0 (sentence-transformers never sets another); zeros for MPNet.
    token_type_embedding: Vec<f32>,
    /// The position of the first token (MPNet: `pad_token_id + 1`).
    first_position: usize,
    relative: Option<RelativeBias>,
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

/// The fields of an MPNet `config.json` the int8 path reads.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct MpnetConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: HiddenAct,
    max_position_embeddings: usize,
    layer_norm_eps: f64,
    pad_token_id: usize,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
}

fn default_buckets() -> usize {
    MPNET_BUCKETS
}

impl MpnetConfig {
    /// The same model in BERT's terms (one token type, which MPNet does not have, reads as
    /// zeros); an error for bucket counts other than `transformers`' fixed 32.
    pub(crate) fn into_bert(self, path: &std::path::Path) -> crate::error::Result<BertConfig> {
        if self.relative_attention_num_buckets != MPNET_BUCKETS {
            return Err(crate::error::Error::InvalidModelFile {
                path: path.to_owned(),
                message: format!(
                    "relative_attention_num_buckets {}: only {MPNET_BUCKETS} is supported",
                    self.relative_attention_num_buckets
                ),
            });
        }
        Ok(BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 1,
            layer_norm_eps: self.layer_norm_eps,
            pad_token_id: self.pad_token_id,
            model_type: Some("mpnet".to_owned()),
            ..BertConfig::default()
        })
    }
}

/// MPNet's relative-position buckets and the distance where the last one starts (fixed in
/// `transformers`' `MPNetEncoder`; the bias tensor's shape checks the first).
pub(crate) const MPNET_BUCKETS: usize = 32;
const MPNET_MAX_DISTANCE: usize = 128;

/// Where a layer keeps its attention tensors, under `encoder.layer.N.attention`.
struct LayerNames {
    /// The projections' folder, and the query, key and value in it.
    own: &'static str,
    qkv: [&'static str; 3],
    /// The attention's output projection and its layer norm.
    out: &'static str,
    norm: &'static str,
}

impl LayerNames {
    const BERT: Self = Self {
        own: "self",
        qkv: ["query", "key", "value"],
        out: "output.dense",
        norm: "output.LayerNorm",
    };
    const MPNET: Self = Self {
        own: "attn",
        qkv: ["q", "k", "v"],
        out: "attn.o",
        norm: "LayerNorm",
    };
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

    /// `config`: MPNet's in BERT's terms (see [`super::Encoder::load`]).
    pub(crate) fn load(
        vb: VarBuilder,
        config: &BertConfig,
        arch: Arch,
    ) -> candle_core::Result<Self> {
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
        let token_type_embedding = match arch {
            Arch::Bert => emb
                .get((config.type_vocab_size, h), "token_type_embeddings.weight")?
                .get(0)?
                .to_vec1()?,
            Arch::Mpnet => vec![0.0; h],
        };
        let (first_position, relative) = match arch {
            Arch::Bert => (0, None),
            Arch::Mpnet => {
                let buckets = MPNET_BUCKETS;
                let table = vb
                    .get((buckets, heads), "encoder.relative_attention_bias.weight")?
                    .flatten_all()?
                    .to_vec1()?;
                let relative = RelativeBias { table };
                (config.pad_token_id + 1, Some(relative))
            }
        };
        let embedding_norm = Norm::load(emb.pp("LayerNorm"), h)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let vb = vb.pp(format!("encoder.layer.{i}"));
            let attn = vb.pp("attention");
            let names = match arch {
                Arch::Bert => LayerNames::BERT,
                Arch::Mpnet => LayerNames::MPNET,
            };
            let own = attn.pp(names.own);
            let part = |name: &str, scale: f32| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
                let vb = own.pp(name);
                let w = (vb.get((h, h), "weight")? * f64::from(scale))?;
                let b = (vb.get(h, "bias")? * f64::from(scale))?;
                Ok((w.flatten_all()?.to_vec1()?, b.to_vec1()?))
            };
            let (mut w, mut b) = part(names.qkv[0], scale)?;
            for name in &names.qkv[1..] {
                let (wp, bp) = part(name, 1.0)?;
                w.extend(wp);
                b.extend(bp);
            }
            let qkv = pack(&w, &b, 3 * h, h, Activation::Identity)?;
            let inter = config.intermediate_size;
            layers.push(Layer {
                qkv,
                attention_out: dense(&attn.pp(names.out), h, h, Activation::Identity)?,
                attention_norm: Norm::load(attn.pp(names.norm), h)?,
                intermediate: dense(&vb.pp("intermediate.dense"), inter, h, Activation::GeluErf)?,
                output: dense(&vb.pp("output.dense"), h, inter, Activation::Identity)?,
                output_norm: Norm::load(vb.pp("output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            first_position,
            relative,
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
        Ok(self.embed_capturing(sequences, pooling, layers, None)?.0)
    }

    /// [`Self::embed`], and with `capture: Some(depth)` also the hidden state after `depth`
    /// layers, every sequence's rows in order (`total tokens × hidden`; empty with `None`).
    pub(crate) fn embed_capturing(
        &self,
        sequences: &[&[u32]],
        pooling: Pooling,
        layers: &[usize],
        capture: Option<usize>,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        if capture.is_some_and(|d| d > self.layers.len()) {
            candle_core::bail!("no hidden state after layer {capture:?}");
        }
        let mut captured = Vec::new();
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
            if seq.len() + self.first_position > positions {
                candle_core::bail!(
                    "{} tokens exceed the model's {} positions",
                    seq.len(),
                    positions - self.first_position
                );
            }
            for (p, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
                }
                let word = &self.word_embeddings[id * h..(id + 1) * h];
                let p = p + self.first_position;
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
        if capture == Some(0) {
            captured.clone_from(&x);
        }
        let shape = Heads {
            heads: self.heads,
            head_dim: self.head_dim,
        };
        let mut qkv = vec![0f32; total * 3 * h];
        let mut context = vec![0f32; total * h];
        let mut attended = vec![0f32; total * h];
        let mut inner = Vec::new();
        // MPNet: each sequence's score offsets, the same in every layer.
        let offsets: Vec<Option<Vec<f32>>> = sequences
            .iter()
            .map(|seq| {
                self.relative
                    .as_ref()
                    .map(|r| r.offsets(self.heads, seq.len()))
            })
            .collect();
        // No layer after the last pooled one is needed.
        let last = layers
            .last()
            .copied()
            .unwrap_or(self.layers.len())
            .max(capture.unwrap_or(0));
        for (depth, layer) in (1..).zip(&self.layers).take(last) {
            int8::forward(&layer.qkv, kernel, &x, total, &mut qkv);
            let mut offset = 0;
            for (seq, bias) in sequences.iter().zip(&offsets) {
                let rows = offset..offset + seq.len();
                cpu_ops::attention(
                    kernel,
                    &qkv[rows.start * 3 * h..rows.end * 3 * h],
                    bias.as_deref(),
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
            if capture == Some(depth) {
                captured.clone_from(&x);
            }
        }
        if layers.len() > 1 {
            let scale = 1.0 / (layers.len() as f32).sqrt();
            for v in &mut pooled {
                *v *= scale;
            }
        }
        Ok((pooled, captured))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpnet_buckets_match_transformers() {
        // `MPNetEncoder.relative_position_bucket(torch.arange(-600, 601), 32, 128)`, read off
        // transformers 5.25.0 (torch 2.15.0) on 2026-12-03: (key − query position, bucket).
        let want = [
            (-600, 15),
            (-129, 15),
            (-128, 15),
            (-127, 15),
            (-65, 14),
            (-64, 14),
            (-63, 13),
            (-33, 12),
            (-32, 12),
            (-31, 11),
            (-17, 10),
            (-16, 10),
            (-15, 9),
            (-12, 9),
            (-11, 8),
            (-8, 8),
            (-7, 7),
            (-1, 1),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (11, 24),
            (12, 25),
            (15, 25),
            (16, 26),
            (31, 27),
            (32, 28),
            (63, 29),
            (64, 30),
            (127, 31),
            (128, 31),
            (500, 31),
        ];
        for (relative, bucket) in want {
            assert_eq!(
                mpnet_bucket(relative),
                bucket,
                "relative position {relative}"
            );
        }
    }
}
