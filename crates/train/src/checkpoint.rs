//! Checkpoints: adapter and optimizer state in f32, the step, and the data position, written to a
//! temporary folder and renamed into place, so that a kill at any moment leaves the previous
//! checkpoint intact. Shuffling and dropout are seeded by (seed, epoch) and (seed, step), so the
//! step *is* the RNG state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_core::burn::tensor::{Device, Tensor, TensorData};
use lora_core::io::safetensors_write::{StoredDtype, write_atomic, write_safetensors};
use lora_core::kernels::host::to_f32_vec;
use lora_formats::safetensors::SafetensorsFile;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optimizer::AdamW;

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Micro-batches consumed (the data position).
    pub micro_batches: u64,
    /// The recipe's seed.
    pub seed: u64,
    /// sha256 of the resolved recipe, so that a resume with another recipe is refused.
    pub recipe_sha256: String,
}

/// The checkpoint folder of a run.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes a checkpoint of `names`/`params` and the optimizer; returns its folder.
pub fn save(
    run: &Path,
    names: &[String],
    params: &[Tensor<2>],
    opt: &AdamW,
    state: &CheckpointState,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let final_dir = root.join(format!("step-{:08}", state.step));
    let tmp = root.join(format!(".tmp-step-{:08}-{}", state.step, std::process::id()));
    // Half-written checkpoints of killed runs (any process) are never read; clear them.
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-step-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let mut tensors = Vec::new();
    for ((name, p), (m, v)) in names.iter().zip(params).zip(&opt.moments) {
        let dims = p.dims().to_vec();
        tensors.push((format!("{name}"), dims.clone(), to_f32_vec(p.clone().inner())?));
        tensors.push((format!("{name}.exp_avg"), dims.clone(), to_f32_vec(m.clone())?));
        tensors.push((format!("{name}.exp_avg_sq"), dims, to_f32_vec(v.clone())?));
    }
    let meta: BTreeMap<String, String> = [("optimizer_step".to_string(), opt.step.to_string())].into();
    write_safetensors(&tmp.join("state.safetensors"), &tensors, StoredDtype::F32, &meta)?;
    let json = serde_json::to_string_pretty(state).expect("serializes");
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    // Keep the two newest checkpoints.
    let mut all = list(run)?;
    while all.len() > 2 {
        let old = all.remove(0);
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Result<Vec<PathBuf>> {
    let root = checkpoints_dir(run);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| TrainError::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) && p.join("state.json").is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Loads a checkpoint: its state, the parameter values and the optimizer moments, in `names` order.
pub fn load(
    dir: &Path,
    names: &[String],
    opt: &mut AdamW,
    device: &Device,
) -> Result<(CheckpointState, Vec<Tensor<2>>)> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| TrainError::Recipe(format!("{}: {e}", state_path.display())))?;
    let file = SafetensorsFile::open(dir.join("state.safetensors"))?;
    let read = |name: &str| -> Result<Tensor<2>> {
        let (v, shape) = file.to_f32(name)?;
        Ok(Tensor::from_data(TensorData::new(v, [shape[0], shape[1]]), device))
    };
    let mut params = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        params.push(read(name)?);
        opt.moments[i] = (read(&format!("{name}.exp_avg"))?, read(&format!("{name}.exp_avg_sq"))?);
    }
    opt.step = file
        .metadata()
        .get("optimizer_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TrainError::Recipe(format!("{}: no optimizer_step", dir.display())))?;
    Ok((state, params))
}
