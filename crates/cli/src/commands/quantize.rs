//! `lora quantize`: a model folder as a bitsandbytes 4-bit NF4 checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lora_merge::safetensors::parse_size;
use lora_merge::{QuantizeOptions, quantize_model};

/// Write a model folder as a bitsandbytes 4-bit (NF4) checkpoint, the format of the Hub's *-bnb-4bit repositories.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model folder (f32, f16 or bf16 safetensors).
    base: PathBuf,
    /// The output folder.
    #[arg(short, long)]
    out: PathBuf,
    /// Quantize the block scales too (bnb_4bit_use_double_quant).
    #[arg(long)]
    double_quant: bool,
    /// Largest output shard.
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `lora quantize`.
pub fn run(a: Args) -> Result<()> {
    let shard_size = parse_size(&a.shard_size)
        .with_context(|| format!("--shard-size '{}': expected a size such as 5GB or 500MB", a.shard_size))?;
    let opts = QuantizeOptions { double_quant: a.double_quant, shard_size, force: a.force };
    let r = quantize_model(&a.base, &a.out, &opts)?;
    println!(
        "{}: {} linear weights in 4-bit NF4{}, {} tensors kept, {:.2} GB written",
        r.out.display(),
        r.quantized,
        if a.double_quant { " (double-quantized scales)" } else { "" },
        r.kept,
        r.bytes as f64 / 1e9
    );
    Ok(())
}
