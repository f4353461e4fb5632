//! `adapter_config.json`: PEFT's description of a LoRA adapter, read and written the same way by
//! training, inference, merges and exports.
//!
//! The on-disk contract is PEFT's (`peft/tuners/lora/config.py`, `LoraConfig`). PEFT adds keys with
//! almost every release (`peft_version`, `layer_replication`, `megatron_config`, `eva_config`,
//! `corda_config`, `trainable_token_indices`, ...), so keys this struct does not name are kept in
//! [`AdapterConfig::extra`] and written back unchanged rather than rejected: refusing a file PEFT itself
//! wrote would be a bug. Keys that change what the weights mean and that lora does not implement
//! (layer replication, rank 0) are refused by [`AdapterConfig::load`]; what only a loaded model
//! cannot compute (trained biases, Conv1D layout, fully trained extra modules) by
//! [`AdapterConfig::check_loadable`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// Which modules carry LoRA factors: a list of name suffixes, or one regex over the full name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names (or suffixes such as `q_proj`), PEFT's list form.
    Names(Vec<String>),
    /// A regular expression matched against the full module name (or `all-linear`).
    Pattern(String),
}

/// A PEFT LoRA `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// `"LORA"` for the adapters lora reads and writes.
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// `"CAUSAL_LM"` for language models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on (Hub id or path), as PEFT records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_name_or_path: Option<String>,
    /// Default rank (per-module overrides in `rank_pattern`; the factors' shapes are authoritative).
    #[serde(default = "default_r")]
    pub r: usize,
    /// Default alpha: the update is scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the LoRA input during training; irrelevant to merging.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Modules that carry factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<TargetModules>,
    /// Rank-stabilized LoRA: scale by `alpha / sqrt(r)` (arXiv:2312.03732).
    #[serde(default)]
    pub use_rslora: bool,
    /// Which biases were trained: `none`, `all` or `lora_only`.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Set for layers storing weights as `[in, out]` (GPT-2's Conv1D): the update is transposed.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// How the factors were initialised (`true`, `"gaussian"`, `"pissa"`, ...).
    #[serde(default = "default_init")]
    pub init_lora_weights: serde_json::Value,
    /// Whether the adapter was saved for inference.
    #[serde(default = "default_true")]
    pub inference_mode: bool,
    /// Only these layer indices were adapted (an int or a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<LayerIndices>,
    /// Per-module rank overrides, keyed by a name pattern.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides, keyed by a name pattern.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Modules trained in full and saved whole (e.g. `lm_head`): they replace the base's tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_to_save: Option<Vec<String>>,
    /// Weight-decomposed LoRA (DoRA): a magnitude per output row of each adapted module.
    #[serde(default)]
    pub use_dora: bool,
    /// Token rows trained in full (PEFT's `trainable_token_indices`): a list of ids for the input
    /// embedding, or ids per embedding module name; the rows' values are saved as
    /// `<module>.token_adapter.trainable_tokens_delta` (`[n, hidden]`, the values, not differences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_token_indices: Option<TokenIndices>,
    /// Every other key PEFT wrote, kept as is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `trainable_token_indices`: ids of `embed_tokens`, or ids per module name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIndices {
    /// Ids of the input embedding.
    Ids(Vec<u32>),
    /// Ids per embedding module name (`{"embed_tokens": [...]}`).
    ByModule(BTreeMap<String, Vec<u32>>),
}

impl TokenIndices {
    /// The ids of the module named `name` (`embed_tokens`, `lm_head`): a plain list is the input
    /// embedding's; a module name matches as the last part of a path.
    pub fn ids_for(&self, name: &str) -> Option<&[u32]> {
        match self {
            Self::Ids(ids) => (name == "embed_tokens").then_some(ids.as_slice()),
            Self::ByModule(m) => m.iter().find(|(k, _)| k.rsplit('.').next() == Some(name)).map(|(_, v)| v.as_slice()),
        }
    }

