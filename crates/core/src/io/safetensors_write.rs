//! Writing safetensors files atomically (temporary name in the same folder, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::Dtype;

use crate::error::Result;

/// Element type of stored tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    BF16,
    /// float16.
    F16,
}

impl StoredDtype {
    /// Parses `f32` / `bf16` / `f16` (and transformers' `float32` / `bfloat16` / `float16`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::BF16),
            "f16" | "float16" => Some(Self::F16),
            _ => None,
        }
    }
}

fn encode(values: &[f32], dtype: StoredDtype) -> Vec<u8> {
    match dtype {
        StoredDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StoredDtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        StoredDtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (the file layer's one way).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(lora_formats::atomic::write_atomic(path, bytes)?)
}

/// Writes named f32 tensors, converted to `dtype`, as one safetensors file. Tensors are stored in
/// name order (safetensors sorts them), so equal inputs give byte-identical files.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: StoredDtype,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let st_dtype = match dtype {
        StoredDtype::F32 => Dtype::F32,
        StoredDtype::BF16 => Dtype::BF16,
        StoredDtype::F16 => Dtype::F16,
    };
    // Each tensor is encoded when the writer reaches it, and the file streamed out: the bytes of the
    // whole file never sit in memory beside the values (an MoE adapter can be half a GB).
    let views: Vec<(String, Encoded)> =
        tensors.iter().map(|(n, s, v)| (n.clone(), Encoded { values: v, shape: s.clone(), dtype, st_dtype })).collect();
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    lora_formats::atomic::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, Some(meta), tmp).map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// A tensor's values, encoded to the stored dtype when the file writer asks for its bytes.
struct Encoded<'a> {
    values: &'a [f32],
    shape: Vec<usize>,
    dtype: StoredDtype,
    st_dtype: Dtype,
}

impl safetensors::tensor::View for Encoded<'_> {
    fn dtype(&self) -> Dtype {
        self.st_dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(encode(self.values, self.dtype))
    }
    fn data_len(&self) -> usize {
        self.values.len() * self.st_dtype.bitsize() / 8
    }
}
