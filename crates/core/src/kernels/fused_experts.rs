//! A mixture-of-experts block's routed experts with LoRA on each, as one CPU operation with a
//! hand-written backward: for every expert with tokens, its tokens gathered, `gate_up_proj` (frozen
//! f32 W₁ plus s₁·B₁A₁), SwiGLU, `down_proj` (W₂ plus s₂·B₂A₂), the result weighted by each token's
//! routing weight and added into the token's output row. The experts run in parallel, each product on
//! one thread, and their rows are added in expert order, so the bits depend neither on the thread
//! count nor on the schedule. burn's composition runs a dozen operations per expert (gathers, two
//! fused LoRA layers, the split, the gating, the weighting, the scatter), each with its own tensors,
//! 128 experts a layer; here one operation per layer.
//!
//! Math for one expert, x its tokens' rows, w their routing weights, h₁ = x·A₁ᵀ, g = x·W₁ᵀ + s₁·h₁·B₁ᵀ
//! (gate columns then up columns), z = silu(g_gate)·g_up, h₂ = z·A₂ᵀ, y = z·W₂ᵀ + s₂·h₂·B₂ᵀ, out += w·y:
//! ∂w = Σ_h ∂out·y, ∂y = w·∂out, ∂B₂ = s₂·∂yᵀ·h₂, ∂h₂ = s₂·∂y·B₂, ∂A₂ = ∂h₂ᵀ·z, ∂z = ∂y·W₂ + ∂h₂·A₂,
//! ∂g_up = ∂z·silu(g_gate), ∂g_gate = ∂z·g_up·σ·(1 + g_gate·(1 − σ)), ∂B₁ = s₁·∂gᵀ·h₁, ∂h₁ = s₁·∂g·B₁,
//! ∂A₁ = ∂h₁ᵀ·x, ∂x = ∂g·W₁ + ∂h₁·A₁. The W's are frozen.
//!
//! The factors of all experts come stacked (`[E·r, in]`, `[E·out, r]`), so that the op has a fixed
//! number of tracked inputs; the plain reference is the per-expert loop of
//! [`crate::network::experts::SparseMoe::forward_reference`], and the tests compare values and
//! gradients.

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

use crate::kernels::cpu_kernel::{Unwritten, exp_f32, f32_tensor, f32_values, gemm_f32};

/// The experts' frozen weights (W₁, W₂), as burn-flex tensors: constants, passed beside the tracked
/// inputs.
pub type Frozen = Arc<Vec<[FlexTensor; 2]>>;

/// The burn-flex tensor of an f32 weight on the CPU, shared, not copied; `None` for any other tensor
/// (another device, another dtype, the plain path asked for).
pub fn frozen_f32(t: &Tensor<2>) -> Option<FlexTensor> {
    use burn::backend::{BackendTensor, DispatchTensorKind};
    fn of(kind: DispatchTensorKind) -> Option<FlexTensor> {
        match kind {
            DispatchTensorKind::Flex(BackendTensor::Float(t)) => Some(t),
            DispatchTensorKind::Flex(BackendTensor::Autodiff(t)) => Some(t.into_primitive()),
            DispatchTensorKind::Autodiff(inner) => of(*inner),
            _ => None,
        }
    }
    if !crate::kernels::cpu_kernel::use_fused(t) {
        return None;
    }
    of(t.clone().into_dispatch().kind).filter(|t| t.dtype() == burn::tensor::DType::F32)
}

/// Which tokens each expert takes: per expert, its tokens' rows (ascending) and the slot of each
/// token's routing weight (`token · k + j`).
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// Per expert: (token rows, weight slots), the same length.
    pub experts: Vec<(Vec<usize>, Vec<usize>)>,
}

/// Sizes and scales shared by the experts of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertShape {
    /// Hidden size.
    pub hidden: usize,
    /// One expert's intermediate width (gate_up has 2× as many rows).
    pub width: usize,
    /// Ranks of the gate_up and down adapters.
    pub ranks: [usize; 2],
    /// Their scales.
    pub scales: [f32; 2],
}

