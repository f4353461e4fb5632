//! `lora extract BASE FINETUNED -o OUT --rank R`: a PEFT adapter approximating FINETUNED − BASE.
//!
//! As mergekit's `mergekit-extract-lora`: for every 2-D linear weight that differs, the truncated
//! SVD of ΔW = W_ft − W_base (randomized, see [`crate::svd`]) gives B = U·√S and A = √S·Vᵀ with
//! alpha = r (scale 1). The captured energy Σₖ≤R σₖ² / ‖ΔW‖²_F is reported per module. Embeddings,
//! the LM head and 1-D tensors (norms, biases) are not factorized; those that differ are listed in the
//! report, since the adapter does not carry them.

use std::path::Path;

use crate::adapter::{AdapterConfig, factors_from_svd, write_adapter};
use crate::card;
use crate::dtype::{DType, decode_f32};
use crate::error::{MergeError, Result};
use crate::model_dir::ModelDir;
use crate::output_dir::OutputDir;
use crate::svd::{Dense, randomized_svd};

/// One extracted module.
#[derive(Debug, Clone)]
pub struct ExtractedModule {
    /// Module name.
    pub module: String,
    /// Rank written.
    pub rank: usize,
    /// Fraction of ‖ΔW‖²_F captured.
    pub energy: f64,
}

/// What `extract_adapter` did.
#[derive(Debug, Clone)]
pub struct ExtractReport {
    /// Factorized modules.
    pub modules: Vec<ExtractedModule>,
    /// Tensors that differ but are not in the adapter.
    pub skipped: Vec<String>,
}

fn read(m: &ModelDir, name: &str) -> Result<Vec<f32>> {
    let t = m.require(name)?;
    let mut v = vec![0f32; t.info.numel()];
    decode_f32(t.bytes(), t.info.dtype, &mut v);
    Ok(v)
}

/// Extracts a rank-`rank` adapter of `finetuned − base` into `out`.
pub fn extract_adapter(
    base: &Path,
    finetuned: &Path,
    out: &Path,
    rank: usize,
    seed: u64,
    force: bool,
) -> Result<ExtractReport> {
    crate::safetensors::catch_read_failures(|| extract_adapter_inner(base, finetuned, out, rank, seed, force))
}

fn extract_adapter_inner(
    base: &Path,
    finetuned: &Path,
    out: &Path,
    rank: usize,
    seed: u64,
    force: bool,
) -> Result<ExtractReport> {
    if rank == 0 {
        return Err(MergeError::Parameter("--rank must be at least 1".into()));
    }
    let (b, f) = (ModelDir::open(base)?, ModelDir::open(finetuned)?);
    let mut factors = Vec::new();
    let mut report = ExtractReport { modules: vec![], skipped: vec![] };
    let out_dir = OutputDir::create(out, force)?;
    for name in b.names() {
        let (tb, tf) = (
            b.require(name)?,
            f.get(name).ok_or_else(|| {
                MergeError::Mismatch(format!(
                    "tensor '{name}' of {} is missing from {}",
                    base.display(),
                    finetuned.display()
                ))
            })?,
        );
        if tb.info.shape != tf.info.shape {
            return Err(MergeError::Mismatch(format!(
                "tensor '{name}' is {:?} in {} but {:?} in {}",
                tb.info.shape,
                base.display(),
                tf.info.shape,
                finetuned.display()
            )));
        }
        if !tb.info.dtype.is_float() || tb.bytes() == tf.bytes() && tb.info.dtype == tf.info.dtype {
            continue;
        }
        let linear = tb.info.shape.len() == 2
            && name.ends_with(".weight")
            && !name.contains("embed_tokens")
            && !name.contains("lm_head");
        let delta: Vec<f32> = read(&f, name)?.iter().zip(read(&b, name)?).map(|(x, y)| x - y).collect();
        if delta.iter().all(|&x| x == 0.0) {
            continue;
        }
        if !linear {
            report.skipped.push(name.to_string());
            continue;
        }
        let (rows, cols) = (tb.info.shape[0], tb.info.shape[1]);
        let m = Dense { data: &delta, rows, cols };
        let total = m.frobenius2();
        let svd = randomized_svd(&m, rank.min(rows).min(cols), 10, 2, seed);
        let energy = svd.s.iter().map(|s| s * s).sum::<f64>() / total;
        let module = name.strip_suffix(".weight").expect("checked").to_string();
        let fct = factors_from_svd(&module, &svd, rows, cols, false);
        report.modules.push(ExtractedModule { module, rank: fct.rank, energy: energy.min(1.0) });
        factors.push(fct);
        tf.file.release(tf.info);
        tb.file.release(tb.info);
    }
    let mut config = AdapterConfig::new(rank, rank as f64, vec![]);
    config.base_model_name_or_path = Some(base.display().to_string());
    // The factors are written in the base's dtype, as PEFT saves adapters.
    let dtype: DType = crate::fold::model_dtype(&b);
    write_adapter(&out_dir, &config, &factors, dtype)?;
    out_dir.write_text(
        "README.md",
        &card::model_card(
            &base.display().to_string(),
            &format!("A rank-{rank} LoRA adapter extracted from `{}` with `lora extract` (truncated SVD of the weight differences).", finetuned.display()),
            &format!("Modules: {}. Tensors that differ but are not in the adapter: {}.\n", report.modules.len(), report.skipped.len()),
        ),
    )?;
    out_dir.commit()?;
    Ok(report)
}
