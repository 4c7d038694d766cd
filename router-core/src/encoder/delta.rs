//! Fine-tuned layers over a base encoder ([`super::EncoderOptions::delta`]).
//!
//! A delta is a safetensors file that holds the whole replaced tensors of some transformer
//! layers, under the names the base model's file gives them (`encoder.layer.5.output.dense.weight`,
//! with the base file's `bert.` prefix where it has one). Loading reads the base file and the
//! delta as one set in which the delta's tensors win, so both the f32 and the int8 path run the
//! fine-tuned weights, the int8 path quantising them exactly as it quantises the base ones.
//! The base encoder's identity and digest stay what they were; the router records the delta's
//! digest beside them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;

use crate::error::{Error, Result};

/// The file name of a router's delta, beside its manifest.
pub const DELTA_FILE: &str = "encoder-delta.safetensors";

/// A checked delta: its file, digest and the transformer layers it replaces (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub path: PathBuf,
    pub sha256: String,
    pub layers: Vec<usize>,
}

/// Checks that every tensor of `delta` replaces a tensor of a transformer layer of `base`
/// with the same shape and dtype, and that it replaces whole layers (every tensor of each
/// layer it touches), so a half-written or foreign file is refused before it is used.
pub(crate) fn check(delta: &Path, base: &Path) -> Result<Delta> {
    let invalid = |message: String| Error::InvalidModelFile {
        path: delta.to_owned(),
        message,
    };
    let sha256 = super::sha256_file(delta)?;
    let open = |path: &Path| -> Result<MmapedSafetensors> {
        #[expect(
            unsafe_code,
            reason = "mmap of a safetensors file that is only read while it is mapped"
        )]
        // SAFETY: read-only; the project never writes to a model file it has loaded.
        unsafe { MmapedSafetensors::new(path) }.map_err(|source| Error::Weights {
            path: path.to_owned(),
            source,
        })
    };
    let (delta_st, base_st) = (open(delta)?, open(base)?);
    let base_tensors: std::collections::HashMap<String, _> =
        base_st.tensors().into_iter().collect();
    let mut layers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (name, view) in delta_st.tensors() {
        let Some(layer) = layer_of(&name) else {
            return Err(invalid(format!(
                "`{name}` is not a tensor of a transformer layer (`encoder.layer.N.…`)"
            )));
        };
        let Some(original) = base_tensors.get(&name) else {
            return Err(invalid(format!(
                "`{name}` is not in the base model {}",
                base.display()
            )));
        };
        if view.shape() != original.shape() || view.dtype() != original.dtype() {
            return Err(invalid(format!(
                "`{name}` is {:?} {:?}, the base model's is {:?} {:?}",
                view.dtype(),
                view.shape(),
                original.dtype(),
                original.shape()
            )));
        }
        layers.insert(layer);
        names.insert(name);
    }
    if layers.is_empty() {
        return Err(invalid("the delta holds no tensor".to_owned()));
    }
    for name in base_tensors.keys() {
        if layer_of(name).is_some_and(|l| layers.contains(&l)) && !names.contains(name) {
            return Err(invalid(format!(
                "it replaces layer {} but lacks its `{name}`",
                layer_of(name).unwrap_or_default()
            )));
        }
    }
    Ok(Delta {
        path: delta.to_owned(),
        sha256,
        layers: layers.into_iter().collect(),
    })
}

/// What a router on disk must hold at `path`: with `expected`, a delta of that digest; without,
/// none (an earlier router's delta left there is removed).
pub(crate) fn check_stored(path: &Path, expected: Option<&str>) -> Result<()> {
    let Some(expected) = expected else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        };
    };
    let found = super::sha256_file(path)?;
    if found == expected {
        return Ok(());
    }
    Err(Error::Artifact {
        path: path.to_owned(),
        message: format!(
            "the manifest gives the fine-tuned layers sha256 {expected}, the file has {found}"
        ),
    })
}

/// The transformer layer a tensor belongs to: N in `[bert.]encoder.layer.N.…`.
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("bert.").unwrap_or(name);
    let rest = rest.strip_prefix("encoder.layer.")?;
    let (n, tail) = rest.split_once('.')?;
    (!tail.is_empty()).then_some(())?;
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_are_read_with_or_without_the_bert_prefix() {
        assert_eq!(layer_of("encoder.layer.5.output.dense.weight"), Some(5));
        assert_eq!(
            layer_of("bert.encoder.layer.11.attention.self.query.bias"),
            Some(11)
        );
        assert_eq!(layer_of("embeddings.word_embeddings.weight"), None);
        assert_eq!(layer_of("encoder.layer.x.output.dense.weight"), None);
        assert_eq!(layer_of("encoder.layer.3."), None);
        assert_eq!(layer_of("pooler.dense.weight"), None);
    }
}
