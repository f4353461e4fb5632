//! `adapter_config.json` as PEFT writes and reads it (PEFT `LoraConfig`).
//!
//! Reading is lenient about keys (PEFT adds keys with every release: `megatron_config`,
//! `loftq_config`, `eva_config`, ...) but strict about the ones that change the numbers: a DoRA,
//! bias-training or embedding adapter is refused by name rather than loaded wrongly.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result};

/// `target_modules`: a list of module names (matched as suffixes of the module path) or a regex
/// matched against the whole path; `"all-linear"` selects every linear layer but the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// `["q_proj", "v_proj"]`.
    Names(Vec<String>),
    /// A regex (full match), or `"all-linear"`.
    Pattern(String),
}

/// The keys of `adapter_config.json` that lora reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `"LORA"`.
    pub peft_type: String,
    /// `"CAUSAL_LM"`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on (a Hub id or a path).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// Scaling numerator.
    pub lora_alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which modules carry adapters.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// s = alpha / √r instead of alpha / r.
    #[serde(default)]
    pub use_rslora: bool,
    /// `"none"`: biases are not trained.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// Only true for GPT-2 style Conv1D weights.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// `true` (kaiming-uniform A, zero B), `"gaussian"`, ...
    #[serde(default = "init_true")]
    pub init_lora_weights: Value,
    /// Written as true for saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
    /// Restrict adapters to these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    /// Per-module rank overrides (the tensor shapes carry them too).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Extra fully-trained modules (refused: lora adapters are pure LoRA).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// DoRA (refused).
    #[serde(default)]
    pub use_dora: bool,
    /// PEFT version that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft_version: Option<String>,
}

/// `layers_to_transform`: one index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// One layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerIndices {
    /// The indices as a list.
    pub fn to_vec(&self) -> Vec<usize> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

fn bias_none() -> String {
    "none".into()
}
fn init_true() -> Value {
    Value::Bool(true)
}

impl AdapterConfig {
    /// Reads `adapter_config.json` and refuses variants lora does not implement.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        let cfg: Self =
            serde_json::from_str(&text).map_err(|e| CoreError::Json { path: path.to_path_buf(), source: e })?;
        let refuse = |m: &str| Err(CoreError::config(path, m));
        if cfg.peft_type != "LORA" {
            return refuse(&format!("peft_type '{}' is not supported; lora reads LORA adapters", cfg.peft_type));
        }
        if cfg.use_dora {
            return refuse("DoRA adapters (use_dora) are not supported");
        }
        if cfg.bias != "none" {
            return refuse(&format!(
                "bias '{}' is not supported; lora adapters train no biases (bias = \"none\")",
                cfg.bias
            ));
        }
        if cfg.fan_in_fan_out {
            return refuse("fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported");
        }
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("adapters with modules_to_save (fully trained extra modules) are not supported");
        }
        if cfg.r == 0 {
            return refuse("r must be at least 1");
        }
        Ok(cfg)
    }

    /// alpha for one module path, honouring `alpha_pattern` (PEFT matches a pattern as a suffix).
    pub fn alpha_for(&self, module_path: &str) -> f64 {
        self.alpha_pattern
            .iter()
            .find(|(pat, _)| module_path == pat.as_str() || module_path.ends_with(&format!(".{pat}")))
            .map(|(_, a)| *a)
            .unwrap_or(self.lora_alpha)
    }
}
