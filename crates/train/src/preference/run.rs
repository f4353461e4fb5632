//! What `lora train` does differently with a preference method: the step's micro-batches of pairs
//! (DPO, SimPO, ORPO) or of unpaired examples (KTO), the reference's log-probabilities (precomputed
//! once, or in every step), and evaluation.

use lora_core::CausalLm;

use crate::batching::micro_batch_indices;
use crate::distributed::Communicator;
use crate::distributed::preference::{chunk_values, dpo_step_on_rank, kto_step_on_rank};
use crate::distributed::step::Reduce;
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::preference::data::PreferenceExamples;
use crate::preference::kto::{
    Kto, UnpairedBatch, UnpairedIds, evaluate_unpaired, kto_step, unpaired_reference_log_probs,
};
use crate::preference::loss::{Dpo, PreferenceMetrics};
use crate::preference::step::{
    PairBatch, PairIds, Reference, ReferenceLogProbs, dpo_step, evaluate_pairs, reference_log_probs,
};
use crate::recipe::Recipe;
use crate::step::{StepOptions, StepOutcome};

/// The loss of a preference run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// DPO and its variants, SimPO, ORPO: on pairs.
    Pairs(Dpo),
    /// KTO: on unpaired examples.
    Unpaired(Kto),
}

impl Objective {
    fn needs_reference(&self) -> bool {
        match self {
            Self::Pairs(d) => d.loss.needs_reference(),
            Self::Unpaired(_) => true,
        }
    }
}

/// A preference run's fixed parts.
#[derive(Debug)]
pub struct PreferenceTraining {
    /// The loss.
    pub objective: Objective,
    /// The reference: the base without adapters, or with a fixed adapter.
    pub reference: Reference,
    /// The reference's log-probabilities of each training example, when computed before training:
    /// a pair's (chosen, rejected); an unpaired example's (completion, mismatched completion).
    pub precomputed: Option<Vec<(f64, f64)>>,
    /// Padding id of the batches.
    pub pad_id: u32,
}

fn pairs_of(examples: &PreferenceExamples) -> &[PairIds] {
    match examples {
        PreferenceExamples::Pairs(p) => p,
        PreferenceExamples::Unpaired(_) => &[],
    }
}

fn unpaired_of(examples: &PreferenceExamples) -> &[UnpairedIds] {
    match examples {
        PreferenceExamples::Unpaired(u) => u,
        PreferenceExamples::Pairs(_) => &[],
    }
}

impl PreferenceTraining {
    /// The method's settings from the recipe; with `precompute_reference`, the reference's
    /// log-probabilities of every training example, `batch_size` at a time (a data-parallel rank,
    /// given its communicator, computes its share of a pair method's and gets the others').
    pub fn new(
        recipe: &Recipe,
        model: &mut CausalLm,
        examples: &PreferenceExamples,
        pad_id: u32,
        comm: Option<&mut dyn Communicator>,
    ) -> Result<Self> {
        let objective =
            if recipe.is_kto() { Objective::Unpaired(recipe.kto()) } else { Objective::Pairs(recipe.dpo()) };
        // The recipe's reference adapter, else the adapter the policy started from (read again from
        // its folder: on a resume the model holds the checkpoint's values), else the base.
        let chosen = recipe.preference.as_ref().and_then(|p| p.reference_adapter.as_ref());
        let reference = match chosen.or(recipe.lora.init_from.as_ref()) {
            _ if !objective.needs_reference() => Reference::Base, // reference-free: never read
            Some(dir) => Reference::from_adapter(model, dir)?,
            None => Reference::Base,
        };
        let precompute =
            objective.needs_reference() && recipe.preference.as_ref().is_none_or(|p| p.precompute_reference);
        let bs = recipe.train.batch_size.max(1);
        let precomputed = match (precompute, objective) {
            (false, _) => None,
            (true, Objective::Pairs(_)) => {
                let chunks: Vec<&[PairIds]> = pairs_of(examples).chunks(bs).collect();
                // A chunk's (chosen, rejected) values, pair by pair.
                let compute = |c: usize| -> Result<Vec<f64>> {
                    let values = reference_log_probs(model, &reference, &PairBatch::new(chunks[c], pad_id))?;
                    let n = chunks[c].len();
                    Ok((0..n).flat_map(|i| [values[i], values[n + i]]).collect())
                };
                let flat = chunk_values(comm, chunks.len(), |c| 2 * chunks[c].len(), compute)?;
                Some(flat.chunks_exact(2).map(|v| (v[0], v[1])).collect())
            }
            (true, Objective::Unpaired(kto)) => {
                let chunks: Vec<&[UnpairedIds]> = unpaired_of(examples).chunks(bs).collect();
                // A chunk's (completion, mismatched completion) values, example by example.
                let compute = |c: usize| -> Result<Vec<f64>> {
                    let batch = UnpairedBatch::new(chunks[c], pad_id, &kto);
                    let values = unpaired_reference_log_probs(model, &reference, &batch)?;
                    let n = chunks[c].len();
                    Ok((0..n).flat_map(|i| [values[i], values.get(n + i).copied().unwrap_or(0.0)]).collect())
                };
                let flat = chunk_values(comm, chunks.len(), |c| 2 * chunks[c].len(), compute)?;
                Some(flat.chunks_exact(2).map(|v| (v[0], v[1])).collect())
            }
        };
        Ok(Self { objective, reference, precomputed, pad_id })
    }

