//! Computes one output tensor chunk by chunk on all cores and writes each chunk where it belongs.
//!
//! A chunk is 16 Ki elements (64 KiB of f32): small enough that the buffers of a merge of several models
//! (base, each model, three temporaries) stay in L2
//! and memory does not depend on the tensor's size, large enough that a chunk costs far more than
//! its scheduling.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::dtype::encode_f32;
use crate::error::{MergeError, Result};
use crate::model_dir::TensorRef;
use crate::safetensors::{PlannedTensor, ShardedWriter};

/// Elements per chunk.
pub const CHUNK: usize = 1 << 16;

/// The chunks `[start, end)` covering `n` elements.
pub fn chunks(n: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> {
    (0..n.div_ceil(CHUNK)).into_par_iter().map(move |c| (c * CHUNK, ((c + 1) * CHUNK).min(n)))
}

/// Writes planned tensor `index`, whose elements `fill(start, out)` computes in f32, converting to the
/// planned dtype. Unless `allow_nonfinite`, NaN or infinite results are an error naming the tensor.
pub fn write_tensor(
    writer: &ShardedWriter,
    index: usize,
    planned: &PlannedTensor,
    allow_nonfinite: bool,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Result<()> {
    let n: usize = planned.shape.iter().product();
    let size = planned.dtype.size();
    let nonfinite = AtomicUsize::new(0);
    chunks(n).try_for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, bytes): &mut (Vec<f32>, Vec<u8>), (start, end)| {
            buf.resize(end - start, 0.0);
            fill(start, buf);
            let bad = buf.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                nonfinite.fetch_add(bad, Ordering::Relaxed);
                if !allow_nonfinite {
                    return Ok(());
                }
            }
            bytes.resize(buf.len() * size, 0);
            encode_f32(buf, planned.dtype, bytes);
            writer.write(index, start * size, bytes)
        },
    )?;
    let count = nonfinite.into_inner();
    if count > 0 && !allow_nonfinite {
        return Err(MergeError::NonFinite { tensor: planned.name.clone(), count });
    }
    Ok(())
}

/// Writes planned tensor `index` as a byte-for-byte copy of tensor `t` (same dtype, no arithmetic),
/// in 4 MiB positioned reads and writes.
pub fn copy_tensor(writer: &ShardedWriter, index: usize, t: TensorRef<'_>) -> Result<()> {
    const BYTES: usize = 4 << 20;
    let len = t.info.end - t.info.begin;
    (0..len.div_ceil(BYTES)).into_par_iter().try_for_each_init(Vec::new, |buf: &mut Vec<u8>, c| {
        let end = ((c + 1) * BYTES).min(len);
        buf.resize(end - c * BYTES, 0);
        t.file.read_part(t.info, c * BYTES, buf);
        writer.write(index, c * BYTES, buf)
    })?;
    Ok(())
}
