//! Next-token cross-entropy computed from the last hidden states, only at positions that have a
//! label, a chunk of rows at a time, so that `[tokens, vocab]` logits never exist for the whole
//! batch (Liger-Kernel's fused linear cross-entropy does the same on GPUs; with a 152k vocabulary
//! the full logits of 512 tokens are 0.3 GB, twice over with their gradient). Masked prompt
//! tokens cost no head work at all.
//!
//! For training, each chunk is its own small graph: its rows of the hidden states become a leaf,
//! the chunk's loss is back-propagated at once, and the gradient of those rows is kept, so that
//! only one chunk's logits and their gradient exist at any time. ∂L/∂hidden is zero at rows without
//! a label (the head is applied row by row), so the chunk gradients assembled into a zero tensor are
//! the whole gradient.
//!
//! The plain reference is [`crate::loss::shifted_cross_entropy_sum`] over the full logits; the tests
//! check the sum and the gradients against it.

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Gradients, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::Result;
use crate::kernels::host::to_f32_vec;
use crate::network::model::CausalLm;

/// Logit values per chunk (32 Mi, 128 MiB in f32): 220 rows of a 152k vocabulary, 135 of Qwen3.5's
/// 248k, 2097 of a 16k one. A chunk's logits, their log-softmax and their gradient exist at once.
/// Each chunk streams the head block by block (forward and backward), so fewer, larger chunks are
/// faster: 16 Mi-value chunks cost a 0.5B-shape bf16 step 10% against 64 Mi (measured with
/// scripts/bench_scale.sh). 64 Mi made a Qwen3.5-27B QLoRA step peak 0.6 GB above its plateau, which
/// is the margin between that run and a 20 GB machine; 32 Mi halves it.
pub const CHUNK_LOGITS: usize = 32 << 20;

/// Most rows in one chunk, whatever the vocabulary.
pub const MAX_CHUNK_ROWS: usize = 4096;

/// Rows per chunk for a vocabulary size.
pub fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_LOGITS / vocab.max(1)).clamp(1, MAX_CHUNK_ROWS)
}

/// The positions that predict a label: flattened `b · seq + t` indices of the logits rows, and the
/// label each predicts (`labels` is aligned with the input ids, so the logits at t predict the
/// label at t + 1).
pub fn labelled_rows(labels: &[Vec<Option<u32>>], seq: usize) -> (Vec<i64>, Vec<i64>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, row) in labels.iter().enumerate() {
        for pos in 0..seq {
            if let Some(id) = row.get(pos + 1).copied().flatten() {
                rows.push((b * seq + pos) as i64);
                targets.push(id as i64);
            }
        }
    }
    (rows, targets)
}

/// What the head pass gives.
#[derive(Debug)]
pub struct HeadLoss {
    /// Σ −log p(label) over the labelled positions.
    pub sum: f64,
    /// Number of labelled positions.
    pub count: usize,
    /// With `grad_scale`: ∂(grad_scale · sum)/∂hidden, `[batch, seq, hidden]`, zero at rows without a
    /// label.
    pub grad: Option<Tensor<3>>,
}

/// The summed loss of a batch from its last hidden states (before the final norm).
///
/// With `grad_scale`, each chunk is back-propagated at once (scaled, e.g. by one over the step's
/// target tokens) and `on_grads` sees each chunk's gradients, for the head's adapters; `hidden`
/// itself is read as a constant.
///
/// # Shapes
/// - hidden: `[batch, seq, hidden]`
pub fn head_loss(
    model: &mut CausalLm,
    hidden: Tensor<3>,
    labels: &[Vec<Option<u32>>],
    grad_scale: Option<f64>,
    on_grads: impl FnMut(&Gradients),
) -> Result<HeadLoss> {
    head_loss_chunked(model, hidden, labels, grad_scale, chunk_rows(model.config.vocab_size), on_grads)
}

/// [`head_loss`] with `per` labelled rows per chunk.
pub fn head_loss_chunked(
    model: &mut CausalLm,
    hidden: Tensor<3>,
    labels: &[Vec<Option<u32>>],
    grad_scale: Option<f64>,
    per: usize,
    on_grads: impl FnMut(&Gradients),
) -> Result<HeadLoss> {
    head_pass(model, hidden, labels, Head::Sum { weights: None, grad_scale }, per, on_grads).map(|(h, _)| h)
}

/// [`head_loss`] with a weight per labelled row (in [`labelled_rows`]' order): the sum is
/// Σ w·(−log p(label)), and its gradient, scaled by `grad_scale`, is what is back-propagated. A
/// preference loss gives each row its sequence's ∂loss/∂log p.
///
/// # Shapes
/// - hidden: `[batch, seq, hidden]`; weights: one per labelled position
pub fn head_loss_weighted(
    model: &mut CausalLm,
    hidden: Tensor<3>,
    labels: &[Vec<Option<u32>>],
    weights: &[f32],
    grad_scale: f64,
    on_grads: impl FnMut(&Gradients),
) -> Result<HeadLoss> {
    let per = chunk_rows(model.config.vocab_size);
    let head = Head::Sum { weights: Some(weights), grad_scale: Some(grad_scale) };
    head_pass(model, hidden, labels, head, per, on_grads).map(|(h, _)| h)
}

