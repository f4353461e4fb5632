//! llama.cpp's `qwen35` layout of a Qwen3.5 model: the GGUF name of each Hugging Face tensor and the
//! transform its converter applies to the values (llama.cpp 0.3.36, `conversion/qwen.py`:
//! `Qwen3NextModel.modify_tensors` and `_LinearAttentionVReorderBase`), with its inverse.
//!
//! - Zero-centred RMSNorm weights are stored as `1 + w`; the Gated DeltaNet's own norm
//!   (`linear_attn.norm`) is not zero-centred and stays as it is.
//! - `A_log` is stored as `ssm_a = −exp(A_log)`, `dt_bias` as `ssm_dt.bias`, the convolution
//!   `[channels, 1, kernel]` squeezed to `[channels, kernel]`.
//! - With fewer key heads than value heads, the value heads go from Hugging Face's grouped order
//!   (the value heads of key head 0, then of key head 1, ...) to ggml's tiled order (value head 0 of
//!   every key head, then value head 1 of every key head, ...), so that ggml can broadcast key heads
//!   by repetition: the V rows of `in_proj_qkv`, the rows of `in_proj_z`, `in_proj_a`, `in_proj_b`,
//!   `A_log` and `dt_bias`, the V channels of the convolution and the input columns of `out_proj`.

use super::names::translate;
use crate::hf_config::GatedDeltaNetConfig;

/// Whether a GGUF architecture is llama.cpp's Qwen3.5 layout: `qwen35`, or `qwen35moe` (its
/// mixture-of-experts form, the same transforms plus the experts of `super::experts`).
pub fn is_qwen35(arch: &str) -> bool {
    matches!(arch, "qwen35" | "qwen35moe")
}

/// The Gated DeltaNet's head geometry, which the value-head reorder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearHeads {
    /// `linear_num_key_heads`.
    pub key_heads: usize,
    /// `linear_num_value_heads`.
    pub value_heads: usize,
    /// `linear_key_head_dim`.
    pub key_dim: usize,
    /// `linear_value_head_dim`.
    pub value_dim: usize,
}

impl From<GatedDeltaNetConfig> for LinearHeads {
    fn from(c: GatedDeltaNetConfig) -> Self {
        Self {
            key_heads: c.num_key_heads,
            value_heads: c.num_value_heads,
            key_dim: c.key_head_dim,
            value_dim: c.value_head_dim,
        }
    }
}

/// What the converter does to one tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Stored as it is.
    None,
    /// A zero-centred norm weight, stored as `1 + w`.
    PlusOne,
    /// Value heads reordered along the rows from row `offset` on, `dim` rows per head.
    Rows { offset: usize, dim: usize },
    /// Value heads reordered along the columns, `dim` columns per head.
    Columns { dim: usize },
    /// `A_log`: stored as `−exp(A_log)`, value heads reordered.
    NegExp,
}

/// Modules of decoder layer N (`model.layers.N.<hf>` → `blk.N.<gguf>`).
const LAYER: [(&str, &str); 20] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("linear_attn.in_proj_qkv.weight", "attn_qkv.weight"),
    ("linear_attn.in_proj_z.weight", "attn_gate.weight"),
    ("linear_attn.in_proj_a.weight", "ssm_alpha.weight"),
    ("linear_attn.in_proj_b.weight", "ssm_beta.weight"),
    ("linear_attn.out_proj.weight", "ssm_out.weight"),
    ("linear_attn.conv1d.weight", "ssm_conv1d.weight"),
    ("linear_attn.A_log", "ssm_a"),
    ("linear_attn.dt_bias", "ssm_dt.bias"),
    ("linear_attn.norm.weight", "ssm_norm.weight"),
];

/// Whole-model tensors.
const MODEL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The multi-token-prediction block's own tensors (`mtp.<hf>`), by the name the converter gives them
/// before choosing their transform (`model.layers.L.<renamed>`) and their GGUF name (`blk.L.<gguf>`).
const MTP: [(&str, &str, &str); 4] = [
    ("fc.weight", "eh_proj.weight", "nextn.eh_proj.weight"),
    ("pre_fc_norm_embedding.weight", "enorm.weight", "nextn.enorm.weight"),
    ("pre_fc_norm_hidden.weight", "hnorm.weight", "nextn.hnorm.weight"),
    ("norm.weight", "shared_head.norm.weight", "nextn.shared_head_norm.weight"),
];

