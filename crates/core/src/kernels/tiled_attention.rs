//! Scaled dot-product attention in blocks of query rows, with a hand-written backward that
//! recomputes each block's probabilities from the saved log-sum-exps: on every backend (the GPUs'
//! path), the scores and probabilities exist only for one block of rows at a time, never as
//! `[batch, heads, seq, seq]` for the layer.
//!
//! Why: burn 0.22's autodiff builds attention from primitive operations (`attention_fallback`) and
//! keeps its `[batch, heads, seq, seq]` scores and softmax for backward; at seq 2048 and 32 heads
//! that is 512 MiB per tensor per layer, more than the layer's weights. Here a block's score
//! tensor holds at most `max_scores` values (see [`SCORE_VALUES`]), and what backward keeps is
//! the inputs, the output and one log-sum-exp per row.
//!
//! Grouped-query heads read their shared key/value head in place, without `repeat_kv` copies:
//! the `heads / kv_heads` query heads of a group are stacked as rows of one matrix against that
//! group's keys, so ∂K and ∂V come out summed over the group by the matmuls themselves.
//!
//! Causal blocks multiply only with the keys some row of the block may see (a growing prefix),
//! so about half of the causal work is skipped, not computed and masked.
//!
//! Math, per head, with scale σ = 1/√head_dim and masked scores at −∞ (FlashAttention-2, Dao 2023,
//! at the granularity of a block of rows against all the keys it sees):
//! S = σ·Q·Kᵀ, P = softmax(S) (rows), O = P·V, kept: O and L = rowwise log-sum-exp of S.
//! Backward: P = exp(σ·Q·Kᵀ − L), D = rowsum(∂O ∘ O), ∂V = Pᵀ·∂O, ∂P = ∂O·Vᵀ,
//! ∂S = P ∘ (∂P − D), ∂Q = σ·∂S·K, ∂K = σ·∂Sᵀ·Q.
//!
//! The plain reference is burn's `attention` with repeated keys and values; the tests compare
//! values and gradients on the CPU and, under `LORA_TEST_GPU`, on the GPU. The CPU's own kernel
//! (`fused_attention.rs`) does the same per head with direct GEMM calls; this one is built from
//! burn's primitive operations so that it runs wherever they do.

// burn-ndarray (the `ndarray` feature, kept for benchmarks) is deprecated in burn 0.22; the extension
// still routes to it so that that feature keeps working.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{
    Autodiff, Backend, Dispatch, Flex, Slice, TensorMetadata, backend_extension, get_or_init_device_settings,
};
use burn::tensor::{Bool, FloatDType, Shape, Tensor};

/// The most score values one block holds by default (16 Mi: 64 MiB in f32). At seq 2048 and 32
/// heads that is blocks of 256 query rows; a short sequence is one block.
pub const SCORE_VALUES: usize = 16 << 20;

/// Attention in blocks of query rows, on the backends lora runs on.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Cube: cfg(any(feature = "cuda", feature = "wgpu")), Autodiff)]
pub trait TiledAttentionBackend: Backend {
    /// softmax(σ·Q·Kᵀ, masked)·V with `heads / kv_heads` query heads per key/value head. `causal`
    /// hides the keys after each query's position (the last query sees every key: cached keys come
    /// first). The four products of forward and backward run in `compute` (bf16 on a GPU for a bf16
    /// base) with their operands rounded to it; the softmax and everything else stay in q's dtype.
    ///
    /// # Shapes
    /// - q: `[batch, heads, seq, head_dim]`
    /// - k, v: `[batch, kv_heads, keys, head_dim]`
    /// - output: `[batch, heads, seq, head_dim]`
    fn tiled_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        max_scores: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        let plan = Plan::of::<Self>(&q, &k, causal, max_scores, compute);
        forward::<Self>(&plan, &q, &k, &v, None).0
    }

    /// [`Self::tiled_attention`] hiding the keys `mask` says (`true` = hidden) as well.
    ///
    /// # Shapes
    /// - mask: `[batch, 1 or heads, seq, keys]`, read for head 0 only
    fn tiled_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
        max_scores: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        let plan = Plan::of::<Self>(&q, &k, causal, max_scores, compute);
        forward::<Self>(&plan, &q, &k, &v, Some(&mask)).0
    }
}

