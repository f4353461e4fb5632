//! The TOML training recipe: typed, strict, with errors that name `file:line:col`, the key, and the
//! closest valid key.
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
    /// `"kaiming"` (PEFT's default) or `"gaussian"`.
    #[serde(default = "d_init")]
    pub init: String,
    /// Only these decoder layers (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
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
    /// Record format: `"auto"` (from the first record), `"text"`, `"completion"`, `"alpaca"` or `"chat"`.
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

/// Where a recipe came from, for error messages.
#[derive(Debug, Clone)]
pub struct Source {
    /// Display name (the path as given).
    pub name: String,
    /// Full text.
    pub text: String,
}

impl Source {
    /// 1-based line and column of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// The `[section]` that contains a byte offset.
    fn section_at(&self, offset: usize) -> Option<String> {
        self.text[..offset.min(self.text.len())]
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix('[').and_then(|r| r.split(']').next()).map(|s| s.trim().to_string()))
    }

    /// Position of `key = ` inside `[section]`, for errors found after parsing.
    fn locate(&self, section: &str, key: &str) -> Option<(usize, usize)> {
        let mut in_section = false;
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            if let Some(h) = t.strip_prefix('[') {
                in_section = h.split(']').next().map(str::trim) == Some(section);
            } else if in_section && t.split('=').next().map(str::trim) == Some(key) && t.contains('=') {
                let indent = line.len() - line.trim_start().len();
                return Some(self.line_col(offset + indent));
            }
            offset += line.len();
        }
        None
    }
}

/// Edit distance, for did-you-mean suggestions.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Known synonyms users reach for, mapped to our key.
const SYNONYMS: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("lora_alpha", "alpha"),
    ("lora_r", "r"),
    ("rank", "r"),
    ("lora_dropout", "dropout"),
    ("target_modules", "targets"),
    ("num_epochs", "epochs"),
    ("gradient_accumulation_steps", "grad_accum"),
    ("micro_batch_size", "batch_size"),
    ("sequence_len", "max_seq_len"),
    ("lr_scheduler", "schedule"),
    ("output_dir", "dir"),
    ("base_model", "base"),
    ("load_in_4bit", "quantize"),
    ("bnb_4bit_quant_type", "quantize"),
    ("bnb_4bit_use_double_quant", "double_quant"),
    ("torch_dtype", "dtype"),
    ("activation_checkpointing", "gradient_checkpointing"),
    ("use_gradient_checkpointing", "gradient_checkpointing"),
];

