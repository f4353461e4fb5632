//! The architectures lora implements, each one declaration ([`ArchitectureSpec`]): the names a
//! checkpoint gives it, how its `config.json` maps onto the blocks, and which blocks it is built from.
//! [`super::ModelConfig::resolve`] reads the declaration and nothing else architecture-specific, and
//! so do `lora inspect` and README's table of architectures ([`architectures_table`], checked by a
//! test), so the three cannot drift.

/// The architectures lora implements.
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
    /// `Qwen3MoeForCausalLM` (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B): Qwen3's attention
    /// with routed experts.
    Qwen3Moe,
    /// `MixtralForCausalLM`: Mistral's attention with routed experts.
    Mixtral,
    /// `Qwen3_5MoeForCausalLM` / `Qwen3_5MoeForConditionalGeneration` (Qwen3.5/3.6-35B-A3B and
    /// larger): Qwen3.5's layers with routed experts and a gated shared expert.
    Qwen3_5Moe,
}

/// Which attention projections carry biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBias {
    /// q/k/v and o as `attention_bias` says (default none).
    FromConfig,
    /// q/k/v always, o never, whatever the config says (Qwen2).
    QkvOnly,
    /// None, whatever the config says (Mistral).
    Never,
}

/// When attention is restricted to a window of recent tokens (longer sequences are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// Never.
    Never,
    /// Whenever `sliding_window` is set (Mistral).
    FromConfig,
    /// When `layer_types` names a `sliding_attention` layer, or `use_sliding_window` is set and
    /// `max_window_layers` is below the layer count (Qwen2, Qwen3).
    Qwen,
}

/// The token mixers of the decoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPattern {
    /// Every layer is grouped-query attention.
    Attention,
    /// Gated DeltaNet layers (`linear_attention`) between full-attention ones (`full_attention`,
    /// gated unless `attn_output_gate` is false), from `layer_types` or, without it, every
    /// `full_attention_interval`-th layer (default given here) attending (Qwen3.5).
    Hybrid {
        /// `full_attention_interval` when config.json gives none.
        default_interval: usize,
    },
}

/// The feed-forward block of the decoder layers (an MoE architecture's sparse layers; its dense
/// ones, if any, have the gated MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForward {
    /// SwiGLU: `down_proj(silu(gate_proj(x)) · up_proj(x))`.
    GatedMlp,
    /// Routed experts under Qwen's names: the router `mlp.gate`, expert `e`'s gated MLP
    /// `mlp.experts.e.{gate,up,down}_proj` (fused on disk as `mlp.experts.gate_up_proj` and
    /// `mlp.experts.down_proj` by transformers 5 and the Qwen3.5 checkpoints).
    QwenMoe,
    /// [`Self::QwenMoe`] plus a shared expert every token goes through, weighted by a sigmoid gate:
    /// `mlp.shared_expert.{gate,up,down}_proj`, `mlp.shared_expert_gate` (Qwen3.5-MoE).
    QwenMoeShared,
    /// Routed experts under Mixtral's names: `block_sparse_moe.gate`, and
    /// `block_sparse_moe.experts.e.{w1,w3,w2}` (gate, up, down).
    MixtralMoe,
}

impl FeedForward {
    /// Every kind, for the tables built from them.
    pub const ALL: [Self; 4] = [Self::GatedMlp, Self::QwenMoe, Self::QwenMoeShared, Self::MixtralMoe];

