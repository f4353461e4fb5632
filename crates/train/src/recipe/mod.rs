//! The TOML training recipe: typed, strict, with errors that name `file:line:col`, the key, and the
//! closest valid key. This file holds the schema and the reading (parse, `--set` overrides, paths);
//! [`source`] locates keys and turns TOML errors into `file:line:col: key: message`, [`suggest`]
//! finds the key a typo meant, and [`checks`] refuses values that parse but cannot work.
//!
//! ```toml
//! [model]
//! base = "models/llama"            # relative paths resolve against the recipe's folder
//! [lora]
//! r = 8
//! alpha = 16
//! targets = ["q_proj", "v_proj"]   # or "all-linear", or a regex over module paths
//! [data]
//! train = "data/train.jsonl"
//! validation_fraction = 0.1
//! max_seq_len = 256
//! [train]
//! max_steps = 100
//! lr = 2e-4
//! [output]
//! dir = "runs/first"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

mod checks;
mod init_from;
mod preference;
mod source;
mod suggest;

pub use preference::{Method, PreferenceSection};

pub use source::Source;
use source::describe;
use suggest::suggest;

/// A whole recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The base model.
    pub model: ModelSection,
    /// The adapter.
    #[serde(default)]
    pub lora: LoraSection,
    /// The data.
    pub data: DataSection,
    /// The optimisation.
    #[serde(default)]
    pub train: TrainSection,
    /// Where results go.
    pub output: OutputSection,
    /// DPO's settings (`[train] method = "dpo"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceSection>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model folder (config.json, safetensors weights, tokenizer.json), or a Hub id `org/name[@rev]`
    /// taken from the Hugging Face cache or downloaded into it.
    pub base: PathBuf,
    /// The base's Hub id, written into adapter_config.json and the model card (set automatically
    /// when `base` is a Hub id; needed with `output.push_to_hub` when `base` is a folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
    /// The dtype the frozen base is held in: `"auto"` (default: f32 on the CPU, bf16 on CUDA), `"f32"`,
    /// `"bf16"` or `"f16"`. LoRA's A and B, their optimizer state and the activations stay f32.
    #[serde(default = "d_auto")]
    pub dtype: String,
    /// `"none"` (default) or `"nf4"`: the decoder's linear layers stored as 4-bit NormalFloat, as
    /// bitsandbytes does for QLoRA (embeddings, norms and the head stay in `dtype`).
    #[serde(default = "d_none")]
    pub quantize: String,
    /// With `quantize = "nf4"`: store the scales in 8 bits too (bitsandbytes' double quantization).
    #[serde(default)]
    pub double_quant: bool,
}

fn d_auto() -> String {
    "auto".into()
}
fn d_none() -> String {
    "none".into()
}

impl ModelSection {
    /// The load options for a device (`auto` resolved).
    pub fn load_options(&self, backend: lora_core::Backend) -> lora_core::LoadOptions {
        // Validated before: the fallbacks are never taken.
        let dtype = lora_core::BaseDtype::resolve(&self.dtype, backend).unwrap_or_default();
        let quantize = lora_core::Quantize::parse(&self.quantize, self.double_quant).unwrap_or_default();
        lora_core::LoadOptions { dtype, quantize }
    }
}

/// `targets`: module names, `"all-linear"`, or a regex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// Names matched as suffixes of module paths, e.g. `["q_proj", "v_proj"]`.
    Names(Vec<String>),
    /// `"all-linear"` or a regex matched against whole module paths.
    Pattern(String),
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank (default 8).
    #[serde(default = "d_r")]
    pub r: usize,
    /// alpha (default 16); the update is scaled by alpha / r.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter input (default 0).
    #[serde(default)]
    pub dropout: f64,
    /// Target modules (default `["q_proj", "v_proj"]`).
    #[serde(default = "d_targets")]
    pub targets: Targets,
    /// rsLoRA scaling alpha / √r (default false).
    #[serde(default)]
    pub rslora: bool,
    /// `"kaiming"` (PEFT's default), `"gaussian"`, or a start that moves the base (PEFT's names):
    /// `"pissa"`, `"pissa_niter_N"` (randomized SVD, N power iterations) or `"olora"`. The run then
    /// trains on the residual base and saves its adapter converted to a plain LoRA of rank 2r on the
    /// original base.
    #[serde(default = "d_init")]
    pub init: String,
    /// Only these decoder layers (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// DoRA (PEFT's `use_dora`, default false): a trained magnitude per output row of each adapted
    /// layer, saved as PEFT saves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_dora: bool,
    /// Token ids whose input-embedding rows are trained in full (PEFT's `trainable_token_indices`;
    /// on a tied model the head's rows with them), or ids per module on an untied model
    /// (`{ embed_tokens = [...], lm_head = [...] }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_token_indices: Option<lora_formats::peft::TokenIndices>,
    /// Start from this PEFT adapter (a folder) instead of a fresh one: its configuration (rank,
    /// alpha, targets, dropout) is the run's. A DPO run's reference is then this adapter, as TRL's
    /// is when it is given a PEFT model to go on training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_targets() -> Targets {
    Targets::Names(vec!["q_proj".into(), "v_proj".into()])
}
fn d_init() -> String {
    "kaiming".into()
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: d_r(),
            alpha: d_alpha(),
            dropout: 0.0,
            targets: d_targets(),
            rslora: false,
            init: d_init(),
            layers: None,
            use_dora: false,
            trainable_token_indices: None,
            init_from: None,
        }
    }
}

