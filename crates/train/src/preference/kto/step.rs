//! One KTO optimizer step over micro-batches of unpaired examples, as TRL 1.x's `KTOTrainer` takes
//! it.
//!
//! Per micro-batch: the mismatched rows (each prompt with another example's completion, fixed when
//! the data was read) go through the policy and the reference untracked, giving the KL estimate;
//! the examples' rows go through the reference untracked (or their log-probabilities were computed
//! before training), then through the policy: the head first for the values only, giving each
//! example's summed completion log-probability π, then again back-propagating the next-token loss
//! weighted by ∂loss/∂π, as DPO's step does ([`crate::preference::step`]).

use lora_core::burn::tensor::Tensor;
use lora_core::loss::chunked::{head_log_probs, head_loss_weighted, labelled_rows};
use lora_core::{CausalLm, TokenBatch};

use crate::batching::collate;
use crate::data::Example;
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::preference::kto::loss::{Kto, KtoMetrics, MicroBatchKto, UnpairedLogProbs};
use crate::preference::step::{Reference, ReferenceLogProbs, completion_example, with_reference};
use crate::step::{Acc, StepOptions, StepOutcome, apply_gradients, micro_batch_with};
use crate::trainable::{adapter_layers, set_dropout_seeds};

/// An unpaired example as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedIds {
    /// The prompt's tokens (no label).
    pub prompt: Vec<u32>,
    /// The completion's tokens.
    pub completion: Vec<u32>,
    /// Another example's completion, which follows this prompt in the KL estimate's mismatched
    /// row (TRL's `KL_completion_ids`); empty when the loss has no KL term.
    pub kl_completion: Vec<u32>,
    /// Desirable (TRL's `label = True`) or undesirable.
    pub desirable: bool,
}

impl UnpairedIds {
    /// The prompt followed by its completion, labelled on the completion.
    pub fn example(&self) -> Example {
        completion_example(&self.prompt, &self.completion, false)
    }

    /// The prompt followed by the mismatched completion (the KL estimate's row).
    pub fn kl_example(&self) -> Example {
        completion_example(&self.prompt, &self.kl_completion, false)
    }
}

/// Rows of prompt + completion, padded on the right and labelled on the completions.
#[derive(Debug, Clone)]
pub struct Rows {
    /// The rows.
    pub batch: TokenBatch,
    /// Labels aligned with the ids: the completion tokens.
    pub labels: Vec<Vec<Option<u32>>>,
}

impl Rows {
    /// The rows of `(prompt, completion)` sequences.
    pub fn new<'a>(seqs: impl Iterator<Item = (&'a [u32], &'a [u32])>, pad_id: u32) -> Self {
        let examples: Vec<Example> = seqs.map(|(p, c)| completion_example(p, c, false)).collect();
        let (batch, labels) = collate(&examples.iter().collect::<Vec<_>>(), pad_id, false);
        Self { batch, labels }
    }

    /// The row of each labelled position, in [`labelled_rows`]' order.
    fn position_rows(&self) -> Vec<usize> {
        let seq = self.batch.ids.first().map_or(0, Vec::len);
        labelled_rows(&self.labels, seq).0.iter().map(|&r| r as usize / seq).collect()
    }

    /// Each row's sum of per-position values given in [`labelled_rows`]' order.
    fn sums(&self, values: &[f32]) -> Vec<f64> {
        let mut sums = vec![0.0f64; self.labels.len()];
        for (r, &v) in self.position_rows().into_iter().zip(values) {
            sums[r] += v as f64;
        }
        sums
    }

    /// Each row's summed completion log-probability under the model as it is, untracked.
    pub fn log_probs(&self, model: &mut CausalLm) -> Result<Vec<f64>> {
        let hidden = model.last_hidden(&self.batch)?;
        Ok(self.sums(&head_log_probs(model, hidden, &self.labels)?))
    }
}

/// One micro-batch of N unpaired examples: their rows, and (for a loss with a KL term) the N
/// mismatched rows.
#[derive(Debug, Clone)]
pub struct UnpairedBatch {
    /// Prompt + completion of each example.
    pub rows: Rows,
    /// Prompt + mismatched completion of each example, when the loss has a KL term.
    pub kl_rows: Option<Rows>,
    /// Each example's label.
    pub desirable: Vec<bool>,
}

impl UnpairedBatch {
    /// The micro-batch of `examples` as `kto`'s loss reads it.
    pub fn new(examples: &[UnpairedIds], pad_id: u32, kto: &Kto) -> Self {
        let rows = Rows::new(examples.iter().map(|e| (&e.prompt[..], &e.completion[..])), pad_id);
        let kl_rows = kto
            .loss
            .needs_kl()
            .then(|| Rows::new(examples.iter().map(|e| (&e.prompt[..], &e.kl_completion[..])), pad_id));
        Self { rows, kl_rows, desirable: examples.iter().map(|e| e.desirable).collect() }
    }

    /// Examples in the micro-batch.
    pub fn len(&self) -> usize {
        self.desirable.len()
    }

    /// Whether the micro-batch has no example.
    pub fn is_empty(&self) -> bool {
        self.desirable.is_empty()
    }
}

/// The reference's summed log-probabilities of a micro-batch: its examples' rows, then its
/// mismatched rows (none without a KL term), untracked.
pub fn unpaired_reference_log_probs(
    model: &mut CausalLm,
    reference: &Reference,
    batch: &UnpairedBatch,
) -> Result<Vec<f64>> {
    with_reference(model, reference, |model| {
        let mut values = batch.rows.log_probs(model)?;
        if let Some(kl) = &batch.kl_rows {
            values.extend(kl.log_probs(model)?);
        }
        Ok(values)
    })
}

