//! llama.cpp's layout of a mixture-of-experts block (`qwen3moe`, `qwen35moe`, and Mixtral under
//! `llama`; `gguf-py/gguf/constants.py` and the converters' `modify_tensors` in llama.cpp 0.3.36):
//!
//! - the router `blk.N.ffn_gate_inp.weight` (Hugging Face `mlp.gate` / `block_sparse_moe.gate`);
//! - the routed experts stacked into 3-D tensors, `blk.N.ffn_{gate,up,down}_exps.weight` with ggml
//!   dimensions `{in, out, experts}`: row-major `[experts, out, in]`, Hugging Face's fused layout, so
//!   that expert `e`'s weight is the contiguous rows `e·out .. (e+1)·out`. Newer converters may write
//!   gate and up as one `ffn_gate_up_exps` (`cat([gate, up])` per expert); both are read;
//! - the shared expert `ffn_{gate,up,down}_shexp` and its sigmoid gate `ffn_gate_inp_shexp`.
//!
//! Hugging Face names a block's experts either one by one (`mlp.experts.E.gate_proj.weight`, Mixtral's
//! `block_sparse_moe.experts.E.w1.weight`) or fused (`mlp.experts.gate_up_proj`,
//! `mlp.experts.down_proj`); [`expert_tensor`] reads either as a slice of the GGUF tensors.

/// The GGUF tensors of a block (after `blk.N.`), by their Hugging Face name after the block prefix.
const BLOCK: [(&str, &str); 7] = [
    ("gate.weight", "ffn_gate_inp.weight"),
    ("experts.gate_up_proj", "ffn_gate_up_exps.weight"),
    ("experts.down_proj", "ffn_down_exps.weight"),
    ("shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"),
    ("shared_expert.up_proj.weight", "ffn_up_shexp.weight"),
    ("shared_expert.down_proj.weight", "ffn_down_shexp.weight"),
    ("shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"),
];

/// The block prefixes of the architectures lora reads (`mlp`, Mixtral's `block_sparse_moe`).
const BLOCK_PREFIXES: [&str; 2] = ["mlp", "block_sparse_moe"];

/// The stacked gate projections (`blk.N.` + this).
pub const GATE_EXPS: &str = "ffn_gate_exps.weight";
/// The stacked up projections.
pub const UP_EXPS: &str = "ffn_up_exps.weight";
/// The stacked down projections.
pub const DOWN_EXPS: &str = "ffn_down_exps.weight";
/// Gate and up stacked as one, per expert gate rows first.
pub const GATE_UP_EXPS: &str = "ffn_gate_up_exps.weight";

/// One expert projection as GGUF holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertProjection {
    /// `gate_proj` / `w1`.
    Gate,
    /// `up_proj` / `w3`.
    Up,
    /// `down_proj` / `w2`.
    Down,
}

impl ExpertProjection {
    /// The stacked GGUF tensor holding this projection of every expert (after `blk.N.`).
    pub fn stacked(self) -> &'static str {
        match self {
            Self::Gate => GATE_EXPS,
            Self::Up => UP_EXPS,
            Self::Down => DOWN_EXPS,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "gate_proj" | "w1" => Some(Self::Gate),
            "up_proj" | "w3" => Some(Self::Up),
            "down_proj" | "w2" => Some(Self::Down),
            _ => None,
        }
    }
}

/// What an expert tensor's Hugging Face name asks of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpertTensor {
    /// One GGUF tensor as it is (the router, a shared-expert tensor, the stacked down projections,
    /// a merged `ffn_gate_up_exps`): its GGUF name.
    Whole(String),
    /// The fused `experts.gate_up_proj` of a file that stores gate and up apart: per expert, the gate
    /// rows of the first tensor, then the up rows of the second.
    GateUp { gate: String, up: String, merged: String },
    /// One expert's projection (a per-expert Hugging Face name): rows `expert·out .. (expert+1)·out`
    /// of the stacked tensor `stacked`, or of `merged` (`ffn_gate_up_exps`, gate or up half).
    Slice { stacked: String, merged: Option<String>, expert: usize, projection: ExpertProjection },
}

