//! The f32 parts of the int8 CPU encoder: layer norm and attention.
//!
//! Written so that the compiler vectorises them without reordering any float arithmetic (sums
//! kept in 8 explicit lanes, products accumulated along the contiguous dimension), and compiled
//! for AVX2 + FMA where the CPU has it. Every instruction set runs the same operations in the
//! same order, `mul_add` included, so the results are the same everywhere.
// The unsafe code is x86 only (other targets run the portable code).
#![cfg_attr(
    target_arch = "x86_64",
    expect(
        unsafe_code,
        reason = "calls into `#[target_feature]` copies of the same safe code, reached only after \
              the CPU features were detected"
    )
)]

use rayon::prelude::*;

use super::int8::Int8Kernel;

const LANES: usize = 8;

/// Σ x in 8 lanes, then the lanes and the remainder in order.
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().chain(rest).fold(0.0, |s, v| s + v)
}

/// max x in 8 lanes (−∞ for an empty slice).
#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v))
}

/// e^x for x ≤ 0 (Cephes' `expf` polynomial, within 2 ulp), 0 below −87.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer, branch-free.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let rounded = xc * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // n ∈ [−126, 0]: 2ⁿ is a normal float. `rounded`'s low mantissa bits hold n (two's
    // complement around 0x4B40_0000), which avoids a float-to-int conversion that would not
    // vectorise.
    let exponent = rounded
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127);
    let scale = f32::from_bits(exponent << 23);
    if x < -87.0 { 0.0 } else { e * scale }
}

/// `x ← LayerNorm(x + residual)` row by row (`width` values per row).
#[inline(always)]
fn layer_norm_rows(x: &mut [f32], residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    for (r, row) in x.chunks_exact_mut(width).enumerate() {
        if let Some(res) = residual {
            for (v, y) in row.iter_mut().zip(&res[r * width..(r + 1) * width]) {
                *v += y;
            }
        }
        let mean = sum8(row) / width as f32;
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                let d = c[l] - mean;
                acc[l] = d.mul_add(d, acc[l]);
            }
        }
        let var = acc
            .iter()
            .copied()
            .chain(rest.iter().map(|v| (v - mean) * (v - mean)))
            .fold(0.0, |s, v| s + v)
            / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = ((*v - mean) * inv).mul_add(*g, *b);
        }
    }
}

/// Shapes of one sequence's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    fn hidden(self) -> usize {
        self.heads * self.head_dim
    }
}

/// Softmax attention of query rows `rows` of one sequence.
///
/// `qkv`: the sequence's `len` rows of `[q | k | v]` (3·h wide, queries already scaled by
/// 1/√d); `keys_t`: per head, the keys transposed (`head_dim × len`); `out`: the context rows
/// for `rows`, h wide; `bias`: per head, `2·len − 1` values added to the scores, the one for
/// query `i` and key `t` at `t − i + len − 1` (MPNet's relative positions). `HD` is the head
/// dimension when it is known at compile time (32 and 64, the common ones: the context then
/// stays in registers), else 0 and `shape.head_dim` is used.
#[inline(always)]
fn attention_rows<const HD: usize>(
    qkv: &[f32],
    keys_t: &[f32],
    bias: Option<&[f32]>,
    shape: Heads,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (h, hd) = (shape.hidden(), shape.head_dim);
    debug_assert!(HD == 0 || HD == hd);
    let len = qkv.len() / (3 * h);
    let mut scores = vec![0f32; len];
    let mut context = vec![0f32; hd];
    for (i, out_row) in rows.zip(out.chunks_exact_mut(h)) {
        for head in 0..shape.heads {
            let q = &qkv[i * 3 * h + head * hd..i * 3 * h + (head + 1) * hd];
            let kt = &keys_t[head * hd * len..(head + 1) * hd * len];
            scores.fill(0.0);
            for (qd, krow) in q.iter().zip(kt.chunks_exact(len)) {
                for (s, k) in scores.iter_mut().zip(krow) {
                    *s = qd.mul_add(*k, *s);
                }
            }
            if let Some(bias) = bias {
                let from = head * (2 * len - 1) + (len - 1 - i);
                for (s, b) in scores.iter_mut().zip(&bias[from..from + len]) {
                    *s += b;
                }
            }
            let max = max8(&scores);
            for s in scores.iter_mut() {
                *s = exp_nonpositive(*s - max);
            }
            let inv = 1.0 / sum8(&scores);
            let v_at = |t: usize| &qkv[t * 3 * h + 2 * h + head * hd..][..hd];
            let o = &mut out_row[head * hd..(head + 1) * hd];
            if HD > 0 {
                let mut acc = [0f32; HD];
                for (t, p) in scores.iter().enumerate() {
                    for (a, v) in acc.iter_mut().zip(v_at(t)) {
                        *a = p.mul_add(*v, *a);
                    }
                }
                for (o, a) in o.iter_mut().zip(acc) {
                    *o = a * inv;
                }
            } else {
                context.fill(0.0);
                for (t, p) in scores.iter().enumerate() {
                    for (a, v) in context.iter_mut().zip(v_at(t)) {
                        *a = p.mul_add(*v, *a);
                    }
                }
                for (o, a) in o.iter_mut().zip(&context) {
                    *o = a * inv;
                }
            }
        }
    }
}

