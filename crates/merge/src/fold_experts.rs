//! Folding adapters on routed experts (PEFT's flattened `target_parameters` layout for
//! transformers 5's fused experts: `…mlp.experts[.base_layer].lora_A/B`) into the base's own expert
//! layout: per expert (`mlp.experts.e.{gate,up,down}_proj`, Mixtral's `block_sparse_moe.experts.e.
//! {w1,w3,w2}`), where expert e's `gate_up_proj` update splits into its gate rows and its up rows; or
//! fused (`mlp.experts.gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), where expert e's update is
//! one block at its offset. PEFT's index orders: A's row `e·r + k`, B's column `k·E + e`.

use std::collections::BTreeMap;

use crate::adapter::{Adapter, LoraDelta};
use crate::error::{MergeError, Result};
use crate::model_dir::ModelDir;
use lora_formats::hf_config::{ExpertPath, FeedForward, expert_path};

/// Whether an adapter module name is a flattened expert adapter.
pub fn is_expert_module(module: &str) -> bool {
    module.ends_with(".mlp.experts") || module.ends_with(".mlp.experts.base_layer")
}

/// One expert's update of one base tensor: expert `expert`'s factors, B's rows `rows`, placed at
/// element `offset` of the target.
#[derive(Debug, Clone)]
pub struct ExpertUpdate {
    /// The adapter (index into the fold's list).
    pub adapter: usize,
    /// The adapter's flattened module.
    pub module: String,
    /// Which expert.
    pub expert: usize,
    /// Experts in the layer.
    pub experts: usize,
    /// Rank per expert.
    pub rank: usize,
    /// B's rows (of the expert's `[out, r]`) this target receives.
    pub rows: (usize, usize),
    /// The target's first element the update lands on.
    pub offset: usize,
    /// `alpha / r` of the module.
    pub scale: f64,
}

/// How a base checkpoint stores a layer's experts.
enum Layout {
    /// One tensor per expert and projection: the gate, up and down names.
    PerExpert { block: &'static str, names: [&'static str; 3] },
    /// `mlp.experts.gate_up_proj` and `mlp.experts.down_proj`.
    Fused,
}

/// The base tensors a flattened expert module of adapter `k` updates, with their updates.
pub fn expert_updates(
    base: &ModelDir,
    adapter: &Adapter,
    k: usize,
    module: &str,
    a_shape: &[usize],
    b_shape: &[usize],
) -> Result<Vec<(String, ExpertUpdate)>> {
    let layer = module.split(".mlp.experts").next().expect("split");
    let missing = || {
        MergeError::Mismatch(format!(
            "{}: module '{module}' adapts routed experts, and the base model {} has none in {layer}",
            adapter.dir().display(),
            base.path().display()
        ))
    };
    let (layout, n, h, i) = if let Some(t) = base.get(&format!("{layer}.mlp.experts.down_proj")) {
        let s = &t.info.shape;
        (Layout::Fused, s[0], s[1], s[2])
    } else {
        // The architecture's names under which the base holds expert 0's down projection.
        let (block, names) = [FeedForward::MixtralMoe, FeedForward::QwenMoe]
            .map(FeedForward::expert_names)
            .into_iter()
            .find(|(block, names)| base.get(&format!("{layer}.{block}.experts.0.{}.weight", names[2])).is_some())
            .unwrap_or(FeedForward::QwenMoe.expert_names());
        let down = |e: usize| base.get(&format!("{layer}.{block}.experts.{e}.{}.weight", names[2]));
        let t = down(0).ok_or_else(missing)?;
        let n = (0..).take_while(|&e| down(e).is_some()).count();
        let (h, i) = (t.info.shape[0], t.info.shape[1]);
        (Layout::PerExpert { block, names }, n, h, i)
    };
    let (rows, d_in, d_out) = (a_shape[0], a_shape[1], b_shape[0]);
    let projection = match (d_in, d_out) {
        (d, o) if d == h && o == 2 * i => "gate_up_proj",
        (d, o) if d == i && o == h => "down_proj",
        _ => {
            return Err(MergeError::Mismatch(format!(
                "{}: module '{module}' has lora_A {a_shape:?} and lora_B {b_shape:?}, which fit neither the \
                 experts' gate_up_proj ([{}, {h}]) nor their down_proj ([{h}, {i}]) in the base",
                adapter.dir().display(),
                2 * i
            )));
        }
    };
    if rows % n != 0 || b_shape[1] != rows {
        return Err(MergeError::Mismatch(format!(
            "{}: module '{module}' has lora_A {a_shape:?} and lora_B {b_shape:?}: not a rank per each of the \
             base's {n} experts",
            adapter.dir().display()
        )));
    }
    let r = rows / n;
    let scale = adapter.config.scale_for(&format!("{layer}.mlp.experts.{projection}"), r);
    let update = |expert, rows, offset| ExpertUpdate {
        adapter: k,
        module: module.to_string(),
        expert,
        experts: n,
        rank: r,
        rows,
        offset,
        scale,
    };
    let mut out = Vec::new();
    for e in 0..n {
        match (&layout, projection) {
            (Layout::Fused, "gate_up_proj") => {
                out.push((format!("{layer}.mlp.experts.gate_up_proj"), update(e, (0, 2 * i), e * 2 * i * h)));
            }
            (Layout::Fused, _) => out.push((format!("{layer}.mlp.experts.down_proj"), update(e, (0, h), e * h * i))),
            (Layout::PerExpert { block, names }, "gate_up_proj") => {
                let p = format!("{layer}.{block}.experts.{e}");
                out.push((format!("{p}.{}.weight", names[0]), update(e, (0, i), 0)));
                out.push((format!("{p}.{}.weight", names[1]), update(e, (i, 2 * i), 0)));
            }
            (Layout::PerExpert { block, names }, _) => {
                out.push((format!("{layer}.{block}.experts.{e}.{}.weight", names[2]), update(e, (0, h), 0)));
            }
        }
    }
    Ok(out)
}

