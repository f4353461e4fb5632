//! y = x · Wᵀ for a frozen weight held in bf16 / f16 or packed as NF4: a custom autodiff operation
//! whose backward materialises W again instead of keeping an f32 copy of it alive.
//!
//! Math: y = x·Wᵀ, so ∂L/∂x = ∂L/∂y · W, and W (frozen) gets no gradient. burn's own matmul under
//! autodiff keeps its operands until backward; with a weight upcast or dequantized for the call,
//! that would keep an f32 copy of every layer of the base for the whole step — the f32 model again
//! (burn's `apply_qlora` documents the same for its quantized tensors). Here the saved state is the
//! stored weight itself (a handle: the bf16 tensor, or the packed NF4 bytes), and the f32 values
//! exist only inside the call, a block of rows at a time: at most [`BLOCK_VALUES`] values, so even a
//! 128k-vocabulary head never exists in f32 whole. Nothing of x is saved: W alone gives ∂L/∂x.
//!
//! With a compute dtype (bf16 for a bf16 base on a GPU: `LoadOptions::compute_dtype`), x and ∂L/∂y
//! are rounded to it going in, the products run in it (tensor cores, f32 accumulation) and come
//! back in x's dtype, as torch's autocast does for a linear layer.
//!
//! The plain reference is `x.matmul(W.to_f32().transpose())`; the tests check values and
//! gradients against it, and the compute dtype's products against the same products in bf16.
//! Every base weight goes through here, f32 included: saving nothing of x also makes the f32 path
//! lighter than burn's own matmul under autodiff.

// burn-ndarray (the `ndarray` feature, kept for benchmarks) is deprecated in burn 0.22; the extension
// still routes to it so that that feature keeps working.
#![allow(deprecated)]

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, Slice, TensorMetadata, backend_extension};
use burn::tensor::{FloatDType, Tensor, TensorData};
use lora_formats::nf4::Nf4Tensor;

use crate::network::base_weight::BaseWeight;

/// Largest block of W materialised in f32 at once (16 Mi values, 64 MiB). A block is a set of whole
/// rows; a matrix smaller than this is materialised in one piece, which keeps the result equal to a
/// single matmul.
pub const BLOCK_VALUES: usize = 16 << 20;

/// The frozen-weight matmul, implemented for the backends lora runs on.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Cube: cfg(any(feature = "cuda", feature = "wgpu")), Autodiff)]
pub trait FrozenMatmulBackend: Backend {
    /// x · cast(w)ᵀ with `w` a dense constant of any float dtype, the product computed in `compute`
    /// (x's dtype when `None`) and returned in x's dtype.
    ///
    /// # Shapes
    /// - x: `[n, in]`, w: `[out, in]`
    /// - output: `[n, out]`
    fn frozen_dense_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        block: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        let source = Source::Dense(w, block);
        forward::<Self>(x, &source, compute)
    }

    /// x · dequant(w)ᵀ with `w` packed as NF4 on the device (`words`, `absmax`: see
    /// [`crate::quant::nf4_device`]), computed as for a dense weight.
    ///
    /// # Shapes
    /// - x: `[n, in]`, the weight: `shape` = `[out, in]`
    /// - output: `[n, out]`
    fn frozen_nf4_device_matmul(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        shape: [usize; 2],
        block: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        let source = Source::Nf4Device { words, absmax, shape, block };
        forward::<Self>(x, &source, compute)
    }

    /// x · dequant(w)ᵀ with `w` packed as NF4 on the host, computed as for a dense weight.
    ///
    /// # Shapes
    /// - x: `[n, in]`, w: `[out, in]`
    /// - output: `[n, out]`
    fn frozen_nf4_matmul(
        x: FloatTensor<Self>,
        w: Arc<Nf4Tensor>,
        block: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        let source = Source::Nf4(w, block);
        forward::<Self>(x, &source, compute)
    }
}

impl FrozenMatmulBackend for Flex {}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FrozenMatmulBackend for burn::backend::NdArray {}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl FrozenMatmulBackend for burn::backend::Cube {}

/// A frozen weight on backend `B`, with the most values to materialise at once.
#[derive(Debug, Clone)]
enum Source<B: Backend> {
    Dense(FloatTensor<B>, usize),
    Nf4(Arc<Nf4Tensor>, usize),
    Nf4Device { words: IntTensor<B>, absmax: FloatTensor<B>, shape: [usize; 2], block: usize },
}

