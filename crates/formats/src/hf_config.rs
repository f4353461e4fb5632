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
    /// `Qwen3_5ForCausalLM` / `Qwen3_5ForConditionalGeneration` (Qwen3.5, 3.6, 3.8): Gated DeltaNet
    /// layers between gated full-attention layers, zero-centred norms, partial rotary embeddings.
    Qwen3_5,
}

impl Architecture {
    /// The `architectures` entry transformers writes for it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Qwen3_5 => "Qwen3_5ForCausalLM",
        }
    }

    const ALL: [Self; 5] = [Self::Llama, Self::Mistral, Self::Qwen2, Self::Qwen3, Self::Qwen3_5];

    fn from_hf_name(name: &str) -> Option<Self> {
        if name == QWEN3_5_MULTIMODAL {
            return Some(Self::Qwen3_5);
        }
        Self::ALL.into_iter().find(|a| a.hf_name() == name)
    }

    fn from_model_type(t: &str) -> Option<Self> {
        if t == "qwen3_5" {
            return Some(Self::Qwen3_5);
        }
        Self::ALL.into_iter().find(|a| a.model_type() == t)
    }

    /// The `model_type` of its config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Qwen3_5 => "qwen3_5_text",
        }
    }
}

/// The Hub form of Qwen3.5: the language model under `model.language_model`, its configuration under
/// `text_config`, beside a vision tower (`model.visual`) and a multi-token-prediction head (`mtp`).
pub const QWEN3_5_MULTIMODAL: &str = "Qwen3_5ForConditionalGeneration";

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, \
                         Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration";

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
    // Qwen3.5: the layer pattern, gated attention, partial rotary embeddings, Gated DeltaNet sizes.
    #[serde(default)]
    full_attention_interval: Option<usize>,
    #[serde(default)]
    attn_output_gate: Option<bool>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    linear_num_key_heads: Option<usize>,
    #[serde(default)]
    linear_num_value_heads: Option<usize>,
    #[serde(default)]
    linear_key_head_dim: Option<usize>,
    #[serde(default)]
    linear_value_head_dim: Option<usize>,
    #[serde(default)]
    linear_conv_kernel_dim: Option<usize>,
    /// Set when the file was the Hub's multimodal form and these keys came from its `text_config`.
    #[serde(skip)]
    multimodal: bool,
}

impl HfConfig {
    /// Reads a parsed `config.json`. The Hub form of a multimodal checkpoint
    /// (`Qwen3_5ForConditionalGeneration`) keeps the language model's keys under `text_config`: they are
    /// read from there, with the top level's `architectures` and, when the text part has none, its
    /// `tie_word_embeddings`.
    pub fn from_value(value: Value) -> std::result::Result<Self, serde_path_to_error::Error<serde_json::Error>> {
        let nested = value
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.first().and_then(Value::as_str) == Some(QWEN3_5_MULTIMODAL))
            || value.get("model_type").and_then(Value::as_str) == Some("qwen3_5");
        let (value, flattened) = match (nested, value) {
            (true, Value::Object(mut top)) if top.get("text_config").is_some_and(Value::is_object) => {
                let Some(Value::Object(mut text)) = top.remove("text_config") else { unreachable!("checked") };
                for key in ["architectures", "tie_word_embeddings"] {
                    if let Some(v) = top.remove(key) {
                        text.entry(key).or_insert(v);
                    }
                }
                (Value::Object(text), true)
            }
            (_, v) => (v, false),
        };
        let mut hf: Self = serde_path_to_error::deserialize(value)?;
        hf.multimodal = flattened;
        Ok(hf)
    }
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

/// How a decoder layer mixes its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMixer {
    /// `self_attn`: grouped-query attention with rotary positions.
    Attention,
    /// `self_attn` whose `q_proj` also yields a per-head output gate: `o_proj(attn · sigmoid(gate))`
    /// (Qwen3.5's `attn_output_gate`).
    GatedAttention,
    /// `linear_attn`: Gated DeltaNet, linear attention with a delta-rule state (Qwen3.5).
    GatedDeltaNet,
}

