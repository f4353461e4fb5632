//! One optimizer step of one rank of a data-parallel run: the same step plan on every rank, each
//! taking its block of the step's micro-batches ([`super::plan`]) with their global dropout seeds and
//! the step's global token count, the gradients reduced ([`super::reduce`]), then the clipping and
//! AdamW every rank applies alike (so that the adapters stay replicated).

use std::ops::Range;

use lora_core::CausalLm;
use lora_core::TokenBatch;
use lora_core::burn::tensor::{Tensor, TensorData};
use lora_core::kernels::host::to_f32_vec;

use super::comm::Communicator;
use super::plan::block;
use super::reduce::{Contributions, exact, exact_sum_f64, fast};
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::step::{Acc, StepOptions, StepOutcome, apply_gradients, sft_micro_batches};
use crate::trainable::{adapter_layers, adapter_tensors};

/// How the ranks' gradients are reduced (`[train] grad_reduce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// A chain in rank order: the adapter is the single-process one, byte for byte.
    Exact,
    /// One all-reduce: identical across ranks, within float tolerance of the single process.
    Fast,
}

/// [`crate::step::train_step`] on rank `comm.rank()`: every rank calls it with the whole step
/// (`batches`, in global order), takes its block, and ends with the same adapter.
#[allow(clippy::too_many_arguments)]
pub fn train_step_on_rank<C: Communicator + ?Sized>(
    model: &mut CausalLm,
    opt: &mut AdamW,
    batches: &[(TokenBatch, Vec<Vec<Option<u32>>>)],
    step_tokens: usize,
    lr: f64,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
    comm: &mut C,
    reduce: Reduce,
) -> Result<StepOutcome> {
    let (losses, acc) = on_block(model, batches.len(), comm, reduce, |model, which, acc| {
        sft_micro_batches(model, batches, which, step_tokens, options, dropout_seed_of, acc)
    })?;
    let loss = exact_sum_f64(comm, &losses)? / step_tokens.max(1) as f64;
    let grad_norm = apply_gradients(model, opt, acc, loss, lr, options)?;
    Ok(StepOutcome { loss, grad_norm })
}

/// Runs this rank's block of a step's `micro_batches` through `run` (given the block's range and an
/// accumulator that records each gradient contribution in the order one process would add it), then
/// reduces the contributions over the ranks: `run`'s result and the step's gradients, the same on
/// every rank.
pub(crate) fn on_block<C: Communicator + ?Sized, T>(
    model: &mut CausalLm,
    micro_batches: usize,
    comm: &mut C,
    reduce: Reduce,
    run: impl FnOnce(&mut CausalLm, Range<usize>, &mut Acc<'_>) -> Result<T>,
) -> Result<(T, Vec<Option<Tensor<2>>>)> {
    let mut recorded: Vec<Vec<Tensor<2>>> = vec![Vec::new(); adapter_layers(model).len()];
    let mine = block(micro_batches, comm.world(), comm.rank());
    let out = run(model, mine, &mut Acc::Record(&mut recorded))?;
    Ok((out, reduce_recorded(model, recorded, comm, reduce)?))
}

/// This rank's recorded gradient contributions (per adapter tensor, in the order one process would
/// add them) reduced over the ranks: the step's gradients, the same on every rank.
fn reduce_recorded<C: Communicator + ?Sized>(
    model: &CausalLm,
    recorded: Vec<Vec<Tensor<2>>>,
    comm: &mut C,
    reduce: Reduce,
) -> Result<Vec<Option<Tensor<2>>>> {
    let mut own = Contributions::new(recorded.len());
    for (slot, gs) in recorded.into_iter().enumerate() {
        for g in gs {
            own.push(slot, to_f32_vec(g)?);
        }
    }
    let params = adapter_tensors(model);
    let sizes: Vec<usize> = params.iter().map(|p| p.dims().iter().product()).collect();
    let sums = match reduce {
        Reduce::Exact => exact(comm, &own, &sizes)?,
        Reduce::Fast => fast(comm, &own, &sizes)?,
    };
    Ok(sums
        .into_iter()
        .zip(&params)
        .map(|(s, p)| s.map(|v| Tensor::<2>::from_data(TensorData::new(v, p.dims()), &p.device())))
        .collect())
}
