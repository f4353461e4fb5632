//! Adapters on routed experts in PEFT's file layout for transformers 5's fused experts
//! (`target_parameters` on `mlp.experts.gate_up_proj` / `mlp.experts.down_proj`, PEFT ≥ 0.19's
//! `ParamWrapper`), and back.
//!
//! lora holds one adapter per expert projection (A_e `[r, in]`, B_e `[out, r]`); PEFT holds one
//! pair per layer and projection over every expert, flattened with different index orders for A
//! and B:
//!
//! ```text
//! lora_A [E·r, in]:  row  e·r + k  = A_e[k, :]
//! lora_B [out, E·r]: col  k·E + e  = B_e[:, k]
//! ```
//!
//! Keys: with both projections adapted in a layer, `gate_up_proj` is PEFT's inner wrapper
//! (`mlp.experts.base_layer.lora_A.weight`) and `down_proj` the outer (`mlp.experts.lora_A.weight`);
//! with one, it has the outer keys.

use std::collections::BTreeMap;

use crate::error::{CoreError, Result};
use crate::network::model::CausalLm;

/// One layer's flattened expert adapter: the factors as PEFT stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatExperts {
    /// `[E·r, in]`, row-major.
    pub a: Vec<f32>,
    /// `[out, E·r]`, row-major.
    pub b: Vec<f32>,
    /// Experts.
    pub experts: usize,
    /// Rank per expert.
    pub r: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
}

impl FlatExperts {
    /// Flattens per-expert factors (`a[e]` `[r, in]`, `b[e]` `[out, r]`).
    pub fn from_experts(a: &[Vec<f32>], b: &[Vec<f32>], r: usize, d_in: usize, d_out: usize) -> Self {
        let experts = a.len();
        let a_flat = a.concat();
        let mut b_flat = vec![0.0f32; d_out * experts * r];
        for (e, be) in b.iter().enumerate() {
            for o in 0..d_out {
                for k in 0..r {
                    b_flat[o * experts * r + k * experts + e] = be[o * r + k];
                }
            }
        }
        Self { a: a_flat, b: b_flat, experts, r, d_in, d_out }
    }

    /// Expert `e`'s factors: A_e `[r, in]`, B_e `[out, r]`.
    pub fn expert(&self, e: usize) -> (Vec<f32>, Vec<f32>) {
        let (r, n) = (self.r, self.experts);
        let a = self.a[e * r * self.d_in..(e + 1) * r * self.d_in].to_vec();
        let mut b = vec![0.0f32; self.d_out * r];
        for o in 0..self.d_out {
            for k in 0..r {
                b[o * r + k] = self.b[o * n * r + k * n + e];
            }
        }
        (a, b)
    }
}

/// The PEFT module names (under `base_model.model.`) of a layer's expert adapters: `gate_up_proj`'s
/// and `down_proj`'s, given which are adapted.
pub fn peft_modules(layer: &str, gate_up: bool, down: bool) -> (String, String) {
    let outer = format!("{layer}.mlp.experts");
    match (gate_up, down) {
        (true, true) => (format!("{outer}.base_layer"), outer),
        _ => (outer.clone(), outer),
    }
}

