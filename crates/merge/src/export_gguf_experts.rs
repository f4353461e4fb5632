//! The routed experts of a mixture-of-experts folder in a GGUF model export, as llama.cpp's converter
//! writes them (`Qwen2MoeModel.modify_tensors` and its kin stack the per-expert tensors with
//! `torch.stack`): per layer one `ffn_{gate,up,down}_exps` tensor of ggml dimensions
//! `{in, out, experts}`, from per-expert tensors (`mlp.experts.E.gate_proj.weight`, Mixtral's
//! `block_sparse_moe.experts.E.w1.weight`) or from a fused checkpoint's `experts.gate_up_proj`
//! (gate rows first per expert). A fused `experts.down_proj` is already that tensor and goes as it is.
//! The router and shared expert are ordinary tensors (`lora_formats::gguf::experts`).

use std::collections::{BTreeMap, HashSet};

use lora_formats::gguf::experts::{ExpertTensor, expert_tensor};

use crate::error::{MergeError, Result};
use crate::export_gguf_model::{Planned, read_f32, tensor_type};
use crate::gguf::GgmlType;
use crate::model_dir::ModelDir;

/// Rows `start .. start + count` of a folder tensor (rows of its innermost dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rows {
    pub hf: String,
    pub start: usize,
    pub count: usize,
}

/// The stacked expert tensors of `model`'s folder, and the names of the folder tensors they take.
/// `text_name` gives a folder tensor's name in the `model.layers.N.…` spelling the GGUF names are
/// made from (the Hub form's `model.language_model.layers.N.…`, a prediction block's `mtp.…`).
pub(crate) fn plan(
    model: &ModelDir,
    ggml_type: GgmlType,
    text_name: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Planned>, HashSet<String>)> {
    let dir = model.path();
    // GGUF name → (expert → rows), and each stack's row width.
    let mut stacks: BTreeMap<String, (BTreeMap<usize, Rows>, usize)> = BTreeMap::new();
    let mut taken = HashSet::new();
    let mismatch = |m: String| MergeError::Mismatch(format!("{}: {m}", dir.display()));
    let mut put = |g: String, e: usize, rows: Rows, width: usize| -> Result<()> {
        let (experts, w) = stacks.entry(g.clone()).or_insert_with(|| (BTreeMap::new(), width));
        let count = experts.values().next().map_or(rows.count, |r| r.count);
        if *w != width || count != rows.count {
            return Err(mismatch(format!("'{}' is not the shape of the other experts of {g}", rows.hf)));
        }
        if experts.insert(e, rows).is_some() {
            return Err(mismatch(format!("expert {e} of {g} is stored twice")));
        }
        Ok(())
    };
    for hf in model.names() {
        match text_name(hf).and_then(|t| expert_tensor(&t)) {
            Some(ExpertTensor::Slice { stacked, expert, .. }) => {
                let shape = model.require(hf)?.info.shape.clone();
                let &[out, inp] = shape.as_slice() else {
                    return Err(mismatch(format!("expert tensor '{hf}' has shape {shape:?}, not a matrix")));
                };
                put(stacked, expert, Rows { hf: hf.to_string(), start: 0, count: out }, inp)?;
            }
            Some(ExpertTensor::GateUp { gate, up, .. }) => {
                let shape = model.require(hf)?.info.shape.clone();
                let &[experts, two_i, inp] = shape.as_slice() else {
                    return Err(mismatch(format!("'{hf}' has shape {shape:?}, not [experts, 2 x width, hidden]")));
                };
                if two_i % 2 != 0 {
                    return Err(mismatch(format!("'{hf}' has an odd number of rows ({two_i}) per expert")));
                }
                let i = two_i / 2;
                for e in 0..experts {
                    let hf = hf.to_string();
                    put(gate.clone(), e, Rows { hf: hf.clone(), start: e * two_i, count: i }, inp)?;
                    put(up.clone(), e, Rows { hf, start: e * two_i + i, count: i }, inp)?;
                }
            }
            _ => continue,
        }
        taken.insert(hf.to_string());
    }
    let mut plan = Vec::new();
    for (g, (experts, width)) in stacks {
        if experts.keys().copied().ne(0..experts.len()) {
            let have: Vec<usize> = experts.keys().copied().collect();
            return Err(mismatch(format!("{g} stacks experts {have:?}, not 0 to {}", experts.len() - 1)));
        }
        let rows = experts.values().next().map_or(0, |r| r.count);
        let dims = vec![width as u64, rows as u64, experts.len() as u64];
        let ggml_type = tensor_type(&dims, ggml_type);
        plan.push(Planned { gguf: g, hf: None, stack: experts.into_values().collect(), dims, ggml_type });
    }
    Ok((plan, taken))
}

/// The values of a stacked tensor: each expert's rows in turn. A fused tensor is read once for all
/// of its experts.
pub(crate) fn stacked_values(model: &ModelDir, stack: &[Rows], width: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(stack.iter().map(|r| r.count * width).sum());
    let mut last: Option<(&str, Vec<f32>)> = None;
    for r in stack {
        if last.as_ref().is_none_or(|(n, _)| *n != r.hf) {
            last = Some((&r.hf, read_f32(model, &r.hf)?));
        }
        let (_, values) = last.as_ref().expect("read");
        out.extend_from_slice(&values[r.start * width..(r.start + r.count) * width]);
    }
    Ok(out)
}

/// The `{arch}.expert_*` keys llama.cpp reads, from config.json, or an error for routing it cannot run.
pub(crate) fn metadata(
    cfg: &serde_json::Value,
    arch: &str,
    dir: &std::path::Path,
) -> Result<Vec<(String, crate::gguf::Value)>> {
    use crate::gguf::Value;
    let bad = |m: String| MergeError::folder(dir, m);
    let int = |k: &str| cfg[k].as_u64();
    let experts =
        int("num_experts").or(int("num_local_experts")).ok_or_else(|| bad("config.json has no num_experts".into()))?;
    let used = int("num_experts_per_tok").ok_or_else(|| bad("config.json has no num_experts_per_tok".into()))?;
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta =
        vec![(key("expert_count"), Value::U32(experts as u32)), (key("expert_used_count"), Value::U32(used as u32))];
    if arch == "qwen3moe" {
        // llama.cpp runs qwen3moe with every layer sparse and the top k weights renormalised.
        if !cfg["norm_topk_prob"].as_bool().unwrap_or(false) {
            return Err(bad(
                "norm_topk_prob is false: llama.cpp's qwen3moe always renormalises the top k routing weights, \
                 so the exported model would compute differently"
                    .into(),
            ));
        }
        let step = int("decoder_sparse_step").unwrap_or(1);
        let dense = cfg["mlp_only_layers"].as_array().is_some_and(|a| !a.is_empty());
        if step != 1 || dense {
            return Err(bad(format!(
                "some layers are dense (mlp_only_layers {}, decoder_sparse_step {step}): llama.cpp's qwen3moe runs \
                 every layer as a mixture of experts",
                cfg["mlp_only_layers"]
            )));
        }
        let width =
            int("moe_intermediate_size").ok_or_else(|| bad("config.json has no moe_intermediate_size".into()))?;
        meta.push((key("expert_feed_forward_length"), Value::U32(width as u32)));
    }
    Ok(meta)
}
