//! The Gated DeltaNet's causal depthwise convolution with SiLU: output τ of channel c is
//! `silu(Σ_j w[c, j] · x[τ − (K − 1) + j, c])`, inputs before the first taken from a window (the
//! cached last K − 1 inputs when decoding, zeros otherwise).
//!
//! [`plain`] is the reference, burn operations (K shifted products), and what the GPUs and cached
//! prompts run. [`causal_conv_silu`] is the same from a zero window as one CPU kernel with its own
//! backward: burn-flex runs the composition's slices, products and SiLU one at a time on one thread,
//! and autodiff keeps each of them for the backward; this keeps only the input and recomputes the
//! convolution in the backward:
//!
//! ```text
//! z[τ, c] = Σ_j w[c, j] · x[τ − K + 1 + j, c],   y = silu(z)
//! dz = dy · σ(z) · (1 + z · (1 − σ(z)))
//! dx[τ, c] = Σ_j w[c, j] · dz[τ + K − 1 − j, c]    dw[c, j] = Σ_τ x[τ − K + 1 + j, c] · dz[τ, c]
//! ```
//!
//! Every sum runs in a fixed order, so the results do not depend on the thread count.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use rayon::prelude::*;

use crate::kernels::cpu_kernel::{exp_f32, f32_tensor, f32_values};

/// The reference: the convolution over `window` (`[batch, K − 1, channels]`; zeros when `None`)
/// followed by `x`, and SiLU. Returns the output and the last K − 1 inputs (the next window).
///
/// # Shapes
/// - x: `[batch, seq, channels]`
/// - weight: `[channels, K]`
/// - outputs: `[batch, seq, channels]`, `[batch, K − 1, channels]`
pub fn plain(x: Tensor<3>, weight: Tensor<2>, window: Option<Tensor<3>>) -> (Tensor<3>, Tensor<3>) {
    let [b, t, c] = x.dims();
    let kern = weight.dims()[1];
    let window = window.unwrap_or_else(|| Tensor::zeros([b, kern - 1, c], &x.device()));
    let full = Tensor::cat(vec![window, x], 1); // [b, K − 1 + t, c]
    let tap = |j: usize| weight.clone().slice([0..c, j..j + 1]).reshape([1, 1, c]);
    let mut conv = full.clone().slice([0..b, 0..t, 0..c]) * tap(0);
    for j in 1..kern {
        conv = conv + full.clone().slice([0..b, j..j + t, 0..c]) * tap(j);
    }
    (silu(conv), full.slice([0..b, t..t + kern - 1, 0..c]))
}

/// The fused convolution, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait CausalConvBackend: Backend {
    /// `silu(causal depthwise conv(x))` from a zero window.
    ///
    /// # Shapes
    /// - x: `[batch, seq, channels]`
    /// - weight: `[channels, K]`
    /// - output: `[batch, seq, channels]`
    fn causal_conv_silu(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    channels: usize,
    kern: usize,
}

impl Dims {
    fn of(x: &FlexTensor, w: &FlexTensor) -> Self {
        let (xs, ws) = (x.layout().shape(), w.layout().shape());
        Self { batch: xs[0], seq: xs[1], channels: xs[2], kern: ws[1] }
    }
}

