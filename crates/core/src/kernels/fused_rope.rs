//! Rotary position embeddings (Hugging Face's rotate-half layout) as one CPU kernel with a
//! hand-written backward, on heads laid out as the projections give them, `[batch, seq, heads,
//! head_dim]`, so that no transposed copy is made before or after.
//!
//! Math, per head with halves x = [x1, x2] and tables c, s (both halves of a table hold the same
//! angles): y = x·c + rot(x)·s with rot(x) = [−x2, x1]; rot is orthogonal, so
//! ∂L/∂x = ∂L/∂y·c + rotᵀ(∂L/∂y·s) with rotᵀ(z) = [z2, −z1].
//!
//! The plain reference is [`crate::network::rope::apply_rope`] on `[batch, heads, seq, head_dim]`; the tests
//! compare values and gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::kernels::cpu_kernel::{Unwritten, f32_tensor, f32_values, multiversion, use_fused};

/// The fused rotation, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait RopeBackend: Backend {
    /// Rotates every head of x by the tables of its position.
    ///
    /// # Shapes
    /// - x: `[batch, seq, heads, head_dim]`
    /// - cos, sin: `[batch, 1, seq, head_dim]`
    /// - output: `[batch, seq, heads, head_dim]`
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl RopeBackend for Flex {
    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        rotate(&x, &cos, &sin, false)
    }
}

multiversion! {
    /// One position: `heads` heads of x (`[heads, hd]`) rotated by its tables (`[hd]`), forward or
    /// transposed (backward).
    fn rotate_position(x: &[f32], c: &[f32], s: &[f32], transposed: bool, y: &mut [MaybeUninit<f32>]) {
        let hd = c.len();
        let half = hd / 2;
        for (x, y) in x.chunks_exact(hd).zip(y.chunks_exact_mut(hd)) {
            if transposed {
                for i in 0..half {
                    y[i].write(x[i] * c[i] + x[i + half] * s[i + half]);
                    y[i + half].write(x[i + half] * c[i + half] - x[i] * s[i]);
                }
            } else {
                for i in 0..half {
                    y[i].write(x[i] * c[i] + -x[i + half] * s[i]);
                    y[i + half].write(x[i + half] * c[i + half] + x[i] * s[i + half]);
                }
            }
        }
    }
}

/// y = rope(x), or rotᵀ applied to a gradient when `transposed`.
fn rotate(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, transposed: bool) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let [_, _, heads, hd] = [shape[0], shape[1], shape[2], shape[3]];
    let (xs, c, s) = (f32_values(x), f32_values(cos), f32_values(sin));
    let mut y = Unwritten::new(xs.len());
    // One task per position of one row: cos/sin row p (of b·t) applies to x's rows p·heads..
    y.slots().par_chunks_mut(heads * hd).enumerate().for_each(|(p, y)| {
        let x = &xs[p * heads * hd..(p + 1) * heads * hd];
        rotate_position(x, &c[p * hd..(p + 1) * hd], &s[p * hd..(p + 1) * hd], transposed, y);
    });
    // SAFETY: every head of every position is written (head_dim is even: both halves are).
    f32_tensor(unsafe { y.assume_written() }, &shape)
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let (cos, sin) = ops.state;
            grads.register::<Flex>(node.id, rotate(&dy, &cos, &sin, true));
        }
    }
}

impl<C: CheckpointStrategy> RopeBackend for Autodiff<Flex, C> {
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        // The tables are constants: only x is a parent.
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RopeBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = rotate(&x.into_primitive(), &cos, &sin, false);
                prep.finish((cos, sin), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(rotate(&x.into_primitive(), &cos, &sin, false)),
        }
    }
}

/// Rotary embeddings on `[batch, seq, heads, head_dim]`: the fused kernel on the CPU in f32, burn's
/// composition (through the `[batch, heads, seq, head_dim]` view) elsewhere.
///
/// # Shapes
/// - x: `[batch, seq, heads, head_dim]`
/// - cos, sin: `[batch, 1, seq, head_dim]`
/// - output: `[batch, seq, heads, head_dim]`
pub fn rope_bthd(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, t, _, hd] = x.dims();
    if use_fused(&x) && cos.dims() == [b, 1, t, hd] && hd % 2 == 0 {
        let y = <Dispatch as RopeBackend>::rope(
            x.into_dispatch(),
            cos.clone().into_dispatch(),
            sin.clone().into_dispatch(),
        );
        Tensor::from_dispatch(y)
    } else {
        crate::network::rope::apply_rope(x.swap_dims(1, 2), cos, sin).swap_dims(1, 2)
    }
}