impl TokenMixer {
    /// The name `lora inspect` and the README give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::GatedAttention => "gated attention",
            Self::GatedDeltaNet => "gated deltanet",
        }
    }
}

/// The sizes of a Gated DeltaNet mixer (`linear_*` keys of config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatedDeltaNetConfig {
    /// Query/key heads (`linear_num_key_heads`).
    pub num_key_heads: usize,
    /// Value heads (`linear_num_value_heads`), a multiple of the key heads.
    pub num_value_heads: usize,
    /// Width of a query/key head (`linear_key_head_dim`).
    pub key_head_dim: usize,
    /// Width of a value head (`linear_value_head_dim`).
    pub value_head_dim: usize,
    /// Taps of the causal depthwise convolution (`linear_conv_kernel_dim`).
    pub conv_kernel: usize,
}

impl GatedDeltaNetConfig {
    /// All query and key channels: `num_key_heads · key_head_dim`.
    pub fn key_dim(&self) -> usize {
        self.num_key_heads * self.key_head_dim
    }

    /// All value channels: `num_value_heads · value_head_dim`.
    pub fn value_dim(&self) -> usize {
        self.num_value_heads * self.value_head_dim
    }

    /// Channels of `in_proj_qkv` and of the convolution: `[q | k | v]`.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
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
    /// Each decoder layer's token mixer, in order.
    pub mixers: Vec<TokenMixer>,
    /// Channels of each query/key head that rotate (`head_dim · partial_rotary_factor`); the rest
    /// pass through.
    pub rotary_dim: usize,
    /// RMSNorms scale by `1 + weight` (Qwen3.5's zero-centred norms), except the Gated DeltaNet's
    /// output norm.
    pub zero_centred_norms: bool,
    /// The sizes of the Gated DeltaNet layers, when the model has any.
    pub linear_attention: Option<GatedDeltaNetConfig>,
    /// Where the language model's tensors are: `model` (`model.embed_tokens`, `model.layers.N`,
    /// `model.norm`), or `model.language_model` in the Hub form of a multimodal checkpoint, whose
    /// other tensors (`model.visual.*`, `mtp.*`) are not run.
    pub text_prefix: String,
}

