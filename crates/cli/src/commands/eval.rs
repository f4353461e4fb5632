//! `lora eval`: loss and perplexity of a model on a JSONL file of texts.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use lora_core::loss::eval::evaluate_texts;
use lora_train::data::records::{Record, read_records};
use serde_json::Value;

/// Mean loss per scored token and perplexity of a model on a data file: text, completion, alpaca or chat JSONL.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: crate::model_args::ModelArgs,
    /// JSONL (or JSON array) data file.
    #[arg(long)]
    data: PathBuf,
    /// text: {"text"} lines, scored on every token as transformers' model(ids, labels=ids).loss;
    /// completion, alpaca, chat: scored on the tokens training would train on (answers, assistant
    /// turns); auto: from the first record.
    #[arg(long, default_value = "text")]
    format: String,
    /// Longest sequence for the completion, alpaca and chat formats.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The `text` field of every record; errors name the file and line.
fn texts_of(records: &[Record], path: &Path) -> Result<Vec<String>> {
    let mut texts = Vec::with_capacity(records.len());
    for r in records {
        let at = || format!("{}:{}", r.file.display(), r.line);
        match &r.value {
            Err(reason) => bail!("{}: {reason}", at()),
            Ok(v) => match v.get("text") {
                Some(Value::String(s)) => texts.push(s.clone()),
                _ => bail!("{}: expected an object with a string field \"text\"", at()),
            },
        }
    }
    if texts.is_empty() {
        bail!("{}: no texts to evaluate", path.display());
    }
    Ok(texts)
}

/// Runs `lora eval`.
pub fn run(a: Args) -> Result<()> {
    let records = read_records(&a.data)?;
    let first = records.iter().find_map(|r| r.value.as_ref().ok());
    let format = lora_train::data::format::Format::resolve(&a.format, first)
        .map_err(|m| anyhow::anyhow!("{}: {m}", a.data.display()))?;
    if format != lora_train::data::format::Format::Text {
        return run_masked(&a);
    }
    let texts = texts_of(&records, &a.data)?;
    let (model, tok, _) = a.model.load()?;
    let r = evaluate_texts(&model, &tok, &texts)?;
    if a.json {
        let v = serde_json::json!({
            "texts": r.texts, "predicted_tokens": r.predicted_tokens,
            "mean_loss": r.mean_loss, "perplexity": r.perplexity,
        });
        println!("{v}");
    } else {
        println!(
            "{} texts, {} predicted tokens: mean loss {:.6}, perplexity {:.4}",
            r.texts, r.predicted_tokens, r.mean_loss, r.perplexity
        );
    }
    Ok(())
}

/// Completion / alpaca / chat data: the loss over the tokens training would train on.
fn run_masked(a: &Args) -> Result<()> {
    use lora_train::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
    use lora_train::data::{DataOptions, Overflow, load_examples};
    let (mut model, tok, _) = a.model.load()?;
    let template = tok
        .chat_template
        .as_deref()
        .map(|src| ChatTemplate::for_tokenizer(src, &tok, FIXED_DATE_UNIX))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let opts = DataOptions {
        format: &a.format,
        max_seq_len: a.max_seq_len,
        overflow: Overflow::Truncate,
        train_on_inputs: false,
        skip_invalid: false,
        packing: false,
        template: template.as_ref(),
        seed: 0,
    };
    let (examples, summary) = load_examples(&[(a.data.clone(), 1.0)], &opts, &tok)?;
    let pad = tok.pad_token_id.unwrap_or(0); // the tokenizer already falls back to EOS
    let loss = lora_train::trainer::evaluate(&mut model, &examples, 8, pad, tok.padding_left)?
        .ok_or_else(|| anyhow::anyhow!("{}: nothing to evaluate", a.data.display()))?;
    if a.json {
        let v = serde_json::json!({
            "examples": summary.examples, "predicted_tokens": summary.trained_tokens,
            "mean_loss": loss, "perplexity": loss.exp(),
        });
        println!("{v}");
    } else {
        println!(
            "{} examples, {} scored tokens: mean loss {:.6}, perplexity {:.4}",
            summary.examples,
            summary.trained_tokens,
            loss,
            loss.exp()
        );
    }
    Ok(())
}
