//! Int8 dense layers for the router's CPU encoder: `y = x · Wᵀ + b` with the weights quantised once per
//! output channel and the activations quantised per row on the fly (dynamic W8A8, as ONNX
//! Runtime's dynamic quantisation does for BERT).
//!
//! Weights: `w_q = round(w / s_w)`, `s_w = max|w| / 127` per output channel. Activations:
//! `x_q = round(x / s_x) + 128 ∈ [1, 255]`, `s_x = max|x| / 127` per row, so that the products
//! are unsigned × signed bytes, which is what AVX-512 VNNI's `vpdpbusd` multiplies. The offset
//! is taken out exactly with the channel's weight sum: `Σ x_q·w_q − 128·Σ w_q = Σ (x/s_x)·w_q`.
//!
//! The integer dot products are exact, so every kernel (AVX-512 VNNI, AVX2, NEON with or
//! without `sdot`, portable) gives the same accumulators and, through the same epilogue, the
//! same outputs: an embedding does not depend on the machine that computed it.
//!
//! The crate has no dependencies, so that its tests cross-build for aarch64 in seconds and run
//! under `qemu-aarch64` (`tests/aarch64_qemu.rs`). Threads are the caller's: rows are
//! independent, so [`Int8Linear::forward`] may be called on disjoint runs of rows at once.
// The unsafe code is the SIMD kernels (other targets run the portable code).
#![cfg_attr(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    expect(
        unsafe_code,
        reason = "SIMD intrinsics behind runtime CPU feature detection; every unsafe block is \
              reached only after the features it needs were detected, and reads inside \
              buffers whose lengths are checked on entry"
    )
)]

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod gelu;
mod kernel;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use gelu::gelu_erf;
pub use kernel::Int8Kernel;

/// Output channels per packed panel (four 16-lane vectors).
pub const NR: usize = 64;
/// Rows per micro-kernel call (a good multiple for a caller splitting rows across threads).
pub const MR: usize = 6;

/// An activation applied to the layer's output in the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `x · Φ(x)` with the exact (erf) normal CDF, as BERT's `gelu`.
    GeluErf,
}

/// A dense layer with int8 weights, packed for the kernels.
#[derive(Debug, Clone)]
pub struct Int8Linear {
    n: usize,
    k: usize,
    /// `n/NR` panels; in each, for every group of 4 inputs, `NR` channels × 4 bytes.
    packed: Vec<i8>,
    /// Per output channel: the weight scale.
    w_scale: Vec<f32>,
    /// Per output channel: `128 · Σ w_q`.
    w_offset: Vec<i32>,
    bias: Vec<f32>,
    activation: Activation,
    /// The weights widened to 16 bits in the AVX2 kernel's layout, made on its first use.
    #[cfg(target_arch = "x86_64")]
    wide: std::sync::OnceLock<Vec<i16>>,
}

