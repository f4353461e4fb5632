//! How each decoder layer mixes its tokens, from the architecture's [`LayerPattern`] and
//! config.json's layer keys.

use super::architecture::{ArchitectureSpec, LayerPattern};
use super::hf::HfConfig;

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
    /// Every kind, for the tables built from them.
    pub const ALL: [Self; 3] = [Self::Attention, Self::GatedAttention, Self::GatedDeltaNet];

    /// The mixer's linear layers, named under the decoder layer in PEFT's (named_modules) order: the
    /// one list the model's modules, LoRA targets, the memory plan and merges read.
    pub fn linear_names(self) -> &'static [&'static str] {
        match self {
            Self::Attention | Self::GatedAttention => {
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
            }
            Self::GatedDeltaNet => &[
                "linear_attn.in_proj_qkv",
                "linear_attn.in_proj_z",
                "linear_attn.in_proj_b",
                "linear_attn.in_proj_a",
                "linear_attn.out_proj",
            ],
        }
    }

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

/// Each layer's token mixer and the Gated DeltaNet sizes: every layer attends, except in a hybrid
/// ([`LayerPattern::Hybrid`], Qwen3.5), whose `layer_types` (or, when absent, `full_attention_interval`: every n-th layer attends) say
/// which layers are Gated DeltaNet (`linear_attention`) and which gated attention (`full_attention`).
pub(super) fn resolve_mixers(
    hf: &HfConfig,
    spec: &ArchitectureSpec,
) -> std::result::Result<(Vec<TokenMixer>, Option<GatedDeltaNetConfig>), String> {
    let n = hf.num_hidden_layers;
    // Reserved first: an absurd layer count is an error naming the key, not an abort.
    let mut all: Vec<TokenMixer> = Vec::new();
    all.try_reserve_exact(n).map_err(|_| format!("num_hidden_layers ({n}) is too large"))?;
    let LayerPattern::Hybrid { default_interval } = spec.layers else {
        all.resize(n, TokenMixer::Attention);
        return Ok((all, None));
    };
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
                        "layer_types[{i}] = '{other}' is not supported; {} layers are 'full_attention' or \
                         'linear_attention'",
                        spec.model_type
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?
        }
        None => {
            let every = hf.full_attention_interval.unwrap_or(default_interval);
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