impl TiledAttentionBackend for Flex {}

#[cfg(feature = "ndarray")]
impl TiledAttentionBackend for burn::backend::NdArray {}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl TiledAttentionBackend for burn::backend::Cube {}

/// Sizes of one call and its blocks of query rows.
#[derive(Debug, Clone, Copy)]
struct Plan {
    b: usize,
    t: usize,
    tk: usize,
    nkv: usize,
    rep: usize,
    hd: usize,
    causal: bool,
    /// Query rows per block.
    rows: usize,
    /// The tensors' dtype (the softmax's and the results').
    dtype: FloatDType,
    /// The dtype the products run in.
    compute: FloatDType,
}

impl Plan {
    fn of<B: Backend>(
        q: &FloatTensor<B>,
        k: &FloatTensor<B>,
        causal: bool,
        max_scores: usize,
        compute: Option<FloatDType>,
    ) -> Self {
        let (qs, ks) = (q.shape(), k.shape());
        let (b, nh, t, hd, nkv, tk) = (qs[0], qs[1], qs[2], qs[3], ks[1], ks[2]);
        let rows = (max_scores / (b * nh * tk).max(1)).clamp(1, t.max(1));
        let dtype: FloatDType = q.dtype().into();
        Self { b, t, tk, nkv, rep: nh / nkv, hd, causal, rows, dtype, compute: compute.unwrap_or(dtype) }
    }

    /// `x` in the products' dtype.
    fn to_compute<B: Backend>(&self, x: FloatTensor<B>) -> FloatTensor<B> {
        if self.compute == self.dtype { x } else { B::float_cast(x, self.compute) }
    }

    /// a · b in the products' dtype, returned in the tensors' dtype.
    fn product<B: Backend>(&self, a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
        if self.compute == self.dtype {
            return B::float_matmul(a, b);
        }
        let ab = B::float_matmul(self.to_compute::<B>(a), self.to_compute::<B>(b));
        B::float_cast(ab, self.dtype)
    }

    /// Blocks of query rows `i0..i1`, each with the number of keys its rows may see (a prefix).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let past = self.tk - self.t;
        (0..self.t).step_by(self.rows).map(move |i0| {
            let i1 = (i0 + self.rows).min(self.t);
            let visible = if self.causal { past + i1 } else { self.tk };
            (i0, i1, visible)
        })
    }

    fn scale(&self) -> f64 {
        1.0 / (self.hd as f64).sqrt()
    }
}

/// A head-major tensor `[b, heads, t, d]` viewed by groups: `[b, kv_heads, rep, t, d]`.
fn grouped<B: Backend>(x: &FloatTensor<B>, p: &Plan) -> FloatTensor<B> {
    let s = x.shape();
    B::float_reshape(x.clone(), Shape::new([p.b, p.nkv, p.rep, s[2], s[3]]))
}

/// Rows `i0..i1` of every query head of a group, stacked: `[b, kv_heads, rep · rows, d]`.
fn block_rows<B: Backend>(x5: &FloatTensor<B>, p: &Plan, i0: usize, i1: usize) -> FloatTensor<B> {
    let d = x5.shape()[4];
    let all = |n: usize| Slice::from(0..n);
    let part = B::float_slice(x5.clone(), &[all(p.b), all(p.nkv), all(p.rep), Slice::from(i0..i1), all(d)]);
    B::float_reshape(part, Shape::new([p.b, p.nkv, p.rep * (i1 - i0), d]))
}

/// The slices of the first `n` keys of a `[b, kv_heads, keys, head_dim]` tensor.
fn first_keys(p: &Plan, n: usize) -> [Slice; 4] {
    [Slice::from(0..p.b), Slice::from(0..p.nkv), Slice::from(0..n), Slice::from(0..p.hd)]
}

