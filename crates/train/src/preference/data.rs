//! Preference data in TRL's forms, tokenized as TRL 1.x's `DPOTrainer` does:
//!
//! - standard, `{"prompt", "chosen", "rejected"}` strings: EOS appended to each completion (as text,
//!   unless it already ends with it), then `prompt` and `prompt + completion` tokenized with the
//!   tokenizer's special tokens;
//! - conversational, message lists: the prompt rendered with the chat template and its generation
//!   prompt, `prompt + completion` without, both tokenized as rendered;
//! - either with an implicit prompt (no `"prompt"`): the common beginning of `chosen` and `rejected`
//!   (TRL's `extract_prompt`).
//!
//! The prompt is then the longest common prefix of the three token lists, so that a token merging
//! across the boundary goes to the completions (TRL's `common_prefix_length`).

use std::path::Path;

use lora_core::Tokenizer;
use serde_json::Value;

use crate::batching::hold_out;
use crate::data::DataSummary;
use crate::data::chat_template::ChatTemplate;
use crate::data::records::read_records;
use crate::error::{Result, TrainError};
use crate::preference::kto::data::unpaired_summary;
use crate::preference::kto::{UnpairedIds, read_kto_files};
use crate::preference::step::PairIds;
use crate::recipe::{Files, Recipe};

/// Tokens two lists share from their start.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// TRL's `extract_prompt` for implicit-prompt pairs: the longest common beginning of `chosen` and
/// `rejected` (whole messages of conversations; characters of texts, less a space it would end
/// on), and the two remainders.
pub(crate) fn extract_prompt(chosen: &Value, rejected: &Value) -> std::result::Result<(Value, Value, Value), String> {
    match (chosen, rejected) {
        (Value::Array(c), Value::Array(r)) => {
            let mut n = c.iter().zip(r).take_while(|(a, b)| a == b).count();
            if n == c.len().min(r.len()) {
                // TRL's loop ends on its last index when nothing differs: one message less.
                n = n.saturating_sub(1);
            }
            Ok((Value::Array(c[..n].to_vec()), Value::Array(c[n..].to_vec()), Value::Array(r[n..].to_vec())))
        }
        (Value::String(c), Value::String(r)) => {
            let (cb, rb) = (c.as_bytes(), r.as_bytes());
            // TRL compares characters; on UTF-8 the first differing byte is inside the first differing
            // character, so step back to that character's start.
            let mut n = cb.iter().zip(rb).take_while(|(a, b)| a == b).count();
            if n == cb.len().min(rb.len()) {
                // Nothing differs within the shorter: TRL's loop ends on its last character.
                n = c[..n].char_indices().last().map_or(0, |(i, _)| i);
            } else {
                while !c.is_char_boundary(n) {
                    n -= 1;
                }
                if n > 0 && c[..n].ends_with(' ') {
                    n -= 1;
                }
            }
            let s = |t: &str| Value::String(t.to_string());
            Ok((s(&c[..n]), s(&c[n..]), s(&r[n..])))
        }
        _ => Err("\"chosen\" and \"rejected\" must both be strings or both be message lists".into()),
    }
}

/// A message list's messages, checked for TRL's conversational form.
fn messages<'v>(v: &'v Value, key: &str) -> std::result::Result<&'v [Value], String> {
    let Value::Array(list) = v else { return Err(format!("field \"{key}\" must be a message list")) };
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if role.is_none() || !m.get("content").is_some_and(Value::is_string) {
            return Err(format!("{key}[{i}] needs a string \"role\" and \"content\""));
        }
    }
    Ok(list)
}

