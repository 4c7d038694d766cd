//! The f32 encoder (Candle's BERT, on the CPU or a GPU) with the hidden states of several depths
//! from one pass.
//!
//! `BertModel::forward` returns only its last hidden state, and its layers are private.
//! `BertEncoder` and its list of layers are public: the model is loaded cut to the first pooled
//! depth, and each further depth runs a `BertEncoder` that holds only the layers since the
//! previous one (the same weights), so every layer runs once however many depths are pooled.
//! The operations are Candle's own, in the same order, so each depth's state is the one a model
//! cut to that depth gives, bit for bit.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertEncoder, BertModel, Config as BertConfig};

use super::Pooling;
use super::mpnet::Mpnet;

/// The f32 models: Candle's BERT, or our MPNet.
pub(crate) enum F32Model {
    Bert(LayeredBert),
    Mpnet(Mpnet),
}

impl F32Model {
    /// The hidden states `(batch, width, hidden)` at each pooled depth, in order; `mask` is
    /// `(batch, width)` of 1 (token) and 0 (padding).
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Self::Bert(model) => model.forward(ids, &ids.zeros_like()?, mask),
            Self::Mpnet(model) => model.forward(ids, mask),
        }
    }
}

/// Each state pooled over the mask (or its first token) and L2-normalised: `(batch, hidden)`.
pub(crate) fn pool_states(
    states: &[Tensor],
    mask: &Tensor,
    pooling: Pooling,
) -> candle_core::Result<Vec<Tensor>> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    states
        .iter()
        .map(|hidden| {
            let pooled = match pooling {
                Pooling::Mean => hidden
                    .broadcast_mul(&mask)?
                    .sum(1)?
                    .broadcast_div(&counts)?,
                Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            };
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norms)
        })
        .collect()
}

pub(crate) struct LayeredBert {
    /// The model up to the first pooled depth (depth 0: the embedding layer alone).
    first: BertModel,
    /// For each further pooled depth, the layers from the previous depth to it.
    segments: Vec<BertEncoder>,
}

impl LayeredBert {
    /// `depths`: the pooled depths, increasing, each at most `config.num_hidden_layers` (the
    /// caller checked).
    pub(crate) fn load(
        vb: VarBuilder,
        config: &BertConfig,
        depths: &[usize],
    ) -> candle_core::Result<Self> {
        let Some((&first_depth, _)) = depths.split_first() else {
            candle_core::bail!("no depth to pool");
        };
        let first = BertModel::load(
            vb.clone(),
            &BertConfig {
                num_hidden_layers: first_depth,
                ..config.clone()
            },
        )?;
        let mut segments = Vec::with_capacity(depths.len() - 1);
        if depths.len() > 1 {
            let all = load_encoder(vb, config)?;
            for pair in depths.windows(2) {
                let mut segment = all.clone();
                segment.layers = all.layers[pair[0]..pair[1]].to_vec();
                segments.push(segment);
            }
        }
        Ok(Self { first, segments })
    }

    /// The hidden states `(batch, width, hidden)` at each pooled depth, in order.
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Vec<Tensor>> {
        let mut states = Vec::with_capacity(1 + self.segments.len());
        let mut hidden = self.first.forward(ids, type_ids, Some(mask))?;
        if !self.segments.is_empty() {
            let extended = extended_attention_mask(mask, hidden.dtype())?;
            for segment in &self.segments {
                let next = segment.forward(&hidden, &extended)?;
                states.push(std::mem::replace(&mut hidden, next));
            }
        }
        states.push(hidden);
        Ok(states)
    }
}

/// All of the model's layers, found under the prefixes `BertModel::load` tries.
fn load_encoder(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<BertEncoder> {
    let vb = if vb.contains_tensor("bert") {
        vb.pp("bert")
    } else {
        vb
    };
    BertEncoder::load(vb.pp("encoder"), config).or_else(|err| match &config.model_type {
        Some(model_type) => BertEncoder::load(vb.pp(format!("{model_type}.encoder")), config),
        None => Err(err),
    })
}

/// `(batch, width)` of 1 (token) and 0 (padding) to the additive `(batch, 1, 1, width)` mask
/// the layers take: 0 on tokens, the lowest float on padding, as `BertModel::forward` makes it.
fn extended_attention_mask(mask: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let mask = mask.unsqueeze(1)?.unsqueeze(1)?.to_dtype(dtype)?;
    (mask.ones_like()? - &mask)?.broadcast_mul(
        &Tensor::try_from(f32::MIN)?
            .to_device(mask.device())?
            .to_dtype(dtype)?,
    )
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::encoder::{EncoderSource, resolve};

    /// Each depth's state is the one Candle's model cut to that depth gives, bit for bit, also
    /// on padded rows.
    #[test]
    fn one_pass_gives_every_depth_as_a_cut_model_does() -> anyhow::Result<()> {
        let dir = resolve(&EncoderSource::default())?.dir;
        let config: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let device = Device::Cpu;
        // SAFETY: the test only reads the model file.
        #[expect(unsafe_code, reason = "mmap of the model file, which nothing writes")]
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )?
        };
        let depths = [0, 2, 4, 6];
        let layered = LayeredBert::load(vb.clone(), &config, &depths)?;
        // Two texts of 5 and 3 tokens: the second padded.
        let ids = Tensor::new(
            &[[101u32, 2054, 2003, 1037, 102], [101, 7592, 102, 0, 0]],
            &device,
        )?;
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &device)?;
        let type_ids = ids.zeros_like()?;
        let states = layered.forward(&ids, &type_ids, &mask)?;
        assert_eq!(states.len(), depths.len());
        for (depth, state) in depths.iter().zip(&states) {
            let cut = BertModel::load(
                vb.clone(),
                &BertConfig {
                    num_hidden_layers: *depth,
                    ..config.clone()
                },
            )?;
            let want = cut.forward(&ids, &type_ids, Some(&mask))?;
            assert_eq!(
                state.flatten_all()?.to_vec1::<f32>()?,
                want.flatten_all()?.to_vec1::<f32>()?,
                "depth {depth}"
            );
        }
        Ok(())
    }
}
