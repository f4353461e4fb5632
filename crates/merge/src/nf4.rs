//! NF4, the 4-bit NormalFloat storage of QLoRA (Dettmers et al., arXiv:2305.14314), exactly as
//! bitsandbytes stores it (`bitsandbytes.functional.quantize_4bit(W, blocksize=64, quant_type="nf4")`,
//! which is what transformers' `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` does
//! to every linear layer of the decoder).
//!
//! The tensor is flattened in row-major order and cut into blocks of 64 values. Each block keeps its
//! absolute maximum (`absmax`, f32); each value is divided by it (multiplied by its reciprocal, as
//! bitsandbytes does) and replaced by the index of the nearest of the 16 NF4 code values, two indices
//! per byte, the first value of a pair in the high nibble. Dequantization is `CODE[index] * absmax`
//! in f32. A last partial block has its own absmax over the values it holds; an odd count leaves the
//! low nibble of the last byte zero.
//!
//! Double quantization (`bnb_4bit_use_double_quant=True`) stores the absmax values themselves in 8
//! bits: their mean is subtracted (`offset`), and the centred values are quantized blockwise (blocks of
//! 256) with bitsandbytes' signed "dynamic" 8-bit map and one f32 absmax per block; dequantization is
//! `DYNAMIC[q] * absmax2 + offset`.
//!
//! The golden fixtures (`tests/fixtures/qlora`, from `scripts/make_qlora_fixtures.py`) hold
//! bitsandbytes' packed bytes, scales and dequantized values; the tests compare with them bit for bit.
//!
//! # Memory
//! Half a byte per value plus 4 bytes per 64 values (0.5625 bytes per parameter), or about 0.508
//! with double quantization (1 byte per 64 values plus 4 bytes per 16,384).

use rayon::prelude::*;

/// Values per absmax block.
pub const BLOCK: usize = 64;
/// Absmax values per block of the double quantization.
pub const DOUBLE_BLOCK: usize = 256;

/// The 16 NF4 code values (bitsandbytes' `get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to
/// [-1, 1], with an exact zero.
pub const CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// How the per-block scales are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block of 64 values.
    F32(Vec<f32>),
    /// Double quantization: one byte per block of 64, decoded as `code[q] * absmax[i / 256] + offset`.
    Double {
        /// The 8-bit indices, one per block of 64 values.
        quantized: Vec<u8>,
        /// The f32 scale of each block of 256 indices.
        absmax: Vec<f32>,
        /// The mean of the original absmax values, added back after decoding.
        offset: f32,
    },
}

impl Absmax {
    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Double { quantized, .. } => quantized.len(),
        }
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 scale of every block.
    pub fn decode(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::Double { quantized, absmax, offset } => {
                let code = dynamic_map();
                quantized.iter().enumerate().map(|(i, &q)| code[q as usize] * absmax[i / DOUBLE_BLOCK] + offset).collect()
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => 4 * v.len(),
            Self::Double { quantized, absmax, .. } => quantized.len() + 4 * absmax.len() + 4,
        }
    }
}

/// A tensor stored as NF4.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// The logical shape (row-major).
    pub shape: Vec<usize>,
    /// Two 4-bit code indices per byte, the first value in the high nibble.
    pub packed: Vec<u8>,
    /// The per-block scales.
    pub absmax: Absmax,
    /// The f32 scales, decoded once when double-quantized (4 bytes per 64 values, 6% of the packed
    /// size) so that dequantization is one multiply per value.
    scales: Vec<f32>,
}

impl Nf4Tensor {
    /// Quantizes `values` (row-major, `shape`) as bitsandbytes does; with `double_quant`, the scales are
    /// quantized too.
    pub fn quantize(values: &[f32], shape: &[usize], double_quant: bool) -> Self {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let absmax: Vec<f32> = values.par_chunks(BLOCK).map(block_absmax).collect();
        let mut packed = vec![0u8; values.len().div_ceil(2)];
        // A block of 64 values fills 32 bytes exactly, so blocks and bytes split together.
        packed.par_chunks_mut(BLOCK / 2).zip(values.par_chunks(BLOCK)).zip(absmax.par_iter()).for_each(
            |((bytes, block), &amax)| {
                let inv = 1.0 / amax;
                for (byte, pair) in bytes.iter_mut().zip(block.chunks(2)) {
                    let hi = nearest_code(pair[0] * inv);
                    let lo = pair.get(1).map_or(0, |&v| nearest_code(v * inv));
                    *byte = (hi << 4) | lo;
                }
            },
        );
        let absmax = if double_quant { double_quantize(&absmax) } else { Absmax::F32(absmax) };
        let scales = absmax.decode();
        Self { shape: shape.to_vec(), packed, absmax, scales }
    }

    /// Rebuilds a tensor from stored parts (e.g. bitsandbytes' own output), checking their sizes.
    pub fn from_parts(shape: Vec<usize>, packed: Vec<u8>, absmax: Absmax) -> Result<Self, String> {
        let n: usize = shape.iter().product();
        if packed.len() != n.div_ceil(2) {
            return Err(format!("{} packed bytes for {n} values; expected {}", packed.len(), n.div_ceil(2)));
        }
        if absmax.len() != n.div_ceil(BLOCK) {
            return Err(format!("{} scales for {n} values; expected {}", absmax.len(), n.div_ceil(BLOCK)));
        }
        if let Absmax::Double { quantized, absmax, .. } = &absmax
            && absmax.len() != quantized.len().div_ceil(DOUBLE_BLOCK)
        {
            return Err(format!("{} second-level scales for {} blocks", absmax.len(), quantized.len()));
        }
        let scales = absmax.decode();
        Ok(Self { shape, packed, absmax, scales })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory (packed indices and scales).
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }

    /// All values, dequantized.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.len()];
        self.dequantize_into(0, &mut out);
        out
    }

    /// Values `start .. start + out.len()` (flat, row-major), dequantized into `out`, in parallel.
    ///
    /// # Panics
    /// If the range goes past the end of the tensor.
    pub fn dequantize_into(&self, start: usize, out: &mut [f32]) {
        assert!(start + out.len() <= self.len(), "range past the end of the NF4 tensor");
        // Pieces aligned to 1,024 values, so that each thread reads whole blocks and their scales.
        const PIECE: usize = 16 * BLOCK;
        let head = ((PIECE - start % PIECE) % PIECE).min(out.len());
        let (first, rest) = out.split_at_mut(head);
        self.dequantize_serial(start, first);
        let base = start + head;
        rest.par_chunks_mut(PIECE).enumerate().for_each(|(k, piece)| self.dequantize_serial(base + k * PIECE, piece));
    }

    fn dequantize_serial(&self, start: usize, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            let i = start + k;
            let byte = self.packed[i / 2];
            let idx = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
            *o = CODE[idx as usize] * self.scales[i / BLOCK];
        }
    }
}

/// max |x| over a block.
fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// Index of the code value nearest to `x` (a value already divided by its block's absmax).
///
/// bitsandbytes takes the argmin of |x − CODE[i]|, the first index on a tie. A NaN (a block of zeros
/// has absmax 0, and 0 · ∞ is NaN) makes every distance NaN; torch's argmin then returns index 0.
pub fn nearest_code(x: f32) -> u8 {
    let x = x.clamp(-1.0, 1.0);
    if x.is_nan() {
        return 0;
    }
    let mut best = 0u8;
    let mut best_d = f32::INFINITY;
    for (i, &c) in CODE.iter().enumerate() {
        let d = (x - c).abs();
        if d < best_d {
            best_d = d;
            best = i as u8;
        }
    }
    best
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), used for the double
/// quantization of the scales: 256 values in [-1, 1].
pub fn dynamic_map() -> [f32; 256] {
    // 7 bits of "exponent + linear fraction": for each exponent level i (0..7), 2^i evenly spaced
    // fractions between 0.1 and 1, scaled by 10^(-(6 - i)) ... as in bitsandbytes.
    let max_exponent_bits = 7usize;
    let total_bits = 8usize;
    let non_sign_bits = total_bits - 1;
    let additional_items = (1usize << (non_sign_bits - max_exponent_bits)) - 1;
    let mut data: Vec<f64> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let fraction_items = (1usize << (i + non_sign_bits - max_exponent_bits)) + 1;
        let boundaries = linspace(0.1, 1.0, fraction_items);
        let means: Vec<f64> = boundaries.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let scale = 10f64.powi(-(max_exponent_bits as i32 - 1) + i as i32);
        data.extend(means.iter().map(|m| scale * m));
        data.extend(means.iter().map(|m| -scale * m));
    }
    if additional_items > 0 {
        let boundaries = linspace(0.1, 1.0, additional_items + 1);
        let means: Vec<f64> = boundaries.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let scale = 10f64.powi(-(max_exponent_bits as i32 - 1) + max_exponent_bits as i32 - 1);
        data.extend(means.iter().map(|m| scale * m));
        data.extend(means.iter().map(|m| -scale * m));
    }
    data.push(0.0);
    data.push(1.0);
    let mut values: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    values.resize(256, 0.0);
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let mut out = [0.0f32; 256];
    out.copy_from_slice(&values);
    out
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect()
}

/// Quantizes the absmax values with the dynamic map, blocks of 256, after removing their mean.
fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&v| v - offset).collect();
    let code = dynamic_map();
    let scales: Vec<f32> = centred.chunks(DOUBLE_BLOCK).map(block_absmax).collect();
    let quantized = centred
        .chunks(DOUBLE_BLOCK)
        .zip(&scales)
        .flat_map(|(block, &s)| {
            let inv = 1.0 / s;
            block.iter().map(move |&v| nearest_in(&code, v * inv)).collect::<Vec<_>>()
        })
        .collect();
    Absmax::Double { quantized, absmax: scales, offset }
}

/// Index of the nearest value of a sorted map (first on a tie).
fn nearest_in(map: &[f32; 256], x: f32) -> u8 {
    let x = x.clamp(-1.0, 1.0);
    if x.is_nan() {
        return 0;
    }
    let mut best = 0usize;
    let mut best_d = f32::INFINITY;
    for (i, &c) in map.iter().enumerate() {
        let d = (x - c).abs();
        if d < best_d {
            best_d = d;
            best = i;
        }
    }
    best as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_values_round_trip_and_ranges_split_at_odd_offsets() {
        // Every code value times a scale comes back exactly; dequantizing any sub-range equals the
        // same slice of the whole.
        let mut values = Vec::new();
        for k in 0..300 {
            values.push(CODE[k % 16] * 2.5);
        }
        let t = Nf4Tensor::quantize(&values, &[3, 100], false);
        assert_eq!(t.dequantize(), values);
        let whole = t.dequantize();
        for (start, len) in [(0, 1), (7, 130), (63, 2), (64, 64), (101, 199), (1000 % 300, 0)] {
            let mut part = vec![0.0; len];
            t.dequantize_into(start, &mut part);
            assert_eq!(part, whole[start..start + len], "range {start}+{len}");
        }
    }
}
