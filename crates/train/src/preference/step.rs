//! One DPO optimizer step over micro-batches of preference pairs.
//!
//! Per micro-batch, the pairs' chosen and rejected sequences go through the body as one batch (the
//! chosen rows first, as TRL concatenates them). The head then runs twice over the completion
//! tokens, a chunk at a time as for SFT: first for the values only, giving each sequence's summed
//! log-probability π; the pair losses then give every sequence its ∂loss/∂π, and the second head
//! pass back-propagates the next-token loss weighted by those derivatives, whose gradient is the
//! preference loss's (the loss depends on the weights only through the π). The body's backward is
//! SFT's. The reference's log-probabilities come from the same model with its adapters taken out
//! (TRL's `use_adapter(model, None)` with a PEFT model), or were computed before training.

use lora_core::burn::tensor::Tensor;
use lora_core::loss::chunked::{head_log_probs, head_loss_weighted, labelled_rows};
use lora_core::network::lora::LoraAdapter;
use lora_core::{CausalLm, TokenBatch};

use crate::batching::collate;
use crate::data::Example;
use crate::error::Result;
use crate::optimizer::AdamW;
use crate::preference::loss::{Dpo, DpoLoss, PairLogProbs, PreferenceMetrics};
use crate::step::{Acc, StepOptions, StepOutcome, apply_gradients, micro_batch_with};
use crate::trainable::{adapter_layers, set_dropout_seeds};

/// A preference pair as token ids: the prompt, and the two completions that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairIds {
    /// The prompt's tokens (no label).
    pub prompt: Vec<u32>,
    /// The chosen completion's tokens.
    pub chosen: Vec<u32>,
    /// The rejected completion's tokens.
    pub rejected: Vec<u32>,
}

impl PairIds {
    /// The two sequences of the pair, prompt + chosen and prompt + rejected, each labelled on its
    /// completion.
    pub fn examples(&self) -> (Example, Example) {
        (self.example(&self.chosen, false), self.example(&self.rejected, false))
    }

    fn example(&self, completion: &[u32], whole: bool) -> Example {
        completion_example(&self.prompt, completion, whole)
    }
}

/// `prompt` followed by `completion`, labelled on the completion (and, with `whole`, on the prompt
/// as well).
pub(crate) fn completion_example(prompt: &[u32], completion: &[u32], whole: bool) -> Example {
    let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let labels = match whole {
        true => ids.iter().map(|&t| Some(t)).collect(),
        false => std::iter::repeat_n(None, prompt.len()).chain(completion.iter().map(|&t| Some(t))).collect(),
    };
    Example { ids, labels, segments: None }
}

/// One micro-batch of N pairs: 2N rows, the chosen sequences then the rejected ones, padded on the
/// right and labelled on the completions.
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// The rows.
    pub batch: TokenBatch,
    /// Labels aligned with the ids: the completion tokens (ORPO: the chosen rows' prompts too).
    pub labels: Vec<Vec<Option<u32>>>,
    /// Where each row's completion starts (its prompt's length): labels before it count in the
    /// SFT term only, never in a completion's log-probability.
    pub starts: Vec<usize>,
}

impl PairBatch {
    /// The micro-batch of `pairs`, labelled on the completions.
    pub fn new(pairs: &[PairIds], pad_id: u32) -> Self {
        Self::build(pairs, pad_id, false)
    }

    /// The micro-batch of `pairs` as `dpo`'s loss reads it: ORPO's SFT term covers the chosen
    /// sequences whole, prompts included, so their prompts are labelled too.
    pub fn for_loss(pairs: &[PairIds], pad_id: u32, dpo: &Dpo) -> Self {
        Self::build(pairs, pad_id, dpo.loss == DpoLoss::Orpo)
    }

    fn build(pairs: &[PairIds], pad_id: u32, whole_chosen: bool) -> Self {
        let examples: Vec<Example> = pairs
            .iter()
            .map(|p| p.example(&p.chosen, whole_chosen))
            .chain(pairs.iter().map(|p| p.example(&p.rejected, false)))
            .collect();
        let (batch, labels) = collate(&examples.iter().collect::<Vec<_>>(), pad_id, false);
        let starts = pairs.iter().chain(pairs).map(|p| p.prompt.len()).collect();
        Self { batch, labels, starts }
    }

