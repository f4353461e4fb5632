//! A data-parallel rank's step of the preference methods (DPO and its variants, SimPO, ORPO; KTO),
//! and its share of the reference's log-probabilities computed before training. As for SFT, every
//! rank has the whole step and runs its block of micro-batches; the losses' means are over the whole
//! step (its pairs, or its micro-batches for KTO, each with its own KL estimate), which every rank
//! knows, so each micro-batch's gradient is what one process computes for it. The gradients are
//! reduced as SFT's; what the metrics and the loss every rank checks need (the pairs' or examples'
//! log-probabilities, KTO's KL estimates, the SFT term's sums) is gathered in rank order, bit for bit.

use lora_core::CausalLm;

use super::comm::Communicator;
use super::plan::{block, block_sums};
use super::reduce::{exact_sum_f64, gather_f64};
use super::step::{Reduce, on_block};
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::preference::kto::Kto;
use crate::preference::kto::loss::{KtoMetrics, MicroBatchKto, UnpairedLogProbs};
use crate::preference::kto::step::{KtoStepOutcome, UnpairedBatch, kto_micro_batches};
use crate::preference::loss::{Dpo, PairLogProbs, PreferenceMetrics};
use crate::preference::step::{DpoStepOutcome, PairBatch, ReferenceLogProbs, dpo_micro_batches, nll_tokens};
use crate::step::{StepOptions, StepOutcome, apply_gradients};

/// Values a pair carries between ranks.
const PAIR_VALUES: usize = 6;

/// [`crate::preference::step::dpo_step`] on rank `comm.rank()`: every rank calls it with the whole
/// step (`batches`, in global order) and ends with the same adapter and metrics.
#[allow(clippy::too_many_arguments)]
pub fn dpo_step_on_rank<C: Communicator + ?Sized>(
    model: &mut CausalLm,
    opt: &mut AdamW,
    batches: &[PairBatch],
    reference: ReferenceLogProbs<'_>,
    dpo: &Dpo,
    lr: f64,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
    comm: &mut C,
    reduce: Reduce,
) -> Result<DpoStepOutcome> {
    let world = comm.world();
    let (part, acc) = on_block(model, batches.len(), comm, reduce, |model, which, acc| {
        dpo_micro_batches(model, batches, which, reference, dpo, options, dropout_seed_of, acc)
    })?;
    let nll = exact_sum_f64(comm, &part.nll)?;
    let counts = block_sums(batches.len(), world, |i| PAIR_VALUES * batches[i].pairs());
    let own: Vec<f64> = part
        .pairs
        .iter()
        .flat_map(|p| {
            [p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, p.chosen_tokens as f64, p.rejected_tokens as f64]
        })
        .collect();
    let pairs: Vec<PairLogProbs> = gather_f64(comm, &own, &counts)?
        .chunks_exact(PAIR_VALUES)
        .map(|v| PairLogProbs {
            chosen: v[0],
            rejected: v[1],
            ref_chosen: v[2],
            ref_rejected: v[3],
            chosen_tokens: v[4] as usize,
            rejected_tokens: v[5] as usize,
        })
        .collect();
    let metrics = PreferenceMetrics::of(dpo, &pairs, nll / nll_tokens(batches).max(1) as f64);
    let grad_norm = apply_gradients(model, opt, acc, metrics.loss, lr, options)?;
    Ok(DpoStepOutcome { step: StepOutcome { loss: metrics.loss, grad_norm }, metrics })
}

/// [`crate::preference::kto::kto_step`] on rank `comm.rank()`: every rank calls it with the whole
/// step and ends with the same adapter and metrics.
#[allow(clippy::too_many_arguments)]
pub fn kto_step_on_rank<C: Communicator + ?Sized>(
    model: &mut CausalLm,
    opt: &mut AdamW,
    batches: &[UnpairedBatch],
    reference: ReferenceLogProbs<'_>,
    kto: &Kto,
    lr: f64,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
    comm: &mut C,
    reduce: Reduce,
) -> Result<KtoStepOutcome> {
    let world = comm.world();
    let (done, acc) = on_block(model, batches.len(), comm, reduce, |model, which, acc| {
        kto_micro_batches(model, batches, which, reference, kto, options, dropout_seed_of, acc)
    })?;
    // A micro-batch travels as its KL estimate, then (policy, reference, desirable) per example.
    let counts = block_sums(batches.len(), world, |i| 1 + 3 * batches[i].len());
    let own: Vec<f64> = done
        .iter()
        .flat_map(|m| {
            std::iter::once(m.kl)
                .chain(m.examples.iter().flat_map(|e| [e.policy, e.reference, f64::from(u8::from(e.desirable))]))
        })
        .collect();
    let values = gather_f64(comm, &own, &counts)?;
    let mut all = Vec::with_capacity(batches.len());
    let mut at = 0;
    for batch in batches {
        let kl = values[at];
        let examples = values[at + 1..at + 1 + 3 * batch.len()]
            .chunks_exact(3)
            .map(|v| UnpairedLogProbs { policy: v[0], reference: v[1], desirable: v[2] != 0.0 })
            .collect();
        at += 1 + 3 * batch.len();
        all.push(MicroBatchKto { examples, kl });
    }
    let metrics = KtoMetrics::of(kto, &all);
    let grad_norm = apply_gradients(model, opt, acc, metrics.loss, lr, options)?;
    Ok(KtoStepOutcome { step: StepOutcome { loss: metrics.loss, grad_norm }, metrics })
}

/// The values of `chunks` of work (each giving `values_per_chunk(chunk)` values), in chunk order: on
/// one process (`comm` none) it computes them all; a data-parallel rank computes its block of the
/// chunks and gathers the others', so that every rank has them all.
pub(crate) fn chunk_values(
    comm: Option<&mut dyn Communicator>,
    chunks: usize,
    values_per_chunk: impl Fn(usize) -> usize,
    mut compute: impl FnMut(usize) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    let Some(comm) = comm else {
        return Ok((0..chunks).map(compute).collect::<Result<Vec<_>>>()?.concat());
    };
    let (rank, world) = (comm.rank(), comm.world());
    let mut own = Vec::new();
    for c in block(chunks, world, rank) {
        own.extend(compute(c)?);
    }
    let counts = block_sums(chunks, world, values_per_chunk);
    Ok(gather_f64(comm, &own, &counts)?)
}