    /// The block's linear layers that take LoRA, named under the decoder layer in PEFT's
    /// (named_modules) order. Routed experts take none yet.
    pub fn linear_names(self) -> &'static [&'static str] {
        match self {
            Self::GatedMlp => &["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
            Self::QwenMoe | Self::QwenMoeShared | Self::MixtralMoe => &[],
        }
    }

    /// The name `lora inspect` and README give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::GatedMlp => "gated MLP (SwiGLU)",
            Self::QwenMoe | Self::MixtralMoe => "routed experts (SwiGLU), top-k softmax router",
            Self::QwenMoeShared => "routed experts + gated shared expert (SwiGLU), top-k softmax router",
        }
    }

    /// Where a checkpoint stores one expert's projections: the block under the layer, and the gate,
    /// up and down projections' names (`block.experts.e.NAME.weight`). Mixtral has its own names.
    pub fn expert_names(self) -> (&'static str, [&'static str; 3]) {
        match self {
            Self::MixtralMoe => ("block_sparse_moe", ["w1", "w3", "w2"]),
            _ => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
        }
    }

    /// Whether the block routes tokens to experts.
    pub fn is_moe(self) -> bool {
        self != Self::GatedMlp
    }
}

/// A multimodal wrapper class whose checkpoint holds the language model beside other towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrapper {
    /// The wrapper's `architectures` entry.
    pub class: &'static str,
    /// The wrapper's `model_type`.
    pub model_type: &'static str,
    /// The key of config.json holding the language model's configuration.
    pub config_key: &'static str,
    /// The tensor-name prefix of the language model (`model.language_model`).
    pub prefix: &'static str,
}

/// Everything lora knows about one architecture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchitectureSpec {
    /// Which one.
    pub architecture: Architecture,
    /// The `architectures` entry transformers writes for the text model.
    pub class: &'static str,
    /// The text model's `model_type`.
    pub model_type: &'static str,
    /// The model families published under it, for README and `lora inspect`.
    pub models: &'static str,
    /// The multimodal checkpoint form, when the Hub ships one.
    pub wrapper: Option<Wrapper>,
    /// Biases of the attention projections.
    pub attention_bias: AttentionBias,
    /// Whether `mlp_bias` is honoured (otherwise the MLP has no biases).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys.
    pub qk_norm: bool,
    /// RMSNorms scale by `1 + weight` (except the Gated DeltaNet's output norm).
    pub zero_centred_norms: bool,
    /// Whether `partial_rotary_factor` may be below 1.
    pub partial_rotary: bool,
    /// Sliding-window attention.
    pub sliding_window: SlidingWindow,
    /// The token mixers.
    pub layers: LayerPattern,
    /// The feed-forward block.
    pub feed_forward: FeedForward,
    /// llama.cpp's `general.architecture` for it, when lora reads and writes it as GGUF.
    pub gguf: Option<&'static str>,
    /// Tensors (name suffixes) the architecture keeps in f32 when the checkpoint stores them so,
    /// whatever the other tensors' dtype: a conversion (`lora merge --dtype`) leaves them in f32.
    pub f32_tensors: &'static [&'static str],
    /// Tensors (name prefixes) a checkpoint may carry beside the language model, kept on disk and
    /// through merges but never run (a vision tower, a multi-token-prediction head).
    pub carried: &'static [&'static str],
}

