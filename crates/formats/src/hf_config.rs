//! `config.json` as transformers writes it, and the resolved configuration the model runs from: the
//! one reading every command (training, inference, merges, exports) makes of a model folder's
//! configuration.
//!
//! Both forms seen in the wild are read: the Hub form of transformers 4 (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and the transformers 5 form (`rope_parameters {rope_theta, rope_type}`, `dtype`).
//! Unknown keys are accepted on purpose: Hub configs carry dozens of keys that change no numbers
//! (`_name_or_path`, `use_cache`, `initializer_range`, ...). Keys that would change the numbers and that
//! lora does not implement are refused by name in [`ModelConfig::resolve`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{FormatError, Result};

/// The architectures lora implements, by their `architectures` / `model_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2, Llama 3.x, SmolLM, TinyLlama, ...).
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): q/k/v biases.
    Qwen2,
    /// `Qwen3ForCausalLM`: RMSNorm on queries and keys per head.
    Qwen3,
}

impl Architecture {
    /// The `architectures` entry transformers writes for it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    fn from_hf_name(name: &str) -> Option<Self> {
        [Self::Llama, Self::Mistral, Self::Qwen2, Self::Qwen3].into_iter().find(|a| a.hf_name() == name)
    }

    fn from_model_type(t: &str) -> Option<Self> {
        [Self::Llama, Self::Mistral, Self::Qwen2, Self::Qwen3].into_iter().find(|a| a.model_type() == t)
    }

    /// The `model_type` of its config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

/// A serde mirror of the keys of `config.json` that matter to the numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    bos_token_id: Option<TokenIds>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pad_token_id: Option<TokenIds>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    pretraining_tp: Option<usize>,
    #[serde(default)]
    quantization_config: Option<Value>,
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

/// The frequency schedule of rotary position embeddings.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Overall stretch of low frequencies.
        factor: f64,
        /// Wavelength boundary (in units of the original context) below which frequencies are stretched.
        low_freq_factor: f64,
        /// Wavelength boundary above which frequencies are kept.
        high_freq_factor: f64,
        /// The context length of pre-training.
        original_max_position_embeddings: f64,
    },
    /// Divisors of each inverse frequency, as GGUF files store Llama 3.1's schedule
    /// (`rope_freqs.weight`, one per pair of channels).
    Factors(Vec<f32>),
}

/// The resolved configuration the model is built from.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Which family.
    pub architecture: Architecture,
    /// Rows of the embedding and of the head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the gated MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency schedule.
    pub rope_scaling: RopeScaling,
    /// Longest sequence the model was built for.
    pub max_position_embeddings: usize,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys (Qwen3).
    pub qk_norm: bool,
    /// The head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Attention window when the model uses one: longer sequences are refused.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence id from config.json.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids from config.json.
    pub eos_token_ids: Vec<u32>,
    /// Padding id from config.json.
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint declares (`bfloat16`, `float32`, ...), if any.
    pub dtype: Option<String>,
}

impl ModelConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
        let hf: HfConfig = crate::error::from_json(path, text.as_bytes())?;
        Self::resolve(&hf).map_err(|m| FormatError::folder(path, m))
    }

    /// Checks an [`HfConfig`] and resolves defaults the way transformers does for each architecture.
    pub fn resolve(hf: &HfConfig) -> std::result::Result<Self, String> {
        let architecture =
            match hf.architectures.first() {
                Some(name) => Architecture::from_hf_name(name)
                    .ok_or_else(|| format!("unsupported architecture '{name}'; lora supports {SUPPORTED}"))?,
                None => hf.model_type.as_deref().and_then(Architecture::from_model_type).ok_or_else(|| {
                    format!("no 'architectures' and no known 'model_type'; lora supports {SUPPORTED}")
                })?,
            };
        if hf.hidden_act != "silu" {
            return Err(format!("hidden_act '{}' is not supported; lora supports 'silu'", hf.hidden_act));
        }
        if hf.quantization_config.is_some() {
            return Err(
                "quantized checkpoints (quantization_config) are not supported; use an f32/f16/bf16 model".into()
            );
        }
        if hf.pretraining_tp.unwrap_or(1) != 1 {
            return Err("pretraining_tp other than 1 is not supported".into());
        }
        let heads = hf.num_attention_heads;
        if heads == 0 || hf.num_hidden_layers == 0 || hf.hidden_size == 0 || hf.vocab_size == 0 {
            return Err("num_attention_heads, num_hidden_layers, hidden_size and vocab_size must be positive".into());
        }
        let kv_heads = hf.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        if hf.head_dim.is_none() && !hf.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size ({}) is not a multiple of num_attention_heads ({heads}), and no head_dim is given",
                hf.hidden_size
            ));
        }
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!("head_dim {head_dim} must be even and positive (rotary embeddings)"));
        }
        let (rope_theta, rope_scaling) = resolve_rope(hf)?;
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            // Qwen2 always has q/k/v biases and never an output bias.
            Architecture::Qwen2 => (true, false),
            Architecture::Mistral => (false, false),
            Architecture::Llama | Architecture::Qwen3 => (attention_bias, attention_bias),
        };
        let sliding_window = match architecture {
            Architecture::Mistral => hf.sliding_window,
            Architecture::Qwen2 | Architecture::Qwen3 => {
                let any_sliding =
                    hf.layer_types.as_ref().map(|t| t.iter().any(|l| l == "sliding_attention")).unwrap_or(false);
                let by_flag = hf.use_sliding_window.unwrap_or(false)
                    && hf.max_window_layers.map(|m| m < hf.num_hidden_layers).unwrap_or(true);
                if any_sliding || by_flag { hf.sliding_window } else { None }
            }
            Architecture::Llama => None,
        };
        Ok(Self {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: hf.mlp_bias.unwrap_or(false) && architecture == Architecture::Llama,
            qk_norm: architecture == Architecture::Qwen3,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            bos_token_id: hf.bos_token_id.as_ref().and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: hf.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
            pad_token_id: hf.pad_token_id.as_ref().and_then(|t| t.to_vec().first().copied()),
            dtype: hf.dtype.clone().or_else(|| hf.torch_dtype.clone()),
        })
    }

    /// Parameters of the model as built from this config.
    pub fn num_parameters(&self) -> usize {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * hd;
        }
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        embed + self.num_hidden_layers * layer + h + head
    }
}

fn resolve_rope(hf: &HfConfig) -> std::result::Result<(f64, RopeScaling), String> {
    // transformers 5 keeps everything in rope_parameters; transformers 4 splits rope_theta / rope_scaling.
    let params = match (&hf.rope_parameters, &hf.rope_scaling) {
        (Some(p), _) if !p.is_null() => Some(p.clone()),
        (_, Some(s)) if !s.is_null() => Some(s.clone()),
        _ => None,
    };
    let theta =
        params.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(hf.rope_theta).unwrap_or(10000.0);
    let Some(p) = params else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> std::result::Result<f64, String> {
        p.get(key).and_then(Value::as_f64).ok_or_else(|| format!("rope type '{kind}' needs a numeric '{key}'"))
    };
    match kind {
        "default" => Ok((theta, RopeScaling::Default)),
        "llama3" => Ok((
            theta,
            RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
        )),
        other => Err(format!("rope type '{other}' is not supported; lora supports 'default' and 'llama3'")),
    }
}
