//! `lora merge --config merge.toml -o OUT`: model merges, streamed tensor by tensor.
//!
//! 1) open every model (memory-mapped; `folder+adapter` models fold their adapter on the fly);
//! 2) check that all models have the same tensors with the same shapes;
//! 3) plan the output (names, dtypes, shapes, shards) and write the headers;
//! 4) per tensor: resolve parameters (filters, layer gradients), let the method gather whole-tensor
//!    statistics, then compute and write the tensor chunk by chunk on all cores;
//! 5) copy config, tokenizer and card, and move the folder into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapter::Adapter;
use crate::card;
use crate::dtype::DType;
use crate::dtype_policy::{DtypePolicy, dominant_dtype, spec_of};
use crate::error::{MergeError, Result};
use crate::fold::FoldPlan;
use crate::methods::{self, Job, Resolved};
use crate::model_dir::{ModelDir, layer_index};
use crate::output_dir::OutputDir;
use crate::recipe::{MergeConfig, ModelRef, Setting, Syntax};
use crate::safetensors::{PlannedTensor, ShardedWriter};
use crate::source::Source;
use crate::stream;

/// Options of a model merge beyond the configuration.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Largest shard in bytes.
    pub shard_size: u64,
    /// Replace an existing output folder.
    pub force: bool,
    /// Write NaN/inf results instead of failing.
    pub allow_nonfinite: bool,
    /// Overrides the configuration's `random_seed`.
    pub seed: Option<u64>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self { shard_size: 5_000_000_000, force: false, allow_nonfinite: false, seed: None }
    }
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// The output folder.
    pub out: PathBuf,
    /// The method.
    pub method: String,
    /// Tensors written.
    pub tensors: usize,
    /// The dtype most of the output's values have (what config.json says).
    pub dtype: DType,
    /// Tensors `out_dtype` left in f32, as their architecture keeps them.
    pub kept_f32: Vec<String>,
    /// Bytes of input tensor data read.
    pub bytes_read: u64,
    /// Per vocabulary tensor of a model whose vocabulary differs from the base's
    /// (`tokenizer_source: base`): what was dropped or taken from the base.
    pub vocabulary: Vec<String>,
}

/// An opened model of the merge.
struct Input {
    label: String,
    dir: ModelDir,
    adapter: Option<Adapter>,
}

impl Input {
    fn open(r: &ModelRef, label: &str) -> Result<Self> {
        let dir = ModelDir::open(&r.path)?;
        let adapter = r.adapter.as_ref().map(Adapter::open).transpose()?;
        if let Some(a) = &adapter {
            a.refuse_experts("a merge recipe's model+adapter input")?;
            if a.tokenizer_size().is_some() {
                return Err(MergeError::Mismatch(format!(
                    "{}: trained with added tokens (it carries its tokenizer), which a merge recipe's \
                     model+adapter input does not grow the vocabulary for yet; fold it first (`lora merge BASE \
                     ADAPTER -o FOLDED`) and name FOLDED",
                    a.dir().display()
                )));
            }
        }
        Ok(Self { label: label.to_string(), dir, adapter })
    }
}

/// Runs the merge described by the TOML file at `config_path` into `out`.
pub fn merge_models(config_path: &Path, out: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    crate::safetensors::catch_read_failures(|| merge_models_inner(config_path, out, opts))
}

fn merge_models_inner(config_path: &Path, out: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    let (config, text) = MergeConfig::load(config_path)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    merge_with_config(&config, dir, out, opts, (Syntax::of(config_path), &text))
}

