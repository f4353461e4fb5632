//! The gated delta rule ([`crate::kernels::delta_rule`]) over a whole sequence from a zero state, as one CPU
//! kernel with a hand-written backward: what training and whole-sequence evaluation of a Gated
//! DeltaNet layer run on burn-flex.
//!
//! Composed of burn operations, the chunked form is a few hundred small operations per chunk (the
//! unit lower-triangular solve goes a row at a time), and autodiff keeps every `[chunk, chunk]`
//! matrix of the sequence for the backward. Here each (batch, head) pair runs the recurrence in
//! place on its `[d_k, d_v]` state, which stays in the core's cache: per token one pass over the
//! state reads `Sᵀk`, a second writes `S ← e^g·S + k·δᵀ` and reads `o = Sᵀq`. The flops are those
//! of the chunked form (both are `O(seq · d_k · d_v)` per head) without its solves.
//!
//! The forward keeps only the state at the start of every chunk of [`CHUNK`] tokens (rounded to f32);
//! the backward walks the chunks from the last, recomputes each chunk's states from the kept one,
//! and runs the recurrence's adjoint back through it:
//!
//! ```text
//! forward, token t (S the state after t − 1, a = e^g):
//!   w = Sᵀk,  δ = β(v − a·w),  S_t = a·S + k·δᵀ,  o = S_tᵀq
//! backward (dS: the gradient of S_t from the tokens after t):
//!   dS += q·doᵀ;  dq = a·S·do + k·(δ·do);  dδ = dSᵀk;  dk = dS·δ
//!   dv = β·dδ;  dβ = dδ·(v − a·w);  du = −β·dδ
//!   dk += a·S·du;  da = ⟨dS, S⟩ + du·w;  dg = a·da;  dS ← a·(dS + k·duᵀ)
//! ```
//!
//! Every reduction runs in a fixed order ([`dot_f32`]'s lanes), one (batch, head) pair per task, so
//! the result does not depend on the thread count. The plain references are
//! [`crate::kernels::delta_rule::chunked`] (what the GPUs and the cached prompt run) and
//! [`crate::kernels::delta_rule::recurrent_step`]; the tests compare values and the gradients of q, k, v, g
//! and β against both.

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

use crate::kernels::cpu_kernel::{SendPtr, dot_f32, f32_tensor, f32_values, multiversion};
use crate::kernels::delta_rule::CHUNK;

/// The fused delta rule, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait DeltaRuleBackend: Backend {
    /// The gated delta rule from a zero state.
    ///
    /// # Shapes
    /// - q, k: `[batch, seq, key_heads, d_k]` (normalised; q scaled by `d_k^-0.5`); key head j serves
    ///   value heads j·r .. j·r + r − 1
    /// - v: `[batch, seq, heads, d_v]`
    /// - g, beta: `[batch, seq, heads]`
    /// - output: `[batch, seq, heads, d_v]`
    fn gated_delta_rule(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub seq: usize,
    /// Value heads: one task each.
    pub heads: usize,
    /// Key heads; key head j serves value heads j·r .. j·r + r − 1, r = heads / key_heads.
    pub key_heads: usize,
    pub dk: usize,
    pub dv: usize,
}

impl Dims {
    fn of(k: &FlexTensor, v: &FlexTensor) -> Self {
        let ks = k.layout().shape();
        let vs = v.layout().shape();
        Self { batch: ks[0], seq: ks[1], heads: vs[2], key_heads: ks[2], dk: ks[3], dv: vs[3] }
    }

    fn chunks(self) -> usize {
        self.seq.div_ceil(CHUNK)
    }

    /// The output's length: `batch · seq · heads · d_v`.
    pub fn out_len(self) -> usize {
        self.batch * self.seq * self.heads * self.dv
    }

    /// The kept chunk states' length: `batch · heads · chunks · d_k · d_v`.
    pub fn kept_len(self) -> usize {
        self.batch * self.heads * self.chunks() * self.state()
    }

    /// The kept chunk states' shape.
    pub fn kept_shape(self) -> [usize; 4] {
        [self.batch * self.heads, self.chunks(), self.dk, self.dv]
    }

    fn state(self) -> usize {
        self.dk * self.dv
    }

    /// The index of (batch, token, value head) in a `[batch, seq, heads]` tensor.
    fn at(self, task: usize, t: usize) -> usize {
        let (b, h) = (task / self.heads, task % self.heads);
        (b * self.seq + t) * self.heads + h
    }

