//! KTO's data as TRL 1.x's `KTOTrainer` prepares it:
//!
//! - unpaired records `{"prompt", "completion", "label"}` (strings or message lists; `label` a
//!   boolean, true for a desirable completion), tokenized as DPO's pairs are
//!   ([`crate::preference::data`]): EOS appended to texts, the prompt the common prefix;
//! - paired records `{"prompt"?, "chosen", "rejected"}`, unpaired as TRL's
//!   `unpair_preference_dataset` does: per block of 1,000 records, every chosen completion
//!   (desirable), then every rejected one;
//! - examples whose prompt alone fills `max_seq_len` are dropped; then each example gets a
//!   mismatched completion for the KL estimate ([`mismatch`]); then sequences are cut to
//!   `max_seq_len` (keep the start).

use std::path::Path;

use lora_core::Tokenizer;
use serde_json::Value;

use crate::data::DataSummary;
use crate::data::chat_template::ChatTemplate;
use crate::data::records::read_records;
use crate::error::{Result, TrainError};
use crate::preference::data::{FieldMap, common_prefix, extract_prompt, rename_fields, render};
use crate::preference::kto::step::UnpairedIds;
use crate::recipe::{Files, Recipe};

/// TRL's paired records per block when it unpairs them (`datasets`' default `map` batch).
const UNPAIR_BLOCK: usize = 1000;

/// Tokenizes an unpaired record's prompt and completion: the prompt's ids and the completion's.
pub fn tokenize_unpaired(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    prompt: &Value,
    completion: &Value,
) -> std::result::Result<(Vec<u32>, Vec<u32>), String> {
    let (prompt_ids, full) = render(tok, template, prompt, &[completion])?;
    let n = common_prefix(&prompt_ids, &full[0]);
    let completion = full[0][n..].to_vec();
    if completion.is_empty() {
        return Err("the completion is empty after tokenization".into());
    }
    Ok((prompt_ids[..n].to_vec(), completion))
}

/// A record's (prompt, completion, label) triples: one for an unpaired record, two for a pair.
fn triples(v: &Value, paired: bool) -> std::result::Result<Vec<(Value, Value, bool)>, String> {
    if !v.is_object() {
        return Err("a record must be a JSON object".into());
    }
    let field = |key: &str| v.get(key).ok_or_else(|| format!("missing field \"{key}\""));
    if !paired {
        let (prompt, completion) = (field("prompt")?, field("completion")?);
        let label = field("label")?.as_bool().ok_or("field \"label\" must be true or false")?;
        return Ok(vec![(prompt.clone(), completion.clone(), label)]);
    }
    let (chosen, rejected) = (field("chosen")?, field("rejected")?);
    let (prompt, chosen, rejected) = match v.get("prompt") {
        Some(p) => (p.clone(), chosen.clone(), rejected.clone()),
        None => extract_prompt(chosen, rejected)?,
    };
    Ok(vec![(prompt.clone(), chosen, true), (prompt, rejected, false)])
}

/// Reads and tokenizes a KTO file, its fields renamed by `fields`: unpaired records, or pairs (the
/// first record decides; the rest must have its form). A bad record is an error naming the file
/// and line, or (with `skip_invalid`) skipped and counted. The examples have no mismatched
/// completion yet.
pub fn load_unpaired(
    path: &Path,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    skip_invalid: bool,
    fields: &FieldMap,
) -> Result<(Vec<UnpairedIds>, usize)> {
    let mut records = read_records(path)?;
    for r in &mut records {
        r.value = std::mem::replace(&mut r.value, Ok(Value::Null)).and_then(|v| rename_fields(v, fields));
    }
    let paired = records
        .iter()
        .find_map(|r| r.value.as_ref().ok())
        .is_some_and(|v| v.get("completion").is_none() && v.get("chosen").is_some());
    let mut skipped = 0;
    // One entry per valid record: its examples.
    let mut per_record: Vec<Vec<UnpairedIds>> = Vec::new();
    for record in records {
        let result = record.value.and_then(|v| {
            triples(&v, paired)?
                .into_iter()
                .map(|(p, c, desirable)| {
                    let (prompt, completion) = tokenize_unpaired(tok, template, &p, &c)?;
                    Ok(UnpairedIds { prompt, completion, kl_completion: Vec::new(), desirable })
                })
                .collect::<std::result::Result<Vec<_>, String>>()
        });
        match result {
            Ok(examples) => per_record.push(examples),
            Err(_) if skip_invalid => skipped += 1,
            Err(e) => {
                let form = if paired { " (the file's first record is a pair)" } else { "" };
                return Err(TrainError::Data(format!("{}:{}: {e}{form}", path.display(), record.line)));
            }
        }
    }
    // Pairs: per block of records, the desirable examples, then the undesirable ones.
    let mut examples = Vec::new();
    for block in per_record.chunks(if paired { UNPAIR_BLOCK } else { 1 }) {
        for side in 0..block.first().map_or(0, Vec::len) {
            examples.extend(block.iter().map(|r| r[side].clone()));
        }
    }
    if examples.is_empty() {
        return Err(TrainError::Data(format!("{}: no KTO examples", path.display())));
    }
    Ok((examples, skipped))
}

