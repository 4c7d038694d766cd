//! The kNN head: k and α tuned on validation (or leave-one-out), and the training rows its index
//! keeps.

use super::*;

pub(super) fn fit_knn(
    train: &SplitData,
    val: &SplitData,
    prior: &[f32],
    k: Option<usize>,
    alpha: Option<f32>,
    device: &Device,
) -> Result<Fitted> {
    let index = KeyIndex::new(&train.x, train.n, train.dim)?;
    let (ks, alphas) = knn_grid(k, alpha);
    let kmax = ks.iter().copied().max().unwrap_or(20);
    let neighbours = index.nearest(&val.x, kmax, |_| None)?;
    let tuned = tune_knn(&neighbours, train, prior, val, (&ks, &alphas), device)?;
    let knn = Knn::new(
        index,
        train.y.clone(),
        train.mask.clone(),
        prior.to_vec(),
        tuned.k,
        tuned.alpha,
    )?;
    knn_fitted(knn, tuned.k, tuned.alpha, "validation", tuned.score)
}

/// The kNN's `k` and `α` chosen from `grid` by the [`KnnScore`] of its predictions for
/// `judged`, whose rows have `neighbours` (nearest first) among the rows of `keys`.
pub(super) struct KnnTuned {
    score: KnnScore,
    k: usize,
    alpha: f32,
    /// The chosen predictions for `judged`, one row of logits per prompt.
    logits: Vec<Vec<f32>>,
}

pub(super) fn tune_knn(
    neighbours: &[Vec<usize>],
    keys: &SplitData,
    prior: &[f32],
    judged: &SplitData,
    (ks, alphas): (&[usize], &[f32]),
    device: &Device,
) -> Result<KnnTuned> {
    let logits_for = |k: usize, alpha: f32| -> Vec<Vec<f32>> {
        neighbours
            .iter()
            .map(|nb| {
                shrunk_logits(&keys.y, &keys.mask, prior, &nb[..k.min(nb.len())], alpha).collect()
            })
            .collect()
    };
    let (_, y, mask) = judged.tensors(device)?;
    let mut best: Option<KnnTuned> = None;
    for &k in ks {
        for &alpha in alphas {
            let logits = logits_for(k, alpha);
            let flat: Vec<f32> = logits.iter().flatten().copied().collect();
            let flat = Tensor::from_vec(flat, (judged.n, judged.models), device)?;
            let score = KnnScore::of(&flat, judged, &y, &mask)?;
            if best.as_ref().is_none_or(|b| score.better_than(&b.score)) {
                best = Some(KnnTuned {
                    score,
                    k,
                    alpha,
                    logits,
                });
            }
        }
    }
    Ok(best.unwrap_or_else(|| KnnTuned {
        score: KnnScore::NONE,
        k: 20,
        alpha: 0.0,
        logits: logits_for(20, 0.0),
    }))
}

/// What chooses the kNN's `k` and `α`: the pairwise loss, which scores how the logits order the
/// models on each prompt (all that routing uses), then the BCE where it ties or is undefined.
///
/// The BCE alone rewards predicting how hard a prompt is for every model, which a small `k`
/// does well and routing does not use: on the shipped data it picked k = 20 on zeroeval,
/// where the pairwise loss picks 100.
#[derive(Debug, Clone, Copy)]
pub(super) struct KnnScore {
    pub(super) bce: f64,
    pub(super) pairwise: f64,
}

impl KnnScore {
    const NONE: Self = Self {
        bce: f64::NAN,
        pairwise: f64::NAN,
    };

    /// The losses of `logits` `(n, models)` against `data`, whose targets and mask are also
    /// given as tensors (`y`, `mask`).
    fn of(logits: &Tensor, data: &SplitData, y: &Tensor, mask: &Tensor) -> Result<Self> {
        Ok(Self {
            bce: f64::from(masked_bce(logits, y, mask)?.to_scalar::<f32>()?),
            pairwise: pairwise_loss(
                &logits.flatten_all()?.to_vec1()?,
                &data.y,
                &data.mask,
                data.models,
            ),
        })
    }

    pub(super) fn better_than(&self, other: &Self) -> bool {
        match (self.pairwise.is_nan(), other.pairwise.is_nan()) {
            (false, false) if self.pairwise != other.pairwise => self.pairwise < other.pairwise,
            (false, true) => true,
            (true, false) => false,
            _ => self.bce < other.bce || (other.bce.is_nan() && !self.bce.is_nan()),
        }
    }
}