/// The fused experts, on the backends that have them.
#[backend_extension(Flex, Autodiff)]
pub trait ExpertsBackend: Backend {
    /// Σ over each token's experts of weight · expert(x), LoRA on both projections.
    ///
    /// # Shapes
    /// - x: `[n, hidden]`, weights: `[n · k]`
    /// - a1: `[E · r1, hidden]`, b1: `[E · 2I, r1]`, a2: `[E · r2, I]`, b2: `[E · hidden, r2]`
    /// - frozen: E × (W₁ `[2I, hidden]`, W₂ `[hidden, I]`)
    /// - output: `[n, hidden]`
    #[allow(clippy::too_many_arguments)]
    fn routed_experts(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        a1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        a2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        frozen: Frozen,
        routing: Arc<Routing>,
        shape: ExpertShape,
    ) -> FloatTensor<Self>;
}

impl ExpertsBackend for Flex {
    fn routed_experts(
        x: FlexTensor,
        weights: FlexTensor,
        a1: FlexTensor,
        b1: FlexTensor,
        a2: FlexTensor,
        b2: FlexTensor,
        frozen: Frozen,
        routing: Arc<Routing>,
        shape: ExpertShape,
    ) -> FlexTensor {
        let inputs = Inputs { x, weights, a1, b1, a2, b2, frozen, routing, shape };
        forward(&inputs).0
    }
}

/// The op's inputs, kept for backward.
#[derive(Debug, Clone)]
struct Inputs {
    x: FlexTensor,
    weights: FlexTensor,
    a1: FlexTensor,
    b1: FlexTensor,
    a2: FlexTensor,
    b2: FlexTensor,
    frozen: Frozen,
    routing: Arc<Routing>,
    shape: ExpertShape,
}

/// What one expert's forward leaves for backward: g `[m, 2I]`, h₁ `[m, r1]`, h₂ `[m, r2]`, y `[m, H]`.
#[derive(Debug, Clone, Default)]
struct Kept {
    g: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    y: Vec<f32>,
}

/// `rows` of a row-major matrix of `width` columns, gathered.
fn gather(values: &[f32], rows: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&values[r * width..(r + 1) * width]);
    }
    out
}

/// One expert's forward on its gathered rows x `[m, H]`.
fn expert_forward(x: &[f32], m: usize, e: usize, p: &Params<'_>) -> Kept {
    let ExpertShape { hidden: h, width: i, ranks: [r1, r2], scales: [s1, s2] } = p.shape;
    let Expert { w1, w2, a1, b1, a2, b2 } = p.expert(e);
    let (mut g, mut h1, mut h2, mut y) =
        (Unwritten::new(m * 2 * i), Unwritten::new(m * r1), Unwritten::new(m * r2), Unwritten::new(m * h));
    // SAFETY: every matrix is contiguous with the strides given; the first product into each buffer
    // writes all of it. The products are those of the fused LoRA layer, in its order.
    unsafe {
        gemm_f32([m, 2 * i, h], (g.ptr(), 2 * i, 1), (x.as_ptr(), h, 1), (w1.as_ptr(), 1, h), false, 1.0, false);
        gemm_f32([m, r1, h], (h1.ptr(), r1, 1), (x.as_ptr(), h, 1), (a1.as_ptr(), 1, h), false, 1.0, false);
        let (mut g, h1) = (g.assume_written(), h1.assume_written());
        gemm_f32(
            [m, 2 * i, r1],
            (g.as_mut_ptr(), 2 * i, 1),
            (h1.as_ptr(), r1, 1),
            (b1.as_ptr(), 1, r1),
            true,
            s1,
            false,
        );
        let z: Vec<f32> = g
            .chunks(2 * i)
            .flat_map(|row| {
                let (gate, up) = row.split_at(i);
                gate.iter().zip(up).map(|(&a, &u)| a / (1.0 + exp_f32(-a)) * u)
            })
            .collect();
        gemm_f32([m, h, i], (y.ptr(), h, 1), (z.as_ptr(), i, 1), (w2.as_ptr(), 1, i), false, 1.0, false);
        gemm_f32([m, r2, i], (h2.ptr(), r2, 1), (z.as_ptr(), i, 1), (a2.as_ptr(), 1, i), false, 1.0, false);
        let (mut y, h2) = (y.assume_written(), h2.assume_written());
        gemm_f32([m, h, r2], (y.as_mut_ptr(), h, 1), (h2.as_ptr(), r2, 1), (b2.as_ptr(), 1, r2), true, s2, false);
        Kept { g, h1, h2, y }
    }
}