impl<B: Backend> Source<B> {
    fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w, _) => {
                let s = w.shape();
                [s[0], s[1]]
            }
            Self::Nf4(q, _) => [q.shape[0], q.shape[1]],
            Self::Nf4Device { shape, .. } => *shape,
        }
    }

    /// Rows `r0..r1` of W in `dtype` on `device`: `[r1 - r0, in]`.
    fn rows(&self, r0: usize, r1: usize, dtype: FloatDType, device: &B::Device) -> FloatTensor<B> {
        let [out, d_in] = self.dims();
        match self {
            Self::Dense(w, _) => {
                if dtype == FloatDType::F32
                    && let Some(block) = crate::kernels::frozen_matmul_cpu::upcast_rows::<B>(w, r0, r1)
                {
                    return block;
                }
                let block = if r0 == 0 && r1 == out {
                    w.clone()
                } else {
                    B::float_slice(w.clone(), &[Slice::from(r0..r1), Slice::from(0..d_in)])
                };
                B::float_cast(block, dtype)
            }
            Self::Nf4(q, _) => {
                let mut values = vec![0.0f32; (r1 - r0) * d_in];
                q.dequantize_into(r0 * d_in, &mut values);
                let block = B::float_from_data(TensorData::new(values, [r1 - r0, d_in]), device);
                B::float_cast(block, dtype)
            }
            Self::Nf4Device { words, absmax, .. } => {
                B::float_cast(crate::quant::nf4_device::dequantize_rows::<B>(words, absmax, d_in, r0, r1), dtype)
            }
        }
    }

    /// Row ranges of at most the block's values each (at least one row). A dense weight already in
    /// the compute dtype is used as it is, in one piece: there is nothing to materialise, and
    /// splitting it would only copy the partial products together again (with a 152k-vocabulary head,
    /// 0.27 GB per chunk of the loss).
    fn blocks(&self, dtype: FloatDType) -> Vec<(usize, usize)> {
        let [out, d_in] = self.dims();
        if let Self::Dense(w, _) = self
            && burn::tensor::DType::from(dtype) == w.dtype()
        {
            return vec![(0, out)];
        }
        let (Self::Dense(_, block) | Self::Nf4(_, block) | Self::Nf4Device { block, .. }) = self;
        let per = (block / d_in.max(1)).max(1);
        (0..out).step_by(per).map(|r0| (r0, (r0 + per).min(out))).collect()
    }
}

/// y = x · Wᵀ in `compute`, returned in x's dtype: with f32 activations and `compute` bf16, a bf16
/// product on a GPU (tensor cores, f32 accumulation), as under torch's autocast.
fn forward<B: Backend>(x: FloatTensor<B>, w: &Source<B>, compute: Option<FloatDType>) -> FloatTensor<B> {
    let dtype: FloatDType = x.dtype().into();
    match compute {
        Some(c) if c != dtype => B::float_cast(forward_in_own_dtype::<B>(B::float_cast(x, c), w), dtype),
        _ => forward_in_own_dtype::<B>(x, w),
    }
}

/// y = x · Wᵀ in x's dtype.
fn forward_in_own_dtype<B: Backend>(x: FloatTensor<B>, w: &Source<B>) -> FloatTensor<B> {
    let dtype: FloatDType = x.dtype().into();
    let device = x.device();
    if w.dims()[0] == 0 {
        return B::float_zeros([x.shape()[0], 0].into(), &device, dtype);
    }
    // Each block (in the compute dtype: the stored f32 weight itself, or a block upcast or
    // dequantized) goes to the direct CPU product when it can (frozen_matmul_cpu.rs), all of them
    // into one output.
    let blocks = w.blocks(dtype);
    if let Some(y) = crate::kernels::frozen_matmul_cpu::matmul_nt_blocks::<B>(&x, w.dims()[0], &blocks, |r0, r1| {
        w.rows(r0, r1, dtype, &device)
    }) {
        return y;
    }
    let parts: Vec<FloatTensor<B>> = blocks
        .into_iter()
        .map(|(r0, r1)| B::float_matmul(x.clone(), B::float_transpose(w.rows(r0, r1, dtype, &device)))) // [n, rows]
        .collect();
    if parts.len() == 1 { parts.into_iter().next().expect("one block") } else { B::float_cat(parts, 1) }
}