/// One or several files, each a path or `{ path = "...", weight = 2.0 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Files {
    /// One file.
    One(PathBuf),
    /// Several files.
    Many(Vec<FileEntry>),
}

/// A data file, optionally weighted (2 repeats its examples twice per epoch, 0.5 keeps a seeded half).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileEntry {
    /// Just the path (weight 1).
    Path(PathBuf),
    /// Path and weight.
    Weighted {
        /// The file.
        path: PathBuf,
        /// Its weight.
        weight: f64,
    },
}

impl FileEntry {
    fn parts(&self) -> (PathBuf, f64) {
        match self {
            Self::Path(p) => (p.clone(), 1.0),
            Self::Weighted { path, weight } => (path.clone(), *weight),
        }
    }
}

impl Files {
    /// The paths.
    pub fn to_vec(&self) -> Vec<PathBuf> {
        self.weighted().into_iter().map(|(p, _)| p).collect()
    }

    /// The paths with their weights.
    pub fn weighted(&self) -> Vec<(PathBuf, f64)> {
        match self {
            Self::One(p) => vec![(p.clone(), 1.0)],
            Self::Many(v) => v.iter().map(FileEntry::parts).collect(),
        }
    }

    fn map_paths(&self, f: impl Fn(&Path) -> PathBuf) -> Self {
        Self::Many(
            self.weighted()
                .into_iter()
                .map(
                    |(p, w)| {
                        if w == 1.0 { FileEntry::Path(f(&p)) } else { FileEntry::Weighted { path: f(&p), weight: w } }
                    },
                )
                .collect(),
        )
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training file(s), JSONL or JSON arrays.
    pub train: Files,
    /// Validation file(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Files>,
    /// Hold out this fraction of the training examples for validation instead (0 < f < 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f64>,
    /// Record format: `"auto"` (from the first record), `"text"`, `"completion"`, `"alpaca"`, `"chat"`,
    /// or `"preference"` (`{"prompt", "chosen", "rejected"}`, for `[train] method = "dpo"`).
    #[serde(default = "d_format")]
    pub format: String,
    /// Longest sequence in tokens (default 512).
    #[serde(default = "d_seq")]
    pub max_seq_len: usize,
    /// Longer examples: `"truncate"` (keep the start; default) or `"drop"`.
    #[serde(default = "d_overflow")]
    pub overflow: String,
    /// Train on prompts and user turns too (default false: only completions / assistant turns).
    #[serde(default)]
    pub train_on_inputs: bool,
    /// Skip and count invalid records instead of stopping at the first (default false).
    #[serde(default)]
    pub skip_invalid: bool,
    /// Pack several examples per sequence, without attention between them (default false).
    #[serde(default)]
    pub packing: bool,
    /// A chat template replacing the model's: inline Jinja, or a path to a `.jinja` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// The chat template's keyword arguments, as transformers' `apply_chat_template` passes them
    /// (`{ enable_thinking = false }`); templates define their own, so any name is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Which assistant turns of a conversation are trained, and in which render: `"auto"` (default:
    /// `"expand"` where the template rewrites history, as reasoning models' do, else `"all"`),
    /// `"expand"` (one example per assistant turn), `"all"` or `"last"`.
    #[serde(default = "d_turns", skip_serializing_if = "is_auto")]
    pub turns: String,
    /// The field holding assistant messages' reasoning when a dataset does not call it
    /// `reasoning_content` (`"reasoning"`, `"thinking"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_field: Option<String>,
    /// Special tokens to add to the tokenizer (a chat template's `<|im_start|>` on a base that lacks
    /// them), as transformers' `add_special_tokens`: the vocabulary grows, and every listed token's
    /// rows are trained in full (PEFT's trainable tokens); the adapter folder carries the tokenizer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_special_tokens: Vec<String>,
    /// Preference methods: the dataset's own names of TRL's fields, by TRL's name (`{ prompt =
    /// "question" }` for orca_dpo_pairs; `prompt = ""` to ignore a prompt field and take the
    /// prompt from the beginning the chosen and rejected conversations share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<crate::preference::FieldMap>,
    /// An assistant turn left with no trained token (it renders to none, or is truncated away):
    /// `"warn"` (default, once per file) or `"error"`.
    #[serde(default = "d_untrained_turns", skip_serializing_if = "is_warn")]
    pub untrained_turns: String,
}

fn d_turns() -> String {
    "auto".into()
}

fn d_untrained_turns() -> String {
    "warn".into()
}

// The defaults are left out of the recipe a run folder records, so that recipes written before
// these keys existed record the same text.
fn is_auto(s: &str) -> bool {
    s == "auto"
}

fn is_warn(s: &str) -> bool {
    s == "warn"
}

fn d_overflow() -> String {
    "truncate".into()
}

fn d_format() -> String {
    "auto".into()
}
fn d_seq() -> usize {
    512
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Passes over the training data (default 1); `max_steps` wins when set.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Optimizer steps to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Examples per micro-batch (default 4).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default 1).
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Peak learning rate (default 2e-4).
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// `"constant"`, `"linear"` or `"cosine"` (default linear).
    #[serde(default = "d_schedule")]
    pub schedule: String,
    /// Steps of linear warm-up from 0.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Decoupled weight decay (default 0).
    #[serde(default)]
    pub weight_decay: f64,
    /// LoRA+: the learning rate of every B as this multiple of `lr` (A's stays `lr`), PEFT's
    /// `create_loraplus_optimizer` with `loraplus_lr_ratio`; `weight_decay` is its
    /// `loraplus_weight_decay`, on A and B alike. Unset: plain LoRA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loraplus_lr_ratio: Option<f64>,
    /// How a data-parallel run (`lora launch`, torchrun, `mpirun`, `srun`) reduces the ranks' gradients: `"exact"`
    /// (default: a chain in rank order, the single-process adapter byte for byte) or `"fast"` (one
    /// all-reduce, within float tolerance). Ignored by a single process.
    #[serde(default = "d_grad_reduce", skip_serializing_if = "is_exact")]
    pub grad_reduce: String,
    /// The engine of a data-parallel run: `"auto"` (default: MPI under mpirun in an `mpi` build, NCCL
    /// on `cuda`, TCP otherwise), `"tcp"`, `"nccl"`, `"mpi"`, or `"off"` (train as a single process
    /// whatever the launcher's environment says).
    #[serde(default = "d_distributed", skip_serializing_if = "is_auto")]
    pub distributed: String,
    /// Seconds a rank of a data-parallel run waits for a peer before the run fails (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed_timeout: Option<u64>,
    /// Clip the global gradient norm to this (default 1; 0 disables).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Seed of initialisation, shuffling and dropout (default 42).
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Evaluate every this many steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Checkpoint every this many steps (0: only on interruption).
    #[serde(default)]
    pub save_every: u64,
    /// `"cpu"`, `"cuda"` or `"wgpu"`.
    #[serde(default = "d_device")]
    pub device: String,
    /// The stored dtype of the adapter file: `"f32"` (default) or `"bf16"` (the base's dtype is
    /// `model.dtype`).
    #[serde(default = "d_dtype")]
    pub dtype: String,
    /// Keep only each decoder layer's input in the forward pass and recompute the layer in backward
    /// (default false): activation memory of one layer instead of all, for about one more forward pass.
    /// The adapter is the same to the bit either way.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// `"sft"` (default), `"dpo"` or `"simpo"`; the preference methods' settings are the
    /// `[preference]` table.
    #[serde(default = "d_method", skip_serializing_if = "is_sft")]
    pub method: String,
}

