//! One optimizer step of one rank of a data-parallel run: the same step plan on every rank, each
//! taking its block of the step's micro-batches ([`super::plan`]) with their global dropout seeds and
//! the step's global token count, the gradients reduced ([`super::reduce`]), then the clipping and
//! AdamW every rank applies alike (so that the adapters stay replicated).

use lora_core::CausalLm;
use lora_core::TokenBatch;
use lora_core::burn::tensor::{Tensor, TensorData};
use lora_core::kernels::host::to_f32_vec;

use super::comm::Communicator;
use super::plan::block;
use super::reduce::{Contributions, exact, exact_sum_f64, fast};
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::step::{Acc, StepOptions, StepOutcome, apply_gradients, micro_batch};
use crate::trainable::{adapter_layers, adapter_tensors, set_dropout_seeds};

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
    let n = adapter_layers(model).len();
    let scale = 1.0 / step_tokens.max(1) as f64;
    let mut recorded: Vec<Vec<Tensor<2>>> = vec![Vec::new(); n];
    let mut losses = Vec::new();
    for i in block(batches.len(), comm.world(), comm.rank()) {
        set_dropout_seeds(model, dropout_seed_of(i));
        let (batch, labels) = &batches[i];
        let mut acc = Acc::Record(&mut recorded);
        losses.push(micro_batch(model, batch, labels, scale, options.gradient_checkpointing, &mut acc)?);
    }
    let acc = reduce_recorded(model, recorded, comm, reduce)?;
    let loss = exact_sum_f64(comm, &losses)? / step_tokens.max(1) as f64;
    let grad_norm = apply_gradients(model, opt, acc, loss, lr, options)?;
    Ok(StepOutcome { loss, grad_norm })
}

/// This rank's recorded gradient contributions (per adapter tensor, in the order one process would
/// add them) reduced over the ranks: the step's gradients, the same on every rank.
pub(crate) fn reduce_recorded<C: Communicator + ?Sized>(
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