    /// Pairs in the batch.
    pub fn pairs(&self) -> usize {
        self.labels.len() / 2
    }

    /// Each row's completion length: its labelled positions (≥ 1) from its completion's start.
    fn tokens(&self) -> Vec<usize> {
        self.labels
            .iter()
            .zip(&self.starts)
            .map(|(l, &s)| l.iter().enumerate().skip(s.max(1)).filter(|(_, l)| l.is_some()).count())
            .collect()
    }

    /// The chosen rows' labelled positions (≥ 1): what the SFT term averages over.
    fn chosen_labelled(&self) -> usize {
        self.labels[..self.pairs()].iter().map(|l| l.iter().skip(1).filter(|l| l.is_some()).count()).sum()
    }

    /// Each labelled position (in [`labelled_rows`]' order): its row, and whether it is in the
    /// row's completion.
    fn positions(&self) -> Vec<(usize, bool)> {
        let seq = seq_len(self);
        let (rows, _) = labelled_rows(&self.labels, seq);
        // Logits at `pos` predict the label at `pos + 1`.
        rows.iter().map(|&r| (r as usize / seq, r as usize % seq + 1 >= self.starts[r as usize / seq])).collect()
    }
}

/// Each row's summed log p over its completion, and the chosen rows' summed −log p over every
/// labelled position (the SFT term's numerator), from per-position values in [`labelled_rows`]'
/// order.
fn per_row_sums(batch: &PairBatch, values: &[f32]) -> (Vec<f64>, f64) {
    let mut sums = vec![0.0f64; batch.labels.len()];
    let mut nll = 0.0f64;
    for ((row, completion), &v) in batch.positions().into_iter().zip(values) {
        if completion {
            sums[row] += v as f64;
        }
        if row < batch.pairs() {
            nll -= v as f64;
        }
    }
    (sums, nll)
}

fn seq_len(batch: &PairBatch) -> usize {
    batch.batch.ids.first().map_or(0, Vec::len)
}

/// The reference policy of DPO.
#[derive(Debug, Clone)]
pub enum Reference {
    /// The base model, every adapter taken out: TRL's reference for a new PEFT adapter.
    Base,
    /// The base with fixed adapters: those the policy started from (TRL's "ref" copy when it is
    /// given a PEFT model to go on training), or another run's (SFT, then DPO). One list per linear
    /// module, in [`CausalLm::linear_modules`]' order.
    Adapters(Vec<Vec<LoraAdapter>>),
}

impl Reference {
    /// The model's current adapters, copied (not shared with the policy, whose buffers the
    /// optimizer may then update in place), without dropout.
    pub fn snapshot(model: &CausalLm) -> Result<Self> {
        let copy = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &t.device());
        let lists = model
            .linear_modules()
            .into_iter()
            .map(|(_, l)| {
                l.lora
                    .iter()
                    .map(|a| {
                        let mut a = a.clone();
                        (a.lora_a, a.lora_b) = (copy(&a.lora_a), copy(&a.lora_b));
                        a.training = false;
                        a
                    })
                    .collect()
            })
            .collect();
        Ok(Self::Adapters(lists))
    }
}

impl Reference {
    /// The base with the PEFT adapter in `dir`: loaded onto `model` in place of its own adapters
    /// for a snapshot, which are then put back.
    pub fn from_adapter(model: &mut CausalLm, dir: &std::path::Path) -> Result<Self> {
        let own: Vec<Vec<LoraAdapter>> =
            model.linear_modules_mut().into_iter().map(|(_, l)| std::mem::take(&mut l.lora)).collect();
        let loaded = lora_core::adapter::load_adapter(model, dir, 1.0, false);
        let reference = loaded.map_err(Into::into).and_then(|_| Self::snapshot(model));
        for ((_, l), lora) in model.linear_modules_mut().into_iter().zip(own) {
            l.lora = lora;
        }
        reference
    }
}