/// A fitted kNN head, with its tuned `k` and `alpha` and the losses that chose them (`split`
/// names the predictions they were measured on).
pub(super) fn knn_fitted(
    knn: Knn,
    k: usize,
    alpha: f32,
    split: &str,
    score: KnnScore,
) -> Result<Fitted> {
    let tensors = knn.tensors()?;
    let keys = knn.keys();
    Ok(Fitted {
        spec: HeadSpec::Knn { k, alpha },
        head: Head::Knn(Box::new(knn)),
        tensors,
        hyperparameters: BTreeMap::from([
            ("k".into(), k as f64),
            ("alpha".into(), f64::from(alpha)),
            ("keys".into(), keys as f64),
            (format!("best_{split}_loss"), score.bce),
            (format!("{split}_pairwise_loss"), score.pairwise),
        ]),
    })
}

/// The (k, α) candidates: the given value, or the grid tuned over.
pub(super) fn knn_grid(k: Option<usize>, alpha: Option<f32>) -> (Vec<usize>, Vec<f32>) {
    (
        k.map_or_else(|| vec![5, 10, 20, 50, 100], |k| vec![k]),
        alpha.map_or_else(|| vec![0.0, 1.0, 3.0, 10.0, 30.0], |a| vec![a]),
    )
}

/// kNN on all rows; k and α chosen by the [`KnnScore`] of leave-one-out predictions (each row's
/// neighbours exclude itself), which are also the out-of-fold logits.
pub(super) fn fit_knn_loo(
    data: &SplitData,
    k: Option<usize>,
    alpha: Option<f32>,
    max_keys: usize,
    seed: u64,
    device: &Device,
) -> Result<(Fitted, Vec<Vec<f32>>)> {
    let prior = data.prior();
    let (ks, alphas) = knn_grid(k, alpha);
    // The index keeps a sample of the rows when there are too many; every row is still
    // predicted (out of fold: without itself when it is a key).
    let sample = knn_rows(data.n, max_keys, seed);
    let keys = sample.as_ref().map(|rows| data.subset(rows));
    let keys = keys.as_ref().unwrap_or(data);
    let key_of_row: Vec<Option<usize>> = match &sample {
        Some(rows) => {
            let mut key_of_row = vec![None; data.n];
            for (key, &row) in rows.iter().enumerate() {
                key_of_row[row] = Some(key);
            }
            key_of_row
        }
        None => (0..data.n).map(Some).collect(),
    };
    let index = KeyIndex::new(&keys.x, keys.n, keys.dim)?;
    // Each row's nearest other rows, nearest first, computed in chunks.
    let kmax = ks.iter().copied().max().unwrap_or(20);
    let chunk = 256;
    let mut neighbours: Vec<Vec<usize>> = Vec::with_capacity(data.n);
    for (c, rows) in data.x.chunks(chunk * data.dim).enumerate() {
        neighbours.extend(index.nearest(rows, kmax, |row| key_of_row[c * chunk + row])?);
    }
    let tuned = tune_knn(&neighbours, keys, &prior, data, (&ks, &alphas), device)?;
    let (k, alpha) = (tuned.k, tuned.alpha);
    let knn = Knn::new(index, keys.y.clone(), keys.mask.clone(), prior, k, alpha)?;
    Ok((
        knn_fitted(knn, k, alpha, "leave_one_out", tuned.score)?,
        tuned.logits,
    ))
}

/// The rows of `n` a kNN index keeps: `None` (all of them) up to `max`, else `max` rows drawn
/// without replacement ([`SplitMix`] from `seed`), in increasing order.
pub fn knn_rows(n: usize, max: usize, seed: u64) -> Option<Vec<usize>> {
    if n <= max {
        return None;
    }
    let mut rows: Vec<usize> = (0..n).collect();
    SplitMix::new(seed).shuffle(&mut rows);
    rows.truncate(max);
    rows.sort_unstable();
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_knn_index_keeps_a_seeded_sample_beyond_its_cap() {
        assert_eq!(knn_rows(10, 10, 0), None);
        let rows = knn_rows(100, 30, 7).unwrap_or_default();
        assert_eq!(rows.len(), 30);
        assert!(rows.windows(2).all(|w| w[0] < w[1]) && rows[29] < 100);
        assert_eq!(knn_rows(100, 30, 7), Some(rows.clone()));
        assert_ne!(knn_rows(100, 30, 8), Some(rows));
    }
}
