//! LoRA on routed experts in a llama.cpp adapter: per layer and projection one 3-D pair
//! `blk.N.ffn_{gate,up,down}_exps.weight.lora_a` (ggml `{in, r, experts}`, row-major `[E, r, in]`) and
//! `.lora_b` (`{r, out, experts}`, `[E, out, r]`), which llama.cpp's `build_lora_mm_id` selects with
//! the same expert ids as the base's `ggml_mul_mat_id`. `convert_lora_to_gguf.py` cannot convert
//! PEFT's flattened `target_parameters` layout, so lora writes it itself.
//!
//! The sources: PEFT's flattened modules (`…mlp.experts[.base_layer]`, A's row `e·r + k`, B's column
//! `k·E + e`; an expert's `gate_up_proj` update splits into its gate rows and its up rows, which share
//! its A), and older per-expert modules (`…mlp.experts.E.gate_proj`). An expert the adapter leaves
//! alone gets zero factors; experts of different ranks are padded with zero rows of A and columns of
//! B to the layer's largest, which changes no product. Each expert's own scale is folded into its B
//! against the file's one `alpha / r`, as for every other module.

use std::collections::BTreeMap;

use lora_formats::hf_config::expert_path;

use crate::adapter::Adapter;
use crate::error::{MergeError, Result};
use crate::gguf::experts::{DOWN_EXPS, GATE_EXPS, GATE_UP_EXPS, UP_EXPS};

/// The base's routed experts, as the export needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertShape {
    /// Experts per layer.
    pub count: usize,
    /// The model's hidden size.
    pub hidden: usize,
    /// One expert's intermediate width.
    pub width: usize,
    /// Gate and up are one `ffn_gate_up_exps` tensor in the base file (newer converters).
    pub merged_gate_up: bool,
}

/// One expert's factors for one projection: A `[r, in]`, B `[out, r]`, its scale `alpha / r`.
struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scale: f64,
}

/// The 3-D pairs of an adapter's expert modules: (GGUF tensor name without `.lora_a`/`.lora_b`,
/// A `[E, r, in]` values, B `[E, out, r]` values, r, in, out), B scaled so that `alpha / r` with the
/// file's `alpha` gives each expert its own scale.
pub(crate) type ExpertPair = (String, Vec<f32>, Vec<f32>, usize, usize, usize);

