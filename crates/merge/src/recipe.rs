//! A merge configuration: mergekit's, key for key, as mergekit's own YAML (`.yml`, `.yaml`: a
//! published recipe runs as it is) or written in TOML (any other name).
//!
//! ```toml
//! merge_method = "ties"
//! base_model = "models/base"
//! dtype = "float16"
//! [parameters]
//! normalize = true
//! [[models]]
//! model = "models/math"
//! parameters = { weight = 0.7, density = 0.5 }
//! [[models]]
//! model = "models/base+adapters/code"      # a base with an adapter folded in while streaming
//! parameters = { weight = [0.0, 0.5, 1.0], density = [{ filter = "mlp", value = 0.3 }, { value = 0.6 }] }
//! ```
//!
//! mergekit's `slices:` form is read too when it is one slice whose sources each span every layer
//! (the usual shape of slerp recipes); it is then the same as `models:`. Several slices, or a
//! `layer_range` that leaves layers out (layer-stacking "frankenmerges"), are refused by name.
//!
//! A parameter is a number or bool, a list of numbers interpolated across the layers (a "gradient"),
//! or a list of `{ filter, value }` rows where the first row whose filter is a substring of the tensor
//! name (or that has no filter) wins, as in mergekit's `evaluate_setting`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{MergeError, Result};

/// A merge configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// `linear`, `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`, `breadcrumbs`,
    /// `breadcrumbs_ties`, `della`, `della_linear`, `slerp` or `model_stock`.
    pub merge_method: String,
    /// The model task vectors are taken against (required by all methods but `linear`).
    #[serde(default)]
    pub base_model: Option<String>,
    /// The models merged, with their parameters.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// mergekit's other way of listing the models: one slice of every layer (see the module docs).
    /// Folded into `models` by [`MergeConfig::parse_as`].
    #[serde(default)]
    pub slices: Vec<Slice>,
    /// Parameters for every tensor and (as fallbacks) every model.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub parameters: BTreeMap<String, Setting>,
    /// mergekit's compute dtype; lora always computes in f32 and writes this dtype unless `out_dtype`.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Output dtype.
    #[serde(default)]
    pub out_dtype: Option<String>,
    /// Where the tokenizer comes from: `base` (default) or a model of the merge.
    #[serde(default)]
    pub tokenizer_source: Option<String>,
    /// Seed of the random methods (DARE, DELLA); lora's extension (mergekit takes `--random-seed`).
    #[serde(default)]
    pub random_seed: Option<u64>,
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// A folder, or `folder+adapter_folder`.
    pub model: String,
    /// Parameters of this model (YAML's empty `parameters:` is none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub parameters: BTreeMap<String, Setting>,
    /// The layers `[start, end)` this model contributes, from a slice source; the merge checks
    /// that it is every layer.
    #[serde(skip)]
    pub layer_range: Option<[usize; 2]>,
}

/// One of mergekit's `slices:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// The models of this slice.
    pub sources: Vec<SliceSource>,
}

/// One source of a slice.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSource {
    /// A folder, or `folder+adapter_folder`.
    pub model: String,
    /// The layers `[start, end)` taken from it.
    pub layer_range: [usize; 2],
    /// Parameters of this model.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub parameters: BTreeMap<String, Setting>,
}

/// YAML writes an empty mapping as `parameters:`, which is null.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, Setting>, D::Error> {
    Ok(Option::<BTreeMap<String, Setting>>::deserialize(d)?.unwrap_or_default())
}

/// The language a configuration is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// TOML (`merge.toml`).
    Toml,
    /// YAML, mergekit's own (`merge.yml`, `mergekit_config.yml`).
    Yaml,
}

impl Syntax {
    /// YAML for `.yml` / `.yaml` files, TOML for any other name.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("yml" | "yaml") => Self::Yaml,
            _ => Self::Toml,
        }
    }

    /// The file name the configuration is kept under in a merged folder (mergekit keeps its YAML
    /// as `mergekit_config.yml`).
    pub fn saved_name(self) -> &'static str {
        match self {
            Self::Toml => "merge.toml",
            Self::Yaml => "mergekit_config.yml",
        }
    }

    /// The code-fence language of the model card.
    pub fn fence(self) -> &'static str {
        match self {
            Self::Toml => "toml",
            Self::Yaml => "yaml",
        }
    }
}

/// A parameter's value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Setting {
    /// A flag (`normalize = false`).
    Bool(bool),
    /// A number.
    Number(f64),
    /// Values interpolated across layers.
    Gradient(Vec<f64>),
    /// Rows tried in order; the first whose filter is in the tensor name applies.
    Filtered(Vec<Conditional>),
}

