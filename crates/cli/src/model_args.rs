//! The options every command that runs a model shares: the model reference, offline mode, the
//! device, and adapters.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lora_core::{CausalLm, Tokenizer};

/// `--model`, `--offline`, `--device`, `--adapter`, `--adapter-weights`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model: a folder (config.json, safetensors weights, tokenizer.json) or a Hub id org/name[@rev].
    #[arg(long)]
    pub model: String,
    /// Never touch the network: Hub ids must be in the Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// cpu (default), ndarray or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub adapters: crate::adapters::AdapterArgs,
}

impl ModelArgs {
    /// Resolves the reference, loads the model with its adapters, and its tokenizer.
    pub fn load(&self) -> Result<(CausalLm, Tokenizer, PathBuf)> {
        let device = crate::device::open(&self.device)?;
        let dir = crate::hub_refs::model(&self.model, self.offline)?;
        let mut model = CausalLm::load_dir(&dir, &device).with_context(|| format!("loading {}", dir.display()))?;
        self.adapters.apply(&mut model, self.offline)?;
        let tok = Tokenizer::load_dir(&dir, &model.config)?;
        Ok((model, tok, dir))
    }
}
