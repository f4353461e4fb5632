//! One optimizer step of a run, and one evaluation, whatever the method (SFT or a preference
//! objective) and wherever it runs (this process alone, or a rank of a data-parallel run): the
//! dispatch the training loop makes at every step, apart from the loop's bookkeeping.

use crate::batching::{collate, micro_batch};
use crate::data::Example;
use crate::distributed::DistributedRun;
use crate::distributed::step::train_step_on_rank;
use crate::error::Result;
use crate::evaluation::evaluate;
use crate::optimizer::AdamW;
use crate::pool::on_pool;
use crate::preference::{PreferenceMetrics, PreferenceTraining};
use crate::step::{StepOptions, StepOutcome, train_step};
use crate::trainer::Prepared;

/// Where a run's steps run.
pub(crate) struct Runner<'a> {
    /// The worker pool (none: on the calling thread).
    pub pool: Option<&'a rayon::ThreadPool>,
    /// Whether the pool's other workers poll for the step's parallel loops (the CPU backends).
    pub poll: bool,
    /// This process's rank in a data-parallel run.
    pub dist: Option<&'a DistributedRun>,
}

/// What one step did.
pub(crate) struct StepDone {
    /// Loss and gradient norm.
    pub outcome: StepOutcome,
    /// Tokens the step saw (padding excluded), for the throughput.
    pub seen_tokens: usize,
    /// A preference step's metrics.
    pub preference: Option<PreferenceMetrics>,
    /// Seconds a rank spent communicating.
    pub comm_s: Option<f64>,
}

/// A seed for the dropout masks of one micro-batch: a function of the step, so resumable.
pub(crate) fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ (micro as u64).wrapping_mul(0x94D0_49BB_1331_11EB)
}

impl Runner<'_> {
    /// Step `step` (0-based) at rate `lr`, over the `grad_accum` micro-batches that follow the
    /// `micro_done` already trained: SFT without `preference`, its objective with it.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        p: &mut Prepared,
        opt: &mut AdamW,
        preference: Option<&PreferenceTraining>,
        step: u64,
        micro_done: u64,
        lr: f64,
        options: StepOptions,
    ) -> Result<StepDone> {
        let t = &p.recipe.train;
        let seed = t.seed;
        let seeds = |i| dropout_seed(seed, step, i);
        let dist = self.dist;
        match preference {
            None => {
                let pad_id = p.tokenizer.pad_token_id.unwrap_or(0); // the tokenizer already falls back to EOS
                // 1) The micro-batches of this step and their target-token count.
                let micros: Vec<Vec<&Example>> = (0..t.grad_accum as u64)
                    .map(|i| micro_batch(&p.train, t.batch_size, seed, micro_done + i))
                    .collect();
                let step_tokens: usize = micros.iter().flatten().map(|e| e.trained_tokens()).sum();
                let seen_tokens: usize = micros.iter().flatten().map(|e| e.ids.len()).sum();
                // 2) Forward/backward each; the loss is divided by the whole step's token count, so
                //    the accumulated gradient is that of the mean over every target token of the step.
                let batches: Vec<_> = micros.iter().map(|m| collate(m, pad_id, p.tokenizer.padding_left)).collect();
                let model = &mut p.model;
                let (outcome, comm_s) = on_pool(self.pool, self.poll, || match dist {
                    None => train_step(model, opt, &batches, step_tokens, lr, options, seeds).map(|o| (o, None)),
                    Some(d) => {
                        let (r, comm_s) = d.timed(|comm| {
                            train_step_on_rank(model, opt, &batches, step_tokens, lr, options, seeds, comm, d.reduce)
                        });
                        r.map(|o| (o, Some(comm_s)))
                    }
                })?;
                Ok(StepDone { outcome, seen_tokens, preference: None, comm_s })
            }
            Some(pref) => {
                let micros: Vec<Vec<usize>> = (0..t.grad_accum as u64)
                    .map(|i| PreferenceTraining::micro_batch(&p.recipe, p.pairs.train.len(), micro_done + i))
                    .collect();
                let (model, examples) = (&mut p.model, &p.pairs.train);
                let ((outcome, metrics, seen_tokens), comm_s) = on_pool(self.pool, self.poll, || match dist {
                    None => pref.step(model, opt, examples, &micros, lr, options, seeds, None).map(|r| (r, None)),
                    Some(d) => {
                        let (r, comm_s) = d.timed(|comm| {
                            pref.step(model, opt, examples, &micros, lr, options, seeds, Some((comm, d.reduce)))
                        });
                        r.map(|r| (r, Some(comm_s)))
                    }
                })?;
                Ok(StepDone { outcome, seen_tokens, preference: Some(metrics), comm_s })
            }
        }
    }

    /// The validation loss: SFT's mean over the target tokens, or the objective's loss over the
    /// validation pairs; none without validation data.
    pub fn evaluate(&self, p: &mut Prepared, preference: Option<&PreferenceTraining>) -> Result<Option<f64>> {
        let batch_size = p.recipe.train.batch_size;
        match preference {
            None => {
                let pad_id = p.tokenizer.pad_token_id.unwrap_or(0);
                let left = p.tokenizer.padding_left;
                let (model, validation) = (&mut p.model, &p.validation);
                on_pool(self.pool, self.poll, || evaluate(model, validation, batch_size, pad_id, left))
            }
            Some(_) if p.pairs.validation.is_empty() => Ok(None),
            Some(pref) => {
                let (model, validation) = (&mut p.model, &p.pairs.validation);
                Ok(Some(on_pool(self.pool, self.poll, || pref.evaluate(model, validation, batch_size))?.loss))
            }
        }
    }
}
