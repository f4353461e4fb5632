//! Exact top-k by magnitude in O(n) time and O(1) memory in n, by a two-pass radix selection on the
//! bits of |x|.
//!
//! For non-negative floats the IEEE bit pattern orders like the value, so the k-th largest |x| is
//! found by (1) a histogram of the high 16 bits, which names the bucket holding the k-th element, and
//! (2) the elements of that bucket only, selected exactly. Ties at the threshold are broken by index
//! (lower index kept), so exactly k elements are kept, as mergekit's `argsort(...)[:k]` keeps k (its
//! order among equal magnitudes is unspecified). Neither pass materializes |x|: the tensor is read
//! twice in chunks on all cores, where a sort would need n·8 bytes and O(n log n) time.

use rayon::prelude::*;

use crate::stream::{CHUNK, chunks};

/// Which elements a top-k keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopK {
    /// k = 0.
    None,
    /// k ≥ n.
    All,
    /// |x| bits above `bits`, or equal to `bits` at an index ≤ `last_tie`.
    Threshold {
        /// Bit pattern of the k-th largest magnitude.
        bits: u32,
        /// Largest index kept among the elements whose magnitude equals the threshold.
        last_tie: usize,
    },
}

impl TopK {
    /// Whether element `index` with value `x` is among the k kept.
    #[inline]
    pub fn keeps(&self, index: usize, x: f32) -> bool {
        match *self {
            TopK::None => false,
            TopK::All => true,
            TopK::Threshold { bits, last_tie } => {
                let b = x.to_bits() & 0x7fff_ffff;
                b > bits || (b == bits && index <= last_tie)
            }
        }
    }
}

/// The k largest-magnitude elements of a tensor of `n` elements whose chunk at `start` is produced by
/// `read(start, out)`.
pub fn top_k(n: usize, k: usize, read: &(dyn Fn(usize, &mut [f32]) + Sync)) -> TopK {
    if k == 0 {
        return TopK::None;
    }
    if k >= n {
        return TopK::All;
    }
    // 1) histogram of the high 16 bits of |x|
    let hist = chunks(n)
        .fold(
            || (vec![0u32; 1 << 16], Vec::with_capacity(CHUNK)),
            |(mut h, mut buf): (Vec<u32>, Vec<f32>), (s, e)| {
                buf.resize(e - s, 0.0);
                read(s, &mut buf);
                for x in &buf {
                    h[((x.to_bits() & 0x7fff_ffff) >> 16) as usize] += 1;
                }
                (h, buf)
            },
        )
        .map(|(h, _)| h)
        .reduce(
            || vec![0u32; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    // 2) the bucket holding the k-th largest, counting down from the top
    let mut above = 0usize;
    let mut bucket = 0usize;
    for b in (0..1usize << 16).rev() {
        if above + hist[b] as usize >= k {
            bucket = b;
            break;
        }
        above += hist[b] as usize;
    }
    let need = k - above; // 1..=hist[bucket]
    // 3) that bucket's elements, in index order, then the need-th largest among them
    let mut cand: Vec<(u32, usize)> = chunks(n)
        .map_init(Vec::new, |buf: &mut Vec<f32>, (s, e)| {
            buf.resize(e - s, 0.0);
            read(s, buf);
            buf.iter()
                .enumerate()
                .filter_map(|(i, x)| {
                    let b = x.to_bits() & 0x7fff_ffff;
                    ((b >> 16) as usize == bucket).then_some((b, s + i))
                })
                .collect::<Vec<_>>()
        })
        .flatten_iter()
        .collect();
    // Largest magnitude first, lower index first among equals.
    let (_, &mut (bits, last_tie), _) = cand.select_nth_unstable_by(need - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    // Every element equal to the threshold with an index below last_tie sorts before it, so it is kept.
    TopK::Threshold { bits, last_tie }
}
