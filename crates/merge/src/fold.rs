//! Folding PEFT adapters into their base: W ← W + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ, tensor by tensor, in f32.
//!
//! Reference: PEFT's `merge_and_unload` (`peft/tuners/lora/layer.py`, `Linear.merge`), which adds
//! `(B @ A) * scaling` to the weight. Several adapters are summed, each with its own scale and the
//! user's weight, as PEFT's `add_weighted_adapter(combination_type="linear")` followed by a merge does
//! for adapters of equal rank, but without its cross terms (see `merge_adapters`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapter::Adapter;
use crate::card;
use crate::dtype::DType;
use crate::dtype_policy::{DtypePolicy, dominant_dtype};
use crate::error::{MergeError, Result};
use crate::fold_experts::{ExpertFactors, ExpertUpdate, expert_delta, expert_updates as expert_updates_of};
use crate::model_dir::{ModelDir, TensorRef};
use crate::output_dir::OutputDir;
use crate::safetensors::{PlannedTensor, ShardedWriter};
use crate::source::Source;
use crate::stream;
use lora_formats::hf_config::Relayout;

/// Options of `lora merge BASE ADAPTER...`.
#[derive(Debug, Clone)]
pub struct FoldOptions {
    /// One weight per adapter (default 1 each).
    pub weights: Option<Vec<f64>>,
    /// Convert the float tensors to this element type (except those the architecture keeps in
    /// f32); default: every tensor keeps its stored dtype.
    pub dtype: Option<DType>,
    /// Largest shard in bytes.
    pub shard_size: u64,
    /// Write NaN/inf results instead of failing.
    pub allow_nonfinite: bool,
    /// Replace an existing output folder.
    pub force: bool,
    /// Fold into dequant(NF4(W)) instead of W for every linear layer of the decoder: the weights a
    /// QLoRA adapter was trained against (`Some(double_quant)`), so that the merged model behaves as
    /// the adapter did on its quantized base. `None` folds into the original weights (PEFT's choice).
    pub nf4_base: Option<bool>,
}

impl Default for FoldOptions {
    fn default() -> Self {
        Self {
            weights: None,
            dtype: None,
            shard_size: 5_000_000_000,
            allow_nonfinite: false,
            force: false,
            nf4_base: None,
        }
    }
}

/// Whether a tensor is the weight of a decoder linear layer, the ones bitsandbytes quantizes
/// (embeddings, norms and the head stay dense).
pub fn is_decoder_linear(name: &str) -> bool {
    use lora_formats::hf_config::{decoder_linear_names, layer_stack_prefixes};
    // The text stack of a text-only checkpoint or of a multimodal one (Qwen3.5's Hub form).
    let Some(rest) = layer_stack_prefixes()
        .iter()
        .find_map(|p| name.strip_prefix(p.as_str()))
        .and_then(|r| r.strip_suffix(".weight"))
    else {
        return false;
    };
    rest.split_once('.').is_some_and(|(i, m)| i.parse::<usize>().is_ok() && decoder_linear_names().contains(&m))
}

/// What a fold did.
#[derive(Debug, Clone)]
pub struct FoldReport {
    /// The output folder.
    pub out: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Base tensors that received at least one update.
    pub updated: usize,
    /// Base tensors replaced by an adapter's saved copy (`modules_to_save`).
    pub replaced: usize,
    /// Adapters whose module names were mapped to the base's checkpoint form, and how.
    pub relayouts: Vec<String>,
    /// The dtype most of the output's values have (what config.json says).
    pub dtype: DType,
    /// Tensors an explicit dtype left in f32, as their architecture keeps them.
    pub kept_f32: Vec<String>,
    /// Bytes of input tensor data.
    pub bytes_read: u64,
}

