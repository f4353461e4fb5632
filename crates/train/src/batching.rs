//! Epoch orders and micro-batches: a seeded shuffle per epoch, examples padded on the right.

use lora_core::TokenBatch;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::Example;

/// The order of examples in `epoch`: a permutation seeded by (seed, epoch), so that any position of
/// any epoch can be recomputed after a resume without saving RNG state.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    order.shuffle(&mut rng);
    order
}

/// A seeded random `fraction` of `items` held out for validation: (kept, held out). At least one
/// item is held out, and at least one must remain (`what` names the items in the error).
pub fn hold_out<T>(items: Vec<T>, fraction: f64, seed: u64, what: &str) -> Result<(Vec<T>, Vec<T>), String> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x0A11_DA7A));
    let n_val = ((items.len() as f64) * fraction).round().max(1.0) as usize;
    if n_val >= items.len() {
        return Err(format!("validation_fraction {fraction} leaves no training {what} out of {}", items.len()));
    }
    let held: std::collections::BTreeSet<usize> = idx[..n_val].iter().copied().collect();
    let (mut keep, mut val) = (Vec::new(), Vec::new());
    for (i, e) in items.into_iter().enumerate() {
        if held.contains(&i) { val.push(e) } else { keep.push(e) }
    }
    Ok((keep, val))
}

/// Micro-batches per epoch.
pub fn micro_batches_per_epoch(n: usize, batch_size: usize) -> u64 {
    n.div_ceil(batch_size) as u64
}

/// The examples of global micro-batch number `index`.
pub fn micro_batch<'a>(examples: &'a [Example], batch_size: usize, seed: u64, index: u64) -> Vec<&'a Example> {
    micro_batch_indices(examples.len(), batch_size, seed, index).into_iter().map(|i| &examples[i]).collect()
}

/// The indices (into `n` items) of global micro-batch number `index`.
pub fn micro_batch_indices(n: usize, batch_size: usize, seed: u64, index: u64) -> Vec<usize> {
    let per_epoch = micro_batches_per_epoch(n, batch_size);
    let epoch = index / per_epoch;
    let within = (index % per_epoch) as usize;
    let order = epoch_order(n, seed, epoch);
    let start = within * batch_size;
    order[start..(start + batch_size).min(order.len())].to_vec()
}

/// Pads examples with `pad_id` on the tokenizer's padding side; padded positions have no label and are
/// masked (positions count real tokens only, so the side changes no number).
pub fn collate(examples: &[&Example], pad_id: u32, pad_left: bool) -> (TokenBatch, Vec<Vec<Option<u32>>>) {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let padded = examples.iter().any(|e| e.ids.len() < t);
    let mut ids = Vec::with_capacity(examples.len());
    let mut mask = Vec::with_capacity(examples.len());
    let mut labels = Vec::with_capacity(examples.len());
    let packed = examples.iter().any(|e| e.segments.is_some());
    let mut segments = Vec::with_capacity(examples.len());
    for e in examples {
        let pad = t - e.ids.len();
        // Padding (with its own segment number when packed) before or after the tokens.
        let seg = e.segments.clone().unwrap_or_else(|| vec![0; e.ids.len()]);
        let place = |real: Vec<_>, fill| -> Vec<_> {
            if pad_left {
                std::iter::repeat_n(fill, pad).chain(real).collect()
            } else {
                real.into_iter().chain(std::iter::repeat_n(fill, pad)).collect()
            }
        };
        ids.push(place(e.ids.clone(), pad_id));
        mask.push(if pad_left {
            std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, e.ids.len())).collect()
        } else {
            std::iter::repeat_n(true, e.ids.len()).chain(std::iter::repeat_n(false, pad)).collect()
        });
        labels.push(if pad_left {
            std::iter::repeat_n(None, pad).chain(e.labels.iter().copied()).collect()
        } else {
            e.labels.iter().copied().chain(std::iter::repeat_n(None, pad)).collect()
        });
        if packed {
            segments.push(place(seg, u32::MAX));
        }
    }
    (TokenBatch { ids, mask: padded.then_some(mask), segments: packed.then_some(segments) }, labels)
}
