//! `lora export MODEL_DIR -o model.gguf` for a Qwen3.5 folder (either checkpoint form): llama.cpp's
//! `qwen35` file as its converter writes it (llama.cpp 0.3.36, `conversion/qwen.py`), with the keys,
//! names and value transforms of [`crate::gguf::qwen35`].
//!
//! - The vision tower (`model.visual.*`) is not written: llama.cpp runs it from a separate `mmproj`
//!   file, which its converter makes with `--mmproj` from the original checkpoint.
//! - The multi-token-prediction block (`mtp.*`), which the Hub's checkpoints carry, is written as the
//!   converter writes it by default: one more block (`blk.L.nextn.*` and the layer's own tensors),
//!   counted in `block_count` and `nextn_predict_layers`. A folder without it gives the converter's
//!   `--no-mtp` file.
//! - llama.cpp takes both head sizes of the Gated DeltaNet from one key (`ssm.state_size`), so a
//!   model whose key and value heads differ in size is refused by name.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{MergeError, Result};
use crate::export_gguf_model::{
    ModelExportReport, Planned, file_type, read_f32, tensor_type, tokenizer_metadata, write_planned,
};
use crate::gguf::qwen35::{LinearHeads, apply, mtp_tensor_name, mtp_text_name, tensor_name, text_form, transform};
use crate::gguf::{GgmlType, Value};
use crate::model_dir::ModelDir;
use lora_formats::hf_config::{Architecture, ModelConfig, TokenMixer};

/// Qwen3.5's interleaved M-RoPE sections, which llama.cpp's loader requires, when `config.json`
/// gives none (the converter's `_QWEN35_DEFAULT_MROPE_SECTION`).
const DEFAULT_MROPE_SECTION: [i32; 4] = [11, 11, 10, 0];

/// Whether `config.json` describes a Qwen3.5 model (either form).
pub(crate) fn is_qwen3_5(cfg: &Json) -> bool {
    matches!(cfg["model_type"].as_str(), Some("qwen3_5" | "qwen3_5_text" | "qwen3_5_moe" | "qwen3_5_moe_text"))
}

/// The tensors of the folder that llama.cpp runs from another file (the vision tower's `mmproj`).
fn left_out(hf: &str) -> bool {
    hf.starts_with("model.visual.")
}

/// Layers of the multi-token-prediction block the folder holds (`mtp.layers.N`).
fn mtp_layers(model: &ModelDir) -> usize {
    let layer = |n: &str| {
        let rest = n.strip_prefix("model.").unwrap_or(n).strip_prefix("mtp.layers.")?;
        rest.split_once('.')?.0.parse::<usize>().ok()
    };
    model.names().filter_map(layer).map(|i| i + 1).max().unwrap_or(0)
}

/// Exports the Qwen3.5 folder `dir` to `out`.
pub(crate) fn export(
    dir: &Path,
    model: &ModelDir,
    cfg: &Json,
    out: &Path,
    ggml_type: GgmlType,
) -> Result<ModelExportReport> {
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    let arch = match config.architecture {
        Architecture::Qwen3_5 => "qwen35",
        Architecture::Qwen3_5Moe => "qwen35moe",
        _ => return Err(MergeError::folder(dir, "config.json does not describe a Qwen3.5 model")),
    };
    if config.quantization.is_some() {
        return Err(MergeError::folder(
            dir,
            "a 4-bit checkpoint cannot be exported as it is; fold it into a bf16 folder first (lora merge)",
        ));
    }
    let text = cfg.get("text_config").filter(|t| t.is_object()).unwrap_or(cfg);
    let heads = match &config.linear_attention {
        Some(l) if l.key_head_dim != l.value_head_dim => {
            return Err(MergeError::folder(
                dir,
                format!(
                    "linear_key_head_dim {} differs from linear_value_head_dim {}: llama.cpp's qwen35 takes both \
                     from one key (ssm.state_size) and cannot run this model",
                    l.key_head_dim, l.value_head_dim
                ),
            ));
        }
        Some(l) => LinearHeads::from(*l),
        None => LinearHeads { key_heads: 1, value_heads: 1, key_dim: 0, value_dim: 0 },
    };
    let mtp = mtp_layers(model);
    let meta = metadata(dir, arch, &config, text, &heads, ggml_type, mtp)?;
    let (tokenizer, pre) = tokenizer_metadata(dir, text, config.vocab_size)?;
    let meta: Vec<(String, Value)> = meta.into_iter().chain(tokenizer).collect();

    // Routed experts (a prediction block's too), stacked per layer as the converter stacks them.
    let layers = config.num_hidden_layers;
    let text_name = |hf: &str| mtp_text_name(hf, layers).or_else(|| Some(text_form(hf)));
    let (mut plan, in_stacks) = crate::export_gguf_experts::plan(model, ggml_type, &text_name)?;
    for hf in model.names() {
        if left_out(hf) || (config.tie_word_embeddings && hf == "lm_head.weight") || in_stacks.contains(hf) {
            continue;
        }
        let (gguf, name) = gguf_name(hf, config.num_hidden_layers).ok_or_else(|| {
            MergeError::Mismatch(format!("{}: tensor '{hf}' has no place in a llama.cpp qwen35 file", dir.display()))
        })?;
        let shape = model.require(hf)?.info.shape.clone();
        let conv = name.ends_with("linear_attn.conv1d.weight");
        // The convolution `[channels, 1, kernel]` is stored squeezed, and always in F32, as the
        // converter keeps it (`SSM_CONV1D` is among its F32-only tensors).
        let dims: Vec<u64> = shape.iter().rev().filter(|&&d| !conv || d != 1).map(|&d| d as u64).collect();
        // The routers and the shared expert's gate too (`FFN_GATE_INP`, `FFN_GATE_INP_SHEXP`).
        let f32_only = conv || gguf.ends_with("_norm.weight") || gguf.contains(".ffn_gate_inp");
        let t = if f32_only { GgmlType::F32 } else { tensor_type(&dims, ggml_type) };
        plan.push(Planned { gguf, hf: Some(hf.to_string()), stack: Vec::new(), dims, ggml_type: t });
    }
    let values = |p: &Planned| -> Result<Vec<f32>> {
        if !p.stack.is_empty() {
            return crate::export_gguf_experts::stacked_values(model, &p.stack, p.dims[0] as usize);
        }
        let hf = p.hf.as_deref().expect("every qwen35 tensor comes from the folder");
        let shape = model.require(hf)?.info.shape.clone();
        let rows = shape.first().copied().unwrap_or(1);
        let cols = shape.iter().skip(1).product::<usize>().max(1);
        let (_, name) = gguf_name(hf, config.num_hidden_layers).expect("planned");
        Ok(apply(transform(&name, &heads), &read_f32(model, hf)?, rows, cols, &heads, true))
    };
    write_planned(out, &meta, &plan, &values)?;
    Ok(ModelExportReport { out: out.to_path_buf(), architecture: arch.into(), tensors: plan.len(), pre })
}

