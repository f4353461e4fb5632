//! What `lora train` does differently with `[train] method = "dpo"`: the step's micro-batches of
//! pairs, the reference's log-probabilities (precomputed once, or in every step), and evaluation.

use lora_core::CausalLm;

use crate::batching::micro_batch_indices;
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::preference::loss::{Dpo, PreferenceMetrics};
use crate::preference::step::{
    DpoStepOutcome, PairBatch, PairIds, Reference, ReferenceLogProbs, dpo_step, evaluate_pairs, reference_log_probs,
};
use crate::recipe::Recipe;
use crate::step::StepOptions;

/// A DPO run's fixed parts.
#[derive(Debug)]
pub struct PreferenceTraining {
    /// The loss.
    pub dpo: Dpo,
    /// The reference: the base without adapters, or with a fixed adapter.
    pub reference: Reference,
    /// The reference's (chosen, rejected) log-probabilities of each training pair, when computed
    /// before training.
    pub precomputed: Option<Vec<(f64, f64)>>,
    /// Padding id of the batches.
    pub pad_id: u32,
}

impl PreferenceTraining {
    /// DPO's settings from the recipe; with `precompute_reference`, the reference's
    /// log-probabilities of every training pair, `batch_size` pairs at a time.
    pub fn new(recipe: &Recipe, model: &mut CausalLm, pairs: &[PairIds], pad_id: u32) -> Result<Self> {
        // The recipe's reference adapter, else the adapter the policy started from (read again from
        // its folder: on a resume the model holds the checkpoint's values), else the base.
        let dpo = recipe.dpo();
        let chosen = recipe.preference.as_ref().and_then(|p| p.reference_adapter.as_ref());
        let reference = match chosen.or(recipe.lora.init_from.as_ref()) {
            _ if !dpo.loss.needs_reference() => Reference::Base, // reference-free: never read
            Some(dir) => Reference::from_adapter(model, dir)?,
            None => Reference::Base,
        };
        let precompute =
            dpo.loss.needs_reference() && recipe.preference.as_ref().is_none_or(|p| p.precompute_reference);
        let precomputed = if precompute {
            let mut all = Vec::with_capacity(pairs.len());
            for chunk in pairs.chunks(recipe.train.batch_size.max(1)) {
                let values = reference_log_probs(model, &reference, &PairBatch::new(chunk, pad_id))?;
                let n = chunk.len();
                all.extend((0..n).map(|i| (values[i], values[n + i])));
            }
            Some(all)
        } else {
            None
        };
        Ok(Self { dpo, reference, precomputed, pad_id })
    }

    /// The training pairs of global micro-batch `index` (their indices into `pairs`).
    pub fn micro_batch(recipe: &Recipe, pairs: usize, index: u64) -> Vec<usize> {
        micro_batch_indices(pairs, recipe.train.batch_size, recipe.train.seed, index)
    }

    /// One optimizer step over the micro-batches `micros` (indices into `pairs`). Returns the
    /// outcome and the tokens the step saw (padding excluded).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        model: &mut CausalLm,
        opt: &mut AdamW,
        pairs: &[PairIds],
        micros: &[Vec<usize>],
        lr: f64,
        options: StepOptions,
        dropout_seed_of: impl Fn(usize) -> u64,
    ) -> Result<(DpoStepOutcome, usize)> {
        let batches: Vec<PairBatch> = micros
            .iter()
            .map(|m| {
                PairBatch::for_loss(&m.iter().map(|&i| pairs[i].clone()).collect::<Vec<_>>(), self.pad_id, &self.dpo)
            })
            .collect();
        let seen = micros
            .iter()
            .flatten()
            .map(|&i| 2 * pairs[i].prompt.len() + pairs[i].chosen.len() + pairs[i].rejected.len())
            .sum();
        let refs: Option<Vec<Vec<f64>>> = self.precomputed.as_ref().map(|pre| {
            micros.iter().map(|m| m.iter().map(|&i| pre[i].0).chain(m.iter().map(|&i| pre[i].1)).collect()).collect()
        });
        let reference = match &refs {
            _ if !self.dpo.loss.needs_reference() => ReferenceLogProbs::Unused,
            Some(r) => ReferenceLogProbs::Precomputed(r),
            None => ReferenceLogProbs::Compute(&self.reference),
        };
        let out = dpo_step(model, opt, &batches, reference, &self.dpo, lr, options, dropout_seed_of)?;
        Ok((out, seen))
    }

    /// The loss and metrics of the validation pairs.
    pub fn evaluate(&self, model: &mut CausalLm, pairs: &[PairIds], batch_size: usize) -> Result<PreferenceMetrics> {
        evaluate_pairs(model, &self.reference, pairs, batch_size, self.pad_id, &self.dpo)
    }
}
