//! Encoder latency and throughput on the real default model (all-MiniLM-L6-v2).
//!
//! `cargo bench -p router-core --bench encoder`: single-prompt latency at 16, 64, 256 and 512
//! input tokens (512 is truncated to the model's 256) and the throughput of a batch of 32, for
//! the int8 and the f32 encoder, on the last layer alone; then 64 tokens alone and in a batch
//! of 32 on the layers the shipped routers pool (`thirds`: 2, 4 and 6).
//! `ENCODER_BENCH_PRECISION=int8` (or `f32`) runs one of them; `ENCODER_BENCH_MODEL` names
//! another encoder (a hub id or a directory, e.g. `sentence-transformers/all-mpnet-base-v2`; a
//! precision it cannot run in is skipped with a message).

use candle_core::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use router_core::encoder::{
    Encoder, EncoderOptions, EncoderSource, Layers, Precision, Truncation, resolve,
};

/// A text of exactly `tokens` tokens, [CLS] and [SEP] included.
fn text_of(encoder: &Encoder, tokens: usize) -> String {
    const WORDS: [&str; 8] = [
        "route", "model", "quality", "cost", "prompt", "band", "cheap", "best",
    ];
    let mut words: Vec<&str> = Vec::new();
    let mut text = String::new();
    while encoder.count_tokens(&text).unwrap_or(usize::MAX) < tokens {
        words.push(WORDS[words.len() % WORDS.len()]);
        text = words.join(" ");
    }
    text
}

fn bench(c: &mut Criterion) {
    let only = std::env::var("ENCODER_BENCH_PRECISION").ok();
    let model = std::env::var("ENCODER_BENCH_MODEL").ok();
    let source = model
        .as_deref()
        .map_or_else(EncoderSource::default, EncoderSource::parse);
    let resolved = resolve(&source).unwrap_or_else(|e| panic!("cannot resolve the encoder: {e}"));
    for precision in [Precision::Int8, Precision::F32] {
        if only.as_deref().is_some_and(|p| p != precision.to_string()) {
            continue;
        }
        let encoder = match Encoder::load(
            &resolved,
            &Device::Cpu,
            &EncoderOptions::new(Truncation::Head, precision),
        ) {
            Ok(encoder) => encoder,
            Err(e) if model.is_some() => {
                eprintln!("skipping {precision}: {e}");
                continue;
            }
            Err(e) => panic!("cannot load the encoder: {e}"),
        };
        let mut group = c.benchmark_group(format!("encode_one_{precision}"));
        group.sample_size(20);
        group.measurement_time(std::time::Duration::from_secs(5));
        for tokens in [16, 64, 256, 512] {
            let text = text_of(&encoder, tokens);
            group.bench_with_input(BenchmarkId::from_parameter(tokens), &text, |b, text| {
                b.iter(|| encoder.embed(&[text.as_str()]))
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("encode_batch32_{precision}"));
        let texts: Vec<String> = (0..32).map(|i| text_of(&encoder, 12 + i % 24)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        group.throughput(Throughput::Elements(32));
        group.sample_size(10);
        group.bench_function("short_12_to_35_tokens", |b| b.iter(|| encoder.embed(&refs)));
        let texts: Vec<String> = (0..32).map(|_| text_of(&encoder, 64)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        group.bench_function("64_tokens", |b| b.iter(|| encoder.embed(&refs)));
        group.finish();

        let layered = Encoder::load(
            &resolved,
            &Device::Cpu,
            &EncoderOptions {
                layers: Layers::Thirds,
                ..EncoderOptions::new(Truncation::Head, precision)
            },
        )
        .unwrap_or_else(|e| panic!("cannot load the encoder: {e}"));
        let mut group = c.benchmark_group(format!("encode_layers_2.4.6_{precision}"));
        group.sample_size(10);
        group.bench_function("one_64_tokens", |b| b.iter(|| layered.embed(&refs[..1])));
        group.throughput(Throughput::Elements(32));
        group.bench_function("batch32_64_tokens", |b| b.iter(|| layered.embed(&refs)));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
