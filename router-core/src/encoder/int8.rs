//! Int8 dense layers for the CPU encoder: `y = x · Wᵀ + b` with the weights quantised once per
//! output channel and the activations quantised per row on the fly (dynamic W8A8, as ONNX
//! Runtime's dynamic quantisation does for BERT).
//!
//! Weights: `w_q = round(w / s_w)`, `s_w = max|w| / 127` per output channel. Activations:
//! `x_q = round(x / s_x) + 128 ∈ [1, 255]`, `s_x = max|x| / 127` per row, so that the products
//! are unsigned × signed bytes, which is what AVX-512 VNNI's `vpdpbusd` multiplies. The offset
//! is taken out exactly with the channel's weight sum: `Σ x_q·w_q − 128·Σ w_q = Σ (x/s_x)·w_q`.
//!
//! The integer dot products are exact, so every kernel (VNNI, AVX2, portable) gives the same
//! accumulators and, through the same epilogue, the same outputs: an embedding does not depend
//! on the machine that computed it.
// The unsafe code is x86 only (other targets run the portable code).
#![cfg_attr(
    target_arch = "x86_64",
    expect(
        unsafe_code,
        reason = "SIMD intrinsics behind runtime CPU feature detection; every unsafe block is \
              reached only after the features it needs were detected, and reads inside \
              buffers whose lengths are checked on entry"
    )
)]

/// The version of the int8 path's arithmetic (quantisation, kernels' epilogue, the f32 parts in
/// `cpu_ops`). Bump it whenever an embedding could change by even one bit: embedding caches are
/// keyed by it, and routers record it (`encoder.int8_scheme`), so that a router is never fed
/// embeddings rounded differently from the ones it was trained on without a warning.
pub const SCHEME: u32 = 1;

/// Output channels per packed panel (four 16-lane vectors).
const NR: usize = 64;
/// Rows per micro-kernel call.
const MR: usize = 6;
/// Channels per AVX2 sub-panel (two 8-lane vectors).
const WIDE: usize = 16;
/// Rows per AVX2 micro-kernel call (its accumulators, weights and broadcasts fill 14 of the
/// 16 vector registers).
const MR_WIDE: usize = 4;

/// An activation applied to the layer's output in the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Identity,
    /// `x · Φ(x)` with the exact (erf) normal CDF, as BERT's `gelu`.
    GeluErf,
}

/// A dense layer with int8 weights, packed for the kernels.
#[derive(Debug, Clone)]
pub(crate) struct Int8Linear {
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
    wide: std::sync::OnceLock<Vec<i16>>,
}