impl ModelConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
        let value: Value = crate::error::from_json(path, text.as_bytes())?;
        let hf = if value.get("text_config").is_some() {
            HfConfig::from_value(value).map_err(|e| {
                let key = e.path().to_string();
                FormatError::Json { path: path.to_path_buf(), key: Some(key), error: e.into_inner() }
            })?
        } else {
            // A flat config straight from the text, so that errors carry their line and column.
            crate::error::from_json(path, text.as_bytes())?
        };
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
        let (rope_theta, rope_scaling, partial) = resolve_rope(hf)?;
        let partial = partial.or(hf.partial_rotary_factor).unwrap_or(1.0);
        // transformers: dim = int(head_dim * partial_rotary_factor).
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if !(partial > 0.0 && partial <= 1.0) || rotary_dim == 0 || rotary_dim % 2 != 0 {
            return Err(format!(
                "partial_rotary_factor {partial} gives {rotary_dim} rotary channels of head_dim {head_dim}; \
                 they must be even and positive"
            ));
        }
        if architecture != Architecture::Qwen3_5 && rotary_dim != head_dim {
            return Err("partial_rotary_factor other than 1 is only supported for qwen3_5".into());
        }
        let (mixers, linear_attention) = resolve_mixers(hf, architecture)?;
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            // Qwen2 always has q/k/v biases and never an output bias.
            Architecture::Qwen2 => (true, false),
            Architecture::Mistral => (false, false),
            Architecture::Llama | Architecture::Qwen3 | Architecture::Qwen3_5 => (attention_bias, attention_bias),
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
            Architecture::Llama | Architecture::Qwen3_5 => None,
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
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Qwen3_5),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            bos_token_id: hf.bos_token_id.as_ref().and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: hf.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
            pad_token_id: hf.pad_token_id.as_ref().and_then(|t| t.to_vec().first().copied()),
            dtype: hf.dtype.clone().or_else(|| hf.torch_dtype.clone()),
            mixers,
            rotary_dim,
            zero_centred_norms: architecture == Architecture::Qwen3_5,
            linear_attention,
            text_prefix: if hf.multimodal { "model.language_model".into() } else { "model".into() },
        })
    }

    /// The checkpoint's own class: the architecture's, or the multimodal wrapper's when the text
    /// model sits under `model.language_model` (`Qwen3_5ForConditionalGeneration`).
    pub fn checkpoint_class(&self) -> &'static str {
        if self.text_prefix == "model" { self.architecture.hf_name() } else { QWEN3_5_MULTIMODAL }
    }

    /// The tensor-name prefix of decoder layer `i`: `model.layers.{i}` (or
    /// `model.language_model.layers.{i}`).
    pub fn layer_prefix(&self, i: usize) -> String {
        format!("{}.layers.{i}", self.text_prefix)
    }

    /// The linear modules of layer `l` with their (in, out) widths, in PEFT's (named_modules) order,
    /// named under the layer (`self_attn.q_proj`).
    pub fn layer_linears(&self, l: usize) -> Vec<(&'static str, usize, usize)> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut out = match (self.mixers[l], &self.linear_attention) {
            (TokenMixer::GatedDeltaNet, Some(g)) => vec![
                ("linear_attn.in_proj_qkv", h, g.conv_dim()),
                ("linear_attn.in_proj_z", h, g.value_dim()),
                ("linear_attn.in_proj_b", h, g.num_value_heads),
                ("linear_attn.in_proj_a", h, g.num_value_heads),
                ("linear_attn.out_proj", g.value_dim(), h),
            ],
            (m, _) => {
                // A gated q_proj yields the query and its gate, head by head.
                let q_out = if m == TokenMixer::GatedAttention { 2 * q } else { q };
                vec![
                    ("self_attn.q_proj", h, q_out),
                    ("self_attn.k_proj", h, kv),
                    ("self_attn.v_proj", h, kv),
                    ("self_attn.o_proj", q, h),
                ]
            }
        };
        out.extend([("mlp.gate_proj", h, i), ("mlp.up_proj", h, i), ("mlp.down_proj", i, h)]);
        out
    }

    /// Whether the model has layers of more than one kind or mixers other than attention: the
    /// architectures that only some of lora's paths (GGUF, the CPU kernels) support yet.
    pub fn is_hybrid(&self) -> bool {
        self.mixers.iter().any(|m| *m != TokenMixer::Attention)
    }

    /// Parameters of the model as built from this config.
    pub fn num_parameters(&self) -> usize {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let attention = |gated: bool| {
            let q_out = if gated { 2 * q } else { q };
            let mut attn = h * q_out + 2 * h * kv + q * h;
            if self.qkv_bias {
                attn += q_out + 2 * kv;
            }
            if self.o_bias {
                attn += h;
            }
            if self.qk_norm {
                attn += 2 * hd;
            }
            attn
        };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let mixers: usize = self
            .mixers
            .iter()
            .map(|m| match m {
                TokenMixer::Attention => attention(false),
                TokenMixer::GatedAttention => attention(true),
                TokenMixer::GatedDeltaNet => {
                    let l = self.linear_attention.expect("resolved with its sizes");
                    let (conv, nv) = (l.conv_dim(), l.num_value_heads);
                    // in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj, conv1d, A_log, dt_bias, norm
                    h * conv
                        + h * l.value_dim()
                        + 2 * h * nv
                        + l.value_dim() * h
                        + conv * l.conv_kernel
                        + 2 * nv
                        + l.value_head_dim
                }
            })
            .sum();
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        embed + mixers + self.num_hidden_layers * (mlp + 2 * h) + h + head
    }
}

