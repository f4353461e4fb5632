//! PEFT LoRA adapters on a [`CausalLm`]: choosing target modules as PEFT does, initialising new
//! adapters, and reading / writing `adapter_config.json` + `adapter_model.safetensors`
//! (keys `base_model.model.<module path>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]).

pub mod base_init;
pub mod config;
pub mod experts;
pub mod gguf;
pub mod tokens;

pub use gguf::load_gguf_adapter;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regex::Regex;

use crate::adapter::base_init::{InitialFactors, MovingInit, move_bases};
use crate::adapter::config::{AdapterConfig, TargetModules};
use crate::error::{CoreError, Result};
use crate::io::safetensors_write::{StoredDtype, write_safetensors};
use crate::network::config::{Relayout, expert_path, layer_index};
use crate::network::dora::Dora;
use crate::network::linear::Linear;
use crate::network::lora::{LoraAdapter, lora_scaling};
use crate::network::model::CausalLm;
use lora_formats::safetensors::SafetensorsFile;

/// Prefix PEFT puts before module paths in adapter files.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// How new adapter matrices are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// PEFT's default: A kaiming-uniform (a = √5), i.e. U(−1/√in, 1/√in); B zero.
    KaimingUniform,
    /// A ~ N(0, (1/r)²) as PEFT's `init_lora_weights="gaussian"` (std 1/r); B zero.
    Gaussian,
    /// PiSSA or OLoRA: A₀, B₀ from the base weight, which keeps the residual ([`base_init`]).
    Moving(MovingInit),
}

/// Which modules get adapters, resolved against a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// Scaling numerator.
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    pub dropout: f64,
    /// Target modules.
    pub targets: TargetModules,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// Initialisation.
    pub init: LoraInit,
    /// Restrict to these decoder layers.
    pub layers_to_transform: Option<Vec<usize>>,
    /// DoRA (PEFT's `use_dora`): a magnitude per output row, initialised to the rows' norms.
    pub use_dora: bool,
}

/// Module paths selected by `targets` (and `layers`), in model order; an error lists what exists
/// when nothing matches.
pub fn select_targets(model: &CausalLm, targets: &TargetModules, layers: Option<&[usize]>) -> Result<Vec<String>> {
    let all: Vec<String> = model.linear_modules().into_iter().map(|(p, _)| p).collect();
    select_paths(&all, targets, layers)
}

/// Whether a module path is an MoE layer's router (`mlp.gate`).
pub fn is_router(path: &str) -> bool {
    path.ends_with(".mlp.gate")
}

/// Whether a module path is a linear layer an MoE model keeps in full precision whatever the base's
/// quantization: a router, or Qwen3.5-MoE's shared-expert gate.
pub fn stays_full_precision(path: &str) -> bool {
    is_router(path) || path.ends_with(".mlp.shared_expert_gate")
}

/// The projection of a routed expert a module path names (`gate_up_proj` or `down_proj`), if it is one.
pub fn expert_projection(path: &str) -> Option<&str> {
    expert_path(path).map(|e| e.projection)
}

/// The rank an adapter of recipe rank `r` gets on module `path`: 2r on an expert's `gate_up_proj`
/// (with alpha 2α, the same scale), as PEFT converts a rank-r LoRA on gate_proj and on up_proj for
/// transformers 5's fused experts; r elsewhere.
pub fn rank_for(path: &str, r: usize) -> usize {
    if expert_projection(path) == Some("gate_up_proj") { 2 * r } else { r }
}

/// Whether target name `n` reaches expert projection `projection`: as PEFT converts them for
/// transformers 5's fused experts, `gate_proj` and `up_proj` (Mixtral's `w1`, `w3`) name the one
/// `gate_up_proj`, `down_proj` (`w2`) the `down_proj`.
fn names_expert(n: &str, projection: &str) -> bool {
    match projection {
        "gate_up_proj" => ["gate_up_proj", "gate_proj", "up_proj", "w1", "w3"].contains(&n),
        "down_proj" => ["down_proj", "w2"].contains(&n),
        _ => false,
    }
}