/// The declarations, in README's order.
pub const ARCHITECTURES: [ArchitectureSpec; 8] = [
    ArchitectureSpec {
        architecture: Architecture::Llama,
        class: "LlamaForCausalLM",
        model_type: "llama",
        models: "Llama 2, Llama 3.x, SmolLM, TinyLlama",
        wrapper: None,
        attention_bias: AttentionBias::FromConfig,
        mlp_bias: true,
        qk_norm: false,
        zero_centred_norms: false,
        partial_rotary: false,
        sliding_window: SlidingWindow::Never,
        layers: LayerPattern::Attention,
        feed_forward: FeedForward::GatedMlp,
        gguf: Some("llama"),
        f32_tensors: &[],
        carried: &[],
    },
    ArchitectureSpec {
        architecture: Architecture::Mistral,
        class: "MistralForCausalLM",
        model_type: "mistral",
        models: "Mistral",
        wrapper: None,
        attention_bias: AttentionBias::Never,
        mlp_bias: false,
        qk_norm: false,
        zero_centred_norms: false,
        partial_rotary: false,
        sliding_window: SlidingWindow::FromConfig,
        layers: LayerPattern::Attention,
        feed_forward: FeedForward::GatedMlp,
        gguf: Some("llama"),
        f32_tensors: &[],
        carried: &[],
    },
    ArchitectureSpec {
        architecture: Architecture::Qwen2,
        class: "Qwen2ForCausalLM",
        model_type: "qwen2",
        models: "Qwen2, Qwen2.5",
        wrapper: None,
        attention_bias: AttentionBias::QkvOnly,
        mlp_bias: false,
        qk_norm: false,
        zero_centred_norms: false,
        partial_rotary: false,
        sliding_window: SlidingWindow::Qwen,
        layers: LayerPattern::Attention,
        feed_forward: FeedForward::GatedMlp,
        gguf: Some("qwen2"),
        f32_tensors: &[],
        carried: &[],
    },
    ArchitectureSpec {
        architecture: Architecture::Qwen3,
        class: "Qwen3ForCausalLM",
        model_type: "qwen3",
        models: "Qwen3",
        wrapper: None,
        attention_bias: AttentionBias::FromConfig,
        mlp_bias: false,
        qk_norm: true,
        zero_centred_norms: false,
        partial_rotary: false,
        sliding_window: SlidingWindow::Qwen,
        layers: LayerPattern::Attention,
        feed_forward: FeedForward::GatedMlp,
        gguf: Some("qwen3"),
        f32_tensors: &[],
        carried: &[],
    },
    ArchitectureSpec {
        architecture: Architecture::Qwen3_5,
        class: "Qwen3_5ForCausalLM",
        model_type: "qwen3_5_text",
        models: "Qwen3.5, Qwen3.6, Qwen3.8 (dense)",
        wrapper: Some(Wrapper {
            class: "Qwen3_5ForConditionalGeneration",
            model_type: "qwen3_5",
            config_key: "text_config",
            prefix: "model.language_model",
        }),
        attention_bias: AttentionBias::FromConfig,
        mlp_bias: false,
        qk_norm: true,
        zero_centred_norms: true,
        partial_rotary: true,
        sliding_window: SlidingWindow::Never,
        layers: LayerPattern::Hybrid { default_interval: 4 },
        feed_forward: FeedForward::GatedMlp,
        gguf: Some("qwen35"),
        // Qwen ships these in f32 beside bf16 weights: exp(A_log) magnifies any rounding.
        f32_tensors: &["linear_attn.A_log", "linear_attn.norm.weight"],
        carried: &["model.visual.", "mtp."],
    },
    ArchitectureSpec {
        architecture: Architecture::Qwen3_5Moe,
        class: "Qwen3_5MoeForCausalLM",
        model_type: "qwen3_5_moe_text",
        models: "Qwen3.5-35B-A3B, Qwen3.6-35B-A3B, Qwen3.5-122B-A10B",
        wrapper: Some(Wrapper {
            class: "Qwen3_5MoeForConditionalGeneration",
            model_type: "qwen3_5_moe",
            config_key: "text_config",
            prefix: "model.language_model",
        }),
        attention_bias: AttentionBias::FromConfig,
        mlp_bias: false,
        qk_norm: true,
        zero_centred_norms: true,
        partial_rotary: true,
        sliding_window: SlidingWindow::Never,
        layers: LayerPattern::Hybrid { default_interval: 4 },
        feed_forward: FeedForward::QwenMoeShared,
        gguf: Some("qwen35moe"),
        f32_tensors: &["linear_attn.A_log", "linear_attn.norm.weight"],
        carried: &["model.visual.", "mtp."],
    },
    ArchitectureSpec {
        architecture: Architecture::Qwen3Moe,
        class: "Qwen3MoeForCausalLM",
        model_type: "qwen3_moe",
        models: "Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B",
        wrapper: None,
        attention_bias: AttentionBias::FromConfig,
        mlp_bias: false,
        qk_norm: true,
        zero_centred_norms: false,
        partial_rotary: false,
        sliding_window: SlidingWindow::Qwen,
        layers: LayerPattern::Attention,
        feed_forward: FeedForward::QwenMoe,
        gguf: Some("qwen3moe"),
        f32_tensors: &[],
        carried: &[],
    },
    ArchitectureSpec {
        architecture: Architecture::Mixtral,
        class: "MixtralForCausalLM",
        model_type: "mixtral",
        models: "Mixtral 8x7B, 8x22B",
        wrapper: None,
        attention_bias: AttentionBias::Never,
        mlp_bias: false,
        qk_norm: false,
        zero_centred_norms: false,
        partial_rotary: false,
        sliding_window: SlidingWindow::FromConfig,
        layers: LayerPattern::Attention,
        feed_forward: FeedForward::MixtralMoe,
        gguf: Some("llama"),
        f32_tensors: &[],
        carried: &[],
    },
];