/// The token ids of `prompt` and of `prompt` followed by each of `completions`, as TRL tokenizes
/// them: texts with the EOS appended to the completion (unless it ends with it) and the tokenizer's
/// special tokens; message lists through the chat template, the prompt with its generation prompt.
pub(crate) fn render(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    prompt: &Value,
    completions: &[&Value],
) -> std::result::Result<(Vec<u32>, Vec<Vec<u32>>), String> {
    if let Value::String(p) = prompt
        && completions.iter().all(|c| c.is_string())
    {
        let eos = match tok.eos_token_ids.first() {
            Some(&id) => tok.decode(&[id], false).map_err(|e| e.to_string())?,
            None => String::new(),
        };
        let with_eos = |c: &str| if eos.is_empty() || c.ends_with(&eos) { c.to_string() } else { format!("{c}{eos}") };
        let encode = |text: &str| tok.encode(text, true).map_err(|e| e.to_string());
        let full = completions
            .iter()
            .map(|c| encode(&format!("{p}{}", with_eos(c.as_str().expect("checked")))))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        return Ok((encode(p)?, full));
    }
    if prompt.is_array() && completions.iter().all(|c| c.is_array()) {
        let template =
            template.ok_or("conversational records need a chat template (the model's, or [data] chat_template)")?;
        let p = messages(prompt, "prompt")?;
        // As transformers' apply_chat_template(tokenize=True): the template writes any BOS itself.
        let encode = |messages: &[Value], generation: bool| {
            let text = template.render(messages, generation)?;
            tok.encode(&text, false).map_err(|e| e.to_string())
        };
        let mut full = Vec::with_capacity(completions.len());
        let keys: &[&str] = if completions.len() == 2 { &["chosen", "rejected"] } else { &["completion"] };
        for (c, key) in completions.iter().zip(keys.iter().cycle()) {
            let joined: Vec<Value> = p.iter().chain(messages(c, key)?).cloned().collect();
            full.push(encode(&joined, false)?);
        }
        return Ok((encode(p, true)?, full));
    }
    let names = if completions.len() == 1 {
        "\"prompt\" and \"completion\""
    } else {
        "\"prompt\", \"chosen\" and \"rejected\""
    };
    Err(format!("{names} must all be strings or all be message lists"))
}

