//! Sparsification of task vectors (δ = θ − θ_base) before they are combined: which elements of δ a
//! model keeps, and the factor that rescales the kept ones.
//!
//! References (mergekit's `sparsify.py` semantics, which lora follows):
//! - magnitude (TIES, <https://arxiv.org/abs/2306.01708>): keep the k = max(1, ⌊density·n⌋) largest |δ|.
//! - random (DARE, <https://arxiv.org/abs/2311.03099>): keep each element with probability `density`.
//! - magnitude_outliers (Model Breadcrumbs, <https://arxiv.org/abs/2312.06795>): drop the ⌊gamma·n⌋
//!   largest |δ| and the smallest, keeping ⌊density·n⌋.
//! - della_magprune (DELLA, <https://arxiv.org/abs/2406.11617>): keep with a probability rising
//!   linearly with the element's magnitude rank within its row, from density−ε to density+ε.
//!
//! With `rescale`, kept values are multiplied by ‖δ‖₁ / ‖kept δ‖₁ (mergekit's L1 rescaling; the DARE
//! paper's 1/density is its expectation).

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{MergeError, Result};
use crate::methods::{TopK, top_k};
use crate::rng;
use crate::stream::chunks;

/// How a task vector is sparsified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsification {
    /// Largest magnitudes (TIES).
    Magnitude,
    /// Bernoulli(density) (DARE).
    Random,
    /// Largest magnitudes minus the top outliers (breadcrumbs).
    MagnitudeOutliers,
    /// Bernoulli with rank-dependent probability (DELLA).
    DellaMagprune,
}

/// The parameters of one model's sparsification.
#[derive(Debug, Clone, Copy)]
pub struct SparsifyParams {
    /// Fraction kept.
    pub density: f64,
    /// Fraction of top outliers dropped (breadcrumbs).
    pub gamma: f64,
    /// Half-width of the probability band (DELLA).
    pub epsilon: f64,
    /// Rescale to the L1 norm of the dense task vector.
    pub rescale: bool,
}

/// Which elements survive.
#[derive(Debug)]
pub enum Keep {
    /// Every element.
    All,
    /// None.
    Nothing,
    /// The top k.
    Top(TopK),
    /// In the top `outer` but not the top `inner`.
    Band {
        /// The larger selection.
        outer: TopK,
        /// The outliers removed from it.
        inner: TopK,
    },
    /// Independent draws with probability `p` from stream `stream`.
    Random {
        /// The RNG stream.
        stream: u64,
        /// Probability of keeping.
        p: f32,
    },
    /// An explicit bit per element.
    Bits(Vec<u64>),
}

impl Keep {
    /// Whether element `i` with task-vector value `d` is kept.
    #[inline]
    pub fn keeps(&self, i: usize, d: f32) -> bool {
        match self {
            Keep::All => true,
            Keep::Nothing => false,
            Keep::Top(t) => t.keeps(i, d),
            Keep::Band { outer, inner } => outer.keeps(i, d) && !inner.keeps(i, d),
            Keep::Random { stream, p } => rng::bernoulli(*stream, i as u64, *p),
            Keep::Bits(b) => b[i / 64] >> (i % 64) & 1 == 1,
        }
    }
}

/// One model's sparsified task vector: what is kept and by how much it is scaled.
#[derive(Debug)]
pub struct Sparse {
    /// The kept elements.
    pub keep: Keep,
    /// The rescaling factor (1 without `rescale`).
    pub scale: f32,
}

/// Sparsifies the task vector of `n` elements, `cols` per row, whose chunks `delta(start, out)`
/// produces. `stream` seeds the random methods; `tensor` names errors.
pub fn sparsify(
    method: Sparsification,
    p: SparsifyParams,
    n: usize,
    cols: usize,
    stream: u64,
    tensor: &str,
    delta: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Result<Sparse> {
    let density = p.density;
    let keep = if density >= 1.0 {
        Keep::All
    } else {
        match method {
            Sparsification::Magnitude if density <= 0.0 || n == 0 => Keep::Nothing,
            Sparsification::Magnitude => {
                let k = ((density * n as f64) as usize).max(1);
                Keep::Top(top_k(n, k, delta))
            }
            Sparsification::Random => Keep::Random { stream, p: density as f32 },
            Sparsification::MagnitudeOutliers => {
                let target = (density * n as f64) as usize;
                let n_top = (p.gamma * n as f64) as usize;
                let n_bot = n.saturating_sub(target + n_top);
                let outer = n - n_bot;
                Keep::Band { outer: top_k(n, outer, delta), inner: top_k(n, outer - target, delta) }
            }
            Sparsification::DellaMagprune => {
                if density <= 0.0 {
                    Keep::Nothing
                } else {
                    if density + p.epsilon >= 1.0 || density - p.epsilon <= 0.0 {
                        return Err(MergeError::Parameter(format!(
                            "tensor '{tensor}': DELLA needs density ± epsilon inside (0, 1), got density {density} and epsilon {}",
                            p.epsilon
                        )));
                    }
                    della_bits(n, cols, density, p.epsilon, stream, delta)
                }
            }
        }
    };
    let scale = if p.rescale && !matches!(keep, Keep::All) { l1_scale(n, &keep, delta) } else { 1.0 };
    Ok(Sparse { keep, scale })
}

/// ‖δ‖₁ / ‖kept δ‖₁, or 1 when either is below 1e-7 (mergekit's `rescaled_masked_tensor`).
fn l1_scale(n: usize, keep: &Keep, delta: &(dyn Fn(usize, &mut [f32]) + Sync)) -> f32 {
    let (before, after) = chunks(n)
        .map_init(Vec::new, |buf: &mut Vec<f32>, (s, e)| {
            buf.resize(e - s, 0.0);
            delta(s, buf);
            let mut b = 0f64;
            let mut a = 0f64;
            for (i, &d) in buf.iter().enumerate() {
                b += d.abs() as f64;
                if keep.keeps(s + i, d) {
                    a += d.abs() as f64;
                }
            }
            (b, a)
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    let (before, after) = (before as f32, after as f32);
    if before < 1e-7 || after < 1e-7 { 1.0 } else { before / after }
}

/// DELLA's MagPrune: within each row, rank elements by |δ| (1 = smallest), map the rank linearly onto
/// [density − ε, density + ε] and draw. A 1-D tensor is one row.
fn della_bits(
    n: usize,
    cols: usize,
    density: f64,
    epsilon: f64,
    stream: u64,
    delta: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Keep {
    let cols = cols.max(1);
    let bits: Vec<AtomicU64> = (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    (0..n / cols).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(row, order): &mut (Vec<f32>, Vec<usize>), r| {
            row.resize(cols, 0.0);
            delta(r * cols, row);
            order.clear();
            order.extend(0..cols);
            order.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()));
            for (rank0, &j) in order.iter().enumerate() {
                // (rank − min) / (max − min) with ranks 1..=cols
                let norm = if cols > 1 { rank0 as f64 / (cols - 1) as f64 } else { 0.0 };
                let prob = (density - epsilon) + norm * 2.0 * epsilon;
                let i = r * cols + j;
                if rng::bernoulli(stream, i as u64, prob as f32) {
                    bits[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
                }
            }
        },
    );
    Keep::Bits(bits.into_iter().map(AtomicU64::into_inner).collect())
}
