//! An NF4 weight held on the compute device (a GPU) and dequantized there, a block of rows at a
//! time, by tensor operations: the packed codes never leave the device.
//!
//! Why: the host-side NF4 (`lora_formats::nf4::Nf4Tensor`) is dequantized by the CPU and the f32 rows
//! uploaded for every product, forward and backward: for an 8B model that is 32 GB over PCIe per
//! pass, on a machine whose GPU would finish the products in a fraction of that time.
//!
//! Layout: eight 4-bit codes per 32-bit word, value `8j + k` of the flattened weight in bits
//! `4k..4k + 4` of word j (the last word padded), and one f32 scale per block of
//! 64 values: 0.5625 bytes per value. A double-quantized tensor's scales are decoded to f32 when it
//! is uploaded (bitsandbytes' `DYNAMIC[q] · absmax2 + offset`, the same f32 values the host path
//! uses), so it takes 0.5625 bytes per value on the device too, not 0.508.
//!
//! Dequantization is `CODE[code] · scale` in f32, the host path's product: the values are the same
//! bits (the tests compare them with `Nf4Tensor::dequantize`).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, Slice, TensorMetadata};
use burn::tensor::{DType, Device, Int, Shape, Tensor, TensorCreationOptions, TensorData};
use lora_formats::nf4::{BLOCK, CODE, Nf4Tensor};
use rayon::prelude::*;

/// Codes per word.
const PER_WORD: usize = 8;

/// An NF4 weight `[out, in]` on a device.
#[derive(Debug, Clone)]
pub struct DeviceNf4 {
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// The codes, eight per word: `[ceil(out · in / 8)]`, i32.
    pub words: Tensor<1, Int>,
    /// One f32 scale per block of 64 values: `[ceil(out · in / 64)]`.
    pub absmax: Tensor<1>,
}

impl DeviceNf4 {
    /// Uploads a host NF4 tensor of two dimensions to `device`.
    pub fn upload(q: &Nf4Tensor, device: &Device) -> Self {
        // Word j is bytes 4j..4j + 4 of the packing with each byte's nibbles swapped: a byte holds
        // value 2i in its high nibble, a word value 8j + k in bits 4k.. (little-endian, so a byte's
        // first value lands in its lower nibble). Past the last byte: code 7 (zero). Padding is
        // never read: dequantize_rows slices it away.
        let words: Vec<i32> = q
            .packed
            .par_chunks(PER_WORD / 2)
            .map(|bytes| {
                let mut b = [0x77u8; PER_WORD / 2];
                for (o, &byte) in b.iter_mut().zip(bytes) {
                    *o = byte.rotate_left(4);
                }
                i32::from_le_bytes(b) // the bits, unchanged
            })
            .collect();
        let count = words.len();
        let words = Tensor::<1, Int>::from_data(
            TensorData::new(words, [count]),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::I32),
        );
        let scales = q.absmax.decode();
        let blocks = scales.len();
        let absmax = Tensor::<1>::from_data(TensorData::new(scales, [blocks]), device);
        Self { shape: [q.shape[0], q.shape[1]], words, absmax }
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        self.words.dims()[0] * 4 + self.absmax.dims()[0] * 4
    }

    /// The whole weight, dequantized, in f32: `[out, in]`.
    pub fn to_f32(&self) -> Tensor<2> {
        let rows = dequantize_rows::<Dispatch>(
            &self.words.clone().into_dispatch(),
            &self.absmax.clone().into_dispatch(),
            self.shape[1],
            0,
            self.shape[0],
        );
        Tensor::from_dispatch(rows)
    }
}

/// Rows `r0..r1` of an NF4 weight of `d_in` columns, dequantized on the device: `[r1 - r0, d_in]` f32.
///
/// # Shapes
/// - words: `[ceil(values / 8)]`, absmax: `[ceil(values / 64)]`
pub fn dequantize_rows<B: Backend>(
    words: &IntTensor<B>,
    absmax: &FloatTensor<B>,
    d_in: usize,
    r0: usize,
    r1: usize,
) -> FloatTensor<B> {
    let device = absmax.device();
    let (start, end) = (r0 * d_in, r1 * d_in);
    // Whole words covering the rows, and whole scale blocks covering the words.
    let (w0, w1) = (start / PER_WORD, end.div_ceil(PER_WORD));
    let nw = w1 - w0;
    let (v0, v1) = (w0 * PER_WORD, w1 * PER_WORD);
    let (b0, b1) = (v0 / BLOCK, v1.div_ceil(BLOCK));
    let nb = b1 - b0;

    let w = B::int_reshape(B::int_slice(words.clone(), &[Slice::from(w0..w1)]), Shape::new([nw, 1]));
    let w = B::int_expand(w, Shape::new([nw, PER_WORD])); // [nw, 8]
    let shifts: Vec<i32> = (0..PER_WORD as i32).map(|k| 4 * k).collect();
    let shifts = B::int_from_data(TensorData::new(shifts, [1, PER_WORD]), &device);
    let shifts = B::int_expand(B::int_cast(shifts, w.dtype().into()), Shape::new([nw, PER_WORD]));
    // An arithmetic shift of the top code drags the sign bit along; the mask drops it.
    let codes = B::bitwise_and_scalar(B::bitwise_right_shift(w, shifts), 0x0F.into()); // [nw, 8]
    // Indices in the device's own int dtype, the one burn's gathers are built and tested with.
    let int_dtype = burn::backend::get_or_init_device_settings::<B>(&device).int_dtype;
    let codes = B::int_cast(B::int_reshape(codes, Shape::new([nw * PER_WORD])), int_dtype);
    let table = B::float_from_data(TensorData::new(CODE.to_vec(), [CODE.len()]), &device);
    let values = B::float_select(table, 0, codes); // [v1 - v0]

    let scales = B::float_reshape(B::float_slice(absmax.clone(), &[Slice::from(b0..b1)]), Shape::new([nb, 1]));
    let scales = B::float_reshape(B::float_expand(scales, Shape::new([nb, BLOCK])), Shape::new([nb * BLOCK]));
    let scales = B::float_slice(scales, &[Slice::from(v0 - b0 * BLOCK..v1 - b0 * BLOCK)]); // [v1 - v0]
    let values = B::float_slice(B::float_mul(values, scales), &[Slice::from(start - v0..end - v0)]);
    B::float_reshape(values, Shape::new([r1 - r0, d_in]))
}