/// The expert pairs of `adapter` for a base with `shape` experts (`alpha` is the file's), and the
/// per-expert modules they take from `adapter.modules`.
pub(crate) fn expert_pairs(
    adapter: &Adapter,
    shape: Option<ExpertShape>,
    alpha: f32,
) -> Result<(Vec<ExpertPair>, Vec<String>)> {
    let dir = adapter.dir().display().to_string();
    let per_expert: Vec<&str> = adapter
        .modules
        .keys()
        .map(String::as_str)
        .filter(|m| expert_path(m).is_some_and(|p| projection_of(p.projection).is_some()))
        .collect();
    if adapter.experts.is_empty() && per_expert.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let shape = shape.ok_or_else(|| {
        MergeError::Mismatch(format!("{dir}: the adapter adapts routed experts, and the base has none"))
    })?;
    let ExpertShape { count: n, hidden: h, width: i, merged_gate_up } = shape;
    // (layer, projection) → expert → factors; projection 0 gate, 1 up, 2 down.
    let mut groups: BTreeMap<(String, usize), BTreeMap<usize, Factors>> = BTreeMap::new();
    for (module, (a_info, b_info)) in &adapter.experts {
        let layer = module.split(".mlp.experts").next().expect("split").to_string();
        let (a, b) = (adapter.tensor_f32(a_info), adapter.tensor_f32(b_info));
        let (rows, d_in, d_out) = (a_info.shape[0], a_info.shape[1], b_info.shape[0]);
        let (projections, name): (&[(usize, usize)], _) = match (d_in, d_out) {
            (d, o) if d == h && o == 2 * i => (&[(0, 0), (1, i)], "gate_up_proj"),
            (d, o) if d == i && o == h => (&[(2, 0)], "down_proj"),
            _ => {
                return Err(MergeError::Mismatch(format!(
                    "{dir}: module '{module}' has lora_A {:?} and lora_B {:?}, which fit neither the experts' \
                     gate_up_proj ([{}, {h}]) nor their down_proj ([{h}, {i}])",
                    a_info.shape,
                    b_info.shape,
                    2 * i
                )));
            }
        };
        if rows % n != 0 {
            return Err(MergeError::Mismatch(format!(
                "{dir}: module '{module}' has {rows} rows of lora_A: not a rank per each of the base's {n} experts"
            )));
        }
        let r = rows / n;
        let scale = adapter.config.scale_for(&format!("{layer}.mlp.experts.{name}"), r);
        let out_rows = projections.len().max(1);
        let per = d_out / out_rows;
        for &(p, first_row) in projections {
            for e in 0..n {
                let a_e = a[e * r * d_in..(e + 1) * r * d_in].to_vec();
                let mut b_e = Vec::with_capacity(per * r);
                for o in first_row..first_row + per {
                    b_e.extend((0..r).map(|k| b[o * n * r + k * n + e]));
                }
                groups.entry((layer.clone(), p)).or_default().insert(e, Factors { a: a_e, b: b_e, rank: r, scale });
            }
        }
    }
    for &module in &per_expert {
        let m = &adapter.modules[module];
        let path = expert_path(module).expect("filtered");
        let p = projection_of(path.projection).expect("filtered");
        if m.transposed {
            return Err(MergeError::Mismatch(format!("{dir}: fan_in_fan_out module '{module}' cannot be exported")));
        }
        let want = if p == 2 { [h, i] } else { [i, h] };
        if [m.b.shape[0], m.a.shape[1]] != want || path.index >= n {
            return Err(MergeError::Mismatch(format!(
                "{dir}: module '{module}' ({:?} x {:?}) does not fit expert {} of the base's {n} ([{}, {}])",
                m.b.shape, m.a.shape, path.index, want[0], want[1]
            )));
        }
        let f = Factors { a: adapter.tensor_f32(&m.a), b: adapter.tensor_f32(&m.b), rank: m.rank, scale: m.scale };
        if groups.entry((path.layer.to_string(), p)).or_default().insert(path.index, f).is_some() {
            return Err(MergeError::Mismatch(format!("{dir}: expert {} of '{module}' is adapted twice", path.index)));
        }
    }
    // GGUF's block index of each layer prefix (`model.layers.N` → N).
    let block = |layer: &str| -> Result<usize> {
        lora_formats::hf_config::layer_index(layer)
            .ok_or_else(|| MergeError::Mismatch(format!("{dir}: '{layer}' names no decoder layer")))
    };
    let mut pairs = Vec::new();
    let mut layers: BTreeMap<usize, [Option<BTreeMap<usize, Factors>>; 3]> = BTreeMap::new();
    for ((layer, p), experts) in groups {
        layers.entry(block(&layer)?).or_default()[p] = Some(experts);
    }
    for (l, [gate, up, down]) in layers {
        let dims = [(h, i), (h, i), (i, h)];
        if merged_gate_up && (gate.is_some() || up.is_some()) {
            // One tensor per expert, gate rows then up rows: the two updates side by side at the sum of
            // their ranks (block-diagonal B), which is exact whatever their A's.
            let (g, u) = (gate.unwrap_or_default(), up.unwrap_or_default());
            let pair = stack(n, &[(&g, 0), (&u, i)], h, 2 * i, alpha);
            pairs.push((format!("blk.{l}.{GATE_UP_EXPS}"), pair.0, pair.1, pair.2, h, 2 * i));
        } else {
            for (p, experts) in [(0, gate), (1, up)] {
                if let Some(experts) = experts {
                    let (a, b, r) = stack(n, &[(&experts, 0)], dims[p].0, dims[p].1, alpha);
                    let name = if p == 0 { GATE_EXPS } else { UP_EXPS };
                    pairs.push((format!("blk.{l}.{name}"), a, b, r, dims[p].0, dims[p].1));
                }
            }
        }
        if let Some(experts) = down {
            let (a, b, r) = stack(n, &[(&experts, 0)], i, h, alpha);
            pairs.push((format!("blk.{l}.{DOWN_EXPS}"), a, b, r, i, h));
        }
    }
    Ok((pairs, per_expert.into_iter().map(str::to_string).collect()))
}

/// `gate_proj`/`w1` → 0, `up_proj`/`w3` → 1, `down_proj`/`w2` → 2 (a per-expert module's last name).
fn projection_of(name: &str) -> Option<usize> {
    match name {
        "gate_proj" | "w1" => Some(0),
        "up_proj" | "w3" => Some(1),
        "down_proj" | "w2" => Some(2),
        _ => None,
    }
}

/// Stacks `parts` (each a set of experts' factors and the first output row it updates) into
/// `[E, r, d_in]` and `[E, d_out, r]`, r the largest sum of the parts' ranks over the experts, each
/// expert's B scaled by its scale over `alpha / r`.
fn stack(
    n: usize,
    parts: &[(&BTreeMap<usize, Factors>, usize)],
    d_in: usize,
    d_out: usize,
    alpha: f32,
) -> (Vec<f32>, Vec<f32>, usize) {
    let rank_of = |e: usize| parts.iter().map(|(f, _)| f.get(&e).map_or(0, |f| f.rank)).sum::<usize>();
    let r = (0..n).map(rank_of).max().unwrap_or(0).max(1);
    let file_scale = alpha as f64 / r as f64;
    let (mut a, mut b) = (vec![0f32; n * r * d_in], vec![0f32; n * d_out * r]);
    for e in 0..n {
        let mut k0 = 0;
        for (experts, first_row) in parts {
            let Some(f) = experts.get(&e) else { continue };
            let k = (f.scale / file_scale) as f32;
            for kk in 0..f.rank {
                let row = e * r * d_in + (k0 + kk) * d_in;
                a[row..row + d_in].copy_from_slice(&f.a[kk * d_in..(kk + 1) * d_in]);
            }
            let rows = f.b.len() / f.rank.max(1);
            for o in 0..rows {
                for kk in 0..f.rank {
                    b[e * d_out * r + (first_row + o) * r + k0 + kk] = f.b[o * f.rank + kk] * k;
                }
            }
            k0 += f.rank;
        }
    }
    (a, b, r)
}