/// Adapters checked against a base, ready to produce folded tensors.
#[derive(Debug)]
pub struct FoldPlan<'a> {
    base: &'a ModelDir,
    adapters: Vec<(&'a Adapter, f64)>,
    /// Base tensor → (adapter index, module name) of every update to it.
    updates: BTreeMap<String, Vec<(usize, String)>>,
    /// Base tensor → the routed experts' updates to it.
    expert_updates: BTreeMap<String, Vec<ExpertUpdate>>,
    /// The expert adapters' factors, decoded once.
    expert_factors: ExpertFactors,
    /// Base tensor → adapter index and name of the saved copy that replaces it.
    replaced: BTreeMap<String, (usize, String)>,
    /// Base vocabulary tensor → its rows replaced by trainable tokens (row → values).
    token_rows: BTreeMap<String, BTreeMap<usize, Vec<f32>>>,
    /// The vocabulary size when adapters grew it (special tokens added in training).
    pub vocab: Option<usize>,
    /// Per adapter whose module names were mapped to the base's checkpoint form: what was done.
    pub relayouts: Vec<String>,
}

impl<'a> FoldPlan<'a> {
    /// Checks that every adapter module targets a base tensor of the right shape, and every saved
    /// tensor replaces one of the same shape; errors name the adapter and the module.
    pub fn new(base: &'a ModelDir, adapters: Vec<(&'a Adapter, f64)>) -> Result<Self> {
        let mut updates: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        let mut expert_updates: BTreeMap<String, Vec<ExpertUpdate>> = BTreeMap::new();
        let mut expert_factors = ExpertFactors::new();
        let mut replaced = BTreeMap::new();
        let mut relayouts = Vec::new();
        let mut token_rows: BTreeMap<String, BTreeMap<usize, Vec<f32>>> = BTreeMap::new();
        // The vocabulary grown by tokens added in training, when any adapter has some.
        let mut vocab: Option<usize> = None;
        for (k, (adapter, w)) in adapters.iter().enumerate() {
            if adapter.config.use_dora && *w != 1.0 {
                return Err(MergeError::Parameter(format!(
                    "{}: a DoRA adapter folds at weight 1 only (its magnitudes set the rows' norms), not {w}",
                    adapter.dir().display()
                )));
            }
            // An adapter made on the architecture's other checkpoint form (Qwen3.5's text form
            // against its Hub form): its names mapped when every target exists so.
            let names = adapter
                .modules
                .values()
                .map(|m| m.target.as_str())
                .chain(adapter.replacements.keys().map(String::as_str));
            let relayout = Relayout::find(names, |t| base.get(t).is_some());
            if let Some(r) = &relayout {
                relayouts.push(format!("{}: {}", adapter.dir().display(), r.describe()));
            }
            let to_base = |name: &str| relayout.as_ref().map_or_else(|| name.to_string(), |r| r.apply(name));
            for m in adapter.modules.values() {
                let target = to_base(&m.target);
                let t = base.get(&target).ok_or_else(|| {
                    MergeError::Mismatch(format!(
                        "{}: module '{}' is not in the base model {} (no tensor '{}'); was the adapter trained on another model?",
                        adapter.dir().display(),
                        m.module,
                        base.path().display(),
                        m.target
                    ))
                })?;
                let shape = base.logical_shape(&target)?;
                if shape != m.target_shape() {
                    return Err(MergeError::Mismatch(format!(
                        "{}: module '{}' updates a {:?} weight but the base's '{}' is {:?} (lora_A {:?}, lora_B {:?})",
                        adapter.dir().display(),
                        m.module,
                        m.target_shape(),
                        m.target,
                        shape,
                        m.a.shape,
                        m.b.shape
                    )));
                }
                if !t.info.dtype.is_float() && !base.is_four_bit(&target) {
                    return Err(MergeError::Mismatch(format!("base tensor '{}' is not a float tensor", m.target)));
                }
                updates.entry(target).or_default().push((k, m.module.clone()));
            }
            for (module, (a, b)) in &adapter.experts {
                for (target, u) in expert_updates_of(base, adapter, k, module, &a.shape, &b.shape)? {
                    expert_updates.entry(target).or_default().push(u);
                }
                expert_factors.insert((k, module.clone()), (adapter.tensor_f32(a), adapter.tensor_f32(b)));
            }
            rows_of_tokens(base, adapter, &to_base, &mut token_rows, &mut vocab)?;
            for (saved, info) in &adapter.replacements {
                let name = &to_base(saved);
                let t = base.get(name).ok_or_else(|| {
                    MergeError::Mismatch(format!(
                        "{}: saved tensor '{name}' is not in the base model {}",
                        adapter.dir().display(),
                        base.path().display()
                    ))
                })?;
                if t.info.shape != info.shape {
                    return Err(MergeError::Mismatch(format!(
                        "{}: saved tensor '{name}' is {:?} but the base's is {:?}",
                        adapter.dir().display(),
                        info.shape,
                        t.info.shape
                    )));
                }
                if let Some((prev, _)) = replaced.insert(name.clone(), (k, saved.clone())) {
                    return Err(MergeError::Mismatch(format!(
                        "tensor '{name}' is saved whole by two adapters ({} and {}); lora cannot fold both",
                        adapters[prev].0.dir().display(),
                        adapter.dir().display()
                    )));
                }
            }
        }
        for name in replaced.keys() {
            if updates.contains_key(name) || expert_updates.contains_key(name) {
                return Err(MergeError::Mismatch(format!(
                    "tensor '{name}' is both saved whole and updated by LoRA factors; the adapters disagree"
                )));
            }
        }
        if let Some(v) = vocab {
            check_grown_rows(base, &token_rows, v)?;
        }
        Ok(Self { base, adapters, updates, expert_updates, expert_factors, replaced, token_rows, vocab, relayouts })
    }

    /// The input for base tensor `name`: the base's tensor, an adapter's saved copy, or the base
    /// with its updates folded in.
    pub fn source(&self, name: &str) -> Result<Source<'a>> {
        let source = self.updated_source(name)?;
        Ok(match self.token_rows.get(name) {
            Some(rows) => {
                let mut shape = source.shape().to_vec();
                shape[0] = self.vocab.unwrap_or(shape[0]).max(shape[0]);
                Source::RowsReplaced { inner: Box::new(source), rows: rows.clone(), shape }
            }
            None => source,
        })
    }

    /// [`Self::source`] before the trainable tokens' rows.
    fn updated_source(&self, name: &str) -> Result<Source<'a>> {
        if let Some((k, saved)) = self.replaced.get(name) {
            let adapter = self.adapters[*k].0;
            let info = &adapter.replacements[saved];
            return Ok(Source::Mapped(TensorRef { file: adapter.file(), info }));
        }
        let base = self.base.require(name)?;
        let mut deltas: Vec<_> = self
            .updates
            .get(name)
            .into_iter()
            .flatten()
            .map(|(k, m)| {
                let (adapter, w) = self.adapters[*k];
                adapter.delta(&adapter.modules[m], w)
            })
            .collect();
        for u in self.expert_updates.get(name).into_iter().flatten() {
            let (adapter, w) = self.adapters[u.adapter];
            let (a, b) = &adapter.experts[&u.module];
            deltas.push(expert_delta(u, &self.expert_factors, a.shape[1], b.shape[0], w));
        }
        if self.base.is_four_bit(name) {
            let nf4 = self.base.four_bit(name)?;
            return Ok(Source::Stored4Bit { codes: base, nf4, deltas });
        }
        if deltas.is_empty() { Ok(Source::Mapped(base)) } else { Ok(Source::Folded { base, deltas }) }
    }

    /// The shape of output tensor `name` whose base shape is `shape`: more rows for a vocabulary
    /// tensor the adapters grew.
    pub fn output_shape(&self, name: &str, shape: &[usize]) -> Vec<usize> {
        let mut shape = shape.to_vec();
        if let (Some(v), true) = (self.vocab, self.token_rows.contains_key(name)) {
            shape[0] = shape[0].max(v);
        }
        shape
    }

    /// Whether `name` changes in the fold.
    pub fn touches(&self, name: &str) -> bool {
        self.updates.contains_key(name)
            || self.expert_updates.contains_key(name)
            || self.replaced.contains_key(name)
            || self.token_rows.contains_key(name)
    }
}

