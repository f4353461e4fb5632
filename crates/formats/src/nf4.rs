//! NF4, the 4-bit NormalFloat storage of QLoRA (Dettmers et al., arXiv:2305.14314), exactly as
//! bitsandbytes stores it (`bitsandbytes.functional.quantize_4bit(W, blocksize=64, quant_type="nf4")`,
//! which is what transformers' `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` does
//! to every linear layer of the decoder).
//!
//! The tensor is flattened in row-major order and cut into blocks of 64 values (blocks run across
//! rows). Each block keeps its absolute maximum (`absmax`, f32). A full block's values are multiplied
//! by `1 / max(absmax, 1e-38)`; the last, partial block's are divided by `max(absmax, 1e-38)` (and that
//! floored value is what it stores): bitsandbytes' torch code does exactly this, and the fixtures tell
//! the two apart. Each scaled value, clamped to [-1, 1], becomes the number of NF4 midpoints strictly
//! below it (a value on a midpoint takes the lower code), two indices per byte, the first value of a
//! pair in the high nibble; an odd count is padded with code 7 (zero). Dequantization is
//! `CODE[index] * absmax` in f32.
//!
//! Double quantization (`bnb_4bit_use_double_quant=True`) stores the absmax values themselves in 8
//! bits: their mean (`offset`, summed in f32 in the order `torch.sum` uses) is subtracted, and the
//! centred values are quantized blockwise (blocks of 256) by bitsandbytes' C++ CPU quantizer, which
//! looks the code up in a 65,536-entry table rather than searching for the nearest (the two differ on
//! values tiny against their block's maximum); dequantization is `DYNAMIC[q] * absmax2 + offset`.
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
    /// The scales of several weights stacked by rows (an MoE expert's gate and up projections, held
    /// as one), each part as it was stored; every part but the last holds whole blocks.
    Stacked(Vec<Absmax>),
}

