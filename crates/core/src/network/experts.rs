//! The routed experts of an MoE decoder layer, as transformers 5 computes them
//! (`Qwen3MoeSparseMoeBlock`, `MixtralSparseMoeBlock`): the router `gate` scores every expert, the
//! softmax of the scores picks each token's top k, whose probabilities are divided by their sum when
//! `renormalize` is set; each expert runs its gated MLP once over the tokens routed to it, and the
//! outputs are added into the tokens' rows weighted by those probabilities, expert by expert in
//! index order. Qwen3.5-MoE adds a shared expert every token goes through, weighted by the sigmoid
//! of its own gate.
//!
//! The choice of experts (an index) carries no gradient; the weights do, through the router's
//! softmax back to the layer's input, as in transformers. Tokens are grouped by expert on the host
//! from the router's probabilities, so each expert is one product over its tokens and no product
//! touches an expert without tokens.

use burn::module::Module;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::Result;
use crate::io::load_options::LoadOptions;
use crate::io::load_options::Quantize;
use crate::io::weights::Weights;
use crate::kernels::fused_swiglu::swiglu;
use crate::kernels::host::to_f32_vec;
use crate::network::base_weight::BaseWeight;
use crate::network::config::{FeedForward, MoeConfig};
use crate::network::linear::Linear;
use crate::network::mlp::Mlp;
use lora_formats::nf4::Nf4Tensor;

/// `mlp` (Mixtral: `block_sparse_moe`) of a sparse decoder layer.
#[derive(Module, Debug)]
pub struct SparseMoe {
    /// `gate`: the router, hidden -> num_experts, no bias.
    pub gate: Linear,
    /// `experts.e`: each expert's gated MLP.
    pub experts: Vec<Expert>,
    /// `shared_expert`: the gated MLP every token also goes through (Qwen3.5-MoE).
    pub shared_expert: Option<Mlp>,
    /// `shared_expert_gate`: hidden -> 1, whose sigmoid weighs the shared expert's output.
    pub shared_expert_gate: Option<Linear>,
    /// Experts per token.
    pub top_k: usize,
    /// Whether the chosen probabilities are divided by their sum.
    pub renormalize: bool,
}

/// One expert's gated MLP, held as transformers 5 holds it: gate and up as one projection (rows
/// `[0, I)` the gate's, `[I, 2I)` the up's), so that LoRA on it has one rank over both halves, as
/// PEFT's adapters on `mlp.experts.gate_up_proj` have.
#[derive(Module, Debug)]
pub struct Expert {
    /// `gate_up_proj`: hidden -> 2 · intermediate.
    pub gate_up_proj: Linear,
    /// `down_proj`: intermediate -> hidden.
    pub down_proj: Linear,
}

impl Expert {
    /// # Shapes
    /// - x: `[..., hidden]`
    /// - output: `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate_up = self.gate_up_proj.forward(x); // [..., 2I]
        let i = gate_up.dims()[D - 1] / 2;
        let mut halves = gate_up.split(i, D - 1).into_iter();
        let (gate, up) = (halves.next().expect("two halves"), halves.next().expect("two halves"));
        self.down_proj.forward(swiglu(gate, up))
    }
}