    /// A module other than the input embedding and the head, if one is named.
    pub fn unsupported(&self) -> Option<&str> {
        match self {
            Self::Ids(_) => None,
            Self::ByModule(m) => {
                m.keys().find(|k| !matches!(k.rsplit('.').next(), Some("embed_tokens" | "lm_head"))).map(String::as_str)
            }
        }
    }
}

/// `layers_to_transform`: one index or a list.
pub type LayerIndices = crate::one_or_many::OneOrMany<usize>;

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn default_init() -> serde_json::Value {
    serde_json::Value::Bool(true)
}
fn default_true() -> bool {
    true
}

impl AdapterConfig {
    /// A plain LoRA config with rank `r` and alpha `alpha` on `targets`, as PEFT would write it.
    pub fn new(r: usize, alpha: f64, targets: Vec<String>) -> Self {
        let mut c: Self = serde_json::from_str("{}").expect("all fields default");
        c.r = r;
        c.lora_alpha = alpha;
        c.task_type = Some("CAUSAL_LM".into());
        c.target_modules = Some(TargetModules::Names(targets));
        c
    }

    /// Reads `adapter_config.json` at `path` and refuses adapters whose weights mean something lora
    /// does not compute.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
        let c: Self = crate::error::from_json(path, &text)?;
        c.check_supported(path)?;
        Ok(c)
    }

    /// Writes the config as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("json");
        crate::atomic::write_atomic(path, (text + "\n").as_bytes())
    }

    /// Refuses adapters whose weights mean something lora does not compute.
    pub fn check_supported(&self, path: &Path) -> Result<()> {
        let unsupported =
            |what: &str| Err(FormatError::folder(path, format!("{what} adapters are not supported (only plain LoRA)")));
        if !self.peft_type.eq_ignore_ascii_case("LORA") {
            return unsupported(&format!("peft_type '{}':", self.peft_type));
        }
        if self.extra.get("layer_replication").is_some_and(|v| !v.is_null()) {
            return unsupported("layer_replication");
        }
        if self.r == 0 {
            return Err(FormatError::folder(path, "r must be at least 1"));
        }
        Ok(())
    }

    /// Refuses what a loaded model cannot compute, on top of [`Self::check_supported`]: trained
    /// biases, GPT-2's Conv1D layout, and fully trained extra modules (a merge applies those; a
    /// model loading the adapter does not).
    pub fn check_loadable(&self, path: &Path) -> Result<()> {
        let refuse = |m: String| Err(FormatError::folder(path, m));
        if self.bias != "none" {
            return refuse(format!(
                "bias '{}' is not supported; lora adapters train no biases (bias = \"none\")",
                self.bias
            ));
        }
        if self.fan_in_fan_out {
            return refuse("fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("adapters with modules_to_save (fully trained extra modules) are not supported".into());
        }
        Ok(())
    }

    /// The alpha of `module` (a full module name): the longest matching `alpha_pattern` key, as PEFT
    /// matches them (`(.*\.)?KEY$`, here as a suffix at a dot boundary), else `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        pattern_lookup(&self.alpha_pattern, module).unwrap_or(self.lora_alpha)
    }

    /// The update scale of `module` whose factors have rank `r`: `alpha / r`, or `alpha / sqrt(r)`
    /// with rsLoRA (PEFT's `LoraLayer.update_layer`).
    pub fn scale_for(&self, module: &str, r: usize) -> f64 {
        let alpha = self.alpha_for(module);
        if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 }
    }
}

fn pattern_lookup<V: Copy>(patterns: &BTreeMap<String, V>, module: &str) -> Option<V> {
    // PEFT matches a key as the regex `(.*\.)?(KEY)$` (its keys for fused experts are regexes:
    // `.*\.gate_up_proj`); a plain name is then a suffix at a dot boundary.
    let regex_match = |k: &str| regex::Regex::new(&format!("^(?:.*\\.)?(?:{k})$")).is_ok_and(|re| re.is_match(module));
    patterns
        .iter()
        .filter(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")) || regex_match(k))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}
