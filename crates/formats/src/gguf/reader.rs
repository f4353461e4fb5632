//! A GGUF file (llama.cpp's format, v2 and v3): header, metadata, tensor infos, and the tensor data
//! memory-mapped. Every defect — a wrong magic, a truncated file, a string or array longer than the
//! file, an unknown value type, a tensor past the end, a size that does not fit its type — is an
//! error naming the file and, where there is one, the key or tensor. After `open` succeeds, every
//! tensor's byte range lies inside the mapping.
//!
//! Layout (gguf-py `gguf_reader.py`, ggml `gguf.cpp`): magic `GGUF`, u32 version, u64 tensor count,
//! u64 metadata count (u32 counts in v1, which lora does not read), the metadata (u64-length string
//! key, u32 type, value), the tensor infos (name, u32 dims, u64 dims — innermost first —, u32 type,
//! u64 offset), padding to `general.alignment` (default 32), then the data; each offset is relative
//! to the data and aligned too.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::ggml_type::GgmlType;
use super::value::Value;
use crate::error::{FormatError, Result};

/// The default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Deepest nesting of arrays accepted (a defence against crafted files; real files nest 1 level).
const MAX_DEPTH: usize = 8;

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Dimensions as GGUF stores them, innermost (contiguous) first: a PyTorch `[out, in]` weight is
    /// `[in, out]` here.
    pub dims: Vec<u64>,
    /// The type id (kept even when lora cannot read the type, to name it in errors).
    pub type_id: u32,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape outermost first, as PyTorch and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The element type, when lora reads it.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// The metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensors in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
    /// Start of the data section in the file.
    pub data_start: u64,
    /// `general.alignment`.
    pub alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A cursor over the header bytes that reports what it was reading when the bytes run out.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("{} at byte {} needs {n} bytes; the file has {} (truncated?)", what(), self.at, self.bytes.len())
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| format!("{}: length {len} is too large", what()))?;
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    fn value(&mut self, type_id: u32, depth: usize, what: &dyn Fn() -> String) -> std::result::Result<Value, String> {
        Ok(match type_id {
            0 => Value::U8(self.take(1, what)?[0]),
            1 => Value::I8(self.take(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(self.take(2, what)?.try_into().expect("2"))),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.take(1, what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{}: a bool must be 0 or 1, found {b}", what())),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{}: arrays nested deeper than {MAX_DEPTH} levels", what()));
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Each element takes at least one byte: a count beyond the file is a lie, not a
                // reason to allocate.
                if n > (self.bytes.len() - self.at) as u64 {
                    return Err(format!("{}: an array of {n} elements cannot fit in the file", what()));
                }
                // Capacity grows with what is actually read, not with the claimed count.
                let mut items = Vec::with_capacity((n as usize).min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                Value::Array(elem, items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(format!("{}: unknown value type {other}", what())),
        })
    }
}

impl GgufFile {
    /// Maps `path` and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| FormatError::io(&path, e))?;
        // SAFETY: read-only map; as with every mmap-based loader, a file truncated by another
        // process while mapped is the one case that cannot be guarded against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
        let parsed = Self::parse(&mmap).map_err(|m| FormatError::gguf(&path, m))?;
        let (version, metadata, tensors, data_start, alignment) = parsed;
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self { path, mmap, version, metadata, tensors, by_name, data_start, alignment })
    }

    #[allow(clippy::type_complexity)]
    fn parse(bytes: &[u8]) -> std::result::Result<(u32, Vec<(String, Value)>, Vec<TensorInfo>, u64, u64), String> {
        let mut c = Cursor { bytes, at: 0 };
        let magic = c.take(4, &|| "the magic".to_string())?;
        if magic != b"GGUF" {
            return Err(format!("not a GGUF file (starts with {magic:02x?}, not \"GGUF\")"));
        }
        let version = c.u32(&|| "the version".to_string())?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (lora reads versions 2 and 3)"));
        }
        let n_tensors = c.u64(&|| "the tensor count".to_string())?;
        let n_kv = c.u64(&|| "the metadata count".to_string())?;
        let room = bytes.len() as u64;
        if n_tensors > room || n_kv > room {
            return Err(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries; the file is too small"
            ));
        }
        let mut metadata = Vec::with_capacity((n_kv as usize).min(1 << 12));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("the key of metadata entry {i}"))?;
            let what = || format!("metadata '{key}'");
            let type_id = c.u32(&what)?;
            let value = c.value(type_id, 0, &what)?;
            if !seen.insert(key.clone()) {
                return Err(format!("metadata key '{key}' appears twice"));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(format!("general.alignment must be a power of two, found {v}")),
            },
        };
        let mut tensors = Vec::with_capacity((n_tensors as usize).min(1 << 12));
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor {i}"))?;
            let what = || format!("tensor '{name}'");
            let n_dims = c.u32(&what)?;
            if n_dims > 8 {
                return Err(format!("tensor '{name}' has {n_dims} dimensions (at most 8)"));
            }
            let dims = (0..n_dims).map(|_| c.u64(&what)).collect::<std::result::Result<Vec<_>, _>>()?;
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            tensors.push(TensorInfo { name, dims, type_id, offset });
        }
        let data_start = (c.at as u64).div_ceil(alignment) * alignment;
        if data_start > room && !tensors.is_empty() {
            return Err(format!(
                "the data section starts at byte {data_start}, past the end of the file ({room} bytes; truncated?)"
            ));
        }
        let data_len = room.saturating_sub(data_start);
        let mut names = std::collections::BTreeSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(format!("tensor '{}' appears twice", t.name));
            }
            if t.offset % alignment != 0 {
                return Err(format!(
                    "tensor '{}' starts at offset {}, not a multiple of the alignment {alignment}",
                    t.name, t.offset
                ));
            }
            let numel = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let Some(numel) = numel else {
                return Err(format!("tensor '{}' has dimensions {:?} whose product overflows", t.name, t.dims));
            };
            if let Some(ty) = t.ggml_type() {
                let size = usize::try_from(numel).ok().and_then(|n| ty.bytes_of(n)).ok_or_else(|| {
                    format!(
                        "tensor '{}' of type {} has {numel} values: not a multiple of its block of {}, or more \
                         bytes than this machine can address",
                        t.name,
                        ty.name(),
                        ty.block_values()
                    )
                })?;
                if t.offset.checked_add(size as u64).is_none_or(|end| end > data_len) {
                    return Err(format!(
                        "tensor '{}' ({} bytes at offset {}) runs past the end of the data ({data_len} bytes; truncated?)",
                        t.name, size, t.offset
                    ));
                }
            }
        }
        Ok((version, metadata, tensors, data_start, alignment))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A tensor's info.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor of a type lora reads.
    pub fn bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let ty = t.ggml_type().ok_or_else(|| {
            FormatError::gguf(
                &self.path,
                format!(
                    "tensor '{}' has type {}, which lora cannot read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)",
                    t.name,
                    GgmlType::name_of_id(t.type_id)
                ),
            )
        })?;
        let size = ty.bytes_of(t.numel() as usize).expect("checked in open");
        let start = (self.data_start + t.offset) as usize;
        self.mmap
            .get(start..start + size)
            .ok_or_else(|| FormatError::gguf(&self.path, format!("tensor '{}' lies outside the file", t.name)))
    }

    /// Rows `start .. start + count` of a tensor dequantized to f32, a row being its innermost
    /// dimension (`dims[0]`, along which ggml lays out its blocks): expert `e` of a stacked
    /// `[experts, out, in]` tensor is rows `e·out .. (e+1)·out`.
    pub fn rows_to_f32(&self, t: &TensorInfo, start: usize, count: usize) -> Result<Vec<f32>> {
        let bytes = self.bytes(t)?;
        let ty = t.ggml_type().expect("bytes checked the type");
        let width = t.dims.first().copied().unwrap_or(1) as usize;
        let rows = t.numel() as usize / width.max(1);
        let row_bytes = ty
            .bytes_of(width)
            .filter(|_| start.checked_add(count).is_some_and(|end| end <= rows))
            .ok_or_else(|| {
                FormatError::gguf(
                    &self.path,
                    format!(
                        "tensor '{}': rows {start}..{} of {rows} rows of {width} cannot be read",
                        t.name,
                        start + count
                    ),
                )
            })?;
        let mut out = vec![0.0f32; count * width];
        super::dequant::dequantize(ty, &bytes[start * row_bytes..(start + count) * row_bytes], &mut out);
        Ok(out)
    }

    /// A tensor dequantized to f32 (row-major, outermost dimension first).
    pub fn to_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.bytes(t)?;
        let mut out = vec![0.0f32; t.numel() as usize];
        super::dequant::dequantize(t.ggml_type().expect("bytes checked the type"), bytes, &mut out);
        Ok(out)
    }
}