/// The tokenizer files an adapter trained with added tokens carries.
const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// Sets the vocabulary size of a config.json (the text config's in a multimodal one).
fn set_vocab_size(config: &mut serde_json::Value, vocab: usize) {
    let target = if config.get("text_config").and_then(|t| t.get("vocab_size")).is_some() {
        &mut config["text_config"]
    } else {
        config
    };
    if let Some(map) = target.as_object_mut() {
        map.insert("vocab_size".into(), vocab.into());
    }
}

/// Collects one adapter's trained token rows (and the rows of the vocabulary tables PEFT saved whole
/// beyond the base's) by base tensor, and the vocabulary they grow to.
fn rows_of_tokens(
    base: &ModelDir,
    adapter: &Adapter,
    to_base: &dyn Fn(&str) -> String,
    token_rows: &mut BTreeMap<String, BTreeMap<usize, Vec<f32>>>,
    vocab: &mut Option<usize>,
) -> Result<()> {
    let dir = adapter.dir().display();
    // The base tensor's (rows, width); None for a tied head the base does not store (its embedding's
    // rows train it: PEFT saves them twice).
    let shape_of = |target: &str| -> Result<Option<(usize, usize)>> {
        match base.logical_shape(target) {
            Ok(s) => Ok(Some((s[0], s[1..].iter().product()))),
            Err(_) if target == "lm_head.weight" => Ok(None),
            Err(_) => Err(MergeError::Mismatch(format!(
                "{dir}: its trainable tokens replace rows of '{target}', which the base model {} lacks",
                base.path().display()
            ))),
        }
    };
    let mut grow = |rows: usize, base_rows: usize| {
        if rows > base_rows {
            *vocab = Some(vocab.unwrap_or(0).max(rows).max(adapter.tokenizer_size().unwrap_or(0)));
        }
    };
    for t in &adapter.token_rows {
        let target = to_base(&t.target);
        let Some((base_rows, width)) = shape_of(&target)? else { continue };
        if t.info.shape[1] != width {
            return Err(MergeError::Mismatch(format!(
                "{dir}: trainable tokens {:?} of width {} do not fit '{target}' of width {width}",
                t.ids, t.info.shape[1]
            )));
        }
        let values = adapter.tensor_f32(&t.info);
        let rows = token_rows.entry(target.clone()).or_default();
        for (k, &id) in t.ids.iter().enumerate() {
            if rows.insert(id as usize, values[k * width..(k + 1) * width].to_vec()).is_some() {
                return Err(MergeError::Mismatch(format!(
                    "token {id} of '{target}' is trained by two adapters; PEFT refuses overlapping tokens too"
                )));
            }
        }
        grow(t.ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0), base_rows);
    }
    for (saved, info) in &adapter.tables {
        let target = to_base(saved);
        let Some((base_rows, width)) = shape_of(&target)? else { continue };
        if info.shape[1] != width || info.shape[0] < base_rows {
            return Err(MergeError::Mismatch(format!(
                "{dir}: its saved '{target}' is {:?}, the base's {:?}",
                info.shape,
                [base_rows, width]
            )));
        }
        // The rows beyond the base's (the ones below are the base's own): trained rows take precedence.
        let values = adapter.tensor_f32(info);
        let rows = token_rows.entry(target.clone()).or_default();
        for r in base_rows..info.shape[0] {
            rows.entry(r).or_insert_with(|| values[r * width..(r + 1) * width].to_vec());
        }
        grow(info.shape[0], base_rows);
    }
    Ok(())
}

