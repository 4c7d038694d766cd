//! The AArch64 kernels, on the packed layout the VNNI kernel reads (for every group of 4
//! inputs, 64 channels × 4 bytes).
//!
//! NEON multiplies signed bytes by signed bytes, so the activations go in as `x_q − 128`
//! (∈ [−127, 127]) and the offset comes back exactly: `Σ x_q·w = Σ (x_q − 128)·w + 128·Σ w`,
//! the channel's `w_offset`. Both kernels then hand the epilogue the same accumulators as the
//! portable kernel.
//!
//! - `sdot` (the dot-product extension): 4 rows × 16 channels in 16 accumulators; each `sdot`
//!   multiplies 4 channels' 4 weights of a group by one row's 4 inputs, taken as a lane of a
//!   16-byte load that holds 4 groups of that row.
//! - Without it: `smull` then `smlal` (two groups, at most 2 · 127 · 127 = 32,258: exact in
//!   16 bits), then `sadalp` into 32 bits; 2 rows × 16 channels, two accumulators per 4 channels
//!   (pairs of partial sums, added pairwise at the end).
//!
//! Their speed has not been measured on ARM hardware; `tests/aarch64_qemu.rs` checks that they
//! give the portable kernel's outputs, under qemu, with and without `sdot`.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::{Int8Linear, NR, quantize_rows};

/// Channels per sub-panel (four 4-lane vectors).
const SUB: usize = 16;
/// Rows per `sdot` micro-kernel call (16 accumulators, 4 inputs and 4 weight vectors of the 32
/// registers).
const ROWS_DOT: usize = 4;
/// Rows per `smull` micro-kernel call (two accumulators per 4 channels).
const ROWS_MULL: usize = 2;

/// The `sdot` path.
///
/// # Safety
/// The CPU must have the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_dotprod(layer: &Int8Linear, x: &[f32], out: &mut [f32]) {
    rows(layer, x, out, ROWS_DOT, |xs, k16, w, groups, acc, sub| {
        // SAFETY: the caller checked the dot-product extension; `rows` passes buffers of the
        // lengths the micro-kernel asserts.
        unsafe {
            match acc.len() {
                1 => dot_sdot::<1>(xs, k16, w, groups, acc, sub),
                2 => dot_sdot::<2>(xs, k16, w, groups, acc, sub),
                3 => dot_sdot::<3>(xs, k16, w, groups, acc, sub),
                _ => dot_sdot::<4>(xs, k16, w, groups, acc, sub),
            }
        }
    });
}

/// The path for every AArch64 CPU (NEON is part of the base architecture).
pub(crate) fn rows_neon(layer: &Int8Linear, x: &[f32], out: &mut [f32]) {
    rows(
        layer,
        x,
        out,
        ROWS_MULL,
        |xs, k16, w, groups, acc, sub| match acc.len() {
            1 => dot_mull::<1>(xs, k16, w, groups, acc, sub),
            _ => dot_mull::<2>(xs, k16, w, groups, acc, sub),
        },
    );
}

/// Quantises the rows to signed bytes (`x_q − 128`, each row zero-padded to a multiple of 16),
/// runs `dot` over every (sub-panel, block of `block` rows), adds the offsets back and writes
/// the shared epilogue.
#[inline(always)]
fn rows(
    layer: &Int8Linear,
    x: &[f32],
    out: &mut [f32],
    block: usize,
    dot: impl Fn(&[i8], usize, &[i8], usize, &mut [[i32; NR]], usize),
) {
    let (k, n) = (layer.k, layer.n);
    let m = x.len() / k;
    let (xq, x_scale) = quantize_rows(x, m, k);
    let k16 = k.next_multiple_of(16);
    let mut xs = vec![0i8; m * k16];
    for (dst, src) in xs.chunks_exact_mut(k16).zip(xq.chunks_exact(k)) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s ^ 0x80) as i8;
        }
    }
    let groups = k / 4;
    let mut acc = vec![[0i32; NR]; m];
    for (panel, w) in layer.packed.chunks_exact(k * NR).enumerate() {
        for sub in 0..NR / SUB {
            for r0 in (0..m).step_by(block) {
                let rows = block.min(m - r0);
                dot(
                    &xs[r0 * k16..(r0 + rows) * k16],
                    k16,
                    w,
                    groups,
                    &mut acc[r0..r0 + rows],
                    sub,
                );
            }
        }
        let ch0 = panel * NR;
        let offsets = &layer.w_offset[ch0..ch0 + NR];
        for (row, acc) in acc.iter_mut().enumerate() {
            for (a, &o) in acc.iter_mut().zip(offsets) {
                *a = a.wrapping_add(o);
            }
            let out = &mut out[row * n + ch0..row * n + ch0 + NR];
            layer.epilogue(acc, x_scale[row], ch0, out);
        }
    }
}

/// The micro-kernels' contract: `rows` rows of `k16 ≥ 4·groups` inputs, a whole panel of
/// weights, `rows` accumulator rows and a sub-panel inside the panel. The unsafe loads rely on it.
#[inline(always)]
fn check_block(
    rows: usize,
    x: &[i8],
    k16: usize,
    w: &[i8],
    groups: usize,
    acc: &[[i32; NR]],
    sub: usize,
) {
    assert!(x.len() >= rows * k16 && k16 >= groups * 4 && w.len() >= groups * NR * 4);
    assert!(acc.len() >= rows && sub < NR / SUB);
}