/// `f` run on the model with its adapters swapped for the reference's (none for the base), which
/// are put back afterwards, whatever `f` returns.
pub(crate) fn with_reference<T>(
    model: &mut CausalLm,
    reference: &Reference,
    f: impl FnOnce(&mut CausalLm) -> Result<T>,
) -> Result<T> {
    let mut swapped: Vec<Vec<LoraAdapter>> = match reference {
        Reference::Base => vec![Vec::new(); model.linear_modules().len()],
        Reference::Adapters(lists) => lists.clone(),
    };
    let swap = |model: &mut CausalLm, lists: &mut Vec<Vec<LoraAdapter>>| {
        for ((_, l), lora) in model.linear_modules_mut().into_iter().zip(lists.iter_mut()) {
            std::mem::swap(&mut l.lora, lora);
        }
    };
    swap(model, &mut swapped);
    let result = f(model);
    swap(model, &mut swapped);
    result
}

/// The reference's summed log-probabilities of a micro-batch's rows (chosen rows, then rejected),
/// untracked: the model with its adapters swapped for the reference's for the pass.
pub fn reference_log_probs(model: &mut CausalLm, reference: &Reference, batch: &PairBatch) -> Result<Vec<f64>> {
    with_reference(model, reference, |model| sequence_log_probs(model, batch).map(|(sums, _)| sums))
}

/// The summed log-probabilities of a micro-batch's rows' completions under the model as it is,
/// untracked, and the chosen rows' summed −log p over every labelled position.
pub fn sequence_log_probs(model: &mut CausalLm, batch: &PairBatch) -> Result<(Vec<f64>, f64)> {
    let hidden = model.last_hidden(&batch.batch)?;
    let values = head_log_probs(model, hidden, &batch.labels)?;
    Ok(per_row_sums(batch, &values))
}

/// The loss and metrics of held-out pairs, in micro-batches of `batch_size`, without training.
pub fn evaluate_pairs(
    model: &mut CausalLm,
    reference: &Reference,
    pairs: &[PairIds],
    batch_size: usize,
    pad_id: u32,
    dpo: &Dpo,
) -> Result<PreferenceMetrics> {
    let mut all = Vec::with_capacity(pairs.len());
    let (mut nll, mut tokens) = (0.0, 0);
    for chunk in pairs.chunks(batch_size.max(1)) {
        let batch = PairBatch::for_loss(chunk, pad_id, dpo);
        let reference = match dpo.loss.needs_reference() {
            false => vec![0.0; batch.labels.len()],
            true => reference_log_probs(model, reference, &batch)?,
        };
        let (policy, batch_nll) = sequence_log_probs(model, &batch)?;
        all.extend(pairs_of(&batch, &policy, &reference));
        nll += batch_nll;
        tokens += batch.chosen_labelled();
    }
    Ok(PreferenceMetrics::of(dpo, &all, nll / tokens.max(1) as f64))
}

/// The pairs of a micro-batch from its rows' policy and reference log-probabilities.
fn pairs_of(batch: &PairBatch, policy: &[f64], reference: &[f64]) -> Vec<PairLogProbs> {
    let (n, tokens) = (batch.pairs(), batch.tokens());
    (0..n)
        .map(|i| PairLogProbs {
            chosen: policy[i],
            rejected: policy[n + i],
            ref_chosen: reference[i],
            ref_rejected: reference[n + i],
            chosen_tokens: tokens[i],
            rejected_tokens: tokens[n + i],
        })
        .collect()
}

/// Where a step's reference log-probabilities come from.
#[derive(Debug, Clone, Copy)]
pub enum ReferenceLogProbs<'a> {
    /// Computed before training, one list per micro-batch of the step.
    Precomputed(&'a [Vec<f64>]),
    /// Computed in the step, from this reference.
    Compute(&'a Reference),
    /// None: a reference-free loss (SimPO).
    Unused,
}

/// What a DPO step gives: the optimizer step's outcome (its `loss` the mean pair loss) and TRL's
/// metrics over the step's pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoStepOutcome {
    /// Loss and gradient norm.
    pub step: StepOutcome,
    /// The step's metrics.
    pub metrics: PreferenceMetrics,
}

