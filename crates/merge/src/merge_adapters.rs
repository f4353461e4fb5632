//! `lora merge-adapters`: several adapters combined into one, working on the true updates
//! ΔWᵢ = wᵢ·sᵢ·Bᵢ·Aᵢ.
//!
//! PEFT's `add_weighted_adapter` with `linear`/`ties` combines the A's and the B's separately, which
//! adds cross terms Bᵢ·Aⱼ that no adapter learned; here every method starts from the sum of the
//! updates themselves, so adapters of different ranks and alphas combine correctly:
//! - `cat`: stack the factors, B = [w₁s₁B₁ | w₂s₂B₂ | …], A = [A₁; A₂; …]. Exact, rank Σrᵢ.
//! - `svd`: the SVD of Σ ΔWᵢ from the factors (exact, no dense matrix), truncated to `rank`.
//! - `ties_svd` / `dare_svd`: TIES (magnitude, sign election) or DARE (random, rescaled) on the dense
//!   ΔWᵢ, as the task-vector methods do on models, then a randomized SVD truncated to `rank`.
//!
//! Each module's relative error ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapter::{Adapter, Factors, factors_from_svd, write_adapter};
use crate::card;
use crate::error::{MergeError, Result};
use crate::methods::{Keep, Sparsification, SparsifyParams, sparsify};
use crate::output_dir::OutputDir;
use crate::rng;
use crate::svd::{Dense, randomized_svd, svd_of_factors};

/// How adapters are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// Stacked factors (exact).
    Cat,
    /// Truncated SVD of the summed update.
    Svd,
    /// TIES on the updates, then truncated SVD.
    TiesSvd,
    /// DARE on the updates, then truncated SVD.
    DareSvd,
}

impl Combination {
    /// Parses `cat`, `svd`, `ties_svd` or `dare_svd`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cat" => Self::Cat,
            "svd" => Self::Svd,
            "ties_svd" => Self::TiesSvd,
            "dare_svd" => Self::DareSvd,
            _ => return None,
        })
    }
}

/// Options of `lora merge-adapters`.
#[derive(Debug, Clone)]
pub struct AdapterMergeOptions {
    /// The combination.
    pub method: Combination,
    /// One weight per adapter (default 1 each).
    pub weights: Option<Vec<f64>>,
    /// Output rank of the SVD methods (default: the largest input rank).
    pub rank: Option<usize>,
    /// Density of `ties_svd` / `dare_svd`.
    pub density: f64,
    /// Seed of `dare_svd` and of the randomized SVD.
    pub seed: u64,
    /// Replace an existing output folder.
    pub force: bool,
}

/// One module of the result.
#[derive(Debug, Clone)]
pub struct ModuleReport {
    /// Module name.
    pub module: String,
    /// Output rank.
    pub rank: usize,
    /// ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F (0 for `cat`).
    pub relative_error: f64,
}

struct Part {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    coef: f64,
}

/// Combines `adapters` into one adapter at `out`.
pub fn merge_adapters(adapters: &[PathBuf], out: &Path, opts: &AdapterMergeOptions) -> Result<Vec<ModuleReport>> {
    crate::safetensors::catch_read_failures(|| merge_adapters_inner(adapters, out, opts))
}

