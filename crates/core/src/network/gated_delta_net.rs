//! Gated DeltaNet, the linear-attention token mixer of Qwen3.5's `linear_attn` layers, as
//! transformers' `Qwen3_5GatedDeltaNet` computes it:
//!
//! 1. padding positions are zeroed (so that left padding leaves the state and the convolution as an
//!    unpadded row has them);
//! 2. `in_proj_qkv` → a causal depthwise convolution over time (`conv1d`, no bias) → SiLU, split
//!    into q, k (`linear_num_key_heads` heads) and v (`linear_num_value_heads` heads);
//! 3. `β = sigmoid(in_proj_b x)`, `g = −exp(A_log) · softplus(in_proj_a x + dt_bias)`;
//! 4. each key head serves a group of consecutive value heads; q and k are L2-normalised, q scaled by
//!    `d_k^-0.5`; the gated delta rule ([`crate::kernels::delta_rule`]) gives one output per value head;
//! 5. the gated RMSNorm with `silu(in_proj_z x)`, then `out_proj`.
//!
//! The state and its arithmetic are f32 whatever the base dtype: half-precision delta rules give
//! NaN gradients (unsloth forces f32 for this architecture for that reason).
//!
//! A packed row's segments each start from a zero state and an empty convolution window, as
//! flash-linear-attention's `cu_seqlens` does: no segment sees the one before it.

use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{DType, Device, Tensor};

use crate::error::{CoreError, Result};
use crate::generation::kv_cache::LayerCache;
use crate::io::load_options::LoadOptions;
use crate::io::weights::Weights;
use crate::kernels::causal_conv;
use crate::kernels::cpu_kernel::use_fused;
use crate::kernels::delta_rule;
use crate::kernels::fused_gated_delta_net;
use crate::network::config::{GatedDeltaNetConfig, ModelConfig};
use crate::network::linear::Linear;
use crate::network::norm::GatedRmsNorm;

/// `linear_attn` of a decoder layer.
#[derive(Module, Debug)]
pub struct GatedDeltaNet {
    /// `in_proj_qkv`: hidden -> 2 · key_dim + value_dim (`[q | k | v]` channels).
    pub in_proj_qkv: Linear,
    /// `in_proj_z`: hidden -> value_dim, the output gate.
    pub in_proj_z: Linear,
    /// `in_proj_b`: hidden -> value heads, β before its sigmoid.
    pub in_proj_b: Linear,
    /// `in_proj_a`: hidden -> value heads, the decay's input.
    pub in_proj_a: Linear,
    /// `out_proj`: value_dim -> hidden.
    pub out_proj: Linear,
    /// `conv1d.weight` ([conv_dim, 1, kernel] on disk), squeezed: [conv_dim, kernel], f32.
    pub conv1d: Param<Tensor<2>>,
    /// `A_log`: [value heads], f32.
    pub a_log: Param<Tensor<1>>,
    /// `dt_bias`: [value heads], f32.
    pub dt_bias: Param<Tensor<1>>,
    /// `norm`: the gated RMSNorm over each value head.
    pub norm: GatedRmsNorm,
    /// The sizes.
    #[module(skip)]
    pub sizes: GatedDeltaNetConfig,
}

/// Per-token context a Gated DeltaNet layer needs besides its input.
#[derive(Debug, Clone, Default)]
pub struct SequenceLayout {
    /// `[batch, seq, 1]`: 1 at real tokens, 0 at padding; `None` when nothing is padded.
    pub padding: Option<Tensor<3>>,
    /// `[batch][seq]` segment numbers of packed rows; `None`: one sequence per row.
    pub segments: Option<std::sync::Arc<Vec<Vec<u32>>>>,
}