/// ∂L/∂x = ∂L/∂y · W, each block's product in `compute` (∂L/∂y's dtype when `None`), summed over
/// the row blocks of W in ∂L/∂y's dtype (a bf16 sum of the blocks' partial products would round
/// each of them again).
fn input_grad<B: Backend>(grad: FloatTensor<B>, w: &Source<B>, compute: Option<FloatDType>) -> FloatTensor<B> {
    let acc_dtype: FloatDType = grad.dtype().into();
    let grad = match compute {
        Some(c) if c != acc_dtype => B::float_cast(grad, c),
        _ => grad,
    };
    let dtype: FloatDType = grad.dtype().into();
    let device = grad.device();
    let n = grad.shape()[0];
    let [out, d_in] = w.dims();
    if out == 0 {
        return B::float_zeros([n, d_in].into(), &device, acc_dtype);
    }
    let mut acc: Option<FloatTensor<B>> = None;
    for (r0, r1) in w.blocks(dtype) {
        let block = w.rows(r0, r1, dtype, &device); // [rows, in]
        // On the CPU, the block's columns of ∂L/∂y are read in place, not sliced out into a copy.
        let part =
            crate::kernels::frozen_matmul_cpu::matmul_nn_columns::<B>(&grad, r0, r1, &block).unwrap_or_else(|| {
                let g = if r0 == 0 && r1 == out {
                    grad.clone()
                } else {
                    B::float_slice(grad.clone(), &[Slice::from(0..n), Slice::from(r0..r1)])
                };
                B::float_matmul(g, block)
            }); // [n, in]
        let part = if dtype == acc_dtype { part } else { B::float_cast(part, acc_dtype) };
        acc = Some(match acc {
            Some(a) => B::float_add(a, part),
            None => part,
        });
    }
    acc.expect("a weight has at least one row")
}

#[derive(Debug)]
struct FrozenMatmulBackward;

impl<B: Backend> Backward<B, 1> for FrozenMatmulBackward {
    type State = (Source<B>, Option<FloatDType>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let (source, compute) = &ops.state;
            grads.register::<B>(node.id, input_grad::<B>(grad, source, *compute));
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> FrozenMatmulBackend for Autodiff<B, C> {
    fn frozen_dense_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        block: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        // The weight is a constant: its inner tensor is all the backward needs.
        let source = Source::<B>::Dense(w.into_primitive(), block);
        autodiff_forward::<B, C>(x, source, compute)
    }

    fn frozen_nf4_matmul(
        x: FloatTensor<Self>,
        w: Arc<Nf4Tensor>,
        block: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        autodiff_forward::<B, C>(x, Source::<B>::Nf4(w, block), compute)
    }

    fn frozen_nf4_device_matmul(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        shape: [usize; 2],
        block: usize,
        compute: Option<FloatDType>,
    ) -> FloatTensor<Self> {
        // Integer tensors have no autodiff wrapper; the scales are a constant.
        let source = Source::<B>::Nf4Device { words, absmax: absmax.into_primitive(), shape, block };
        autodiff_forward::<B, C>(x, source, compute)
    }
}

fn autodiff_forward<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    source: Source<B>,
    compute: Option<FloatDType>,
) -> FloatTensor<Autodiff<B, C>> {
    match FrozenMatmulBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let out = forward::<B>(x.into_primitive(), &source, compute);
            prep.finish((source, compute), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward::<B>(x.into_primitive(), &source, compute)),
    }
}

/// x · Wᵀ for a frozen weight, in x's dtype.
///
/// # Shapes
/// - x: `[n, in]`
/// - output: `[n, out]`
pub fn frozen_matmul(x: Tensor<2>, w: &BaseWeight) -> Tensor<2> {
    frozen_matmul_in(x, w, None, BLOCK_VALUES)
}

/// [`frozen_matmul`] materialising at most `block` values of W at once (whole rows, at least one).
pub fn frozen_matmul_blocked(x: Tensor<2>, w: &BaseWeight, block: usize) -> Tensor<2> {
    frozen_matmul_in(x, w, None, block)
}

/// [`frozen_matmul_blocked`] with the product (forward and backward) computed in `compute` and
/// returned in x's dtype.
pub fn frozen_matmul_in(x: Tensor<2>, w: &BaseWeight, compute: Option<FloatDType>, block: usize) -> Tensor<2> {
    let out = match w {
        BaseWeight::Dense(t) => <Dispatch as FrozenMatmulBackend>::frozen_dense_matmul(
            x.into_dispatch(),
            t.clone().into_dispatch(),
            block,
            compute,
        ),
        BaseWeight::Nf4(q) => {
            <Dispatch as FrozenMatmulBackend>::frozen_nf4_matmul(x.into_dispatch(), q.clone(), block, compute)
        }
        BaseWeight::Nf4Device(q) => <Dispatch as FrozenMatmulBackend>::frozen_nf4_device_matmul(
            x.into_dispatch(),
            q.words.clone().into_dispatch(),
            q.absmax.clone().into_dispatch(),
            q.shape,
            block,
            compute,
        ),
    };
    Tensor::from_dispatch(out)
}
