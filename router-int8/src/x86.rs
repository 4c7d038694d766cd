//! The x86-64 kernels: AVX-512 VNNI (`vpdpbusd`) and AVX2 (`vpmaddwd` on 16-bit inputs).

use std::arch::x86_64::*;

use crate::{Int8Linear, MR, NR, quantize_rows};

/// Channels per AVX2 sub-panel (two 8-lane vectors).
const WIDE: usize = 16;
/// Rows per AVX2 micro-kernel call (its accumulators, weights and broadcasts fill 14 of the
/// 16 vector registers).
const MR_WIDE: usize = 4;

impl Int8Linear {
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
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
pub(crate) unsafe fn rows_vnni(layer: &Int8Linear, x: &[f32], out: &mut [f32]) {
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
pub(crate) unsafe fn rows_avx2(layer: &Int8Linear, x: &[f32], out: &mut [f32]) {
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
pub(crate) unsafe fn dot_avx2<const R: usize>(
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
pub(crate) unsafe fn dot_vnni<const R: usize>(
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