impl Int8Linear {
    /// Quantises `weight` (`n × k`, row-major, one row per output channel) and `bias` (`n`).
    ///
    /// Returns `None` when the shape does not suit the packing (`n` not a multiple of [`NR`]
    /// or `k` not a multiple of 4).
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        activation: Activation,
    ) -> Option<Self> {
        if k == 0 || weight.len() != n * k {
            return None;
        }
        let mut q = vec![0i8; n * k];
        let mut w_scale = vec![0f32; n];
        for ((row, dst), scale) in weight
            .chunks_exact(k)
            .zip(q.chunks_exact_mut(k))
            .zip(&mut w_scale)
        {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            *scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            for (dst, &v) in dst.iter_mut().zip(row) {
                *dst = (v / *scale).round().clamp(-127.0, 127.0) as i8;
            }
        }
        Self::from_quantized(&q, w_scale, bias.to_vec(), n, k, activation)
    }

    /// A layer from weights already quantised: `q` (`n × k`, row-major) and `w_scale` (`n`),
    /// as [`Int8Linear::quantized`] gives them back. `None` on the shapes [`Int8Linear::new`]
    /// refuses.
    pub fn from_quantized(
        q: &[i8],
        w_scale: Vec<f32>,
        bias: Vec<f32>,
        n: usize,
        k: usize,
        activation: Activation,
    ) -> Option<Self> {
        if n == 0
            || k == 0
            || !n.is_multiple_of(NR)
            || !k.is_multiple_of(4)
            || q.len() != n * k
            || w_scale.len() != n
            || bias.len() != n
        {
            return None;
        }
        let w_offset = q
            .chunks_exact(k)
            .map(|row| 128 * row.iter().map(|&v| i32::from(v)).sum::<i32>())
            .collect();
        let mut packed = vec![0i8; n * k];
        for (row, group, at) in packing(n, k) {
            packed[at..at + 4].copy_from_slice(&q[row * k + group * 4..][..4]);
        }
        Some(Self {
            n,
            k,
            packed,
            w_scale,
            w_offset,
            bias,
            activation,
            #[cfg(target_arch = "x86_64")]
            wide: std::sync::OnceLock::new(),
        })
    }

    /// The quantised weights (`n × k`, row-major) and their per-channel scales.
    pub fn quantized(&self) -> (Vec<i8>, &[f32]) {
        let k = self.k;
        let mut q = vec![0i8; self.n * k];
        for (row, group, at) in packing(self.n, k) {
            q[row * k + group * 4..][..4].copy_from_slice(&self.packed[at..at + 4]);
        }
        (q, &self.w_scale)
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// `out (m × n) = act(x (m × k) · Wᵀ + b)` for every row of `x`, on this thread, in the
    /// kernel's instruction set. A kernel the CPU lacks (a caller's mistake) runs the portable
    /// code instead: same outputs, never UB.
    pub fn forward(&self, kernel: Int8Kernel, x: &[f32], out: &mut [f32]) {
        assert!(x.len().is_multiple_of(self.k), "input rows are not k long");
        let m = x.len() / self.k;
        assert_eq!(out.len(), m * self.n, "output is not m × n");
        match kernel {
            // SAFETY: the guards checked the CPU features each function is compiled for.
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni if kernel.runs_here() => unsafe { x86::rows_vnni(self, x, out) },
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 if kernel.runs_here() => unsafe { x86::rows_avx2(self, x, out) },
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::NeonDotprod if kernel.runs_here() => unsafe {
                aarch64::rows_dotprod(self, x, out)
            },
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::Neon => aarch64::rows_neon(self, x, out),
            _ => self.rows_with(x, out, dot_portable),
        }
    }

    /// Quantises the rows, runs `dot` over every (row block, panel) and writes the epilogue.
    /// Inlined into each kernel's `#[target_feature]` function so that the quantisation and the
    /// epilogue are compiled for the same instruction set as the products.
    #[inline(always)]
    fn rows_with(
        &self,
        x: &[f32],
        out: &mut [f32],
        dot: impl Fn(&[u8], usize, usize, &[i8], &mut [[i32; NR]; MR]),
    ) {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        let (xq, x_scale) = quantize_rows(x, m, k);
        let panel_len = k * NR;
        let mut acc = [[0i32; NR]; MR];
        for (panel, w) in self.packed.chunks_exact(panel_len).enumerate() {
            let ch0 = panel * NR;
            let mut r0 = 0;
            while r0 < m {
                let rows = MR.min(m - r0);
                let xb = &xq[r0 * k..(r0 + rows) * k];
                assert!(w.len() == panel_len, "panel buffers are too short");
                dot(xb, rows, k, w, &mut acc);
                for (r, acc) in acc.iter().enumerate().take(rows) {
                    let row = r0 + r;
                    self.epilogue(
                        acc,
                        x_scale[row],
                        ch0,
                        &mut out[row * n + ch0..row * n + ch0 + NR],
                    );
                }
                r0 += rows;
            }
        }
    }

    #[inline(always)]
    fn epilogue(&self, acc: &[i32; NR], x_scale: f32, ch0: usize, out: &mut [f32]) {
        let scales = &self.w_scale[ch0..ch0 + NR];
        let offsets = &self.w_offset[ch0..ch0 + NR];
        let bias = &self.bias[ch0..ch0 + NR];
        for j in 0..NR {
            // Wrapping: exact (|acc| < 2³¹ for k < 66,000), and without the overflow check
            // the loop vectorises.
            out[j] = acc[j].wrapping_sub(offsets[j]) as f32 * (x_scale * scales[j]) + bias[j];
        }
        if self.activation == Activation::GeluErf {
            for v in out.iter_mut() {
                *v = gelu_erf(*v);
            }
        }
    }
}

