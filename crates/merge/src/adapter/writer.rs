//! Writes a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`) from factors.

use std::collections::BTreeMap;

use crate::adapter::{AdapterConfig, PEFT_PREFIX, TargetModules};
use crate::dtype::{DType, encode_f32};
use crate::error::{MergeError, Result};
use crate::output_dir::OutputDir;
use crate::safetensors::{PlannedTensor, ShardedWriter};

/// One module's factors in PEFT orientation: ΔW = B·A (scale 1).
#[derive(Debug, Clone)]
pub struct Factors {
    /// Module name (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// `[r, in]` row-major.
    pub a: Vec<f32>,
    /// `[out, r]` row-major.
    pub b: Vec<f32>,
    /// Rank.
    pub rank: usize,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
    /// An embedding (`lora_embedding_A/B` keys).
    pub embedding: bool,
}

/// Writes `modules` as an adapter into `out_dir`, with `config` as the template: the rank and alpha
/// are set so every module's scale is 1 (alpha = r, per-module patterns where ranks differ).
pub fn write_adapter(out_dir: &OutputDir, template: &AdapterConfig, modules: &[Factors], dtype: DType) -> Result<()> {
    if modules.is_empty() {
        return Err(MergeError::Mismatch("no module to write: the adapter would be empty".into()));
    }
    let r = modules.iter().map(|m| m.rank).max().unwrap_or(1);
    let mut config = template.clone();
    config.r = r;
    config.lora_alpha = r as f64;
    config.use_rslora = false;
    config.rank_pattern = BTreeMap::new();
    config.alpha_pattern = BTreeMap::new();
    for m in modules.iter().filter(|m| m.rank != r) {
        config.rank_pattern.insert(m.module.clone(), m.rank);
        config.alpha_pattern.insert(m.module.clone(), m.rank as f64);
    }
    let mut targets: Vec<String> =
        modules.iter().map(|m| m.module.rsplit('.').next().unwrap_or(&m.module).to_string()).collect();
    targets.sort();
    targets.dedup();
    config.target_modules = Some(TargetModules::Names(targets));
    config.save(&out_dir.path().join("adapter_config.json"))?;
    let key = |m: &Factors, ab: &str| {
        if m.embedding {
            format!("{PEFT_PREFIX}{}.lora_embedding_{ab}", m.module)
        } else {
            format!("{PEFT_PREFIX}{}.lora_{ab}.weight", m.module)
        }
    };
    let mut planned = Vec::new();
    let mut data = Vec::new();
    for m in modules {
        planned.push(PlannedTensor { name: key(m, "A"), dtype, shape: vec![m.rank, m.inp] });
        data.push(&m.a);
        planned.push(PlannedTensor { name: key(m, "B"), dtype, shape: vec![m.out, m.rank] });
        data.push(&m.b);
    }
    let writer = ShardedWriter::create(out_dir.path(), &planned, u64::MAX)?;
    for (i, (p, d)) in planned.iter().zip(data).enumerate() {
        let mut bytes = vec![0u8; p.byte_len()];
        encode_f32(d, p.dtype, &mut bytes);
        writer.write(i, 0, &bytes)?;
    }
    writer.finish()?;
    let from = out_dir.path().join("model.safetensors");
    let to = out_dir.path().join("adapter_model.safetensors");
    std::fs::rename(&from, &to).map_err(|e| MergeError::io(&to, e))?;
    Ok(())
}

/// Factors `B = U·√S`, `A = √S·Vᵀ` of a truncated SVD of a `[out, in]` update.
pub fn factors_from_svd(module: &str, svd: &crate::svd::Svd, out: usize, inp: usize, embedding: bool) -> Factors {
    let k = svd.s.len().max(1);
    let mut a = vec![0f32; k * inp];
    let mut b = vec![0f32; out * k];
    for (j, &s) in svd.s.iter().enumerate() {
        let r = s.sqrt();
        for (i, &x) in svd.v[j].iter().enumerate() {
            a[j * inp + i] = (r * x) as f32;
        }
        for (o, &x) in svd.u[j].iter().enumerate() {
            b[o * k + j] = (r * x) as f32;
        }
    }
    Factors { module: module.to_string(), a, b, rank: k, inp, out, embedding }
}