/// Runs the merge described by `config` (relative paths resolved against `config_dir` when they do
/// not exist from the working directory) into `out`; the recipe's text (in its syntax) is kept
/// beside the output and goes into the model card.
pub fn merge_with_config(
    config: &MergeConfig,
    config_dir: &Path,
    out: &Path,
    opts: &MergeOptions,
    (syntax, recipe_text): (Syntax, &str),
) -> Result<MergeReport> {
    let method = methods::method(&config.merge_method).ok_or_else(|| {
        MergeError::Parameter(format!(
            "unknown merge_method '{}'; lora knows {}",
            config.merge_method,
            methods::METHODS.join(", ")
        ))
    })?;
    let specs = method.params();
    // Unknown parameter names are typos, not options: say which method takes what.
    let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
    let check = |params: &BTreeMap<String, Setting>, whose: &str| -> Result<()> {
        for k in params.keys() {
            if !known.contains(&k.as_str()) {
                return Err(MergeError::Parameter(format!(
                    "{whose}: '{}' takes no parameter '{k}' (it takes {})",
                    method.name(),
                    known.join(", ")
                )));
            }
        }
        Ok(())
    };
    check(&config.parameters, "[parameters]")?;
    // 1) open the models
    let base_ref = config.base_model.as_deref().map(|s| ModelRef::parse(s, config_dir));
    let mut entries = Vec::new();
    for m in &config.models {
        check(&m.parameters, &format!("model '{}'", m.model))?;
        let r = ModelRef::parse(&m.model, config_dir);
        if method.needs_base() && base_ref.as_ref() == Some(&r) {
            continue; // the base listed among the models carries no task vector
        }
        entries.push((m, r));
    }
    if method.needs_base() && base_ref.is_none() {
        return Err(MergeError::Parameter(format!("merge_method '{}' needs a base_model", method.name())));
    }
    let (lo, hi) = method.model_count();
    if entries.len() < lo || entries.len() > hi {
        return Err(MergeError::Parameter(format!(
            "merge_method '{}' takes {} models besides the base, got {}",
            method.name(),
            if lo == hi { lo.to_string() } else { format!("at least {lo}") },
            entries.len()
        )));
    }
    let base_label = config.base_model.as_deref().unwrap_or("base");
    let base = match &base_ref {
        Some(r) if method.needs_base() => Some(Input::open(r, base_label)?),
        _ => None,
    };
    // mergekit's `tokenizer_source: base`: the output has the base's vocabulary, so models with
    // another vocabulary size are read at the base's rows (opt-in: otherwise a mismatch is an error).
    let vocab_from_base = config.tokenizer_source.as_deref() == Some("base");
    let fill = match (&base_ref, vocab_from_base) {
        (Some(r), true) if base.is_none() => Some(Input::open(r, base_label)?),
        (None, true) => {
            return Err(MergeError::Parameter(
                "tokenizer_source: base needs a base_model (the vocabulary the output keeps)".into(),
            ));
        }
        _ => None,
    };
    let models = entries.iter().map(|(m, r)| Input::open(r, &m.model)).collect::<Result<Vec<_>>>()?;
    let base_plan = base.as_ref().map(fold_plan).transpose()?;
    let fill_plan = fill.as_ref().map(fold_plan).transpose()?;
    let plans = models.iter().map(fold_plan).collect::<Result<Vec<_>>>()?;
    let reference = base.as_ref().or(fill.as_ref()).unwrap_or(&models[0]);
    // 2) same tensors, same shapes (vocabulary rows apart, with tokenizer_source: base)
    let mut vocabulary = Vec::new();
    for m in base.iter().chain(models.iter()) {
        vocabulary.extend(check_same_tensors(reference, m, vocab_from_base)?);
    }
    // A slice source must span every layer: lora merges whole models.
    let layers = reference.dir.num_layers();
    for m in &config.models {
        if let Some([start, end]) = m.layer_range
            && (start != 0 || end != layers)
        {
            return Err(MergeError::Parameter(format!(
                "model '{}': layer_range [{start}, {end}] is not every layer ([0, {layers}]); lora merges \
                 whole models, not layer slices",
                m.model
            )));
        }
    }
    // 3) plan the output
    let dtype_name = config.out_dtype.as_deref().or(config.dtype.as_deref());
    let target = dtype_name
        .map(|s| {
            DType::from_user(s)
                .ok_or_else(|| MergeError::Parameter(format!("unknown dtype '{s}'; use float32, float16 or bfloat16")))
        })
        .transpose()?;
    // Without out_dtype, each tensor in the reference model's stored dtype; with it, the float tensors
    // converted except those the architecture keeps in f32.
    let policy = DtypePolicy::new(target, spec_of(reference.dir.config()));
    let names: Vec<&str> = reference.dir.names().collect();
    let planned: Vec<PlannedTensor> = names
        .iter()
        .map(|n| {
            let t = reference.dir.get(n).expect("listed");
            PlannedTensor { name: n.to_string(), dtype: policy.dtype_of(n, t.info.dtype), shape: t.info.shape.clone() }
        })
        .collect();
    let kept_f32 = policy.kept_in_f32(names.iter().map(|n| (*n, reference.dir.get(n).expect("listed").info.dtype)));
    let dtype = dominant_dtype(planned.iter().map(|p| (p.dtype, p.shape.iter().product())));
    let out_dir = OutputDir::create(out, opts.force)?;
    let writer = ShardedWriter::create(out_dir.path(), &planned, opts.shard_size)?;
    let num_layers = reference.dir.num_layers();
    let seed = opts.seed.or(config.random_seed).unwrap_or(0);
    let model_settings: Vec<(&str, &BTreeMap<String, Setting>)> =
        entries.iter().map(|(m, _)| (m.model.as_str(), &m.parameters)).collect();
    let mut bytes_read = 0u64;
    // 4) tensor by tensor
    for (i, p) in planned.iter().enumerate() {
        let rt = reference.dir.get(&p.name).expect("listed");
        if !rt.info.dtype.is_float() {
            stream::copy_tensor(&writer, i, rt)?;
            continue;
        }
        // mergekit: layer tensors at t = layer / (layers − 1), everything else at t = 0
        let t = match layer_index(&p.name) {
            Some(l) if num_layers > 1 => l as f64 / (num_layers - 1) as f64,
            Some(_) => 1.0,
            None => 0.0,
        };
        let params = Resolved::resolve(&specs, &config.parameters, &model_settings, &p.name, t)?;
        let base_src = base_plan.as_ref().map(|b| b.source(&p.name)).transpose()?;
        let srcs = plans
            .iter()
            .map(|b| {
                let s = b.source(&p.name)?;
                if s.shape() == p.shape.as_slice() {
                    return Ok(s);
                }
                // A vocabulary tensor of another size (allowed by check_same_tensors): the base's rows.
                let fill = base_plan.as_ref().or(fill_plan.as_ref()).expect("a base with tokenizer_source: base");
                let rows = s.shape()[0];
                Ok(Source::Resized { inner: Box::new(s), rows, fill: Box::new(fill.source(&p.name)?) })
            })
            .collect::<Result<Vec<_>>>()?;
        for s in base_src.iter().chain(srcs.iter()) {
            bytes_read += (s.numel() * dtype_size(s)) as u64;
        }
        let job = Job {
            tensor: &p.name,
            shape: &p.shape,
            base: base_src.as_ref(),
            models: srcs.iter().collect(),
            params,
            seed,
        };
        let combine = method.prepare(&job)?;
        stream::write_tensor(&writer, i, p, opts.allow_nonfinite, &|s, o| combine.fill(&job, s, o))?;
        for s in base_src.iter().chain(srcs.iter()) {
            s.release();
        }
    }
    writer.finish()?;
    // 5) config, tokenizer, card
    let tok_from = match config.tokenizer_source.as_deref() {
        None | Some("base") => base.as_ref().or(fill.as_ref()).unwrap_or(&models[0]),
        Some(s) => base
            .iter()
            .chain(models.iter())
            .find(|m| m.label == s)
            .ok_or_else(|| MergeError::Parameter(format!("tokenizer_source '{s}' is not a model of the merge")))?,
    };
    if tok_from.dir.path().is_dir() {
        out_dir.copy_side_files(tok_from.dir.path())?;
    }
    if let Some(c) = reference.dir.config() {
        out_dir.write_config(c, dtype)?;
    }
    out_dir.write_text(syntax.saved_name(), recipe_text)?;
    let base_label = base.as_ref().map_or("(none)".to_string(), |b| b.label.clone());
    out_dir.write_text(
        "README.md",
        &card::model_card(
            &base_label,
            &format!("A `{}` merge made with `lora merge --config`.", method.name()),
            &format!("## Configuration\n\n```{}\n{}\n```\n", syntax.fence(), recipe_text.trim_end()),
        ),
    )?;
    let report = MergeReport {
        out: out.to_path_buf(),
        method: method.name().to_string(),
        tensors: planned.len(),
        dtype,
        kept_f32,
        bytes_read,
        vocabulary,
    };
    out_dir.commit()?;
    Ok(report)
}

