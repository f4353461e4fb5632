//! A `qwen35` GGUF file (llama.cpp's Qwen3.5) read as the Hugging Face text model it was converted
//! from: the configuration from the `qwen35.*` keys, and each tensor under its Hugging Face name with
//! the converter's transforms undone (`lora_formats::gguf::qwen35`). A multi-token-prediction block,
//! which llama.cpp counts in `block_count` (`nextn_predict_layers` of them), is left unread.

use lora_formats::gguf::qwen35::{LinearHeads, apply, transform};
use serde_json::{Value as Json, json};

use crate::error::{CoreError, Result};
use crate::io::gguf::model::Meta;
use crate::network::config::ModelConfig;

/// The `config.json` of a `qwen35` file (a `Qwen3_5ForCausalLM` text model) or a `qwen35moe` file
/// (`Qwen3_5MoeForCausalLM`).
pub(crate) fn config_json(m: &Meta) -> Result<Json> {
    let g = m.g;
    let blocks = m.need("block_count")?;
    let mtp = m.int("nextn_predict_layers")?.unwrap_or(0);
    let layers = blocks.checked_sub(mtp).filter(|&l| l > 0).ok_or_else(|| {
        m.error(format!("qwen35.block_count {blocks} leaves no decoder layer beside {mtp} prediction layers"))
    })?;
    let heads = m.need("attention.head_count")?;
    let head_dim = m.need("attention.key_length")?;
    // llama.cpp takes both head sizes of the Gated DeltaNet from one key.
    let state = m.need("ssm.state_size")?;
    let (groups, value_heads) = (m.need("ssm.group_count")?, m.need("ssm.time_step_rank")?);
    if groups == 0 || value_heads % groups != 0 {
        return Err(m.error(format!(
            "qwen35.ssm.time_step_rank {value_heads} (value heads) is not a multiple of qwen35.ssm.group_count {groups}"
        )));
    }
    if let Some(inner) = m.int("ssm.inner_size")?
        && inner != value_heads * state
    {
        return Err(
            m.error(format!("qwen35.ssm.inner_size {inner} is not time_step_rank {value_heads} x state_size {state}"))
        );
    }
    let layer_types: Vec<&str> = match m.array("attention.recurrent_layers")? {
        Some(flags) => {
            if (flags.len() as u64) < layers {
                return Err(m.error(format!(
                    "qwen35.attention.recurrent_layers has {} entries for {layers} layers",
                    flags.len()
                )));
            }
            let flags = flags[..layers as usize]
                .iter()
                .map(|v| v.as_bool().ok_or_else(|| m.error("qwen35.attention.recurrent_layers must hold booleans")));
            flags
                .map(|f| f.map(|recurrent| if recurrent { "linear_attention" } else { "full_attention" }))
                .collect::<Result<_>>()?
        }
        None => {
            let every = m.int("full_attention_interval")?.unwrap_or(4).max(1);
            (1..=layers).map(|i| if i % every == 0 { "full_attention" } else { "linear_attention" }).collect()
        }
    };
    let rotary = m.int("rope.dimension_count")?.unwrap_or(head_dim);
    let mut rope = json!({
        "rope_type": "default",
        "rope_theta": m.float("rope.freq_base")?.unwrap_or(10_000_000.0),
        "partial_rotary_factor": rotary as f64 / head_dim as f64,
    });
    if let Some(sections) = m.array("rope.dimension_sections")? {
        let sections: Vec<u64> = sections.iter().take(3).filter_map(|v| v.as_u64()).collect();
        rope["mrope_section"] = json!(sections);
        rope["mrope_interleaved"] = json!(true);
    }
    let mut cfg = json!({
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "vocab_size": m.vocab_size()?,
        "hidden_size": m.need("embedding_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": m.int("attention.head_count_kv")?.unwrap_or(heads),
        "head_dim": head_dim,
        "rms_norm_eps": m.float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
        "max_position_embeddings": m.int("context_length")?.unwrap_or(262_144),
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
        "attention_bias": g.tensors.iter().any(|t| t.name.ends_with(".attn_q.bias")),
        "linear_conv_kernel_dim": m.need("ssm.conv_kernel")?,
        "linear_key_head_dim": state,
        "linear_value_head_dim": state,
        "linear_num_key_heads": groups,
        "linear_num_value_heads": value_heads,
        "layer_types": layer_types,
        "rope_parameters": rope,
    });
    if m.arch == "qwen35moe" {
        // Qwen3.5-MoE: routed experts, always renormalised, and a shared expert in every layer.
        let experts = m.need("expert_count")?;
        let used = m.need("expert_used_count")?;
        if used == 0 || used > experts {
            return Err(m.error(format!("qwen35moe.expert_used_count {used} must be between 1 and {experts}")));
        }
        cfg["architectures"] = json!(["Qwen3_5MoeForCausalLM"]);
        cfg["model_type"] = json!("qwen3_5_moe_text");
        cfg["num_experts"] = json!(experts);
        cfg["num_experts_per_tok"] = json!(used);
        cfg["moe_intermediate_size"] = json!(m.need("expert_feed_forward_length")?);
        cfg["shared_expert_intermediate_size"] = json!(m.need("expert_shared_feed_forward_length")?);
    } else {
        cfg["intermediate_size"] = json!(m.need("feed_forward_length")?);
    }
    m.insert_special_tokens(&mut cfg);
    Ok(cfg)
}

/// The Gated DeltaNet's heads of a Qwen3.5 model, which the value-head reorder needs.
pub fn linear_heads(config: &ModelConfig) -> Option<LinearHeads> {
    config.linear_attention.map(LinearHeads::from)
}

/// Tensor `name`'s values as Hugging Face holds them, from the file's (`values`, in the file's shape
/// `found`, outermost first). `expected` is the Hugging Face shape; the convolution's
/// `[channels, kernel]` becomes `[channels, 1, kernel]`.
pub fn from_gguf(
    name: &str,
    values: Vec<f32>,
    found: &[usize],
    expected: &[usize],
    heads: &LinearHeads,
    path: &str,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let squeezed: Vec<usize> = if name.ends_with("linear_attn.conv1d.weight") {
        expected.iter().copied().filter(|&d| d != 1).collect()
    } else {
        expected.to_vec()
    };
    if found != squeezed.as_slice() {
        return Err(CoreError::Gguf(format!(
            "{path}: tensor {} ({name}) has shape {found:?}, expected {squeezed:?}",
            lora_formats::gguf::qwen35::tensor_name(name).unwrap_or_default()
        )));
    }
    let rows = found.first().copied().unwrap_or(1);
    let cols = found.iter().skip(1).product::<usize>().max(1);
    let values = apply(transform(name, heads), &values, rows, cols, heads, false);
    Ok((values, expected.to_vec()))
}
