//! The options every command that runs a model shares: the model reference, offline mode, the
//! device, and adapters.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lora_core::{BaseDtype, CausalLm, LoadOptions, Quantize, Tokenizer};

/// `--model`, `--offline`, `--device`, `--adapter`, `--adapter-weights`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model: a folder (config.json, safetensors weights, tokenizer.json) or a Hub id org/name[@rev].
    #[arg(long)]
    pub model: String,
    /// Never touch the network: Hub ids must be in the Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// cpu (default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The dtype the base is held in: auto (f32 on the CPU, bf16 on CUDA), f32, bf16 or f16.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16", "f16"])]
    pub dtype: String,
    /// Store the decoder's linear layers as NF4, as bitsandbytes (QLoRA) does: evaluate an adapter on the
    /// base it was trained on. `nf4-dq` also quantizes the scales (double quantization).
    #[arg(long, default_value = "none", value_parser = ["none", "nf4", "nf4-dq"])]
    pub quantize: String,
    #[command(flatten)]
    pub adapters: crate::adapters::AdapterArgs,
}

impl ModelArgs {
    /// Resolves the reference, loads the model with its adapters, and its tokenizer.
    pub fn load(&self) -> Result<(CausalLm, Tokenizer, PathBuf)> {
        let device = crate::device::open(&self.device)?;
        let gguf = is_gguf_file(Path::new(&self.model));
        let dir = if gguf { PathBuf::from(&self.model) } else { crate::hub_refs::model(&self.model, self.offline)? };
        let mut model = CausalLm::load_dir_with(&dir, &device, &self.load_options()?)
            .with_context(|| format!("loading {}", dir.display()))?;
        let grown = self.adapters.apply(&mut model, self.offline)?;
        let tok = match grown {
            // An adapter trained with added special tokens carries the grown tokenizer.
            Some(adapter) => {
                eprintln!("tokenizer: {} (the adapter's, with its added tokens)", adapter.display());
                Tokenizer::load_dir(&adapter, &model.config)?
            }
            None if gguf => gguf_tokenizer(&dir, &model)?,
            None => Tokenizer::load_dir(&dir, &model.config)?,
        };
        Ok((model, tok, dir))
    }

    /// `--dtype` and `--quantize`, with `auto` resolved for the device.
    #[allow(clippy::wrong_self_convention)]
    pub fn load_options(&self) -> Result<LoadOptions> {
        let dtype = BaseDtype::resolve(&self.dtype, self.device.parse()?)?;
        Ok(LoadOptions { dtype, quantize: Quantize::parse(&self.quantize, false)? })
    }
}

/// Whether a model reference is a GGUF file (llama.cpp, Ollama).
pub use lora_merge::gguf::is_gguf_file;

/// The tokenizer of a GGUF model: a `tokenizer.json` beside the file when there is one (said on
/// stderr), else the one the file carries.
pub fn gguf_tokenizer(path: &Path, model: &CausalLm) -> Result<Tokenizer> {
    let file = lora_merge::gguf::GgufFile::open(path)?;
    let (tok, beside) = Tokenizer::load_gguf(path, &file, &model.config)?;
    if let Some(json) = beside {
        eprintln!("tokenizer: {} (beside the GGUF file)", json.display());
    }
    Ok(tok)
}
