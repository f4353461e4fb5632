//! Element types of safetensors files and their conversion to and from the f32 all merges compute in.
//!
//! Conversions round to nearest even, as `torch.Tensor.to(dtype)` does, so a merge written in f16 or
//! bf16 holds the values transformers would hold after the same computation in f32.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A safetensors element type (the header's `dtype` string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `F64`
    F64,
    /// `F32`
    F32,
    /// `F16`
    F16,
    /// `BF16`
    BF16,
    /// `I64`
    I64,
    /// `I32`
    I32,
    /// `I16`
    I16,
    /// `I8`
    I8,
    /// `U8`
    U8,
    /// `BOOL`
    Bool,
}

impl DType {
    /// Parses a safetensors header dtype; `None` for types lora does not know.
    pub fn from_safetensors(s: &str) -> Option<Self> {
        Some(match s {
            "F64" => Self::F64,
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "I64" => Self::I64,
            "I32" => Self::I32,
            "I16" => Self::I16,
            "I8" => Self::I8,
            "U8" => Self::U8,
            "BOOL" => Self::Bool,
            _ => return None,
        })
    }

    /// Parses a user-facing name (`f32`, `float16`, `bf16`, ...), as in `--dtype` or mergekit's `dtype`.
    pub fn from_user(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Self::F32,
            "f16" | "float16" | "fp16" | "half" => Self::F16,
            "bf16" | "bfloat16" => Self::BF16,
            _ => return None,
        })
    }

    /// The safetensors header name.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::F64 => "F64",
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I64 => "I64",
            Self::I32 => "I32",
            Self::I16 => "I16",
            Self::I8 => "I8",
            Self::U8 => "U8",
            Self::Bool => "BOOL",
        }
    }

    /// The name transformers writes in `config.json` (`dtype` / `torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F64 => "float64",
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Whether merges can compute on this type (converted to f32).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F64 | Self::F32 | Self::F16 | Self::BF16)
    }
}

/// Decodes `out.len()` little-endian elements of `dtype` from `bytes` into f32.
///
/// # Panics
/// If `dtype` is not a float type or `bytes` is not `out.len() * dtype.size()` long; callers check both.
pub fn decode_f32(bytes: &[u8], dtype: DType, out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * dtype.size(), "decode_f32: length");
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            // Fast path: mmaps are page aligned and safetensors pads its header to 8
            // bytes, so the data is nearly always u16-aligned; half converts aligned slices with F16C.
            let (pre, mid, post) = unsafe { bytes.align_to::<f16>() };
            if pre.is_empty() && post.is_empty() && cfg!(target_endian = "little") {
                mid.convert_to_f32_slice(out);
            } else {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32;
            }
        }
        other => panic!("decode_f32: {other:?} is not a float type"),
    }
}

/// Encodes f32 values as little-endian `dtype` elements into `out` (`src.len() * dtype.size()` bytes).
///
/// # Panics
/// If `dtype` is not a float type or the lengths disagree.
pub fn encode_f32(src: &[f32], dtype: DType, out: &mut [u8]) {
    assert_eq!(out.len(), src.len() * dtype.size(), "encode_f32: length");
    match dtype {
        DType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            let (pre, mid, post) = unsafe { out.align_to_mut::<f16>() };
            if pre.is_empty() && post.is_empty() && cfg!(target_endian = "little") {
                mid.convert_from_f32_slice(src);
            } else {
                for (c, v) in out.chunks_exact_mut(2).zip(src) {
                    c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
        }
        DType::BF16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::F64 => {
            for (c, v) in out.chunks_exact_mut(8).zip(src) {
                c.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        other => panic!("encode_f32: {other:?} is not a float type"),
    }
}
