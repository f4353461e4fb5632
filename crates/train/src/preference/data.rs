//! Preference data in TRL's standard form, `{"prompt", "chosen", "rejected"}` strings, tokenized as
//! TRL 1.x's `DPOTrainer` does: EOS appended to each completion (as text, unless it already ends
//! with it), then `prompt` and `prompt + completion` tokenized with the tokenizer's special tokens;
//! the prompt is the longest common prefix of the three token lists, so that a token merging across
//! the boundary goes to the completions (TRL's `common_prefix_length`).

use std::path::Path;

use lora_core::Tokenizer;
use serde_json::Value;

use crate::data::records::read_records;
use crate::error::{Result, TrainError};
use crate::preference::step::PairIds;

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
