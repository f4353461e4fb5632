//! A `[rows, cols]` table left in its safetensors file and read a few rows at a time: the token
//! embeddings of a model whose head does not share them. A step of training or generation reads only
//! the rows of its tokens, so the table (2.5 GB in bf16 for a 248k-token vocabulary at hidden 5120)
//! never enters the process's memory; the rows come from the page cache by positioned reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor};

use crate::error::{CoreError, Result};
use crate::io::weights::{held_from_bytes, held_from_f32, stores};

/// A table's place in its file and the dtype it is held in.
#[derive(Debug, Clone)]
pub struct FileRows {
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of row 0 in the file.
    offset: u64,
    /// The dtype of the file's values.
    stored: lora_formats::DType,
    /// `[rows, cols]`.
    shape: [usize; 2],
    /// The dtype the table is held in: each row is rounded to it, as a table loaded whole would be.
    dtype: DType,
}

impl FileRows {
    /// The table of `shape` at byte `offset` of `path`, stored as `stored`, held as `dtype`.
    pub fn open(
        path: PathBuf,
        offset: u64,
        stored: lora_formats::DType,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Self> {
        let file = File::open(&path).map_err(|e| CoreError::io(&path, e))?;
        Ok(Self { path, file: Arc::new(file), offset, stored, shape, dtype })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// The rows `ids` in f32, with the values a resident table in [`Self::dtype`] gives: the file's
    /// bytes as they are when it stores that dtype, else decoded and rounded to it.
    ///
    /// # Shapes
    /// - output: `[ids.len(), cols]`
    pub fn gather(&self, ids: &[usize], device: &Device) -> Result<Tensor<2>> {
        let [rows, cols] = self.shape;
        let row_bytes = cols * self.stored.size();
        let mut bytes = vec![0u8; ids.len() * row_bytes];
        for (&id, out) in ids.iter().zip(bytes.chunks_exact_mut(row_bytes)) {
            if id >= rows {
                return Err(CoreError::Invalid(format!("token id {id} is outside the vocabulary of {rows}")));
            }
            self.file
                .read_exact_at(out, self.offset + (id * row_bytes) as u64)
                .map_err(|e| CoreError::io(&self.path, e))?;
        }
        let shape = [ids.len(), cols];
        let held: Tensor<2> = if stores(self.stored, self.dtype) {
            held_from_bytes(bytes, shape, self.dtype, device)
        } else {
            let mut values = vec![0f32; ids.len() * cols];
            lora_formats::dtype::decode_f32(&bytes, self.stored, &mut values);
            held_from_f32(values, shape, self.dtype, device)
        };
        Ok(held.cast(DType::F32))
    }
}