/// A tensor of the multi-token-prediction block (`mtp.*`, or `model.mtp.*`) of a model with `layers`
/// decoder layers, as the converter writes it: one block past the decoder's (`blk.{layers + i}` for
/// its layer i). Returns the GGUF name and the name whose [`transform`] applies (the block's norms
/// are zero-centred: `1 + w`), or `None` for a name outside the block.
pub fn mtp_tensor_name(hf: &str, layers: usize) -> Option<(String, String)> {
    let rest = hf.strip_prefix("model.").unwrap_or(hf).strip_prefix("mtp.")?;
    if let Some((_, renamed, g)) = MTP.iter().find(|(h, _, _)| *h == rest) {
        return Some((format!("blk.{layers}.{g}"), format!("model.layers.{layers}.{renamed}")));
    }
    let text = mtp_text_name(hf, layers)?;
    Some((tensor_name(&text)?, text))
}

/// A tensor of the prediction block's layer i (`mtp.layers.i.…`) under the decoder layer name the
/// converter gives it (`model.layers.{layers + i}.…`), or `None`.
pub fn mtp_text_name(hf: &str, layers: usize) -> Option<String> {
    let rest = hf.strip_prefix("model.").unwrap_or(hf).strip_prefix("mtp.")?;
    let (i, tensor) = rest.strip_prefix("layers.")?.split_once('.')?;
    Some(format!("model.layers.{}.{tensor}", layers + i.parse::<usize>().ok()?))
}

/// The GGUF name of a tensor of a Qwen3.5 text model (`model.layers.3.linear_attn.A_log` →
/// `blk.3.ssm_a`), or `None` for a name a `qwen35` file does not hold.
/// A mixture-of-experts block's router, shared expert and fused down projections (`qwen35moe`) too.
pub fn tensor_name(hf: &str) -> Option<String> {
    translate(hf, &MODEL, &LAYER, true).or_else(|| super::experts::whole_expert_tensor(hf))
}

/// The Hugging Face name of a tensor of a `qwen35` file, or `None` (the multi-token-prediction
/// block's tensors and names of other architectures).
pub fn hf_name(gguf: &str) -> Option<String> {
    translate(gguf, &MODEL, &LAYER, false).or_else(|| {
        let module = super::experts::hf_block_module(gguf.strip_suffix(".weight")?, "mlp")?;
        Some(format!("{module}.weight"))
    })
}

/// A tensor name of either checkpoint form in the text form's spelling:
/// `model.language_model.layers.3.…` → `model.layers.3.…`; other names are returned as they are.
pub fn text_form(hf: &str) -> String {
    match hf.strip_prefix("model.language_model.") {
        Some(rest) => format!("model.{rest}"),
        None => hf.to_string(),
    }
}

/// The GGUF module of a linear layer a LoRA adapter can adapt, by Hugging Face module path of
/// either checkpoint form (`model.layers.3.linear_attn.in_proj_z` → `blk.3.attn_gate`), or `None`
/// (norms, the convolution, `A_log`, and names a `qwen35` file does not hold).
pub fn gguf_module(hf_module: &str) -> Option<String> {
    let text = text_form(hf_module);
    // A mixture-of-experts block's router (`mlp.gate`) and shared expert gate are linear too.
    let linear = text == "lm_head"
        || text.rsplit_once('.').is_some_and(|(_, last)| {
            last.ends_with("_proj") || last.starts_with("in_proj_") || matches!(last, "gate" | "shared_expert_gate")
        });
    if !linear || text.ends_with("conv1d") {
        return None;
    }
    tensor_name(&format!("{text}.weight")).map(|g| g.trim_end_matches(".weight").to_string())
}

/// The Hugging Face module (text form) of a GGUF linear module: `blk.3.attn_gate` →
/// `model.layers.3.linear_attn.in_proj_z`.
pub fn hf_module(gguf_module: &str) -> Option<String> {
    let hf = hf_name(&format!("{gguf_module}.weight"))?;
    let module = hf.strip_suffix(".weight")?.to_string();
    (self::gguf_module(&module).as_deref() == Some(gguf_module)).then_some(module)
}

/// The reorder a LoRA adapter's factors need where the converter reordered the base weight of
/// `hf_module`: (rows of B, columns of A). llama.cpp's `convert_lora_to_gguf.py` applies the same
/// permutation to the factors as to the weight (`_reorder_v_heads` on its LoRA tensors), so that
/// `B'A'` is the reordered `BA`.
pub fn lora_transforms(hf_module: &str, heads: &LinearHeads) -> (Transform, Transform) {
    match transform(&format!("{}.weight", text_form(hf_module)), heads) {
        t @ Transform::Rows { .. } => (t, Transform::None),
        t @ Transform::Columns { .. } => (Transform::None, t),
        _ => (Transform::None, Transform::None),
    }
}

