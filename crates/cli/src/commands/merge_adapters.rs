//! `lora merge-adapters`: combine PEFT adapters into one adapter.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use lora_merge::{AdapterMergeOptions, Combination, merge_adapters};

/// Combine PEFT adapters into one adapter (cat, svd, ties_svd, dare_svd).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Two or more PEFT adapter folders.
    #[arg(required = true, num_args = 1..)]
    adapters: Vec<PathBuf>,
    /// The output adapter folder.
    #[arg(short, long)]
    out: PathBuf,
    /// cat (exact, rank Σr), svd, ties_svd or dare_svd (truncated to --rank).
    #[arg(long, default_value = "cat")]
    method: String,
    /// Output rank of the SVD methods (default: the largest input rank).
    #[arg(long)]
    rank: Option<usize>,
    /// One weight per adapter, comma-separated (default 1 each).
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Density of ties_svd / dare_svd.
    #[arg(long, default_value_t = 0.5)]
    density: f64,
    /// Seed of dare_svd and of the randomized SVD.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `lora merge-adapters`.
pub fn run(a: Args) -> Result<()> {
    let method = Combination::parse(&a.method)
        .with_context(|| format!("--method '{}': use cat, svd, ties_svd or dare_svd", a.method))?;
    if a.adapters.len() < 2 && method == Combination::Cat {
        bail!("give at least two adapters to combine");
    }
    let opts = AdapterMergeOptions {
        method,
        weights: a.weights,
        rank: a.rank,
        density: a.density,
        seed: a.seed,
        force: a.force,
    };
    let report = merge_adapters(&a.adapters, &a.out, &opts)?;
    let worst = report.iter().map(|m| m.relative_error).fold(0.0, f64::max);
    for m in &report {
        println!("{:<60} rank {:>4}  relative error {:.2e}", m.module, m.rank, m.relative_error);
    }
    println!("{}: {} modules, largest relative error {worst:.2e}", a.out.display(), report.len());
    Ok(())
}