fn merge_adapters_inner(adapters: &[PathBuf], out: &Path, opts: &AdapterMergeOptions) -> Result<Vec<ModuleReport>> {
    let loaded = adapters.iter().map(Adapter::open).collect::<Result<Vec<_>>>()?;
    for a in &loaded {
        a.refuse_experts("merging adapters into one")?;
        a.refuse_dora("merging adapters into one")?;
    }
    let weights = opts.weights.clone().unwrap_or_else(|| vec![1.0; loaded.len()]);
    if weights.len() != loaded.len() {
        return Err(MergeError::Parameter(format!(
            "--weights has {} values for {} adapters",
            weights.len(),
            loaded.len()
        )));
    }
    for a in &loaded {
        if !a.token_rows.is_empty() {
            return Err(MergeError::Mismatch(format!(
                "{}: has trainable tokens (embedding rows trained in full); merge-adapters only combines LoRA \
                 factors: fold it with `lora merge BASE ADAPTER`",
                a.dir().display()
            )));
        }
        if let Some(name) = a.replacements.keys().next() {
            return Err(MergeError::Mismatch(format!(
                "{}: saves tensor '{name}' whole (modules_to_save); merge-adapters only combines LoRA factors",
                a.dir().display()
            )));
        }
    }
    // module → (out, in, embedding, parts)
    let mut modules: BTreeMap<String, (usize, usize, bool, Vec<Part>)> = BTreeMap::new();
    for (adapter, &w) in loaded.iter().zip(&weights) {
        let embedding_keys = !adapter.config.fan_in_fan_out;
        for m in adapter.modules.values() {
            let (o, i) = (m.b.shape[0], m.a.shape[1]);
            let e = modules.entry(m.module.clone()).or_insert((o, i, m.transposed && embedding_keys, vec![]));
            if (e.0, e.1) != (o, i) {
                return Err(MergeError::Mismatch(format!(
                    "module '{}' is [{o}, {i}] in {} but [{}, {}] in another adapter",
                    m.module,
                    adapter.dir().display(),
                    e.0,
                    e.1
                )));
            }
            e.3.push(Part {
                a: adapter.tensor_f32(&m.a),
                b: adapter.tensor_f32(&m.b),
                rank: m.rank,
                coef: w * m.scale,
            });
        }
    }
    let max_rank = modules.values().flat_map(|m| m.3.iter().map(|p| p.rank)).max().unwrap_or(1);
    let rank = opts.rank.unwrap_or(max_rank).max(1);
    let mut factors = Vec::new();
    let mut report = Vec::new();
    for (module, (o, i, embedding, parts)) in &modules {
        let (f, err) = match opts.method {
            Combination::Cat => (cat(module, *o, *i, *embedding, parts), 0.0),
            Combination::Svd => {
                let mut bcols = Vec::new();
                let mut arows = Vec::new();
                for p in parts {
                    for k in 0..p.rank {
                        bcols.push((0..*o).map(|r| p.b[r * p.rank + k] as f64 * p.coef).collect());
                        arows.push(p.a[k * i..(k + 1) * i].iter().map(|&x| x as f64).collect());
                    }
                }
                let svd = svd_of_factors(&bcols, &arows);
                let total: f64 = svd.s.iter().map(|s| s * s).sum();
                let kept: f64 = svd.s.iter().take(rank).map(|s| s * s).sum();
                let err = if total > 0.0 { ((total - kept).max(0.0) / total).sqrt() } else { 0.0 };
                (factors_from_svd(module, &svd.truncate(rank), *o, *i, *embedding), err)
            }
            Combination::TiesSvd | Combination::DareSvd => {
                let dense = sparse_combine(module, *o, *i, parts, opts)?;
                let m = Dense { data: &dense, rows: *o, cols: *i };
                let total = m.frobenius2();
                let svd = randomized_svd(&m, rank.min(*o).min(*i), 10, 2, opts.seed);
                let kept: f64 = svd.s.iter().map(|s| s * s).sum();
                let err = if total > 0.0 { ((total - kept).max(0.0) / total).sqrt() } else { 0.0 };
                (factors_from_svd(module, &svd, *o, *i, *embedding), err)
            }
        };
        report.push(ModuleReport { module: module.clone(), rank: f.rank, relative_error: err });
        factors.push(f);
    }
    let out_dir = OutputDir::create(out, opts.force)?;
    let dtype = loaded[0].dtype().unwrap_or(crate::DType::F32);
    write_adapter(&out_dir, &loaded[0].config, &factors, dtype)?;
    let list: Vec<String> =
        adapters.iter().zip(&weights).map(|(p, w)| format!("- `{}` (weight {w})", p.display())).collect();
    out_dir.write_text(
        "README.md",
        &card::model_card(
            loaded[0].config.base_model_name_or_path.as_deref().unwrap_or("(unknown)"),
            &format!(
                "A LoRA adapter combined from {} adapters with `lora merge-adapters` ({:?}).",
                loaded.len(),
                opts.method
            ),
            &format!("## Adapters\n\n{}\n", list.join("\n")),
        ),
    )?;
    out_dir.commit()?;
    Ok(report)
}

fn cat(module: &str, out: usize, inp: usize, embedding: bool, parts: &[Part]) -> Factors {
    let r: usize = parts.iter().map(|p| p.rank).sum();
    let mut a = Vec::with_capacity(r * inp);
    let mut b = vec![0f32; out * r];
    let mut off = 0;
    for p in parts {
        a.extend_from_slice(&p.a);
        for o in 0..out {
            for k in 0..p.rank {
                b[o * r + off + k] = (p.b[o * p.rank + k] as f64 * p.coef) as f32;
            }
        }
        off += p.rank;
    }
    Factors { module: module.to_string(), a, b, rank: r, inp, out, embedding }
}

/// TIES or DARE over the dense updates of one module, with mergekit's combination rule
/// (weights already inside the coefficients, so each update counts with weight 1 in the divisor).
fn sparse_combine(
    module: &str,
    out: usize,
    inp: usize,
    parts: &[Part],
    opts: &AdapterMergeOptions,
) -> Result<Vec<f32>> {
    let n = out * inp;
    let dense: Vec<Vec<f32>> = parts
        .iter()
        .map(|p| {
            let mut d = vec![0f32; n];
            for o in 0..out {
                for k in 0..p.rank {
                    let l = p.b[o * p.rank + k];
                    let row = &p.a[k * inp..(k + 1) * inp];
                    d[o * inp..(o + 1) * inp].iter_mut().zip(row).for_each(|(x, &y)| *x += l * y);
                }
            }
            d.iter_mut().for_each(|x| *x = (*x as f64 * p.coef) as f32);
            d
        })
        .collect();
    let (method, consensus, rescale) = match opts.method {
        Combination::TiesSvd => (Sparsification::Magnitude, true, false),
        _ => (Sparsification::Random, false, true),
    };
    let p = SparsifyParams { density: opts.density, gamma: 0.0, epsilon: 0.0, rescale };
    let sparse = dense
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let stream = rng::stream(opts.seed, module, i);
            sparsify(method, p, n, inp, stream, module, &|s, o: &mut [f32]| o.copy_from_slice(&d[s..s + o.len()]))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut merged = vec![0f32; n];
    for (j, m) in merged.iter_mut().enumerate() {
        let vals: Vec<f32> = dense
            .iter()
            .zip(&sparse)
            .map(|(d, s)| if matches!(s.keep, Keep::All) || s.keep.keeps(j, d[j]) { d[j] * s.scale } else { 0.0 })
            .collect();
        if consensus {
            let sign = if vals.iter().sum::<f32>() >= 0.0 { 1.0 } else { -1.0 };
            let kept: Vec<f32> = vals.into_iter().filter(|v| *v != 0.0 && v.signum() == sign).collect();
            *m = if kept.is_empty() { 0.0 } else { kept.iter().sum::<f32>() / kept.len() as f32 };
        } else {
            *m = vals.iter().sum();
        }
    }
    Ok(merged)
}
