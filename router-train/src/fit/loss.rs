//! The training losses and the validation criteria: masked BCE (and softmax cross-entropy for
//! the task classifier), the pairwise term, and the pairwise loss that picks k, α and the
//! ensemble's members.

use super::*;

/// `ln(1 + eˣ)` elementwise, as `relu(x) + ln(1 + e^−|x|)`: no overflow for large `|x|`.
pub(super) fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// Masked binary cross-entropy with logits, averaged over evaluated cells.
/// `softplus(z) − y·z` is the BCE of `σ(z)` against a soft target `y`.
pub fn masked_bce(logits: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_cell = (softplus(logits)? - y.mul(logits)?)?;
    let total = per_cell.mul(mask)?.sum_all()?;
    let count = mask.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok(total.div(&count)?)
}

/// The pairwise loss as a tensor, for training: the mean BCE of `σ(l_a − l_b)` against
/// `½ + (y_a − y_b)/2` over each prompt's ordered pairs of observed models whose targets
/// differ, a pair weighing the product of its cells' `mask` weights (as [`pairwise_loss`]).
/// Rows are taken [`PAIR_ROWS`] at a time: a prompt's pairs are `models²` values, so the whole
/// validation split at once could take gigabytes.
pub fn pairwise_bce(logits: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let pairs =
        |t: &Tensor| -> Result<Tensor> { Ok(t.unsqueeze(2)?.broadcast_sub(&t.unsqueeze(1)?)?) };
    let n = logits.dim(0)?;
    let (mut total, mut count) = (Tensor::new(0f32, logits.device())?, 0.0);
    for start in (0..n).step_by(PAIR_ROWS) {
        let rows = PAIR_ROWS.min(n - start);
        let (logits, y, mask) = (
            logits.narrow(0, start, rows)?,
            y.narrow(0, start, rows)?,
            mask.narrow(0, start, rows)?,
        );
        let z = pairs(&logits)?;
        let dy = pairs(&y)?;
        let target = ((&dy * 0.5)? + 0.5)?;
        let differ = dy.ne(0f32)?.to_dtype(DType::F32)?;
        let weight = mask
            .unsqueeze(2)?
            .broadcast_mul(&mask.unsqueeze(1)?)?
            .mul(&differ)?;
        let chunk = (softplus(&z)? - target.mul(&z)?)?.mul(&weight)?.sum_all()?;
        count += f64::from(weight.sum_all()?.to_scalar::<f32>()?);
        total = (total + chunk)?;
    }
    Ok((total / count.max(1e-12))?)
}

/// Prompts per chunk of [`pairwise_bce`].
pub(super) const PAIR_ROWS: usize = 256;

/// Softmax cross-entropy of `logits` `(n, classes)` against one-hot `y`, over the rows whose
/// `mask` is 1 (a row's mask is all ones or all zeros).
pub fn masked_softmax_ce(logits: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let weight = y.mul(mask)?;
    let total = log_p.mul(&weight)?.sum_all()?.neg()?;
    let count = weight.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok(total.div(&count)?)
}

/// Mean BCE of `σ(l_a − l_b)` against `½ + (y_a − y_b)/2` over every prompt's pairs of observed
/// models whose scores differ: how well the logits order the models on each prompt, which is
/// all that routing uses of them. A pair weighs the product of its two cells' `mask` weights
/// (1 each unless the labels are propensity-weighted), so the criterion that picks k, α and the
/// ensemble's members reads the same weights as the losses that fit them.
pub fn pairwise_loss(logits: &[f32], y: &[f32], mask: &[f32], models: usize) -> f64 {
    let (mut total, mut weight) = (0f64, 0f64);
    for ((l, y), m) in logits
        .chunks_exact(models)
        .zip(y.chunks_exact(models))
        .zip(mask.chunks_exact(models))
    {
        for (w, term) in prompt_pair_losses(l, y, m) {
            total += w * term;
            weight += w;
        }
    }
    if weight == 0.0 {
        f64::NAN
    } else {
        total / weight
    }
}

/// One prompt's terms of [`pairwise_loss`], each with its weight: one per pair of observed
/// models whose scores differ.
pub(super) fn prompt_pair_losses<'a>(
    l: &'a [f32],
    y: &'a [f32],
    m: &'a [f32],
) -> impl Iterator<Item = (f64, f64)> + 'a {
    let models = l.len();
    (0..models)
        .flat_map(move |a| (a + 1..models).map(move |b| (a, b)))
        .filter(move |&(a, b)| m[a] != 0.0 && m[b] != 0.0 && y[a] != y[b])
        .map(move |(a, b)| {
            let z = f64::from(l[a] - l[b]);
            let t = 0.5 + f64::from(y[a] - y[b]) / 2.0;
            // softplus(z) − t·z, stable for large |z|.
            let term = z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z;
            (f64::from(m[a]) * f64::from(m[b]), term)
        })
}

/// The standard error of `pairwise_loss(a) − pairwise_loss(b)` on `data`'s rows, with the
/// prompts as the sampled units (a prompt's pairs move together): the ratio estimator's
/// linearisation, `√Σ_p (d_p − n_p·D)² / N` for prompt `p`'s weighted difference `d_p` over its
/// pairs of summed weight `n_p`, `N` the pairs' weight in all and the mean difference `D`. NaN
/// without pairs.
pub(super) fn paired_standard_error(a: &[f32], b: &[f32], data: &SplitData) -> f64 {
    let models = data.models;
    let prompts: Vec<(f64, f64)> = a
        .chunks_exact(models)
        .zip(b.chunks_exact(models))
        .zip(
            data.y
                .chunks_exact(models)
                .zip(data.mask.chunks_exact(models)),
        )
        .map(|((a, b), (y, m))| {
            let (mut d, mut n) = (0.0, 0.0);
            for ((w, ta), (_, tb)) in prompt_pair_losses(a, y, m).zip(prompt_pair_losses(b, y, m)) {
                d += w * (ta - tb);
                n += w;
            }
            (d, n)
        })
        .collect();
    let pairs: f64 = prompts.iter().map(|p| p.1).sum();
    let mean = prompts.iter().map(|p| p.0).sum::<f64>() / pairs;
    prompts
        .iter()
        .map(|(d, n)| (d - n * mean).powi(2))
        .sum::<f64>()
        .sqrt()
        / pairs
}