/// The GGUF name of a tensor of the folder (`layers` decoder layers), and the text-form name whose
/// transform applies.
fn gguf_name(hf: &str, layers: usize) -> Option<(String, String)> {
    if let Some(named) = mtp_tensor_name(hf, layers) {
        return Some(named);
    }
    let text = text_form(hf);
    Some((tensor_name(&text)?, text))
}

/// The `general.*` and `qwen35.*` (`qwen35moe.*`) keys, in the converter's order.
fn metadata(
    dir: &Path,
    arch: &str,
    config: &ModelConfig,
    text: &Json,
    heads: &LinearHeads,
    ggml_type: GgmlType,
    mtp: usize,
) -> Result<Vec<(String, Value)>> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let u32_of = |v: usize| Value::U32(v as u32);
    let rope = text.get("rope_parameters").filter(|v| v.is_object()).or_else(|| text.get("rope_scaling"));
    let sections: Vec<i32> = match rope.and_then(|r| r.get("mrope_section")).and_then(Json::as_array) {
        Some(s) => {
            let mut s: Vec<i32> = s.iter().map(|v| v.as_i64().unwrap_or(0) as i32).collect();
            s.resize(4, 0);
            s
        }
        None => DEFAULT_MROPE_SECTION.to_vec(),
    };
    // The MTP block is an attention layer.
    let recurrent: Vec<Value> = config
        .mixers
        .iter()
        .map(|m| Value::Bool(*m == TokenMixer::GatedDeltaNet))
        .chain(std::iter::repeat_n(Value::Bool(false), mtp))
        .collect();
    let k = |key: &str| format!("{arch}.{key}");
    let mut meta = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name)),
        (k("block_count"), u32_of(config.num_hidden_layers + mtp)),
        (k("context_length"), u32_of(config.max_position_embeddings)),
        (k("embedding_length"), u32_of(config.hidden_size)),
    ];
    // Qwen3.5-MoE has no dense width.
    if config.moe.is_none() {
        meta.push((k("feed_forward_length"), u32_of(config.intermediate_size)));
    }
    meta.extend([
        (k("attention.head_count"), u32_of(config.num_attention_heads)),
        (k("attention.head_count_kv"), u32_of(config.num_key_value_heads)),
        (k("rope.dimension_sections"), Value::Array(5, sections.into_iter().map(Value::I32).collect())),
        (k("rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(config.rms_norm_eps as f32)),
    ]);
    if let Some(m) = &config.moe {
        meta.extend([(k("expert_count"), u32_of(m.num_experts)), (k("expert_used_count"), u32_of(m.top_k))]);
    }
    meta.extend([
        (k("attention.key_length"), u32_of(config.head_dim)),
        (k("attention.value_length"), u32_of(config.head_dim)),
        ("general.file_type".into(), Value::U32(file_type(ggml_type)?)),
    ]);
    if let Some(m) = &config.moe {
        meta.extend([
            (k("expert_feed_forward_length"), u32_of(m.intermediate_size)),
            (k("expert_shared_feed_forward_length"), u32_of(m.shared_expert.unwrap_or(0))),
        ]);
    }
    if mtp > 0 {
        meta.push((k("nextn_predict_layers"), u32_of(mtp)));
    }
    meta.extend([
        (k("ssm.conv_kernel"), u32_of(config.linear_attention.map_or(4, |l| l.conv_kernel))),
        (k("ssm.state_size"), u32_of(heads.key_dim)),
        (k("ssm.group_count"), u32_of(heads.key_heads)),
        (k("ssm.time_step_rank"), u32_of(heads.value_heads)),
        (k("ssm.inner_size"), u32_of(heads.value_heads * heads.value_dim)),
        (k("attention.recurrent_layers"), Value::Array(7, recurrent)),
        (k("full_attention_interval"), u32_of(text["full_attention_interval"].as_u64().unwrap_or(4) as usize)),
        (k("rope.dimension_count"), u32_of(config.rotary_dim)),
        ("general.quantization_version".into(), Value::U32(2)),
    ]);
    Ok(meta)
}
