//! Scaled dot-product attention as one CPU kernel with a hand-written backward, flash-style per head:
//! the `[seq, seq]` scores and probabilities of a head exist only inside its task (never
//! `[batch, heads, seq, seq]` for the layer), grouped-query heads read their shared key/value head
//! in place (no `repeat_kv` copies), and every matrix is read by strides in the `[batch, seq, heads,
//! head_dim]` layout the projections give, so nothing is transposed.
//!
//! burn 0.22's autodiff always builds attention from primitive operations (`attention_fallback`),
//! keeping the scores, their softmax and the repeated keys and values of every head.
//!
//! Queries go in blocks of 64 rows, each multiplied only with the keys it may see (the causal
//! mask's upper triangle is skipped, not computed and masked).
//!
//! Math, per head, with scale σ = 1/√head_dim and masked scores at −∞:
//! S = σ·Q·Kᵀ, P = softmax(S) (rows), O = P·V, kept: O and the row log-sum-exps L.
//! Backward recomputes P = exp(σ·Q·Kᵀ − L), then with D = rowsum(∂O ∘ O):
//! ∂V = Pᵀ·∂O, ∂P = ∂O·Vᵀ, ∂S = P ∘ (∂P − D), ∂Q = σ·∂S·K, ∂K = σ·∂Sᵀ·Q
//! (FlashAttention-2, Dao 2023, Algorithm 2, at the granularity of a whole head).
//! ∂K and ∂V of a key/value head sum over the query heads of its group, always in the same order.
//!
//! The plain reference is burn's `attention` on `[batch, heads, seq, head_dim]` with repeated
//! keys and values; the tests compare values and gradients.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::kernels::cpu_kernel::{
    SendPtr, Unwritten, exp_f32, f32_tensor, f32_values, gemm_f32, max_f32, multiversion,
};

/// Which keys a query sees, for the fused kernel.
#[derive(Debug, Clone)]
pub enum KeyMask {
    /// Every key.
    Full,
    /// Keys up to the query's own position (`past` cached keys come first).
    Causal {
        /// Keys before the first query.
        past: usize,
    },
    /// `true` where attention is forbidden: `[batch, q, k]`, the same for every head.
    Forbidden(Arc<Vec<bool>>),
}

/// The fused attention, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: Backend {
    /// softmax(Q·Kᵀ/√head_dim, masked)·V with `heads / kv_heads` query heads per key/value head.
    ///
    /// # Shapes
    /// - q: `[batch, seq, heads, head_dim]`
    /// - k, v: `[batch, keys, kv_heads, head_dim]`
    /// - output: `[batch, seq, heads, head_dim]`
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: KeyMask,
    ) -> FloatTensor<Self>;
}

impl AttentionBackend for Flex {
    fn fused_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, mask: KeyMask) -> FlexTensor {
        forward(&q, &k, &v, &mask).0
    }
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    tk: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

impl Dims {
    fn of(q: &FlexTensor, k: &FlexTensor) -> Self {
        let (qs, ks) = (q.layout().shape(), k.layout().shape());
        Self { b: qs[0], t: qs[1], nh: qs[2], hd: qs[3], tk: ks[1], nkv: ks[2] }
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }
}

impl KeyMask {
    /// Sets the keys row i of batch row b may not see to `value`.
    #[inline(always)]
    fn hide(&self, row: &mut [f32], b: usize, i: usize, t: usize, value: f32) {
        let tk = row.len();
        match self {
            Self::Full => {}
            Self::Causal { past } => {
                let first_hidden = (past + i + 1).min(tk);
                row[first_hidden..].fill(value);
            }
            Self::Forbidden(m) => {
                let forbidden = &m[(b * t + i) * tk..(b * t + i + 1) * tk];
                for (v, &f) in row.iter_mut().zip(forbidden) {
                    if f {
                        *v = value;
                    }
                }
            }
        }
    }