fn d_method() -> String {
    "sft".into()
}
fn is_sft(m: &String) -> bool {
    m == "sft"
}

fn d_epochs() -> usize {
    1
}
fn d_batch() -> usize {
    4
}
fn d_one() -> usize {
    1
}
fn d_lr() -> f64 {
    2e-4
}
fn d_schedule() -> String {
    "linear".into()
}
fn d_clip() -> f64 {
    1.0
}
fn d_seed() -> u64 {
    42
}
fn d_device() -> String {
    "cpu".into()
}
fn d_dtype() -> String {
    "f32".into()
}

fn d_distributed() -> String {
    "auto".into()
}
fn d_grad_reduce() -> String {
    "exact".into()
}
fn is_exact(s: &str) -> bool {
    s == "exact"
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The run folder: adapter files, metrics, checkpoints, manifest.
    pub dir: PathBuf,
    /// Publish the adapter to this Hub repository (`org/name`) after a successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_to_hub: Option<String>,
}

impl Recipe {
    /// Reads a recipe file, applies `--set key.path=value` overrides, resolves relative paths
    /// against the recipe's folder and validates every value.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let hub = lora_hub::ResolveOptions::from_env().map_err(|e| TrainError::Recipe(e.to_string()))?;
        Self::load_with(path, overrides, &hub)
    }

    /// [`Recipe::load`] with explicit Hub settings (offline mode, progress) for `[model] base` ids.
    pub fn load_with(path: &Path, overrides: &[String], hub: &lora_hub::ResolveOptions) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let src = Source { name: path.display().to_string(), text };
        let mut recipe = Self::parse(&src)?;
        recipe = recipe.with_overrides(overrides)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        recipe.resolve_base(&base, hub, &src)?;
        recipe.resolve_paths(&base);
        recipe.adopt_init_from(&src)?;
        recipe.validate(&src)?;
        Ok(recipe)
    }

    /// A `[model] base` that is no folder beside the recipe but reads as a Hub id is fetched (or found
    /// in the cache) and replaced by its snapshot folder; the id is kept in `hub_id`.
    fn resolve_base(&mut self, recipe_dir: &Path, hub: &lora_hub::ResolveOptions, src: &Source) -> Result<()> {
        let raw = self.model.base.clone();
        if raw.is_absolute() || recipe_dir.join(&raw).is_dir() {
            return Ok(());
        }
        let text = raw.to_string_lossy().into_owned();
        if !matches!(lora_hub::Reference::parse(&text), Ok(lora_hub::Reference::Hub(_))) {
            return Ok(()); // a missing folder: validate() reports it
        }
        match lora_hub::resolve_model(&text, hub) {
            Ok(dir) => {
                self.model.base = dir;
                self.model.hub_id.get_or_insert(text);
                Ok(())
            }
            Err(e) => {
                let at = src.locate("model", "base").map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default();
                Err(TrainError::Recipe(format!("{}{at}: model.base '{text}': {e}", src.name)))
            }
        }
    }

    /// Parses recipe text (no path resolution, no validation).
    pub fn parse(src: &Source) -> Result<Self> {
        toml::from_str(&src.text).map_err(|e| TrainError::Recipe(describe(src, &e)))
    }

    /// Applies `section.key=value` overrides; the value is read as TOML (a bare word is a string).
    pub fn with_overrides(self, overrides: &[String]) -> Result<Self> {
        if overrides.is_empty() {
            return Ok(self);
        }
        let mut doc = toml::Table::try_from(&self).expect("a recipe serializes");
        for o in overrides {
            let bad = |m: &str| TrainError::Recipe(format!("--set {o}: {m}"));
            let (key, value) = o.split_once('=').ok_or_else(|| bad("expected section.key=value"))?;
            let (section, field) = key.trim().split_once('.').ok_or_else(|| bad("expected section.key=value"))?;
            let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {}", value.trim())) {
                Ok(mut t) => t.remove("v").expect("parsed"),
                Err(_) => toml::Value::String(value.trim().to_string()),
            };
            let table = doc
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| bad(&format!("'{section}' is not a section")))?;
            table.insert(field.to_string(), parsed);
            // Check each override on its own so that the error names it.
            let text = toml::to_string(&doc).expect("serializes");
            toml::from_str::<Self>(&text).map_err(|e| {
                let msg = e.message().trim().to_string();
                match msg.strip_prefix("unknown field `") {
                    Some(rest) => {
                        let expected: Vec<String> = rest.split('`').skip(2).step_by(2).map(str::to_string).collect();
                        let hint = suggest(field, &expected)
                            .map(|s| format!("; did you mean '{section}.{s}'?"))
                            .unwrap_or_default();
                        bad(&format!("unknown key '{field}' in [{section}]{hint}"))
                    }
                    None => bad(&msg),
                }
            })?;
        }
        Ok(toml::from_str(&toml::to_string(&doc).expect("serializes")).expect("checked above"))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let cwd = std::env::current_dir().unwrap_or_default();
        let abs = |p: &Path| normalize(&cwd.join(if p.is_absolute() { p.to_path_buf() } else { base.join(p) }));
        self.model.base = abs(&self.model.base);
        self.data.train = self.data.train.map_paths(&abs);
        if let Some(v) = &self.data.validation {
            self.data.validation = Some(v.map_paths(&abs));
        }
        if let Some(t) = &self.data.chat_template
            && t.ends_with(".jinja")
            && !t.contains("{%")
        {
            self.data.chat_template = Some(abs(Path::new(t)).display().to_string());
        }
        self.output.dir = abs(&self.output.dir);
        if let Some(a) = &self.lora.init_from {
            self.lora.init_from = Some(abs(a));
        }
        if let Some(r) = self.preference.as_mut().and_then(|p| p.reference_adapter.as_mut()) {
            *r = abs(r);
        }
    }

    /// The recipe as TOML text (resolved paths), as written into the run folder.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serializes")
    }
}

/// Removes `.` and `..` components lexically (the paths need not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