fn suggest(unknown: &str, expected: &[String]) -> Option<String> {
    if let Some((_, to)) = SYNONYMS.iter().find(|(from, _)| *from == unknown)
        && expected.iter().any(|e| e == to)
    {
        return Some(to.to_string());
    }
    expected
        .iter()
        .map(|e| (levenshtein(unknown, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min()
        .map(|(_, e)| e.clone())
}

/// Turns a toml deserialisation error into `file:line:col: message`.
fn describe(src: &Source, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    let (pos, section) = match e.span() {
        Some(span) => (Some(src.line_col(span.start)), src.section_at(span.start)),
        None => (None, None),
    };
    let at = match pos {
        Some((l, c)) => format!("{}:{l}:{c}", src.name),
        None => src.name.clone(),
    };
    // "unknown field `x`, expected one of `a`, `b`" -> our wording with a suggestion.
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default();
        let expected: Vec<String> = rest.split('`').skip(2).step_by(2).map(str::to_string).collect();
        let within = section.map(|s| format!(" in [{s}]")).unwrap_or_default();
        let hint = match suggest(unknown, &expected) {
            Some(s) => format!("; did you mean '{s}'?"),
            None => format!("; expected one of: {}", expected.join(", ")),
        };
        return format!("{at}: unknown key '{unknown}'{within}{hint}");
    }
    // A value of the wrong type or range: name the key of the line it sits on.
    let key = e.span().and_then(|span| {
        let line_start = src.text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let line = src.text[line_start..].lines().next()?;
        let (k, _) = line.split_once('=')?;
        let k = k.trim().trim_matches('"');
        (!k.is_empty() && !k.contains(char::is_whitespace)).then(|| k.to_string())
    });
    match (key, section) {
        (Some(k), Some(s)) => format!("{at}: {s}.{k}: {msg}"),
        (Some(k), None) => format!("{at}: {k}: {msg}"),
        (None, s) => format!("{at}: {msg}{}", s.map(|s| format!(" (in [{s}])")).unwrap_or_default()),
    }
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
    }

    /// Checks values that parse but cannot work; errors point at the key.
    pub fn validate(&self, src: &Source) -> Result<()> {
        let err = |section: &str, key: &str, msg: String| {
            let at = match src.locate(section, key) {
                Some((l, c)) => format!("{}:{l}:{c}", src.name),
                None => src.name.clone(),
            };
            Err(TrainError::Recipe(format!("{at}: {section}.{key} {msg}")))
        };
        let (l, d, t) = (&self.lora, &self.data, &self.train);
        if l.r == 0 {
            return err("lora", "r", "must be at least 1".into());
        }
        if !(l.alpha > 0.0 && l.alpha.is_finite()) {
            return err("lora", "alpha", format!("must be positive, got {}", l.alpha));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return err("lora", "dropout", format!("must be in [0, 1), got {}", l.dropout));
        }
        if !["kaiming", "gaussian"].contains(&l.init.as_str()) {
            return err("lora", "init", format!("must be \"kaiming\" or \"gaussian\", got \"{}\"", l.init));
        }
        if let Targets::Names(n) = &l.targets
            && n.is_empty()
        {
            return err("lora", "targets", "must name at least one module".into());
        }
        if l.layers.is_some() && matches!(l.targets, Targets::Pattern(_)) {
            // PEFT refuses layers_to_transform with a string target_modules; our adapters must load there.
            return err(
                "lora",
                "layers",
                "cannot be combined with a string `targets` (PEFT refuses it); list module names".into(),
            );
        }
        if !["auto", "text", "completion", "alpaca", "chat"].contains(&d.format.as_str()) {
            return err(
                "data",
                "format",
                format!("must be auto, text, completion, alpaca or chat, got \"{}\"", d.format),
            );
        }
        if !["truncate", "drop"].contains(&d.overflow.as_str()) {
            return err("data", "overflow", format!("must be \"truncate\" or \"drop\", got \"{}\"", d.overflow));
        }
        for (p, w) in
            d.train.weighted().iter().chain(d.validation.iter().flat_map(Files::weighted).collect::<Vec<_>>().iter())
        {
            if !(*w >= 0.0 && w.is_finite()) {
                return err("data", "train", format!("weight of '{}' must be >= 0, got {w}", p.display()));
            }
        }
        if d.max_seq_len < 2 {
            return err("data", "max_seq_len", format!("must be at least 2, got {}", d.max_seq_len));
        }
        if let Some(f) = d.validation_fraction {
            if !(f > 0.0 && f < 1.0) {
                return err("data", "validation_fraction", format!("must be between 0 and 1, got {f}"));
            }
            if d.validation.is_some() {
                return err("data", "validation_fraction", "cannot be combined with `validation` files".into());
            }
        }
        if t.batch_size == 0 {
            return err("train", "batch_size", "must be at least 1".into());
        }
        if t.grad_accum == 0 {
            return err("train", "grad_accum", "must be at least 1".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return err("train", "lr", format!("must be positive, got {}", t.lr));
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return err("train", "epochs", "must be at least 1 (or set max_steps)".into());
        }
        if t.max_steps == Some(0) {
            return err("train", "max_steps", "must be at least 1".into());
        }
        if !["constant", "linear", "cosine"].contains(&t.schedule.as_str()) {
            return err("train", "schedule", format!("must be constant, linear or cosine, got \"{}\"", t.schedule));
        }
        if !(t.weight_decay >= 0.0) {
            return err("train", "weight_decay", format!("must be >= 0, got {}", t.weight_decay));
        }
        if !(t.max_grad_norm >= 0.0) {
            return err("train", "max_grad_norm", format!("must be >= 0, got {}", t.max_grad_norm));
        }
        if !["cpu", "cuda", "wgpu"].contains(&t.device.as_str()) {
            return err("train", "device", format!("must be \"cpu\", \"cuda\" or \"wgpu\", got \"{}\"", t.device));
        }
        if !["f32", "bf16"].contains(&t.dtype.as_str()) {
            return err("train", "dtype", format!("must be \"f32\" or \"bf16\", got \"{}\"", t.dtype));
        }
        if self.model.dtype != "auto" && self.model.dtype.parse::<lora_core::BaseDtype>().is_err() {
            return err(
                "model",
                "dtype",
                format!("must be \"auto\", \"f32\", \"bf16\" or \"f16\", got \"{}\"", self.model.dtype),
            );
        }
        if lora_core::Quantize::parse(&self.model.quantize, false).is_err() {
            let hint =
                if self.model.quantize.to_ascii_lowercase().contains('4') { "; did you mean \"nf4\"?" } else { "" };
            return err(
                "model",
                "quantize",
                format!("must be \"none\" or \"nf4\", got \"{}\"{hint}", self.model.quantize),
            );
        }
        if self.model.double_quant && !self.model.quantize.to_ascii_lowercase().starts_with("nf4") {
            return err("model", "double_quant", "needs quantize = \"nf4\"".into());
        }
        let gguf = lora_merge::gguf::is_gguf_file(&self.model.base);
        if !self.model.base.is_dir() && !gguf {
            return err(
                "model",
                "base",
                format!("'{}' is not a model folder or a .gguf file", self.model.base.display()),
            );
        }
        if let Some(repo) = &self.output.push_to_hub {
            if !matches!(lora_hub::RepoId::parse(repo), Ok(_)) || !repo.contains('/') {
                return err("output", "push_to_hub", format!("'{repo}' is not a Hub repository id (org/name)"));
            }
            if self.model.hub_id.is_none() {
                return err(
                    "output",
                    "push_to_hub",
                    "needs the base's Hub id for the model card: set model.hub_id = \"org/name\" (or give model.base as a Hub id)".into(),
                );
            }
        }
        for p in self
            .data
            .train
            .to_vec()
            .iter()
            .chain(self.data.validation.iter().flat_map(Files::to_vec).collect::<Vec<_>>().iter())
        {
            if !p.is_file() {
                let key = if self.data.train.to_vec().contains(p) { "train" } else { "validation" };
                return err("data", key, format!("file '{}' does not exist", p.display()));
            }
        }
        Ok(())
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