impl GatedDeltaNet {
    /// Loads `{prefix}.*`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ModelConfig, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let l = cfg.linear_attention.ok_or_else(|| {
            CoreError::Invalid(format!("{prefix}: a Gated DeltaNet layer needs the linear_* sizes in config.json"))
        })?;
        let h = cfg.hidden_size;
        let (conv, nv, vd) = (l.conv_dim(), l.num_value_heads, l.value_dim());
        let lin = |name: &str, d_in: usize, d_out: usize| {
            Linear::load(w, &format!("{prefix}.{name}"), (d_in, d_out), false, opts, true, device)
        };
        let conv1d = w
            .tensor(&format!("{prefix}.conv1d.weight"), [conv, 1, l.conv_kernel], device)?
            .reshape([conv, l.conv_kernel]);
        Ok(Self {
            in_proj_qkv: lin("in_proj_qkv", h, conv)?,
            in_proj_z: lin("in_proj_z", h, vd)?,
            in_proj_b: lin("in_proj_b", h, nv)?,
            in_proj_a: lin("in_proj_a", h, nv)?,
            out_proj: lin("out_proj", vd, h)?,
            conv1d: Param::from_tensor(conv1d.cast(DType::F32)),
            a_log: Param::from_tensor(w.tensor(&format!("{prefix}.A_log"), [nv], device)?.cast(DType::F32)),
            dt_bias: Param::from_tensor(w.tensor(&format!("{prefix}.dt_bias"), [nv], device)?.cast(DType::F32)),
            norm: GatedRmsNorm::load(w, &format!("{prefix}.norm"), l.value_head_dim, cfg.rms_norm_eps, device)?,
            sizes: l,
        })
    }

    /// Every linear layer in PEFT's (named_modules) order: in_proj_qkv, in_proj_z, in_proj_b,
    /// in_proj_a, out_proj.
    pub fn linears(&self) -> [&Linear; 5] {
        [&self.in_proj_qkv, &self.in_proj_z, &self.in_proj_b, &self.in_proj_a, &self.out_proj]
    }

    /// Mutable access to the linear layers, same order as [`Self::linears`].
    pub fn linears_mut(&mut self) -> [&mut Linear; 5] {
        [&mut self.in_proj_qkv, &mut self.in_proj_z, &mut self.in_proj_b, &mut self.in_proj_a, &mut self.out_proj]
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    /// - cache (when given): the convolution window and the state after earlier positions, updated
    ///   in place
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>, layout: &SequenceLayout, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let x = match &layout.padding {
            Some(p) => x * p.clone(),
            None => x,
        };
        let Some(segments) = &layout.segments else {
            return self.forward_rows(x, cache);
        };
        // Packed rows: each segment on its own, from a zero state.
        let [b, t, h] = x.dims();
        let rows = (0..b)
            .map(|r| {
                let row = x.clone().slice([r..r + 1, 0..t, 0..h]);
                let seg = &segments[r];
                let mut parts = Vec::new();
                let mut start = 0;
                for j in 1..=t {
                    if j == t || seg[j] != seg[j - 1] {
                        parts.push(self.forward_rows(row.clone().slice([0..1, start..j, 0..h]), None));
                        start = j;
                    }
                }
                Tensor::cat(parts, 1)
            })
            .collect();
        Tensor::cat(rows, 0)
    }

    /// The mixer over whole rows, each one sequence.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]`, padding already zeroed
    /// - output: `[batch, seq, hidden]`
    fn forward_rows(&self, x: Tensor<3>, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let l = self.sizes;
        let (nk, nv, dk, dv) = (l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim);
        let (kd, vd, conv_dim) = (l.key_dim(), l.value_dim(), l.conv_dim());
        let mixed = self.in_proj_qkv.forward(x.clone()).cast(DType::F32); // [b, t, conv]
        let z = self.in_proj_z.forward(x.clone()).reshape([b, t, nv, dv]);
        let beta = sigmoid(self.in_proj_b.forward(x.clone()).cast(DType::F32)); // [b, t, nv]
        let a = self.in_proj_a.forward(x).cast(DType::F32); // [b, t, nv]

        let a_log = self.a_log.val().reshape([1, 1, nv]);
        let dt_bias = self.dt_bias.val().reshape([1, 1, nv]);
        let g = a_log.exp().neg() * softplus(a + dt_bias, 1.0); // [b, t, nv], ≤ 0
        let weight = self.conv1d.val(); // [conv, kern]
        if cache.is_none() && use_fused(&mixed) {
            // A whole sequence from a zero state (training, evaluation): the convolution, the norms
            // and the delta rule as one op, which keeps neither the convolution's output nor q and k
            // for the backward.
            let o = fused_gated_delta_net::conv_delta_rule(mixed, weight, g, beta, nk, dk); // [b, t, nv, dv]
            let o = self.norm.forward(o, z);
            return self.out_proj.forward(o.reshape([b, t, vd]));
        }

        // Causal depthwise convolution and SiLU: output τ reads inputs τ − (kernel − 1) ..= τ, zeros
        // (or the cached window) before the first.
        let mut cache = cache;
        let window = cache.as_deref_mut().and_then(|c| c.conv.take());
        let (mixed, next) = causal_conv::plain(mixed, weight, window); // [b, t, conv]
        if let Some(c) = cache.as_deref_mut() {
            c.conv = Some(next);
        }

        let q = mixed.clone().slice([0..b, 0..t, 0..kd]).reshape([b, t, nk, dk]);
        let k = mixed.clone().slice([0..b, 0..t, kd..2 * kd]).reshape([b, t, nk, dk]);
        let v = mixed.slice([0..b, 0..t, 2 * kd..conv_dim]).reshape([b, t, nv, dv]);

        // Key head j serves value heads j·r .. j·r + r − 1.
        let group = |x: Tensor<4>| {
            let r = nv / nk;
            if r == 1 {
                return x;
            }
            x.unsqueeze_dim::<5>(3).expand([b, t, nk, r, dk]).reshape([b, t, nv, dk])
        };
        let q = l2_normalize(group(q)) * (dk as f64).powf(-0.5);
        let k = l2_normalize(group(k));
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2)); // [b, nv, t, d]
        let (g, beta) = (g.swap_dims(1, 2), beta.swap_dims(1, 2)); // [b, nv, t]

        let state = cache.as_deref_mut().and_then(|c| c.state.take());
        let (o, state) = match state {
            Some(s) if t == 1 => {
                // One token against the state (decoding), as transformers does.
                let sq = |x: Tensor<4>, d: usize| x.reshape([b, nv, d]);
                let (o, s) = delta_rule::recurrent_step(
                    sq(q, dk),
                    sq(k, dk),
                    sq(v, dv),
                    g.reshape([b, nv]),
                    beta.reshape([b, nv]),
                    s,
                );
                (o.reshape([b, nv, 1, dv]), s)
            }
            state => delta_rule::chunked(q, k, v, g, beta, state),
        };
        if let Some(c) = cache {
            c.state = Some(state);
        }
        let o = self.norm.forward(o.swap_dims(1, 2), z); // [b, t, nv, dv]
        self.out_proj.forward(o.reshape([b, t, vd]))
    }
}

/// `x / sqrt(Σx² + 1e-6)` over the last dimension (flash-linear-attention's L2 norm).
///
/// # Shapes
/// - x: `[..., d]`
/// - output: `[..., d]`
fn l2_normalize<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = (x.clone().square().sum_dim(D - 1) + 1e-6).sqrt();
    x / norm
}
