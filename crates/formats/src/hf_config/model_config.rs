//! The resolved configuration the model runs from: config.json read through the architecture's
//! declaration, checked, with transformers' defaults filled in.

use std::path::Path;

use serde_json::Value;

use super::architecture::{Architecture, AttentionBias, FeedForward, SlidingWindow, supported_classes};
use super::experts::{MoeConfig, resolve_experts};
use super::hf::{ConfigError, HfConfig, TokenIds};
use super::mixers::{GatedDeltaNetConfig, TokenMixer, resolve_mixers};
use super::rope::{RopeScaling, resolve_rope};
use crate::error::{FormatError, Result};

/// A bitsandbytes 4-bit checkpoint's `quantization_config` (what lora reads: NF4).
#[derive(Debug, Clone, PartialEq)]
pub struct Bnb4Bit {
    /// `bnb_4bit_use_double_quant`: the block scales are themselves quantized.
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype`, when given.
    pub compute_dtype: Option<String>,
    /// `llm_int8_skip_modules`: modules left unquantized.
    pub skip_modules: Vec<String>,
}

impl Bnb4Bit {
    /// Reads `quantization_config`, refusing by name what lora does not compute.
    fn from_config(q: &Value) -> std::result::Result<Self, String> {
        let key = |k: &str| q.get(k).filter(|v| !v.is_null());
        let method = key("quant_method").and_then(Value::as_str).unwrap_or("");
        if method != "bitsandbytes" {
            return Err(format!(
                "quantization_config.quant_method '{method}' is not supported; lora reads bitsandbytes 4-bit (nf4) \
                 checkpoints and f32/f16/bf16 models"
            ));
        }
        let flag = |k: &str| -> std::result::Result<bool, String> {
            match key(k) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(format!("quantization_config.{k} must be true or false, not {v}")),
            }
        };
        if flag("load_in_8bit")? {
            return Err(
                "quantization_config.load_in_8bit: 8-bit checkpoints are not supported; lora reads 4-bit nf4".into()
            );
        }
        if !flag("load_in_4bit")? {
            return Err(
                "quantization_config.load_in_4bit is not true; lora reads bitsandbytes 4-bit checkpoints".into()
            );
        }
        match key("bnb_4bit_quant_type").map(|v| v.as_str().ok_or(v)) {
            None | Some(Ok("nf4")) => {}
            Some(Ok(other)) => {
                return Err(format!(
                    "quantization_config.bnb_4bit_quant_type '{other}' is not supported; lora reads nf4"
                ));
            }
            Some(Err(v)) => return Err(format!("quantization_config.bnb_4bit_quant_type must be a string, not {v}")),
        }
        let skip_modules = match key("llm_int8_skip_modules") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|m| m.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("quantization_config.llm_int8_skip_modules must be a list of module names")?,
            Some(v) => return Err(format!("quantization_config.llm_int8_skip_modules must be a list, not {v}")),
        };
        Ok(Self {
            double_quant: flag("bnb_4bit_use_double_quant")?,
            compute_dtype: key("bnb_4bit_compute_dtype").and_then(Value::as_str).map(str::to_string),
            skip_modules,
        })
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
    /// The architecture's feed-forward block: the gated MLP, or (an MoE model's sparse layers)
    /// routed experts; see [`Self::layer_feed_forward`].
    pub feed_forward: FeedForward,
    /// The routed experts' sizes and which layers have them, for an MoE architecture.
    pub moe: Option<MoeConfig>,
    /// The checkpoint's 4-bit quantization (a bitsandbytes NF4 checkpoint), when it has one.
    pub quantization: Option<Bnb4Bit>,
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
        let hf = if value.get("text_config").is_some() || HfConfig::names_a_wrapper(&value) {
            HfConfig::from_value(value).map_err(|e| match e {
                ConfigError::Key { key, error } => {
                    FormatError::Json { path: path.to_path_buf(), key: Some(key), error }
                }
                ConfigError::Message(m) => FormatError::folder(path, m),
            })?
        } else {
            // A flat config straight from the text, so that errors carry their line and column.
            crate::error::from_json(path, text.as_bytes())?
        };
        Self::resolve(&hf).map_err(|m| FormatError::folder(path, m))
    }

    /// Checks an [`HfConfig`] and resolves defaults the way transformers does, by the architecture's
    /// declaration ([`ArchitectureSpec`]).
    pub fn resolve(hf: &HfConfig) -> std::result::Result<Self, String> {
        let (architecture, wrapper) = match hf.architectures.first() {
            Some(name) => Architecture::from_class(name)
                .ok_or_else(|| format!("unsupported architecture '{name}'; lora supports {}", supported_classes()))?,
            None => hf.model_type.as_deref().and_then(Architecture::from_model_type).ok_or_else(|| {
                format!("no 'architectures' and no known 'model_type'; lora supports {}", supported_classes())
            })?,
        };
        let spec = architecture.spec();
        if wrapper && !hf.multimodal {
            let w = spec.wrapper.expect("a wrapper class has its declaration");
            return Err(format!("{}: the {} form needs its '{}' object", w.config_key, w.class, w.config_key));
        }
        if hf.hidden_act != "silu" {
            return Err(format!("hidden_act '{}' is not supported; lora supports 'silu'", hf.hidden_act));
        }
        let quantization = hf.quantization_config.as_ref().map(Bnb4Bit::from_config).transpose()?;
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
        if !spec.partial_rotary && rotary_dim != head_dim {
            return Err(format!("partial_rotary_factor other than 1 is not supported for {}", spec.model_type));
        }
        let (mixers, linear_attention) = resolve_mixers(hf, spec)?;
        let moe = resolve_experts(hf, spec)?;
        // Qwen3.5-MoE has no dense MLP: its width is the shared expert's (the one gated MLP it has).
        let intermediate_size = match (hf.intermediate_size, moe.as_ref().and_then(|m| m.shared_expert)) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => return Err("missing field `intermediate_size`".into()),
        };
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match spec.attention_bias {
            AttentionBias::FromConfig => (attention_bias, attention_bias),
            AttentionBias::QkvOnly => (true, false),
            AttentionBias::Never => (false, false),
        };
        let sliding_window = match spec.sliding_window {
            SlidingWindow::Never => None,
            SlidingWindow::FromConfig => hf.sliding_window,
            SlidingWindow::Qwen => {
                let any_sliding =
                    hf.layer_types.as_ref().map(|t| t.iter().any(|l| l == "sliding_attention")).unwrap_or(false);
                let by_flag = hf.use_sliding_window.unwrap_or(false)
                    && hf.max_window_layers.map(|m| m < hf.num_hidden_layers).unwrap_or(true);
                if any_sliding || by_flag { hf.sliding_window } else { None }
            }
        };
        let text_prefix = match spec.wrapper {
            Some(w) if hf.multimodal => w.prefix.to_string(),
            _ => "model".to_string(),
        };
        let config = Self {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size,
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
            mlp_bias: hf.mlp_bias.unwrap_or(false) && spec.mlp_bias,
            qk_norm: spec.qk_norm,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            bos_token_id: hf.bos_token_id.as_ref().and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: hf.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
            pad_token_id: hf.pad_token_id.as_ref().and_then(|t| t.to_vec().first().copied()),
            dtype: hf.dtype.clone().or_else(|| hf.torch_dtype.clone()),
            feed_forward: spec.feed_forward,
            moe,
            quantization,
            mixers,
            rotary_dim,
            zero_centred_norms: spec.zero_centred_norms,
            linear_attention,
            text_prefix,
        };
        config.check_sizes()?;
        Ok(config)
    }

    /// Refuses sizes whose products overflow (every matrix, and the parameter count), naming the keys:
    /// the model code multiplies them without checking.
    fn check_sizes(&self) -> std::result::Result<(), String> {
        let product = |pairs: &[(&str, usize)]| -> std::result::Result<usize, String> {
            pairs.iter().try_fold(1usize, |acc, (_, v)| acc.checked_mul(*v)).ok_or_else(|| {
                let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
                format!("{} overflows: the sizes are too large", keys.join(" × "))
            })
        };
        let (h, i, v) = (
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
        );
        let heads = ("num_attention_heads", self.num_attention_heads);
        let hd = ("head_dim", self.head_dim);
        product(&[v, h])?;
        product(&[h, i, ("3", 3)])?;
        product(&[h, heads, hd, ("2", 2)])?;
        product(&[("max_position_embeddings", self.max_position_embeddings), hd])?;
        if let Some(l) = &self.linear_attention {
            let (nk, kd) = (("linear_num_key_heads", l.num_key_heads), ("linear_key_head_dim", l.key_head_dim));
            let (nv, vd) = (("linear_num_value_heads", l.num_value_heads), ("linear_value_head_dim", l.value_head_dim));
            let key = product(&[nk, kd, ("2", 2)])?;
            let value = product(&[nv, vd])?;
            let conv = key.checked_add(value).ok_or("linear_* sizes overflow")?;
            product(&[h, ("conv channels", conv)])?;
            product(&[("conv channels", conv), ("linear_conv_kernel_dim", l.conv_kernel)])?;
            product(&[nk, kd, nv, vd])?;
        }
        self.checked_num_parameters()
            .map(|_| ())
            .ok_or_else(|| "the parameter count overflows: num_hidden_layers and the sizes are too large".to_string())
    }

    /// The checkpoint's own class: the architecture's, or the multimodal wrapper's when the text
    /// model sits under `model.language_model` (`Qwen3_5ForConditionalGeneration`).
    pub fn checkpoint_class(&self) -> &'static str {
        match self.architecture.spec().wrapper {
            Some(w) if self.text_prefix == w.prefix => w.class,
            _ => self.architecture.hf_name(),
        }
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
        let mixer = self.mixers[l];
        // (in, out) of each name of the block's table, in its order.
        let mixer_widths: Vec<(usize, usize)> = match (mixer, &self.linear_attention) {
            (TokenMixer::GatedDeltaNet, Some(g)) => vec![
                (h, g.conv_dim()),
                (h, g.value_dim()),
                (h, g.num_value_heads),
                (h, g.num_value_heads),
                (g.value_dim(), h),
            ],
            // A gated q_proj yields the query and its gate, head by head.
            (m, _) => vec![(h, if m == TokenMixer::GatedAttention { 2 * q } else { q }), (h, kv), (h, kv), (q, h)],
        };
        let ffn = self.layer_feed_forward(l);
        let ffn_widths = match ffn {
            FeedForward::GatedMlp => vec![(h, i), (h, i), (i, h)],
            FeedForward::QwenMoe | FeedForward::QwenMoeShared | FeedForward::MixtralMoe => Vec::new(),
        };
        let names = mixer.linear_names().iter().chain(ffn.linear_names());
        names.zip(mixer_widths.into_iter().chain(ffn_widths)).map(|(n, (a, b))| (*n, a, b)).collect()
    }

    /// The router and routed experts' linear modules of layer `l` (none in a dense layer) with their
    /// (in, out) widths, named under the layer as transformers 5 holds them in memory: `mlp.gate`,
    /// then each expert's `mlp.experts.e.gate_up_proj` and `mlp.experts.e.down_proj`.
    pub fn layer_expert_linears(&self, l: usize) -> Vec<(String, usize, usize)> {
        let Some(m) = self.moe.as_ref().filter(|m| m.is_sparse(l)) else { return Vec::new() };
        let (h, i) = (self.hidden_size, m.intermediate_size);
        let mut out = vec![("mlp.gate".to_string(), h, m.num_experts)];
        for e in 0..m.num_experts {
            out.push((format!("mlp.experts.{e}.gate_up_proj"), h, 2 * i));
            out.push((format!("mlp.experts.{e}.down_proj"), i, h));
        }
        if let Some(s) = m.shared_expert {
            out.push(("mlp.shared_expert.gate_proj".to_string(), h, s));
            out.push(("mlp.shared_expert.up_proj".to_string(), h, s));
            out.push(("mlp.shared_expert.down_proj".to_string(), s, h));
            out.push(("mlp.shared_expert_gate".to_string(), h, 1));
        }
        out
    }

    /// Layer `l`'s feed-forward block: routed experts in an MoE model's sparse layers, else the
    /// gated MLP.
    pub fn layer_feed_forward(&self, l: usize) -> FeedForward {
        match &self.moe {
            Some(m) if m.is_sparse(l) => self.feed_forward,
            _ => FeedForward::GatedMlp,
        }
    }

    /// Whether the model has layers of more than one kind or mixers other than attention: the
    /// architectures that only some of lora's paths (GGUF, the CPU kernels) support yet.
    pub fn is_hybrid(&self) -> bool {
        self.mixers.iter().any(|m| *m != TokenMixer::Attention)
    }

    /// Parameters of the model as built from this config.
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().expect("resolve checks that the count fits")
    }

    fn checked_num_parameters(&self) -> Option<usize> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads.checked_mul(hd)?;
        let kv = self.num_key_value_heads.checked_mul(hd)?;
        let attention = |gated: bool| -> Option<usize> {
            let q_out = if gated { q.checked_mul(2)? } else { q };
            let mut attn = h
                .checked_mul(q_out)?
                .checked_add(h.checked_mul(kv)?.checked_mul(2)?)?
                .checked_add(q.checked_mul(h)?)?;
            if self.qkv_bias {
                attn = attn.checked_add(q_out)?.checked_add(kv.checked_mul(2)?)?;
            }
            if self.o_bias {
                attn = attn.checked_add(h)?;
            }
            if self.qk_norm {
                attn = attn.checked_add(2 * hd)?;
            }
            Some(attn)
        };
        let mlp = h.checked_mul(i)?.checked_mul(3)?.checked_add(if self.mlp_bias { 2 * i + h } else { 0 })?;
        let experts = match &self.moe {
            // The router, and each expert's gate, up and down.
            Some(m) => m
                .num_experts
                .checked_mul(h)?
                .checked_add(m.num_experts.checked_mul(h)?.checked_mul(m.intermediate_size)?.checked_mul(3)?)?,
            None => 0,
        };
        let mut total = 0usize;
        for (l, m) in self.mixers.iter().enumerate() {
            let mixer = match m {
                TokenMixer::Attention => attention(false)?,
                TokenMixer::GatedAttention => attention(true)?,
                TokenMixer::GatedDeltaNet => {
                    let l = self.linear_attention.as_ref()?;
                    let (conv, nv) = (l.conv_dim(), l.num_value_heads);
                    // in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj, conv1d, A_log, dt_bias, norm
                    h.checked_mul(conv)?
                        .checked_add(h.checked_mul(l.value_dim())?.checked_mul(2)?)?
                        .checked_add(h.checked_mul(nv)?.checked_mul(2)?)?
                        .checked_add(conv.checked_mul(l.conv_kernel)?)?
                        .checked_add(2 * nv + l.value_head_dim)?
                }
            };
            let ffn = if self.layer_feed_forward(l).is_moe() { experts } else { mlp };
            total = total.checked_add(mixer)?.checked_add(ffn)?.checked_add(2 * h)?;
        }
        let embed = self.vocab_size.checked_mul(h)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        total.checked_add(embed)?.checked_add(h)?.checked_add(head)
    }
}
