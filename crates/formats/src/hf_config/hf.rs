//! `config.json` as transformers writes it: a serde mirror of the keys that matter to the numbers.
//!
//! Unknown keys are accepted on purpose: Hub configs carry dozens of keys that change no numbers
//! (`_name_or_path`, `use_cache`, `initializer_range`, ...). A known key of the wrong JSON type is an
//! error naming it, never a silent default.

use serde::Deserialize;
use serde_json::Value;

use super::architecture::{Architecture, Wrapper};

/// A serde mirror of the keys of `config.json` that matter to the numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub(super) architectures: Vec<String>,
    #[serde(default)]
    pub(super) model_type: Option<String>,
    pub(super) vocab_size: usize,
    pub(super) hidden_size: usize,
    /// The dense MLP's width; Qwen3.5-MoE, whose every layer routes to experts, has none.
    #[serde(default)]
    pub(super) intermediate_size: Option<usize>,
    pub(super) num_hidden_layers: usize,
    pub(super) num_attention_heads: usize,
    #[serde(default)]
    pub(super) num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub(super) head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub(super) hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub(super) max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub(super) rms_norm_eps: f64,
    #[serde(default)]
    pub(super) tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub(super) rope_theta: Option<f64>,
    #[serde(default)]
    pub(super) rope_scaling: Option<Value>,
    #[serde(default)]
    pub(super) rope_parameters: Option<Value>,
    #[serde(default)]
    pub(super) attention_bias: Option<bool>,
    #[serde(default)]
    pub(super) mlp_bias: Option<bool>,
    #[serde(default)]
    pub(super) sliding_window: Option<usize>,
    #[serde(default)]
    pub(super) use_sliding_window: Option<bool>,
    #[serde(default)]
    pub(super) max_window_layers: Option<usize>,
    #[serde(default)]
    pub(super) layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub(super) bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub(super) eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub(super) pad_token_id: Option<TokenIds>,
    #[serde(default)]
    pub(super) torch_dtype: Option<String>,
    #[serde(default)]
    pub(super) dtype: Option<String>,
    #[serde(default)]
    pub(super) pretraining_tp: Option<usize>,
    #[serde(default)]
    pub(super) quantization_config: Option<Value>,
    // Qwen3.5: the layer pattern, gated attention, partial rotary embeddings, Gated DeltaNet sizes.
    #[serde(default)]
    pub(super) full_attention_interval: Option<usize>,
    #[serde(default)]
    pub(super) attn_output_gate: Option<bool>,
    #[serde(default)]
    pub(super) partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub(super) linear_num_key_heads: Option<usize>,
    #[serde(default)]
    pub(super) linear_num_value_heads: Option<usize>,
    #[serde(default)]
    pub(super) linear_key_head_dim: Option<usize>,
    #[serde(default)]
    pub(super) linear_value_head_dim: Option<usize>,
    #[serde(default)]
    pub(super) linear_conv_kernel_dim: Option<usize>,
    // Mixture of experts (Qwen3-MoE, Mixtral): the experts, the router, which layers are sparse.
    #[serde(default)]
    pub(super) num_experts: Option<usize>,
    #[serde(default)]
    pub(super) num_local_experts: Option<usize>,
    #[serde(default)]
    pub(super) num_experts_per_tok: Option<usize>,
    #[serde(default)]
    pub(super) moe_intermediate_size: Option<usize>,
    #[serde(default)]
    pub(super) norm_topk_prob: Option<bool>,
    #[serde(default)]
    pub(super) decoder_sparse_step: Option<usize>,
    #[serde(default)]
    pub(super) mlp_only_layers: Option<Vec<usize>>,
    #[serde(default)]
    pub(super) router_jitter_noise: Option<f64>,
    #[serde(default)]
    pub(super) shared_expert_intermediate_size: Option<usize>,
    #[serde(default)]
    pub(super) output_router_logits: Option<bool>,
    #[serde(default)]
    pub(super) router_aux_loss_coef: Option<f64>,
    /// Set when the file was the Hub's multimodal form and these keys came from its `text_config`.
    #[serde(skip)]
    pub(super) multimodal: bool,
}

impl HfConfig {
    /// Reads a parsed `config.json`. The Hub form of a multimodal checkpoint
    /// (`Qwen3_5ForConditionalGeneration`, a [`super::Wrapper`]) keeps the language model's keys under its
    /// `config_key` (`text_config`): they are read from there, with the top level's `architectures`
    /// and, when the text part has none, its `tie_word_embeddings` and `quantization_config` (a 4-bit
    /// save writes it at the top). A wrapper without that object is an error naming the key.
    pub fn from_value(value: Value) -> std::result::Result<Self, ConfigError> {
        let wrapper = Self::wrapper_of(&value);
        let (value, flattened) = match (wrapper, value) {
            (Some(w), Value::Object(mut top)) => {
                let Some(Value::Object(mut text)) = top.remove(w.config_key) else {
                    return Err(ConfigError::Message(format!(
                        "{}: the {} form keeps the language model's configuration in an object '{}', and it has none",
                        w.config_key, w.class, w.config_key
                    )));
                };
                for key in ["architectures", "tie_word_embeddings", "quantization_config"] {
                    if let Some(v) = top.remove(key) {
                        text.entry(key).or_insert(v);
                    }
                }
                (Value::Object(text), Some(w.config_key))
            }
            (_, v) => (v, None),
        };
        let mut hf: Self = serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Key {
            key: match flattened {
                Some(under) => format!("{under}.{}", e.path()),
                None => e.path().to_string(),
            },
            error: e.into_inner(),
        })?;
        hf.multimodal = flattened.is_some();
        Ok(hf)
    }
}

impl HfConfig {
    /// Whether a parsed `config.json` names a multimodal wrapper (by its class, or by its
    /// `model_type` when it gives no class), whose text configuration is nested.
    pub fn names_a_wrapper(value: &Value) -> bool {
        Self::wrapper_of(value).is_some()
    }

    fn wrapper_of(value: &Value) -> Option<Wrapper> {
        let class =
            value.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str);
        let found = match class {
            Some(c) => Architecture::from_class(c),
            None => value.get("model_type").and_then(Value::as_str).and_then(Architecture::from_model_type),
        };
        match found {
            Some((a, true)) => a.spec().wrapper,
            _ => None,
        }
    }
}

/// Why a `config.json` value could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// A key holds a value of the wrong type (a number written as a string, an object for a list).
    Key {
        /// The key's path (`text_config.hidden_size`).
        key: String,
        /// What serde said.
        error: serde_json::Error,
    },
    /// Anything else, already worded.
    Message(String),
}

fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}

/// A token id field that transformers writes as one id or a list of ids.
pub type TokenIds = crate::one_or_many::OneOrMany<u32>;