/// One optimizer step of DPO over `batches` (the step's micro-batches): the loss is the mean over
/// all the step's pairs, so accumulation over micro-batches equals one batch of them all.
/// The reference's log-probabilities are each micro-batch's precomputed ones (as
/// [`reference_log_probs`] gives them) or computed here from `reference`.
#[allow(clippy::too_many_arguments)]
pub fn dpo_step(
    model: &mut CausalLm,
    opt: &mut AdamW,
    batches: &[PairBatch],
    reference: ReferenceLogProbs<'_>,
    dpo: &Dpo,
    lr: f64,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
) -> Result<DpoStepOutcome> {
    let mut acc: Vec<Option<Tensor<2>>> = vec![None; adapter_layers(model).len()];
    let all = 0..batches.len();
    let part =
        dpo_micro_batches(model, batches, all, reference, dpo, options, dropout_seed_of, &mut Acc::Sum(&mut acc))?;
    let nll = part.nll.iter().fold(0.0, |sum, x| sum + x);
    let metrics = PreferenceMetrics::of(dpo, &part.pairs, nll / nll_tokens(batches).max(1) as f64);
    let grad_norm = apply_gradients(model, opt, acc, metrics.loss, lr, options)?;
    Ok(DpoStepOutcome { step: StepOutcome { loss: metrics.loss, grad_norm }, metrics })
}

/// The chosen rows' labelled positions over the step (the SFT term's mean is over them).
pub(crate) fn nll_tokens(batches: &[PairBatch]) -> usize {
    batches.iter().map(PairBatch::chosen_labelled).sum()
}

/// What the forward and backward passes of some of a step's micro-batches give.
#[derive(Debug, Default)]
pub(crate) struct DpoPart {
    /// Their pairs' log-probabilities, in order.
    pub pairs: Vec<PairLogProbs>,
    /// Each micro-batch's summed −log p of its chosen rows.
    pub nll: Vec<f64>,
}

/// The forward and backward passes of the micro-batches `which` of a DPO step over `batches` (the
/// whole step: the loss's means are over all of its pairs and positions, whichever micro-batches
/// this call runs), their gradients into `acc`. One process runs them all; a data-parallel rank its
/// block.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dpo_micro_batches(
    model: &mut CausalLm,
    batches: &[PairBatch],
    which: std::ops::Range<usize>,
    reference: ReferenceLogProbs<'_>,
    dpo: &Dpo,
    options: StepOptions,
    dropout_seed_of: impl Fn(usize) -> u64,
    acc: &mut Acc<'_>,
) -> Result<DpoPart> {
    let total_pairs = batches.iter().map(PairBatch::pairs).sum::<usize>().max(1) as f64;
    // The SFT term: α times the chosen rows' mean −log p over the step's labelled positions; its
    // derivative by each such position's log p is −α over their count.
    let d_sft = -dpo.sft_weight / nll_tokens(batches).max(1) as f64;
    let mut part = DpoPart::default();
    for i in which {
        let batch = &batches[i];
        let reference = match reference {
            ReferenceLogProbs::Precomputed(r) => r[i].clone(),
            ReferenceLogProbs::Compute(r) => reference_log_probs(model, r, batch)?,
            ReferenceLogProbs::Unused => vec![0.0; batch.labels.len()],
        };
        set_dropout_seeds(model, dropout_seed_of(i));
        let mut pairs = Vec::new();
        let mut nll = 0.0;
        micro_batch_with(model, &batch.batch, options.gradient_checkpointing, acc, |model, hidden, on_grads| {
            let values = head_log_probs(model, hidden.clone(), &batch.labels)?;
            let (policy, batch_nll) = per_row_sums(batch, &values);
            nll = batch_nll;
            pairs = pairs_of(batch, &policy, &reference);
            // ∂loss/∂π per row, for the step's mean; a position weighs −∂loss/∂(its log p), since the
            // weighted pass sums w·(−log p): its completion's derivative, plus the SFT term's on
            // the chosen rows.
            let n = pairs.len();
            let mut d = vec![0.0f64; 2 * n];
            for (k, p) in pairs.iter().enumerate() {
                let l = dpo.pair(p);
                d[k] = l.d_chosen / total_pairs;
                d[n + k] = l.d_rejected / total_pairs;
            }
            let weights: Vec<f32> = batch
                .positions()
                .into_iter()
                .map(|(row, completion)| {
                    let pair = if completion { d[row] } else { 0.0 };
                    let sft = if row < n { d_sft } else { 0.0 };
                    -(pair + sft) as f32
                })
                .collect();
            Ok(head_loss_weighted(model, hidden, &batch.labels, &weights, 1.0, on_grads)?)
        })?;
        part.pairs.extend(pairs);
        part.nll.push(nll);
    }
    Ok(part)
}
