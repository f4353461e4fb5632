//! How the frozen base is held in memory: its dtype and whether the decoder's linear layers are
//! stored as NF4 (QLoRA). Activations, LoRA's A and B and their optimizer state are f32 whatever
//! these say; on a GPU a bf16 base's products run in bf16 ([`LoadOptions::compute_dtype`]).

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;

use crate::error::{CoreError, Result};

/// The dtype the dense tensors of the base are held in (embeddings, the head, and the linear layers
/// that are not quantized). Norms and biases stay f32: they are tiny, and transformers computes
/// norms in f32 anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseDtype {
    /// 4 bytes per value; the exact path (burn's own matmul).
    #[default]
    F32,
    /// 2 bytes per value; upcast to f32 a block at a time when multiplied on the CPU, multiplied in
    /// bf16 on a GPU.
    Bf16,
    /// 2 bytes per value; upcast to f32 a block at a time when multiplied.
    F16,
}

impl BaseDtype {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// The name used in recipes and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl BaseDtype {
    /// A recipe's or flag's dtype, with `auto` resolved for the backend: bf16 on CUDA, f32 elsewhere.
    pub fn resolve(name: &str, backend: crate::Backend) -> Result<Self> {
        match name {
            "auto" if backend == crate::Backend::Cuda => Ok(Self::Bf16),
            "auto" => Ok(Self::F32),
            other => other.parse(),
        }
    }
}

impl FromStr for BaseDtype {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            other => Err(CoreError::Invalid(format!("unknown base dtype '{other}'; expected f32, bf16 or f16"))),
        }
    }
}

impl fmt::Display for BaseDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Quantization of the decoder's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    /// Dense, in the base dtype.
    #[default]
    None,
    /// NF4 as bitsandbytes stores it (blocks of 64, one absmax per block); `double_quant` stores the
    /// absmax values in 8 bits too (bitsandbytes' `bnb_4bit_use_double_quant`).
    Nf4 {
        /// Quantize the scales as well.
        double_quant: bool,
    },
}

impl Quantize {
    /// The name used in recipes, flags, manifests and model cards.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nf4 { double_quant: false } => "nf4",
            Self::Nf4 { double_quant: true } => "nf4-dq",
        }
    }

    /// Parses `none`, `nf4`, or `nf4` with double quantization given separately.
    pub fn parse(s: &str, double_quant: bool) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "nf4" => Ok(Self::Nf4 { double_quant }),
            "nf4-dq" => Ok(Self::Nf4 { double_quant: true }),
            other => Err(CoreError::Invalid(format!("unknown quantization '{other}'; expected none or nf4"))),
        }
    }
}

impl fmt::Display for Quantize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to load a base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Dtype of the dense tensors.
    pub dtype: BaseDtype,
    /// Quantization of the decoder's linear layers.
    pub quantize: Quantize,
}

impl LoadOptions {
    /// The dtype the base's products run in on `device`: bf16 for a bf16 base (dense or NF4, as
    /// QLoRA's `bnb_4bit_compute_dtype`) on a GPU, where bf16 tensor cores are several times faster
    /// than f32; otherwise the activations' f32 (`None`).
    ///
    /// Not on the CPU: burn-flex converts bf16 operands to f32 inside each matmul, so a bf16
    /// product there would be slower and no more than a rounding of the f32 one. Not for f16: an f16
    /// product overflows at 65,504, which activations of real models reach.
    pub fn compute_dtype(&self, device: &burn::tensor::Device) -> Option<burn::tensor::FloatDType> {
        (self.dtype == BaseDtype::Bf16 && !crate::kernels::backend::is_cpu(device))
            .then_some(burn::tensor::FloatDType::BF16)
    }
}
