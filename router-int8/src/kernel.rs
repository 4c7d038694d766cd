//! Which kernel computes the integer products on this CPU.

/// A kernel of the int8 products. Every kernel gives the same outputs (the products are exact
/// and the epilogue is the same code), so the choice changes the speed only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpbusd`): Intel Ice Lake and later, AMD Zen 4 and later.
    Avx512Vnni,
    /// AVX2 and FMA (`vpmaddwd` on bytes widened to 16 bits: exact, where `vpmaddubsw`
    /// would saturate on 255 · 127 · 2).
    Avx2,
    /// AArch64 with the dot-product extension (`sdot`): Graviton 2 and later, Ampere Altra,
    /// Apple M1 and later, Neoverse N1/V1 and later.
    NeonDotprod,
    /// AArch64 without it (`smull`/`smlal` into 16 bits, `sadalp` into 32): Cortex-A53/A57/A72,
    /// Graviton 1.
    Neon,
    /// Plain Rust, any CPU.
    Portable,
}

impl Int8Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Self; 5] = [
        Self::Avx512Vnni,
        Self::Avx2,
        Self::NeonDotprod,
        Self::Neon,
        Self::Portable,
    ];

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.runs_here())
            .unwrap_or(Self::Portable)
    }

    /// Whether this CPU has the instructions the kernel needs (the detection is cached by the
    /// standard library: an atomic load).
    pub fn runs_here(self) -> bool {
        match self {
            // FMA too: the epilogue's and the f32 code's `mul_add` must be an instruction.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")
            }
            // NEON is part of the AArch64 base.
            #[cfg(target_arch = "aarch64")]
            Self::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => true,
            Self::Portable => true,
            // The other architectures' kernels.
            _ => false,
        }
    }

    /// The kernel of that name ([`Int8Kernel::as_str`]), whether or not it runs here.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::NeonDotprod => "neon-dotprod",
            Self::Neon => "neon",
            Self::Portable => "portable",
        }
    }
}
