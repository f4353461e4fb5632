//! RMSNorm as one CPU kernel with a hand-written backward.
//!
//! burn composes the norm from a square, a mean, a sqrt, a division and a product, keeping each
//! result under autodiff and running each pass on one thread. Here a row is normed in one pass (rows
//! in parallel) and the backward needs only x and the weight.
//!
//! Math, per row of width d, with r = 1/√(mean(x²) + eps), x̂ = x·r, g = ∂L/∂y · w:
//! y = x̂·w,  ∂L/∂x = r·(g − x̂·mean(g·x̂)),  ∂L/∂w = Σ_rows ∂L/∂y · x̂.
//! transformers computes `x * rsqrt(var + eps)` as here.
//!
//! The plain reference is [`crate::network::norm::RmsNorm::forward_reference`]; the tests compare values and
//! gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::kernels::cpu_kernel::{Unwritten, dot_f32, f32_tensor, f32_values, multiversion};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// The fused norm, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait RmsNormBackend: Backend {
    /// x / √(mean(x²) + eps) · weight over the last dimension.
    ///
    /// # Shapes
    /// - x: `[..., d]`, weight: `[d]`
    /// - output: `[..., d]`
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
}

impl RmsNormBackend for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        forward(&x, &weight, eps)
    }
}

multiversion! {
    fn norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
        let d = w.len();
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let r = 1.0 / (dot_f32(x, x) / d as f32 + eps).sqrt();
            for i in 0..d {
                y[i].write(x[i] * r * w[i]);
            }
        }
    }
}

multiversion! {
    fn norm_rows_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        let d = w.len();
        for ((x, dy), dx) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let r = 1.0 / (dot_f32(x, x) / d as f32 + eps).sqrt();
            // mean(g·x̂) = r · Σ dy·w·x / d
            let m = crate::kernels::cpu_kernel::dot3_f32(dy, w, x) * r / d as f32;
            for i in 0..d {
                dx[i].write(r * (dy[i] * w[i] - x[i] * r * m));
            }
        }
    }
}

fn forward(x: &FlexTensor, weight: &FlexTensor, eps: f64) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let (xs, w) = (f32_values(x), f32_values(weight));
    let d = w.len();
    let mut y = Unwritten::new(xs.len());
    y.slots().par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, y)| {
        let start = c * ROWS_PER_TASK * d;
        norm_rows(&xs[start..start + y.len()], &w, eps as f32, y);
    });
    // SAFETY: the chunks are whole rows covering y, each value written.
    f32_tensor(unsafe { y.assume_written() }, &shape)
}

/// ∂L/∂x, and ∂L/∂w when asked (rows summed in order, on one thread: the norm's weight is frozen in
/// LoRA training, so this is rarely needed).
fn backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    eps: f64,
    dy: &FlexTensor,
    want_dw: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = x.layout().shape().to_vec();
    let (xs, w, dys) = (f32_values(x), f32_values(weight), f32_values(dy));
    let d = w.len();
    let mut dx = Unwritten::new(xs.len());
    dx.slots().par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, dx)| {
        let (start, end) = (c * ROWS_PER_TASK * d, c * ROWS_PER_TASK * d + dx.len());
        norm_rows_backward(&xs[start..end], &w, eps as f32, &dys[start..end], dx);
    });
    // SAFETY: the chunks are whole rows covering dx, each value written.
    let dx = unsafe { dx.assume_written() };
    let dw = want_dw.then(|| {
        let mut dw = vec![0.0f32; d];
        for (x, dy) in xs.chunks_exact(d).zip(dys.chunks_exact(d)) {
            let r = 1.0 / (dot_f32(x, x) / d as f32 + eps as f32).sqrt();
            for i in 0..d {
                dw[i] += dy[i] * x[i] * r;
            }
        }
        f32_tensor(dw, &[d])
    });
    (f32_tensor(dx, &shape), dw)
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w, eps) = ops.state;
        let (dx, dw) = backward(&x, &w, eps, &dy, node_w.is_some());
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

impl<C: CheckpointStrategy> RmsNormBackend for Autodiff<Flex, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        match RmsNormBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), weight.into_primitive());
                let y = forward(&x, &w, eps);
                prep.finish((x, w, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x.into_primitive(), &weight.into_primitive(), eps)),
        }
    }
}