/// The first `n` keys (or values): `[b, kv_heads, n, head_dim]`.
fn key_prefix<B: Backend>(k: &FloatTensor<B>, p: &Plan, n: usize) -> FloatTensor<B> {
    if n == p.tk {
        return k.clone();
    }
    B::float_slice(k.clone(), &first_keys(p, n))
}

/// Which of the block's scores are hidden, `[b, kv_heads, rep · rows, visible]`, or none.
fn block_mask<B: Backend>(
    mask: Option<&BoolTensor<B>>,
    p: &Plan,
    (i0, i1, visible): (usize, usize, usize),
    device: &B::Device,
) -> Option<BoolTensor<B>> {
    let r = i1 - i0;
    let settings = get_or_init_device_settings::<B>(device);
    let explicit = mask.map(|m| {
        // Head 0's rows of this block: [b, 1, r, visible].
        B::bool_slice(
            m.clone(),
            &[Slice::from(0..p.b), Slice::from(0..1), Slice::from(i0..i1), Slice::from(0..visible)],
        )
    });
    // Key j is after query i0 + i (position past + i0 + i) when j > past + i0 + i.
    let past = p.tk - p.t;
    let causal = (p.causal && past + i0 + 1 < visible).then(|| {
        let rows = B::int_reshape(B::int_arange(0..r as i64, device, settings.int_dtype), Shape::new([r, 1]));
        let cols =
            B::int_reshape(B::int_arange(0..visible as i64, device, settings.int_dtype), Shape::new([1, visible]));
        let rows = B::int_add_scalar(rows, ((past + i0) as i64).into());
        let cols = B::int_expand(cols, Shape::new([r, visible]));
        let rows = B::int_expand(rows, Shape::new([r, visible]));
        let hidden = B::int_lower(rows, cols, settings.bool_dtype); // [r, visible]
        let hidden = B::bool_reshape(hidden, Shape::new([1, 1, r, visible]));
        B::bool_expand(hidden, Shape::new([p.b, 1, r, visible]))
    });
    let hidden = match (explicit, causal) {
        (Some(a), Some(c)) => B::bool_or(a, c),
        (a, c) => a.or(c)?,
    };
    // The same rows for every query head of the group, stacked as in `block_rows`.
    let hidden = B::bool_reshape(hidden, Shape::new([p.b, 1, 1, r, visible]));
    let hidden = B::bool_expand(hidden, Shape::new([p.b, p.nkv, p.rep, r, visible]));
    Some(B::bool_reshape(hidden, Shape::new([p.b, p.nkv, p.rep * r, visible])))
}

/// σ·Q·Kᵀ of one block, hidden scores at −∞: `[b, kv_heads, rep · rows, visible]`.
fn block_scores<B: Backend>(
    p: &Plan,
    qb: &FloatTensor<B>,
    kb: &FloatTensor<B>,
    hidden: Option<BoolTensor<B>>,
) -> FloatTensor<B> {
    let s = B::float_mul_scalar(p.product::<B>(qb.clone(), B::float_transpose(kb.clone())), p.scale().into());
    match hidden {
        Some(m) => B::float_mask_fill(s, m, f32::NEG_INFINITY.into()),
        None => s,
    }
}

