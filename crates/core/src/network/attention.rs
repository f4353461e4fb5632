//! Multi-head self-attention with grouped-query heads, rotary positions, optional q/k norms (Qwen3)
//! and biases (Qwen2, some Llamas), and Qwen3.5's gated form: the attention of every supported
//! architecture.
//!
//! Gated attention (`Qwen3_5Attention`): `q_proj` yields `2 · head_dim` rows per head, the head's
//! query then its output gate (interleaved per head, not two halves of the matrix), and the
//! attention output is multiplied by `sigmoid(gate)` before `o_proj`.
//!
//! Reference: transformers `LlamaAttention` / `Qwen3Attention` / `Qwen3_5Attention` (eager path).

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor};

use crate::error::Result;
use crate::generation::kv_cache::LayerCache;
use crate::io::load_options::LoadOptions;
use crate::io::weights::Weights;
use crate::kernels::fused_attention::{KeyMask, fused_attention};
use crate::kernels::fused_rope::rope_bthd;
use crate::kernels::tiled_attention::{SCORE_VALUES, tiled_attention};
use crate::network::config::ModelConfig;
use crate::network::linear::Linear;
use crate::network::norm::RmsNorm;
use crate::network::rope::apply_rope;

/// Which keys each query may see.
#[derive(Debug, Clone)]
pub enum AttentionMask {
    /// Every query sees every key (one new token against a cache).
    Full,
    /// Query i sees keys 0..=i (no padding, no cache).
    Causal,
    /// An explicit mask, `true` where attention is forbidden: `[batch, heads, q, k]`, the same for
    /// every head, and hiding every later key (model.rs builds it so).
    Explicit(Tensor<4, Bool>),
}

