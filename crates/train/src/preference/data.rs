//! Preference data in TRL's standard form, `{"prompt", "chosen", "rejected"}` strings, tokenized as
//! TRL 1.x's `DPOTrainer` does: EOS appended to each completion (as text, unless it already ends
//! with it), then `prompt` and `prompt + completion` tokenized with the tokenizer's special tokens;
//! the prompt is the longest common prefix of the three token lists, so that a token merging across
//! the boundary goes to the completions (TRL's `common_prefix_length`).

use std::path::Path;

use lora_core::Tokenizer;
use serde_json::Value;

use crate::batching::hold_out;
use crate::data::DataSummary;
use crate::data::records::read_records;
use crate::error::{Result, TrainError};
use crate::preference::step::PairIds;
use crate::recipe::{Files, Recipe};

/// Tokens two lists share from their start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn string_field<'v>(v: &'v Value, key: &str) -> std::result::Result<&'v str, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field \"{key}\" must be a string")),
        None => Err(format!("missing field \"{key}\"")),
    }
}

/// Tokenizes one record; the error is the reason, without the location.
pub fn tokenize_pair(tok: &Tokenizer, v: &Value) -> std::result::Result<PairIds, String> {
    if !v.is_object() {
        return Err("a record must be a JSON object".into());
    }
    let prompt = string_field(v, "prompt")?;
    let (chosen, rejected) = (string_field(v, "chosen")?, string_field(v, "rejected")?);
    if chosen == rejected {
        return Err("\"chosen\" and \"rejected\" are the same text: the pair teaches nothing".into());
    }
    let eos = match tok.eos_token_ids.first() {
        Some(&id) => tok.decode(&[id], false).map_err(|e| e.to_string())?,
        None => String::new(),
    };
    let with_eos = |c: &str| if eos.is_empty() || c.ends_with(&eos) { c.to_string() } else { format!("{c}{eos}") };
    let encode = |text: &str| tok.encode(text, true).map_err(|e| e.to_string());
    let prompt_ids = encode(prompt)?;
    let with_chosen = encode(&format!("{prompt}{}", with_eos(chosen)))?;
    let with_rejected = encode(&format!("{prompt}{}", with_eos(rejected)))?;
    let n = common_prefix(&prompt_ids, &with_chosen).min(common_prefix(&prompt_ids, &with_rejected));
    let pair = PairIds {
        prompt: prompt_ids[..n].to_vec(),
        chosen: with_chosen[n..].to_vec(),
        rejected: with_rejected[n..].to_vec(),
    };
    if pair.chosen.is_empty() || pair.rejected.is_empty() {
        return Err("a completion is empty after tokenization".into());
    }
    Ok(pair)
}

/// Reads and tokenizes a preference file (JSONL or a JSON array). A bad record is an error naming
/// the file and line, or (with `skip_invalid`) skipped and counted.
pub fn load_pairs(path: &Path, tok: &Tokenizer, skip_invalid: bool) -> Result<(Vec<PairIds>, usize)> {
    let mut pairs = Vec::new();
    let mut skipped = 0;
    for record in read_records(path)? {
        let result = record.value.and_then(|v| tokenize_pair(tok, &v));
        match result {
            Ok(p) => pairs.push(p),
            Err(_) if skip_invalid => skipped += 1,
            Err(e) => return Err(TrainError::Data(format!("{}:{}: {e}", path.display(), record.line))),
        }
    }
    if pairs.is_empty() {
        return Err(TrainError::Data(format!("{}: no preference pairs", path.display())));
    }
    Ok((pairs, skipped))
}

/// A recipe's preference pairs: training and validation, with their counts.
#[derive(Debug, Clone, Default)]
pub struct PreferenceData {
    /// Training pairs.
    pub train: Vec<PairIds>,
    /// Validation pairs.
    pub validation: Vec<PairIds>,
    /// Training counts (examples are pairs; tokens count both sequences of a pair).
    pub train_summary: DataSummary,
    /// Validation counts, when there is validation data.
    pub validation_summary: Option<DataSummary>,
}

/// Fits a pair into `max_len` tokens per sequence, as TRL's `keep_start` truncation does: each
/// sequence (prompt + completion) keeps its first `max_len` tokens. `None` when the prompt alone
/// fills them (no completion token would be left), or when `drop` asks to leave long pairs out.
fn fit(pair: PairIds, max_len: usize, drop: bool) -> (Option<PairIds>, bool) {
    let longest = pair.prompt.len() + pair.chosen.len().max(pair.rejected.len());
    if longest <= max_len {
        return (Some(pair), false);
    }
    if drop || pair.prompt.len() >= max_len {
        return (None, false);
    }
    let room = max_len - pair.prompt.len();
    let PairIds { prompt, mut chosen, mut rejected } = pair;
    chosen.truncate(room);
    rejected.truncate(room);
    (Some(PairIds { prompt, chosen, rejected }), true)
}

fn summary(pairs: &[PairIds]) -> DataSummary {
    DataSummary {
        examples: pairs.len(),
        tokens: pairs.iter().map(|p| 2 * p.prompt.len() + p.chosen.len() + p.rejected.len()).sum(),
        trained_tokens: pairs.iter().map(|p| p.chosen.len() + p.rejected.len()).sum(),
        ..DataSummary::default()
    }
}

/// Reads a preference recipe's data files (`[data] train`, and `validation` or
/// `validation_fraction`), tokenized and fitted into `max_seq_len`.
pub fn load_preference_data(recipe: &Recipe, tok: &Tokenizer) -> Result<PreferenceData> {
    let d = &recipe.data;
    let read = |files: &Files| -> Result<(Vec<PairIds>, DataSummary)> {
        let (mut pairs, mut counts) = (Vec::new(), DataSummary::default());
        for (path, weight) in files.weighted() {
            if weight != 1.0 {
                return Err(TrainError::Recipe(format!(
                    "data: {}: file weights are not supported with method = \"dpo\" (weight {weight})",
                    path.display()
                )));
            }
            let (read, skipped) = load_pairs(&path, tok, d.skip_invalid)?;
            counts.skipped += skipped;
            for p in read {
                match fit(p, d.max_seq_len, d.overflow == "drop") {
                    (Some(p), truncated) => {
                        counts.truncated += usize::from(truncated);
                        pairs.push(p);
                    }
                    (None, _) => counts.dropped += 1,
                }
            }
        }
        if pairs.is_empty() {
            return Err(TrainError::Data(format!(
                "no preference pair fits in max_seq_len = {} tokens ({} dropped)",
                d.max_seq_len, counts.dropped
            )));
        }
        let s = summary(&pairs).with_policy(&counts);
        Ok((pairs, s))
    };
    let (mut train, mut train_summary) = read(&d.train)?;
    let (validation, validation_summary) = match (&d.validation, d.validation_fraction) {
        (Some(files), _) => {
            let (v, s) = read(files)?;
            (v, Some(s))
        }
        (None, Some(frac)) => {
            let (keep, val) = hold_out(train, frac, recipe.train.seed, "pairs").map_err(TrainError::Data)?;
            train = keep;
            train_summary = summary(&train).with_policy(&train_summary);
            let vs = summary(&val);
            (val, Some(vs))
        }
        (None, None) => (Vec::new(), None),
    };
    Ok(PreferenceData { train, validation, train_summary, validation_summary })
}
