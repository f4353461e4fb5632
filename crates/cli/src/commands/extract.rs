//! `lora extract`: a LoRA adapter approximating the difference between a fine-tune and its base.

use std::path::PathBuf;

use anyhow::Result;
use lora_merge::extract_adapter;

/// Extract a LoRA adapter approximating FINETUNED − BASE by truncated SVD.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model folder.
    base: PathBuf,
    /// The fine-tuned model folder (same architecture and tensors).
    finetuned: PathBuf,
    /// The output adapter folder.
    #[arg(short, long)]
    out: PathBuf,
    /// Rank of the adapter.
    #[arg(long)]
    rank: usize,
    /// Seed of the randomized SVD.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `lora extract`.
pub fn run(a: Args) -> Result<()> {
    let r = extract_adapter(&a.base, &a.finetuned, &a.out, a.rank, a.seed, a.force)?;
    for m in &r.modules {
        println!("{:<60} rank {:>4}  energy captured {:.4}", m.module, m.rank, m.energy);
    }
    for s in &r.skipped {
        println!("{s:<60} differs but is not a linear weight: not in the adapter");
    }
    let mean = r.modules.iter().map(|m| m.energy).sum::<f64>() / r.modules.len().max(1) as f64;
    println!("{}: {} modules, mean energy captured {mean:.4}", a.out.display(), r.modules.len());
    Ok(())
}