/// The model's expert adapters (the first of each projection), flattened per layer and projection:
/// `(layer prefix, projection, factors)`. A layer whose experts are adapted only in part is an error.
pub fn flatten(model: &CausalLm) -> Result<Vec<(String, &'static str, FlatExperts)>> {
    // The adapters by layer and projection; each group is read back and flattened on its own, so
    // that the host holds the flattened result and one group's copies, never every expert's twice.
    let mut per: BTreeMap<(String, &'static str), Vec<(usize, &crate::network::lora::LoraAdapter)>> = BTreeMap::new();
    for (path, lin) in model.linear_modules() {
        let (Some(e), Some(adapter)) = (crate::network::config::expert_path(&path), lin.lora.first()) else {
            continue;
        };
        let projection: &'static str = if e.projection == "gate_up_proj" { "gate_up_proj" } else { "down_proj" };
        per.entry((e.layer.to_string(), projection)).or_default().push((e.index, adapter));
    }
    let experts = model.config.moe.as_ref().map_or(0, |m| m.num_experts);
    let host = |t: &burn::tensor::Tensor<2>| crate::kernels::host::to_f32_vec(t.clone().inner());
    let mut out = Vec::new();
    for ((layer, projection), mut list) in per {
        list.sort_by_key(|x| x.0);
        let r = list[0].1.lora_a.dims()[0];
        if list.len() != experts || list.iter().any(|x| x.1.lora_a.dims()[0] != r) {
            return Err(CoreError::Invalid(format!(
                "{layer}: {} of {experts} experts' {projection} have adapters (of equal rank, PEFT needs all)",
                list.len()
            )));
        }
        let (d_in, d_out) = (list[0].1.lora_a.dims()[1], list[0].1.lora_b.dims()[0]);
        let a = list.iter().map(|x| host(&x.1.lora_a)).collect::<Result<Vec<_>>>()?;
        let b = list.iter().map(|x| host(&x.1.lora_b)).collect::<Result<Vec<_>>>()?;
        out.push((layer, projection, FlatExperts::from_experts(&a, &b, r, d_in, d_out)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::FlatExperts;

    #[test]
    fn flattening_follows_peft_s_index_orders_and_inverts() {
        // 3 experts, r 2, in 2, out 3: values encode (expert, row, col).
        let (n, r, d_in, d_out) = (3, 2, 2, 3);
        let a: Vec<Vec<f32>> = (0..n).map(|e| (0..r * d_in).map(|i| (100 * e + i) as f32).collect()).collect();
        let b: Vec<Vec<f32>> = (0..n).map(|e| (0..d_out * r).map(|i| (1000 + 100 * e + i) as f32).collect()).collect();
        let f = FlatExperts::from_experts(&a, &b, r, d_in, d_out);
        // A's row e·r + k is A_e's row k.
        assert_eq!(&f.a[(2 * r + 1) * d_in..(2 * r + 2) * d_in], &a[2][d_in..2 * d_in]);
        // B's column k·E + e is B_e's column k: out row 1, k 1, e 2.
        assert_eq!(f.b[n * r + n + 2], b[2][r + 1]);
        for e in 0..n {
            assert_eq!(f.expert(e), (a[e].clone(), b[e].clone()));
        }
    }
}

/// Attaches the expert adapters among an adapter file's modules (`modules`: module → (A name,
/// B name)), removing them from the map: PEFT's flattened ones (`…mlp.experts[.base_layer]`), and
/// the older per-expert ones (`…mlp.experts.E.{gate,up,down}_proj`, Mixtral's
/// `…block_sparse_moe.experts.E.{w1,w3,w2}`), whose gate and up combine as PEFT converts them: A
/// stacked along the rank, B block-diagonal, so that one adapter of rank 2r covers both.
pub(crate) fn attach_from_file(
    model: &mut CausalLm,
    file: &lora_formats::safetensors::SafetensorsFile,
    modules: &mut BTreeMap<String, (String, String)>,
    cfg: &crate::adapter::config::AdapterConfig,
    weight: f64,
    trainable: bool,
) -> Result<()> {
    let Some(moe) = model.config.moe.clone() else { return Ok(()) };
    let n = moe.num_experts;
    let path = file.path().to_path_buf();
    let device = model.device();
    let shape = |name: &str| file.info(name).expect("listed").shape.clone();
    // (target linear path, A [r, in], B [out, r], r, scaling)
    let mut attach: Vec<(String, Vec<f32>, Vec<f32>, usize, f64)> = Vec::new();
    let (h, i) = (model.config.hidden_size, moe.intermediate_size);
    let flat: Vec<String> = modules
        .keys()
        .filter(|m| m.ends_with(".mlp.experts") || m.ends_with(".mlp.experts.base_layer"))
        .cloned()
        .collect();
    for m in flat {
        let entry = modules.remove(&m).expect("listed");
        let (a_name, b_name) = entry;
        let layer = m.split(".mlp.experts").next().expect("split").to_string();
        let (sa, sb) = (shape(&a_name), shape(&b_name));
        let projection = match (sa.get(1), sb.first()) {
            (Some(&d_in), Some(&d_out)) if d_in == h && d_out == 2 * i => "gate_up_proj",
            (Some(&d_in), Some(&d_out)) if d_in == i && d_out == h => "down_proj",
            _ => {
                return Err(CoreError::ShapeMismatch {
                    path: path.clone(),
                    name: format!("{a_name} / {b_name}"),
                    expected: vec![2 * i, n, h],
                    found: [sb.as_slice(), sa.as_slice()].concat(),
                });
            }
        };
        let rows = sa[0];
        let (d_in, d_out) = (sa[1], sb[0]);
        if rows == 0 || rows % n != 0 || sb != vec![d_out, rows] {
            return Err(CoreError::ShapeMismatch {
                path: path.clone(),
                name: format!("{a_name} / {b_name}"),
                expected: vec![d_out, n, d_in],
                found: [sb.as_slice(), sa.as_slice()].concat(),
            });
        }
        let r = rows / n;
        let f = FlatExperts { a: file.to_f32(&a_name)?.0, b: file.to_f32(&b_name)?.0, experts: n, r, d_in, d_out };
        let scaling = cfg.scale_for(&format!("{layer}.mlp.experts.{projection}"), r) * weight;
        for e in 0..n {
            let (a, b) = f.expert(e);
            attach.push((format!("{layer}.mlp.experts.{e}.{projection}"), a, b, r, scaling));
        }
    }
    // Per-expert (older) adapters.
    let per_expert: Vec<String> = modules
        .keys()
        .filter(|m| m.contains(".mlp.experts.") || m.contains(".block_sparse_moe.experts."))
        .cloned()
        .collect();
    let mut gate_up: BTreeMap<String, [Option<(Vec<f32>, Vec<f32>, usize, f64)>; 2]> = BTreeMap::new();
    for m in per_expert {
        let entry = modules.remove(&m).expect("listed");
        let (a_name, b_name) = entry;
        let (stem, projection) = m.rsplit_once('.').expect("a module path");
        let stem = stem.replace(".block_sparse_moe.experts.", ".mlp.experts.");
        let (a, b) = (file.to_f32(&a_name)?.0, file.to_f32(&b_name)?.0);
        let r = shape(&a_name)[0];
        let scaling = cfg.scale_for(&m, r) * weight;
        match projection {
            "down_proj" | "w2" => attach.push((format!("{stem}.down_proj"), a, b, r, scaling)),
            "gate_proj" | "w1" => gate_up.entry(stem).or_default()[0] = Some((a, b, r, scaling)),
            "up_proj" | "w3" => gate_up.entry(stem).or_default()[1] = Some((a, b, r, scaling)),
            _ => {
                return Err(CoreError::Invalid(format!(
                    "{}: adapter module '{m}' does not exist in the base model",
                    path.display()
                )));
            }
        }
    }
    for (stem, [gate, up]) in gate_up {
        let (Some((ag, bg, rg, sg)), Some((au, bu, ru, su))) = (gate, up) else {
            return Err(CoreError::Invalid(format!(
                "{}: {stem} has an adapter on one of gate_proj and up_proj: they are one projection of the \
                 expert (gate_up_proj), as PEFT converts them, and need both",
                path.display()
            )));
        };
        if rg != ru || (sg - su).abs() > 1e-12 * sg.abs().max(1.0) {
            return Err(CoreError::Invalid(format!(
                "{}: {stem}'s gate_proj and up_proj adapters differ in rank or scale and cannot combine",
                path.display()
            )));
        }
        // A = [A_gate; A_up] [2r, h]; B = [[B_gate, 0], [0, B_up]] [2i, 2r].
        let r2 = 2 * rg;
        let a = [ag, au].concat();
        let mut b = vec![0.0f32; 2 * i * r2];
        for o in 0..i {
            for k in 0..rg {
                b[o * r2 + k] = bg[o * rg + k];
                b[(i + o) * r2 + rg + k] = bu[o * rg + k];
            }
        }
        attach.push((format!("{stem}.gate_up_proj"), a, b, r2, sg));
    }
    let mut linears = model.linear_modules_mut();
    for (target, a, b, r, scaling) in attach {
        let Some((_, lin)) = linears.iter_mut().find(|(p, _)| *p == target) else {
            return Err(CoreError::Invalid(format!(
                "{}: adapter module '{target}' does not exist in the base model",
                path.display()
            )));
        };
        let (d_in, d_out) = lin.dims();
        if a.len() != r * d_in || b.len() != d_out * r {
            return Err(CoreError::ShapeMismatch {
                path: path.clone(),
                name: target,
                expected: vec![d_out, r, d_in],
                found: vec![b.len() / r.max(1), r, a.len() / r.max(1)],
            });
        }
        lin.lora.push(super::make_adapter(a, b, r, d_in, d_out, scaling, 0.0, &device, trainable));
    }
    Ok(())
}

/// Rewrites an adapter's configuration for the modules it adapted (`targets`) as PEFT (≥ 0.19)
/// writes it for transformers 5's fused experts: the expert projections leave `target_modules` for
/// `target_parameters` (`gate_up_proj`, `down_proj`), and `gate_up_proj` gets rank 2r and alpha 2α
/// through `rank_pattern` / `alpha_pattern`. `target_modules` becomes the list of the other adapted
/// modules' names. Nothing changes when no expert is adapted.
pub fn peft_config_for_experts(cfg: &mut crate::adapter::config::AdapterConfig, targets: &[String]) {
    let projections: std::collections::BTreeSet<&str> =
        targets.iter().filter_map(|t| super::expert_projection(t)).collect();
    let router = targets.iter().any(|t| super::is_router(t));
    if projections.is_empty() && !router {
        return;
    }
    let others: std::collections::BTreeSet<String> = targets
        .iter()
        .filter(|t| super::expert_projection(t).is_none() && !super::is_router(t))
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
        .collect();
    cfg.target_modules = Some(crate::adapter::config::TargetModules::Names(others.into_iter().collect()));
    // PEFT's own order: gate_up_proj, then down_proj; the router is a parameter to PEFT too
    // (transformers 5's TopKRouter is no linear module), `gate.weight` as PEFT 0.20 writes it.
    let params: Vec<serde_json::Value> = ["gate_up_proj", "down_proj"]
        .into_iter()
        .filter(|p| projections.contains(p))
        .chain(router.then_some("gate.weight"))
        .map(|p| serde_json::Value::String(p.to_string()))
        .collect();
    cfg.extra.insert("target_parameters".to_string(), serde_json::Value::Array(params));
    if projections.contains("gate_up_proj") {
        let key = r".*\.gate_up_proj".to_string();
        cfg.rank_pattern.insert(key.clone(), 2 * cfg.r);
        cfg.alpha_pattern.insert(key, 2.0 * cfg.lora_alpha);
    }
}