fn dtype_size(s: &Source<'_>) -> usize {
    match s {
        Source::Mapped(t) | Source::Folded { base: t, .. } | Source::Requantized { base: t, .. } => t.info.dtype.size(),
        // Half a byte per value, as stored.
        Source::Stored4Bit { .. } => 1,
        Source::Resized { inner, .. } | Source::RowsReplaced { inner, .. } => dtype_size(inner),
    }
}

fn fold_plan(input: &Input) -> Result<FoldPlan<'_>> {
    FoldPlan::new(&input.dir, input.adapter.iter().map(|a| (a, 1.0)).collect())
}

/// The embedding and head matrices, whose rows are the vocabulary.
fn is_vocabulary_tensor(name: &str) -> bool {
    name.ends_with("embed_tokens.weight") || name == "lm_head.weight"
}

/// Checks that `other` has `reference`'s tensors and shapes. With `vocab_from_base`, a vocabulary
/// tensor may differ in its row count; each such tensor is returned as a line saying what happens
/// to its rows.
fn check_same_tensors(reference: &Input, other: &Input, vocab_from_base: bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for name in reference.dir.names() {
        let a = reference.dir.get(name).expect("listed");
        let b = other.dir.get(name).ok_or_else(|| {
            MergeError::Mismatch(format!(
                "tensor '{name}' of {} is missing from {}; merged models must have the same tensors",
                reference.label, other.label
            ))
        })?;
        let (sa, sb) = (&a.info.shape, &b.info.shape);
        let rows_only = sa.len() == 2 && sb.len() == 2 && sa[1] == sb[1] && is_vocabulary_tensor(name);
        if sa != sb && rows_only && vocab_from_base {
            let what = if sb[0] > sa[0] {
                format!("the {} rows beyond the base's vocabulary dropped", sb[0] - sa[0])
            } else {
                format!("the {} missing rows taken from the base", sa[0] - sb[0])
            };
            notes.push(format!("{name}: {} has {} rows, the base {}: {what}", other.label, sb[0], sa[0]));
        } else if sa != sb {
            let hint = if rows_only {
                "; the vocabularies differ: set tokenizer_source: base to keep the base's (extra rows dropped, missing rows from the base)"
            } else {
                ""
            };
            return Err(MergeError::Mismatch(format!(
                "tensor '{name}' is {sa:?} in {} but {sb:?} in {}{hint}",
                reference.label, other.label
            )));
        }
    }
    if let Some(extra) = other.dir.names().find(|n| reference.dir.get(n).is_none()) {
        return Err(MergeError::Mismatch(format!(
            "tensor '{extra}' of {} is not in {}; merged models must have the same tensors",
            other.label, reference.label
        )));
    }
    Ok(notes)
}
