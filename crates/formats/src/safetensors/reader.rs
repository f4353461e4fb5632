//! One memory-mapped `.safetensors` file with a validated header.
//!
//! The header is parsed here rather than by the `safetensors` crate so that every defect gets a message
//! naming the file and the tensor: a file shorter than its header, offsets beyond the data, ranges that
//! overlap, sizes that disagree with shape and dtype, and dtypes lora does not know. After `open`
//! succeeds, every byte range handed out lies inside the mapping.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use serde::Deserialize;

use crate::dtype::DType;
use crate::error::{FormatError, Result};

/// Where one tensor lives in a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub begin: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// The same file, for positioned reads that bypass the mapping (see [`Self::read_part`]).
    file: File,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Largest header accepted (as the reference implementation: 100 MB), so a corrupt length cannot
/// make us parse gigabytes of tensor data as JSON.
const MAX_HEADER: usize = 100_000_000;

impl SafetensorsFile {
    /// Maps `path` and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| FormatError::io(&path, e))?;
        // SAFETY: the file is opened read-only; lora never writes to its inputs, and a concurrent
        // writer truncating the file is outside what any mmap-based reader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
        let bad = |m: String| FormatError::safetensors(&path, m);
        let size = mmap.len();
        if size < 8 {
            return Err(bad(format!(
                "the file is {size} bytes long, shorter than the 8-byte header length (truncated)"
            )));
        }
        let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER as u64 || header_len as usize > size - 8 {
            return Err(bad(format!(
                "the header claims {header_len} bytes but the file has {} after the length (truncated or corrupt)",
                size - 8
            )));
        }
        let header_len = header_len as usize;
        let data_start = 8 + header_len;
        let data_len = size - data_start;
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&mmap[8..data_start])
            .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value)
                    .map_err(|e| bad(format!("__metadata__ is not a map of strings: {e}")))?;
                continue;
            }
            let e: RawEntry =
                serde_json::from_value(value).map_err(|e| bad(format!("tensor '{name}': bad header entry: {e}")))?;
            let dtype = DType::from_safetensors(&e.dtype)
                .ok_or_else(|| bad(format!("tensor '{name}': unknown dtype '{}'", e.dtype)))?;
            let (begin, end) = e.data_offsets;
            let numel = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let expected = numel.and_then(|n| n.checked_mul(dtype.size()));
            if begin > end || end > data_len {
                return Err(bad(format!(
                    "tensor '{name}': data offsets [{begin}, {end}) lie beyond the {data_len} bytes of data (truncated or corrupt)"
                )));
            }
            if expected != Some(end - begin) {
                return Err(bad(format!(
                    "tensor '{name}': {} bytes for shape {:?} of {}, which needs {}",
                    end - begin,
                    e.shape,
                    e.dtype,
                    expected.map_or("more than fits in memory".into(), |n| n.to_string())
                )));
            }
            tensors.insert(name, TensorInfo { dtype, shape: e.shape, begin, end });
        }
        // Overlapping ranges would alias two tensors; the format forbids them.
        let mut ranges: Vec<(&String, &TensorInfo)> = tensors.iter().filter(|(_, t)| t.end > t.begin).collect();
        ranges.sort_by_key(|(_, t)| t.begin);
        for w in ranges.windows(2) {
            if w[1].1.begin < w[0].1.end {
                return Err(bad(format!(
                    "tensors '{}' and '{}' overlap (bytes {}..{} and {}..{})",
                    w[0].0, w[1].0, w[0].1.begin, w[0].1.end, w[1].1.begin, w[1].1.end
                )));
            }
        }
        Ok(Self { path, mmap, file, data_start, tensors, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names and where they live, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The header's `__metadata__` map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The header entry of tensor `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Tensor `name` converted to f32 (from any float dtype), with its shape. Its pages are released
    /// after the copy, so that a loader holds the model plus about one tensor of file bytes.
    pub fn to_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info =
            self.info(name).ok_or_else(|| FormatError::safetensors(&self.path, format!("no tensor '{name}'")))?;
        if !info.dtype.is_float() {
            return Err(FormatError::safetensors(
                &self.path,
                format!("tensor '{name}' has dtype {}, expected F32, F16, BF16 or F64", info.dtype.safetensors_name()),
            ));
        }
        let mut values = vec![0f32; info.numel()];
        crate::dtype::decode_f32(self.bytes(info), info.dtype, &mut values);
        self.release(info);
        Ok((values, info.shape.clone()))
    }

    /// Tensor `name`'s bytes copied out, with its shape. They are read with a positioned read, not
    /// through the mapping, so that a 2.5 GB head does not sit in the resident set twice (the
    /// mapping's pages and the copy) while it loads; should that read fail, through the mapping.
    pub fn to_bytes(&self, name: &str) -> Option<(Vec<u8>, Vec<usize>)> {
        use std::os::unix::fs::FileExt;
        let info = self.info(name)?;
        let mut bytes = vec![0u8; info.end - info.begin];
        if self.file.read_exact_at(&mut bytes, (self.data_start + info.begin) as u64).is_err() {
            bytes.copy_from_slice(self.bytes(info));
            self.release(info);
        }
        Some((bytes, info.shape.clone()))
    }

    /// Where `info`'s data begins in the file, in bytes from the file's start: for readers that
    /// keep a tensor in the file and read parts of it later (the token embeddings of a large model).
    pub fn file_offset(&self, info: &TensorInfo) -> u64 {
        (self.data_start + info.begin) as u64
    }

    /// The raw little-endian bytes of `info` (a tensor of this file).
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + info.begin..self.data_start + info.end]
    }

    /// Reads bytes `begin..begin + out.len()` of `info`'s data with a positioned read.
    ///
    /// Streaming passes read through here rather than through the mapping: a copy out of the page
    /// cache costs less than faulting each page into the mapping (and, for tensors read in several
    /// passes, faulting it again after releasing it), and the resident set stays at the size of the
    /// buffers whatever the size of the tensor.
    ///
    /// A failed read (after `open` validated the sizes, the file was truncated or the disk failed
    /// under the merge) unwinds with a [`ReadFailure`], deep inside the parallel kernels, without the
    /// panic hook; [`catch_read_failures`] at each entry point turns it into a [`FormatError::Io`]
    /// naming the file.
    pub fn read_part(&self, info: &TensorInfo, begin: usize, out: &mut [u8]) {
        use std::os::unix::fs::FileExt;
        assert!(begin + out.len() <= info.end - info.begin, "read past a tensor");
        let at = (self.data_start + info.begin + begin) as u64;
        if let Err(error) = self.file.read_exact_at(out, at) {
            std::panic::resume_unwind(Box::new(ReadFailure { path: self.path.clone(), at, error }));
        }
    }

    /// Tells the kernel that this process is done with `info`'s pages, so they leave the resident
    /// set (they stay in the page cache). Without it, streaming a 14 GB model through a mapping
    /// would show 14 GB of RSS by the end, although nothing is held.
    pub fn release(&self, info: &TensorInfo) {
        let len = info.end - info.begin;
        if len == 0 {
            return;
        }
        // SAFETY: DONTNEED on a read-only private file mapping only drops our page-table entries;
        // a later access reads the same bytes back from the page cache.
        let _ =
            unsafe { self.mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, self.data_start + info.begin, len) };
    }
}

/// The payload of a read that failed in the middle of a merge.
#[derive(Debug)]
pub struct ReadFailure {
    /// The input file.
    pub path: PathBuf,
    /// The byte offset of the failed read.
    pub at: u64,
    /// What the OS said.
    pub error: std::io::Error,
}

/// Runs `f`, turning a [`ReadFailure`] raised by [`SafetensorsFile::read_part`] anywhere inside it
/// (rayon re-raises a worker's payload in the caller) into an error; other panics stay panics.
pub fn catch_read_failures<T, E: From<FormatError>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<ReadFailure>() {
            Ok(fail) => Err(FormatError::Io {
                path: fail.path,
                source: std::io::Error::new(
                    fail.error.kind(),
                    format!("reading at byte {}: {} (was the file changed during the merge?)", fail.at, fail.error),
                ),
            }
            .into()),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}
