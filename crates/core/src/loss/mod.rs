//! Next-token cross-entropy, as transformers computes `model(ids, labels=labels).loss`: logits at
//! position t predict the label at t + 1; positions without a label (padding, masked prompt) count
//! for nothing. Summed here, so that callers can normalise by the number of target tokens over a
//! whole accumulated batch rather than averaging per-batch means.
//!
//! This file is the plain reference over full logits; [`chunked`] computes the same from the last
//! hidden states a chunk of rows at a time (training), with [`fused_cross_entropy`] as its CPU
//! kernel; [`eval`] averages it over texts (perplexity).

pub mod chunked;
pub mod eval;
pub mod fused_cross_entropy;

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};

/// Sum of -log p(label) over the targets of a batch, and how many targets there were.
///
/// `labels[b][t]` is the token expected at position t, or `None`; the shift is done here, so
/// `labels` is aligned with the input ids (label at t is predicted by logits at t − 1).
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - output: `[1]`
pub fn shifted_cross_entropy_sum(logits: Tensor<3>, labels: &[Vec<Option<u32>>]) -> (Tensor<1>, usize) {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    let mut idx = Vec::with_capacity(b * t);
    let mut weight = Vec::with_capacity(b * t);
    let mut count = 0;
    for row in labels {
        for pos in 0..t {
            // logits at `pos` predict the label at `pos + 1`
            match row.get(pos + 1).copied().flatten() {
                Some(id) => {
                    idx.push(id as i64);
                    weight.push(1.0f32);
                    count += 1;
                }
                None => {
                    idx.push(0);
                    weight.push(0.0);
                }
            }
        }
    }
    let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, t, 1]), &device);
    let weight = Tensor::<3>::from_data(TensorData::new(weight, [b, t, 1]), &device);
    let logp = log_softmax(logits.cast(DType::F32), 2); // [b, t, v]
    debug_assert_eq!(logp.dims()[2], v);
    let picked = logp.gather(2, idx); // [b, t, 1]
    ((picked * weight).sum().neg(), count)
}