impl Absmax {
    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Double { quantized, .. } => quantized.len(),
            Self::Stacked(parts) => parts.iter().map(Self::len).sum(),
        }
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 scale of block `b` (`DYNAMIC[q] * absmax2 + offset` when double-quantized, two f32
    /// roundings as bitsandbytes).
    pub fn scale(&self, b: usize) -> f32 {
        match self {
            Self::F32(v) => v[b],
            Self::Double { quantized, absmax, offset } => {
                f32::from_bits(DYNAMIC_BITS[quantized[b] as usize]) * absmax[b / DOUBLE_BLOCK] + offset
            }
            Self::Stacked(parts) => {
                let mut b = b;
                for p in parts {
                    if b < p.len() {
                        return p.scale(b);
                    }
                    b -= p.len();
                }
                panic!("block {b} beyond the stacked scales")
            }
        }
    }

    /// The f32 scale of every block.
    pub fn decode(&self) -> Vec<f32> {
        (0..self.len()).map(|b| self.scale(b)).collect()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => 4 * v.len(),
            Self::Double { quantized, absmax, .. } => quantized.len() + 4 * absmax.len() + 4,
            Self::Stacked(parts) => parts.iter().map(Self::bytes).sum(),
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
    /// The per-block scales (decoded block by block when used, so that double quantization saves
    /// the memory it promises).
    pub absmax: Absmax,
}

impl Nf4Tensor {
    /// Quantizes `values` (row-major, `shape`) as bitsandbytes does; with `double_quant`, the scales are
    /// quantized too.
    pub fn quantize(values: &[f32], shape: &[usize], double_quant: bool) -> Self {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let full = values.len() / BLOCK * BLOCK;
        let mut absmax: Vec<f32> = values.par_chunks(BLOCK).map(block_absmax).collect();
        let mut packed = vec![0u8; values.len().div_ceil(2)];
        // A block of 64 values fills 32 bytes exactly, so blocks and bytes split together.
        packed.par_chunks_mut(BLOCK / 2).zip(values.par_chunks(BLOCK)).zip(absmax.par_iter()).for_each(
            |((bytes, block), &amax)| {
                let scale: Box<dyn Fn(f32) -> f32> = if block.len() == BLOCK {
                    let inv = 1.0 / amax.max(ABSMAX_FLOOR);
                    Box::new(move |v| v * inv)
                } else {
                    let am = amax.max(ABSMAX_FLOOR);
                    Box::new(move |v| v / am)
                };
                for (byte, pair) in bytes.iter_mut().zip(block.chunks(2)) {
                    let hi = nearest_code(scale(pair[0]));
                    let lo = pair.get(1).map_or(7, |&v| nearest_code(scale(v)));
                    *byte = (hi << 4) | lo;
                }
            },
        );
        if full < values.len() {
            // The partial block stores its floored maximum, as bitsandbytes does.
            let last = absmax.last_mut().expect("a partial block exists");
            *last = last.max(ABSMAX_FLOOR);
        }
        let absmax = if double_quant { double_quantize(&absmax) } else { Absmax::F32(absmax) };
        Self { shape: shape.to_vec(), packed, absmax }
    }

    /// Weights of equal width stacked by rows into one (an expert's gate and up projections), each
    /// keeping its own codes and scales; `None` when a part other than the last ends inside a block
    /// of 64 values, where the stacked blocks would straddle two weights.
    pub fn stack_rows(parts: Vec<Self>) -> Option<Self> {
        let cols = parts.first()?.shape.get(1).copied()?;
        if parts.iter().any(|p| p.shape.len() != 2 || p.shape[1] != cols) {
            return None;
        }
        let (_, rest) = parts.split_last()?;
        if rest.iter().any(|p| p.len() % BLOCK != 0) {
            return None;
        }
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let packed = parts.iter().flat_map(|p| p.packed.iter().copied()).collect();
        let absmax = Absmax::Stacked(parts.into_iter().map(|p| p.absmax).collect());
        Some(Self { shape: vec![rows, cols], packed, absmax })
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
        Ok(Self { shape, packed, absmax })
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
        // Block by block: one scale per 64 values, and whole bytes (two values each) where the range
        // allows, a loop the compiler vectorises; the same products, value for value, as one at a time.
        let end = start + out.len();
        let mut i = start;
        while i < end {
            let block = i / BLOCK;
            let s = self.absmax.scale(block);
            let stop = ((block + 1) * BLOCK).min(end);
            let o = &mut out[i - start..stop - start];
            if i % 2 == 0 && stop % 2 == 0 {
                for (pair, &byte) in o.chunks_exact_mut(2).zip(&self.packed[i / 2..stop / 2]) {
                    pair[0] = CODE[(byte >> 4) as usize] * s;
                    pair[1] = CODE[(byte & 0x0F) as usize] * s;
                }
            } else {
                for (k, v) in o.iter_mut().enumerate() {
                    let j = i + k;
                    let byte = self.packed[j / 2];
                    let idx = if j % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                    *v = CODE[idx as usize] * s;
                }
            }
            i = stop;
        }
    }
}

/// The smallest divisor bitsandbytes scales by (`1e-38f`, a subnormal): a block of zeros stays
/// finite.
pub const ABSMAX_FLOOR: f32 = f32::from_bits(0x006c_e3ee);

/// max |x| over a block.
fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// The midpoints between consecutive code values, `(CODE[i] + CODE[i + 1]) / 2` in f32.
fn midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (CODE[i] + CODE[i + 1]) / 2.0)
}

/// The code of a value already scaled by its block's absmax: the number of midpoints strictly below
/// the clamped value (`torch.bucketize`), so a value on a midpoint takes the lower code.
pub fn nearest_code(x: f32) -> u8 {
    let x = x.clamp(-1.0, 1.0);
    midpoints().iter().filter(|&&m| m < x).count() as u8
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), used for the double
/// quantization of the scales: 256 values in [-1, 1], sorted. Stored as the f32 bit patterns
/// bitsandbytes 0.50.2 builds (torch's f32 `linspace` steps, which no closed form reproduces to the
/// last bit), recorded by scripts/make_qlora_fixtures.py; a test compares them with the fixture.
const DYNAMIC_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000, 0xbf616666,
    0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000,
    0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666, 0xbf27cccd, 0xbf243334, 0xbf20999a,
    0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333,
    0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a,
    0xbeb86666, 0xbeb13333, 0xbeaa0000, 0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999,
    0xbe6f3333, 0xbe60cccd, 0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000,
    0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f,
    0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148, 0xbcfeb852, 0xbce7ae15,
    0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418, 0xbc0ccccd,
    0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a,
    0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d, 0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01,
    0xb9c7e283, 0xb98ce705, 0xb923d70b, 0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94,
    0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b,
    0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b,
    0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f,
    0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3,
    0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d,
    0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667,
    0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000,
    0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc,
    0x3eaa0000, 0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334,
    0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666, 0x3f2f0000, 0x3f32999a,
    0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000,
    0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
    0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The dynamic map as f32 values.
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_BITS.map(f32::from_bits)
}

