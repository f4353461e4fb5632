//! `lora eval`: loss and perplexity of a model on a JSONL file of texts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use lora_core::eval::evaluate_texts;
use lora_core::{CausalLm, Tokenizer};
use serde_json::Value;

/// Arguments of `lora eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a folder (config.json, safetensors weights, tokenizer.json) or a Hub id org/name[@rev].
    #[arg(long)]
    model: String,
    /// Never touch the network: Hub ids must be in the Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// JSONL file with one {"text": "..."} object per line.
    #[arg(long)]
    data: PathBuf,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// cpu (default), ndarray or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    adapters: crate::adapters::AdapterArgs,
}

/// Reads `{"text": ...}` lines; errors name the file and line.
fn read_texts(path: &PathBuf) -> Result<Vec<String>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut texts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", path.display(), n + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", where_()))?;
        match v.get("text") {
            Some(Value::String(s)) => texts.push(s.clone()),
            _ => bail!("{}: expected an object with a string field \"text\"", where_()),
        }
    }
    if texts.is_empty() {
        bail!("{}: no texts to evaluate", path.display());
    }
    Ok(texts)
}

/// Runs `lora eval`.
pub fn run(a: Args) -> Result<()> {
    let texts = read_texts(&a.data)?;
    let device = crate::device::open(&a.device)?;
    let dir = crate::hub_refs::model(&a.model, a.offline)?;
    let mut model = CausalLm::load_dir(&dir, &device).with_context(|| format!("loading {}", dir.display()))?;
    a.adapters.apply(&mut model, a.offline)?;
    let tok = Tokenizer::load_dir(&dir, &model.config)?;
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