/// Where the packed layout keeps each group of 4 weights: `(channel, group, offset)` for every
/// channel and group of 4 inputs. Panels of `NR` channels; in each, for every group, `NR`
/// channels × 4 bytes.
fn packing(n: usize, k: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let groups = k / 4;
    (0..n).flat_map(move |ch| {
        (0..groups).map(move |g| (ch, g, (((ch / NR) * groups + g) * NR + ch % NR) * 4))
    })
}

/// Quantises each row of `x` (`m × k`) to bytes `round(x / s) + 128` with `s = max|x| / 127`.
#[inline(always)]
pub(crate) fn quantize_rows(x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; m * k];
    let mut scales = vec![0f32; m];
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        let amax = abs_max(row);
        let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        let inv = 1.0 / scale;
        for (dst, &v) in q[r * k..(r + 1) * k].iter_mut().zip(row) {
            // Through i32, without branches, so that the loop vectorises (a NaN gives 0 as a
            // plain cast to u8 does; every other value is a whole number in [1, 255]).
            *dst = (round_half_away(v * inv).clamp(-127.0, 127.0) + 128.0) as i32 as u8;
        }
        scales[r] = scale;
    }
    (q, scales)
}

/// `max |x|` (NaNs ignored, 0 for none), in 8 lanes so that it vectorises: `max` is exact,
/// so the order does not change the result.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    lanes.iter().chain(rest).fold(0f32, |m, v| m.max(v.abs()))
}

/// `y.round()` (halves away from zero), written so that loops over it vectorise: the
/// truncation, then one step away from zero when the dropped part is at least a half (exact:
/// `y − trunc(y)` is representable).
#[inline(always)]
fn round_half_away(y: f32) -> f32 {
    let t = y.trunc();
    let step = if (y - t).abs() >= 0.5 { 1f32 } else { 0.0 };
    t + step.copysign(y)
}

/// `acc[r][j] = Σ_i x[r·k + i] · w[channel j, input i]` for `rows ≤ MR` rows of one panel.
fn dot_portable(x: &[u8], rows: usize, k: usize, w: &[i8], acc: &mut [[i32; NR]; MR]) {
    for (r, acc) in acc.iter_mut().enumerate().take(rows) {
        acc.fill(0);
        let x = &x[r * k..(r + 1) * k];
        // The weights of a group of 4 inputs are channel-major, 4 bytes per channel.
        for (xs, wg) in x.chunks_exact(4).zip(w.chunks_exact(NR * 4)) {
            for (a, ws) in acc.iter_mut().zip(wg.chunks_exact(4)) {
                *a += xs
                    .iter()
                    .zip(ws)
                    .map(|(&x, &w)| i32::from(x) * i32::from(w))
                    .sum::<i32>();
            }
        }
    }
}