/// log p(label) at every labelled position (in [`labelled_rows`]' order), untracked, a chunk at a
/// time: the per-token log-probabilities whose sums over a sequence a preference loss compares.
///
/// # Shapes
/// - hidden: `[batch, seq, hidden]`
pub fn head_log_probs(model: &mut CausalLm, hidden: Tensor<3>, labels: &[Vec<Option<u32>>]) -> Result<Vec<f32>> {
    let per = chunk_rows(model.config.vocab_size);
    head_pass(model, hidden, labels, Head::Rows, per, |_| {}).map(|(_, rows)| rows)
}

/// What a head pass computes.
#[derive(Clone, Copy)]
enum Head<'a> {
    /// The (weighted) sum of −log p, back-propagated with `grad_scale` when given.
    Sum { weights: Option<&'a [f32]>, grad_scale: Option<f64> },
    /// Each row's log p, as values.
    Rows,
}

/// The head over the labelled rows, a chunk of `per` at a time: the loss of [`Head::Sum`] (and the
/// rows' log p for [`Head::Rows`]).
fn head_pass(
    model: &mut CausalLm,
    hidden: Tensor<3>,
    labels: &[Vec<Option<u32>>],
    what: Head<'_>,
    per: usize,
    mut on_grads: impl FnMut(&Gradients),
) -> Result<(HeadLoss, Vec<f32>)> {
    let (weights, grad_scale) = match what {
        Head::Sum { weights, grad_scale } => (weights, grad_scale),
        Head::Rows => (None, None),
    };
    let mut row_log_probs = Vec::new();
    let [b, t, h] = hidden.dims();
    let device = hidden.device();
    let flat = hidden.inner().reshape([b * t, h]); // [b·t, h]
    let (rows, targets) = labelled_rows(labels, t);
    let vocab = model.config.vocab_size;
    if let Some(bad) = targets.iter().find(|&&id| id < 0 || id as usize >= vocab) {
        return Err(crate::error::CoreError::Invalid(format!("label {bad} is outside the vocabulary of {vocab}")));
    }
    let mut grad = grad_scale.map(|_| Tensor::<2>::zeros([b * t, h], &device));
    let mut sum = 0.0f64;
    // As few chunks as `per` allows, of equal size: 512 rows of a 152k vocabulary go as 3 x 171,
    // not 220 + 220 + 72, whose small product streams the whole head for a seventh of the rows.
    let chunks = rows.len().div_ceil(per.max(1)).max(1);
    let per = rows.len().div_ceil(chunks).max(1);
    // Adapters on the head draw their dropout masks per call: give each chunk its own seed, so that
    // chunks do not repeat one mask.
    let seeds: Vec<u64> = model.lm_head.lora.iter().map(|a| a.dropout_seed).collect();
    if let Some(w) = weights
        && w.len() != rows.len()
    {
        return Err(crate::error::CoreError::Invalid(format!(
            "{} row weights for {} labelled positions",
            w.len(),
            rows.len()
        )));
    }
    for (k, (rows, targets)) in rows.chunks(per).zip(targets.chunks(per)).enumerate() {
        let chunk_weights = weights.map(|w| w[k * per..k * per + rows.len()].to_vec());
        for (a, &seed) in model.lm_head.lora.iter_mut().zip(&seeds) {
            a.dropout_seed = seed ^ (k as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        }
        let n = rows.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [n]), &device);
        let x = flat.clone().select(0, idx.clone()); // [n, h]
        let x = if grad_scale.is_some() { x.autodiff().require_grad() } else { x };
        let logits = model.head(x.clone()); // [n, vocab]
        let logits = logits.cast(DType::F32);
        let fused = crate::kernels::cpu_kernel::use_fused(&logits);
        if let Head::Rows = what {
            let losses = if fused {
                crate::loss::fused_cross_entropy::cross_entropy_rows(
                    logits,
                    targets.iter().map(|&t| t as u32).collect(),
                )
            } else {
                let target = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
                log_softmax(logits, 1).gather(1, target).reshape([n]).neg()
            };
            row_log_probs.extend(to_f32_vec(losses.inner())?.into_iter().map(|l| -l));
            continue;
        }
        let chunk = if fused {
            let targets = targets.iter().map(|&t| t as u32).collect();
            crate::loss::fused_cross_entropy::cross_entropy_sum(logits, targets, chunk_weights)
        } else {
            let logp = log_softmax(logits, 1); // [n, vocab]
            let target = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
            let picked = logp.gather(1, target).reshape([n]); // [n]
            match chunk_weights {
                Some(w) => (picked * Tensor::<1>::from_data(TensorData::new(w, [n]), &device)).sum().neg(),
                None => picked.sum().neg(), // [1]
            }
        };
        sum += to_f32_vec(chunk.clone().inner())?[0] as f64;
        if let (Some(scale), Some(acc)) = (grad_scale, grad.take()) {
            let g = (chunk * scale).backward();
            on_grads(&g);
            let gx = x.grad(&g).unwrap_or_else(|| Tensor::zeros([n, h], &device)); // [n, h]
            grad = Some(acc.select_assign(0, idx, gx, IndexingUpdateOp::Add));
        }
    }
    for (a, seed) in model.lm_head.lora.iter_mut().zip(seeds) {
        a.dropout_seed = seed;
    }
    Ok((HeadLoss { sum, count: rows.len(), grad: grad.map(|g| g.reshape([b, t, h])) }, row_log_probs))
}