    /// The index of (batch, token, the value head's key head) in a `[batch, seq, key_heads]` tensor.
    fn at_key(self, task: usize, t: usize) -> usize {
        let (b, h) = (task / self.heads, task % self.heads);
        (b * self.seq + t) * self.key_heads + h / (self.heads / self.key_heads)
    }
}

impl DeltaRuleBackend for Flex {
    fn gated_delta_rule(q: FlexTensor, k: FlexTensor, v: FlexTensor, g: FlexTensor, beta: FlexTensor) -> FlexTensor {
        let d = Dims::of(&k, &v);
        let mut o = vec![0.0f32; d.out_len()];
        forward(d, &Inputs::of(&q, &k, &v, &g, &beta), &mut o, None);
        f32_tensor(o, &[d.batch, d.seq, d.heads, d.dv])
    }
}

/// One token's `[d_v]` f64 scratch: `Sᵀk`, then `Sᵀq`; and δ.
struct Scratch {
    acc: Vec<f64>,
    delta: Vec<f64>,
}

impl Scratch {
    fn new(dv: usize) -> Self {
        Self { acc: vec![0.0; dv], delta: vec![0.0; dv] }
    }
}

multiversion! {
    /// One token: `w = Sᵀk`, `δ = β(v − a·w)`, `S ← a·S + k·δᵀ`, and (with `o`) `o = Sᵀq`.
    ///
    /// The state and the sums run in f64: over a long sequence every token's rounding of the
    /// `[d_k, d_v]` state compounds, and in f32 that drift is a few 1e-5 of the logits after a few
    /// hundred tokens (the chunked form rounds its state once per chunk); w and δ are handed back in
    /// f32 for the backward.
    ///
    /// # Shapes
    /// - s: `[d_k, d_v]` row-major; q, k: `[d_k]`; v, w, delta, o: `[d_v]`
    fn token_forward(s: &mut [f64], q: &[f32], k: &[f32], v: &[f32], a: f32, beta: f32, w: &mut [f32], delta: &mut [f32], scratch: &mut Scratch, o: Option<&mut [f32]>) {
        let dv = v.len();
        let (a, beta) = (a as f64, beta as f64);
        let Scratch { acc, delta: d64 } = scratch;
        acc.fill(0.0);
        for (row, &ki) in s.chunks_exact(dv).zip(k) {
            let ki = ki as f64;
            for (w, &s) in acc.iter_mut().zip(row) {
                *w += s * ki;
            }
        }
        for ((((d, d32), w32), &v), &w) in d64.iter_mut().zip(delta.iter_mut()).zip(w.iter_mut()).zip(v).zip(acc.iter()) {
            *d = beta * (v as f64 - a * w);
            *d32 = *d as f32;
            *w32 = w as f32;
        }
        match o {
            Some(o) => {
                acc.fill(0.0);
                for ((row, &ki), &qi) in s.chunks_exact_mut(dv).zip(k).zip(q) {
                    let (ki, qi) = (ki as f64, qi as f64);
                    for ((s, &d), o) in row.iter_mut().zip(d64.iter()).zip(acc.iter_mut()) {
                        *s = a * *s + ki * d;
                        *o += qi * *s;
                    }
                }
                for (o, &acc) in o.iter_mut().zip(acc.iter()) {
                    *o = acc as f32;
                }
            }
            None => {
                for (row, &ki) in s.chunks_exact_mut(dv).zip(k) {
                    let ki = ki as f64;
                    for (s, &d) in row.iter_mut().zip(d64.iter()) {
                        *s = a * *s + ki * d;
                    }
                }
            }
        }
    }
}

/// The gradients of one token's inputs.
struct TokenGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
    /// `[d_v]` scratch for dδ.
    ddelta: &'a mut [f32],
    /// `[d_v]` scratch for du.
    du: &'a mut [f32],
}

