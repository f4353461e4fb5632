//! One memory-mapped `.safetensors` file: a validated header and zero-copy access to each tensor's bytes.
//!
//! The header is checked by the `safetensors` crate (offsets contiguous, inside the file, sizes matching
//! shapes and dtypes), so a truncated file or a header that lies about its offsets is an error here, never
//! a panic or an out-of-bounds read later.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorInfo};

use crate::error::{CoreError, Result};

/// A memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| CoreError::io(&path, e))?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped is the one
        // case memmap cannot guard against, as with every mmap-based loader (PyTorch, candle).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CoreError::io(&path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| CoreError::Safetensors { path: path.clone(), message: describe(&e, mmap.len()) })?;
        let tensors = meta.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(Self { path, mmap, data_start: 8 + header_len, tensors, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names and their header entries, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The optional `__metadata__` string map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The header entry of one tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The raw little-endian bytes of one tensor, borrowed from the map.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        let (start, end) = info.data_offsets;
        // In bounds: read_metadata checked that the offsets cover the data section exactly.
        Some(&self.mmap[self.data_start + start..self.data_start + end])
    }

    /// One tensor converted to f32 (from F32, F16 or BF16), with its shape.
    pub fn to_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.info(name).ok_or_else(|| CoreError::MissingTensor {
            dir: self.path.clone(),
            name: name.to_string(),
            expected: vec![],
        })?;
        let bytes = self.bytes(name).unwrap_or_default();
        let values = bytes_to_f32(bytes, info.dtype).ok_or_else(|| CoreError::UnsupportedDtype {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        self.release(info);
        Ok((values, info.shape.clone()))
    }

    /// One tensor's bytes copied out (and its pages released), with its shape.
    pub fn to_bytes(&self, name: &str) -> Option<(Vec<u8>, Vec<usize>)> {
        let info = self.info(name)?;
        let bytes = self.bytes(name)?.to_vec();
        self.release(info);
        Some((bytes, info.shape.clone()))
    }

    /// Drops the pages of a tensor already copied out from this process's resident set, so that a
    /// loader holds the model plus about one tensor of file bytes, not the model plus the whole file.
    /// The pages stay in the page cache; a later read faults them back in.
    fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            let (start, end) = info.data_offsets;
            // SAFETY: the map is read-only and shared with the file, so dropped pages read back with
            // the same bytes; no borrow of this range outlives the copy the caller made.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.data_start + start,
                    end - start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }
}

/// Converts little-endian F32 / F16 / BF16 bytes to f32; `None` for any other dtype.
pub fn bytes_to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return None,
    })
}

fn describe(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is {file_len} bytes, too short to hold a header"),
        E::InvalidHeaderLength => "header length points past the end of the file (truncated?)".into(),
        E::MetadataIncompleteBuffer => {
            format!("header offsets do not match the file size of {file_len} bytes (truncated or corrupt)")
        }
        E::InvalidOffset(name) => {
            format!("tensor '{name}' has invalid or overlapping data offsets")
        }
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
        other => other.to_string(),
    }
}
