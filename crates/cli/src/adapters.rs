//! `--adapter DIR` (repeatable) and `--adapter-weights w1,w2,...`, shared by commands that run a model.

use anyhow::{Context, Result, bail};
use lora_core::CausalLm;
use lora_core::adapter::load_adapter_mapped;

/// Adapter options.
#[derive(clap::Args, Debug, Default)]
pub struct AdapterArgs {
    /// A LoRA adapter to apply: a PEFT folder, a Hub id, or a llama.cpp adapter .gguf (repeat for several;
    /// their updates add up).
    #[arg(long = "adapter", value_name = "DIR|ORG/NAME|FILE.gguf")]
    pub adapters: Vec<String>,
    /// Weights of the adapters, in order (default 1 each).
    #[arg(long, value_delimiter = ',', value_name = "W1,W2,...")]
    pub adapter_weights: Vec<f64>,
}

impl AdapterArgs {
    /// Attaches the adapters to `model`.
    /// Returns the folder of the last adapter that carries a `tokenizer.json` and grew the
    /// vocabulary (special tokens added in training): its tokenizer is the model's now.
    pub fn apply(&self, model: &mut CausalLm, offline: bool) -> Result<Option<std::path::PathBuf>> {
        if !self.adapter_weights.is_empty() && self.adapter_weights.len() != self.adapters.len() {
            bail!("--adapter-weights has {} values for {} adapters", self.adapter_weights.len(), self.adapters.len());
        }
        let mut tokenizer = None;
        for (i, reference) in self.adapters.iter().enumerate() {
            let w = self.adapter_weights.get(i).copied().unwrap_or(1.0);
            let path = std::path::Path::new(reference);
            // A llama.cpp adapter file, or a PEFT folder / Hub id.
            let dir = if lora_merge::gguf::is_gguf_file(path) {
                path.to_path_buf()
            } else {
                crate::hub_refs::adapter(reference, offline)?
            };
            let vocab = model.config.vocab_size;
            let (_, relayout) = load_adapter_mapped(model, &dir, w, false)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
            if let Some(r) = relayout {
                eprintln!("adapter {}: {}", dir.display(), r.describe());
            }
            if model.config.vocab_size > vocab && dir.join("tokenizer.json").is_file() {
                tokenizer = Some(dir);
            }
        }
        Ok(tokenizer)
    }
}
