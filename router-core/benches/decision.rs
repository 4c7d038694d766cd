//! The rest of a decision once the prompt is embedded: the shipped default router's quality
//! head (ensemble of mlp, mf, kNN and, on llmrouter, the task classifier; calibrated) and the
//! band policy, plus tokenising.
//!
//! `cargo bench -p router-core --bench decision --profile dev`

use std::path::Path;

use candle_core::Device;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use router_core::artifact::Router;
use router_core::policy::{Policy, choose};

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llmrouter");
    let router =
        Router::load(&dir).unwrap_or_else(|e| panic!("cannot load {}: {e}", dir.display()));
    let encoder = router
        .load_encoder(&Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load the encoder: {e}"));
    let prompts: Vec<String> = (0..32)
        .map(|i| format!("Question {i}: explain the difference between a mutex and a semaphore, with an example in Python."))
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let embeddings = encoder
        .embed(&refs)
        .unwrap_or_else(|e| panic!("embedding failed: {e}"));

    let mut group = c.benchmark_group("head_predict");
    for batch in [1usize, 32] {
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| router.predict(&refs[..batch], &embeddings[..batch]))
        });
    }
    group.finish();

    let quality = router
        .predict(&refs[..1], &embeddings[..1])
        .unwrap_or_default()
        .remove(0);
    let costs = router.expected_costs(64);
    let routable = router.routable();
    for policy in Policy::ALL {
        c.bench_function(&format!("policy_{policy}_9_models"), |b| {
            b.iter(|| choose(policy, &quality, &costs, 0.05, Some(&routable)))
        });
    }
    c.bench_function("tokenize_one_prompt", |b| {
        b.iter(|| encoder.tokenize(&prompts[0]))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
