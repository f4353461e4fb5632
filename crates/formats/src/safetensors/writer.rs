//! Writes safetensors shards whose layout is planned before any data exists.
//!
//! Every output tensor's name, dtype and shape are known before the merge computes anything, so the
//! headers (and the shard split) are written first and each tensor's bytes go straight to their final
//! offset with positioned writes, from any thread, in any order. Nothing is buffered beyond the chunk
//! being written: memory does not grow with the model.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::dtype::DType;
use crate::error::{FormatError, Result};

/// One tensor of the output, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Hugging Face tensor name.
    pub name: String,
    /// Element type written.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

struct Shard {
    path: PathBuf,
    file: File,
}

/// Where a planned tensor goes: its shard and absolute file offset.
#[derive(Debug, Clone, Copy)]
struct Slot {
    shard: usize,
    offset: u64,
    len: usize,
}

/// Safetensors shards in a folder, with `model.safetensors.index.json` when there is more than one.
pub struct ShardedWriter {
    shards: Vec<Shard>,
    slots: Vec<Slot>,
    names: Vec<String>,
}

/// Parses a size such as `5GB`, `500MB`, `2GiB` or `1000000` (bytes), as `--shard-size` and mergekit's
/// `out_shard_size` accept.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = num * mult;
    (v >= 1.0).then_some(v as u64)
}

impl ShardedWriter {
    /// Creates the shard files in `dir` for `tensors` (in this order), starting a new shard whenever
    /// the current one would pass `max_shard_bytes` (a tensor larger than that gets a shard of its own).
    /// The files are named `model.safetensors`, or `model-0000i-of-0000n.safetensors` plus an index.
    pub fn create(dir: &Path, tensors: &[PlannedTensor], max_shard_bytes: u64) -> Result<Self> {
        // 1) split into shards
        let mut groups: Vec<Vec<usize>> = vec![vec![]];
        let mut current = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            let len = t.byte_len() as u64;
            let last = groups.last_mut().expect("one group");
            if !last.is_empty() && current + len > max_shard_bytes {
                groups.push(vec![i]);
                current = len;
            } else {
                last.push(i);
                current += len;
            }
        }
        let n = groups.len();
        let file_name = |k: usize| {
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{:05}.safetensors", k + 1, n) }
        };
        // 2) write each shard's header and size the file; data is filled in later
        let mut slots = vec![Slot { shard: 0, offset: 0, len: 0 }; tensors.len()];
        let mut shards = Vec::with_capacity(n);
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, group) in groups.iter().enumerate() {
            let mut header = serde_json::Map::new();
            header.insert("__metadata__".into(), json!({ "format": "pt" }));
            let mut off = 0usize;
            for &i in group {
                let t = &tensors[i];
                let len = t.byte_len();
                header.insert(
                    t.name.clone(),
                    json!({ "dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [off, off + len] }),
                );
                slots[i] = Slot { shard: k, offset: off as u64, len };
                weight_map.insert(t.name.clone(), Value::String(file_name(k)));
                off += len;
            }
            total += off as u64;
            let mut hbytes = serde_json::to_vec(&Value::Object(header)).expect("json");
            // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
            while !(8 + hbytes.len()).is_multiple_of(8) {
                hbytes.push(b' ');
            }
            let path = dir.join(file_name(k));
            let file = File::create(&path).map_err(|e| FormatError::io(&path, e))?;
            let data_start = 8 + hbytes.len() as u64;
            let mut head = (hbytes.len() as u64).to_le_bytes().to_vec();
            head.extend_from_slice(&hbytes);
            file.write_all_at(&head, 0).map_err(|e| FormatError::io(&path, e))?;
            file.set_len(data_start + off as u64).map_err(|e| FormatError::io(&path, e))?;
            for &i in group {
                slots[i].offset += data_start;
            }
            shards.push(Shard { path, file });
        }
        if n > 1 {
            let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
            let path = dir.join("model.safetensors.index.json");
            let text = serde_json::to_string_pretty(&index).expect("json");
            std::fs::write(&path, text + "\n").map_err(|e| FormatError::io(&path, e))?;
        }
        Ok(Self { shards, slots, names: tensors.iter().map(|t| t.name.clone()).collect() })
    }

    /// Writes `bytes` at byte `at` of planned tensor `index`'s data. Safe to call from many threads.
    ///
    /// # Panics
    /// If the write would leave the tensor's planned range (a bug in the caller).
    pub fn write(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        let slot = self.slots[index];
        assert!(at + bytes.len() <= slot.len, "write past tensor '{}'", self.names[index]);
        let shard = &self.shards[slot.shard];
        shard.file.write_all_at(bytes, slot.offset + at as u64).map_err(|e| FormatError::io(&shard.path, e))
    }

    /// Closes the shards. There is no fsync: the output folder only appears under its final name
    /// once complete (lora-merge's `OutputDir`), which is what protects against interruption; an
    /// fsync of gigabytes would only add the disk's write time to every merge.
    pub fn finish(self) -> Result<()> {
        drop(self.shards);
        Ok(())
    }
}