multiversion! {
    /// The adjoint of [`token_forward`]: with `ds` the gradient of the state after the token, writes
    /// dq, dk, dv, leaves in `ds` the gradient of the state before it, and returns (dg, dβ).
    ///
    /// # Shapes
    /// - ds, s (the state before the token): `[d_k, d_v]`; q, k: `[d_k]`; v, w, delta, dout: `[d_v]`
    fn token_backward(ds: &mut [f32], s: &[f32], q: &[f32], k: &[f32], v: &[f32], a: f32, beta: f32, w: &[f32], delta: &[f32], dout: &[f32], gr: TokenGrads<'_>) -> (f32, f32) {
        let dv = v.len();
        // o = S_tᵀq with S_t = a·S + k·δᵀ: dq_i = a·(S·do)_i + k_i·(δ·do).
        let delta_dout = dot_f32(delta, dout);
        gr.ddelta.fill(0.0);
        for i in 0..k.len() {
            let (srow, dsrow) = (&s[i * dv..(i + 1) * dv], &mut ds[i * dv..(i + 1) * dv]);
            gr.dq[i] = a * dot_f32(srow, dout) + k[i] * delta_dout;
            for ((d, &o), dd) in dsrow.iter_mut().zip(dout).zip(gr.ddelta.iter_mut()) {
                *d += q[i] * o;
                *dd += k[i] * *d;
            }
            gr.dk[i] = dot_f32(dsrow, delta);
        }
        for j in 0..dv {
            gr.dv[j] = beta * gr.ddelta[j];
            gr.du[j] = -beta * gr.ddelta[j];
        }
        // δ = β(v − a·w): dβ = dδ·v − a·(dδ·w).
        let dbeta = dot_f32(gr.ddelta, v) - a * dot_f32(gr.ddelta, w);
        let mut da = dot_f32(gr.du, w);
        for i in 0..k.len() {
            let (srow, dsrow) = (&s[i * dv..(i + 1) * dv], &mut ds[i * dv..(i + 1) * dv]);
            gr.dk[i] += a * dot_f32(srow, gr.du);
            da += dot_f32(dsrow, srow);
            for (d, &u) in dsrow.iter_mut().zip(gr.du.iter()) {
                *d = a * (*d + k[i] * u);
            }
        }
        (a * da, dbeta)
    }
}

/// The values of one call's inputs, row-major.
///
/// # Shapes
/// - q, k: `[batch, seq, key_heads, d_k]`; v: `[batch, seq, heads, d_v]`; g, beta: `[batch, seq, heads]`
pub(crate) struct Inputs<'a> {
    pub q: Cow<'a, [f32]>,
    pub k: Cow<'a, [f32]>,
    pub v: Cow<'a, [f32]>,
    pub g: Cow<'a, [f32]>,
    pub beta: Cow<'a, [f32]>,
}

impl<'a> Inputs<'a> {
    fn of(q: &'a FlexTensor, k: &'a FlexTensor, v: &'a FlexTensor, g: &'a FlexTensor, beta: &'a FlexTensor) -> Self {
        Self { q: f32_values(q), k: f32_values(k), v: f32_values(v), g: f32_values(g), beta: f32_values(beta) }
    }
}

/// Writes the outputs into `o` (`[batch, seq, heads, d_v]`), and (when given) the state at the
/// start of every chunk into `kept` (`[batch · heads, chunks, d_k, d_v]`, [`Dims::kept_len`]).
pub(crate) fn forward(d: Dims, x: &Inputs<'_>, o: &mut [f32], kept: Option<&mut [f32]>) {
    assert_eq!(o.len(), d.batch * d.seq * d.heads * d.dv, "delta rule output size");
    let out = SendPtr(o.as_mut_ptr());
    let tasks = d.batch * d.heads;
    let run = |task: usize, mut kept: Option<&mut [f32]>| {
        let mut s = vec![0.0f64; d.state()];
        let (mut w, mut delta) = (vec![0.0f32; d.dv], vec![0.0f32; d.dv]);
        let mut scratch = Scratch::new(d.dv);
        for t in 0..d.seq {
            if t % CHUNK == 0
                && let Some(kept) = kept.as_deref_mut()
            {
                for (kept, &s) in kept[t / CHUNK * d.state()..][..d.state()].iter_mut().zip(&s) {
                    *kept = s as f32;
                }
            }
            let (r, rk) = (d.at(task, t), d.at_key(task, t));
            let out = out;
            // SAFETY: the (batch, token, head) rows of o are disjoint between tasks and tokens.
            let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * d.dv), d.dv) };
            token_forward(
                &mut s,
                &x.q[rk * d.dk..][..d.dk],
                &x.k[rk * d.dk..][..d.dk],
                &x.v[r * d.dv..][..d.dv],
                x.g[r].exp(),
                x.beta[r],
                &mut w,
                &mut delta,
                &mut scratch,
                Some(o),
            );
        }
    };
    match kept {
        Some(kept) => {
            assert_eq!(kept.len(), d.kept_len(), "delta rule kept states size");
            kept.par_chunks_mut(d.chunks() * d.state()).enumerate().for_each(|(task, kept)| run(task, Some(kept)));
        }
        None => (0..tasks).into_par_iter().for_each(|task| run(task, None)),
    }
}

