//! Training data: files of records in the shapes users bring (text, completion, alpaca, chat),
//! tokenized with exact loss masks, length policy, per-file weights, and optional packing.

pub mod chat_template;
pub mod format;
pub mod packing;
pub mod records;
pub mod turns;

use std::path::PathBuf;

use lora_core::Tokenizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{Result, TrainError};
use chat_template::ChatTemplate;
use format::{Format, Tokenize};
use records::read_records;
use turns::TurnMode;

/// One tokenized example (or one packed row of several).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// The label of each position (the token itself when trained on), aligned with `ids`.
    pub labels: Vec<Option<u32>>,
    /// Segment numbers when this is a packed row.
    pub segments: Option<Vec<u32>>,
}

impl Example {
    /// Positions that count in the loss (a label at position ≥ 1).
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|l| l.is_some()).count()
    }
}

/// Counts reported at the start of training.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSummary {
    /// Examples kept.
    pub examples: usize,
    /// Tokens in kept examples.
    pub tokens: usize,
    /// Tokens that count in the loss.
    pub trained_tokens: usize,
    /// Examples cut to max_seq_len.
    pub truncated: usize,
    /// Examples dropped for being longer than max_seq_len.
    pub dropped: usize,
    /// Invalid records skipped (`skip_invalid`).
    pub skipped: usize,
    /// Rows after packing (0 without packing).
    pub packed_rows: usize,
    /// Conversations whose template rewrites history, expanded into one example per assistant turn.
    pub expanded: usize,
    /// Assistant turns meant to be trained that ended with no trained token (rendered to none,
    /// or truncated away).
    pub untrained_turns: usize,
    /// One warning per file with untrained turns, naming the first (line, turn, why).
    pub untrained_warnings: Vec<String>,
}

impl DataSummary {
    /// These counts with the truncated / dropped / skipped counts of `policy`.
    pub fn with_policy(mut self, policy: &DataSummary) -> Self {
        self.truncated = policy.truncated;
        self.dropped = policy.dropped;
        self.skipped = policy.skipped;
        self.expanded = policy.expanded;
        self.untrained_turns = policy.untrained_turns;
        self.untrained_warnings = policy.untrained_warnings.clone();
        self
    }

    /// Counts of a list of examples.
    pub fn of(examples: &[Example]) -> Self {
        Self {
            examples: examples.len(),
            tokens: examples.iter().map(|e| e.ids.len()).sum(),
            trained_tokens: examples.iter().map(Example::trained_tokens).sum(),
            ..Self::default()
        }
    }
}

/// What to do with examples longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Keep the first `max_seq_len` tokens.
    Truncate,
    /// Leave the example out.
    Drop,
}

/// How to turn files into examples.
#[derive(Debug)]
pub struct DataOptions<'a> {
    /// `auto`, `text`, `completion`, `alpaca` or `chat`.
    pub format: &'a str,
    /// Longest sequence.
    pub max_seq_len: usize,
    /// Policy for longer examples.
    pub overflow: Overflow,
    /// Train on prompts too.
    pub train_on_inputs: bool,
    /// Skip (and count) invalid records instead of failing.
    pub skip_invalid: bool,
    /// Pack examples into rows of `max_seq_len`.
    pub packing: bool,
    /// The chat template.
    pub template: Option<&'a ChatTemplate>,
    /// How a conversation's assistant turns become examples.
    pub turns: TurnMode,
    /// A dataset's own name for assistant messages' reasoning, read as `reasoning_content`.
    pub reasoning_field: Option<&'a str>,
    /// Make an assistant turn left with no trained token an error instead of a warning.
    pub untrained_turns_are_errors: bool,
    /// Seed of fractional per-file weights.
    pub seed: u64,
}