    /// The training examples of global micro-batch `index` (their indices into the examples).
    pub fn micro_batch(recipe: &Recipe, examples: usize, index: u64) -> Vec<usize> {
        micro_batch_indices(examples, recipe.train.batch_size, recipe.train.seed, index)
    }

    /// One optimizer step over the micro-batches `micros` (indices into `examples`); a data-parallel
    /// rank passes its communicator and reduction. Returns the outcome, the step's metrics and the
    /// tokens the step saw (padding excluded).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        model: &mut CausalLm,
        opt: &mut AdamW,
        examples: &PreferenceExamples,
        micros: &[Vec<usize>],
        lr: f64,
        options: StepOptions,
        dropout_seed_of: impl Fn(usize) -> u64,
        rank: Option<(&mut dyn Communicator, Reduce)>,
    ) -> Result<(StepOutcome, PreferenceMetrics, usize)> {
        // The precomputed values of each micro-batch: its first sequences', then its second ones'.
        let kl = matches!(self.objective, Objective::Unpaired(k) if k.loss.needs_kl());
        let refs: Option<Vec<Vec<f64>>> = self.precomputed.as_ref().map(|pre| {
            let second = matches!(self.objective, Objective::Pairs(_)) || kl;
            let of = |m: &Vec<usize>| {
                let firsts = m.iter().map(|&i| pre[i].0);
                let seconds = m.iter().filter(|_| second).map(|&i| pre[i].1);
                firsts.chain(seconds).collect()
            };
            micros.iter().map(of).collect()
        });
        let reference = match &refs {
            _ if !self.objective.needs_reference() => ReferenceLogProbs::Unused,
            Some(r) => ReferenceLogProbs::Precomputed(r),
            None => ReferenceLogProbs::Compute(&self.reference),
        };
        match self.objective {
            Objective::Pairs(dpo) => {
                let pairs = pairs_of(examples);
                let batches: Vec<PairBatch> = micros
                    .iter()
                    .map(|m| {
                        PairBatch::for_loss(&m.iter().map(|&i| pairs[i].clone()).collect::<Vec<_>>(), self.pad_id, &dpo)
                    })
                    .collect();
                let seen = micros
                    .iter()
                    .flatten()
                    .map(|&i| 2 * pairs[i].prompt.len() + pairs[i].chosen.len() + pairs[i].rejected.len())
                    .sum();
                let out = match rank {
                    None => dpo_step(model, opt, &batches, reference, &dpo, lr, options, dropout_seed_of)?,
                    Some((comm, reduce)) => {
                        let seeds = dropout_seed_of;
                        dpo_step_on_rank(model, opt, &batches, reference, &dpo, lr, options, seeds, comm, reduce)?
                    }
                };
                Ok((out.step, out.metrics, seen))
            }
            Objective::Unpaired(kto) => {
                let all = unpaired_of(examples);
                let batches: Vec<UnpairedBatch> = micros
                    .iter()
                    .map(|m| {
                        UnpairedBatch::new(&m.iter().map(|&i| all[i].clone()).collect::<Vec<_>>(), self.pad_id, &kto)
                    })
                    .collect();
                let seen = micros
                    .iter()
                    .flatten()
                    .map(|&i| {
                        let e = &all[i];
                        e.prompt.len()
                            + e.completion.len()
                            + if kl { e.prompt.len() + e.kl_completion.len() } else { 0 }
                    })
                    .sum();
                let out = match rank {
                    None => kto_step(model, opt, &batches, reference, &kto, lr, options, dropout_seed_of)?,
                    Some((comm, reduce)) => {
                        let seeds = dropout_seed_of;
                        kto_step_on_rank(model, opt, &batches, reference, &kto, lr, options, seeds, comm, reduce)?
                    }
                };
                Ok((out.step, out.metrics.into(), seen))
            }
        }
    }

    /// The loss and metrics of the validation examples.
    pub fn evaluate(
        &self,
        model: &mut CausalLm,
        examples: &PreferenceExamples,
        batch_size: usize,
    ) -> Result<PreferenceMetrics> {
        match self.objective {
            Objective::Pairs(dpo) => {
                evaluate_pairs(model, &self.reference, pairs_of(examples), batch_size, self.pad_id, &dpo)
            }
            Objective::Unpaired(kto) => {
                let m =
                    evaluate_unpaired(model, &self.reference, unpaired_of(examples), batch_size, self.pad_id, &kto)?;
                Ok(m.into())
            }
        }
    }
}
