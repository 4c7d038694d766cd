//! Per-model quality-prediction metrics: ROC AUC, Brier score, expected calibration error.

/// ROC AUC of predictions `p` against binary labels `y ≥ 0.5`, ties counted half
/// (Mann–Whitney). `None` when one class is absent.
pub fn auc(p: &[f32], y: &[f32]) -> Option<f64> {
    let mut pairs: Vec<(f32, bool)> = p.iter().zip(y).map(|(&p, &y)| (p, y >= 0.5)).collect();
    let positives = pairs.iter().filter(|(_, pos)| *pos).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the (average) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg_rank * pairs[i..j].iter().filter(|(_, pos)| *pos).count() as f64;
        i = j;
    }
    let (pos, neg) = (positives as f64, negatives as f64);
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Mean squared error between predicted probability and (soft) outcome.
pub fn brier(p: &[f32], y: &[f32]) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    p.iter()
        .zip(y)
        .map(|(&p, &y)| f64::from(p - y).powi(2))
        .sum::<f64>()
        / p.len() as f64
}

/// Expected calibration error over `bins` equal-width bins of the prediction.
pub fn ece(p: &[f32], y: &[f32], bins: usize) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    let mut sum_p = vec![0.0f64; bins];
    let mut sum_y = vec![0.0f64; bins];
    let mut count = vec![0usize; bins];
    for (&p, &y) in p.iter().zip(y) {
        let b = ((p * bins as f32) as usize).min(bins - 1);
        sum_p[b] += f64::from(p);
        sum_y[b] += f64::from(y);
        count[b] += 1;
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (sum_p[b] - sum_y[b]).abs())
        .sum::<f64>()
        / p.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        // Positives 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered → 0.75.
        let p = [0.9, 0.4, 0.5, 0.1];
        let y = [1.0, 1.0, 0.0, 0.0];
        assert_eq!(auc(&p, &y), Some(0.75));
        // A tie between a positive and a negative counts half.
        assert_eq!(auc(&[0.5, 0.5], &[1.0, 0.0]), Some(0.5));
        assert_eq!(auc(&[0.5, 0.6], &[1.0, 1.0]), None);
    }

    #[test]
    fn brier_and_ece_by_hand() {
        let p = [0.8, 0.8, 0.2];
        let y = [1.0, 0.0, 0.0];
        // (0.04 + 0.64 + 0.04) / 3
        assert!((brier(&p, &y) - 0.24).abs() < 1e-6);
        // bin of 0.8: |1.6 − 1| = 0.6; bin of 0.2: |0.2 − 0| = 0.2 → 0.8 / 3
        assert!((ece(&p, &y, 10) - 0.8 / 3.0).abs() < 1e-6);
    }
}