/// The micro-batch's KL estimate: its mismatched rows under the policy (untracked) against the
/// reference's values, `reference[n..]`.
fn kl_estimate(model: &mut CausalLm, kto: &Kto, batch: &UnpairedBatch, reference: &[f64]) -> Result<f64> {
    match &batch.kl_rows {
        None => Ok(0.0),
        Some(rows) => Ok(kto.kl(&rows.log_probs(model)?, &reference[batch.len()..])),
    }
}

fn examples_of(batch: &UnpairedBatch, policy: &[f64], reference: &[f64]) -> Vec<UnpairedLogProbs> {
    (0..batch.len())
        .map(|i| UnpairedLogProbs { policy: policy[i], reference: reference[i], desirable: batch.desirable[i] })
        .collect()
}

/// What a KTO step gives: the optimizer step's outcome (its `loss` the mean of the micro-batches'
/// mean losses) and TRL's metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoStepOutcome {
    /// Loss and gradient norm.
    pub step: StepOutcome,
    /// The step's metrics.
    pub metrics: KtoMetrics,
}

/// One optimizer step of KTO over `batches` (the step's micro-batches). The reference's
/// log-probabilities are each micro-batch's precomputed ones (as [`unpaired_reference_log_probs`]
/// gives them) or computed here; `ReferenceLogProbs::Unused` is not a KTO reference.
#[allow(clippy::too_many_arguments)]
pub fn kto_step(
    model: &mut CausalLm,
    opt: &mut AdamW,
    batches: &[UnpairedBatch],
    reference: ReferenceLogProbs<'_>,
    kto: &Kto,
    lr: f64,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
) -> Result<KtoStepOutcome> {
    let mut acc: Vec<Option<Tensor<2>>> = vec![None; adapter_layers(model).len()];
    let all = 0..batches.len();
    let done =
        kto_micro_batches(model, batches, all, reference, kto, options, dropout_seed_of, &mut Acc::Sum(&mut acc))?;
    let metrics = KtoMetrics::of(kto, &done);
    let grad_norm = apply_gradients(model, opt, acc, metrics.loss, lr, options)?;
    Ok(KtoStepOutcome { step: StepOutcome { loss: metrics.loss, grad_norm }, metrics })
}

/// The forward and backward passes of the micro-batches `which` of a KTO step over `batches` (the
/// whole step: the loss is the mean of all its micro-batches' means), their gradients into `acc`;
/// each micro-batch's examples and KL estimate, in order. One process runs them all; a
/// data-parallel rank its block (each micro-batch has its own KL estimate, so the blocks are
/// independent).
#[allow(clippy::too_many_arguments)]
pub(crate) fn kto_micro_batches(
    model: &mut CausalLm,
    batches: &[UnpairedBatch],
    which: std::ops::Range<usize>,
    reference: ReferenceLogProbs<'_>,
    kto: &Kto,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
    acc: &mut Acc<'_>,
) -> Result<Vec<MicroBatchKto>> {
    let micro = batches.len().max(1) as f64;
    let mut done = Vec::with_capacity(which.len());
    for i in which {
        let batch = &batches[i];
        let reference = match reference {
            ReferenceLogProbs::Precomputed(r) => r[i].clone(),
            ReferenceLogProbs::Compute(r) => unpaired_reference_log_probs(model, r, batch)?,
            ReferenceLogProbs::Unused => unreachable!("KTO always has a reference"),
        };
        set_dropout_seeds(model, dropout_seed_of(i));
        let kl = kl_estimate(model, kto, batch, &reference)?;
        let mut examples = Vec::new();
        micro_batch_with(model, &batch.rows.batch, options.gradient_checkpointing, acc, |model, hidden, on_grads| {
            let policy = batch.rows.sums(&head_log_probs(model, hidden.clone(), &batch.rows.labels)?);
            examples = examples_of(batch, &policy, &reference);
            // A position weighs −∂loss/∂(its log p): its example's ∂loss/∂π, for the step's mean of
            // micro-batch means.
            let scale = 1.0 / (batch.len().max(1) as f64 * micro);
            let d: Vec<f64> = examples.iter().map(|e| kto.example(e, kl).1 * scale).collect();
            let weights: Vec<f32> = batch.rows.position_rows().into_iter().map(|r| -d[r] as f32).collect();
            Ok(head_loss_weighted(model, hidden, &batch.rows.labels, &weights, 1.0, on_grads)?)
        })?;
        done.push(MicroBatchKto { examples, kl });
    }
    Ok(done)
}

/// The loss and metrics of held-out examples, in micro-batches of `batch_size` (each with its own
/// KL estimate, as TRL evaluates), without training.
pub fn evaluate_unpaired(
    model: &mut CausalLm,
    reference: &Reference,
    examples: &[UnpairedIds],
    batch_size: usize,
    pad_id: u32,
    kto: &Kto,
) -> Result<KtoMetrics> {
    let mut done = Vec::new();
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = UnpairedBatch::new(chunk, pad_id, kto);
        let reference = unpaired_reference_log_probs(model, reference, &batch)?;
        let kl = kl_estimate(model, kto, &batch, &reference)?;
        let policy = batch.rows.log_probs(model)?;
        done.push(MicroBatchKto { examples: examples_of(&batch, &policy, &reference), kl });
    }
    Ok(KtoMetrics::of(kto, &done))
}
