//! silu(gate) · up, the gating of the Llama MLP, as one CPU kernel with a hand-written backward.
//!
//! burn composes `silu(g) * u` from a sigmoid, two products and, under autodiff, keeps σ(g), silu(g)
//! and both inputs, then runs five elementwise passes on one thread in backward. Here: one parallel
//! pass forward, one backward, and only `gate` and `up` are kept.
//!
//! Math, with s = σ(g) = 1 / (1 + e^−g): y = g·s·u, ∂y/∂u = g·s, ∂y/∂g = u·s·(1 + g·(1 − s)).
//!
//! The plain reference is [`swiglu_reference`]; the tests compare values and gradients.

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

use std::mem::MaybeUninit;

use crate::kernels::cpu_kernel::{
    ELEMENTWISE_CHUNK, Unwritten, exp_f32, f32_tensor, f32_values, multiversion, use_fused,
};

/// The fused gating, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait SwigluBackend: Backend {
    /// silu(gate) · up.
    ///
    /// # Shapes
    /// - gate, up: any shape, the same
    /// - output: that shape
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl SwigluBackend for Flex {
    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        forward(&gate, &up)
    }
}

multiversion! {
    fn forward_chunk(g: &[f32], u: &[f32], y: &mut [MaybeUninit<f32>]) {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            y.write(g / (1.0 + exp_f32(-g)) * u);
        }
    }
}

multiversion! {
    fn backward_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]) {
        for i in 0..g.len() {
            let s = 1.0 / (1.0 + exp_f32(-g[i]));
            let silu = g[i] * s;
            du[i].write(dy[i] * silu);
            dg[i].write(dy[i] * u[i] * (s * (1.0 + g[i] * (1.0 - s))));
        }
    }
}

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let shape = gate.layout().shape().to_vec();
    let (g, u) = (f32_values(gate), f32_values(up));
    let mut y = Unwritten::new(g.len());
    y.slots().par_chunks_mut(ELEMENTWISE_CHUNK).enumerate().for_each(|(c, y)| {
        let r = c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + y.len();
        forward_chunk(&g[r.clone()], &u[r], y);
    });
    // SAFETY: the chunks cover y and the kernel writes each value of its chunk.
    f32_tensor(unsafe { y.assume_written() }, &shape)
}

fn backward(gate: &FlexTensor, up: &FlexTensor, dy: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let shape = gate.layout().shape().to_vec();
    let (g, u, dy) = (f32_values(gate), f32_values(up), f32_values(dy));
    let n = g.len();
    let (mut dg, mut du) = (Unwritten::new(n), Unwritten::new(n));
    dg.slots()
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(du.slots().par_chunks_mut(ELEMENTWISE_CHUNK))
        .enumerate()
        .for_each(|(c, (dg, du))| {
            let r = c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + dg.len();
            backward_chunk(&g[r.clone()], &u[r.clone()], &dy[r], dg, du);
        });
    // SAFETY: the chunks cover dg and du and the kernel writes each value of its chunk.
    let (dg, du) = unsafe { (dg.assume_written(), du.assume_written()) };
    (f32_tensor(dg, &shape), f32_tensor(du, &shape))
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_g, node_u] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (gate, up) = ops.state;
        let (dg, du) = backward(&gate, &up, &dy);
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, dg);
        }
        if let Some(node) = node_u {
            grads.register::<Flex>(node.id, du);
        }
    }
}

impl<C: CheckpointStrategy> SwigluBackend for Autodiff<Flex, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward.prepare::<C>([gate.node(), up.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (g, u) = (gate.into_primitive(), up.into_primitive());
                let y = forward(&g, &u);
                prep.finish((g, u), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&gate.into_primitive(), &up.into_primitive())),
        }
    }
}

/// silu(gate) · up: the fused kernel on the CPU in f32, burn's composition elsewhere.
///
/// # Shapes
/// - gate, up: `[..., inter]`
/// - output: `[..., inter]`
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if use_fused(&gate) && up.dtype() == gate.dtype() && gate.dims() == up.dims() {
        Tensor::from_dispatch(<Dispatch as SwigluBackend>::swiglu(gate.into_dispatch(), up.into_dispatch()))
    } else {
        swiglu_reference(gate, up)
    }
}

/// The plain composition: `silu(gate) * up`.
pub fn swiglu_reference<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    silu(gate) * up
}