/// The output `[b, heads, t, head_dim]` and the rows' log-sum-exps `[b, kv_heads, rep, t, 1]`.
fn forward<B: Backend>(
    p: &Plan,
    q: &FloatTensor<B>,
    k: &FloatTensor<B>,
    v: &FloatTensor<B>,
    mask: Option<&BoolTensor<B>>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let device = q.device();
    let finfo = q.dtype().finfo().expect("a float tensor");
    let q5 = grouped::<B>(q, p);
    // Keys and values go into products only: rounded once, not per block.
    let (k, v) = (&p.to_compute::<B>(k.clone()), &p.to_compute::<B>(v.clone()));
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for block in p.blocks() {
        let (i0, i1, visible) = block;
        let r = i1 - i0;
        let qb = block_rows::<B>(&q5, p, i0, i1); // [b, nkv, rep·r, hd]
        let (kb, vb) = (key_prefix::<B>(k, p, visible), key_prefix::<B>(v, p, visible)); // [b, nkv, vis, hd]
        let s = block_scores::<B>(p, &qb, &kb, block_mask::<B>(mask, p, block, &device)); // [b, nkv, rep·r, vis]
        // The NaN-safe softmax of burn's reference: a row with every key hidden gives zeros.
        let max = B::float_clamp_min(B::float_max_dim(s.clone(), 3), finfo.min.into()); // [.., 1]
        let e = B::float_exp(B::float_sub(s, max.clone()));
        let sum = B::float_clamp_min(B::float_sum_dim(e.clone(), 3), finfo.min_positive.into()); // [.., 1]
        let o = B::float_div(p.product::<B>(e, vb), sum.clone()); // [b, nkv, rep·r, hd]
        let lse = B::float_add(max, B::float_log(sum)); // [b, nkv, rep·r, 1]
        outs.push(B::float_reshape(o, Shape::new([p.b, p.nkv, p.rep, r, p.hd])));
        lses.push(B::float_reshape(lse, Shape::new([p.b, p.nkv, p.rep, r, 1])));
    }
    let cat = |parts: Vec<FloatTensor<B>>| {
        if parts.len() == 1 { parts.into_iter().next().expect("one block") } else { B::float_cat(parts, 3) }
    };
    let o = B::float_reshape(cat(outs), Shape::new([p.b, p.nkv * p.rep, p.t, p.hd]));
    (o, cat(lses))
}

/// ∂Q `[b, heads, t, head_dim]` and ∂K, ∂V `[b, kv_heads, keys, head_dim]`.
#[allow(clippy::too_many_arguments)]
fn backward<B: Backend>(
    p: &Plan,
    q: &FloatTensor<B>,
    k: &FloatTensor<B>,
    v: &FloatTensor<B>,
    mask: Option<&BoolTensor<B>>,
    o: &FloatTensor<B>,
    lse: &FloatTensor<B>,
    d_o: &FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let device = q.device();
    let dtype: FloatDType = q.dtype().into();
    let (q5, do5) = (grouped::<B>(q, p), grouped::<B>(d_o, p));
    let (k, v) = (&p.to_compute::<B>(k.clone()), &p.to_compute::<B>(v.clone()));
    let dsum = B::float_sum_dim(B::float_mul(do5.clone(), grouped::<B>(o, p)), 4); // D: [b, nkv, rep, t, 1]
    let kv_shape = Shape::new([p.b, p.nkv, p.tk, p.hd]);
    let (mut dk, mut dv) = (B::float_zeros(kv_shape.clone(), &device, dtype), B::float_zeros(kv_shape, &device, dtype));
    let mut dqs = Vec::new();
    for block in p.blocks() {
        let (i0, i1, visible) = block;
        let r = i1 - i0;
        let (qb, dob) = (block_rows::<B>(&q5, p, i0, i1), block_rows::<B>(&do5, p, i0, i1)); // [b, nkv, rep·r, hd]
        let (lb, db) = (block_rows::<B>(lse, p, i0, i1), block_rows::<B>(&dsum, p, i0, i1)); // [b, nkv, rep·r, 1]
        let (kb, vb) = (key_prefix::<B>(k, p, visible), key_prefix::<B>(v, p, visible)); // [b, nkv, vis, hd]
        let s = block_scores::<B>(p, &qb, &kb, block_mask::<B>(mask, p, block, &device));
        let prob = B::float_exp(B::float_sub(s, lb)); // P: [b, nkv, rep·r, vis], 0 where hidden
        let dv_part = p.product::<B>(B::float_transpose(prob.clone()), dob.clone()); // [b, nkv, vis, hd]
        let dp = p.product::<B>(dob, B::float_transpose(vb)); // [b, nkv, rep·r, vis]
        let ds = B::float_mul_scalar(B::float_mul(prob, B::float_sub(dp, db)), p.scale().into()); // σ·∂S
        let dq = p.product::<B>(ds.clone(), kb); // [b, nkv, rep·r, hd]
        let dk_part = p.product::<B>(B::float_transpose(ds), qb); // [b, nkv, vis, hd]
        dqs.push(B::float_reshape(dq, Shape::new([p.b, p.nkv, p.rep, r, p.hd])));
        dk = add_prefix::<B>(dk, dk_part, p, visible);
        dv = add_prefix::<B>(dv, dv_part, p, visible);
    }
    let dq = if dqs.len() == 1 { dqs.pop().expect("one block") } else { B::float_cat(dqs, 3) };
    (B::float_reshape(dq, Shape::new([p.b, p.nkv * p.rep, p.t, p.hd])), dk, dv)
}