impl SparseMoe {
    /// Loads `{layer}.mlp.gate` and `{layer}.mlp.experts.{e}.*` (or Mixtral's names).
    pub fn load(
        w: &Weights,
        layer: &str,
        kind: FeedForward,
        hidden: usize,
        moe: &MoeConfig,
        opts: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let (block, [g, u, d]) = kind.expert_names();
        let prefix = format!("{layer}.{block}");
        // The router stays in full precision: its scores pick the experts.
        let gate = Linear::load(w, &format!("{prefix}.gate"), (hidden, moe.num_experts), false, opts, false, device)?;
        let (e_count, i) = (moe.num_experts, moe.intermediate_size);
        // transformers 5 and the Qwen3.5 checkpoints store the experts fused; older ones one by one.
        let fused = (format!("{prefix}.experts.gate_up_proj"), format!("{prefix}.experts.down_proj"));
        let experts = if w.contains(&fused.0) {
            let (gate_up, _) = w.read_f32(&fused.0, &[e_count, 2 * i, hidden])?;
            let (down, _) = w.read_f32(&fused.1, &[e_count, hidden, i])?;
            let (gu, dn) = (2 * i * hidden, hidden * i);
            (0..e_count)
                .map(|e| Expert {
                    gate_up_proj: stacked(
                        gate_up[e * gu..e * gu + gu / 2].to_vec(),
                        gate_up[e * gu + gu / 2..(e + 1) * gu].to_vec(),
                        i,
                        hidden,
                        opts,
                        device,
                    ),
                    down_proj: Linear::from_values(down[e * dn..(e + 1) * dn].to_vec(), [hidden, i], opts, device),
                })
                .collect()
        } else {
            (0..e_count)
                .map(|e| {
                    let p = format!("{prefix}.experts.{e}");
                    let (gate, up) = (format!("{p}.{g}.weight"), format!("{p}.{u}.weight"));
                    Ok(Expert {
                        gate_up_proj: gate_up_linear(w, &gate, &up, i, hidden, opts, device)?,
                        down_proj: Linear::load(w, &format!("{p}.{d}"), (i, hidden), false, opts, true, device)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let (shared_expert, shared_expert_gate) = match moe.shared_expert {
            Some(s) => {
                let p = format!("{prefix}.shared_expert");
                let names = [format!("{p}.gate_proj"), format!("{p}.up_proj"), format!("{p}.down_proj")];
                let mlp = Mlp::load_named(w, [&names[0], &names[1], &names[2]], hidden, s, opts, device)?;
                // The gate stays in full precision, as the router does.
                let gate =
                    Linear::load(w, &format!("{prefix}.shared_expert_gate"), (hidden, 1), false, opts, false, device)?;
                (Some(mlp), Some(gate))
            }
            None => (None, None),
        };
        Ok(Self { gate, experts, shared_expert, shared_expert_gate, top_k: moe.top_k, renormalize: moe.renormalize })
    }

    /// The block's linear layers named under the decoder layer as transformers 5 names them in
    /// memory (Mixtral's too): the router `mlp.gate`, then each expert's `mlp.experts.e.gate_up_proj`
    /// and `mlp.experts.e.down_proj`.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = vec![("mlp.gate".to_string(), &self.gate)];
        for (e, x) in self.experts.iter().enumerate() {
            out.push((format!("mlp.experts.{e}.gate_up_proj"), &x.gate_up_proj));
            out.push((format!("mlp.experts.{e}.down_proj"), &x.down_proj));
        }
        if let (Some(m), Some(g)) = (&self.shared_expert, &self.shared_expert_gate) {
            out.push(("mlp.shared_expert.gate_proj".to_string(), &m.gate_proj));
            out.push(("mlp.shared_expert.up_proj".to_string(), &m.up_proj));
            out.push(("mlp.shared_expert.down_proj".to_string(), &m.down_proj));
            out.push(("mlp.shared_expert_gate".to_string(), g));
        }
        out
    }

    /// [`Self::linears`], borrowed mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = vec![("mlp.gate".to_string(), &mut self.gate)];
        for (e, x) in self.experts.iter_mut().enumerate() {
            out.push((format!("mlp.experts.{e}.gate_up_proj"), &mut x.gate_up_proj));
            out.push((format!("mlp.experts.{e}.down_proj"), &mut x.down_proj));
        }
        if let (Some(m), Some(g)) = (&mut self.shared_expert, &mut self.shared_expert_gate) {
            out.push(("mlp.shared_expert.gate_proj".to_string(), &mut m.gate_proj));
            out.push(("mlp.shared_expert.up_proj".to_string(), &mut m.up_proj));
            out.push(("mlp.shared_expert.down_proj".to_string(), &mut m.down_proj));
            out.push(("mlp.shared_expert_gate".to_string(), g));
        }
        out
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, true)
    }

    /// [`Self::forward`] with the experts run one by one from burn operations, whatever the device:
    /// the reference of the fused CPU experts (`crate::kernels::fused_experts`) and the path of
    /// every other case.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward_reference(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, false)
    }

    fn forward_with(&self, x: Tensor<3>, fused: bool) -> Tensor<3> {
        let [b, t, h] = x.dims();
        let (n, k, n_experts) = (b * t, self.top_k, self.experts.len());
        let device = x.device();
        let flat = x.reshape([n, h]);
        let probs = softmax(self.gate.forward(flat.clone()), 1); // [n, E]
        let chosen = top_k(&to_f32_vec(probs.clone()).expect("router probabilities read back"), n_experts, k);
        let index = Tensor::<2, Int>::from_data(TensorData::new(chosen.clone(), [n, k]), &device);
        let mut weights = probs.gather(1, index); // [n, k]
        if self.renormalize {
            weights = weights.clone() / weights.sum_dim(1);
        }
        let weights = weights.reshape([n * k]);
        // Each expert's (token, slot) pairs, tokens ascending.
        let mut routed: Vec<Vec<(i64, i64)>> = vec![Vec::new(); n_experts];
        for (slot, &e) in chosen.iter().enumerate() {
            routed[e as usize].push(((slot / k) as i64, slot as i64));
        }
        if let Some(y) = fused.then(|| self.fused_experts(&flat, &weights, &routed)).flatten() {
            return self.with_shared_expert(y, flat).reshape([b, t, h]);
        }
        let mut out = flat.zeros_like();
        for (expert, pairs) in self.experts.iter().zip(&routed) {
            if pairs.is_empty() {
                continue;
            }
            let m = pairs.len();
            let ints = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [m]), &device);
            let tokens = ints(pairs.iter().map(|p| p.0).collect());
            let slots = ints(pairs.iter().map(|p| p.1).collect());
            let y = expert.forward(flat.clone().select(0, tokens.clone())); // [m, h]
            let w = weights.clone().select(0, slots).reshape([m, 1]);
            out = out.select_assign(0, tokens, y * w, IndexingUpdateOp::Add);
        }
        self.with_shared_expert(out, flat).reshape([b, t, h])
    }

    /// The routed experts' output plus the shared expert's, weighted by the sigmoid of its gate
    /// (added after the routed ones, as transformers adds it).
    fn with_shared_expert(&self, out: Tensor<2>, flat: Tensor<2>) -> Tensor<2> {
        match (&self.shared_expert, &self.shared_expert_gate) {
            (Some(m), Some(g)) => out + sigmoid(g.forward(flat.clone())) * m.forward(flat),
            _ => out,
        }
    }

    /// The routed experts as one fused CPU operation (`crate::kernels::fused_experts`), when every
    /// expert has an f32 base on the CPU and one f32 adapter on each projection without dropout, of
    /// one rank and scale per projection across the experts; `None` otherwise.
    ///
    /// # Shapes
    /// - flat: `[n, hidden]`, weights: `[n · k]`
    /// - output: `[n, hidden]`
    fn fused_experts(&self, flat: &Tensor<2>, weights: &Tensor<1>, routed: &[Vec<(i64, i64)>]) -> Option<Tensor<2>> {
        use crate::kernels::fused_experts::{ExpertShape, Routing, frozen_f32, routed_experts};
        if !crate::kernels::cpu_kernel::use_fused(flat) {
            return None;
        }
        let f32_adapter = |l: &Linear| -> Option<(usize, f64)> {
            let [a] = l.lora.as_slice() else { return None };
            let dense = matches!(l.weight, BaseWeight::Dense(_)) && l.bias.is_none() && l.compute.is_none();
            let f32 = a.lora_a.dtype() == DType::F32 && a.lora_b.dtype() == DType::F32;
            let plain = a.dropout_keep(1).is_none() && a.dora.is_none();
            (dense && f32 && plain).then(|| (a.lora_a.dims()[0], a.scaling))
        };
        let first = self.experts.first()?;
        let (gu, dn) = (f32_adapter(&first.gate_up_proj)?, f32_adapter(&first.down_proj)?);
        let mut frozen = Vec::with_capacity(self.experts.len());
        for e in &self.experts {
            if f32_adapter(&e.gate_up_proj)? != gu || f32_adapter(&e.down_proj)? != dn {
                return None;
            }
            let dense = |l: &Linear| match &l.weight {
                BaseWeight::Dense(w) => frozen_f32(w),
                _ => None,
            };
            frozen.push([dense(&e.gate_up_proj)?, dense(&e.down_proj)?]);
        }
        let (hidden, two_i) = (flat.dims()[1], first.gate_up_proj.weight.dims()[0]);
        let cat = |f: &dyn Fn(&Expert) -> Tensor<2>| Tensor::cat(self.experts.iter().map(f).collect(), 0);
        let factors = [
            cat(&|e| e.gate_up_proj.lora[0].lora_a.clone()),
            cat(&|e| e.gate_up_proj.lora[0].lora_b.clone()),
            cat(&|e| e.down_proj.lora[0].lora_a.clone()),
            cat(&|e| e.down_proj.lora[0].lora_b.clone()),
        ];
        let routing = Routing {
            experts: routed.iter().map(|pairs| pairs.iter().map(|&(t, s)| (t as usize, s as usize)).unzip()).collect(),
        };
        let shape = ExpertShape { hidden, width: two_i / 2, ranks: [gu.0, dn.0], scales: [gu.1 as f32, dn.1 as f32] };
        Some(routed_experts(flat.clone(), weights.clone(), factors, std::sync::Arc::new(frozen), routing, shape))
    }
}

