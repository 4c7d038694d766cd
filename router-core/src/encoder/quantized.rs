//! BERT's forward pass on the CPU with int8 dense layers ([`super::int8`]).
//!
//! The same computation as `candle_transformers::models::bert::BertModel` (post-norm layers,
//! absolute positions, erf GELU), with three changes: the query, key and value projections
//! are one 3·h-wide layer, the attention's 1/√d is folded into the query weights before they
//! are quantised (per-channel scales make that exact), and the GELU runs in the intermediate
//! layer's epilogue. Embeddings, attention products, softmax and layer norms stay in f32.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};

use super::int8::{Activation, Int8Kernel, Int8Linear};

/// One dense layer applied to the last dimension of a contiguous f32 tensor.
struct DenseOp<'a> {
    layer: &'a Int8Linear,
    kernel: Int8Kernel,
}

impl CustomOp1 for DenseOp<'_> {
    fn name(&self) -> &'static str {
        "int8-dense"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("int8-dense takes f32 input");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8-dense takes a contiguous input");
        };
        let mut dims = layout.shape().dims().to_vec();
        let k = dims.last().copied().unwrap_or(0);
        if k != self.layer.in_features() {
            candle_core::bail!(
                "int8-dense expects {} input features, got {k}",
                self.layer.in_features()
            );
        }
        let x = &data[start..end];
        let m = x.len() / k;
        let n = self.layer.out_features();
        let mut out = vec![0f32; m * n];
        self.layer.forward(self.kernel, x, m, &mut out);
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, eps)
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
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embedding: Tensor,
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
    Int8Linear::new(&weight, &bias, n, k, activation)
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
        let word_embeddings = emb.get((config.vocab_size, h), "word_embeddings.weight")?;
        let position_embeddings = emb.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type_embedding = emb
            .get((config.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
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
            let qkv = Int8Linear::new(&w, &b, 3 * h, h, Activation::Identity).ok_or_else(|| {
                candle_core::Error::Msg(format!("a {}×{h} layer cannot be packed", 3 * h))
            })?;
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
            kernel: Int8Kernel::detect(),
        })
    }

    pub(crate) fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    fn dense(&self, layer: &Int8Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&DenseOp {
            layer,
            kernel: self.kernel,
        })
    }

    /// Token vectors of every sequence, packed: `(Σ len, hidden)`, the rows of sequence `i`
    /// after those of sequences `0..i`. No padding is computed, and every operation sees only
    /// its own sequence's rows, so a text embeds bit for bit the same alone or in any batch
    /// (int8 rounding would otherwise amplify the last-bit differences of padded shapes).
    pub(crate) fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Tensor> {
        let h = self.hidden;
        let positions = self.position_embeddings.dim(0)?;
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut position_ids = Vec::with_capacity(total);
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
            ids.extend_from_slice(seq);
            position_ids.extend(0..seq.len() as u32);
        }
        let device = self.word_embeddings.device();
        let ids = Tensor::from_vec(ids, total, device)?;
        let position_ids = Tensor::from_vec(position_ids, total, device)?;
        let x = (self.word_embeddings.index_select(&ids, 0)?
            + self.position_embeddings.index_select(&position_ids, 0)?)?
        .broadcast_add(&self.token_type_embedding)?;
        let mut x = self.embedding_norm.forward(&x, self.eps)?;
        for layer in &self.layers {
            let qkv = self.dense(&layer.qkv, &x)?;
            let mut contexts = Vec::with_capacity(sequences.len());
            let mut offset = 0;
            for seq in sequences {
                let len = seq.len();
                let part = qkv
                    .narrow(0, offset, len)?
                    .reshape((len, 3, self.heads, self.head_dim))?
                    .permute((1, 2, 0, 3))?;
                let q = part.get(0)?.contiguous()?;
                let k = part.get(1)?.contiguous()?;
                let v = part.get(2)?.contiguous()?;
                let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
                contexts.push(probs.matmul(&v)?.transpose(0, 1)?.reshape((len, h))?);
                offset += len;
            }
            let context = Tensor::cat(&contexts, 0)?;
            let attended = (self.dense(&layer.attention_out, &context)? + &x)?;
            let attended = layer.attention_norm.forward(&attended, self.eps)?;
            let inner = self.dense(&layer.intermediate, &attended)?;
            let out = (self.dense(&layer.output, &inner)? + &attended)?;
            x = layer.output_norm.forward(&out, self.eps)?;
        }
        Ok(x)
    }
}
