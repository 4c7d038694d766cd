//! The int8 kernels alone, on one thread, on the shapes of all-MiniLM-L6-v2's dense layers
//! for a 64-token prompt: `cargo bench -p router-core --profile dev --bench int8`. Criterion's
//! throughput is in multiply-adds × 2 per second, so `Gelem/s` reads as GOP/s. Every kernel
//! this CPU runs is measured (a VNNI machine measures the AVX2 kernel too, an ARM one with
//! `sdot` the plain NEON kernel).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use router_int8::{Activation, Int8Kernel, Int8Linear};

fn bench(c: &mut Criterion) {
    let kernels: Vec<Int8Kernel> = Int8Kernel::ALL
        .into_iter()
        .filter(|k| k.runs_here())
        .collect();
    let m = 64;
    // qkv, attention output, intermediate, output.
    for (name, n, k) in [
        ("qkv_1152x384", 1152, 384),
        ("out_384x384", 384, 384),
        ("up_1536x384", 1536, 384),
        ("down_384x1536", 384, 1536),
    ] {
        let weight: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 255) as f32 - 127.0)
            .collect();
        let Some(layer) = Int8Linear::new(&weight, &vec![0.5; n], n, k, Activation::Identity)
        else {
            continue;
        };
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104_729) % 997) as f32 / 500.0 - 1.0)
            .collect();
        let mut out = vec![0f32; m * n];
        let mut group = c.benchmark_group(format!("int8_{name}_m{m}"));
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.sample_size(20);
        for &kernel in &kernels {
            group.bench_with_input(
                BenchmarkId::from_parameter(kernel.as_str()),
                &kernel,
                |b, &kernel| b.iter(|| layer.forward(kernel, &x, &mut out)),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
