//! The middle of a Gated DeltaNet layer over a whole sequence from a zero state, as one CPU op with a
//! hand-written backward: the causal convolution with SiLU ([`crate::kernels::causal_conv`]), the
//! split of its output into q, k and v, the L2 normalisation of q and k (q scaled by `d_k^-0.5`), and
//! the gated delta rule ([`crate::kernels::fused_delta_rule`]).
//!
//! It exists for memory. Run as separate ops, the convolution's output, q and k before and after
//! their norms and a copy of v are all kept for the backward: at seq 2048 that is about five
//! value-width tensors per layer. This op keeps only what it was given (the convolution's input,
//! which the convolution keeps anyway, its weight, g and β) and the delta rule's chunk states, and
//! the backward recomputes the convolution, the split and the norms (a few percent of the delta
//! rule's own work) before running the three backwards in turn:
//!
//! ```text
//! y = silu(conv(x)) = [q̃ | k̃ | v],  q = s·q̃/n(q̃),  k = k̃/n(k̃),  n(u) = √(Σu² + 1e-6),  s = d_k^-0.5
//! o = delta_rule(q, k, v, g, β)
//! backward: dq, dk, dv, dg, dβ from the rule (dq, dk summed over each key head's value heads);
//!   dq̃ = (s·dq − q̂·(q̂·s·dq)) / n(q̃) with q̂ = q̃/n(q̃) (likewise k̃);  dx, dw from dy = [dq̃ | dk̃ | dv]
//! ```
//!
//! The plain reference is the composition in [`crate::network::gated_delta_net`]:
//! [`crate::kernels::causal_conv::plain`], slices, its `l2_normalize` and
//! [`crate::kernels::delta_rule::chunked`]; the tests compare values and the gradients of every input.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;
use std::borrow::Cow;

use crate::kernels::causal_conv;
use crate::kernels::cpu_kernel::{SendPtr, dot_f32, f32_tensor, f32_values};
use crate::kernels::fused_delta_rule::{self, Dims, Inputs};

/// The added constant under the L2 norm's square root (flash-linear-attention's).
const EPS: f32 = 1e-6;

/// The fused Gated DeltaNet middle, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait GatedDeltaNetBackend: Backend {
    /// The convolution, the norms and the gated delta rule from a zero state.
    ///
    /// # Shapes
    /// - x: `[batch, seq, 2·key_heads·d_k + heads·d_v]`, the convolution's input (q, k, v channels)
    /// - conv_weight: `[channels, K]`
    /// - g, beta: `[batch, seq, heads]`
    /// - output: `[batch, seq, heads, d_v]`
    fn conv_delta_rule(
        x: FloatTensor<Self>,
        conv_weight: FloatTensor<Self>,
        g: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        key_heads: usize,
        key_head_dim: usize,
    ) -> FloatTensor<Self>;
}

/// The sizes of one call, from the input's and g's shapes.
fn dims(x: &FlexTensor, g: &FlexTensor, key_heads: usize, dk: usize) -> Dims {
    let (xs, gs) = (x.layout().shape(), g.layout().shape());
    let heads = gs[2];
    let dv = (xs[2] - 2 * key_heads * dk) / heads;
    Dims { batch: xs[0], seq: xs[1], heads, key_heads, dk, dv }
}

/// The convolution's output split: q and k normalised (q scaled), v, and the norms `n(q̃)`, `n(k̃)`.
struct Split {
    /// `[batch, seq, key_heads, d_k]`
    q: Vec<f32>,
    /// `[batch, seq, key_heads, d_k]`
    k: Vec<f32>,
    /// `[batch, seq, heads, d_v]`
    v: Vec<f32>,
    /// `[batch, seq, 2, key_heads]`: q's norms, then k's.
    norms: Vec<f32>,
}