/// [`attention_rows`] for the head dimension at hand.
#[inline(always)]
fn attention_rows_any(
    qkv: &[f32],
    keys_t: &[f32],
    bias: Option<&[f32]>,
    shape: Heads,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    match shape.head_dim {
        32 => attention_rows::<32>(qkv, keys_t, bias, shape, rows, out),
        64 => attention_rows::<64>(qkv, keys_t, bias, shape, rows, out),
        _ => attention_rows::<0>(qkv, keys_t, bias, shape, rows, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Heads;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn layer_norm_rows(
        x: &mut [f32],
        residual: Option<&[f32]>,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        super::layer_norm_rows(x, residual, gamma, beta, eps);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn attention_rows(
        qkv: &[f32],
        keys_t: &[f32],
        bias: Option<&[f32]>,
        shape: Heads,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        super::attention_rows_any(qkv, keys_t, bias, shape, rows, out);
    }
}

/// Whether the f32 code may use AVX2 + FMA: not when the portable kernel was asked for (to
/// measure it), and only where the CPU has both (the detection is cached).
fn simd(kernel: Int8Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernel != Int8Kernel::Portable
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        false
    }
}

/// `x ← LayerNorm(x + residual)` over rows of `gamma.len()` values.
pub(crate) fn layer_norm(
    kernel: Int8Kernel,
    x: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    if simd(kernel) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` checked that the CPU has AVX2 and FMA.
        unsafe {
            x86::layer_norm_rows(x, residual, gamma, beta, eps);
        }
    } else {
        layer_norm_rows(x, residual, gamma, beta, eps);
    }
}

/// One sequence's self-attention: `qkv` is its `len × 3h` projections, `out` its `len × h`
/// context, `bias` an optional per-head table of `2·len − 1` score offsets by relative
/// position ([`attention_rows`]). Query rows are split across threads when there is more than
/// one.
pub(crate) fn attention(
    kernel: Int8Kernel,
    qkv: &[f32],
    bias: Option<&[f32]>,
    shape: Heads,
    out: &mut [f32],
) {
    let (h, hd) = (shape.hidden(), shape.head_dim);
    let len = qkv.len() / (3 * h);
    assert_eq!(out.len(), len * h, "context is not len × h");
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            shape.heads * (2 * len - 1),
            "bias is not heads × (2·len − 1)"
        );
    }
    let mut keys_t = vec![0f32; shape.heads * hd * len];
    for t in 0..len {
        let k = &qkv[t * 3 * h + h..t * 3 * h + 2 * h];
        for (c, v) in k.iter().enumerate() {
            let (head, d) = (c / hd, c % hd);
            keys_t[(head * hd + d) * len + t] = *v;
        }
    }
    let run = |rows: std::ops::Range<usize>, out: &mut [f32]| {
        if simd(kernel) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `layer_norm`.
            unsafe {
                x86::attention_rows(qkv, &keys_t, bias, shape, rows, out);
            }
        } else {
            attention_rows_any(qkv, &keys_t, bias, shape, rows, out);
        }
    };
    let threads = rayon::current_num_threads();
    if threads > 1 && len >= 32 {
        let chunk = len.div_ceil(threads);
        out.par_chunks_mut(chunk * h)
            .enumerate()
            .for_each(|(c, out)| run(c * chunk..(c * chunk + out.len() / h), out));
    } else {
        run(0..len, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp() {
        for i in 0..=8700 {
            let x = -(i as f32) / 100.0;
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            assert!(
                (got - want).abs() <= 3e-7 * want + 1e-38,
                "exp({x}) = {got}, want {want}"
            );
        }
        // Below −87 (e^x < 1.7e-38) it flushes to 0.
        assert_eq!(exp_nonpositive(-87.01), 0.0);
        assert_eq!(exp_nonpositive(-200.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    /// Attention by the textbook formula, in f64, with the scores offset by `bias`.
    fn reference(qkv: &[f32], bias: Option<&[f32]>, shape: Heads) -> Vec<f32> {
        let (h, hd) = (shape.hidden(), shape.head_dim);
        let len = qkv.len() / (3 * h);
        let mut out = vec![0f32; len * h];
        for head in 0..shape.heads {
            for i in 0..len {
                let at = |t: usize, part: usize, d: usize| {
                    f64::from(qkv[t * 3 * h + part * h + head * hd + d])
                };
                let offset = |t: usize| {
                    bias.map_or(0.0, |b| {
                        f64::from(b[head * (2 * len - 1) + t + len - 1 - i])
                    })
                };
                let s: Vec<f64> = (0..len)
                    .map(|t| (0..hd).map(|d| at(i, 0, d) * at(t, 1, d)).sum::<f64>() + offset(t))
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let v: f64 = (0..len).map(|t| e[t] / z * at(t, 2, d)).sum();
                    out[i * h + head * hd + d] = v as f32;
                }
            }
        }
        out
    }

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn attention_matches_the_formula_on_every_path() {
        // Head dimension 8 takes the generic path, 32 the one with the context in registers.
        for head_dim in [8, 32] {
            let shape = Heads { heads: 3, head_dim };
            let h = 3 * head_dim;
            // 37 tokens: lanes plus a remainder, and enough rows for the parallel split.
            let qkv = noise(37 * 3 * h, 11);
            // With MPNet's relative-position offsets too: one per head and distance.
            let table = noise(3 * (2 * 37 - 1), 12);
            for bias in [None, Some(table.as_slice())] {
                let want = reference(&qkv, bias, shape);
                let mut outputs = Vec::new();
                for kernel in [Int8Kernel::Portable, Int8Kernel::detect()] {
                    for threads in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap_or_else(|e| panic!("thread pool: {e}"));
                        let mut out = vec![0f32; 37 * h];
                        pool.install(|| attention(kernel, &qkv, bias, shape, &mut out));
                        let worst = out
                            .iter()
                            .zip(&want)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        // f32 sums of up to 37 terms of size ≤ 2 against f64: a few 1e-5 at most.
                        assert!(
                            worst < 1e-4,
                            "{kernel:?}, {threads} threads, d {head_dim}: {worst}"
                        );
                        outputs.push(out);
                    }
                }
                assert!(outputs.windows(2).all(|w| w[0] == w[1]), "paths differ");
            }
        }
    }

    #[test]
    fn layer_norm_matches_the_formula_on_every_path() {
        let width = 21;
        let x = noise(3 * width, 5);
        let residual = noise(3 * width, 6);
        let gamma = noise(width, 7);
        let beta = noise(width, 8);
        let mut outputs = Vec::new();
        for kernel in [Int8Kernel::Portable, Int8Kernel::detect()] {
            let mut y = x.clone();
            layer_norm(kernel, &mut y, Some(&residual), &gamma, &beta, 1e-12);
            for r in 0..3 {
                let row: Vec<f64> = (0..width)
                    .map(|i| f64::from(x[r * width + i]) + f64::from(residual[r * width + i]))
                    .collect();
                let mean = row.iter().sum::<f64>() / width as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
                for i in 0..width {
                    let want = (row[i] - mean) / (var + 1e-12).sqrt() * f64::from(gamma[i])
                        + f64::from(beta[i]);
                    let got = f64::from(y[r * width + i]);
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{kernel:?} row {r}: {got} vs {want}"
                    );
                }
            }
            outputs.push(y);
        }
        assert_eq!(outputs[0], outputs[1]);
    }
}