/// `z` for output row `row` (`batch · seq + τ`): the fixed-order sum over the taps.
fn conv_row(d: Dims, x: &[f32], w: &[f32], row: usize, z: &mut [f32]) {
    let (b, tau) = (row / d.seq, row % d.seq);
    z.fill(0.0);
    for j in 0..d.kern {
        // Input τ − (K − 1) + j; before the sequence, the zero window.
        let Some(src) = (tau + j).checked_sub(d.kern - 1) else { continue };
        let xr = &x[(b * d.seq + src) * d.channels..][..d.channels];
        for (c, (z, &xv)) in z.iter_mut().zip(xr).enumerate() {
            *z += w[c * d.kern + j] * xv;
        }
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

/// Each output row (`batch · seq + τ`, `[channels]`, after SiLU) handed to `f` in turn, in
/// parallel, from a per-thread buffer: for a caller that splits the rows without holding them all.
pub(crate) fn for_each_row(x: &FlexTensor, w: &FlexTensor, f: impl Fn(usize, &[f32]) + Sync) {
    let d = Dims::of(x, w);
    let (xv, wv) = (f32_values(x), f32_values(w));
    (0..d.batch * d.seq).into_par_iter().for_each_init(
        || vec![0.0f32; d.channels],
        |y, row| {
            conv_row(d, &xv, &wv, row, y);
            for z in y.iter_mut() {
                *z *= sigmoid(*z);
            }
            f(row, y);
        },
    );
}

pub(crate) fn forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let d = Dims::of(x, w);
    let (xv, wv) = (f32_values(x), f32_values(w));
    let mut y = vec![0.0f32; d.batch * d.seq * d.channels];
    y.par_chunks_mut(d.channels).enumerate().for_each(|(row, y)| {
        conv_row(d, &xv, &wv, row, y);
        for z in y.iter_mut() {
            *z *= sigmoid(*z);
        }
    });
    f32_tensor(y, &[d.batch, d.seq, d.channels])
}

/// The gradients of x and, when `weight_grad`, of the weight, from the output's gradient `dy`
/// (`[batch, seq, channels]` row-major), which is overwritten with the pre-SiLU gradient dz. x's is
/// written into `dx` (zeros, dy's size; the caller allocates it, so that it can do so before its
/// own scratch buffers).
pub(crate) fn backward(
    x: &FlexTensor,
    w: &FlexTensor,
    dy: &mut [f32],
    mut dx: Vec<f32>,
    weight_grad: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let d = Dims::of(x, w);
    let (xv, wv) = (f32_values(x), f32_values(w));
    // dz, row by row in dy's place (the convolution recomputed).
    dy.par_chunks_mut(d.channels).enumerate().for_each_init(
        || vec![0.0f32; d.channels],
        |z, (row, dy)| {
            conv_row(d, &xv, &wv, row, z);
            for (g, &z) in dy.iter_mut().zip(z.iter()) {
                let s = sigmoid(z);
                *g = *g * s * (1.0 + z * (1.0 - s));
            }
        },
    );
    let dz: &[f32] = dy;
    // dx[τ] = Σ_j w[·, j] · dz[τ + K − 1 − j], within the sequence.
    dx.par_chunks_mut(d.channels).enumerate().for_each(|(row, dx)| {
        let (b, tau) = (row / d.seq, row % d.seq);
        for j in 0..d.kern {
            let out = tau + d.kern - 1 - j;
            if out >= d.seq {
                continue;
            }
            let g = &dz[(b * d.seq + out) * d.channels..][..d.channels];
            for (c, (dx, &g)) in dx.iter_mut().zip(g).enumerate() {
                *dx += wv[c * d.kern + j] * g;
            }
        }
    });
    let dw = weight_grad.then(|| {
        // dw[c, j] = Σ over batch and τ of x[τ − K + 1 + j, c] · dz[τ, c], each channel on its own.
        let mut dw = vec![0.0f32; d.channels * d.kern];
        dw.par_chunks_mut(d.kern).enumerate().for_each(|(c, dw)| {
            for (j, dw) in dw.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for b in 0..d.batch {
                    for tau in (d.kern - 1 - j)..d.seq {
                        let src = tau + j + 1 - d.kern;
                        acc += xv[(b * d.seq + src) * d.channels + c] * dz[(b * d.seq + tau) * d.channels + c];
                    }
                }
                *dw = acc;
            }
        });
        f32_tensor(dw, &[d.channels, d.kern])
    });
    (f32_tensor(dx, &[d.batch, d.seq, d.channels]), dw)
}

impl CausalConvBackend for Flex {
    fn causal_conv_silu(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        forward(&x, &weight)
    }
}

#[derive(Debug)]
struct CausalConvBackward;

impl Backward<Flex, 2> for CausalConvBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w) = &ops.state;
        let [x_node, w_node] = ops.parents;
        let mut dy = dy.into_data();
        let dy = dy.as_mut_slice::<f32>().expect("the fused convolution runs in f32");
        let dx = vec![0.0f32; dy.len()];
        let (dx, dw) = backward(x, w, dy, dx, w_node.is_some());
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (w_node, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

impl<C: CheckpointStrategy> CausalConvBackend for Autodiff<Flex, C> {
    fn causal_conv_silu(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node()];
        match CausalConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), weight.into_primitive());
                let y = forward(&x, &w);
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x.into_primitive(), &weight.into_primitive())),
        }
    }
}

/// [`plain`] from a zero window, on burn-flex in f32 (the caller checks
/// [`crate::kernels::cpu_kernel::use_fused`]).
///
/// # Shapes
/// - x: `[batch, seq, channels]`
/// - weight: `[channels, K]`
/// - output: `[batch, seq, channels]`
pub fn causal_conv_silu(x: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as CausalConvBackend>::causal_conv_silu(x.into_dispatch(), weight.into_dispatch()))
}