    /// Keys that some query of rows `..i1` may see: a prefix of the keys.
    fn visible(&self, i1: usize, tk: usize) -> usize {
        match self {
            Self::Causal { past } => (past + i1).min(tk),
            Self::Full | Self::Forbidden(_) => tk,
        }
    }
}

/// Query rows per block: a block of rows is multiplied only with the keys one of them may see (with
/// a causal mask, rows `i0..i1` see keys `..past + i1`), which halves a long causal sequence's
/// attention work. 64 rows fill the AVX-512 microkernel's 64-row tile.
const QUERY_BLOCK: usize = 64;

multiversion! {
    /// Softmax in place of each row (`width` keys) of a block of queries starting at row `i0`, under
    /// the mask, with the log-sum-exps written to `lse` (one per row).
    fn softmax_rows(s: &mut [f32], lse: &mut [f32], mask: &KeyMask, b: usize, i0: usize, t: usize, width: usize) {
        for (r, row) in s.chunks_exact_mut(width).enumerate() {
            mask.hide(row, b, i0 + r, t, f32::NEG_INFINITY);
            let m = max_f32(row);
            // e^(−∞ − m) is 0 (exp_f32 underflows to 0).
            let l = crate::kernels::cpu_kernel::exp_in_place_sum_f32(row, m);
            let inv = 1.0 / l;
            for v in row.iter_mut() {
                *v *= inv;
            }
            lse[r] = m + l.ln();
        }
    }
}

multiversion! {
    /// P from the scores and saved log-sum-exps, in place, for a block of queries from row `i0`.
    fn probabilities(s: &mut [f32], lse: &[f32], mask: &KeyMask, b: usize, i0: usize, t: usize, width: usize) {
        for (r, row) in s.chunks_exact_mut(width).enumerate() {
            let l = lse[r];
            for v in row.iter_mut() {
                *v = exp_f32(*v - l);
            }
            mask.hide(row, b, i0 + r, t, 0.0);
        }
    }
}

multiversion! {
    /// dP ← P ∘ (dP − D) with D_i = Σ_d dO[i, d]·O[i, d] (dO, O rows strided by `row`).
    fn score_grad(dp: &mut [f32], p: &[f32], d_o: &[f32], o: &[f32], row: usize, hd: usize, width: usize) {
        for (i, (dp, p)) in dp.chunks_exact_mut(width).zip(p.chunks_exact(width)).enumerate() {
            let d = crate::kernels::cpu_kernel::dot_f32(&d_o[i * row..i * row + hd], &o[i * row..i * row + hd]);
            for j in 0..width {
                dp[j] = p[j] * (dp[j] - d);
            }
        }
    }
}

/// S = σ·Q·Kᵀ for a block of `rows` queries and the first `keys` keys, into `s` (`[rows, keys]`);
/// Q and K are read by their row strides, Kᵀ as K with its strides swapped. One task's product, on
/// its own thread: the tasks are the parallelism.
///
/// # Safety
/// `q` and `k` must cover `rows` and `keys` rows of `hd` values at those strides.
unsafe fn scores(
    s: &mut [f32],
    q: *const f32,
    k: *const f32,
    [rows, keys, hd]: [usize; 3],
    (qrow, krow): (usize, usize),
    scale: f32,
) {
    // SAFETY: forwarded from the caller; s holds rows · keys values.
    unsafe { gemm_f32([rows, keys, hd], (s.as_mut_ptr(), keys, 1), (q, qrow, 1), (k, 1, krow), false, scale, false) }
}

