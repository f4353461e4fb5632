//! One optimizer step, back-propagated stage by stage with burn's public autodiff API:
//!
//! 1) the decoder body, each layer its own graph from a leaf made of its input (all activations kept)
//!    or, with gradient checkpointing, untracked, keeping only each decoder layer's input;
//! 2) the head and the loss, a chunk of labelled rows at a time ([`head_loss`]): each chunk is
//!    back-propagated at once, giving ∂L/∂hidden without `[tokens, vocab]` ever existing;
//! 3) the body's backward from that gradient, layer by layer from the last: `(y · ∂L/∂y).sum()` is
//!    back-propagated through the layer's graph (kept, or with checkpointing re-run tracked from the
//!    saved input), and the input leaf's gradient goes down to the layer below. With checkpointing only
//!    one layer's activations (and, with an NF4 base, no dense weight beyond the block being
//!    multiplied) exist at a time.
//!
//! Both ways build the same per-layer graphs from the same values: burn runs a backward by depth, and
//! adds the gradients a node receives in the order it meets them, which depends on the whole graph; so
//! the layer is the graph in both, and the adapter they give is the same to the bit (a test checks
//! it). One graph over the whole body would sum the five gradients reaching a normed input in another
//! order than the per-layer graphs do. The gradients of a micro-batch are accumulated with the
//! loss divided by the whole step's target-token count, then clipped by global norm as
//! `torch.nn.utils.clip_grad_norm_`, then AdamW.

use lora_core::burn::tensor::{Gradients, Tensor};
use lora_core::kernels::cpu_kernel::use_fused;
use lora_core::kernels::host::to_f32_vec;
use lora_core::loss::chunked::{HeadLoss, head_loss};
use lora_core::{CausalLm, LayerInputs, TokenBatch};

use crate::error::Result;
use crate::optimizer::AdamW;
use crate::trainable::{
    adapter_layers, adapter_tensors, constant_adapters, set_adapter_tensors, set_dropout_seeds, take_adapter_tensors,
    track_adapters, untrack_adapters,
};

/// Loss and gradient norm of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss per target token of the step.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Settings of a step that are not per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    /// Global-norm clipping threshold; 0 disables.
    pub max_grad_norm: f64,
    /// Keep only each layer's input and recompute the layer in backward.
    pub gradient_checkpointing: bool,
}

/// Where a step's gradient contributions go, per trainable tensor (slot) in [`adapter_tensors`] order.
pub(crate) enum Acc<'a> {
    /// Added in place, in order, the first taken as is (one process).
    Sum(&'a mut [Option<Tensor<2>>]),
    /// Kept in order, for a distributed reduction to add them as one process would.
    Record(&'a mut [Vec<Tensor<2>>]),
}

impl Acc<'_> {
    /// Adds (or records) a contribution to slot `slot`.
    fn add(&mut self, slot: usize, g: Tensor<2>) {
        match self {
            Acc::Sum(acc) => {
                acc[slot] = Some(match acc[slot].take() {
                    Some(a) => a + g,
                    None => g,
                })
            }
            Acc::Record(rec) => rec[slot].push(g),
        }
    }

    fn len(&self) -> usize {
        match self {
            Acc::Sum(acc) => acc.len(),
            Acc::Record(rec) => rec.len(),
        }
    }
}

/// Adds each tracked leaf's gradient to its accumulator.
fn collect(leaves: &[Option<Tensor<2>>], grads: &Gradients, acc: &mut Acc<'_>) {
    for (slot, leaf) in leaves.iter().enumerate() {
        if let Some(g) = leaf.as_ref().and_then(|l| l.grad(grads)) {
            acc.add(slot, g);
        }
    }
}

/// Forward, loss and backward of one micro-batch; gradients (of the loss times `scale`) added to
/// `acc`. Returns the summed loss.
pub(crate) fn micro_batch(
    model: &mut CausalLm,
    batch: &TokenBatch,
    labels: &[Vec<Option<u32>>],
    scale: f64,
    checkpointing: bool,
    acc: &mut Acc<'_>,
) -> Result<f64> {
    micro_batch_with(model, batch, checkpointing, acc, |model, hidden, on_grads| {
        Ok(head_loss(model, hidden, labels, Some(scale), on_grads)?)
    })
}

/// What a micro-batch's head pass is given: the model, the last hidden states `[batch, seq, hidden]`
/// (read as constants), and the callback that collects the head adapters' gradients of each chunk.
pub(crate) type HeadPass<'a> = &'a mut dyn FnMut(&Gradients);

