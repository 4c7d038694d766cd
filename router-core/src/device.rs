//! Run-time device selection: `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

use crate::error::{Error, Result};

/// Makes every Candle matrix product run on the calling thread's core alone, by setting
/// `RAYON_NUM_THREADS=1` (Candle reads it on each product) unless the user set it. With one
/// encoder thread per core this gives more prompts per second than one thread using every
/// core (measured on 2 cores: 65 against 37 decisions/s in router-serve, 69.9 against 81.2 s
/// for a cold `router-train fit` on llmrouter). Returns whether it was set.
///
/// # Safety
///
/// Call it before any other thread exists (first thing in `main`): it changes the process
/// environment, which other threads may be reading.
#[expect(
    unsafe_code,
    reason = "std::env::set_var; the caller guarantees no other thread is running"
)]
pub unsafe fn use_one_core_per_thread() -> bool {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return false;
    }
    // SAFETY: the caller guarantees the process has one thread.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    true
}

/// Parses a device name. Asking for CUDA in a build without the `cuda` feature is an error,
/// never a silent fallback to the CPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::UnknownDevice(name.to_owned()))?,
        None => return Err(Error::UnknownDevice(name.to_owned())),
    };
    cuda_device(name, ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(_name: &str, ordinal: usize) -> Result<Device> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(name: &str, _ordinal: usize) -> Result<Device> {
    Err(Error::CudaNotCompiled(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device(" CPU "), Ok(Device::Cpu)));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(parse_device("tpu"), Err(Error::UnknownDevice(_))));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(Error::UnknownDevice(_))
        ));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_in_a_cpu_build_is_a_clear_error() {
        let err = parse_device("cuda:0").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("without the `cuda` feature")));
    }
}