/// One `{ filter, value }` row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditional {
    /// A substring of the tensor name; absent or `*` matches every tensor.
    #[serde(default)]
    pub filter: Option<String>,
    /// The value where it matches.
    pub value: Setting,
}

/// A resolved scalar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A flag.
    Bool(bool),
    /// A number.
    Number(f64),
}

impl Setting {
    /// The value for tensor `name` at layer position `t` ∈ [0, 1], or `None` when no row matches.
    pub fn evaluate(&self, name: &str, t: f64) -> Option<Value> {
        match self {
            Setting::Bool(b) => Some(Value::Bool(*b)),
            Setting::Number(x) => Some(Value::Number(*x)),
            Setting::Gradient(v) if v.is_empty() => None,
            Setting::Gradient(v) => {
                // mergekit: i0 = int(t·(n−1)), linear between i0 and i0+1
                let scaled = t * (v.len() - 1) as f64;
                let i0 = scaled as usize;
                let i1 = (i0 + 1).min(v.len() - 1);
                let frac = scaled - i0 as f64;
                Some(Value::Number((1.0 - frac) * v[i0] + frac * v[i1]))
            }
            Setting::Filtered(rows) => rows
                .iter()
                .find(|c| match c.filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => name.contains(f),
                })
                .and_then(|c| c.value.evaluate(name, t)),
        }
    }
}

/// One model of a merge: a folder and, optionally, an adapter folded into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The model folder.
    pub path: PathBuf,
    /// An adapter folder to fold in (`folder+adapter`).
    pub adapter: Option<PathBuf>,
}

impl ModelRef {
    /// Parses `folder` or `folder+adapter`, resolving relative paths against the working directory
    /// when they exist there, else against `config_dir`.
    pub fn parse(s: &str, config_dir: &Path) -> Self {
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() || p.exists() { p } else { config_dir.join(p) }
        };
        match s.split_once('+') {
            Some((m, a)) if !a.is_empty() => Self { path: resolve(m), adapter: Some(resolve(a)) },
            _ => Self { path: resolve(s), adapter: None },
        }
    }
}

impl MergeConfig {
    /// Reads a configuration, YAML or TOML by its extension ([`Syntax::of`]), with its text (kept
    /// beside the merged model); errors carry the file, line and column and name unknown keys.
    pub fn load(path: &Path) -> Result<(Self, String)> {
        let text = std::fs::read_to_string(path).map_err(|e| MergeError::io(path, e))?;
        let config = Self::parse_as(&text, Syntax::of(path))
            .map_err(|message| MergeError::Config { path: path.to_path_buf(), message })?;
        Ok((config, text))
    }

    /// Parses text in `syntax`, then folds a `slices:` list into `models`.
    pub fn parse_as(text: &str, syntax: Syntax) -> std::result::Result<Self, String> {
        let config: Self = match syntax {
            Syntax::Toml => toml::from_str(text).map_err(|e| {
                let mut msg = e.message().to_string();
                if let Some(span) = e.span() {
                    let line = text[..span.start].matches('\n').count() + 1;
                    let col = span.start - text[..span.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                    msg = format!("{line}:{col}: {msg}");
                }
                msg
            })?,
            // serde_norway's message holds "at line L column C"; lead with it instead, as TOML errors do.
            Syntax::Yaml => serde_norway::from_str(text).map_err(|e| match e.location() {
                Some(l) => {
                    let msg = e.to_string();
                    let suffix = format!(" at line {} column {}", l.line(), l.column());
                    format!("{}:{}: {}", l.line(), l.column(), msg.replacen(&suffix, "", 1))
                }
                None => e.to_string(),
            })?,
        };
        config.fold_slices()
    }

    fn fold_slices(mut self) -> std::result::Result<Self, String> {
        if self.slices.is_empty() {
            return Ok(self);
        }
        if !self.models.is_empty() {
            return Err("give the models either as `models` or as `slices`, not both".into());
        }
        if self.slices.len() > 1 {
            return Err(format!(
                "{} slices: stacking layers of several slices (a \"frankenmerge\") is not supported; \
                 lora merges whole models (one slice whose sources span every layer, or `models`)",
                self.slices.len()
            ));
        }
        let slice = self.slices.remove(0);
        self.models = slice
            .sources
            .into_iter()
            .map(|s| ModelEntry { model: s.model, parameters: s.parameters, layer_range: Some(s.layer_range) })
            .collect();
        Ok(self)
    }
}
