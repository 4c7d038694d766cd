//! Platt scaling: `p = σ(a·z + b)` on the head's logit `z`, one `(a, b)` per model, fitted on
//! the validation split by `router-train` (shared by every model, pooled toward a shared one, or
//! per model) so that a predicted 0.8 means "right 80 % of the time", which is what makes a
//! quality band comparable across models.

use serde::{Deserialize, Serialize};

/// Platt parameters of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platt {
    pub a: f32,
    pub b: f32,
}

impl Platt {
    pub const IDENTITY: Self = Self { a: 1.0, b: 0.0 };

    pub fn apply(&self, logit: f32) -> f32 {
        sigmoid(self.a * logit + self.b)
    }
}

pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// `ln(p / (1 − p))`, with `p` clamped away from 0 and 1.
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

/// Fits `σ(a·z + b)` to soft targets `y ∈ [0, 1]` by Newton's method on the weighted log loss,
/// with a ridge penalty `l2 · ((a − 1)² + b²)` that keeps the fit near the identity when the
/// validation set is small, and the slope at most `max_slope`: a slope above 1 stretches the
/// head's logits, and the errors in them, and on a small validation set it overtakes the
/// comparison between models (a model stretched by 1.5 wins prompts it should lose). Past the
/// cap the slope is fixed at `max_slope` and only `b` is refitted. Returns the identity for
/// empty input.
pub fn fit_platt(z: &[f32], y: &[f32], w: &[f32], l2: f64, max_slope: f32) -> Platt {
    let free = fit_platt_free(z, y, w, l2);
    if free.a <= max_slope {
        return free;
    }
    let a = f64::from(max_slope);
    let mut b = f64::from(free.b);
    for _ in 0..50 {
        let (mut g, mut h) = (2.0 * l2 * b, 2.0 * l2);
        for ((&zi, &yi), &wi) in z.iter().zip(y).zip(w) {
            let p = 1.0 / (1.0 + (-(a * f64::from(zi) + b)).exp());
            g += f64::from(wi) * (p - f64::from(yi));
            h += f64::from(wi) * p * (1.0 - p);
        }
        if h < 1e-12 {
            break;
        }
        let step = g / h;
        b -= step;
        if step.abs() < 1e-7 {
            break;
        }
    }
    Platt {
        a: max_slope,
        b: b as f32,
    }
}

fn fit_platt_free(z: &[f32], y: &[f32], w: &[f32], l2: f64) -> Platt {
    let (mut a, mut b) = (1.0f64, 0.0f64);
    if z.is_empty() {
        return Platt::IDENTITY;
    }
    for _ in 0..50 {
        // Gradient and Hessian of Σ w·logloss + l2·((a−1)² + b²).
        let (mut ga, mut gb) = (2.0 * l2 * (a - 1.0), 2.0 * l2 * b);
        let (mut haa, mut hab, mut hbb) = (2.0 * l2, 0.0, 2.0 * l2);
        for ((&zi, &yi), &wi) in z.iter().zip(y).zip(w) {
            let (zi, yi, wi) = (f64::from(zi), f64::from(yi), f64::from(wi));
            let p = 1.0 / (1.0 + (-(a * zi + b)).exp());
            let r = wi * (p - yi);
            ga += r * zi;
            gb += r;
            let s = wi * p * (1.0 - p);
            haa += s * zi * zi;
            hab += s * zi;
            hbb += s;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if da.abs() < 1e-7 && db.abs() < 1e-7 {
            break;
        }
    }
    Platt {
        a: a as f32,
        b: b as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_scaling() {
        // Targets drawn exactly from σ(0.5·z − 0.3): the fit must return those parameters.
        let z: Vec<f32> = (-40..=40).map(|i| i as f32 / 8.0).collect();
        let y: Vec<f32> = z.iter().map(|&z| sigmoid(0.5 * z - 0.3)).collect();
        let w = vec![1.0; z.len()];
        let p = fit_platt(&z, &y, &w, 0.0, f32::INFINITY);
        assert!((p.a - 0.5).abs() < 1e-3, "{p:?}");
        assert!((p.b + 0.3).abs() < 1e-3, "{p:?}");
    }

    #[test]
    fn the_slope_cap_refits_the_intercept() {
        // Data drawn from σ(2z + 0.5): the free fit finds a = 2; capped at 1 it keeps a = 1 and
        // refits b, which stays between the free intercept and 0 by symmetry of the data.
        let z: Vec<f32> = (-40..=40).map(|i| i as f32 / 8.0).collect();
        let y: Vec<f32> = z.iter().map(|&z| sigmoid(2.0 * z + 0.5)).collect();
        let w = vec![1.0; z.len()];
        let free = fit_platt(&z, &y, &w, 0.0, f32::INFINITY);
        assert!((free.a - 2.0).abs() < 1e-3, "{free:?}");
        let capped = fit_platt(&z, &y, &w, 0.0, 1.0);
        assert_eq!(capped.a, 1.0);
        assert!(capped.b > 0.0 && capped.b < 0.5 + 1e-3, "{capped:?}");
    }

    #[test]
    fn empty_input_is_identity() {
        assert_eq!(fit_platt(&[], &[], &[], 1.0, 1.0), Platt::IDENTITY);
    }

    #[test]
    fn logit_inverts_sigmoid() {
        for p in [0.1f32, 0.5, 0.9] {
            assert!((sigmoid(logit(p)) - p).abs() < 1e-5);
        }
    }
}
