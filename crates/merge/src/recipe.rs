//! `merge.toml`: mergekit's merge configuration, key for key, written in TOML.
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
    /// Parameters for every tensor and (as fallbacks) every model.
    #[serde(default)]
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
    /// Parameters of this model.
    #[serde(default)]
    pub parameters: BTreeMap<String, Setting>,
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
    /// Reads a TOML configuration; errors carry the file, line and column and name unknown keys.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MergeError::io(path, e))?;
        Self::parse(&text).map_err(|message| MergeError::Config { path: path.to_path_buf(), message })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let mut msg = e.message().to_string();
            if let Some(span) = e.span() {
                let line = text[..span.start].matches('\n').count() + 1;
                let col = span.start - text[..span.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                msg = format!("{line}:{col}: {msg}");
            }
            msg
        })
    }
}