/// The inputs' values.
struct Params<'a> {
    a1: std::borrow::Cow<'a, [f32]>,
    b1: std::borrow::Cow<'a, [f32]>,
    a2: std::borrow::Cow<'a, [f32]>,
    b2: std::borrow::Cow<'a, [f32]>,
    w1: Vec<std::borrow::Cow<'a, [f32]>>,
    w2: Vec<std::borrow::Cow<'a, [f32]>>,
    shape: ExpertShape,
}

/// One expert's weights and factors, sliced from the stacked ones.
struct Expert<'p> {
    w1: &'p [f32],
    w2: &'p [f32],
    a1: &'p [f32],
    b1: &'p [f32],
    a2: &'p [f32],
    b2: &'p [f32],
}

impl<'a> Params<'a> {
    /// Expert `e`'s W₁ `[2I, H]`, W₂ `[H, I]`, A₁ `[r1, H]`, B₁ `[2I, r1]`, A₂ `[r2, I]`, B₂ `[H, r2]`.
    fn expert(&self, e: usize) -> Expert<'_> {
        let ExpertShape { hidden: h, width: i, ranks: [r1, r2], .. } = self.shape;
        Expert {
            w1: &self.w1[e],
            w2: &self.w2[e],
            a1: &self.a1[e * r1 * h..(e + 1) * r1 * h],
            b1: &self.b1[e * 2 * i * r1..(e + 1) * 2 * i * r1],
            a2: &self.a2[e * r2 * i..(e + 1) * r2 * i],
            b2: &self.b2[e * h * r2..(e + 1) * h * r2],
        }
    }

    fn of(s: &'a Inputs) -> Self {
        Self {
            a1: f32_values(&s.a1),
            b1: f32_values(&s.b1),
            a2: f32_values(&s.a2),
            b2: f32_values(&s.b2),
            w1: s.frozen.iter().map(|[w, _]| f32_values(w)).collect(),
            w2: s.frozen.iter().map(|[_, w]| f32_values(w)).collect(),
            shape: s.shape,
        }
    }
}

/// The output `[n, H]` and each expert's kept values.
fn forward(s: &Inputs) -> (FlexTensor, Vec<Kept>) {
    let h = s.shape.hidden;
    let n = s.x.layout().shape()[0];
    let (xs, ws) = (f32_values(&s.x), f32_values(&s.weights));
    let p = Params::of(s);
    let kept: Vec<Kept> = s
        .routing
        .experts
        .par_iter()
        .enumerate()
        .map(|(e, (tokens, _))| {
            if tokens.is_empty() {
                return Kept::default();
            }
            expert_forward(&gather(&xs, tokens, h), tokens.len(), e, &p)
        })
        .collect();
    // The experts' rows added in expert order, as the per-expert loop adds them.
    let mut out = vec![0f32; n * h];
    for ((tokens, slots), k) in s.routing.experts.iter().zip(&kept) {
        for (t, (&row, &slot)) in tokens.iter().zip(slots).enumerate() {
            let w = ws[slot];
            let o = &mut out[row * h..(row + 1) * h];
            o.iter_mut().zip(&k.y[t * h..(t + 1) * h]).for_each(|(o, &y)| *o += y * w);
        }
    }
    (f32_tensor(out, &[n, h]), kept)
}