/// What the backward needs: the inputs and the kept chunk states.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    g: FlexTensor,
    beta: FlexTensor,
    kept: FlexTensor,
}

/// The gradients of one call's inputs, row-major.
///
/// # Shapes
/// - q, k: `[batch, seq, key_heads, d_k]`, summed over the value heads each key head serves
/// - v: `[batch, seq, heads, d_v]`; g, beta: `[batch, seq, heads]`
pub(crate) struct Grads {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub g: Vec<f32>,
    pub beta: Vec<f32>,
}

/// The gradients of q, k, v, g and β from the kept chunk states and the output's gradient `dout`
/// (`[batch, seq, heads, d_v]`).
pub(crate) fn backward(d: Dims, x: &Inputs<'_>, kept: &[f32], dout: &[f32]) -> Grads {
    let tokens = d.batch * d.seq * d.heads;
    // dq and dk per value head; summed over each key head's group at the end.
    let (mut dq, mut dk, mut dvv) =
        (vec![0.0f32; tokens * d.dk], vec![0.0f32; tokens * d.dk], vec![0.0f32; tokens * d.dv]);
    let (mut dg, mut dbeta) = (vec![0.0f32; tokens], vec![0.0f32; tokens]);
    let ptrs = [SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dvv.as_mut_ptr())];
    let scalars = [SendPtr(dg.as_mut_ptr()), SendPtr(dbeta.as_mut_ptr())];
    let sl = d.state();
    (0..d.batch * d.heads).into_par_iter().for_each(|task| {
        let (ptrs, scalars) = (ptrs, scalars);
        let mut ds = vec![0.0f32; sl];
        // The state before each token of the chunk, and its w and δ.
        let mut states = vec![0.0f32; CHUNK * sl];
        let (mut ws, mut deltas) = (vec![0.0f32; CHUNK * d.dv], vec![0.0f32; CHUNK * d.dv]);
        let (mut ddelta, mut du) = (vec![0.0f32; d.dv], vec![0.0f32; d.dv]);
        let mut s = vec![0.0f64; sl];
        let mut scratch = Scratch::new(d.dv);
        for c in (0..d.chunks()).rev() {
            let (t0, t1) = (c * CHUNK, (c * CHUNK + CHUNK).min(d.seq));
            for (s, &kept) in s.iter_mut().zip(&kept[(task * d.chunks() + c) * sl..][..sl]) {
                *s = kept as f64;
            }
            for t in t0..t1 {
                let (l, r, rk) = (t - t0, d.at(task, t), d.at_key(task, t));
                for (state, &s) in states[l * sl..][..sl].iter_mut().zip(&s) {
                    *state = s as f32;
                }
                token_forward(
                    &mut s,
                    &x.q[rk * d.dk..][..d.dk],
                    &x.k[rk * d.dk..][..d.dk],
                    &x.v[r * d.dv..][..d.dv],
                    x.g[r].exp(),
                    x.beta[r],
                    &mut ws[l * d.dv..][..d.dv],
                    &mut deltas[l * d.dv..][..d.dv],
                    &mut scratch,
                    None,
                );
            }
            for t in (t0..t1).rev() {
                let (l, r, rk) = (t - t0, d.at(task, t), d.at_key(task, t));
                // SAFETY: the (batch, token, head) rows of the gradients are disjoint between tasks
                // and tokens.
                let (dq, dk, dv) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(ptrs[0].0.add(r * d.dk), d.dk),
                        std::slice::from_raw_parts_mut(ptrs[1].0.add(r * d.dk), d.dk),
                        std::slice::from_raw_parts_mut(ptrs[2].0.add(r * d.dv), d.dv),
                    )
                };
                let (dg, db) = token_backward(
                    &mut ds,
                    &states[l * sl..][..sl],
                    &x.q[rk * d.dk..][..d.dk],
                    &x.k[rk * d.dk..][..d.dk],
                    &x.v[r * d.dv..][..d.dv],
                    x.g[r].exp(),
                    x.beta[r],
                    &ws[l * d.dv..][..d.dv],
                    &deltas[l * d.dv..][..d.dv],
                    &dout[r * d.dv..][..d.dv],
                    TokenGrads { dq, dk, dv, ddelta: &mut ddelta, du: &mut du },
                );
                // SAFETY: as above, one (batch, token, head) entry each.
                unsafe {
                    *scalars[0].0.add(r) = dg;
                    *scalars[1].0.add(r) = db;
                }
            }
        }
    });
    Grads { q: sum_groups(d, dq), k: sum_groups(d, dk), v: dvv, g: dg, beta: dbeta }
}