/// `acc += w · x[lane]` on 4 channels: `sdot` by element (the intrinsic is not stable in Rust
/// yet, the instruction is).
macro_rules! sdot_lane {
    ($acc:expr, $w:expr, $x:expr, $lane:literal) => {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            x = in(vreg) $x,
            lane = const $lane,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
}

/// `sdot` micro-kernel: `R` rows × the 16 channels of sub-panel `sub`, over all `groups`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_sdot<const R: usize>(
    x: &[i8],
    k16: usize,
    w: &[i8],
    groups: usize,
    acc: &mut [[i32; NR]],
    sub: usize,
) {
    check_block(R, x, k16, w, groups, acc, sub);
    // SAFETY (whole body): x rows are k16 ≥ 4·groups bytes, so every 16-byte load at a group
    // g < groups (a multiple of 4) stays in its row; a weight load at group g < groups and
    // sub-panel `sub` ends at (g·NR + sub·16 + 16)·4 ≤ groups·NR·4 ≤ w.len().
    unsafe {
        let mut sums = [[vdupq_n_s32(0); 4]; R];
        let wp = w.as_ptr().add(sub * SUB * 4);
        let weights = |g: usize| -> [int8x16_t; 4] {
            let at = wp.add(g * NR * 4);
            [
                vld1q_s8(at),
                vld1q_s8(at.add(16)),
                vld1q_s8(at.add(32)),
                vld1q_s8(at.add(48)),
            ]
        };
        let mut g = 0;
        while g < groups {
            let mut xv = [vdupq_n_s8(0); R];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = vld1q_s8(x.as_ptr().add(r * k16 + g * 4));
            }
            // Group g + L of every row is lane L of its load; the lanes past `groups` are not
            // read (their weights do not exist).
            macro_rules! lane {
                ($lane:literal) => {{
                    let ws = weights(g + $lane);
                    for (s, xv) in sums.iter_mut().zip(&xv) {
                        for (s, w) in s.iter_mut().zip(&ws) {
                            sdot_lane!(*s, *w, *xv, $lane);
                        }
                    }
                }};
            }
            let left = groups - g;
            lane!(0);
            if left > 1 {
                lane!(1);
            }
            if left > 2 {
                lane!(2);
            }
            if left > 3 {
                lane!(3);
            }
            g += 4;
        }
        for (s, acc) in sums.iter().zip(acc.iter_mut()) {
            for (c, v) in s.iter().enumerate() {
                vst1q_s32(acc[sub * SUB + c * 4..].as_mut_ptr(), *v);
            }
        }
    }
}

/// `smull`/`smlal`/`sadalp` micro-kernel: `R` rows × the 16 channels of sub-panel `sub`.
fn dot_mull<const R: usize>(
    x: &[i8],
    k16: usize,
    w: &[i8],
    groups: usize,
    acc: &mut [[i32; NR]],
    sub: usize,
) {
    check_block(R, x, k16, w, groups, acc, sub);
    // SAFETY (whole body): NEON is part of AArch64; a 4-byte input load at group g < groups
    // stays in its row (k16 ≥ 4·groups), a weight load at group g and sub-panel `sub` ends at
    // (g·NR + sub·16 + 16)·4 ≤ w.len().
    unsafe {
        // Per row, per 4 channels: (channels 0–1, channels 2–3), two partial sums each.
        let mut sums = [[[vdupq_n_s32(0); 2]; 4]; R];
        let wp = w.as_ptr().add(sub * SUB * 4);
        let input = |r: usize, g: usize| -> int8x8_t {
            let four = x
                .as_ptr()
                .add(r * k16 + g * 4)
                .cast::<i32>()
                .read_unaligned();
            vreinterpret_s8_s32(vdup_n_s32(four))
        };
        let mut g = 0;
        while g < groups {
            // Two groups at a time; an odd last group pairs with zeros.
            let pair = groups - g > 1;
            let mut x0 = [vdup_n_s8(0); R];
            let mut x1 = [vdup_n_s8(0); R];
            for r in 0..R {
                x0[r] = input(r, g);
                if pair {
                    x1[r] = input(r, g + 1);
                }
            }
            for c in 0..4 {
                let w0 = vld1q_s8(wp.add(g * NR * 4 + c * 16));
                let w1 = if pair {
                    vld1q_s8(wp.add((g + 1) * NR * 4 + c * 16))
                } else {
                    vdupq_n_s8(0)
                };
                for ((s, x0), x1) in sums.iter_mut().zip(&x0).zip(&x1) {
                    let lo = vmlal_s8(vmull_s8(*x0, vget_low_s8(w0)), *x1, vget_low_s8(w1));
                    let hi = vmlal_s8(vmull_s8(*x0, vget_high_s8(w0)), *x1, vget_high_s8(w1));
                    s[c][0] = vpadalq_s16(s[c][0], lo);
                    s[c][1] = vpadalq_s16(s[c][1], hi);
                }
            }
            g += 2;
        }
        for (s, acc) in sums.iter().zip(acc.iter_mut()) {
            for (c, [lo, hi]) in s.iter().enumerate() {
                vst1q_s32(acc[sub * SUB + c * 4..].as_mut_ptr(), vpaddq_s32(*lo, *hi));
            }
        }
    }
}