/// Ids that end an assistant turn: the EOS ids plus the end-of-turn tokens of common templates.
pub fn end_of_turn_ids(tok: &Tokenizer) -> Vec<u32> {
    let mut ids = tok.eos_token_ids.clone();
    for t in ["<|eot_id|>", "<|im_end|>", "<|end|>", "</s>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>"] {
        if let Some(id) = tok.token_to_id(t)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

/// Reads, tokenizes and length-checks the examples of weighted files (weight 2 repeats every
/// example twice; 0.5 keeps a seeded half).
pub fn load_examples(
    files: &[(PathBuf, f64)],
    opts: &DataOptions<'_>,
    tok: &Tokenizer,
) -> Result<(Vec<Example>, DataSummary)> {
    let names = files.iter().map(|(f, _)| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let tokenize = Tokenize {
        tok,
        template: opts.template,
        train_on_inputs: opts.train_on_inputs,
        end_of_turn: end_of_turn_ids(tok),
        turns: opts.turns,
        reasoning_field: opts.reasoning_field,
    };
    let mut summary = DataSummary::default();
    let mut examples = Vec::new();
    let mut format = None;
    for (fi, (file, weight)) in files.iter().enumerate() {
        let records = read_records(file)?;
        if format.is_none()
            && let Some(first) = records.iter().find(|r| r.value.is_ok())
        {
            format = Some(
                Format::resolve(opts.format, first.value.as_ref().ok())
                    .map_err(|m| TrainError::Data(format!("{}:{}: {m}", first.file.display(), first.line)))?,
            );
        }
        let mut kept = Vec::new();
        // This file's untrained turns: how many, and the first (line, turn, why).
        let (mut untrained, mut first_untrained) = (0usize, None::<String>);
        for r in &records {
            let at = || format!("{}:{}", r.file.display(), r.line);
            let result = r
                .value
                .clone()
                .and_then(|v| tokenize.examples(&v, format.expect("set from the first valid record")))
                .and_then(|all| {
                    if all.iter().all(|t| t.example.trained_tokens() == 0) {
                        Err("renders to zero trainable tokens".to_string())
                    } else {
                        Ok(all)
                    }
                });
            let all = match result {
                Ok(all) => all,
                Err(_) if opts.skip_invalid => {
                    summary.skipped += 1;
                    continue;
                }
                Err(reason) => return Err(TrainError::Data(format!("{}: {reason}", at()))),
            };
            if all.first().is_some_and(|t| t.expanded) {
                summary.expanded += 1;
            }
            for t in all {
                let mut ex = t.example;
                let mut note = |message: usize, why: &str| {
                    untrained += 1;
                    first_untrained.get_or_insert_with(|| format!("line {}, message {message}: {why}", r.line));
                };
                for &(message, first) in &t.turns {
                    match first {
                        None => note(message, "the turn renders to no trainable token"),
                        Some(k) if k >= opts.max_seq_len && matches!(opts.overflow, Overflow::Truncate) => {
                            note(message, "truncated away at max_seq_len")
                        }
                        Some(_) => {}
                    }
                }
                if ex.trained_tokens() == 0 {
                    // An expanded turn with nothing to train (counted above).
                    continue;
                }
                if ex.ids.len() > opts.max_seq_len {
                    match opts.overflow {
                        Overflow::Drop => {
                            summary.dropped += 1;
                            continue;
                        }
                        Overflow::Truncate => {
                            ex.ids.truncate(opts.max_seq_len);
                            ex.labels.truncate(opts.max_seq_len);
                            summary.truncated += 1;
                            if ex.trained_tokens() == 0 {
                                // Truncation cut every trained token: nothing left to learn from it.
                                summary.dropped += 1;
                                continue;
                            }
                        }
                    }
                }
                kept.push(ex);
            }
        }
        if let Some(first) = first_untrained {
            let msg = format!(
                "{}: {untrained} assistant turn(s) have no trained token; the first at {first}",
                file.display()
            );
            if opts.untrained_turns_are_errors {
                return Err(TrainError::Data(format!("{msg} ([data] untrained_turns = \"error\")")));
            }
            summary.untrained_turns += untrained;
            summary.untrained_warnings.push(msg);
        }
        // Per-file weight: whole copies, then a seeded sample for the fraction.
        if !(*weight >= 0.0 && weight.is_finite()) {
            return Err(TrainError::Data(format!("{}: weight must be >= 0, got {weight}", file.display())));
        }
        let whole = weight.floor() as usize;
        let frac = weight - weight.floor();
        for _ in 0..whole {
            examples.extend(kept.iter().cloned());
        }
        if frac > 0.0 {
            let mut idx: Vec<usize> = (0..kept.len()).collect();
            idx.shuffle(&mut StdRng::seed_from_u64(opts.seed ^ (fi as u64 + 1).wrapping_mul(0x9E37_79B9)));
            let n = (kept.len() as f64 * frac).round() as usize;
            let mut pick: Vec<usize> = idx[..n].to_vec();
            pick.sort_unstable();
            examples.extend(pick.into_iter().map(|i| kept[i].clone()));
        }
    }
    if examples.is_empty() {
        return Err(TrainError::Data(format!("{names}: no usable examples")));
    }
    let mut counts = DataSummary::of(&examples);
    if counts.trained_tokens == 0 {
        return Err(TrainError::Data(format!("{names}: no trainable tokens")));
    }
    counts = counts.with_policy(&summary);
    let examples = if opts.packing { packing::pack(&examples, opts.max_seq_len) } else { examples };
    counts.packed_rows = if opts.packing { examples.len() } else { 0 };
    Ok((examples, counts))
}
