//! `lora generate`: stream a continuation of a prompt.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lora_core::generate::{GenerateOptions, SamplingParams, generate};
use lora_core::tokenizer::TextStream;
use lora_core::{CausalLm, Tokenizer};

/// Arguments of `lora generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder (config.json, safetensors weights, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt, encoded with the tokenizer's special tokens (BOS).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding, as transformers' generate(do_sample=False).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu (default), ndarray or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    adapters: crate::adapters::AdapterArgs,
}

/// Runs `lora generate`.
pub fn run(a: Args) -> Result<()> {
    let device = crate::device::open(&a.device)?;
    let mut model = CausalLm::load_dir(&a.model, &device).with_context(|| format!("loading {}", a.model.display()))?;
    a.adapters.apply(&mut model)?;
    let tok = Tokenizer::load_dir(&a.model, &model.config)?;
    let prompt = tok.encode(&a.prompt, true)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
        stop_ids: tok.eos_token_ids.clone(),
        use_cache: true,
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let mut stream = TextStream::default();
    generate(&model, &prompt, &opts, |id| {
        if let Some(piece) = stream.push(&tok, id)? {
            // A closed pipe (`| head`) ends generation quietly.
            if write!(out, "{piece}").and_then(|_| out.flush()).is_err() {
                return Err(lora_core::CoreError::Invalid("output closed".into()));
            }
        }
        Ok(())
    })?;
    writeln!(out, "{}", stream.finish(&tok)?)?;
    Ok(())
}