/// `self_attn` of a decoder layer.
#[derive(Module, Debug)]
pub struct Attention {
    /// `q_proj`: hidden -> heads · head_dim (heads · 2 · head_dim when gated: per head, its query
    /// rows then its gate rows).
    pub q_proj: Linear,
    /// `k_proj`: hidden -> kv_heads · head_dim.
    pub k_proj: Linear,
    /// `v_proj`: hidden -> kv_heads · head_dim.
    pub v_proj: Linear,
    /// `o_proj`: heads · head_dim -> hidden.
    pub o_proj: Linear,
    /// `q_norm` (Qwen3): RMSNorm over each query head.
    pub q_norm: Option<RmsNorm>,
    /// `k_norm` (Qwen3): RMSNorm over each key head.
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// The output is gated by `sigmoid` of the gate rows of `q_proj` (Qwen3.5).
    pub gated: bool,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj` and, for Qwen3, `{prefix}.{q,k}_norm`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        cfg: &ModelConfig,
        gated: bool,
        opts: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                let (eps, zc) = (cfg.rms_norm_eps, cfg.zero_centred_norms);
                Ok(Some(RmsNorm::load_as(w, &format!("{prefix}.{name}"), hd, eps, zc, device)?))
            } else {
                Ok(None)
            }
        };
        let q_out = if gated { 2 * q } else { q };
        Ok(Self {
            q_proj: Linear::load(w, &format!("{prefix}.q_proj"), (h, q_out), cfg.qkv_bias, opts, true, device)?,
            k_proj: Linear::load(w, &format!("{prefix}.k_proj"), (h, kv), cfg.qkv_bias, opts, true, device)?,
            v_proj: Linear::load(w, &format!("{prefix}.v_proj"), (h, kv), cfg.qkv_bias, opts, true, device)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), (q, h), cfg.o_bias, opts, true, device)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            gated,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    /// - cos, sin: `[batch, 1, seq, head_dim]`
    /// - cache (when given): keys/values of earlier positions, `[batch, kv_heads, past, head_dim]`,
    ///   extended in place with this call's keys and values
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, gate) = if self.gated {
            let qg = self.q_proj.forward(x.clone()).reshape([b, t, nh, 2 * hd]);
            let gate = qg.clone().slice([0..b, 0..t, 0..nh, hd..2 * hd]).reshape([b, t, nh * hd]);
            (qg.slice([0..b, 0..t, 0..nh, 0..hd]), Some(gate))
        } else {
            (self.q_proj.forward(x.clone()).reshape([b, t, nh, hd]), None)
        };
        let gate = gate.as_ref();
        let k = self.k_proj.forward(x.clone()).reshape([b, t, nkv, hd]);
        let v = self.v_proj.forward(x).reshape([b, t, nkv, hd]);
        let q = match &self.q_norm {
            Some(n) => n.forward(q),
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(k),
            None => k,
        };
        if cache.is_none() && crate::kernels::cpu_kernel::use_fused(&q) {
            // The CPU kernels work in this [b, t, heads, hd] layout: no transposed copies.
            let q = rope_bthd(q, cos, sin);
            let k = rope_bthd(k, cos, sin);
            let out = fused_attention(q, k, v, key_mask(mask, b)); // [b, t, nh, hd]
            return self.output(out.reshape([b, t, nh * hd]), gate);
        }
        let q = apply_rope(q.swap_dims(1, 2), cos, sin); // [b, nh, t, hd]
        let k = apply_rope(k.swap_dims(1, 2), cos, sin); // [b, nkv, t, hd]
        let v = v.swap_dims(1, 2); // [b, nkv, t, hd]
        let Some(cache) = cache else {
            if !crate::kernels::cpu_kernel::reference_kernels() {
                // Training and scoring off the CPU kernels (the GPUs): blocks of query rows, so that
                // backward never keeps [b, nh, t, t] scores. model.rs builds every explicit mask
                // causal, so its blocks too see only a prefix of the keys.
                let (mask, causal) = match mask {
                    AttentionMask::Full => (None, false),
                    AttentionMask::Causal => (None, true),
                    AttentionMask::Explicit(m) => (Some(m.clone()), true),
                };
                // Its products in the base's compute dtype (bf16 on a GPU for a bf16 base).
                let compute = self.q_proj.compute;
                let out = tiled_attention(q, k, v, mask, causal, SCORE_VALUES, compute); // [b, nh, t, hd]
                return self.output(out.swap_dims(1, 2).reshape([b, t, nh * hd]), gate);
            }
            return self.reference_attention(q, k, v, mask, b, t, gate);
        };
        let (k, v) = cache.append(k, v); // [b, nkv, past + t, hd]
        self.reference_attention(q, k, v, mask, b, t, gate)
    }

    /// `o_proj` of the heads' outputs, gated first when the attention is.
    ///
    /// # Shapes
    /// - heads, gate: `[b, t, heads · head_dim]`
    /// - output: `[b, t, hidden]`
    fn output(&self, heads: Tensor<3>, gate: Option<&Tensor<3>>) -> Tensor<3> {
        match gate {
            Some(g) => self.o_proj.forward(heads * burn::tensor::activation::sigmoid(g.clone())),
            None => self.o_proj.forward(heads),
        }
    }

    /// burn's attention with repeated key/value heads: the cached path, and the reference.
    ///
    /// # Shapes
    /// - q: `[b, heads, t, head_dim]`, k, v: `[b, kv_heads, keys, head_dim]`
    /// - output: `[b, t, hidden]`
    fn reference_attention(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &AttentionMask,
        b: usize,
        t: usize,
        gate: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let k = repeat_kv(k, nh / nkv); // [b, nh, tk, hd]
        let v = repeat_kv(v, nh / nkv);
        let (mask, is_causal) = match mask {
            AttentionMask::Full => (None, false),
            AttentionMask::Causal => (None, true),
            AttentionMask::Explicit(m) => (Some(m.clone()), false),
        };
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal };
        let out = attention(q, k, v, mask, None, options); // [b, nh, t, hd]
        self.output(out.swap_dims(1, 2).reshape([b, t, nh * hd]), gate)
    }
}

/// The mask for the fused kernel: an explicit mask is the same for every head, so head 0's is read.
fn key_mask(mask: &AttentionMask, b: usize) -> KeyMask {
    match mask {
        AttentionMask::Full => KeyMask::Full,
        AttentionMask::Causal => KeyMask::Causal { past: 0 },
        AttentionMask::Explicit(m) => {
            let [_, _, t, tk] = m.dims();
            let head0 = m.clone().slice([0..b, 0..1, 0..t, 0..tk]).into_data();
            KeyMask::Forbidden(std::sync::Arc::new(head0.iter::<bool>().collect()))
        }
    }
}

/// Repeats each key/value head `n_rep` times so that every query head has its own.
///
/// # Shapes
/// - x: `[batch, kv_heads, seq, head_dim]`
/// - output: `[batch, kv_heads · n_rep, seq, head_dim]`
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, nkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, nkv, n_rep, t, hd]).reshape([b, nkv * n_rep, t, hd])
}
