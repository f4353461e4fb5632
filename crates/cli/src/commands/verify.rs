//! `lora verify RUN_DIR`: re-run a training run and check that it reproduces its adapter.

use std::path::PathBuf;

use anyhow::Result;

/// Re-run a training run from its folder and check that it reproduces the adapter byte for byte.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder written by `lora train` (manifest.json, recipe.toml, adapter files).
    run_dir: PathBuf,
}

/// Runs `lora verify`; a difference is a `TrainError::Verify`, which exits with code 1.
pub fn run(a: Args) -> Result<()> {
    let report = lora_train::verify::verify(&a.run_dir)?;
    println!(
        "verified: {} inputs unchanged; adapter reproduced byte for byte with {} threads (sha256 {})",
        report.inputs, report.threads, report.adapter_sha256
    );
    Ok(())
}
