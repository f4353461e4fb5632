//! Hugging Face ↔ llama.cpp names of the tensors of the architectures lora reads and writes
//! (llama.cpp's `gguf-py/gguf/tensor_mapping.py`), in one table used both ways, and the other
//! names the two sides spell differently.

use std::path::Path;

/// Whole-model modules.
const MODEL: [(&str, &str); 3] =
    [("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];

/// Modules of decoder layer N (`model.layers.N.<hf>` ↔ `blk.N.<gguf>`).
const LAYER: [(&str, &str); 11] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The linear layers a LoRA adapter can adapt, by Hugging Face module path.
pub fn is_linear_module(hf_module: &str) -> bool {
    hf_module == "lm_head"
        || hf_module.strip_prefix("model.layers.").and_then(|r| r.split_once('.')).is_some_and(|(i, m)| {
            i.parse::<usize>().is_ok() && (m.starts_with("self_attn.") && m.ends_with("_proj") || m.starts_with("mlp."))
        })
}

/// `name` looked up in a table of whole-model names and one of per-layer names (`model.layers.N.<hf>`
/// ↔ `blk.N.<gguf>`), each pair `(Hugging Face, GGUF)`: towards GGUF when `to_gguf`, else back.
/// `None` for a name neither table holds.
pub(super) fn translate(
    name: &str,
    model: &[(&'static str, &'static str)],
    layer: &[(&'static str, &'static str)],
    to_gguf: bool,
) -> Option<String> {
    let look_up = |table: &[(&'static str, &'static str)], key: &str| -> Option<&'static str> {
        let mut pairs = table.iter().map(|&(h, g)| if to_gguf { (h, g) } else { (g, h) });
        pairs.find(|&(from, _)| from == key).map(|(_, to)| to)
    };
    if let Some(to) = look_up(model, name) {
        return Some(to.to_string());
    }
    let (from, to) = if to_gguf { ("model.layers.", "blk.") } else { ("blk.", "model.layers.") };
    let (index, rest) = name.strip_prefix(from)?.split_once('.')?;
    index.parse::<usize>().ok()?;
    Some(format!("{to}{index}.{}", look_up(layer, rest)?))
}

/// `model.layers.3.self_attn.q_proj` → `blk.3.attn_q`, `lm_head` → `output`.
/// A mixture-of-experts block's router and shared expert (`mlp.gate` → `blk.3.ffn_gate_inp`) too.
pub fn gguf_module(hf_module: &str) -> Option<String> {
    translate(hf_module, &MODEL, &LAYER, true).or_else(|| {
        super::experts::whole_expert_tensor(&format!("{hf_module}.weight"))?.strip_suffix(".weight").map(str::to_string)
    })
}

/// `blk.3.attn_q` → `model.layers.3.self_attn.q_proj`, `output` → `lm_head`.
/// A block's router and shared expert come back under `mlp`, as transformers 5 names them in memory.
pub fn hf_module(gguf_module: &str) -> Option<String> {
    translate(gguf_module, &MODEL, &LAYER, false).or_else(|| super::experts::hf_block_module(gguf_module, "mlp"))
}

/// A tensor name (`<module>.weight` / `.bias`) in GGUF's spelling.
/// A tensor that is one GGUF tensor as it is; an expert's own weights are slices of stacked tensors
/// (`experts::expert_tensor`).
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    if let Some(g) = super::experts::whole_expert_tensor(hf) {
        return Some(g);
    }
    let (module, kind) = hf.rsplit_once('.')?;
    Some(format!("{}.{kind}", gguf_module(module)?))
}

/// A GGUF tensor name in Hugging Face's spelling.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    let (module, kind) = gguf.rsplit_once('.')?;
    Some(format!("{}.{kind}", hf_module(module)?))
}

/// llama.cpp's `general.architecture` for a `config.json` `model_type` (it runs Mistral as `llama`).
pub fn gguf_architecture(model_type: &str) -> Option<&'static str> {
    crate::hf_config::ARCHITECTURES.iter().find(|s| s.model_type == model_type).and_then(|s| s.gguf)
}

/// Whether a path is a GGUF file (an existing file ending in `.gguf`).
pub fn is_gguf_file(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
