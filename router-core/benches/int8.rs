//! The int8 kernels alone, on one thread, on the shapes of all-MiniLM-L6-v2's dense layers
//! for a 64-token prompt: `cargo bench -p router-core --profile dev --bench int8`. Criterion's
//! throughput is in multiply-adds × 2 per second, so `Gelem/s` reads as GOP/s. Every kernel
//! this CPU runs is measured (a VNNI machine measures the AVX2 kernel too).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use router_core::encoder::int8::{BenchLayer, Int8Kernel};

fn bench(c: &mut Criterion) {
    let best = Int8Kernel::detect();
    let kernels: Vec<Int8Kernel> = [
        Int8Kernel::Avx512Vnni,
        Int8Kernel::Avx2,
        Int8Kernel::Portable,
    ]
    .into_iter()
    .filter(|k| match (best, k) {
        (_, Int8Kernel::Portable) => true,
        (Int8Kernel::Avx512Vnni, _) => true,
        (b, k) => b == *k,
    })
    .collect();
    let m = 64;
    // qkv, attention output, intermediate, output.
    for (name, n, k) in [
        ("qkv_1152x384", 1152, 384),
        ("out_384x384", 384, 384),
        ("up_1536x384", 1536, 384),
        ("down_384x1536", 384, 1536),
    ] {
        let Some(layer) = BenchLayer::new(n, k) else {
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