/// Gives each example the completion of its predecessor within its block of `batch_size`, the
/// first the block's last (TRL's `KL_completion_ids`): prompts with completions not theirs, from
/// which the KL estimate is taken.
pub fn mismatch(examples: &mut [UnpairedIds], batch_size: usize) {
    for block in examples.chunks_mut(batch_size.max(1)) {
        let n = block.len();
        let completions: Vec<Vec<u32>> = block.iter().map(|e| e.completion.clone()).collect();
        for (i, e) in block.iter_mut().enumerate() {
            e.kl_completion = completions[(i + n - 1) % n].clone();
        }
    }
}

/// Cuts an example's sequences (prompt + completion, prompt + mismatched completion) to `max_len`
/// tokens, keeping the start; whether the completion was cut. The prompt is shorter than
/// `max_len` (examples whose prompt fills it were dropped).
pub fn fit_unpaired(e: &mut UnpairedIds, max_len: usize) -> bool {
    let room = max_len.saturating_sub(e.prompt.len());
    let cut = e.completion.len() > room;
    e.completion.truncate(room);
    e.kl_completion.truncate(room);
    cut
}

fn summary(examples: &[UnpairedIds]) -> DataSummary {
    DataSummary {
        examples: examples.len(),
        tokens: examples.iter().map(|e| e.prompt.len() + e.completion.len()).sum(),
        trained_tokens: examples.iter().map(|e| e.completion.len()).sum(),
        ..DataSummary::default()
    }
}

/// A KTO recipe's examples from `files`: read, dropped when the prompt alone fills `max_seq_len`
/// (or, with `overflow = "drop"`, when longer than it), given their mismatched completions in
/// blocks of `batch_size`, then cut to `max_seq_len`. Counts with them.
pub fn read_kto_files(
    recipe: &Recipe,
    files: &Files,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<(Vec<UnpairedIds>, DataSummary)> {
    let d = &recipe.data;
    let mut counts = DataSummary::default();
    let mut kept = Vec::new();
    for (path, weight) in files.weighted() {
        if weight != 1.0 {
            return Err(TrainError::Recipe(format!(
                "data: {}: file weights are not supported with method = \"kto\" (weight {weight})",
                path.display()
            )));
        }
        let fields = d.fields.clone().unwrap_or_default();
        let (examples, skipped) = load_unpaired(&path, tok, template, d.skip_invalid, &fields)?;
        counts.skipped += skipped;
        for e in examples {
            let long = e.prompt.len() + e.completion.len() > d.max_seq_len;
            if e.prompt.len() >= d.max_seq_len || (long && d.overflow == "drop") {
                counts.dropped += 1;
            } else {
                kept.push(e);
            }
        }
    }
    if kept.is_empty() {
        return Err(TrainError::Data(format!(
            "no KTO example fits in max_seq_len = {} tokens ({} dropped)",
            d.max_seq_len, counts.dropped
        )));
    }
    if recipe.kto().loss.needs_kl() {
        mismatch(&mut kept, recipe.train.batch_size);
    }
    for e in &mut kept {
        counts.truncated += usize::from(fit_unpaired(e, d.max_seq_len));
    }
    let s = summary(&kept).with_policy(&counts);
    Ok((kept, s))
}

/// Counts of held-out examples.
pub(crate) fn unpaired_summary(examples: &[UnpairedIds]) -> DataSummary {
    summary(examples)
}
