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

/// Micro-batches per epoch.
pub fn micro_batches_per_epoch(n: usize, batch_size: usize) -> u64 {
    n.div_ceil(batch_size) as u64
}

/// The examples of global micro-batch number `index`.
pub fn micro_batch<'a>(examples: &'a [Example], batch_size: usize, seed: u64, index: u64) -> Vec<&'a Example> {
    let per_epoch = micro_batches_per_epoch(examples.len(), batch_size);
    let epoch = index / per_epoch;
    let within = (index % per_epoch) as usize;
    let order = epoch_order(examples.len(), seed, epoch);
    let start = within * batch_size;
    order[start..(start + batch_size).min(order.len())].iter().map(|&i| &examples[i]).collect()
}

/// Pads examples on the right with `pad_id`; padded positions have no label and are masked.
pub fn collate(examples: &[&Example], pad_id: u32) -> (TokenBatch, Vec<Vec<Option<u32>>>) {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let padded = examples.iter().any(|e| e.ids.len() < t);
    let mut ids = Vec::with_capacity(examples.len());
    let mut mask = Vec::with_capacity(examples.len());
    let mut labels = Vec::with_capacity(examples.len());
    let packed = examples.iter().any(|e| e.segments.is_some());
    let mut segments = Vec::with_capacity(examples.len());
    for e in examples {
        let pad = t - e.ids.len();
        ids.push(e.ids.iter().copied().chain(std::iter::repeat_n(pad_id, pad)).collect());
        mask.push(std::iter::repeat_n(true, e.ids.len()).chain(std::iter::repeat_n(false, pad)).collect());
        labels.push(e.labels.iter().copied().chain(std::iter::repeat_n(None, pad)).collect());
        if packed {
            let seg = e.segments.clone().unwrap_or_else(|| vec![0; e.ids.len()]);
            // Padding gets a segment of its own.
            segments.push(seg.into_iter().chain(std::iter::repeat_n(u32::MAX, pad)).collect());
        }
    }
    (TokenBatch { ids, mask: padded.then_some(mask), segments: packed.then_some(segments) }, labels)
}
