//! One BERT layer (post-norm, GELU) whose weights train: the same arithmetic as Candle's
//! `BertLayer` and our int8 layer, written with operations Candle can differentiate (its
//! fused layer norm and last-axis softmax have no backward pass).

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use router_core::encoder::Shape;

use crate::error::Result;

/// The tensor names of one layer, relative to `encoder.layer.N.`, as the base file has them.
pub(super) const TENSORS: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(vb: VarBuilder, h: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(h, "weight")?,
            bias: vb.get(h, "bias")?,
        })
    }

    /// `(x − mean) / √(var + ε) · weight + bias` over the last axis.
    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

pub(super) struct TrainableLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
    heads: usize,
    eps: f64,
}

impl TrainableLayer {
    /// `vb`: at `encoder.layer.N` of a var map that already holds the base weights.
    pub(super) fn load(vb: VarBuilder, shape: &Shape) -> Result<Self> {
        let c = &shape.config;
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let linear = |i, o, name: &str| candle_nn::linear(i, o, vb.pp(name));
        Ok(Self {
            query: linear(h, h, "attention.self.query")?,
            key: linear(h, h, "attention.self.key")?,
            value: linear(h, h, "attention.self.value")?,
            attention_out: linear(h, h, "attention.output.dense")?,
            attention_norm: Norm::load(vb.pp("attention.output.LayerNorm"), h)?,
            intermediate: linear(h, inter, "intermediate.dense")?,
            output: linear(inter, h, "output.dense")?,
            output_norm: Norm::load(vb.pp("output.LayerNorm"), h)?,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
        })
    }

    /// `x`: `(batch, width, hidden)`; `mask`: the additive `(batch, 1, 1, width)` mask.
    pub(super) fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let d = h / self.heads;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (d as f64).sqrt())?.broadcast_add(mask)?;
        let probs = softmax(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context)? + x)?, self.eps)?;
        let inner = self.intermediate.forward(&attended)?.gelu_erf()?;
        self.output_norm
            .forward(&(self.output.forward(&inner)? + &attended)?, self.eps)
    }
}

/// Softmax over the last axis, the maximum subtracted as a constant.
fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}
