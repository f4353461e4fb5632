//! Writing GGUF v3 files: metadata, tensor infos, aligned data. The file is written under a
//! temporary name beside its destination and renamed when complete, so a reader never sees half a
//! file.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::ggml_type::GgmlType;
use super::reader::DEFAULT_ALIGNMENT;
use super::value::Value;
use crate::error::{FormatError, Result};

/// A tensor to write: its name, its dimensions innermost first (ggml's order: a PyTorch `[out, in]`
/// matrix is `[in, out]`), its type and its bytes.
#[derive(Debug, Clone)]
pub struct TensorOut {
    /// Name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Encoded data.
    pub data: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(t, items) => {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// A planned header: its bytes (padded to the start of the data), each tensor's offset in the data
/// section, and the data section's padded length.
#[derive(Debug, Clone)]
pub struct HeaderPlan {
    /// The header, padded to the alignment.
    pub bytes: Vec<u8>,
    /// Offsets of the tensors relative to the data section.
    pub offsets: Vec<u64>,
    /// Length of the data section, padded to the alignment.
    pub data_len: u64,
}

/// A tensor's entry in the header: name, dimensions (innermost first) and type; its byte size follows
/// from them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
}

impl TensorPlan {
    /// Bytes of the data, or `None` when the dimensions are not whole blocks of the type.
    pub fn bytes(&self) -> Option<usize> {
        self.ggml_type.bytes_of(self.dims.iter().product::<u64>() as usize)
    }
}

/// The header of a GGUF v3 file for the planned tensors, so that their data can be streamed after it.
pub fn encode_header(metadata: &[(String, Value)], tensors: &[TensorPlan]) -> Result<HeaderPlan> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let size = t.bytes().ok_or_else(|| {
            FormatError::Unsupported(format!(
                "tensor '{}': dimensions {:?} are not whole {} blocks",
                t.name,
                t.dims,
                t.ggml_type.name()
            ))
        })?;
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + size as u64).div_ceil(alignment) * alignment;
    }
    let target = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(target as usize, 0);
    Ok(HeaderPlan { bytes: out, offsets, data_len: offset })
}

/// The bytes of a GGUF v3 file, header and data.
pub fn encode(metadata: &[(String, Value)], tensors: &[TensorOut]) -> Result<Vec<u8>> {
    let plans: Vec<TensorPlan> = tensors
        .iter()
        .map(|t| TensorPlan { name: t.name.clone(), dims: t.dims.clone(), ggml_type: t.ggml_type })
        .collect();
    for (t, p) in tensors.iter().zip(&plans) {
        if p.bytes() != Some(t.data.len()) {
            return Err(FormatError::Unsupported(format!(
                "tensor '{}': {} bytes of {} for dimensions {:?}",
                t.name,
                t.data.len(),
                t.ggml_type.name(),
                t.dims
            )));
        }
    }
    let header = encode_header(metadata, &plans)?;
    let mut out = header.bytes;
    let data_start = out.len();
    for (t, off) in tensors.iter().zip(&header.offsets) {
        out.resize(data_start + *off as usize, 0);
        out.extend_from_slice(&t.data);
    }
    out.resize(data_start + header.data_len as usize, 0);
    Ok(out)
}

/// Writes a GGUF file at `path` (temporary name, then rename); refuses to replace a file unless
/// `force`.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[TensorOut], force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(FormatError::OutputExists { path: path.to_path_buf() });
    }
    let bytes = encode(metadata, tensors)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::new(f);
        w.write_all(&bytes)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FormatError::io(path, e)
    })
}

/// Encodes f32 values (row-major) as `t`: F32, F16 and BF16 by round-to-nearest-even, Q8_0 as
/// gguf-py quantizes it (per 32 values d = max|x| / 127 in f16, q = x / d rounded half away from
/// zero).
pub fn encode_values(values: &[f32], t: GgmlType) -> Result<Vec<u8>> {
    Ok(match t {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => {
            if values.len() % 32 != 0 {
                return Err(FormatError::Unsupported(format!(
                    "{} values are not whole Q8_0 blocks of 32",
                    values.len()
                )));
            }
            let mut out = Vec::with_capacity(values.len() / 32 * 34);
            for block in values.chunks(32) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                for &v in block {
                    out.push(round_half_away(v * id) as i8 as u8);
                }
            }
            out
        }
        other => return Err(FormatError::Unsupported(format!("writing {} tensors is not supported", other.name()))),
    })
}

/// numpy-free `np_roundf` of gguf-py: round half away from zero.
fn round_half_away(x: f32) -> f32 {
    let a = x.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    b.copysign(x)
}