/// The GGUF form of a mixture-of-experts tensor of decoder layer N
/// (`model.layers.N.<block>.<...>`), or `None` for a name outside a block's experts and router.
pub fn expert_tensor(hf: &str) -> Option<ExpertTensor> {
    let (index, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    index.parse::<usize>().ok()?;
    let (block, rest) = rest.split_once('.')?;
    if !BLOCK_PREFIXES.contains(&block) {
        return None;
    }
    let blk = |n: &str| format!("blk.{index}.{n}");
    if rest == "experts.gate_up_proj" {
        return Some(ExpertTensor::GateUp { gate: blk(GATE_EXPS), up: blk(UP_EXPS), merged: blk(GATE_UP_EXPS) });
    }
    if let Some((_, g)) = BLOCK.iter().find(|(h, _)| *h == rest) {
        return Some(ExpertTensor::Whole(blk(g)));
    }
    let (e, projection) = rest.strip_prefix("experts.")?.split_once('.')?;
    let projection = ExpertProjection::parse(projection.strip_suffix(".weight")?)?;
    let merged = (projection != ExpertProjection::Down).then(|| blk(GATE_UP_EXPS));
    Some(ExpertTensor::Slice { stacked: blk(projection.stacked()), merged, expert: e.parse().ok()?, projection })
}

/// The GGUF name of a block tensor that is one GGUF tensor as it is (the router, the shared expert and
/// its gate, the fused down projections), or `None`.
pub fn whole_expert_tensor(hf: &str) -> Option<String> {
    match expert_tensor(hf)? {
        ExpertTensor::Whole(g) => Some(g),
        _ => None,
    }
}

/// The Hugging Face module (`mlp.gate`, `mlp.shared_expert.up_proj`, ... under `block`) of a GGUF
/// block module of layer N (`blk.N.ffn_gate_inp`), or `None`. The stacked experts are no module.
pub fn hf_block_module(gguf_module: &str, block: &str) -> Option<String> {
    let (index, rest) = gguf_module.strip_prefix("blk.")?.split_once('.')?;
    index.parse::<usize>().ok()?;
    let (h, _) =
        BLOCK.iter().filter(|(h, _)| h.ends_with(".weight")).find(|(_, g)| g.strip_suffix(".weight") == Some(rest))?;
    Some(format!("model.layers.{index}.{block}.{}", h.strip_suffix(".weight")?))
}

/// The stacked projection a GGUF module of layer N names (`blk.N.ffn_gate_exps` → (N, Gate)).
pub fn stacked_projection(gguf_module: &str) -> Option<(usize, ExpertProjection)> {
    let (index, rest) = gguf_module.strip_prefix("blk.")?.split_once('.')?;
    let p = [ExpertProjection::Gate, ExpertProjection::Up, ExpertProjection::Down]
        .into_iter()
        .find(|p| p.stacked().strip_suffix(".weight") == Some(rest))?;
    Some((index.parse().ok()?, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_experts_routers_and_shared_experts() {
        assert_eq!(
            expert_tensor("model.layers.3.mlp.gate.weight"),
            Some(ExpertTensor::Whole("blk.3.ffn_gate_inp.weight".into()))
        );
        assert_eq!(
            expert_tensor("model.layers.0.block_sparse_moe.gate.weight"),
            Some(ExpertTensor::Whole("blk.0.ffn_gate_inp.weight".into()))
        );
        assert_eq!(
            expert_tensor("model.layers.2.mlp.experts.down_proj"),
            Some(ExpertTensor::Whole("blk.2.ffn_down_exps.weight".into()))
        );
        assert_eq!(
            expert_tensor("model.layers.2.mlp.shared_expert_gate.weight"),
            Some(ExpertTensor::Whole("blk.2.ffn_gate_inp_shexp.weight".into()))
        );
        assert_eq!(
            expert_tensor("model.layers.1.block_sparse_moe.experts.4.w3.weight"),
            Some(ExpertTensor::Slice {
                stacked: "blk.1.ffn_up_exps.weight".into(),
                merged: Some("blk.1.ffn_gate_up_exps.weight".into()),
                expert: 4,
                projection: ExpertProjection::Up
            })
        );
        assert_eq!(
            expert_tensor("model.layers.1.mlp.experts.0.down_proj.weight"),
            Some(ExpertTensor::Slice {
                stacked: "blk.1.ffn_down_exps.weight".into(),
                merged: None,
                expert: 0,
                projection: ExpertProjection::Down
            })
        );
        assert!(matches!(expert_tensor("model.layers.1.mlp.experts.gate_up_proj"), Some(ExpertTensor::GateUp { .. })));
        assert_eq!(expert_tensor("model.layers.1.mlp.gate_proj.weight"), None);
        assert_eq!(expert_tensor("model.layers.1.mlp.experts.0.gate_proj.bias"), None);
        assert_eq!(hf_block_module("blk.5.ffn_gate_inp", "mlp").as_deref(), Some("model.layers.5.mlp.gate"));
        assert_eq!(
            hf_block_module("blk.5.ffn_up_shexp", "mlp").as_deref(),
            Some("model.layers.5.mlp.shared_expert.up_proj")
        );
        assert_eq!(hf_block_module("blk.5.ffn_up_exps", "mlp"), None);
        assert_eq!(stacked_projection("blk.7.ffn_down_exps"), Some((7, ExpertProjection::Down)));
    }
}
