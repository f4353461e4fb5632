//! `lora eval`: loss and perplexity of a model on a data file; the scoring is
//! `lora_train::evaluation::evaluate_file`, beside training's own evaluation.

use std::path::PathBuf;

use anyhow::Result;
use lora_train::data::format::Format;
use lora_train::evaluation::evaluate_file;

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

/// Runs `lora eval`.
pub fn run(a: Args) -> Result<()> {
    let (mut model, tok, _) = a.model.load()?;
    let r = evaluate_file(&mut model, &tok, &a.data, &a.format, a.max_seq_len)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    // Texts are counted as texts, the other formats as examples (the keys scripts read).
    let (items, tokens) = if r.format == Format::Text { ("texts", "predicted") } else { ("examples", "scored") };
    if a.json {
        let v = serde_json::json!({
            items: r.items, "predicted_tokens": r.scored_tokens,
            "mean_loss": r.mean_loss, "perplexity": r.perplexity(),
        });
        println!("{v}");
    } else {
        println!(
            "{} {items}, {} {tokens} tokens: mean loss {:.6}, perplexity {:.4}",
            r.items,
            r.scored_tokens,
            r.mean_loss,
            r.perplexity()
        );
    }
    Ok(())
}