/// Which kernel computes the integer products on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpbusd`): Intel Ice Lake and later, AMD Zen 4 and later.
    Avx512Vnni,
    /// AVX2 and FMA (`vpmaddwd` on bytes widened to 16 bits: exact, where `vpmaddubsw`
    /// would saturate on 255 · 127 · 2).
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl Int8Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // FMA too: the epilogue's and the f32 code's `mul_add` must be an instruction.
            let fma = std::is_x86_feature_detected!("fma");
            if fma
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
            {
                return Self::Avx512Vnni;
            }
            if fma && std::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// [`Int8Kernel::detect`], unless `ROUTER_INT8_KERNEL` names a slower kernel this CPU can
    /// run (`avx2` or `portable`; for benchmarks and tests). Every kernel gives the same
    /// outputs, so this changes the speed only.
    pub fn from_env_or_detect() -> Self {
        let best = Self::detect();
        let Ok(wanted) = std::env::var("ROUTER_INT8_KERNEL") else {
            return best;
        };
        let supported = |k: Self| match (best, k) {
            (_, Self::Portable) => true,
            (Self::Avx512Vnni | Self::Avx2, Self::Avx2) => true,
            (b, k) => b == k,
        };
        match [Self::Avx512Vnni, Self::Avx2, Self::Portable]
            .into_iter()
            .find(|k| k.as_str() == wanted)
        {
            Some(k) if supported(k) => k,
            _ => {
                tracing::warn!(
                    wanted,
                    using = best.as_str(),
                    "ROUTER_INT8_KERNEL names no kernel this CPU runs"
                );
                best
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }
}

impl Int8Linear {
    /// Quantises `weight` (`n × k`, row-major, one row per output channel) and `bias` (`n`).
    ///
    /// Returns `None` when the shape does not suit the packing (`n` not a multiple of 64 or
    /// `k` not a multiple of 4); [`super::quantized::QuantizedBert::supports`] refuses such
    /// models first, and the encoder then runs in f32.
    pub(crate) fn new(
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
    pub(crate) fn from_quantized(
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
            wide: std::sync::OnceLock::new(),
        })
    }

    /// The weights in the AVX2 kernel's layout (made once): per panel of `NR` channels, four
    /// sub-panels of 16; in each, for every pair of inputs, 16 channels × 2 weights as `i16`
    /// (two 8-lane vectors that `vpmaddwd` multiplies with a broadcast pair of inputs).
    fn wide(&self) -> &[i16] {
        self.wide.get_or_init(|| {
            let k = self.k;
            let (q, _) = self.quantized();
            let mut wide = vec![0i16; self.n * k];
            for (ch, row) in q.chunks_exact(k).enumerate() {
                let (panel, sub, lane) = (ch / NR, (ch % NR) / WIDE, ch % WIDE);
                let base = panel * k * NR + sub * k * WIDE;
                for (pair, w) in row.chunks_exact(2).enumerate() {
                    let at = base + pair * 2 * WIDE + lane * 2;
                    wide[at] = i16::from(w[0]);
                    wide[at + 1] = i16::from(w[1]);
                }
            }
            wide
        })
    }

    /// The quantised weights (`n × k`, row-major) and their per-channel scales.
    pub(crate) fn quantized(&self) -> (Vec<i8>, &[f32]) {
        let k = self.k;
        let mut q = vec![0i8; self.n * k];
        for (row, group, at) in packing(self.n, k) {
            q[row * k + group * 4..][..4].copy_from_slice(&self.packed[at..at + 4]);
        }
        (q, &self.w_scale)
    }

    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// `out (m × n) = act(x (m × k) · Wᵀ + b)`.
    pub(crate) fn forward(&self, kernel: Int8Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "input is not m × k");
        assert_eq!(out.len(), m * self.n, "output is not m × n");
        // Rows are independent: with more than one thread, each takes a contiguous run of rows
        // (a multiple of the micro-kernel's) through every panel.
        let threads = rayon::current_num_threads();
        if threads > 1 && m >= 2 * MR && m * self.n * self.k >= 1 << 22 {
            use rayon::prelude::*;
            let rows = m.div_ceil(threads).next_multiple_of(MR);
            x.par_chunks(rows * self.k)
                .zip(out.par_chunks_mut(rows * self.n))
                .for_each(|(x, out)| self.rows(kernel, x, out));
        } else {
            self.rows(kernel, x, out);
        }
    }

    /// All panels for the rows of `x`, in the kernel's instruction set. A kernel the CPU
    /// lacks (a caller's mistake) runs the portable code instead: same outputs, never UB.
    fn rows(&self, kernel: Int8Kernel, x: &[f32], out: &mut [f32]) {
        match kernel {
            // SAFETY: the guard checked the CPU features the function is compiled for (the
            // detection is cached: an atomic load).
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni if Int8Kernel::detect() == Int8Kernel::Avx512Vnni => unsafe {
                x86::rows_vnni(self, x, out)
            },
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2
                if std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma") =>
            unsafe { x86::rows_avx2(self, x, out) },
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
fn quantize_rows(x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Int8Linear, MR, MR_WIDE, NR, WIDE, quantize_rows};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) unsafe fn rows_vnni(layer: &Int8Linear, x: &[f32], out: &mut [f32]) {
        layer.rows_with(x, out, |x, rows, k, w, acc| {
            assert!(x.len() >= rows * k && w.len() == k * NR);
            // SAFETY: the caller checked the CPU features; the lengths are asserted above.
            unsafe {
                match rows {
                    1 => dot_vnni::<1>(x, k, w, acc),
                    2 => dot_vnni::<2>(x, k, w, acc),
                    3 => dot_vnni::<3>(x, k, w, acc),
                    4 => dot_vnni::<4>(x, k, w, acc),
                    5 => dot_vnni::<5>(x, k, w, acc),
                    _ => dot_vnni::<6>(x, k, w, acc),
                }
            }
        });
    }

    /// The AVX2 path: the same quantised rows, widened to 16 bits and interleaved once (per
    /// block of [`MR_WIDE`] rows, for each pair of inputs each row's pair as one `i32`), then
    /// per panel every sub-panel of 16 channels over all rows (the sub-panel stays in cache),
    /// then the same epilogue.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(layer: &Int8Linear, x: &[f32], out: &mut [f32]) {
        let (k, n) = (layer.k, layer.n);
        let m = x.len() / k;
        let (xq, x_scale) = quantize_rows(x, m, k);
        let pairs = k / 2;
        let mut xw = vec![0i32; m * pairs];
        for r0 in (0..m).step_by(MR_WIDE) {
            let rows = MR_WIDE.min(m - r0);
            let block = &mut xw[r0 * pairs..(r0 + rows) * pairs];
            for r in 0..rows {
                let row = &xq[(r0 + r) * k..(r0 + r + 1) * k];
                for (p, two) in row.chunks_exact(2).enumerate() {
                    let (lo, hi) = (i32::from(two[0]), i32::from(two[1]));
                    block[p * rows + r] = lo | (hi << 16);
                }
            }
        }
        let mut acc = vec![[0i32; NR]; m];
        for (panel, w) in layer.wide().chunks_exact(k * NR).enumerate() {
            for (sub, ws) in w.chunks_exact(k * WIDE).enumerate() {
                for r0 in (0..m).step_by(MR_WIDE) {
                    let rows = MR_WIDE.min(m - r0);
                    let xs = &xw[r0 * pairs..(r0 + rows) * pairs];
                    let acc = &mut acc[r0..r0 + rows];
                    // SAFETY: the caller checked the CPU features; `xs` holds `rows` rows of
                    // `pairs`, `ws` one sub-panel of `k · WIDE`, `acc` `rows` rows.
                    unsafe {
                        match rows {
                            1 => dot_avx2::<1>(xs, pairs, ws, acc, sub),
                            2 => dot_avx2::<2>(xs, pairs, ws, acc, sub),
                            3 => dot_avx2::<3>(xs, pairs, ws, acc, sub),
                            _ => dot_avx2::<4>(xs, pairs, ws, acc, sub),
                        }
                    }
                }
            }
            let ch0 = panel * NR;
            for (row, acc) in acc.iter().enumerate() {
                let out = &mut out[row * n + ch0..row * n + ch0 + NR];
                layer.epilogue(acc, x_scale[row], ch0, out);
            }
        }
    }

    /// AVX2 micro-kernel: `R` rows × 16 channels in 2 × R accumulators of 8 lanes (with 2
    /// weight vectors and R broadcasts, 14 of the 16 registers at R = 4). Each step
    /// broadcasts a row's pair of 16-bit inputs and `vpmaddwd`s it with 8 channels' pairs of
    /// weights: exact, as 255 · 127 · 2 fits 32 bits.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_avx2<const R: usize>(
        x: &[i32],
        pairs: usize,
        w: &[i16],
        acc: &mut [[i32; NR]],
        sub: usize,
    ) {
        assert!(x.len() >= R * pairs && w.len() >= pairs * 2 * WIDE && acc.len() >= R);
        let mut sums = [[_mm256_setzero_si256(); 2]; R];
        let mut xp = x.as_ptr();
        let mut wp = w.as_ptr();
        for _ in 0..pairs {
            // SAFETY (whole loop): `pairs` steps of R inputs and 2 · WIDE weights stay within
            // the lengths asserted above.
            unsafe {
                let w0 = _mm256_loadu_si256(wp.cast());
                let w1 = _mm256_loadu_si256(wp.add(WIDE).cast());
                for (r, s) in sums.iter_mut().enumerate() {
                    let a = _mm256_set1_epi32(*xp.add(r));
                    s[0] = _mm256_add_epi32(s[0], _mm256_madd_epi16(a, w0));
                    s[1] = _mm256_add_epi32(s[1], _mm256_madd_epi16(a, w1));
                }
                xp = xp.add(R);
                wp = wp.add(2 * WIDE);
            }
        }
        for (s, acc) in sums.iter().zip(acc.iter_mut()) {
            let lanes = &mut acc[sub * WIDE..(sub + 1) * WIDE];
            // SAFETY: `lanes` holds 16 i32: two stores of 8.
            unsafe {
                _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s[0]);
                _mm256_storeu_si256(lanes[8..].as_mut_ptr().cast(), s[1]);
            }
        }
    }

    /// VNNI micro-kernel: `R` rows × 64 channels, 4 × R accumulators of 16 lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_vnni<const R: usize>(
        x: &[u8],
        k: usize,
        w: &[i8],
        acc: &mut [[i32; NR]; MR],
    ) {
        let mut sums = [[_mm512_setzero_si512(); 4]; R];
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for g in 0..k / 4 {
            // SAFETY (whole loop): g·256 + 256 ≤ k·64 = w.len(); r·k + g·4 + 4 ≤ R·k ≤ x.len().
            unsafe {
                let wg = wp.add(g * NR * 4);
                let w0 = _mm512_loadu_si512(wg.cast());
                let w1 = _mm512_loadu_si512(wg.add(64).cast());
                let w2 = _mm512_loadu_si512(wg.add(128).cast());
                let w3 = _mm512_loadu_si512(wg.add(192).cast());
                for (r, s) in sums.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(xp.add(r * k + g * 4).cast::<i32>().read_unaligned());
                    s[0] = _mm512_dpbusd_epi32(s[0], a, w0);
                    s[1] = _mm512_dpbusd_epi32(s[1], a, w1);
                    s[2] = _mm512_dpbusd_epi32(s[2], a, w2);
                    s[3] = _mm512_dpbusd_epi32(s[3], a, w3);
                }
            }
        }
        for (r, s) in sums.iter().enumerate() {
            for (j, v) in s.iter().enumerate() {
                // SAFETY: acc[r] holds NR = 64 i32, j·16 + 16 ≤ 64.
                unsafe { _mm512_storeu_si512(acc[r][j * 16..].as_mut_ptr().cast(), *v) };
            }
        }
    }
}