/// Forward and backward of one micro-batch around a head pass of the caller's: `head` computes the
/// loss from the last hidden states and gives ∂loss/∂hidden (the next-token loss for SFT, a
/// preference loss's weighted one for DPO); the body is back-propagated from it and every
/// adapter's gradient added to `acc`. Returns the head's loss sum.
pub(crate) fn micro_batch_with(
    model: &mut CausalLm,
    batch: &TokenBatch,
    checkpointing: bool,
    acc: &mut Acc<'_>,
    head: impl FnOnce(&mut CausalLm, Tensor<3>, HeadPass<'_>) -> Result<HeadLoss>,
) -> Result<f64> {
    // Every pass runs burn's autodiff operations, tracked or not: the plain backend's attention is
    // another implementation, and recomputation must see exactly the values the first pass saw.
    constant_adapters(model);
    // Trained token rows (PEFT's trainable tokens) learn from the first layer's input gradient.
    let tokens = model.model.embed_tokens.tokens.is_some();
    let lowest = if tokens { Some(0) } else { adapter_layers(model).into_iter().flatten().min() };
    // 1) The body.
    let LayerInputs { x, cos, sin, mask, layout } = model.layer_inputs(batch)?;
    let x = x.autodiff();
    let n_layers = model.model.layers.len();
    // Per layer from the lowest with an adapter: its input (a leaf when tracked) and, without
    // checkpointing, its tracked output. Layers below get no gradient and keep nothing.
    let mut inputs = Vec::with_capacity(n_layers);
    let mut outputs = Vec::with_capacity(n_layers);
    let mut body_leaves = Vec::new();
    let mut x = x;
    if !checkpointing {
        body_leaves = track_adapters(model, |l| l.is_some());
    }
    for (i, layer) in model.model.layers.iter().enumerate() {
        let tracked = !checkpointing && lowest.is_some_and(|lo| i >= lo);
        // The lowest adapted layer's input needs no gradient (nothing below learns): left untracked,
        // its backward skips the products that would give ∂L/∂input.
        let input = if tracked && (lowest != Some(i) || tokens) {
            x.inner().autodiff().require_grad()
        } else if tracked {
            x.inner().autodiff()
        } else {
            x
        };
        let y = layer.forward(input.clone(), &cos, &sin, &mask, &layout, None);
        x = if tracked { y.clone().inner().autodiff() } else { y.clone() };
        inputs.push(lowest.is_some_and(|lo| i >= lo).then_some(input));
        if tracked {
            outputs.push(Some(y));
        } else {
            outputs.push(None);
        }
    }
    let hidden = x;
    // 2) The head and the loss, chunk by chunk.
    let head_leaves = track_adapters(model, |l| l.is_none());
    let head = head(model, hidden.clone(), &mut |g| collect(&head_leaves, g, acc))?;
    let Some(mut grad) = head.grad else { return Ok(head.sum) };
    // 3) The body's backward, layer by layer from the last.
    if let Some(lowest) = lowest {
        for i in (lowest..n_layers).rev() {
            let saved = inputs[i].take().expect("inputs are kept from the lowest adapted layer up");
            let (input, y, leaves) = match outputs[i].take() {
                Some(y) => (saved, y, None),
                None => {
                    // Recompute the layer, tracked, from its saved input.
                    let leaves = track_adapters(model, |l| l == Some(i));
                    let input = if i == lowest && !tokens { saved } else { saved.require_grad() };
                    let y = model.model.layers[i].forward(input.clone(), &cos, &sin, &mask, &layout, None);
                    (input, y, Some(leaves))
                }
            };
            let g = (y * grad).sum().backward();
            collect(leaves.as_deref().unwrap_or(&body_leaves), &g, acc);
            if i == lowest {
                if tokens {
                    embed_tokens_grad(model, &batch.ids, input.grad(&g).expect("a leaf of its graph"), acc);
                }
                break;
            }
            grad = input.grad(&g).expect("the layer input is a leaf of its graph");
            if leaves.is_some() {
                constant_adapters(model);
            }
        }
    }
    untrack_adapters(model);
    Ok(head.sum)
}

/// Adds the embedding's part of the token rows' gradient (each row's positions' ∂L/∂input of the
/// first layer) to theirs: the last of `acc`, or the one before an untied head's rows.
fn embed_tokens_grad(model: &CausalLm, ids: &[Vec<u32>], grad: Tensor<3>, acc: &mut Acc<'_>) {
    let t = model.model.embed_tokens.tokens.as_ref().expect("checked by the caller");
    let g = t.embed_grad(grad.inner(), ids);
    let slot = acc.len() - 1 - usize::from(model.head_tokens.is_some());
    acc.add(slot, g);
}

/// One optimizer step over `batches` (the micro-batches of the step, collated): forward and
/// backward of each, gradients accumulated with the loss divided by the whole step's target-token
/// count (so the result is the gradient of the mean over every target token, not a mean of
/// per-batch means), global-norm clipping, then AdamW.
pub fn train_step(
    model: &mut CausalLm,
    opt: &mut AdamW,
    batches: &[(TokenBatch, Vec<Vec<Option<u32>>>)],
    step_tokens: usize,
    lr: f64,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
) -> Result<StepOutcome> {
    let mut acc: Vec<Option<Tensor<2>>> = vec![None; adapter_layers(model).len()];
    let all = 0..batches.len();
    let losses =
        sft_micro_batches(model, batches, all, step_tokens, options, dropout_seed_of, &mut Acc::Sum(&mut acc))?;
    let loss = losses.iter().fold(0.0, |sum, l| sum + l) / step_tokens.max(1) as f64;
    let grad_norm = apply_gradients(model, opt, acc, loss, lr, options)?;
    Ok(StepOutcome { loss, grad_norm })
}

/// The forward and backward passes of the micro-batches `which` of an SFT step over `batches` (the
/// whole step, whose target-token count `step_tokens` scales every loss), their gradients into
/// `acc`; each micro-batch's summed loss, in order. One process runs them all; a data-parallel rank
/// its block.
pub(crate) fn sft_micro_batches(
    model: &mut CausalLm,
    batches: &[(TokenBatch, Vec<Vec<Option<u32>>>)],
    which: std::ops::Range<usize>,
    step_tokens: usize,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
    acc: &mut Acc<'_>,
) -> Result<Vec<f64>> {
    let scale = 1.0 / step_tokens.max(1) as f64;
    let mut losses = Vec::with_capacity(which.len());
    for i in which {
        set_dropout_seeds(model, dropout_seed_of(i));
        let (batch, labels) = &batches[i];
        losses.push(micro_batch(model, batch, labels, scale, options.gradient_checkpointing, acc)?);
    }
    Ok(losses)
}

/// The end of a step: the accumulated gradients clipped by global norm and handed to AdamW (skipped
/// when `loss` is not finite, so that the caller can stop). Returns the norm before clipping.
pub(crate) fn apply_gradients(
    model: &mut CausalLm,
    opt: &mut AdamW,
    acc: Vec<Option<Tensor<2>>>,
    loss: f64,
    lr: f64,
    options: StepOptions,
) -> Result<f64> {
    let current: Vec<Tensor<2>> = adapter_tensors(model);
    let on_flex = current.first().is_some_and(use_fused);
    let mut grads: Vec<Tensor<2>> =
        acc.into_iter().zip(&current).map(|(g, p)| g.unwrap_or_else(|| p.zeros_like().inner())).collect();
    let sq: f64 = grads
        .iter()
        .map(|g| to_f32_vec(g.clone().square().sum()).map(|v| v[0] as f64))
        .sum::<lora_core::Result<f64>>()?;
    let grad_norm = sq.sqrt();
    if options.max_grad_norm > 0.0 {
        let coef = options.max_grad_norm / (grad_norm + 1e-6);
        if coef < 1.0 {
            grads = grads.into_iter().map(|g| g * coef).collect();
        }
    }
    if loss.is_finite() {
        // On burn-flex the optimizer gets the only reference to each value and writes the new values
        // into the old buffers: the end of a step allocates nothing (the composed update, with new
        // values beside the old, was the peak of a 27B step). The GPU backends get shared references,
        // as before: handed the only ones, a wgpu run (lavapipe) trained an adapter 1e-3 away from
        // the CPU's instead of 2e-7, although the update alone agrees either way; the interaction
        // with the step's lazily run graph was not tracked down.
        let params = if on_flex {
            drop(current);
            take_adapter_tensors(model)
        } else {
            current
        };
        let new = opt.update(params, grads, lr);
        set_adapter_tensors(model, new);
        untrack_adapters(model);
    }
    Ok(grad_norm)
}
