//! llama.cpp's row order for the rotary projections (q and k): its converter interleaves the two
//! halves of each head that Hugging Face's rotate-half layout keeps apart. Exports apply it; loading a
//! GGUF model or adapter undoes it.

/// llama.cpp's rotary row order and back: `to_gguf` moves Hugging Face's split halves of each head
/// (row `h·hd + s·hd/2 + j`) to adjacent pairs (row `h·hd + 2j + s`); `false` undoes it.
pub fn rotary_rows(values: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let hd = rows / heads.max(1);
    let half = hd / 2;
    let mut out = values.to_vec();
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let (hf, gguf) = (h * hd + s * half + j, h * hd + 2 * j + s);
                let (from, to) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}