/// The converter's transform of tensor `hf` (a Hugging Face name).
pub fn transform(hf: &str, heads: &LinearHeads) -> Transform {
    let q_and_k = 2 * heads.key_heads * heads.key_dim;
    let rest = hf.rsplit_once(".linear_attn.").map(|(_, r)| r);
    match rest {
        Some("in_proj_qkv.weight" | "conv1d.weight") => Transform::Rows { offset: q_and_k, dim: heads.value_dim },
        Some("in_proj_z.weight") => Transform::Rows { offset: 0, dim: heads.value_dim },
        Some("in_proj_a.weight" | "in_proj_b.weight" | "dt_bias") => Transform::Rows { offset: 0, dim: 1 },
        Some("out_proj.weight") => Transform::Columns { dim: heads.value_dim },
        Some("A_log") => Transform::NegExp,
        Some("norm.weight") => Transform::None,
        _ if hf.ends_with("norm.weight") => Transform::PlusOne,
        _ => Transform::None,
    }
}

/// Position j of the tiled order holds the value at position `tiled_order(..)[j]` of the grouped
/// order: `n = key_heads · per_key · dim` values, `per_key` value heads per key head.
fn tiled_order(key_heads: usize, per_key: usize, dim: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(key_heads * per_key * dim);
    for r in 0..per_key {
        for k in 0..key_heads {
            out.extend((0..dim).map(|d| (k * per_key + r) * dim + d));
        }
    }
    out
}