/// One expert's gradients: ∂x rows `[m, H]`, ∂w per token, ∂A₁, ∂B₁, ∂A₂, ∂B₂.
struct ExpertGrads {
    dx: Vec<f32>,
    dw: Vec<f32>,
    da1: Vec<f32>,
    db1: Vec<f32>,
    da2: Vec<f32>,
    db2: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn expert_backward(x: &[f32], dout: &[f32], w: &[f32], m: usize, e: usize, kept: &Kept, p: &Params<'_>) -> ExpertGrads {
    let ExpertShape { hidden: h, width: i, ranks: [r1, r2], scales: [s1, s2] } = p.shape;
    let Expert { w1, w2, a1, b1, a2, b2 } = p.expert(e);
    let Kept { g, h1, h2, y } = kept;
    let dw: Vec<f32> =
        (0..m).map(|t| dout[t * h..(t + 1) * h].iter().zip(&y[t * h..(t + 1) * h]).map(|(a, b)| a * b).sum()).collect();
    let dy: Vec<f32> = (0..m).flat_map(|t| dout[t * h..(t + 1) * h].iter().map(move |d| d * w[t])).collect();
    // z and the gating's derivatives from g.
    let (mut z, mut dz_gate, mut dz_up) =
        (Vec::with_capacity(m * i), Vec::with_capacity(m * i), Vec::with_capacity(m * i));
    for row in g.chunks(2 * i) {
        let (gate, up) = row.split_at(i);
        for (&a, &u) in gate.iter().zip(up) {
            let s = 1.0 / (1.0 + exp_f32(-a));
            let silu = a * s;
            z.push(silu * u);
            dz_up.push(silu);
            dz_gate.push(u * (s * (1.0 + a * (1.0 - s))));
        }
    }
    // SAFETY: every matrix is contiguous with the strides given; the first product into each buffer
    // writes all of it.
    unsafe {
        let mut db2 = Unwritten::new(h * r2);
        gemm_f32([h, r2, m], (db2.ptr(), r2, 1), (dy.as_ptr(), 1, h), (h2.as_ptr(), r2, 1), false, s2, false);
        let mut dh2 = Unwritten::new(m * r2);
        gemm_f32([m, r2, h], (dh2.ptr(), r2, 1), (dy.as_ptr(), h, 1), (b2.as_ptr(), r2, 1), false, s2, false);
        let dh2 = dh2.assume_written();
        let mut da2 = Unwritten::new(r2 * i);
        gemm_f32([r2, i, m], (da2.ptr(), i, 1), (dh2.as_ptr(), 1, r2), (z.as_ptr(), i, 1), false, 1.0, false);
        let mut dz = Unwritten::new(m * i);
        gemm_f32([m, i, h], (dz.ptr(), i, 1), (dy.as_ptr(), h, 1), (w2.as_ptr(), i, 1), false, 1.0, false);
        let mut dz = dz.assume_written();
        gemm_f32([m, i, r2], (dz.as_mut_ptr(), i, 1), (dh2.as_ptr(), r2, 1), (a2.as_ptr(), i, 1), true, 1.0, false);
        // ∂g, gate columns then up columns.
        let mut dg = vec![0f32; m * 2 * i];
        for t in 0..m {
            for c in 0..i {
                let d = dz[t * i + c];
                dg[t * 2 * i + c] = d * dz_gate[t * i + c];
                dg[t * 2 * i + i + c] = d * dz_up[t * i + c];
            }
        }
        let mut db1 = Unwritten::new(2 * i * r1);
        gemm_f32([2 * i, r1, m], (db1.ptr(), r1, 1), (dg.as_ptr(), 1, 2 * i), (h1.as_ptr(), r1, 1), false, s1, false);
        let mut dh1 = Unwritten::new(m * r1);
        gemm_f32([m, r1, 2 * i], (dh1.ptr(), r1, 1), (dg.as_ptr(), 2 * i, 1), (b1.as_ptr(), r1, 1), false, s1, false);
        let dh1 = dh1.assume_written();
        let mut da1 = Unwritten::new(r1 * h);
        gemm_f32([r1, h, m], (da1.ptr(), h, 1), (dh1.as_ptr(), 1, r1), (x.as_ptr(), h, 1), false, 1.0, false);
        let mut dx = Unwritten::new(m * h);
        gemm_f32([m, h, 2 * i], (dx.ptr(), h, 1), (dg.as_ptr(), 2 * i, 1), (w1.as_ptr(), h, 1), false, 1.0, false);
        let mut dx = dx.assume_written();
        gemm_f32([m, h, r1], (dx.as_mut_ptr(), h, 1), (dh1.as_ptr(), r1, 1), (a1.as_ptr(), h, 1), true, 1.0, false);
        ExpertGrads {
            dx,
            dw,
            da1: da1.assume_written(),
            db1: db1.assume_written(),
            da2: da2.assume_written(),
            db2: db2.assume_written(),
        }
    }
}

/// (∂x, ∂weights, ∂A₁, ∂B₁, ∂A₂, ∂B₂); experts without tokens get zero gradients.
fn backward(s: &Inputs, kept: &[Kept], dout: &FlexTensor) -> [FlexTensor; 6] {
    let ExpertShape { hidden: h, width: i, ranks: [r1, r2], .. } = s.shape;
    let n = s.x.layout().shape()[0];
    let n_experts = s.routing.experts.len();
    let (xs, ws, dos) = (f32_values(&s.x), f32_values(&s.weights), f32_values(dout));
    let p = Params::of(s);
    let grads: Vec<Option<ExpertGrads>> = s
        .routing
        .experts
        .par_iter()
        .enumerate()
        .map(|(e, (tokens, slots))| {
            if tokens.is_empty() {
                return None;
            }
            let w: Vec<f32> = slots.iter().map(|&sl| ws[sl]).collect();
            let (x, d) = (gather(&xs, tokens, h), gather(&dos, tokens, h));
            Some(expert_backward(&x, &d, &w, tokens.len(), e, &kept[e], &p))
        })
        .collect();
    let mut dx = vec![0f32; n * h];
    let mut dw = vec![0f32; ws.len()];
    let (mut da1, mut db1) = (vec![0f32; n_experts * r1 * h], vec![0f32; n_experts * 2 * i * r1]);
    let (mut da2, mut db2) = (vec![0f32; n_experts * r2 * i], vec![0f32; n_experts * h * r2]);
    for (e, ((tokens, slots), g)) in s.routing.experts.iter().zip(&grads).enumerate() {
        let Some(g) = g else { continue };
        for (t, (&row, &slot)) in tokens.iter().zip(slots).enumerate() {
            dx[row * h..(row + 1) * h].iter_mut().zip(&g.dx[t * h..(t + 1) * h]).for_each(|(a, b)| *a += b);
            dw[slot] = g.dw[t];
        }
        da1[e * r1 * h..(e + 1) * r1 * h].copy_from_slice(&g.da1);
        db1[e * 2 * i * r1..(e + 1) * 2 * i * r1].copy_from_slice(&g.db1);
        da2[e * r2 * i..(e + 1) * r2 * i].copy_from_slice(&g.da2);
        db2[e * h * r2..(e + 1) * h * r2].copy_from_slice(&g.db2);
    }
    [
        f32_tensor(dx, &[n, h]),
        f32_tensor(dw, &[ws.len()]),
        f32_tensor(da1, &[n_experts * r1, h]),
        f32_tensor(db1, &[n_experts * 2 * i, r1]),
        f32_tensor(da2, &[n_experts * r2, i]),
        f32_tensor(db2, &[n_experts * h, r2]),
    ]
}

#[derive(Debug)]
struct ExpertsBackward;

impl Backward<Flex, 6> for ExpertsBackward {
    type State = (Inputs, Arc<Vec<Kept>>);

    fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dout = grads.consume::<Flex>(&ops.node);
        let (inputs, kept) = &ops.state;
        let all = backward(inputs, kept, &dout);
        for (node, grad) in ops.parents.into_iter().zip(all) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> ExpertsBackend for Autodiff<Flex, C> {
    fn routed_experts(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        a1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        a2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        frozen: Frozen,
        routing: Arc<Routing>,
        shape: ExpertShape,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weights.node(), a1.node(), b1.node(), a2.node(), b2.node()];
        let s = Inputs {
            x: x.into_primitive(),
            weights: weights.into_primitive(),
            a1: a1.into_primitive(),
            b1: b1.into_primitive(),
            a2: a2.into_primitive(),
            b2: b2.into_primitive(),
            frozen,
            routing,
            shape,
        };
        match ExpertsBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, kept) = forward(&s);
                prep.finish((s, Arc::new(kept)), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&s).0),
        }
    }
}

/// The routed experts of a block on the CPU (call only where
/// [`crate::kernels::cpu_kernel::use_fused`] and every W is f32).
///
/// # Shapes
/// - x: `[n, hidden]`, weights: `[n · k]`
/// - a1: `[E · r1, hidden]`, b1: `[E · 2I, r1]`, a2: `[E · r2, I]`, b2: `[E · hidden, r2]`
/// - frozen: E × (W₁ `[2I, hidden]`, W₂ `[hidden, I]`), from [`frozen_f32`]
/// - output: `[n, hidden]`
pub fn routed_experts(
    x: Tensor<2>,
    weights: Tensor<1>,
    [a1, b1, a2, b2]: [Tensor<2>; 4],
    frozen: Frozen,
    routing: Routing,
    shape: ExpertShape,
) -> Tensor<2> {
    let y = <Dispatch as ExpertsBackend>::routed_experts(
        x.into_dispatch(),
        weights.into_dispatch(),
        a1.into_dispatch(),
        b1.into_dispatch(),
        a2.into_dispatch(),
        b2.into_dispatch(),
        frozen,
        Arc::new(routing),
        shape,
    );
    Tensor::from_dispatch(y)
}