/// The decoded flattened factors of every expert module of the fold's adapters, by (adapter,
/// module): each read once, however many experts' updates come from it.
pub type ExpertFactors = BTreeMap<(usize, String), (Vec<f32>, Vec<f32>)>;

/// The update an [`ExpertUpdate`] adds, times the adapter's `weight`.
pub fn expert_delta(u: &ExpertUpdate, factors: &ExpertFactors, a_cols: usize, b_rows: usize, weight: f64) -> LoraDelta {
    let (a, b) = &factors[&(u.adapter, u.module.clone())];
    let (r, n) = (u.rank, u.experts);
    let a_e = &a[u.expert * r * a_cols..(u.expert + 1) * r * a_cols];
    let (r0, r1) = u.rows;
    debug_assert!(r1 <= b_rows);
    let mut b_e = Vec::with_capacity((r1 - r0) * r);
    for o in r0..r1 {
        for k in 0..r {
            b_e.push(b[o * n * r + k * n + u.expert]);
        }
    }
    LoraDelta::from_factors(a_e, &b_e, r, a_cols, r1 - r0, (weight * u.scale) as f32, false).at(u.offset)
}

/// Whether `name`, an expert's projection `…mlp.experts.e.{gate,up,down}_proj.weight` of `shape`,
/// is held by the checkpoint's fused expert tensors instead (`…mlp.experts.gate_up_proj`
/// `[E, 2I, H]`, `…mlp.experts.down_proj` `[E, H, I]`).
pub fn in_fused_experts(model: &ModelDir, name: &str, shape: &[usize]) -> bool {
    let Some(ExpertPath { layer, index: e, projection }) = expert_path(name) else { return false };
    let fused = |p: &str| model.get(&format!("{layer}.mlp.experts.{p}")).map(|t| t.info.shape.clone());
    match (projection, shape) {
        ("gate_proj.weight" | "up_proj.weight", [i, h]) => {
            fused("gate_up_proj").is_some_and(|s| s.len() == 3 && e < s[0] && s[1] == 2 * i && s[2] == *h)
        }
        ("down_proj.weight", [h, i]) => {
            fused("down_proj").is_some_and(|s| s.len() == 3 && e < s[0] && s[1] == *h && s[2] == *i)
        }
        _ => false,
    }
}
