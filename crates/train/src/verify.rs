//! `lora verify RUN`: re-run a recipe from its run folder and check that it reproduces the adapter
//! byte for byte. Inputs are checked against the manifest first, so that a changed dataset or model
//! is reported as such rather than as a training difference.

use std::path::Path;

use lora_formats::safetensors::SafetensorsFile;

use crate::error::{Result, TrainError};
use crate::recipe::Recipe;
use crate::run_files::Manifest;
use crate::trainer::{RunOptions, input_hashes, prepare, run};

/// What verification found.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Inputs checked.
    pub inputs: usize,
    /// The reproduced adapter's sha256.
    pub adapter_sha256: String,
    /// Worker threads the run was reproduced with (the manifest's).
    pub threads: usize,
}

/// Verifies a run folder; `Err(TrainError::Verify)` describes any difference.
pub fn verify(run_dir: &Path) -> Result<VerifyReport> {
    let manifest_path = run_dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| TrainError::io(&manifest_path, e))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| TrainError::Recipe(format!("{}: {e}", manifest_path.display())))?;
    let recipe = Recipe::load(&run_dir.join("recipe.toml"), &[])?;

    // 1) Inputs.
    let now = input_hashes(&recipe)?;
    let mut diffs = Vec::new();
    for (path, want) in &manifest.inputs {
        match now.get(path) {
            Some(got) if got == want => {}
            Some(got) => diffs.push(format!("  changed: {} (sha256 {want} -> {got})", path.display())),
            None => diffs.push(format!("  missing: {}", path.display())),
        }
    }
    for path in now.keys().filter(|p| !manifest.inputs.contains_key(*p)) {
        diffs.push(format!("  new input: {}", path.display()));
    }
    if !diffs.is_empty() {
        return Err(TrainError::Verify(format!(
            "{}: inputs differ from the manifest:\n{}",
            run_dir.display(),
            diffs.join("\n")
        )));
    }

    // 2) Re-run into a scratch folder beside the run.
    let scratch = run_dir.join(format!(".verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut again = recipe.clone();
    again.output.dir = scratch.clone();
    let prepared = prepare(&again)?;
    // The same thread count as the run, whatever this machine's default.
    let threads = manifest.threads.unwrap_or_else(rayon::current_num_threads);
    let result = run(prepared, &RunOptions { threads: Some(threads), ..RunOptions::default() }, &mut |_| {});
    let outcome = result.and_then(|summary| {
        if summary.adapter_sha256 == manifest.adapter_sha256 {
            return Ok(VerifyReport { inputs: manifest.inputs.len(), adapter_sha256: summary.adapter_sha256, threads });
        }
        let detail =
            tensor_diff(&run_dir.join("adapter_model.safetensors"), &scratch.join("adapter_model.safetensors"));
        Err(TrainError::Verify(format!(
            "{}: the reproduced adapter differs (sha256 {} in the manifest, {} now){detail}",
            run_dir.display(),
            manifest.adapter_sha256,
            summary.adapter_sha256
        )))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

/// Which tensors differ between two adapter files, and by how much.
fn tensor_diff(a: &Path, b: &Path) -> String {
    let (Ok(fa), Ok(fb)) = (SafetensorsFile::open(a), SafetensorsFile::open(b)) else {
        return String::new();
    };
    let mut lines = Vec::new();
    for (name, _) in fa.tensors() {
        match (fa.to_f32(name), fb.to_f32(name)) {
            (Ok((x, _)), Ok((y, _))) if x.len() == y.len() => {
                let d = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                if d > 0.0 {
                    lines.push(format!("  {name}: max |Δ| {d:e}"));
                }
            }
            _ => lines.push(format!("  {name}: missing or reshaped")),
        }
    }
    if lines.is_empty() { String::new() } else { format!(":\n{}", lines.join("\n")) }
}
