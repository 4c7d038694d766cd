//! The kNN head's index: the training prompts' embeddings, quantised to int8 per row and
//! searched exhaustively by inner product with the encoder's int8 kernels ([`Int8Linear`]).
//!
//! A router keeps one key per training prompt, 384 to 1,152 floats each, so the keys are most of
//! a kNN router's file and scanning them most of its predict time (a scan for one prompt reads
//! every key). In int8 they take a quarter of the bytes. Each key is quantised with its own scale
//! (`max|x| / 127`), the query per row as the encoder's activations are, and the integer dot
//! products are exact, so the similarities are the same on every CPU and the same at training
//! and at serving: the neighbours a router was tuned with are the ones it serves with.

use crate::encoder::int8::{self, Activation, Int8Kernel, Int8Linear};
use crate::error::{Error, Result};

/// Keys are padded with zero rows to a multiple of this ([`Int8Linear`]'s panel width).
const ROWS: usize = 64;
/// Key and query dimensions are padded with zeros to a multiple of this.
const COLUMNS: usize = 4;

/// Int8 keys for exact inner-product search.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    n: usize,
    dim: usize,
    kernel: Int8Kernel,
    keys: Int8Linear,
}

impl KeyIndex {
    /// Quantises `keys` (`n × dim`, row-major).
    pub fn new(keys: &[f32], n: usize, dim: usize) -> Result<Self> {
        check_shape(keys.len(), n, dim, "keys")?;
        let (n_pad, dim_pad) = padded(n, dim);
        let keys = Int8Linear::new(
            &pad(keys, dim, n_pad, dim_pad),
            &vec![0.0; n_pad],
            n_pad,
            dim_pad,
            Activation::Identity,
        );
        Self::wrap(keys, n, dim)
    }

    /// An index from keys already quantised, as [`KeyIndex::quantized`] gives them back:
    /// `q` (`n × dim`, row-major) and one positive, finite `scale` per key.
    pub fn from_quantized(q: &[i8], scales: &[f32], n: usize, dim: usize) -> Result<Self> {
        check_shape(q.len(), n, dim, "quantised keys")?;
        if scales.len() != n {
            return Err(Error::InvalidInput(format!(
                "{} key scales for {n} keys",
                scales.len()
            )));
        }
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::InvalidInput(format!(
                "a key scale is {bad}: scales are positive and finite"
            )));
        }
        let (n_pad, dim_pad) = padded(n, dim);
        let padded_q = pad(q, dim, n_pad, dim_pad);
        let mut padded_scales = scales.to_vec();
        padded_scales.resize(n_pad, 1.0);
        let keys = Int8Linear::from_quantized(
            &padded_q,
            padded_scales,
            vec![0.0; n_pad],
            n_pad,
            dim_pad,
            Activation::Identity,
        );
        Self::wrap(keys, n, dim)
    }

    fn wrap(keys: Option<Int8Linear>, n: usize, dim: usize) -> Result<Self> {
        let keys = keys.ok_or_else(|| {
            Error::InvalidInput(format!("cannot index {n} keys of dimension {dim}"))
        })?;
        Ok(Self {
            n,
            dim,
            kernel: int8::kernel_from_env(),
            keys,
        })
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The quantised keys (`len × dim`, row-major) and their scales: what a router stores.
    pub fn quantized(&self) -> (Vec<i8>, Vec<f32>) {
        let (q, scales) = self.keys.quantized();
        let q = unpad(&q, self.keys_dim_padded(), self.n, self.dim);
        (q, scales[..self.n].to_vec())
    }

    /// The inner products of each query (`m × dim`, row-major) with every key: `m × len`.
    pub fn similarities(&self, queries: &[f32]) -> Result<Vec<f32>> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let m = queries.len() / self.dim;
        check_shape(queries.len(), m, self.dim, "queries")?;
        let dim_pad = self.keys_dim_padded();
        let n_pad = self.keys.out_features();
        let mut out = vec![0f32; m * n_pad];
        if dim_pad == self.dim {
            int8::forward(&self.keys, self.kernel, queries, m, &mut out);
        } else {
            let queries = pad(queries, self.dim, m, dim_pad);
            int8::forward(&self.keys, self.kernel, &queries, m, &mut out);
        }
        if n_pad != self.n {
            out = unpad(&out, n_pad, m, self.n);
        }
        Ok(out)
    }

    /// For each query (`m × dim`, row-major), the `k` most similar keys, most similar first
    /// (ties to the lower index), leaving out the key `skip(query)` names (leave-one-out).
    pub fn nearest(
        &self,
        queries: &[f32],
        k: usize,
        skip: impl Fn(usize) -> Option<usize>,
    ) -> Result<Vec<Vec<usize>>> {
        let sims = self.similarities(queries)?;
        Ok(sims
            .chunks_exact(self.n)
            .enumerate()
            .map(|(query, row)| top_k(row, k, skip(query)))
            .collect())
    }

    fn keys_dim_padded(&self) -> usize {
        self.dim.next_multiple_of(COLUMNS)
    }
}

