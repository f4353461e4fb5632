//! What a run will hold in memory, worked out from `config.json` and the recipe before any weight
//! is read (`lora train --dry-run`): the frozen base as it will be stored, the adapter with its
//! gradient and AdamW moments, and an estimate of the activations kept for backward.

use lora_core::adapter::config::TargetModules;
use lora_core::adapter::select_paths;
use lora_core::network::config::layer_index;
use lora_core::{BaseDtype, LoadOptions, ModelConfig, Quantize};

use crate::recipe::{Recipe, Targets};

/// Bytes of each part of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The frozen base as stored (embeddings unless they stay in their file, head, linear layers,
    /// norms, biases).
    pub base: u64,
    /// LoRA values, their gradients (and their sum over micro-batches) and both AdamW moments (f32).
    pub adapter: u64,
    /// Activations kept for backward at the recipe's batch size and longest sequence.
    pub activations: u64,
    /// One chunk of the head's logits, their log-softmax and gradient.
    pub head_chunk: u64,
}

impl MemoryPlan {
    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.base + self.adapter + self.activations + self.head_chunk
    }
}

/// Every linear module of the model with its (in, out) widths, in PEFT's order.
pub fn linear_shapes(c: &ModelConfig) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for l in 0..c.num_hidden_layers {
        for (name, d_in, d_out) in c.layer_linears(l) {
            out.push((format!("{}.{name}", c.layer_prefix(l)), d_in, d_out));
        }
        for (name, d_in, d_out) in c.layer_expert_linears(l) {
            out.push((format!("{}.{name}", c.layer_prefix(l)), d_in, d_out));
        }
    }
    out.push(("lm_head".into(), c.hidden_size, c.vocab_size));
    out
}

/// Bytes of a base tensor of `values` values as loaded; `on_gpu`, an NF4 tensor's double-quantized
/// scales are decoded to f32 (lora_core::quant::nf4_device).
fn stored_bytes(values: usize, opts: &LoadOptions, quantizable: bool, on_gpu: bool) -> u64 {
    let v = values as u64;
    match opts.quantize {
        Quantize::Nf4 { double_quant } if quantizable => {
            let blocks = v.div_ceil(64);
            if on_gpu {
                v.div_ceil(8) * 4 + 4 * blocks
            } else if double_quant {
                v.div_ceil(2) + blocks + 4 * blocks.div_ceil(256) + 4
            } else {
                v.div_ceil(2) + 4 * blocks
            }
        }
        _ => {
            v * match opts.dtype {
                BaseDtype::F32 => 4,
                BaseDtype::Bf16 | BaseDtype::F16 => 2,
            }
        }
    }
}

