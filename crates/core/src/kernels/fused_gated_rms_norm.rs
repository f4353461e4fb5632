//! The Gated DeltaNet's gated RMSNorm (`Qwen3_5RMSNormGated`) as one CPU kernel with a hand-written
//! backward.
//!
//! burn composes it from a square, a mean, a sqrt, a division, two products and a SiLU, and autodiff
//! keeps each result: five tensors of the layer's value width per token (~40 MB per layer at 2048
//! tokens and width 1024). Here a row is normed and gated in one pass, and the backward keeps only x
//! and z.
//!
//! Math, per row of width d, with r = 1/√(mean(x²) + eps), x̂ = x·r, σ = sigmoid(z), s = z·σ:
//! y = x̂·w·s,  g = ∂L/∂y · s,  ∂L/∂x = r·(g·w − x̂·mean(g·w·x̂)),
//! ∂L/∂z = ∂L/∂y · x̂·w · σ·(1 + z·(1 − σ)),  ∂L/∂w = Σ_rows g · x̂.
//!
//! The plain reference is [`crate::network::norm::GatedRmsNorm::forward_reference`]; the tests compare
//! values and gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::kernels::cpu_kernel::{Unwritten, dot_f32, exp_f32, f32_tensor, f32_values, multiversion};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// The fused gated norm, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait GatedRmsNormBackend: Backend {
    /// x / √(mean(x²) + eps) · weight · silu(z) over the last dimension.
    ///
    /// # Shapes
    /// - x, z: `[..., d]`, weight: `[d]`
    /// - output: `[..., d]`
    fn gated_rms_norm(
        x: FloatTensor<Self>,
        z: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
}

impl GatedRmsNormBackend for Flex {
    fn gated_rms_norm(x: FlexTensor, z: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        forward(&x, &z, &weight, eps)
    }
}

/// sigmoid(z), with the same `exp` in the forward and the backward.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

multiversion! {
    fn gated_rows(x: &[f32], z: &[f32], w: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
        let d = w.len();
        for ((x, z), y) in x.chunks_exact(d).zip(z.chunks_exact(d)).zip(y.chunks_exact_mut(d)) {
            let r = 1.0 / (dot_f32(x, x) / d as f32 + eps).sqrt();
            for i in 0..d {
                y[i].write(x[i] * r * w[i] * (z[i] * sigmoid(z[i])));
            }
        }
    }
}

multiversion! {
    fn gated_rows_backward(
        x: &[f32],
        z: &[f32],
        w: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [MaybeUninit<f32>],
        dz: &mut [MaybeUninit<f32>],
    ) {
        let d = w.len();
        let rows = x.chunks_exact(d).zip(z.chunks_exact(d)).zip(dy.chunks_exact(d));
        for (((x, z), dy), (dx, dz)) in rows.zip(dx.chunks_exact_mut(d).zip(dz.chunks_exact_mut(d))) {
            let r = 1.0 / (dot_f32(x, x) / d as f32 + eps).sqrt();
            // mean(g·w·x̂) with g = dy·silu(z)
            let mut m = 0.0f32;
            for i in 0..d {
                m += dy[i] * z[i] * sigmoid(z[i]) * w[i] * x[i];
            }
            let m = m * r / d as f32;
            for i in 0..d {
                let s = sigmoid(z[i]);
                let xh = x[i] * r;
                dx[i].write(r * (dy[i] * z[i] * s * w[i] - xh * m));
                dz[i].write(dy[i] * xh * w[i] * s * (1.0 + z[i] * (1.0 - s)));
            }
        }
    }
}

fn forward(x: &FlexTensor, z: &FlexTensor, weight: &FlexTensor, eps: f64) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let (xs, zs, w) = (f32_values(x), f32_values(z), f32_values(weight));
    let d = w.len();
    let mut y = Unwritten::new(xs.len());
    y.slots().par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, y)| {
        let (start, end) = (c * ROWS_PER_TASK * d, c * ROWS_PER_TASK * d + y.len());
        gated_rows(&xs[start..end], &zs[start..end], &w, eps as f32, y);
    });
    // SAFETY: the chunks are whole rows covering y, each value written.
    f32_tensor(unsafe { y.assume_written() }, &shape)
}

/// ∂L/∂x, ∂L/∂z, and ∂L/∂w when asked (rows summed in order, on one thread: the norm's weight is
/// frozen in LoRA training).
fn backward(
    x: &FlexTensor,
    z: &FlexTensor,
    weight: &FlexTensor,
    eps: f64,
    dy: &FlexTensor,
    want_dw: bool,
) -> (FlexTensor, FlexTensor, Option<FlexTensor>) {
    let shape = x.layout().shape().to_vec();
    let (xs, zs, w, dys) = (f32_values(x), f32_values(z), f32_values(weight), f32_values(dy));
    let d = w.len();
    let (mut dx, mut dz) = (Unwritten::new(xs.len()), Unwritten::new(xs.len()));
    let task = ROWS_PER_TASK * d;
    dx.slots().par_chunks_mut(task).zip(dz.slots().par_chunks_mut(task)).enumerate().for_each(|(c, (dx, dz))| {
        let (start, end) = (c * task, c * task + dx.len());
        gated_rows_backward(&xs[start..end], &zs[start..end], &w, eps as f32, &dys[start..end], dx, dz);
    });
    // SAFETY: the chunks are whole rows covering dx and dz, each value written.
    let (dx, dz) = unsafe { (dx.assume_written(), dz.assume_written()) };
    let dw = want_dw.then(|| {
        let mut dw = vec![0.0f32; d];
        for ((x, z), dy) in xs.chunks_exact(d).zip(zs.chunks_exact(d)).zip(dys.chunks_exact(d)) {
            let r = 1.0 / (dot_f32(x, x) / d as f32 + eps as f32).sqrt();
            for i in 0..d {
                dw[i] += dy[i] * z[i] * sigmoid(z[i]) * x[i] * r;
            }
        }
        f32_tensor(dw, &[d])
    });
    (f32_tensor(dx, &shape), f32_tensor(dz, &shape), dw)
}

#[derive(Debug)]
struct GatedRmsNormBackward;

impl Backward<Flex, 3> for GatedRmsNormBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_z, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, z, w, eps) = ops.state;
        let (dx, dz, dw) = backward(&x, &z, &w, eps, &dy, node_w.is_some());
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_z {
            grads.register::<Flex>(node.id, dz);
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

impl<C: CheckpointStrategy> GatedRmsNormBackend for Autodiff<Flex, C> {
    fn gated_rms_norm(
        x: FloatTensor<Self>,
        z: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match GatedRmsNormBackward.prepare::<C>([x.node(), z.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, z, w) = (x.into_primitive(), z.into_primitive(), weight.into_primitive());
                let y = forward(&x, &z, &w, eps);
                prep.finish((x, z, w, eps), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(&x.into_primitive(), &z.into_primitive(), &weight.into_primitive(), eps))
            }
        }
    }
}