/// The indices of the `k` largest values of `row` (ties to the lower index), largest first,
/// without `skip`.
fn top_k(row: &[f32], k: usize, skip: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).filter(|&j| Some(j) != skip).collect();
    let order = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    let k = k.min(idx.len());
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
    }
    idx.truncate(k);
    idx.sort_unstable_by(order);
    idx
}

/// `rows` (row-major, `dim` wide) as `n_pad` rows `dim_pad` wide, zero-filled.
fn pad<T: Copy + Default>(rows: &[T], dim: usize, n_pad: usize, dim_pad: usize) -> Vec<T> {
    let mut out = vec![T::default(); n_pad * dim_pad];
    for (dst, src) in out.chunks_exact_mut(dim_pad).zip(rows.chunks_exact(dim)) {
        dst[..dim].copy_from_slice(src);
    }
    out
}

/// The first `keep` values of the first `n` rows of `rows` (row-major, `width` wide): what
/// [`pad`] added, taken off again.
fn unpad<T: Copy>(rows: &[T], width: usize, n: usize, keep: usize) -> Vec<T> {
    rows.chunks_exact(width)
        .take(n)
        .flat_map(|row| &row[..keep])
        .copied()
        .collect()
}

fn padded(n: usize, dim: usize) -> (usize, usize) {
    (
        n.max(1).next_multiple_of(ROWS),
        dim.next_multiple_of(COLUMNS),
    )
}

fn check_shape(len: usize, n: usize, dim: usize, what: &str) -> Result<()> {
    if dim == 0 || n == 0 || len != n * dim {
        return Err(Error::InvalidInput(format!(
            "{what}: {len} values are not {n} rows of dimension {dim} (both at least 1)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::int8::tests::noise;

    fn normalised(mut v: Vec<f32>, dim: usize) -> Vec<f32> {
        for row in v.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    #[test]
    fn similarities_are_close_to_f32_and_neighbours_agree() -> Result<()> {
        // 130 keys (not a multiple of 64) of dimension 30 (not a multiple of 4): both padded.
        let (n, dim, m) = (130, 30, 7);
        let keys = normalised(noise(1, n * dim), dim);
        let queries = normalised(noise(2, m * dim), dim);
        let index = KeyIndex::new(&keys, n, dim)?;
        let sims = index.similarities(&queries)?;
        assert_eq!(sims.len(), m * n);
        for (q, row) in queries.chunks_exact(dim).zip(sims.chunks_exact(n)) {
            for (key, &got) in keys.chunks_exact(dim).zip(row) {
                let want: f32 = q.iter().zip(key).map(|(a, b)| a * b).sum();
                assert!((got - want).abs() < 0.02, "{got} vs {want}");
            }
        }
        // The nearest key of a query that is a key is that key, unless it is skipped.
        let probe = &keys[5 * dim..6 * dim];
        assert_eq!(index.nearest(probe, 1, |_| None)?[0], vec![5]);
        let without = index.nearest(probe, 3, |_| Some(5))?;
        assert_eq!(without[0].len(), 3);
        assert!(!without[0].contains(&5));
        let row = &index.similarities(probe)?;
        assert!(without[0].windows(2).all(|w| row[w[0]] >= row[w[1]]));
        Ok(())
    }

    #[test]
    fn stored_keys_rebuild_the_same_index() -> Result<()> {
        let (n, dim) = (70, 12);
        let keys = normalised(noise(3, n * dim), dim);
        let index = KeyIndex::new(&keys, n, dim)?;
        let (q, scales) = index.quantized();
        assert_eq!((q.len(), scales.len()), (n * dim, n));
        let again = KeyIndex::from_quantized(&q, &scales, n, dim)?;
        let queries = normalised(noise(4, 3 * dim), dim);
        assert_eq!(index.similarities(&queries)?, again.similarities(&queries)?);
        Ok(())
    }

    #[test]
    fn bad_shapes_and_scales_are_refused() {
        assert!(KeyIndex::new(&[0.0; 10], 3, 3).is_err());
        assert!(KeyIndex::new(&[], 0, 3).is_err());
        assert!(KeyIndex::from_quantized(&[1; 6], &[1.0], 2, 3).is_err());
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(KeyIndex::from_quantized(&[1; 6], &[1.0, bad], 2, 3).is_err());
        }
        let index = KeyIndex::new(&[1.0, 0.0, 0.0, 1.0], 2, 2).expect("a valid index");
        assert!(index.similarities(&[1.0, 0.0, 0.0]).is_err());
    }
}