/// The plan of `recipe` on a model of config `c` loaded with `opts`.
pub fn plan(recipe: &Recipe, c: &ModelConfig, opts: &LoadOptions) -> lora_core::Result<MemoryPlan> {
    // A 4-bit checkpoint's linear layers are held as stored, whatever `quantize` says.
    let opts = &match &c.quantization {
        Some(q) => LoadOptions { quantize: Quantize::Nf4 { double_quant: q.double_quant }, ..*opts },
        None => *opts,
    };
    let shapes = linear_shapes(c);
    let (h, vocab) = (c.hidden_size as u64, c.vocab_size as u64);
    let on_gpu = recipe.train.device.parse::<lora_core::Backend>().is_ok_and(|b| !b.is_cpu());
    // Untied embeddings stay in their safetensors file, read a row per token (lora_core's
    // network::embedding), except from a GGUF file and where an f16 base must range-check them.
    let f16_check = opts.dtype == BaseDtype::F16 && !matches!(c.dtype.as_deref(), Some("float16" | "f16"));
    let embed_in_file = !c.tie_word_embeddings && !recipe.model.base.is_file() && !f16_check;
    let mut base = if embed_in_file { 0 } else { stored_bytes(c.vocab_size * c.hidden_size, opts, false, on_gpu) };
    for (path, d_in, d_out) in &shapes {
        let head = path == "lm_head";
        // The head, the routers and Qwen3.5-MoE's shared-expert gates stay in full precision.
        let quantizable = !head && !lora_core::adapter::stays_full_precision(path);
        let gate_up = lora_core::adapter::expert_projection(path) == Some("gate_up_proj");
        if gate_up && (d_in * d_out / 2) % 64 == 0 {
            // An expert's gate and up are quantized each on its own, then stacked.
            base += 2 * stored_bytes(d_in * d_out / 2, opts, quantizable, on_gpu);
        } else if !(head && c.tie_word_embeddings) {
            base += stored_bytes(d_in * d_out, opts, quantizable, on_gpu);
        }
    }
    // Norms (f32): two per layer, the final one, and q/k norms.
    let norms = (2 * c.num_hidden_layers + 1) * c.hidden_size
        + if c.qk_norm { 2 * c.num_hidden_layers * c.head_dim } else { 0 };
    base += 4 * norms as u64;
    // Biases (f32).
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let biases = usize::from(c.qkv_bias) * (q + 2 * kv)
        + usize::from(c.o_bias) * c.hidden_size
        + usize::from(c.mlp_bias) * (2 * c.intermediate_size + c.hidden_size);
    base += 4 * (biases * c.num_hidden_layers) as u64;

    let all: Vec<String> = shapes.iter().map(|(p, _, _)| p.clone()).collect();
    let targets = match &recipe.lora.targets {
        Targets::Names(n) => TargetModules::Names(n.clone()),
        Targets::Pattern(p) => TargetModules::Pattern(p.clone()),
    };
    let selected = select_paths(&all, &targets, recipe.lora.layers.as_deref())?;
    let r = recipe.lora.r as u64;
    let rank = |p: &str| lora_core::adapter::rank_for(p, r as usize) as u64;
    let params: u64 =
        shapes.iter().filter(|(p, _, _)| selected.contains(p)).map(|(p, i, o)| rank(p) * (*i + *o) as u64).sum();
    // Value, gradient and two moments; with several micro-batches a step also keeps the sum of
    // their gradients.
    let copies = if recipe.train.grad_accum > 1 { 5 } else { 4 };
    let adapter = 4 * copies * params;

    let (b, t) = (recipe.train.batch_size as u64, recipe.data.max_seq_len as u64);
    let tokens = b * t;
    let (nh, nkv, hd, inter) =
        (c.num_attention_heads as u64, c.num_key_value_heads as u64, c.head_dim as u64, c.intermediate_size as u64);
    // What one layer keeps for backward, in f32 values: the residual stream and norms (≈ 6·h per
    // token), q/k/v before and after rotation and GQA expansion (≈ 3·(nh + 2·nkv)·hd), the MLP's
    // gate, up, activation and product (4·inter, MoE below), and the attention scores and probabilities
    // (2 · heads · seq² per row, burn's autodiff attention builds them from primitive ops).
    // An MoE layer runs k experts per token: their gate, up, activation and product, and the
    // token rows gathered for each (k·h).
    let ffn = match &c.moe {
        Some(m) => (4 * m.top_k as u64 * m.intermediate_size as u64 + m.top_k as u64 * h).max(4 * inter),
        None => 4 * inter,
    };
    let per_layer = 4 * (tokens * (6 * h + 3 * (nh + 2 * nkv) * hd + ffn) + 2 * b * nh * t * t);
    // Layers below the lowest adapted one need no backward and keep nothing.
    let lowest = selected.iter().filter_map(|p| layer_index(p)).min().unwrap_or(c.num_hidden_layers);
    let layers = (c.num_hidden_layers - lowest) as u64;
    let activations = if recipe.train.gradient_checkpointing {
        4 * tokens * h * layers + per_layer.min(per_layer * layers)
    } else {
        per_layer * layers
    };
    let rows = (lora_core::loss::chunked::chunk_rows(c.vocab_size) as u64).min(tokens);
    let head_chunk = 4 * 3 * rows * vocab;
    Ok(MemoryPlan { base, adapter, activations, head_chunk })
}