/// The convolution with SiLU of x, split row by row into normalised q and k and v (its output is
/// never held whole).
fn conv_split(d: Dims, x: &FlexTensor, w: &FlexTensor) -> Split {
    let (kd, vd) = (d.key_heads * d.dk, d.heads * d.dv);
    let scale = (d.dk as f64).powf(-0.5) as f32;
    let rows = d.batch * d.seq;
    let (mut q, mut k, mut v) = (vec![0.0f32; rows * kd], vec![0.0f32; rows * kd], vec![0.0f32; rows * vd]);
    let mut norms = vec![0.0f32; rows * 2 * d.key_heads];
    let ptrs = [SendPtr(q.as_mut_ptr()), SendPtr(k.as_mut_ptr()), SendPtr(v.as_mut_ptr()), SendPtr(norms.as_mut_ptr())];
    causal_conv::for_each_row(x, w, |row, y| {
        let ptrs = ptrs;
        // SAFETY: each row of q, k, v and norms is written by the one call for that row.
        let (q, k, v, norms) = unsafe {
            (
                std::slice::from_raw_parts_mut(ptrs[0].0.add(row * kd), kd),
                std::slice::from_raw_parts_mut(ptrs[1].0.add(row * kd), kd),
                std::slice::from_raw_parts_mut(ptrs[2].0.add(row * vd), vd),
                std::slice::from_raw_parts_mut(ptrs[3].0.add(row * 2 * d.key_heads), 2 * d.key_heads),
            )
        };
        let (qn, kn) = norms.split_at_mut(d.key_heads);
        for (out, src, norms, s) in [(q, &y[..kd], qn, Some(scale)), (k, &y[kd..2 * kd], kn, None)] {
            for ((out, src), n) in out.chunks_exact_mut(d.dk).zip(src.chunks_exact(d.dk)).zip(norms) {
                *n = (dot_f32(src, src) + EPS).sqrt();
                for (o, &u) in out.iter_mut().zip(src) {
                    // As the reference rounds: u / n, then the scale.
                    *o = match s {
                        Some(s) => u / *n * s,
                        None => u / *n,
                    };
                }
            }
        }
        v.copy_from_slice(&y[2 * kd..]);
    });
    Split { q, k, v, norms }
}

/// dy = `[dq̃ | dk̃ | dv]` (`[batch, seq, channels]`) from the rule's gradients, q and k as the rule
/// saw them and their norms. With q = s·q̃/n: dq̃ = (s·dq − q·⟨q, dq⟩/s) / n; likewise k with s = 1.
fn split_backward(d: Dims, q: &[f32], k: &[f32], norms: &[f32], gr: &fused_delta_rule::Grads) -> Vec<f32> {
    let (kd, vd) = (d.key_heads * d.dk, d.heads * d.dv);
    let width = 2 * kd + vd;
    let scale = (d.dk as f64).powf(-0.5) as f32;
    let mut dy = vec![0.0f32; d.batch * d.seq * width];
    dy.par_chunks_mut(width).enumerate().for_each(|(row, dy)| {
        let (dyq, rest) = dy.split_at_mut(kd);
        let (dyk, dyv) = rest.split_at_mut(kd);
        let norms = &norms[row * 2 * d.key_heads..][..2 * d.key_heads];
        let (qn, kn) = norms.split_at(d.key_heads);
        let at = row * kd..(row + 1) * kd;
        for (out, u, grad, norms, s) in
            [(dyq, &q[at.clone()], &gr.q[at.clone()], qn, scale), (dyk, &k[at.clone()], &gr.k[at], kn, 1.0)]
        {
            for (((out, u), grad), &n) in
                out.chunks_exact_mut(d.dk).zip(u.chunks_exact(d.dk)).zip(grad.chunks_exact(d.dk)).zip(norms)
            {
                let proj = dot_f32(u, grad) / s;
                for ((o, &u), &g) in out.iter_mut().zip(u).zip(grad) {
                    *o = (s * g - u * proj) / n;
                }
            }
        }
        dyv.copy_from_slice(&gr.v[row * vd..][..vd]);
    });
    dy
}

/// The output `[batch, seq, heads, d_v]` and (with `keep`) the rule's chunk states.
///
/// The two results are allocated before q, k and v, so that those, freed on return, leave one free
/// block at the heap's top rather than holes under what stays (glibc serves blocks under 32 MiB
/// from its heap, and holes too small for the next layer's buffers grow the peak RSS).
fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    g: &FlexTensor,
    beta: &FlexTensor,
    d: Dims,
    keep: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let mut o = vec![0.0f32; d.out_len()];
    let mut kept = keep.then(|| vec![0.0f32; d.kept_len()]);
    let Split { q, k, v, .. } = conv_split(d, x, w);
    let inputs =
        Inputs { q: Cow::Owned(q), k: Cow::Owned(k), v: Cow::Owned(v), g: f32_values(g), beta: f32_values(beta) };
    fused_delta_rule::forward(d, &inputs, &mut o, kept.as_deref_mut());
    drop(inputs);
    let kept = kept.map(|kept| f32_tensor(kept, &d.kept_shape()));
    (f32_tensor(o, &[d.batch, d.seq, d.heads, d.dv]), kept)
}

/// What the backward needs: the inputs and the rule's kept chunk states.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
    g: FlexTensor,
    beta: FlexTensor,
    kept: FlexTensor,
    dims: Dims,
}