impl Architecture {
    /// Its declaration.
    pub fn spec(self) -> &'static ArchitectureSpec {
        ARCHITECTURES.iter().find(|s| s.architecture == self).expect("every architecture is declared")
    }

    /// The `architectures` entry transformers writes for the text model.
    pub fn hf_name(self) -> &'static str {
        self.spec().class
    }

    /// The `model_type` of the text model's config.json.
    pub fn model_type(self) -> &'static str {
        self.spec().model_type
    }

    /// The architecture a checkpoint class names, and whether it is the multimodal wrapper.
    pub fn from_class(name: &str) -> Option<(Self, bool)> {
        Self::find(|text| text.class == name, |w| w.class == name)
    }

    /// The architecture a `model_type` names, and whether it is the multimodal wrapper's.
    pub fn from_model_type(t: &str) -> Option<(Self, bool)> {
        Self::find(|text| text.model_type == t, |w| w.model_type == t)
    }

    /// The first declaration whose text model (`false`) or wrapper (`true`) matches.
    fn find(text: impl Fn(&ArchitectureSpec) -> bool, wrapper: impl Fn(&Wrapper) -> bool) -> Option<(Self, bool)> {
        ARCHITECTURES.iter().find_map(|s| match (text(s), s.wrapper.as_ref().is_some_and(&wrapper)) {
            (true, _) => Some((s.architecture, false)),
            (false, true) => Some((s.architecture, true)),
            (false, false) => None,
        })
    }
}

/// Where the decoder layers of a checkpoint sit: `model.layers.`, and each wrapper's
/// (`model.language_model.layers.`).
pub fn layer_stack_prefixes() -> Vec<String> {
    let mut out = vec!["model.layers.".to_string()];
    for w in ARCHITECTURES.iter().filter_map(|s| s.wrapper) {
        let p = format!("{}.layers.", w.prefix);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Every class lora reads, for error messages.
pub fn supported_classes() -> String {
    let mut names = Vec::new();
    for s in &ARCHITECTURES {
        names.push(s.class);
        if let Some(w) = s.wrapper {
            names.push(w.class);
        }
    }
    names.join(", ")
}

/// README's table of architectures, one row per declaration.
pub fn architectures_table() -> String {
    let mut out = String::from(
        "| `model_type` | checkpoint classes | models | token mixers | feed-forward | GGUF |\n|---|---|---|---|---|---|\n",
    );
    for s in &ARCHITECTURES {
        let classes = match s.wrapper {
            Some(w) => format!("`{}`, `{}` (`{}`)", s.class, w.class, w.model_type),
            None => format!("`{}`", s.class),
        };
        let mixers = match s.layers {
            LayerPattern::Attention if s.qk_norm => "attention (q/k norms)".to_string(),
            LayerPattern::Attention => "attention".to_string(),
            LayerPattern::Hybrid { .. } => "Gated DeltaNet + gated attention".to_string(),
        };
        let gguf = s.gguf.map_or_else(|| "not yet".to_string(), |g| format!("`{g}`"));
        out.push_str(&format!(
            "| `{}` | {classes} | {} | {mixers} | {} | {gguf} |\n",
            s.model_type,
            s.models,
            s.feed_forward.name()
        ));
    }
    out
}