/// `[batch, seq, heads, d_k]` per value head to `[batch, seq, key_heads, d_k]`: each key head's sum
/// over the value heads it serves, in head order.
fn sum_groups(d: Dims, per_value_head: Vec<f32>) -> Vec<f32> {
    if d.key_heads == d.heads {
        return per_value_head;
    }
    let r = d.heads / d.key_heads;
    let mut out = vec![0.0f32; d.batch * d.seq * d.key_heads * d.dk];
    out.par_chunks_mut(d.dk).enumerate().for_each(|(row, out)| {
        // row = (batch · seq + t) · key_heads + j; its value heads are j·r .. j·r + r − 1.
        let first = (row / d.key_heads * d.heads + row % d.key_heads * r) * d.dk;
        for i in 0..r {
            for (o, &v) in out.iter_mut().zip(&per_value_head[first + i * d.dk..][..d.dk]) {
                *o += v;
            }
        }
    });
    out
}

#[derive(Debug)]
struct DeltaRuleBackward;

impl Backward<Flex, 5> for DeltaRuleBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dout = grads.consume::<Flex>(&ops.node);
        let Saved { q, k, v, g, beta, kept } = &ops.state;
        let d = Dims::of(k, v);
        let gr = backward(d, &Inputs::of(q, k, v, g, beta), &f32_values(kept), &f32_values(&dout));
        let (qk, vs, sc) =
            ([d.batch, d.seq, d.key_heads, d.dk], [d.batch, d.seq, d.heads, d.dv], [d.batch, d.seq, d.heads]);
        let gs = [
            f32_tensor(gr.q, &qk),
            f32_tensor(gr.k, &qk),
            f32_tensor(gr.v, &vs),
            f32_tensor(gr.g, &sc),
            f32_tensor(gr.beta, &sc),
        ];
        for (node, grad) in ops.parents.into_iter().zip(gs) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> DeltaRuleBackend for Autodiff<Flex, C> {
    fn gated_delta_rule(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [q.node(), k.node(), v.node(), g.node(), beta.node()];
        match DeltaRuleBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v, g, beta) = (
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    g.into_primitive(),
                    beta.into_primitive(),
                );
                let d = Dims::of(&k, &v);
                let (mut o, mut kept) = (vec![0.0f32; d.out_len()], vec![0.0f32; d.kept_len()]);
                forward(d, &Inputs::of(&q, &k, &v, &g, &beta), &mut o, Some(&mut kept));
                let kept = f32_tensor(kept, &d.kept_shape());
                let o = f32_tensor(o, &[d.batch, d.seq, d.heads, d.dv]);
                prep.finish(Saved { q, k, v, g, beta, kept }, o)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as DeltaRuleBackend>::gated_delta_rule(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                g.into_primitive(),
                beta.into_primitive(),
            )),
        }
    }
}

/// The gated delta rule from a zero state, on burn-flex in f32 (the caller checks
/// [`crate::kernels::cpu_kernel::use_fused`]).
///
/// # Shapes
/// - q, k: `[batch, seq, key_heads, d_k]` (normalised; q scaled by `d_k^-0.5`); key head j serves
///   value heads j·r .. j·r + r − 1
/// - v: `[batch, seq, heads, d_v]`
/// - g, beta: `[batch, seq, heads]`
/// - output: `[batch, seq, heads, d_v]`
pub fn gated_delta_rule(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, g: Tensor<3>, beta: Tensor<3>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DeltaRuleBackend>::gated_delta_rule(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        g.into_dispatch(),
        beta.into_dispatch(),
    ))
}