/// The gradients of x, of the weight (when asked), of g and of β.
///
/// This runs while every earlier layer's activations are still held. dx, which outlives the call,
/// is allocated first; each scratch buffer is dropped as soon as the next step no longer needs it
/// (v once the rule's backward has run, q, k and the rule's gradients once in dy, which the
/// convolution's backward then overwrites in place).
fn backward(
    saved: &Saved,
    dout: &FlexTensor,
    weight_grad: bool,
) -> (FlexTensor, Option<FlexTensor>, FlexTensor, FlexTensor) {
    let d = saved.dims;
    let dx = vec![0.0f32; f32_values(&saved.x).len()];
    let Split { q, k, v, norms } = conv_split(d, &saved.x, &saved.w);
    let gr = {
        let inputs = Inputs {
            q: Cow::Borrowed(&q),
            k: Cow::Borrowed(&k),
            v: Cow::Owned(v),
            g: f32_values(&saved.g),
            beta: f32_values(&saved.beta),
        };
        fused_delta_rule::backward(d, &inputs, &f32_values(&saved.kept), &f32_values(dout))
    };
    let mut dy = split_backward(d, &q, &k, &norms, &gr);
    drop((q, k, norms));
    let fused_delta_rule::Grads { g: dg, beta: dbeta, .. } = gr; // dq, dk and dv are dropped here
    let scalars = [d.batch, d.seq, d.heads];
    let (dg, dbeta) = (f32_tensor(dg, &scalars), f32_tensor(dbeta, &scalars));
    let (dx, dw) = causal_conv::backward(&saved.x, &saved.w, &mut dy, dx, weight_grad);
    (dx, dw, dg, dbeta)
}

impl GatedDeltaNetBackend for Flex {
    fn conv_delta_rule(
        x: FlexTensor,
        w: FlexTensor,
        g: FlexTensor,
        beta: FlexTensor,
        key_heads: usize,
        dk: usize,
    ) -> FlexTensor {
        let d = dims(&x, &g, key_heads, dk);
        forward(&x, &w, &g, &beta, d, false).0
    }
}

#[derive(Debug)]
struct ConvDeltaRuleBackward;

impl Backward<Flex, 4> for ConvDeltaRuleBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dout = grads.consume::<Flex>(&ops.node);
        let [x_node, w_node, g_node, beta_node] = ops.parents;
        let (dx, dw, dg, dbeta) = backward(&ops.state, &dout, w_node.is_some());
        for (node, grad) in [(x_node, Some(dx)), (w_node, dw), (g_node, Some(dg)), (beta_node, Some(dbeta))] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> GatedDeltaNetBackend for Autodiff<Flex, C> {
    fn conv_delta_rule(
        x: FloatTensor<Self>,
        conv_weight: FloatTensor<Self>,
        g: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        key_heads: usize,
        key_head_dim: usize,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), conv_weight.node(), g.node(), beta.node()];
        match ConvDeltaRuleBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w, g, beta) =
                    (x.into_primitive(), conv_weight.into_primitive(), g.into_primitive(), beta.into_primitive());
                let dims = dims(&x, &g, key_heads, key_head_dim);
                let (o, kept) = forward(&x, &w, &g, &beta, dims, true);
                let kept = kept.expect("kept chunk states were asked for");
                prep.finish(Saved { x, w, g, beta, kept, dims }, o)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as GatedDeltaNetBackend>::conv_delta_rule(
                x.into_primitive(),
                conv_weight.into_primitive(),
                g.into_primitive(),
                beta.into_primitive(),
                key_heads,
                key_head_dim,
            )),
        }
    }
}

/// The convolution with SiLU, the split into q, k and v, their norms and the gated delta rule from a
/// zero state, on burn-flex in f32 (the caller checks [`crate::kernels::cpu_kernel::use_fused`]).
///
/// # Shapes
/// - x: `[batch, seq, 2·key_heads·key_head_dim + heads·d_v]` (the q, k and v channels, in that order)
/// - conv_weight: `[channels, K]`
/// - g, beta: `[batch, seq, heads]`
/// - output: `[batch, seq, heads, d_v]`
pub fn conv_delta_rule(
    x: Tensor<3>,
    conv_weight: Tensor<2>,
    g: Tensor<3>,
    beta: Tensor<3>,
    key_heads: usize,
    key_head_dim: usize,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as GatedDeltaNetBackend>::conv_delta_rule(
        x.into_dispatch(),
        conv_weight.into_dispatch(),
        g.into_dispatch(),
        beta.into_dispatch(),
        key_heads,
        key_head_dim,
    ))
}