/// `x · Φ(x)` with `erf` from a rational approximation (the one Eigen and XLA use for f32,
/// exact to a few ulp on [-4, 4], where it is clamped); branch-free so loops over it vectorise.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_5e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

/// One int8 dense layer of `n × k` made-up weights, for benchmarks of the kernels
/// (`benches/int8.rs`): the layer type itself stays private to the encoder.
#[doc(hidden)]
pub struct BenchLayer(Int8Linear);

#[doc(hidden)]
impl BenchLayer {
    /// `None` on a shape the packing refuses.
    pub fn new(n: usize, k: usize) -> Option<Self> {
        let weight: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 255) as f32 - 127.0)
            .collect();
        let bias = vec![0.5; n];
        Int8Linear::new(&weight, &bias, n, k, Activation::Identity).map(Self)
    }

    /// `out (m × n) = x (m × k) · Wᵀ + b` on `kernel`, on this thread.
    pub fn forward(&self, kernel: Int8Kernel, x: &[f32], out: &mut [f32]) {
        self.0.rows(kernel, x, out);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1) (xorshift), so tests need no crate.
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<f32> {
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

    fn kernels() -> Vec<Int8Kernel> {
        let mut all = vec![Int8Kernel::Portable];
        if cfg!(target_arch = "x86_64") {
            all.extend([Int8Kernel::Avx2, Int8Kernel::Avx512Vnni]);
        }
        // A kernel the CPU lacks runs the portable code, so every one of them can be asked for.
        all
    }

    #[test]
    fn every_kernel_gives_the_same_outputs() {
        // 13 rows: two full micro-kernel blocks and a tail of one. The products are exact
        // integers and the epilogue is the same code (`mul_add` is correctly rounded with or
        // without FMA hardware), so the outputs must be equal, not close.
        let (m, n, k) = (13, 128, 96);
        let w = noise(1, n * k);
        let b = noise(2, n);
        let x = noise(3, m * k);
        for activation in [Activation::Identity, Activation::GeluErf] {
            let layer = Int8Linear::new(&w, &b, n, k, activation)
                .unwrap_or_else(|| panic!("shape suits the packing"));
            let mut want = vec![0f32; m * n];
            layer.forward(Int8Kernel::Portable, &x, m, &mut want);
            for kernel in kernels() {
                let mut got = vec![0f32; m * n];
                layer.forward(kernel, &x, m, &mut got);
                assert_eq!(got, want, "{kernel:?} differs from the portable kernel");
            }
        }
    }

    #[test]
    fn rows_split_across_threads_give_the_same_outputs() {
        // Large enough for the parallel path: 90 rows × 128 × 384 ≥ 2²².
        let (m, n, k) = (90, 128, 384);
        let layer = Int8Linear::new(&noise(7, n * k), &noise(8, n), n, k, Activation::Identity)
            .unwrap_or_else(|| panic!("shape suits the packing"));
        let x = noise(9, m * k);
        let run = |threads: usize| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap_or_else(|e| panic!("thread pool: {e}"));
            let mut out = vec![0f32; m * n];
            pool.install(|| layer.forward(Int8Kernel::detect(), &x, m, &mut out));
            out
        };
        assert_eq!(run(1), run(3));
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
        layer.forward(Int8Kernel::detect(), &x, m, &mut got);
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