/// A deterministic pseudo-random sequence in [-1, 1) (xorshift), for tests here and in
/// router-core, so that they need no crate.
#[doc(hidden)]
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gelu::erf;

    fn reference(w: &[f32], b: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i]))
                    .sum();
                y[r * n + c] = dot as f32 + b[c];
            }
        }
        y
    }

    #[test]
    fn every_kernel_gives_the_same_outputs() {
        // Rows: two full micro-kernel blocks and a tail of one, one row, five. Inputs: 24 groups
        // of 4, an odd 25 (the NEON kernels' group tails), one. The products are exact integers
        // and the epilogue is the same code (`mul_add` is correctly rounded with or without FMA
        // hardware), so the outputs must be equal, not close. A kernel the CPU lacks runs the
        // portable code, so every one of them can be asked for.
        for (m, n, k) in [(13, 128, 96), (1, 64, 100), (5, 192, 4), (7, 64, 1536)] {
            let w = noise(1, n * k);
            let b = noise(2, n);
            let x = noise(3, m * k);
            for activation in [Activation::Identity, Activation::GeluErf] {
                let layer = Int8Linear::new(&w, &b, n, k, activation)
                    .unwrap_or_else(|| panic!("shape suits the packing"));
                let mut want = vec![0f32; m * n];
                layer.forward(Int8Kernel::Portable, &x, &mut want);
                for kernel in Int8Kernel::ALL {
                    let mut got = vec![0f32; m * n];
                    layer.forward(kernel, &x, &mut got);
                    assert_eq!(
                        got, want,
                        "{kernel:?} differs from the portable kernel ({m}×{n}×{k})"
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_inputs_give_the_same_outputs_on_every_kernel() {
        // Every activation at ±127 after quantisation and every weight at ±127: the largest
        // products, where a kernel that saturates (16-bit sums) would differ.
        let (m, n, k) = (6, 64, 64);
        let w: Vec<f32> = (0..n * k)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| if i % 5 == 0 { -2.0 } else { 2.0 })
            .collect();
        let layer = Int8Linear::new(&w, &vec![0.0; n], n, k, Activation::Identity)
            .unwrap_or_else(|| panic!("shape suits the packing"));
        let mut want = vec![0f32; m * n];
        layer.forward(Int8Kernel::Portable, &x, &mut want);
        for kernel in Int8Kernel::ALL {
            let mut got = vec![0f32; m * n];
            layer.forward(kernel, &x, &mut got);
            assert_eq!(got, want, "{kernel:?} differs from the portable kernel");
        }
    }

    #[test]
    fn the_detected_kernel_is_the_expected_one() {
        // Set by tests/aarch64_qemu.rs for each CPU model it emulates.
        if let Ok(want) = std::env::var("ROUTER_INT8_EXPECT_KERNEL") {
            assert_eq!(Int8Kernel::detect().as_str(), want);
        }
        assert!(Int8Kernel::detect().runs_here());
        assert!(Int8Kernel::Portable.runs_here());
        for kernel in Int8Kernel::ALL {
            assert_eq!(Int8Kernel::from_name(kernel.as_str()), Some(kernel));
        }
    }

    #[test]
    fn int8_is_close_to_f32() {
        let (m, n, k) = (7, 64, 384);
        let w = noise(4, n * k);
        let b = noise(5, n);
        let x = noise(6, m * k);
        let want = reference(&w, &b, &x, m, n, k);
        let layer = Int8Linear::new(&w, &b, n, k, Activation::Identity)
            .unwrap_or_else(|| panic!("shape suits the packing"));
        let mut got = vec![0f32; m * n];
        layer.forward(Int8Kernel::detect(), &x, &mut got);
        // Rounding x to steps of 1/127 of its row maximum (here ≈ 1) and w likewise adds
        // noise of σ ≈ step/√12 · |other factor| per product, ≈ √k · 0.0019 ≈ 0.036 per output:
        // under 1 % of the outputs' spread (≈ 6.9) in RMS, the worst of 448 under 4 %.
        let spread = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
        let errors: Vec<f32> = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).collect();
        let rms = (errors.iter().map(|e| e * e).sum::<f32>() / errors.len() as f32).sqrt();
        let worst = errors.iter().copied().fold(0f32, f32::max);
        assert!(rms < 0.01 * spread, "RMS error {rms}, spread {spread}");
        assert!(
            worst < 0.04 * spread,
            "worst error {worst}, spread {spread}"
        );
    }

    #[test]
    fn unsuitable_shapes_are_refused() {
        let w = vec![0.5f32; 60 * 8];
        assert!(Int8Linear::new(&w, &[0.0; 60], 60, 8, Activation::Identity).is_none());
        let w = vec![0.5f32; 64 * 6];
        assert!(Int8Linear::new(&w, &[0.0; 64], 64, 6, Activation::Identity).is_none());
    }

    #[test]
    fn rounding_halves_away_from_zero_matches_round() {
        let mut cases = vec![
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
        ];
        cases.extend(noise(11, 10_000).iter().map(|v| v * 300.0));
        cases.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
        for y in cases {
            let (want, got) = (y.round(), round_half_away(y));
            assert!(
                want == got || (want.is_nan() && got.is_nan()),
                "{y}: {want} vs {got}"
            );
        }
    }

    #[test]
    fn erf_matches_numerical_integration() {
        // erf(x) = 2/√π ∫₀ˣ e^{-t²} dt by Simpson's rule with 2,000 intervals (error < 1e-12).
        let reference = |x: f64| {
            let n = 2000;
            let h = x / n as f64;
            let f = |t: f64| (-t * t).exp();
            let mut s = f(0.0) + f(x);
            for i in 1..n {
                s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -60..=60 {
            let x = i as f64 / 10.0;
            let got = f64::from(erf(x as f32));
            assert!((got - reference(x)).abs() < 2e-6, "erf({x}) = {got}");
        }
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
    }
}