/// Applies `t` to `values` (row-major, `rows` × `cols`; a vector is one column), towards GGUF
/// (`to_gguf`) or back to Hugging Face's values.
pub fn apply(t: Transform, values: &[f32], rows: usize, cols: usize, heads: &LinearHeads, to_gguf: bool) -> Vec<f32> {
    let per_key = heads.value_heads / heads.key_heads.max(1);
    let reorder = |values: &[f32], offset: usize, dim: usize, along_rows: bool| -> Vec<f32> {
        let order = tiled_order(heads.key_heads, per_key, dim);
        let mut out = values.to_vec();
        for (j, &g) in order.iter().enumerate() {
            // Towards GGUF, tiled position j takes grouped position g; back, the reverse.
            let (to, from) = if to_gguf { (j, g) } else { (g, j) };
            if along_rows {
                let (to, from) = ((offset + to) * cols, (offset + from) * cols);
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            } else {
                for r in 0..rows {
                    out[r * cols + offset + to] = values[r * cols + offset + from];
                }
            }
        }
        out
    };
    match t {
        Transform::None => values.to_vec(),
        Transform::PlusOne if to_gguf => values.iter().map(|v| v + 1.0).collect(),
        Transform::PlusOne => values.iter().map(|v| v - 1.0).collect(),
        Transform::Rows { offset, dim } => reorder(values, offset, dim, true),
        Transform::Columns { dim } => reorder(values, 0, dim, false),
        Transform::NegExp if to_gguf => reorder(&values.iter().map(|v| -v.exp()).collect::<Vec<_>>(), 0, 1, true),
        Transform::NegExp => {
            // ln in f64: the A_log whose −exp is closest to the stored value.
            reorder(values, 0, 1, true).iter().map(|&a| (-(a as f64)).ln() as f32).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADS: LinearHeads = LinearHeads { key_heads: 2, value_heads: 6, key_dim: 3, value_dim: 2 };

    #[test]
    fn value_heads_go_from_grouped_to_tiled_order_and_back() {
        // 2 key heads with 3 value heads each: grouped (k0v0 k0v1 k0v2 k1v0 k1v1 k1v2), tiled
        // (k0v0 k1v0 k0v1 k1v1 k0v2 k1v2); heads of 2 rows.
        assert_eq!(tiled_order(2, 3, 2), vec![0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]);
        let t = transform("model.layers.0.linear_attn.in_proj_qkv.weight", &HEADS);
        assert_eq!(t, Transform::Rows { offset: 12, dim: 2 });
        // 12 q/k rows then 12 v rows, 2 columns.
        let hf: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let g = apply(t, &hf, 24, 2, &HEADS, true);
        assert_eq!(&g[..24], &hf[..24], "q and k rows stay");
        assert_eq!(&g[24..28], &hf[24..28], "v head (k0, v0)");
        assert_eq!(&g[28..32], &hf[36..40], "then (k1, v0)");
        assert_eq!(apply(t, &g, 24, 2, &HEADS, false), hf);
    }

    #[test]
    fn columns_norms_and_a_log_round_trip() {
        let out = transform("model.layers.1.linear_attn.out_proj.weight", &HEADS);
        assert_eq!(out, Transform::Columns { dim: 2 });
        let hf: Vec<f32> = (0..36).map(|i| i as f32).collect(); // 3 rows x 12 columns
        let g = apply(out, &hf, 3, 12, &HEADS, true);
        assert_eq!(&g[..4], &[0.0, 1.0, 6.0, 7.0]);
        assert_eq!(&g[12..16], &[12.0, 13.0, 18.0, 19.0]);
        assert_eq!(apply(out, &g, 3, 12, &HEADS, false), hf);

        assert_eq!(transform("model.layers.1.input_layernorm.weight", &HEADS), Transform::PlusOne);
        assert_eq!(transform("model.layers.1.self_attn.k_norm.weight", &HEADS), Transform::PlusOne);
        assert_eq!(transform("model.norm.weight", &HEADS), Transform::PlusOne);
        assert_eq!(transform("model.layers.1.linear_attn.norm.weight", &HEADS), Transform::None);
        assert_eq!(transform("model.layers.1.mlp.up_proj.weight", &HEADS), Transform::None);

        let a_log = [0.5f32, -1.0, 0.0, 2.0, 0.25, -0.5];
        let t = transform("model.layers.0.linear_attn.A_log", &HEADS);
        let g = apply(t, &a_log, 6, 1, &HEADS, true);
        assert_eq!(g[1], -(2.0f32.exp()), "tiled: key head 1's first value head second");
        let back = apply(t, &g, 6, 1, &HEADS, false);
        assert!(back.iter().zip(a_log).all(|(b, a)| (b - a).abs() <= 1e-6), "{back:?}");
    }

    #[test]
    fn names_both_ways() {
        for (hf, g) in [
            ("model.layers.2.linear_attn.A_log", "blk.2.ssm_a"),
            ("model.layers.2.linear_attn.dt_bias", "blk.2.ssm_dt.bias"),
            ("model.layers.2.linear_attn.in_proj_z.weight", "blk.2.attn_gate.weight"),
            ("model.layers.3.post_attention_layernorm.weight", "blk.3.post_attention_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(tensor_name(hf).as_deref(), Some(g));
            assert_eq!(hf_name(g).as_deref(), Some(hf));
        }
        assert_eq!(hf_name("blk.4.nextn.eh_proj.weight"), None);
        let mtp = |hf: &str| mtp_tensor_name(hf, 3);
        assert_eq!(
            mtp("mtp.fc.weight"),
            Some(("blk.3.nextn.eh_proj.weight".into(), "model.layers.3.eh_proj.weight".into()))
        );
        let (g, text) = mtp("mtp.pre_fc_norm_embedding.weight").unwrap();
        assert_eq!((g.as_str(), transform(&text, &HEADS)), ("blk.3.nextn.enorm.weight", Transform::PlusOne));
        assert_eq!(mtp("mtp.norm.weight").unwrap().0, "blk.3.nextn.shared_head_norm.weight");
        assert_eq!(mtp("model.mtp.layers.0.self_attn.q_proj.weight").unwrap().0, "blk.3.attn_q.weight");
        assert_eq!(mtp("mtp.layers.1.input_layernorm.weight").unwrap().0, "blk.4.attn_norm.weight");
        assert_eq!(mtp("model.layers.0.mlp.up_proj.weight"), None);
        assert_eq!(gguf_module("model.language_model.layers.1.linear_attn.out_proj").as_deref(), Some("blk.1.ssm_out"));
        assert_eq!(gguf_module("model.layers.1.self_attn.q_proj").as_deref(), Some("blk.1.attn_q"));
        assert_eq!(gguf_module("lm_head").as_deref(), Some("output"));
        assert_eq!(gguf_module("model.layers.1.linear_attn.conv1d"), None);
        assert_eq!(gguf_module("model.layers.1.input_layernorm"), None);
        assert_eq!(hf_module("blk.2.ssm_beta").as_deref(), Some("model.layers.2.linear_attn.in_proj_b"));
        assert_eq!(hf_module("blk.2.attn_norm"), None);
        let (b, a) = lora_transforms("model.language_model.layers.0.linear_attn.in_proj_qkv", &HEADS);
        assert_eq!((b, a), (Transform::Rows { offset: 12, dim: 2 }, Transform::None));
        let (b, a) = lora_transforms("model.layers.0.linear_attn.out_proj", &HEADS);
        assert_eq!((b, a), (Transform::None, Transform::Columns { dim: 2 }));
        assert_eq!(lora_transforms("model.layers.0.mlp.up_proj", &HEADS), (Transform::None, Transform::None));
        assert_eq!(tensor_name("model.layers.0.linear_attn.unknown.weight"), None);
        assert_eq!(tensor_name("model.layers.1.mlp.gate.weight").as_deref(), Some("blk.1.ffn_gate_inp.weight"));
        assert_eq!(
            hf_name("blk.1.ffn_gate_inp_shexp.weight").as_deref(),
            Some("model.layers.1.mlp.shared_expert_gate.weight")
        );
        assert_eq!(gguf_module("model.layers.1.mlp.gate").as_deref(), Some("blk.1.ffn_gate_inp"));
        assert_eq!(hf_module("blk.1.ffn_down_shexp").as_deref(), Some("model.layers.1.mlp.shared_expert.down_proj"));
    }
}
