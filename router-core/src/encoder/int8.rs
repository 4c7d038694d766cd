//! The int8 dense layers of the CPU encoder: the kernels live in the `router-int8` crate (no
//! dependencies, cross-tested on aarch64 under qemu); this module chooses the kernel, splits
//! rows across threads and versions the arithmetic.

use rayon::prelude::*;
pub use router_int8::Int8Kernel;
pub(crate) use router_int8::{Activation, Int8Linear};

/// The version of the int8 path's arithmetic (quantisation, kernels' epilogue, the f32 parts in
/// `cpu_ops`). Bump it whenever an embedding could change by even one bit: embedding caches are
/// keyed by it, and routers record it (`encoder.int8_scheme`), so that a router is never fed
/// embeddings rounded differently from the ones it was trained on without a warning.
pub const SCHEME: u32 = 1;

/// [`Int8Kernel::detect`], unless `ROUTER_INT8_KERNEL` names another kernel this CPU can run
/// (`avx2` or `portable` on a VNNI machine, `neon` or `portable` on an ARM one with `sdot`; for
/// benchmarks and tests). Every kernel gives the same outputs, so this changes the speed only.
pub fn kernel_from_env() -> Int8Kernel {
    let best = Int8Kernel::detect();
    let Ok(wanted) = std::env::var("ROUTER_INT8_KERNEL") else {
        return best;
    };
    match Int8Kernel::from_name(&wanted) {
        Some(k) if k.runs_here() => k,
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

/// `out (m × n) = act(x (m × k) · Wᵀ + b)`. Rows are independent: with more than one thread in
/// the current rayon pool and enough work, each thread takes a contiguous run of rows (a
/// multiple of the micro-kernel's) through every panel.
pub(crate) fn forward(
    layer: &Int8Linear,
    kernel: Int8Kernel,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let (n, k) = (layer.out_features(), layer.in_features());
    assert_eq!(x.len(), m * k, "input is not m × k");
    assert_eq!(out.len(), m * n, "output is not m × n");
    let threads = rayon::current_num_threads();
    if threads > 1 && m >= 2 * router_int8::MR && m * n * k >= 1 << 22 {
        let rows = m.div_ceil(threads).next_multiple_of(router_int8::MR);
        x.par_chunks(rows * k)
            .zip(out.par_chunks_mut(rows * n))
            .for_each(|(x, out)| layer.forward(kernel, x, out));
    } else {
        layer.forward(kernel, x, out);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use router_int8::noise;

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
            pool.install(|| forward(&layer, Int8Kernel::detect(), &x, m, &mut out));
            out
        };
        assert_eq!(run(1), run(3));
    }
}