/// [`select_targets`] over module paths (in model order), without a model.
///
/// On a mixture-of-experts model (its paths hold `mlp.experts.`), names and `all-linear` reach
/// the routed experts as PEFT does for transformers 5: `gate_proj` and `up_proj` the experts'
/// `gate_up_proj`, `down_proj` theirs; the router (`mlp.gate`) only when named (`gate`), never by
/// `all-linear`; and, as PEFT, not the dense MLP of the layers without experts. A regex matches the
/// paths as they are.
pub fn select_paths(all: &[String], targets: &TargetModules, layers: Option<&[usize]>) -> Result<Vec<String>> {
    let moe = all.iter().any(|p| expert_projection(p).is_some());
    let dense_mlp =
        move |path: &str| moe && [".mlp.gate_proj", ".mlp.up_proj", ".mlp.down_proj"].iter().any(|s| path.ends_with(s));
    if let TargetModules::Names(names) = targets
        && moe
    {
        let has = |n: &str| names.iter().any(|x| x == n);
        if has("gate_proj") != has("up_proj") {
            return Err(CoreError::Invalid(
                "on this mixture-of-experts model gate_proj and up_proj are one projection of each expert \
                 (gate_up_proj, as transformers and PEFT hold it): name both, or gate_up_proj"
                    .into(),
            ));
        }
    }
    let matches: Box<dyn Fn(&str) -> bool> = match targets {
        TargetModules::Pattern(p) if p == "all-linear" => {
            Box::new(move |path: &str| path != "lm_head" && !is_router(path) && !dense_mlp(path))
        }
        TargetModules::Pattern(p) => {
            let re = Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| CoreError::Invalid(format!("target_modules regex '{p}' is invalid: {e}")))?;
            Box::new(move |path: &str| re.is_match(path))
        }
        TargetModules::Names(names) => {
            let names = names.clone();
            Box::new(move |path: &str| match expert_projection(path) {
                Some(projection) => names.iter().any(|n| names_expert(n, projection)),
                None => !dense_mlp(path) && names.iter().any(|n| path == n || path.ends_with(&format!(".{n}"))),
            })
        }
    };
    let selected: Vec<String> = all
        .iter()
        .filter(|p| matches(p))
        .filter(|p| match layers {
            Some(ls) => layer_index(p).is_some_and(|i| ls.contains(&i)),
            None => true,
        })
        .cloned()
        .collect();
    if selected.is_empty() {
        let names: BTreeSet<&str> = all.iter().map(|p| p.rsplit('.').next().unwrap_or(p)).collect();
        let what = match targets {
            TargetModules::Names(n) => format!("{n:?}"),
            TargetModules::Pattern(p) => format!("'{p}'"),
        };
        return Err(CoreError::Invalid(format!(
            "target modules {what}{} match no module; available: {}",
            layers.map(|l| format!(" in layers {l:?}")).unwrap_or_default(),
            names.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(selected)
}

/// Refuses targets that adapt some of a layer's experts but not all: PEFT's adapter on an expert
/// projection is one parameter over every expert.
fn check_whole_experts(model: &CausalLm, targets: &[String]) -> Result<()> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in targets {
        if let Some(e) = expert_path(t) {
            *counts.entry((e.layer.to_string(), e.projection.to_string())).or_default() += 1;
        }
    }
    let experts = model.config.moe.as_ref().map_or(0, |m| m.num_experts);
    match counts.iter().find(|(_, n)| **n != experts) {
        Some(((layer, p), n)) => Err(CoreError::Invalid(format!(
            "the targets reach {n} of the {experts} experts' {p} in {layer}: adapters on experts cover every \
             expert of a layer (PEFT's target_parameters), so a pattern must match all or none"
        ))),
        None => Ok(()),
    }
}

/// Attaches freshly initialised adapters; returns the module paths that got one. `trainable` makes
/// the adapter tensors autodiff leaves that require gradients (the base stays constant).
pub fn attach_new(model: &mut CausalLm, spec: &LoraSpec, seed: u64, trainable: bool) -> Result<Vec<String>> {
    attach_new_moving(model, spec, seed, trainable).map(|(targets, _)| targets)
}

/// [`attach_new`], also returning the factors each adapter started from when the start moves the
/// base (PiSSA, OLoRA: [`LoraInit::Moving`]; empty otherwise), which saving the run's adapter
/// against the original base needs ([`save_adapter_converted`]).
pub fn attach_new_moving(
    model: &mut CausalLm,
    spec: &LoraSpec,
    seed: u64,
    trainable: bool,
) -> Result<(Vec<String>, Vec<InitialFactors>)> {
    if spec.r == 0 {
        return Err(CoreError::Invalid("LoRA rank r must be at least 1".into()));
    }
    let targets = select_targets(model, &spec.targets, spec.layers_to_transform.as_deref())?;
    check_whole_experts(model, &targets)?;
    if spec.dropout != 0.0 && targets.iter().any(|t| expert_projection(t).is_some()) {
        return Err(CoreError::Invalid(format!(
            "LoRA dropout ({}) must be 0 when the routed experts are targeted: PEFT's adapters on them \
             (target_parameters) have no dropout",
            spec.dropout
        )));
    }
    if spec.use_dora && targets.iter().any(|t| expert_projection(t).is_some()) {
        return Err(CoreError::Invalid(
            "DoRA (use_dora) does not apply to the routed experts: PEFT's adapters on them (target_parameters) \
             have no magnitude; leave the experts out of the targets"
                .into(),
        ));
    }
    if let LoraInit::Moving(m) = spec.init
        && (spec.use_dora || targets.iter().any(|t| expert_projection(t).is_some()))
    {
        return Err(CoreError::Invalid(format!(
            "init {} moves the base and saves a plain rank-2r LoRA against the original one, which \
             cannot carry DoRA's magnitudes nor the routed experts' adapters",
            m.name()
        )));
    }
    let device = model.device();
    if let LoraInit::Moving(m) = spec.init {
        let scaling = lora_scaling(spec.alpha, spec.r, spec.use_rslora);
        let layers: Vec<(String, &mut Linear, u64)> = model
            .linear_modules_mut()
            .into_iter()
            .enumerate()
            .filter(|(_, (path, _))| targets.contains(path))
            .map(|(k, (path, lin))| (path, lin, seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        let paths: Vec<String> = layers.iter().map(|(p, _, _)| p.clone()).collect();
        let factors = move_bases(layers, m, spec.r, scaling, &device)?;
        let mut linears = model.linear_modules_mut();
        let mut initial = Vec::new();
        for (path, (a, b)) in paths.into_iter().zip(factors) {
            let lin = &mut linears.iter_mut().find(|(p, _)| *p == path).expect("a target").1;
            let (d_in, d_out) = lin.dims();
            let adapter =
                make_adapter(a.clone(), b.clone(), spec.r, d_in, d_out, scaling, spec.dropout, &device, trainable);
            lin.lora.push(adapter);
            initial.push(InitialFactors { module: path, lora_a: a, lora_b: b });
        }
        return Ok((targets, initial));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for (path, lin) in model.linear_modules_mut() {
        if !targets.contains(&path) {
            continue;
        }
        // Rank 2r on an expert's gate_up_proj comes with alpha 2α: the same scale.
        let r = rank_for(&path, spec.r);
        let scaling = lora_scaling(spec.alpha * (r / spec.r) as f64, r, spec.use_rslora);
        let spec = &LoraSpec { r, ..spec.clone() };
        let (d_in, d_out) = lin.dims();
        let a: Vec<f32> = match spec.init {
            LoraInit::Moving(_) => unreachable!("attached above"),
            LoraInit::KaimingUniform => {
                let bound = 1.0 / (d_in as f64).sqrt();
                (0..spec.r * d_in).map(|_| rng.random_range(-bound..bound) as f32).collect()
            }
            LoraInit::Gaussian => {
                // Box-Muller: N(0, 1) scaled to std 1/r.
                let std = 1.0 / spec.r as f64;
                (0..spec.r * d_in)
                    .map(|_| {
                        let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                    })
                    .collect()
            }
        };
        let b = vec![0.0f32; d_out * spec.r];
        let mut adapter = make_adapter(a, b, spec.r, d_in, d_out, scaling, spec.dropout, &device, trainable);
        if spec.use_dora {
            let dora = Dora::init(&lin.weight, &adapter.lora_a, &adapter.lora_b, scaling, &device, trainable);
            adapter.dora = Some(dora);
        }
        lin.lora.push(adapter);
    }
    Ok((targets, Vec::new()))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn make_adapter(
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    d_in: usize,
    d_out: usize,
    scaling: f64,
    dropout: f64,
    device: &Device,
    trainable: bool,
) -> LoraAdapter {
    let mut lora_a = Tensor::<2>::from_data(TensorData::new(a, [r, d_in]), device);
    let mut lora_b = Tensor::<2>::from_data(TensorData::new(b, [d_out, r]), device);
    if trainable {
        lora_a = lora_a.autodiff().require_grad();
        lora_b = lora_b.autodiff().require_grad();
    }
    LoraAdapter { lora_a, lora_b, scaling, dropout, training: false, dropout_seed: 0, dora: None }
}

/// Reads an adapter folder and attaches it to `model` with an extra `weight` on its scaling.
/// Every tensor of the file must find its module and fit its shape.
pub fn load_adapter(model: &mut CausalLm, dir: &Path, weight: f64, trainable: bool) -> Result<AdapterConfig> {
    load_adapter_mapped(model, dir, weight, trainable).map(|(cfg, _)| cfg)
}

/// [`load_adapter`], also mapping the module names of an adapter made on the other checkpoint form
/// of the base's architecture (Qwen3.5's text form against its Hub form, [`Relayout`]) when every
/// one of its modules exists there: returns the mapping applied, for the caller to say so.
pub fn load_adapter_mapped(
    model: &mut CausalLm,
    dir: &Path,
    weight: f64,
    trainable: bool,
) -> Result<(AdapterConfig, Option<Relayout>)> {
    if lora_formats::gguf::is_gguf_file(dir) {
        return load_gguf_adapter(model, dir, weight, trainable).map(|cfg| (cfg, None));
    }
    let cfg_path = dir.join("adapter_config.json");
    let cfg = AdapterConfig::load(&cfg_path)?;
    cfg.check_loadable(&cfg_path)?;
    if cfg.use_dora && weight != 1.0 {
        return Err(CoreError::config(
            dir,
            "a DoRA adapter (use_dora) applies at weight 1 only (its magnitudes set the rows' norms)",
        ));
    }
    let path = dir.join("adapter_model.safetensors");
    if !path.is_file() {
        if dir.join("adapter_model.bin").is_file() {
            return Err(CoreError::config(
                dir,
                "only adapter_model.bin (pickle) found; lora reads adapter_model.safetensors",
            ));
        }
        return Err(CoreError::config(dir, "no adapter_model.safetensors in this folder"));
    }
    let file = SafetensorsFile::open(&path)?;
    // Group the tensors by module path.
    let mut modules: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    // DoRA's magnitude vectors (`...<module>.lora_magnitude_vector`), by module.
    let mut magnitudes: BTreeMap<String, String> = BTreeMap::new();
    let mut token_rows = Vec::new();
    for name in file.tensors().keys() {
        if name.ends_with(tokens::TOKENS_SUFFIX) || name.ends_with(tokens::TABLE_SUFFIX) {
            token_rows.push(name.clone());
            continue;
        }
        let inner = name.strip_prefix(PEFT_PREFIX).unwrap_or(name);
        if let Some(module) = [".lora_magnitude_vector", ".lora_magnitude_vector.default.weight"]
            .iter()
            .find_map(|s| inner.strip_suffix(s))
            .filter(|_| cfg.use_dora)
        {
            magnitudes.insert(module.to_string(), name.clone());
            continue;
        }
        // PEFT writes `...lora_A.weight`; in-memory state dicts have `...lora_A.default.weight`.
        let parsed = [".lora_A.weight", ".lora_A.default.weight"]
            .iter()
            .find_map(|s| inner.strip_suffix(s).map(|m| (m, true)))
            .or_else(|| {
                [".lora_B.weight", ".lora_B.default.weight"]
                    .iter()
                    .find_map(|s| inner.strip_suffix(s).map(|m| (m, false)))
            });
        let Some((module, is_a)) = parsed else {
            return Err(CoreError::safetensors(
                path.clone(),
                format!("tensor '{name}' is not a lora_A/lora_B weight (LoRA on embeddings is not supported)"),
            ));
        };
        let entry = modules.entry(module.to_string()).or_default();
        if is_a { entry.0 = Some(name.clone()) } else { entry.1 = Some(name.clone()) }
    }
    if modules.is_empty() {
        return Err(CoreError::safetensors(path, "holds no LoRA tensors"));
    }
    // Every module's two factors, checked once for whichever attaches it.
    let mut modules: BTreeMap<String, (String, String)> = modules
        .into_iter()
        .map(|(module, pair)| match pair {
            (Some(a), Some(b)) => Ok((module, (a, b))),
            _ => {
                Err(CoreError::safetensors(path.clone(), format!("module '{module}' has only one of lora_A / lora_B")))
            }
        })
        .collect::<Result<_>>()?;
    // Token rows first: an adapter for a grown vocabulary grows the model before its factors (an
    // untied head's among them) are checked against it.
    if !token_rows.is_empty() {
        tokens::attach_from_file(model, dir, &file, &token_rows, &cfg, trainable)?;
    }
    experts::attach_from_file(model, &file, &mut modules, &cfg, weight, trainable)?;
    let device = model.device();
    let paths: Vec<String> = model.linear_modules().into_iter().map(|(p, _)| p).collect();
    let relayout = Relayout::find(modules.keys().map(String::as_str), |m| paths.iter().any(|p| p == m));
    let mut linears = model.linear_modules_mut();
    for (module, (a_name, b_name)) in &modules {
        let target = relayout.as_ref().map_or_else(|| module.clone(), |r| r.apply(module));
        let Some((_, lin)) = linears.iter_mut().find(|(p, _)| *p == target) else {
            return Err(CoreError::Invalid(format!(
                "{}: adapter module '{module}' does not exist in the base model (is this adapter for another architecture?)",
                path.display()
            )));
        };
        let (d_in, d_out) = lin.dims();
        let a_shape = &file.info(a_name).expect("listed").shape;
        let b_shape = &file.info(b_name).expect("listed").shape;
        let r = a_shape.first().copied().unwrap_or(0);
        if a_shape != &vec![r, d_in] || b_shape != &vec![d_out, r] || r == 0 {
            return Err(CoreError::ShapeMismatch {
                path: path.clone(),
                name: format!("{a_name} / {b_name}"),
                expected: vec![d_out, r, d_in],
                found: [b_shape.as_slice(), a_shape.as_slice()].concat(),
            });
        }
        let (a, _) = file.to_f32(a_name)?;
        let (b, _) = file.to_f32(b_name)?;
        if lin.lora.iter().any(|a| a.dora.is_some()) {
            return Err(CoreError::Invalid(format!(
                "{}: module '{module}' already has a DoRA adapter, which must be its only one",
                path.display()
            )));
        }
        let scaling = cfg.scale_for(module, r) * weight;
        let mut adapter = make_adapter(a, b, r, d_in, d_out, scaling, cfg.lora_dropout, &device, trainable);
        if cfg.use_dora {
            let m_name = magnitudes.remove(module).ok_or_else(|| {
                CoreError::safetensors(path.clone(), format!("DoRA module '{module}' has no lora_magnitude_vector"))
            })?;
            let (m, m_shape) = file.to_f32(&m_name)?;
            if m_shape != [d_out] || !lin.lora.is_empty() {
                return Err(CoreError::safetensors(
                    path.clone(),
                    format!(
                        "'{m_name}': magnitude {m_shape:?} for a layer of {d_out} outputs, or not its only adapter"
                    ),
                ));
            }
            let mut dora = Dora::new(m, &lin.weight, &device, trainable);
            if !trainable {
                // For inference g = m / ‖W + s·B·A‖ stays as it is.
                dora.fix(&lin.weight, &adapter.lora_a, &adapter.lora_b, adapter.scaling);
            }
            adapter.dora = Some(dora);
        }
        lin.lora.push(adapter);
    }
    if let Some(m) = magnitudes.keys().next() {
        return Err(CoreError::safetensors(path, format!("magnitude vector '{m}' has no lora_A / lora_B")));
    }
    Ok((cfg, relayout))
}

/// Writes the adapters attached to `model` (the first adapter of each layer) as a PEFT folder.
/// Files are written under temporary names and renamed, so a reader never sees half a file.
pub fn save_adapter(model: &CausalLm, dir: &Path, config: &AdapterConfig, dtype: StoredDtype) -> Result<()> {
    save_adapter_converted(model, dir, config, dtype, &[])
}

/// [`save_adapter`] of a run whose start moved the base (`initial`: the factors it started from,
/// [`attach_new_moving`]): each such module's adapter is written as PEFT converts it, the plain LoRA
/// [A; A₀], [B, −B₀] of rank 2r that applies to the original base, with `config` converted alike
/// ([`base_init::converted_config`]). With no initial factors, the adapter as it is.
pub fn save_adapter_converted(
    model: &CausalLm,
    dir: &Path,
    config: &AdapterConfig,
    dtype: StoredDtype,
    initial: &[InitialFactors],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let mut tensors = Vec::new();
    // Routed experts: one flattened pair per layer and projection, in PEFT's layout.
    let flat = experts::flatten(model)?;
    let adapted: BTreeSet<(String, &str)> = flat.iter().map(|(l, p, _)| (l.clone(), *p)).collect();
    for (layer, projection, f) in flat {
        let has = |p: &str| adapted.contains(&(layer.clone(), p));
        let (gate_up, down) = experts::peft_modules(&layer, has("gate_up_proj"), has("down_proj"));
        let module = if projection == "gate_up_proj" { gate_up } else { down };
        let rows = f.experts * f.r;
        tensors.push((format!("{PEFT_PREFIX}{module}.lora_A.weight"), vec![rows, f.d_in], f.a));
        tensors.push((format!("{PEFT_PREFIX}{module}.lora_B.weight"), vec![f.d_out, rows], f.b));
    }
    for (path, lin) in model.linear_modules() {
        if expert_projection(&path).is_some() {
            continue;
        }
        if let Some(a) = lin.lora.first() {
            let host = |t: &Tensor<2>| -> Result<(Vec<f32>, Vec<usize>)> {
                let dims = t.dims().to_vec();
                Ok((crate::kernels::host::to_f32_vec(t.clone().inner())?, dims))
            };
            let (mut av, mut ad) = host(&a.lora_a)?;
            let (mut bv, mut bd) = host(&a.lora_b)?;
            if let Some(init) = initial.iter().find(|i| i.module == path) {
                // [A; A₀] stacks rows; [B, −B₀] joins each row of B with the negated row of B₀.
                av.extend_from_slice(&init.lora_a);
                ad[0] *= 2;
                let r = bd[1];
                bv = bv
                    .chunks(r)
                    .zip(init.lora_b.chunks(r))
                    .flat_map(|(b, b0)| b.iter().copied().chain(b0.iter().map(|x| -x)))
                    .collect();
                bd[1] *= 2;
            }
            tensors.push((format!("{PEFT_PREFIX}{path}.lora_A.weight"), ad, av));
            tensors.push((format!("{PEFT_PREFIX}{path}.lora_B.weight"), bd, bv));
            if let Some(d) = &a.dora {
                // PEFT's key for DoRA's magnitude has no `.weight`; the vector is 1-D.
                let (mv, _) = host(&d.magnitude)?;
                tensors.push((format!("{PEFT_PREFIX}{path}.lora_magnitude_vector"), vec![mv.len()], mv));
            }
        }
    }
    tensors.extend(tokens::saved(model)?);
    if tensors.is_empty() {
        return Err(CoreError::Invalid("the model has no adapter to save".into()));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, dtype, &meta)?;
    let config = if initial.is_empty() { config.clone() } else { base_init::converted_config(config) };
    let json = serde_json::to_string_pretty(&config).expect("config serializes");
    crate::io::safetensors_write::write_atomic(&dir.join("adapter_config.json"), json.as_bytes())
}

/// Folds every attached adapter into its base weight (W ← W + Σ s·B·A; a DoRA adapter's
/// W ← g ⊙ (W + s·B·A), PEFT's merge) and detaches them.
pub fn merge_into_base(model: &mut CausalLm) {
    for (_, lin) in model.linear_modules_mut() {
        if lin.lora.is_empty() {
            continue;
        }
        // A bf16 or NF4 base is folded in f32: W' = upcast(W) + Σ s·B·A, kept dense in f32.
        let device = lin.lora[0].lora_a.device();
        let mut w = lin.weight.to_f32(&device);
        for a in lin.lora.drain(..) {
            w = w + a.delta().inner();
            if let Some(d) = &a.dora {
                let g = d.scale(&lin.weight, &a.lora_a, &a.lora_b, a.scaling).inner(); // [1, out]
                w = w * g.transpose();
            }
        }
        lin.weight = crate::network::base_weight::BaseWeight::Dense(w);
    }
}
