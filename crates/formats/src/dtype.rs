//! Element types of safetensors files and their conversion to and from the f32 all merges compute in.
//!
//! Conversions round to nearest even, as `torch.Tensor.to(dtype)` does, so a merge written in f16 or
//! bf16 holds the values transformers would hold after the same computation in f32.

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
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has F16C and AVX (checked above); lengths are asserted equal.
                return unsafe { f16_to_f32_f16c(bytes, out) };
            }
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
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
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has F16C and AVX (checked above); lengths are asserted equal.
                return unsafe { f32_to_f16_f16c(src, out) };
            }
            for (c, v) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
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

/// f16 → f32 eight at a time with the F16C instruction `vcvtph2ps` (exact), on unaligned bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c,avx")]
unsafe fn f16_to_f32_f16c(bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n elements lie inside both slices (2 bytes in, 4 bytes out each).
        unsafe {
            let v = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(v));
        }
        i += 8;
    }
    for j in i..n {
        out[j] = f16::from_bits(u16::from_le_bytes([bytes[2 * j], bytes[2 * j + 1]])).to_f32();
    }
}

/// f32 → f16 eight at a time with `vcvtps2ph`, rounding to nearest even as torch does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c,avx")]
unsafe fn f32_to_f16_f16c(src: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::{__m128i, _MM_FROUND_TO_NEAREST_INT, _mm_storeu_si128, _mm256_cvtps_ph, _mm256_loadu_ps};
    let n = src.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n elements lie inside both slices.
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            _mm_storeu_si128(
                out.as_mut_ptr().add(2 * i) as *mut __m128i,
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
            );
        }
        i += 8;
    }
    for j in i..n {
        out[2 * j..2 * j + 2].copy_from_slice(&f16::from_f32(src[j]).to_bits().to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C paths agree with `half`'s scalar conversions on every f16 and on f32 values around
    /// every rounding boundary (ties to even, subnormals, overflow to inf).
    #[test]
    fn f16_conversions_match_half() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let mut out = vec![0f32; 1 << 16];
        decode_f32(&bytes, DType::F16, &mut out);
        for (b, o) in (0..=u16::MAX).zip(&out) {
            let r = f16::from_bits(b).to_f32();
            assert!(r.to_bits() == o.to_bits() || (r.is_nan() && o.is_nan()), "{b:#x}");
        }
        // f32 values: every f16 value, and the midpoints and neighbours between consecutive ones.
        let mut vals: Vec<f32> = out.iter().copied().filter(|v| v.is_finite()).collect();
        let mids: Vec<f32> = vals
            .windows(2)
            .flat_map(|w| {
                let m = (w[0] as f64 + w[1] as f64) / 2.0;
                let m = m as f32;
                [m, f32::from_bits(m.to_bits().wrapping_add(1)), f32::from_bits(m.to_bits().wrapping_sub(1))]
            })
            .collect();
        vals.extend(mids);
        vals.extend([1e6, -1e6, f32::INFINITY, f32::NEG_INFINITY, 65520.0, 65519.99]);
        let mut enc = vec![0u8; vals.len() * 2];
        encode_f32(&vals, DType::F16, &mut enc);
        for (v, c) in vals.iter().zip(enc.chunks_exact(2)) {
            assert_eq!(u16::from_le_bytes([c[0], c[1]]), f16::from_f32(*v).to_bits(), "{v:e}");
        }
    }
}
