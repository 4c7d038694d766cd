//! MPNet's forward pass in f32 with Candle (CPU or GPU), as `transformers`' `MPNetModel`
//! computes it: BERT's post-norm layer stack under other tensor names, no token types,
//! positions counted from `pad_token_id + 1` (padding at `pad_token_id`), and a learned bias per
//! head and relative-position bucket added to every layer's attention scores. The buckets are
//! the int8 path's ([`super::quantized`]).

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use candle_transformers::models::bert::Config as BertConfig;

use super::quantized::{MPNET_BUCKETS, mpnet_bucket};

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// MPNet in f32, with the hidden states of several depths from one pass.
pub(crate) struct Mpnet {
    words: Embedding,
    positions: Embedding,
    norm: LayerNorm,
    /// `buckets × heads`.
    relative: Embedding,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    pad_id: u32,
    /// The pooled depths, increasing (0: the embeddings' output).
    depths: Vec<usize>,
}

impl Mpnet {
    /// `config`: MPNet's in BERT's terms (`MpnetConfig::into_bert`); `depths` increasing, each
    /// at most `num_hidden_layers` (the caller checked).
    pub(crate) fn load(
        vb: VarBuilder,
        config: &BertConfig,
        depths: &[usize],
    ) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let last = depths.last().copied().unwrap_or(config.num_hidden_layers);
        let layers = (0..last)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let attn = vb.pp("attention");
                Ok(Layer {
                    q: linear(h, h, attn.pp("attn.q"))?,
                    k: linear(h, h, attn.pp("attn.k"))?,
                    v: linear(h, h, attn.pp("attn.v"))?,
                    o: linear(h, h, attn.pp("attn.o"))?,
                    attention_norm: layer_norm(h, eps, attn.pp("LayerNorm"))?,
                    intermediate: linear(h, config.intermediate_size, vb.pp("intermediate.dense"))?,
                    output: linear(config.intermediate_size, h, vb.pp("output.dense"))?,
                    output_norm: layer_norm(h, eps, vb.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            words: embedding(config.vocab_size, h, emb.pp("word_embeddings"))?,
            positions: embedding(
                config.max_position_embeddings,
                h,
                emb.pp("position_embeddings"),
            )?,
            norm: layer_norm(h, eps, emb.pp("LayerNorm"))?,
            relative: embedding(
                MPNET_BUCKETS,
                config.num_attention_heads,
                vb.pp("encoder.relative_attention_bias"),
            )?,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            pad_id: config.pad_token_id as u32,
            depths: depths.to_vec(),
        })
    }

    /// The hidden states `(batch, width, hidden)` at each pooled depth, in order; `mask` is
    /// `(batch, width)` of 1 (token) and 0 (padding).
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let device = ids.device();
        let (batch, width) = ids.dims2()?;
        // `create_position_ids_from_input_ids`: tokens count from pad + 1, padding sits at pad.
        let rows = mask.to_vec2::<u32>()?;
        let positions: Vec<u32> = rows
            .iter()
            .flat_map(|row| {
                let mut seen = 0;
                row.iter()
                    .map(move |&m| {
                        seen += m;
                        seen * m + self.pad_id
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let positions = Tensor::from_vec(positions, (batch, width), device)?;
        let mut x = (self.words.forward(ids)? + self.positions.forward(&positions)?)?;
        x = self.norm.forward(&x)?;
        // Scores' offsets: the relative-position bias `(1, heads, width, width)` plus the mask's
        // `(batch, 1, 1, width)`: 0 on tokens, the lowest float on padding.
        let buckets: Vec<u32> = (0..width as i64)
            .flat_map(|i| (0..width as i64).map(move |j| mpnet_bucket(j - i) as u32))
            .collect();
        let buckets = Tensor::from_vec(buckets, (width, width), device)?;
        let bias = self
            .relative
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        let padding = (1.0 - mask.to_dtype(DType::F32)?)?
            .affine(f64::from(f32::MIN), 0.0)?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        let offsets = bias.broadcast_add(&padding)?.contiguous()?;
        let mut states = Vec::with_capacity(self.depths.len());
        if self.depths.first() == Some(&0) {
            states.push(x.clone());
        }
        for (depth, layer) in (1..).zip(&self.layers) {
            x = self.layer(layer, &x, &offsets)?;
            if self.depths.contains(&depth) {
                states.push(x.clone());
            }
        }
        Ok(states)
    }

    fn layer(&self, layer: &Layer, x: &Tensor, offsets: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, width, h) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, width, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(layer.q.forward(x)?)?;
        let k = split(layer.k.forward(x)?)?;
        let v = split(layer.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(offsets)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, width, h))?;
        let attended = layer
            .attention_norm
            .forward(&(layer.o.forward(&context)? + x)?)?;
        let inner = layer.intermediate.forward(&attended)?.gelu_erf()?;
        layer
            .output_norm
            .forward(&(layer.output.forward(&inner)? + &attended)?)
    }
}