/// Every row of a grown vocabulary tensor beyond the base's has values (trained, or saved whole).
fn check_grown_rows(
    base: &ModelDir,
    token_rows: &BTreeMap<String, BTreeMap<usize, Vec<f32>>>,
    vocab: usize,
) -> Result<()> {
    for name in base.names().filter(|n| n.ends_with("embed_tokens.weight") || *n == "lm_head.weight") {
        let base_rows = base.logical_shape(name)?[0];
        let rows = token_rows.get(name);
        if let Some(r) = (base_rows..vocab).find(|r| !rows.is_some_and(|m| m.contains_key(r))) {
            return Err(MergeError::Mismatch(format!(
                "the adapters grow the vocabulary to {vocab}, but row {r} of '{name}' has no values (neither \
                 trained nor saved): train the added tokens' rows of it too"
            )));
        }
    }
    Ok(())
}

/// The float dtype most of a model's float tensors have (its "model dtype").
pub fn model_dtype(model: &ModelDir) -> DType {
    dominant_dtype(model.names().map(|n| {
        let t = model.get(n).expect("listed");
        (t.info.dtype, t.info.numel())
    }))
}

/// Refuses a base missing a tensor its configuration's model loads, or holding one of another
/// shape: the fold would copy it as it is, and no command could load the merged folder.
fn check_loadable(base: &Path, model: &ModelDir, config: &lora_formats::hf_config::ModelConfig) -> Result<()> {
    for (name, shape) in config.expected_tensors() {
        match model.get(&name) {
            // A bitsandbytes 4-bit weight: its quant state says its shape.
            Some(_) if model.is_four_bit(&name) => {
                let found = model.logical_shape(&name)?;
                if found != shape {
                    return Err(MergeError::folder(
                        base,
                        format!("4-bit tensor {name} stands for {found:?} where config.json's model needs {shape:?}"),
                    ));
                }
            }
            // An expert's projection of a checkpoint that stores its experts fused.
            None if crate::fold_experts::in_fused_experts(model, &name, &shape) => {}
            None => {
                return Err(MergeError::folder(
                    base,
                    format!("tensor {name} is missing (config.json's model needs it); no command could load the merge"),
                ));
            }
            Some(t) if t.info.shape != shape => {
                return Err(MergeError::folder(
                    base,
                    format!(
                        "tensor {name} has shape {:?} where config.json's model needs {shape:?}; no command could \
                         load the merge",
                        t.info.shape
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `lora merge BASE ADAPTER... -o OUT`: folds `adapters` into `base` and writes a complete model folder.
pub fn fold_adapters(base: &Path, adapters: &[PathBuf], out: &Path, opts: &FoldOptions) -> Result<FoldReport> {
    crate::safetensors::catch_read_failures(|| fold_adapters_inner(base, adapters, out, opts))
}

fn fold_adapters_inner(base: &Path, adapters: &[PathBuf], out: &Path, opts: &FoldOptions) -> Result<FoldReport> {
    // The one reading of config.json every command makes: a base that no command could load (no
    // or an inconsistent configuration, an architecture lora does not run) is refused before
    // anything is written.
    let config = base.join("config.json");
    if base.is_dir() && !config.is_file() {
        return Err(MergeError::folder(
            base,
            "no config.json in the base folder; the merged model needs the base's configuration",
        ));
    }
    let model_config = lora_formats::hf_config::ModelConfig::from_file(&config)?;

    let base_model = ModelDir::open(base)?;
    check_loadable(base, &base_model, &model_config)?;
    let loaded = adapters.iter().map(Adapter::open).collect::<Result<Vec<_>>>()?;
    let weights = match &opts.weights {
        Some(w) if w.len() != loaded.len() => {
            return Err(MergeError::Parameter(format!(
                "--weights has {} values for {} adapters",
                w.len(),
                loaded.len()
            )));
        }
        Some(w) => w.clone(),
        None => vec![1.0; loaded.len()],
    };
    let plan = FoldPlan::new(&base_model, loaded.iter().zip(weights.iter().copied()).collect())?;
    let out_dir = OutputDir::create(out, opts.force)?;
    let policy = DtypePolicy::new(opts.dtype, Some(model_config.architecture.spec()));
    // A bitsandbytes 4-bit base is written dequantized (as merge_and_unload after dequantizing):
    // each 4-bit weight one dense tensor, bf16 unless --dtype says otherwise; its parts are not
    // carried.
    let four_bit_dtype = opts.dtype.unwrap_or(DType::BF16);
    let names: Vec<&str> = base_model.names().filter(|n| !lora_formats::bnb4bit::is_companion(n)).collect();
    let planned: Vec<PlannedTensor> = names
        .iter()
        .map(|n| {
            let t = base_model.get(n).expect("listed");
            if base_model.is_four_bit(n) {
                let shape = base_model.logical_shape(n)?;
                return Ok(PlannedTensor { name: n.to_string(), dtype: four_bit_dtype, shape });
            }
            Ok(PlannedTensor {
                name: n.to_string(),
                dtype: policy.dtype_of(n, t.info.dtype),
                shape: plan.output_shape(n, &t.info.shape),
            })
        })
        .collect::<Result<_>>()?;
    let kept_f32 = policy.kept_in_f32(names.iter().map(|n| (*n, base_model.get(n).expect("listed").info.dtype)));
    let dtype = dominant_dtype(planned.iter().map(|p| (p.dtype, p.shape.iter().product())));
    let writer = ShardedWriter::create(out_dir.path(), &planned, opts.shard_size)?;
    let mut bytes_read = 0u64;
    for (i, p) in planned.iter().enumerate() {
        let mut src = plan.source(&p.name)?;
        let t = base_model.get(&p.name).expect("listed");
        bytes_read += (t.info.end - t.info.begin) as u64;
        let requantize = opts.nf4_base.filter(|_| is_decoder_linear(&p.name) && !plan.replaced.contains_key(&p.name));
        if let Some(double_quant) = requantize {
            src = src.requantized(double_quant);
        }
        let four_bit = base_model.is_four_bit(&p.name);
        if requantize.is_none() && !four_bit && !plan.touches(&p.name) && t.info.dtype == p.dtype {
            stream::copy_tensor(&writer, i, t)?;
        } else {
            stream::write_tensor(&writer, i, p, opts.allow_nonfinite, &|start, out| src.read(start, out))?;
        }
        src.release();
    }
    writer.finish()?;
    out_dir.copy_side_files(base)?;
    if plan.vocab.is_some() {
        // Tokens added in training: the tokenizer the adapter carries is the merged model's.
        for a in loaded.iter().filter(|a| a.tokenizer_size().is_some()) {
            out_dir.copy_files(a.dir(), &TOKENIZER_FILES)?;
        }
    }
    if let Some(config) = base_model.config() {
        // The output is dense: a 4-bit base's quantization_config does not describe it.
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            map.remove("quantization_config");
        }
        if let Some(v) = plan.vocab {
            set_vocab_size(&mut config, v);
        }
        out_dir.write_config(&config, dtype)?;
    }
    let lines: Vec<String> = adapters
        .iter()
        .zip(&weights)
        .zip(&loaded)
        .map(|((p, w), a)| {
            format!(
                "- `{}` (weight {w}, rank {}, alpha {}, {} modules)",
                p.display(),
                a.config.r,
                a.config.lora_alpha,
                a.modules.len()
            )
        })
        .collect();
    out_dir.write_text(
        "README.md",
        &card::model_card(
            &base.display().to_string(),
            &match opts.nf4_base {
                None => "LoRA adapters folded into their base with `lora merge`: W ← W + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ, computed in f32.".to_string(),
                Some(dq) => format!(
                    "QLoRA adapters folded with `lora merge --quantized-base nf4`: every decoder linear layer is \
                     W ← dequant(NF4(W)) + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ (bitsandbytes' NF4, blocks of 64{}), the weights the adapters \
                     were trained against; computed in f32.",
                    if dq { ", double-quantized scales" } else { "" }
                ),
            },
            &format!(
                "## Adapters\n\n{}\n\n{}\n{}",
                lines.join("\n"),
                card::dtype_line(dtype, opts.dtype, &kept_f32),
                card::base_card_line(base)
            ),
        ),
    )?;
    let report = FoldReport {
        out: out.to_path_buf(),
        tensors: planned.len(),
        updated: plan.updates.keys().chain(plan.expert_updates.keys()).collect::<std::collections::BTreeSet<_>>().len(),
        replaced: plan.replaced.len(),
        relayouts: plan.relayouts.clone(),
        dtype,
        kept_f32,
        bytes_read,
    };
    out_dir.commit()?;
    Ok(report)
}
