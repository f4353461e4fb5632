//! A frozen f32 linear layer with one LoRA adapter, y = x·Wᵀ + s·((x∘m)·Aᵀ)·Bᵀ, as one CPU operation
//! with a hand-written backward: five matrix products forward and backward written straight into
//! their outputs by the `gemm` crate (the scale folded into the product, the adapter's contribution
//! accumulated onto the base's), where burn's composition runs each thin product, the scaling, the
//! sum of the two paths and the sum of the two input gradients as separate passes with fresh
//! tensors, and splits a thin product over threads only above 192³ multiply-adds.
//!
//! Math, with h = (x∘m)·Aᵀ (m the inverted-dropout mask, all ones without dropout):
//! ∂B = s·∂yᵀ·h, ∂h = s·∂y·B, ∂A = ∂hᵀ·(x∘m), ∂x = ∂y·W + (∂h·A)∘m. W is frozen: no gradient.
//!
//! The plain reference is [`crate::network::linear::Linear::forward_reference`] (the frozen matmul plus
//! [`crate::network::lora::LoraAdapter::forward`]); the tests compare values and gradients.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use crate::kernels::cpu_kernel::{Unwritten, f32_tensor, f32_values, gemm_f32};

/// The fused layer, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait LoraLinearBackend: Backend {
    /// x·Wᵀ + scale·((x∘keep)·Aᵀ)·Bᵀ, `keep` the dropout mask (none: no dropout).
    ///
    /// # Shapes
    /// - x: `[n, in]`, w: `[out, in]`, a: `[r, in]`, b: `[out, r]`, keep: `n · in` values
    /// - output: `[n, out]`
    fn lora_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        keep: Option<Arc<Vec<f32>>>,
    ) -> FloatTensor<Self>;
}

impl LoraLinearBackend for Flex {
    fn lora_linear(
        x: FlexTensor,
        w: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f64,
        keep: Option<Arc<Vec<f32>>>,
    ) -> FlexTensor {
        forward(&x, &w, &a, &b, scale as f32, keep.as_deref().map(Vec::as_slice)).0
    }
}

/// x∘keep, or x itself.
fn dropped<'a>(x: &'a [f32], keep: Option<&[f32]>) -> std::borrow::Cow<'a, [f32]> {
    match keep {
        Some(k) => std::borrow::Cow::Owned(x.iter().zip(k).map(|(x, k)| x * k).collect()),
        None => std::borrow::Cow::Borrowed(x),
    }
}

/// y and h = (x∘m)·Aᵀ.
fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    a: &FlexTensor,
    b: &FlexTensor,
    scale: f32,
    keep: Option<&[f32]>,
) -> (FlexTensor, Vec<f32>) {
    let (n, d_in) = (x.layout().shape()[0], x.layout().shape()[1]);
    let (out, r) = (w.layout().shape()[0], a.layout().shape()[0]);
    let (xs, ws, as_, bs) = (f32_values(x), f32_values(w), f32_values(a), f32_values(b));
    let xd = dropped(&xs, keep);
    let (mut y, mut h) = (Unwritten::new(n * out), Unwritten::new(n * r));
    // SAFETY: every matrix is contiguous with the strides given; the first products write all of y
    // and h.
    let (y, h) = unsafe {
        // y = x·Wᵀ; Wᵀ is W read with its strides swapped.
        gemm_f32([n, out, d_in], (y.ptr(), out, 1), (xs.as_ptr(), d_in, 1), (ws.as_ptr(), 1, d_in), false, 1.0, true);
        // h = (x∘m)·Aᵀ
        gemm_f32([n, r, d_in], (h.ptr(), r, 1), (xd.as_ptr(), d_in, 1), (as_.as_ptr(), 1, d_in), false, 1.0, true);
        let (mut y, h) = (y.assume_written(), h.assume_written());
        // y += s·h·Bᵀ
        gemm_f32([n, out, r], (y.as_mut_ptr(), out, 1), (h.as_ptr(), r, 1), (bs.as_ptr(), 1, r), true, scale, true);
        (y, h)
    };
    (f32_tensor(y, &[n, out]), h)
}

