//! Dequantization of ggml blocks to f32, operation for operation as gguf-py's `quants.py` does it
//! (numpy in f32: each product and sum rounded on its own, no fused multiply-add), so that the values
//! equal gguf-py's `dequantize` bit for bit (the fixtures of scripts/make_gguf_fixtures.py check it).
//! ggml-quants.c computes the same values; its compiled SIMD paths may fuse a multiply and an add.

use half::{bf16, f16};
use rayon::prelude::*;

use super::ggml_type::GgmlType;

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `t`) into `out` (one value per element), in parallel over
/// blocks.
///
/// # Panics
/// If the sizes disagree; the reader checks them before.
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (bv, bb) = (t.block_values(), t.block_bytes());
    assert_eq!(bytes.len() / bb * bv, out.len(), "{} bytes of {} for {} values", bytes.len(), t.name(), out.len());
    // Groups of blocks per task, so that small types do not pay rayon's overhead per value.
    let per = (4096 / bv).max(1);
    out.par_chunks_mut(bv * per).zip(bytes.par_chunks(bb * per)).for_each(|(out, bytes)| {
        for (y, b) in out.chunks_mut(bv).zip(bytes.chunks(bb)) {
            block(t, b, y);
        }
    });
}

/// One block.
fn block(t: GgmlType, b: &[u8], y: &mut [f32]) {
    match t {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = half(b, 0),
        GgmlType::Bf16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                *y = d * (q as i8) as f32;
            }
        }
        GgmlType::Q4_0 => {
            // Low nibbles are values 0..16, high nibbles 16..32.
            let d = half(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = d * ((q & 0x0F) as i8 - 8) as f32;
                y[j + 16] = d * ((q >> 4) as i8 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = d * (q & 0x0F) as f32 + m;
                y[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let (sc, mn) = scale_min_k4(&b[4..16]);
            let (qh, qs) = if t == GgmlType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            // Sub-block j (32 values): nibble (j % 2) of bytes 32·(j / 2) .. +32; Q5_K's fifth bit is
            // bit j of qh[l].
            for j in 0..8 {
                let dl = d * sc[j] as f32;
                let ml = dmin * mn[j] as f32;
                for l in 0..32 {
                    let byte = qs[32 * (j / 2) + l];
                    let mut q = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                    if let Some(qh) = qh {
                        q |= ((qh[l] >> j) & 1) << 4;
                    }
                    y[32 * j + l] = dl * q as f32 - ml;
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            // Group g of 32 values: half h = g / 4 of the block; low 4 bits from nibble (g / 2) % 2 of
            // ql[64·h + 32·(g % 2) + l], high 2 bits from bits 2·(g % 4) of qh[32·h + l].
            for g in 0..8 {
                let (h, k, half_) = (g / 4, (g / 2) % 2, g % 2);
                for l in 0..32 {
                    let lo = (ql[64 * h + 32 * half_ + l] >> (4 * k)) & 0x0F;
                    let hi = (qh[32 * h + l] >> (2 * (g % 4))) & 0x03;
                    let q = (lo | (hi << 4)) as i8 - 32;
                    let o = 32 * g + l;
                    let dl = d * (scales[o / 16] as i8) as f32;
                    y[o] = dl * q as f32;
                }
            }
        }
    }
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K super-block, packed in 12 bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}
