//! `lora export`: a PEFT adapter as a llama.cpp / Ollama LoRA adapter (GGUF).

use std::path::PathBuf;

use anyhow::{Context, Result};
use lora_merge::export_adapter_gguf;
use lora_merge::gguf::GgmlType;

/// Arguments of `lora export`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  lora export runs/my-run --base models/llama -o my-run.gguf\n  llama-cli -m base.gguf --lora my-run.gguf"
)]
pub struct Args {
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    adapter: PathBuf,
    /// The base the adapter was trained on: a model folder (config.json) or a GGUF model file; default:
    /// the adapter's base_model_name_or_path when it is a local folder.
    #[arg(long)]
    base: Option<PathBuf>,
    /// The output .gguf file (written under a temporary name, then renamed).
    #[arg(short, long)]
    out: PathBuf,
    /// Tensor type: f32, f16, bf16 or q8_0 (tensors whose rows are not whole Q8_0 blocks stay f16).
    #[arg(long = "type", default_value = "f16", value_parser = ["f32", "f16", "bf16", "q8_0"])]
    ggml_type: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `lora export`.
pub fn run(a: Args) -> Result<()> {
    let base = match a.base {
        Some(b) => b,
        None => {
            let cfg = lora_merge::AdapterConfig::load(&a.adapter.join("adapter_config.json"))?;
            let named = cfg.base_model_name_or_path.map(PathBuf::from);
            named.filter(|p| p.join("config.json").is_file()).with_context(|| {
                format!("{}: its base_model_name_or_path is not a local model folder; pass --base", a.adapter.display())
            })?
        }
    };
    let t = match a.ggml_type.as_str() {
        "f32" => GgmlType::F32,
        "bf16" => GgmlType::Bf16,
        "q8_0" => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    let r = export_adapter_gguf(&a.adapter, &base, &a.out, t, a.force)?;
    for f in &r.fallbacks {
        println!("{f}: rows are not whole Q8_0 blocks of 32 values; written as F16");
    }
    println!(
        "{}: {} modules as {}, adapter.lora.alpha = {}{}",
        r.out.display(),
        r.modules,
        t.name(),
        r.alpha,
        if r.folded > 0 {
            format!(" ({} modules with their own scale folded into B)", r.folded)
        } else {
            String::new()
        }
    );
    Ok(())
}