/// O and the log-sum-exps `[batch, heads, seq]`.
fn forward(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, mask: &KeyMask) -> (FlexTensor, Vec<f32>) {
    let dims = Dims::of(q, k);
    let Dims { b, t, tk, nh, nkv, hd } = dims;
    let (qs, ks, vs) = (f32_values(q), f32_values(k), f32_values(v));
    let rep = nh / nkv;
    let scale = dims.scale();
    let mut o = Unwritten::new(b * t * nh * hd);
    let mut lse = vec![0.0f32; b * nh * t];
    let (o_ptr, lse_ptr) = (SendPtr(o.ptr()), SendPtr(lse.as_mut_ptr()));
    // One task per (row, head); its products run on its own thread (the tasks are the parallelism).
    (0..b * nh).into_par_iter().for_each(|task| {
        let (bi, h) = (task / nh, task % nh);
        let g = h / rep;
        let mut s = vec![0.0f32; QUERY_BLOCK.min(t) * tk];
        let (qrow, krow) = (nh * hd, nkv * hd);
        let q0 = qs[bi * t * nh * hd + h * hd..].as_ptr();
        let k0 = ks[bi * tk * nkv * hd + g * hd..].as_ptr();
        let v0 = vs[bi * tk * nkv * hd + g * hd..].as_ptr();
        let (op, lp) = (o_ptr, lse_ptr);
        for i0 in (0..t).step_by(QUERY_BLOCK) {
            let i1 = (i0 + QUERY_BLOCK).min(t);
            let (rows, keys) = (i1 - i0, mask.visible(i1, tk));
            let s = &mut s[..rows * keys];
            // SAFETY: the strides stay inside q, k, v and s; task (bi, h) alone writes head h of row
            // bi of o and its log-sum-exps.
            unsafe {
                scores(s, q0.add(i0 * qrow), k0, [rows, keys, hd], (qrow, krow), scale);
                let lse = std::slice::from_raw_parts_mut(lp.0.add((bi * nh + h) * t + i0), rows);
                softmax_rows(s, lse, mask, bi, i0, t, keys);
                // O = P·V
                let ob = op.0.add(bi * t * nh * hd + h * hd).add(i0 * qrow);
                gemm_f32([rows, hd, keys], (ob, qrow, 1), (s.as_ptr(), keys, 1), (v0, krow, 1), false, 1.0, false);
            }
        }
    });
    // SAFETY: the tasks wrote every row of every head.
    (f32_tensor(unsafe { o.assume_written() }, &[b, t, nh, hd]), lse)
}