/// Quantizes the absmax values with the dynamic map, blocks of 256, after removing their mean.
fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = torch_sum_f32(absmax) / absmax.len().max(1) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&v| v - offset).collect();
    let lut = quantize_lut();
    let scales: Vec<f32> = centred.chunks(DOUBLE_BLOCK).map(block_absmax).collect();
    let mut quantized = vec![0u8; centred.len()];
    for ((q, block), &am) in quantized.chunks_mut(DOUBLE_BLOCK).zip(centred.chunks(DOUBLE_BLOCK)).zip(&scales) {
        if am == 0.0 {
            continue; // every code 0, as bitsandbytes' C++ kernel writes
        }
        let inv = 1.0 / am; // +inf for a subnormal maximum: then 0 · inf is NaN, index 0
        for (q, &v) in q.iter_mut().zip(block) {
            let t = ((v * inv).clamp(-1.0, 1.0) + 1.0) * 0.5;
            let idx = t.mul_add(65535.0, 0.5) as u16; // truncation; NaN gives 0
            *q = lut[idx as usize];
        }
    }
    Absmax::Double { quantized, absmax: scales, offset }
}

/// bitsandbytes' table from a 16-bit position in [-1, 1] to the 8-bit code: entry i is the number
/// of midpoints of the dynamic map strictly below `2i / 65535 − 1` (f32 steps).
fn quantize_lut() -> &'static [u8; 65536] {
    static LUT: std::sync::OnceLock<Box<[u8; 65536]>> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        let code = dynamic_map();
        let mid: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = Box::new([0u8; 65536]);
        for (i, slot) in lut.iter_mut().enumerate() {
            let val = (2.0 * i as f32) / 65535.0 - 1.0;
            *slot = mid.iter().filter(|&&m| m < val).count() as u8;
        }
        lut
    })
}

/// `torch.sum` of an f32 vector on x86-64 CPUs, in its exact order (ATen's `cascade_sum` over
/// 8-lane vectors with 4 interleaved partial sums), so that the mean of the scales is bit-identical
/// to bitsandbytes' `offset`. Exact up to 32,768 values (a 2M-parameter matrix); above that torch
/// splits the sum across threads in a thread-count-dependent order, and this stays one valid f32
/// summation order of it.
fn torch_sum_f32(x: &[f32]) -> f32 {
    const LANES: usize = 8;
    if x.len() < LANES {
        return row_sum(x, 1)[0];
    }
    let nv = x.len() / LANES;
    let lanes = row_sum(&x[..nv * LANES], LANES);
    let mut total = x[nv * LANES..].iter().fold(0.0f32, |t, &v| t + v);
    for v in lanes {
        total += v;
    }
    total
}

/// Sum of `data.len() / width` elements of `width` lanes, with 4 interleaved partial sums.
fn row_sum(data: &[f32], width: usize) -> Vec<f32> {
    let size = data.len() / width;
    let ilp = size / 4;
    let mut part = multi_row_sum(&data[..ilp * 4 * width], 4 * width);
    for i in ilp * 4..size {
        for l in 0..width {
            part[l] += data[i * width + l];
        }
    }
    for k in 1..4 {
        for l in 0..width {
            part[l] += part[k * width + l];
        }
    }
    part.truncate(width);
    part
}

/// ATen's four-level cascade over rows of `width` values.
fn multi_row_sum(data: &[f32], width: usize) -> Vec<f32> {
    let size = data.len() / width;
    let ceil_log2 = |v: usize| if v <= 1 { 0 } else { usize::BITS - (v - 1).leading_zeros() } as usize;
    let level_power = 4.max(ceil_log2(size) / 4);
    let step = 1usize << level_power;
    let mask = step - 1;
    let mut acc = vec![vec![0.0f32; width]; 4];
    let mut i = 0;
    while i + step <= size {
        for _ in 0..step {
            for l in 0..width {
                acc[0][l] += data[i * width + l];
            }
            i += 1;
        }
        for j in 1..4 {
            for l in 0..width {
                acc[j][l] += acc[j - 1][l];
                acc[j - 1][l] = 0.0;
            }
            if i & (mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for l in 0..width {
            acc[0][l] += data[i * width + l];
        }
        i += 1;
    }
    let mut out = acc[0].clone();
    for a in &acc[1..] {
        for l in 0..width {
            out[l] += a[l];
        }
    }
    out
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