/// (∂x, ∂A, ∂B), each only when asked.
#[allow(clippy::too_many_arguments)]
fn backward(
    s: &Saved,
    dy: &FlexTensor,
    want: [bool; 3],
) -> (Option<FlexTensor>, Option<FlexTensor>, Option<FlexTensor>) {
    let Saved { x, w, a, b, h, scale, keep } = s;
    let (n, d_in) = (x.layout().shape()[0], x.layout().shape()[1]);
    let (out, r) = (w.layout().shape()[0], a.layout().shape()[0]);
    let (xs, ws, as_, bs, dys) = (f32_values(x), f32_values(w), f32_values(a), f32_values(b), f32_values(dy));
    let keep = keep.as_deref().map(Vec::as_slice);
    let (mut dx, mut da, mut db) = (None, None, None);
    // SAFETY: every matrix is contiguous with the strides given; each buffer is written whole by the
    // first product into it.
    unsafe {
        // ∂h = s·∂y·B
        let mut dh = Unwritten::new(n * r);
        gemm_f32([n, r, out], (dh.ptr(), r, 1), (dys.as_ptr(), out, 1), (bs.as_ptr(), r, 1), false, *scale, true);
        let dh = dh.assume_written();
        if want[2] {
            // ∂B = s·∂yᵀ·h
            let mut g = Unwritten::new(out * r);
            gemm_f32([out, r, n], (g.ptr(), r, 1), (dys.as_ptr(), 1, out), (h.as_ptr(), r, 1), false, *scale, true);
            db = Some(f32_tensor(g.assume_written(), &[out, r]));
        }
        if want[1] {
            // ∂A = ∂hᵀ·(x∘m)
            let xd = dropped(&xs, keep);
            let mut g = Unwritten::new(r * d_in);
            gemm_f32([r, d_in, n], (g.ptr(), d_in, 1), (dh.as_ptr(), 1, r), (xd.as_ptr(), d_in, 1), false, 1.0, true);
            da = Some(f32_tensor(g.assume_written(), &[r, d_in]));
        }
        if want[0] {
            // ∂x = ∂y·W + (∂h·A)∘m
            let mut g = Unwritten::new(n * d_in);
            gemm_f32(
                [n, d_in, out],
                (g.ptr(), d_in, 1),
                (dys.as_ptr(), out, 1),
                (ws.as_ptr(), d_in, 1),
                false,
                1.0,
                true,
            );
            let mut g = g.assume_written();
            match keep {
                None => gemm_f32(
                    [n, d_in, r],
                    (g.as_mut_ptr(), d_in, 1),
                    (dh.as_ptr(), r, 1),
                    (as_.as_ptr(), d_in, 1),
                    true,
                    1.0,
                    true,
                ),
                Some(k) => {
                    let mut t = Unwritten::new(n * d_in);
                    gemm_f32(
                        [n, d_in, r],
                        (t.ptr(), d_in, 1),
                        (dh.as_ptr(), r, 1),
                        (as_.as_ptr(), d_in, 1),
                        false,
                        1.0,
                        true,
                    );
                    let t = t.assume_written();
                    for ((g, t), k) in g.iter_mut().zip(&t).zip(k) {
                        *g += t * k;
                    }
                }
            }
            dx = Some(f32_tensor(g, &[n, d_in]));
        }
    }
    (dx, da, db)
}

#[derive(Debug)]
struct LoraLinearBackward;

/// What the backward needs.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    h: Arc<Vec<f32>>,
    scale: f32,
    keep: Option<Arc<Vec<f32>>>,
}

impl Backward<Flex, 3> for LoraLinearBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_a, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, da, db) = backward(&ops.state, &dy, [node_x.is_some(), node_a.is_some(), node_b.is_some()]);
        for (node, grad) in [(node_x, dx), (node_a, da), (node_b, db)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> LoraLinearBackend for Autodiff<Flex, C> {
    fn lora_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        keep: Option<Arc<Vec<f32>>>,
    ) -> FloatTensor<Self> {
        // W is a constant: its inner tensor is all the backward needs.
        let w = w.into_primitive();
        match LoraLinearBackward.prepare::<C>([x.node(), a.node(), b.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, a, b) = (x.into_primitive(), a.into_primitive(), b.into_primitive());
                let (y, h) = forward(&x, &w, &a, &b, scale as f32, keep.as_deref().map(Vec::as_slice));
                prep.finish(Saved { x, w, a, b, h: Arc::new(h), scale: scale as f32, keep }, y)
            }
            OpsKind::UnTracked(prep) => {
                let (x, a, b) = (x.into_primitive(), a.into_primitive(), b.into_primitive());
                prep.finish(forward(&x, &w, &a, &b, scale as f32, keep.as_deref().map(Vec::as_slice)).0)
            }
        }
    }
}

/// x·Wᵀ + scale·((x∘keep)·Aᵀ)·Bᵀ on the CPU (call only where [`crate::kernels::cpu_kernel::use_fused`] and W
/// is f32).
///
/// # Shapes
/// - x: `[n, in]`, w: `[out, in]`, a: `[r, in]`, b: `[out, r]`, keep: `n · in` values
/// - output: `[n, out]`
pub fn lora_linear(
    x: Tensor<2>,
    w: Tensor<2>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
    keep: Option<Vec<f32>>,
) -> Tensor<2> {
    let y = <Dispatch as LoraLinearBackend>::lora_linear(
        x.into_dispatch(),
        w.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
        scale,
        keep.map(Arc::new),
    );
    Tensor::from_dispatch(y)
}
