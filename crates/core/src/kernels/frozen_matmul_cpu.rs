//! The frozen matmul's products on burn-flex in f32 (the stored f32 weight, or its blocks upcast or
//! dequantized), written straight into their output by the `gemm` crate: burn-flex allocates each
//! matmul output as bytes and then copies it into a re-aligned allocation (`Bytes::from_bytes_vec`),
//! which for a 152k-vocabulary head is 0.27 GB written twice per chunk of the loss, every page
//! faulted in fresh; it also keeps products below 192³ multiply-adds on one thread.
//!
//! The plain reference is burn's matmul in [`crate::kernels::frozen_matmul`], the path of every other case;
//! the frozen-matmul test compares both on f32, bf16 and NF4 weights, in one block and in several.

use std::any::Any;

use burn::backend::Backend;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::tensor::DType;

use crate::kernels::cpu_kernel::{Unwritten, f32_tensor, f32_values, gemm_f32};

/// The burn-flex tensor behind a backend primitive, when it is one and holds f32 (and the plain
/// path is not asked for).
fn flex_f32<B: Backend>(t: &FloatTensor<B>) -> Option<&FlexTensor> {
    if crate::kernels::cpu_kernel::reference_kernels() {
        return None;
    }
    (t as &dyn Any).downcast_ref::<FlexTensor>().filter(|t| t.dtype() == DType::F32 && t.layout().num_dims() == 2)
}

/// A burn-flex tensor as the primitive of `B` (which is burn-flex: `flex_f32` returned a tensor).
fn to_primitive<B: Backend>(t: FlexTensor) -> FloatTensor<B> {
    *(Box::new(t) as Box<dyn Any>).downcast::<FloatTensor<B>>().expect("B is burn-flex")
}

/// x·Wᵀ with W materialised a block of rows at a time (`block(r0, r1)`, f32; one block for a weight
/// stored in f32), each block's product written by `gemm` straight into its columns of the one
/// output: no per-block outputs to concatenate (for a 152k-vocabulary head in bf16 or NF4, nine 38 MB
/// products and a 155 MB copy per chunk of the loss). Each element is the same product as in a
/// block's own output, so the same bits. None when x is not f32 on burn-flex (checked before any
/// block is made), or a block is not.
///
/// # Shapes
/// - x: `[n, in]`, blocks: row ranges covering `0..out`, each block `[r1 - r0, in]`
/// - output: `[n, out]`
pub(crate) fn matmul_nt_blocks<B: Backend>(
    x: &FloatTensor<B>,
    out: usize,
    blocks: &[(usize, usize)],
    mut block: impl FnMut(usize, usize) -> FloatTensor<B>,
) -> Option<FloatTensor<B>> {
    let xf = flex_f32::<B>(x)?;
    let [n, k] = dims(xf);
    let xs = f32_values(xf);
    let mut y = Unwritten::new(n * out);
    for &(r0, r1) in blocks {
        let b = block(r0, r1);
        let bf = flex_f32::<B>(&b)?;
        if dims(bf) != [r1 - r0, k] {
            return None;
        }
        let ws = f32_values(bf);
        // SAFETY: columns r0..r1 of y (row stride out) and a contiguous [r1 - r0, k] block.
        unsafe {
            gemm_f32(
                [n, r1 - r0, k],
                (y.ptr().add(r0), out, 1),
                (xs.as_ptr(), k, 1),
                (ws.as_ptr(), 1, k),
                false,
                1.0,
                true,
            )
        };
    }
    debug_assert_eq!(blocks.iter().map(|(a, b)| b - a).sum::<usize>(), out);
    // SAFETY: the blocks cover every column of y.
    let y = unsafe { y.assume_written() };
    Some(to_primitive::<B>(f32_tensor(y, &[n, out])))
}

/// g[:, r0..r1]·W_block (all of g for a weight in one block), g read in place with its row stride:
/// no sliced copy of g's columns (for a 152k-vocabulary head in bf16 or NF4, nine 38 MB copies per
/// chunk of the loss). The same product as on a copy, so the same bits. None when either is not f32
/// on burn-flex or the shapes do not chain.
///
/// # Shapes
/// - g: `[n, out]`, block: `[r1 - r0, in]`
/// - output: `[n, in]`
pub(crate) fn matmul_nn_columns<B: Backend>(
    g: &FloatTensor<B>,
    r0: usize,
    r1: usize,
    block: &FloatTensor<B>,
) -> Option<FloatTensor<B>> {
    let (gf, bf) = (flex_f32::<B>(g)?, flex_f32::<B>(block)?);
    let ([n, out], [rows, d_in]) = (dims(gf), dims(bf));
    if r1 > out || rows != r1 - r0 {
        return None;
    }
    let (gs, ws) = (f32_values(gf), f32_values(bf));
    let mut y = Unwritten::new(n * d_in);
    // SAFETY: columns r0..r1 of the [n, out] g (row stride out), a contiguous block; y written whole.
    let y = unsafe {
        gemm_f32(
            [n, d_in, rows],
            (y.ptr(), d_in, 1),
            (gs.as_ptr().add(r0), out, 1),
            (ws.as_ptr(), d_in, 1),
            false,
            1.0,
            true,
        );
        y.assume_written()
    };
    Some(to_primitive::<B>(f32_tensor(y, &[n, d_in])))
}

fn dims(t: &FlexTensor) -> [usize; 2] {
    let s = t.layout().shape();
    [s[0], s[1]]
}

/// Rows `r0..r1` of a bf16 / f16 weight on burn-flex, upcast to f32 over the threads (burn-flex's
/// cast runs on one: 6% of a bf16 0.5B-shape step, where every block is upcast three times).
///
/// # Shapes
/// - w: `[out, in]`
/// - output: `[r1 - r0, in]`
pub(crate) fn upcast_rows<B: Backend>(w: &FloatTensor<B>, r0: usize, r1: usize) -> Option<FloatTensor<B>> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    if crate::kernels::cpu_kernel::reference_kernels() {
        return None;
    }
    let wf = (w as &dyn Any).downcast_ref::<FlexTensor>()?;
    // An f32 weight needs no upcast: refuse before allocating room for one.
    if !matches!(wf.dtype(), DType::BF16 | DType::F16) {
        return None;
    }
    let [_, d_in] = dims(wf);
    let (start, _) = wf.layout().contiguous_offsets()?;
    let range = start + r0 * d_in..start + r1 * d_in;
    let mut out = vec![0.0f32; range.len()];
    const CHUNK: usize = 1 << 16;
    match wf.dtype() {
        DType::BF16 => {
            let src = &wf.storage::<half::bf16>()[range];
            out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o));
        }
        DType::F16 => {
            let src = &wf.storage::<half::f16>()[range];
            out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o));
        }
        _ => return None,
    }
    Some(to_primitive::<B>(f32_tensor(out, &[r1 - r0, d_in])))
}
