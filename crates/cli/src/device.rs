//! The `--device` option shared by commands that run a model.

use anyhow::Result;
use lora_core::Backend;
use lora_core::burn::tensor::Device;

/// Parses `cpu` / `ndarray` / `cuda` and opens the device.
pub fn open(name: &str) -> Result<Device> {
    let backend: Backend = name.parse()?;
    Ok(backend.device()?)
}
