//! Evaluation: the mean loss per scored token, over a training run's validation examples or over a
//! data file (`lora eval`), through the same batching and loss as training.

use std::path::Path;

use lora_core::loss::chunked::head_loss;
use lora_core::loss::eval::evaluate_texts;
use lora_core::{CausalLm, Tokenizer};
use serde_json::Value;

use crate::batching::collate;
use crate::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
use crate::data::format::Format;
use crate::data::records::{Record, read_records};
use crate::data::turns::TurnMode;
use crate::data::{DataOptions, Example, Overflow, load_examples};
use crate::error::{Result, TrainError};
use crate::trainable::{set_training, untrack_adapters};

/// Mean loss per trained token over examples, without dropout.
pub fn evaluate(
    model: &mut CausalLm,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
    pad_left: bool,
) -> Result<Option<f64>> {
    if examples.is_empty() {
        return Ok(None);
    }
    set_training(model, false);
    untrack_adapters(model);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (batch, labels) = collate(&refs, pad_id, pad_left);
        let hidden = model.last_hidden(&batch)?;
        let head = head_loss(model, hidden, &labels, None, |_| {})?;
        sum += head.sum;
        count += head.count;
    }
    Ok((count > 0).then(|| sum / count as f64))
}

/// What [`evaluate_file`] scored.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEvaluation {
    /// The data format the file was read as.
    pub format: Format,
    /// Texts (`text` format) or examples (the others) scored.
    pub items: usize,
    /// Tokens whose prediction was scored.
    pub scored_tokens: usize,
    /// Mean loss per scored token.
    pub mean_loss: f64,
    /// Assistant turns left with no scored token, one line per file (as training warns of them).
    pub warnings: Vec<String>,
}

impl FileEvaluation {
    /// `exp(mean loss)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_loss.exp()
    }
}

/// `lora eval`: the model's mean loss on a data file. `text` records are scored on every token, as
/// transformers' `model(ids, labels=ids).loss`; completion, alpaca and chat records on the tokens
/// training would train on (answers, assistant turns), rendered and masked as training does, rows
/// longer than `max_seq_len` truncated. `format` may be `auto` (from the first record).
pub fn evaluate_file(
    model: &mut CausalLm,
    tok: &Tokenizer,
    data: &Path,
    format: &str,
    max_seq_len: usize,
) -> Result<FileEvaluation> {
    let records = read_records(data)?;
    let first = records.iter().find_map(|r| r.value.as_ref().ok());
    let resolved = Format::resolve(format, first).map_err(|m| TrainError::Data(format!("{}: {m}", data.display())))?;
    if resolved == Format::Text {
        let texts = texts_of(&records, data)?;
        let r = evaluate_texts(model, tok, &texts)?;
        return Ok(FileEvaluation {
            format: resolved,
            items: r.texts,
            scored_tokens: r.predicted_tokens,
            mean_loss: r.mean_loss,
            warnings: Vec::new(),
        });
    }
    let template = tok
        .chat_template
        .as_deref()
        .map(|src| ChatTemplate::for_tokenizer(src, tok, FIXED_DATE_UNIX))
        .transpose()
        .map_err(TrainError::Data)?;
    let opts = DataOptions {
        format,
        max_seq_len,
        overflow: Overflow::Truncate,
        train_on_inputs: false,
        skip_invalid: false,
        packing: false,
        template: template.as_ref(),
        // Training's defaults, so that eval loss and training loss count the same tokens.
        turns: TurnMode::Auto,
        reasoning_field: None,
        untrained_turns_are_errors: false,
        seed: 0,
    };
    let (examples, summary) = load_examples(&[(data.to_path_buf(), 1.0)], &opts, tok)?;
    let pad = tok.pad_token_id.unwrap_or(0); // the tokenizer already falls back to EOS
    let mean_loss = evaluate(model, &examples, 8, pad, tok.padding_left)?
        .ok_or_else(|| TrainError::Data(format!("{}: nothing to evaluate", data.display())))?;
    Ok(FileEvaluation {
        format: resolved,
        items: summary.examples,
        scored_tokens: summary.trained_tokens,
        mean_loss,
        warnings: summary.untrained_warnings,
    })
}

/// The `text` field of every record; errors name the file and line.
fn texts_of(records: &[Record], path: &Path) -> Result<Vec<String>> {
    let mut texts = Vec::with_capacity(records.len());
    for r in records {
        let at = || format!("{}:{}", r.file.display(), r.line);
        match &r.value {
            Err(reason) => return Err(TrainError::Data(format!("{}: {reason}", at()))),
            Ok(v) => match v.get("text") {
                Some(Value::String(s)) => texts.push(s.clone()),
                _ => {
                    return Err(TrainError::Data(format!("{}: expected an object with a string field \"text\"", at())));
                }
            },
        }
    }
    if texts.is_empty() {
        return Err(TrainError::Data(format!("{}: no texts to evaluate", path.display())));
    }
    Ok(texts)
}
