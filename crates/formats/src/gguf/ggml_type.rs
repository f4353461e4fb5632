//! ggml's tensor element types that lora reads: their ids, block sizes and byte sizes
//! (ggml's `ggml_type_traits`; the ids are those of `GGMLQuantizationType` in gguf-py).

/// A ggml tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 values: f16 scale d, 16 bytes of 4-bit q; x = d·(q − 8).
    Q4_0,
    /// 32 values: f16 d and m, 16 bytes of 4-bit q; x = d·q + m.
    Q4_1,
    /// 32 values: f16 d, 32 signed bytes; x = d·q.
    Q8_0,
    /// 256 values in 8 sub-blocks of 32 with 6-bit scales and mins.
    Q4K,
    /// Q4_K with a fifth bit per value.
    Q5K,
    /// 256 values in 16 sub-blocks of 16 with 8-bit scales, 6-bit values.
    Q6K,
}

impl GgmlType {
    /// The type of a GGUF type id, or `None` for types lora does not read.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Bf16 => 30,
        }
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The name of any type id, for messages about the types lora does not read.
    pub fn name_of_id(id: u32) -> String {
        const NAMES: [&str; 40] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
        ];
        NAMES.get(id as usize).map_or_else(|| format!("type {id}"), |n| n.to_string())
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q4K => 2 + 2 + 12 + 128,
            Self::Q5K => 2 + 2 + 12 + 32 + 128,
            Self::Q6K => 128 + 64 + 16 + 2,
        }
    }

    /// Bytes of `n` values, or `None` when `n` is not a whole number of blocks or its size does
    /// not fit in a `usize` (a header may claim any count; found by fuzzing).
    pub fn bytes_of(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_values()) {
            return None;
        }
        (n / self.block_values()).checked_mul(self.block_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::GgmlType;

    /// A count whose size overflows is refused, not wrapped to a small size that a bounds check
    /// could pass (fuzz/regressions/gguf/bad-size-overflows-usize).
    #[test]
    fn sizes_that_overflow_are_refused() {
        assert_eq!(GgmlType::F32.bytes_of(usize::MAX / 2), None);
        assert_eq!(GgmlType::Q8_0.bytes_of(usize::MAX / 32 * 32), None);
        assert_eq!(GgmlType::Q8_0.bytes_of(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_of(33), None);
    }
}