/// ∂Q, ∂K, ∂V from ∂O.
fn backward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    o: &FlexTensor,
    lse: &[f32],
    mask: &KeyMask,
    d_o: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dims = Dims::of(q, k);
    let Dims { b, t, tk, nh, nkv, hd } = dims;
    let (qs, ks, vs, os, dos) = (f32_values(q), f32_values(k), f32_values(v), f32_values(o), f32_values(d_o));
    let rep = nh / nkv;
    let scale = dims.scale();
    // ∂Q is written whole, block by block; ∂K and ∂V are sums over query blocks and heads, each of
    // which may see only a prefix of the keys.
    let mut dq = Unwritten::new(qs.len());
    let (mut dk, mut dv) = (vec![0.0f32; ks.len()], vec![0.0f32; vs.len()]);
    let ptrs = (SendPtr(dq.ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    // One task per key/value head: its query heads, in order, add to its ∂K and ∂V.
    (0..b * nkv).into_par_iter().for_each(|task| {
        let (bi, g) = (task / nkv, task % nkv);
        let (mut s, mut dp) = (vec![0.0f32; QUERY_BLOCK.min(t) * tk], vec![0.0f32; QUERY_BLOCK.min(t) * tk]);
        let (qrow, krow) = (nh * hd, nkv * hd);
        let kv_off = bi * tk * nkv * hd + g * hd;
        let (k0, v0) = (ks[kv_off..].as_ptr(), vs[kv_off..].as_ptr());
        let (dqp, dkp, dvp) = ptrs;
        for h in g * rep..(g + 1) * rep {
            let q_off = bi * t * nh * hd + h * hd;
            for i0 in (0..t).step_by(QUERY_BLOCK) {
                let i1 = (i0 + QUERY_BLOCK).min(t);
                let (rows, keys) = (i1 - i0, mask.visible(i1, tk));
                let (s, dp) = (&mut s[..rows * keys], &mut dp[..rows * keys]);
                let b_off = q_off + i0 * nh * hd;
                let (qb, dob) = (qs[b_off..].as_ptr(), dos[b_off..].as_ptr());
                let lse = &lse[(bi * nh + h) * t + i0..(bi * nh + h) * t + i1];
                // SAFETY: the strides stay inside the buffers; task (bi, g) alone writes the ∂Q of its
                // query heads and the ∂K, ∂V of head g of row bi.
                unsafe {
                    // The forward's scores again (only the log-sum-exps were kept).
                    scores(s, qb, k0, [rows, keys, hd], (qrow, krow), scale);
                    probabilities(s, lse, mask, bi, i0, t, keys);
                    // ∂V += Pᵀ·∂O
                    let dv0 = dvp.0.add(kv_off);
                    gemm_f32([keys, hd, rows], (dv0, krow, 1), (s.as_ptr(), 1, keys), (dob, qrow, 1), true, 1.0, false);
                    // ∂P = ∂O·Vᵀ, then ∂S = P ∘ (∂P − D)
                    gemm_f32(
                        [rows, keys, hd],
                        (dp.as_mut_ptr(), keys, 1),
                        (dob, qrow, 1),
                        (v0, 1, krow),
                        false,
                        1.0,
                        false,
                    );
                    score_grad(dp, s, &dos[b_off..], &os[b_off..], nh * hd, hd, keys);
                    // ∂Q = σ·∂S·K
                    let dq0 = dqp.0.add(b_off);
                    gemm_f32(
                        [rows, hd, keys],
                        (dq0, qrow, 1),
                        (dp.as_ptr(), keys, 1),
                        (k0, krow, 1),
                        false,
                        scale,
                        false,
                    );
                    // ∂K += σ·∂Sᵀ·Q
                    let dk0 = dkp.0.add(kv_off);
                    gemm_f32(
                        [keys, hd, rows],
                        (dk0, krow, 1),
                        (dp.as_ptr(), 1, keys),
                        (qb, qrow, 1),
                        true,
                        scale,
                        false,
                    );
                }
            }
        }
    });
    // SAFETY: every row of every query head's ∂Q was written.
    let dq = unsafe { dq.assume_written() };
    (f32_tensor(dq, &[b, t, nh, hd]), f32_tensor(dk, &[b, tk, nkv, hd]), f32_tensor(dv, &[b, tk, nkv, hd]))
}

#[derive(Debug)]
struct AttentionBackward;

/// What the backward needs: the inputs, the output, the log-sum-exps and the mask.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    o: FlexTensor,
    lse: Arc<Vec<f32>>,
    mask: KeyMask,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = grads.consume::<Flex>(&ops.node);
        let Saved { q, k, v, o, lse, mask } = ops.state;
        let (dq, dk, dv) = backward(&q, &k, &v, &o, &lse, &mask, &d_o);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> AttentionBackend for Autodiff<Flex, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: KeyMask,
    ) -> FloatTensor<Self> {
        match AttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let (o, lse) = forward(&q, &k, &v, &mask);
                let saved = Saved { q, k, v, o: o.clone(), lse: Arc::new(lse), mask };
                prep.finish(saved, o)
            }
            OpsKind::UnTracked(prep) => {
                let (o, _) = forward(&q.into_primitive(), &k.into_primitive(), &v.into_primitive(), &mask);
                prep.finish(o)
            }
        }
    }
}

/// Fused attention on `[batch, seq, heads, head_dim]` queries and `[batch, keys, kv_heads,
/// head_dim]` keys and values (the CPU kernel: call only where [`crate::kernels::cpu_kernel::use_fused`]).
///
/// # Shapes
/// - q: `[batch, seq, heads, head_dim]`
/// - k, v: `[batch, keys, kv_heads, head_dim]`
/// - output: `[batch, seq, heads, head_dim]`
pub fn fused_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: KeyMask) -> Tensor<4> {
    let o =
        <Dispatch as AttentionBackend>::fused_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), mask);
    Tensor::from_dispatch(o)
}