/// Tokenizes one record (standard, conversational, or either with an implicit prompt); the error
/// is the reason, without the location. Conversations are rendered with `template`.
pub fn tokenize_pair(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    v: &Value,
) -> std::result::Result<PairIds, String> {
    if !v.is_object() {
        return Err("a record must be a JSON object".into());
    }
    let field = |key: &str| v.get(key).ok_or_else(|| format!("missing field \"{key}\""));
    let (chosen, rejected) = (field("chosen")?, field("rejected")?);
    if chosen == rejected {
        return Err("\"chosen\" and \"rejected\" are the same: the pair teaches nothing".into());
    }
    let (prompt, chosen, rejected) = match v.get("prompt") {
        Some(p) => (p.clone(), chosen.clone(), rejected.clone()),
        None => {
            let (prompt, c, r) = extract_prompt(chosen, rejected)?;
            let empty = match &prompt {
                Value::String(p) => p.is_empty(),
                Value::Array(p) => p.is_empty(),
                _ => false,
            };
            if empty {
                return Err("no \"prompt\", and \"chosen\" and \"rejected\" share no beginning to take as one".into());
            }
            (prompt, c, r)
        }
    };
    let (prompt_ids, full) = render(tok, template, &prompt, &[&chosen, &rejected])?;
    let [with_chosen, with_rejected]: [Vec<u32>; 2] = full.try_into().expect("two completions");
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

/// `[data] fields`: the dataset's own names of TRL's fields (`prompt = "question"`), by TRL's name.
/// A prompt mapped to `""` leaves the dataset's `prompt` out, so that the prompt is the beginning
/// `chosen` and `rejected` share (UltraFeedback's whole conversations beside a prompt string).
pub type FieldMap = std::collections::BTreeMap<String, String>;

/// TRL's fields a mapping may name.
pub const MAPPABLE_FIELDS: [&str; 5] = ["prompt", "chosen", "rejected", "completion", "label"];

/// A record with its fields renamed to TRL's by `fields`. A mapped field the record lacks is an
/// error naming both names.
pub(crate) fn rename_fields(mut v: Value, fields: &FieldMap) -> std::result::Result<Value, String> {
    let Value::Object(map) = &mut v else { return Ok(v) };
    let mut renamed = Vec::new();
    for (ours, theirs) in fields {
        if theirs.is_empty() {
            map.remove(ours);
            continue;
        }
        match map.remove(theirs) {
            Some(value) => renamed.push((ours.clone(), value)),
            None => return Err(format!("missing field \"{theirs}\" ([data] fields maps {ours} to it)")),
        }
    }
    map.extend(renamed);
    Ok(v)
}

/// Reads and tokenizes a preference file (JSONL or a JSON array), its fields renamed by `fields`.
/// A bad record is an error naming the file and line, or (with `skip_invalid`) skipped and counted.
pub fn load_pairs(
    path: &Path,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    skip_invalid: bool,
    fields: &FieldMap,
) -> Result<(Vec<PairIds>, usize)> {
    let mut pairs = Vec::new();
    let mut skipped = 0;
    for record in read_records(path)? {
        let result = record.value.and_then(|v| rename_fields(v, fields)).and_then(|v| tokenize_pair(tok, template, &v));
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

/// A preference run's examples: pairs (DPO, SimPO, ORPO) or unpaired examples (KTO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreferenceExamples {
    /// Prompt, chosen and rejected.
    Pairs(Vec<PairIds>),
    /// Prompt, completion and label.
    Unpaired(Vec<UnpairedIds>),
}

impl Default for PreferenceExamples {
    fn default() -> Self {
        Self::Pairs(Vec::new())
    }
}

impl PreferenceExamples {
    /// Pairs or unpaired examples held.
    pub fn len(&self) -> usize {
        match self {
            Self::Pairs(p) => p.len(),
            Self::Unpaired(u) => u.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A recipe's preference examples: training and validation, with their counts.
#[derive(Debug, Clone, Default)]
pub struct PreferenceData {
    /// Training examples.
    pub train: PreferenceExamples,
    /// Validation examples.
    pub validation: PreferenceExamples,
    /// Training counts (DPO's examples are pairs, and tokens count both sequences of a pair).
    pub train_summary: DataSummary,
    /// Validation counts, when there is validation data.
    pub validation_summary: Option<DataSummary>,
}

/// Fits a pair into `max_len` tokens per sequence, as TRL's `keep_start` truncation does: each
/// sequence (prompt + completion) keeps its first `max_len` tokens. `None` when the prompt alone
/// fills them (no completion token would be left), or when `drop` asks to leave long pairs out.
pub fn fit(pair: PairIds, max_len: usize, drop: bool) -> (Option<PairIds>, bool) {
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
/// `validation_fraction`), tokenized and fitted into `max_seq_len`: pairs, or KTO's unpaired
/// examples.
pub fn load_preference_data(
    recipe: &Recipe,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<PreferenceData> {
    if recipe.is_kto() {
        return load_kto_data(recipe, tok, template);
    }
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
            let fields = d.fields.clone().unwrap_or_default();
            let (read, skipped) = load_pairs(&path, tok, template, d.skip_invalid, &fields)?;
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
    Ok(PreferenceData {
        train: PreferenceExamples::Pairs(train),
        validation: PreferenceExamples::Pairs(validation),
        train_summary,
        validation_summary,
    })
}

fn load_kto_data(recipe: &Recipe, tok: &Tokenizer, template: Option<&ChatTemplate>) -> Result<PreferenceData> {
    let d = &recipe.data;
    let (mut train, mut train_summary) = read_kto_files(recipe, &d.train, tok, template)?;
    let (validation, validation_summary) = match (&d.validation, d.validation_fraction) {
        (Some(files), _) => {
            let (v, s) = read_kto_files(recipe, files, tok, template)?;
            (v, Some(s))
        }
        (None, Some(frac)) => {
            let (keep, val) = hold_out(train, frac, recipe.train.seed, "examples").map_err(TrainError::Data)?;
            train = keep;
            train_summary = unpaired_summary(&train).with_policy(&train_summary);
            let vs = unpaired_summary(&val);
            (val, Some(vs))
        }
        (None, None) => (Vec::new(), None),
    };
    Ok(PreferenceData {
        train: PreferenceExamples::Unpaired(train),
        validation: PreferenceExamples::Unpaired(validation),
        train_summary,
        validation_summary,
    })
}