/// Each layer's token mixer and the Gated DeltaNet sizes: every layer attends, except in Qwen3.5,
/// whose `layer_types` (or, when absent, `full_attention_interval`: every n-th layer attends) say
/// which layers are Gated DeltaNet (`linear_attention`) and which gated attention (`full_attention`).
fn resolve_mixers(
    hf: &HfConfig,
    architecture: Architecture,
) -> std::result::Result<(Vec<TokenMixer>, Option<GatedDeltaNetConfig>), String> {
    let n = hf.num_hidden_layers;
    if architecture != Architecture::Qwen3_5 {
        return Ok((vec![TokenMixer::Attention; n], None));
    }
    let attention =
        if hf.attn_output_gate.unwrap_or(true) { TokenMixer::GatedAttention } else { TokenMixer::Attention };
    let mixers = match &hf.layer_types {
        Some(types) => {
            if types.len() != n {
                return Err(format!("layer_types has {} entries for {n} num_hidden_layers", types.len()));
            }
            types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "full_attention" => Ok(attention),
                    "linear_attention" => Ok(TokenMixer::GatedDeltaNet),
                    other => Err(format!(
                        "layer_types[{i}] = '{other}' is not supported; qwen3_5 layers are 'full_attention' or \
                         'linear_attention'"
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?
        }
        None => {
            let every = hf.full_attention_interval.unwrap_or(4);
            if every == 0 {
                return Err("full_attention_interval must be positive".into());
            }
            (0..n).map(|i| if (i + 1) % every == 0 { attention } else { TokenMixer::GatedDeltaNet }).collect()
        }
    };
    // transformers' Qwen3_5TextConfig defaults.
    let l = GatedDeltaNetConfig {
        num_key_heads: hf.linear_num_key_heads.unwrap_or(16),
        num_value_heads: hf.linear_num_value_heads.unwrap_or(32),
        key_head_dim: hf.linear_key_head_dim.unwrap_or(128),
        value_head_dim: hf.linear_value_head_dim.unwrap_or(128),
        conv_kernel: hf.linear_conv_kernel_dim.unwrap_or(4),
    };
    if l.num_key_heads == 0 || l.key_head_dim == 0 || l.value_head_dim == 0 || l.conv_kernel == 0 {
        return Err("the linear_* sizes of the Gated DeltaNet layers must be positive".into());
    }
    if l.num_value_heads == 0 || l.num_value_heads % l.num_key_heads != 0 {
        return Err(format!(
            "linear_num_value_heads ({}) must be a multiple of linear_num_key_heads ({})",
            l.num_value_heads, l.num_key_heads
        ));
    }
    Ok((mixers, Some(l)))
}

/// RoPE's base, schedule and, when `rope_parameters` gives one, its `partial_rotary_factor`. Qwen3.5's
/// M-RoPE keys (`mrope_section`, `mrope_interleaved`) are accepted: with text-only positions the
/// three position rows are equal, and interleaved M-RoPE is ordinary rotate-half RoPE on the
/// rotary channels.
fn resolve_rope(hf: &HfConfig) -> std::result::Result<(f64, RopeScaling, Option<f64>), String> {
    // transformers 5 keeps everything in rope_parameters; transformers 4 splits rope_theta / rope_scaling.
    let params = match (&hf.rope_parameters, &hf.rope_scaling) {
        (Some(p), _) if !p.is_null() => Some(p.clone()),
        (_, Some(s)) if !s.is_null() => Some(s.clone()),
        _ => None,
    };
    let theta =
        params.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(hf.rope_theta).unwrap_or(10000.0);
    let Some(p) = params else {
        return Ok((theta, RopeScaling::Default, None));
    };
    let partial = p.get("partial_rotary_factor").and_then(Value::as_f64);
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> std::result::Result<f64, String> {
        p.get(key).and_then(Value::as_f64).ok_or_else(|| format!("rope type '{kind}' needs a numeric '{key}'"))
    };
    match kind {
        "default" => Ok((theta, RopeScaling::Default, partial)),
        "llama3" => Ok((
            theta,
            RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            partial,
        )),
        other => Err(format!("rope type '{other}' is not supported; lora supports 'default' and 'llama3'")),
    }
}

/// The decoder layer in a module or tensor name, wherever its stack sits (`model.layers.3.mlp.up_proj`,
/// `model.language_model.layers.3.mlp.up_proj` → 3): the first `layers.N` segment pair, as PEFT's
/// `layers_to_transform` finds it.
pub fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}