/// acc[.., ..n, ..] += part, with `part` `[b, kv_heads, n, head_dim]`.
fn add_prefix<B: Backend>(acc: FloatTensor<B>, part: FloatTensor<B>, p: &Plan, n: usize) -> FloatTensor<B> {
    if n == p.tk {
        return B::float_add(acc, part);
    }
    let prefix = first_keys(p, n);
    let sum = B::float_add(B::float_slice(acc.clone(), &prefix), part);
    B::float_slice_assign(acc, &prefix, sum)
}

#[derive(Debug)]
struct TiledAttentionBackward;

/// What the backward needs: the inputs, the mask, the output and the log-sum-exps.
#[derive(Debug, Clone)]
struct Saved<B: Backend> {
    plan: Plan,
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    o: FloatTensor<B>,
    lse: FloatTensor<B>,
}

impl<B: Backend> Backward<B, 3> for TiledAttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = grads.consume::<B>(&ops.node);
        let Saved { plan, q, k, v, mask, o, lse } = ops.state;
        let (dq, dk, dv) = backward::<B>(&plan, &q, &k, &v, mask.as_ref(), &o, &lse, &d_o);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> TiledAttentionBackend for Autodiff<B, C> {
    fn tiled_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        max_scores: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        autodiff_forward::<B, C>(q, k, v, None, causal, max_scores, compute)
    }

    fn tiled_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
        max_scores: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        // A bool tensor has no autodiff wrapper: it is the inner backend's.
        autodiff_forward::<B, C>(q, k, v, Some(mask), causal, max_scores, compute)
    }
}

fn autodiff_forward<B: Backend, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
    max_scores: usize,
    compute: Option<FloatDType>,
) -> FloatTensor<Autodiff<B, C>> {
    match TiledAttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
            let plan = Plan::of::<B>(&q, &k, causal, max_scores, compute);
            let (o, lse) = forward::<B>(&plan, &q, &k, &v, mask.as_ref());
            prep.finish(Saved { plan, q, k, v, mask, o: o.clone(), lse }, o)
        }
        OpsKind::UnTracked(prep) => {
            let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
            let plan = Plan::of::<B>(&q, &k, causal, max_scores, compute);
            prep.finish(forward::<B>(&plan, &q, &k, &v, mask.as_ref()).0)
        }
    }
}

/// Attention in blocks of at most `max_scores` score values ([`SCORE_VALUES`] in the model), its
/// products in `compute` (q's dtype when `None`).
///
/// # Shapes
/// - q: `[batch, heads, seq, head_dim]`
/// - k, v: `[batch, kv_heads, keys, head_dim]`
/// - mask: `[batch, 1 or heads, seq, keys]`, `true` where hidden, the same for every head
/// - output: `[batch, heads, seq, head_dim]`
pub fn tiled_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
    max_scores: usize,
    compute: Option<FloatDType>,
) -> Tensor<4> {
    let (q, k, v) = (q.into_dispatch(), k.into_dispatch(), v.into_dispatch());
    let o = match mask {
        Some(m) => <Dispatch as TiledAttentionBackend>::tiled_attention_masked(
            q,
            k,
            v,
            m.into_dispatch(),
            causal,
            max_scores,
            compute,
        ),
        None => <Dispatch as TiledAttentionBackend>::tiled_attention(q, k, v, causal, max_scores, compute),
    };
    Tensor::from_dispatch(o)
}