/// An expert's gate and up projections (`[i, hidden]` each) as one layer: a bitsandbytes 4-bit
/// checkpoint's codes stacked as stored, or the values read and held as [`stacked`] holds them.
fn gate_up_linear(
    w: &Weights,
    gate: &str,
    up: &str,
    i: usize,
    hidden: usize,
    opts: &LoadOptions,
    device: &Device,
) -> Result<Linear> {
    if let (Some(g), Some(u)) = (w.stored_nf4(gate, [i, hidden])?, w.stored_nf4(up, [i, hidden])?) {
        if let Some(q) = Nf4Tensor::stack_rows(vec![g.clone(), u.clone()]) {
            return Ok(Linear::from_nf4(q, opts, device));
        }
        // Blocks that would straddle the two: their exact values, dense.
        let dense = LoadOptions { quantize: Quantize::None, ..*opts };
        return Ok(Linear::from_values([g.dequantize(), u.dequantize()].concat(), [2 * i, hidden], &dense, device));
    }
    let (gate, _) = w.read_f32(gate, &[i, hidden])?;
    let (up, _) = w.read_f32(up, &[i, hidden])?;
    Ok(stacked(gate, up, i, hidden, opts, device))
}

/// An expert's gate and up values (`[i, hidden]` each) as one layer. Quantizing, each is quantized on
/// its own and the two stacked, as bitsandbytes quantizes a checkpoint's per-expert linear layers
/// (with double quantization, each its own nested scales), unless their blocks would straddle.
fn stacked(gate: Vec<f32>, up: Vec<f32>, i: usize, hidden: usize, opts: &LoadOptions, device: &Device) -> Linear {
    if let Quantize::Nf4 { double_quant } = opts.quantize
        && (i * hidden) % lora_formats::nf4::BLOCK == 0
    {
        let q = |mut v: Vec<f32>| {
            crate::io::weights::round_to(&mut v, opts.dtype.dtype());
            Nf4Tensor::quantize(&v, &[i, hidden], double_quant)
        };
        let stacked = Nf4Tensor::stack_rows(vec![q(gate), q(up)]).expect("whole blocks");
        return Linear::from_nf4(stacked, opts, device);
    }
    Linear::from_values([gate, up].concat(), [2 * i, hidden], opts, device)
}

/// Each row's `k` largest of `per_row` values, largest first (ties to the lower index), as expert
/// indices, row after row.
fn top_k(values: &[f32], per_row: usize, k: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(values.len() / per_row.max(1) * k);
    let mut order: Vec<usize> = Vec::with_capacity(per_row);
    for row in values.chunks(per_row) {
        order.clear();
        order.extend(0..per_row);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        out.extend(order[..k].iter().map(|&e| e as i64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_is_largest_first_and_ties_go_to_the_lower_index() {
        let v = [0.1, 0.5, 0.2, 0.2, 0.9, 0.0];
        assert_eq!(top_k(&v, 3, 2), vec![1, 2, 1, 0]);
        assert_eq!(top_k(&v, 6, 3), vec![4, 1, 2]);
    }
}
