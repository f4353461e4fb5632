//! Truncated SVD in pure Rust, for the sizes adapters need: no LAPACK.
//!
//! Two problems occur, both reduced to an SVD of a small dense matrix solved by one-sided (Hestenes)
//! Jacobi, which is accurate to machine precision on the small singular values too:
//! - ΔW given as factors `Σᵢ Bᵢ·Aᵢ` (rank ≤ Σrᵢ): QR of the stacked B and of the stacked Aᵀ leaves an
//!   R×R core `R_B·R_Aᵀ` whose SVD is that of ΔW (Golub & Van Loan §2.5) — exact, no iteration.
//! - ΔW dense (extraction, TIES/DARE-sparsified deltas): the randomized range finder with power
//!   iterations of Halko, Martinsson & Tropp (<https://arxiv.org/abs/0909.4061>, Alg. 4.4), then the
//!   SVD of the small projected matrix.
//!
//! Matrices here are f64: the dense inputs are f32, but accumulating their products in f64 costs
//! little at these sizes and keeps the reported errors meaningful down to ~1e-7.

use rayon::prelude::*;

use crate::rng;

/// A thin SVD `M ≈ U·diag(s)·Vᵀ`, singular values in decreasing order.
#[derive(Debug, Clone)]
pub struct Svd {
    /// Left singular vectors, `k` columns of length `rows`.
    pub u: Vec<Vec<f64>>,
    /// Singular values, decreasing.
    pub s: Vec<f64>,
    /// Right singular vectors, `k` columns of length `cols`.
    pub v: Vec<Vec<f64>>,
}

impl Svd {
    /// Keeps the first `k` triplets.
    pub fn truncate(mut self, k: usize) -> Self {
        self.u.truncate(k);
        self.s.truncate(k);
        self.v.truncate(k);
        self
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Orthonormalizes `cols` in place by modified Gram–Schmidt, twice (enough for orthogonality to
/// working precision, Giraud et al. 2005); columns that vanish become zero and are dropped.
pub fn orthonormalize(cols: &mut Vec<Vec<f64>>) {
    for _ in 0..2 {
        for j in 0..cols.len() {
            let (done, rest) = cols.split_at_mut(j);
            let c = &mut rest[0];
            for q in done.iter() {
                let r = dot(q, c);
                c.iter_mut().zip(q).for_each(|(x, y)| *x -= r * y);
            }
            let n = dot(c, c).sqrt();
            if n > 1e-300 {
                c.iter_mut().for_each(|x| *x /= n);
            } else {
                c.iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
    cols.retain(|c| c.iter().any(|&x| x != 0.0));
}

/// SVD of the matrix whose columns are `cols` (m rows, n columns, m ≥ n not required) by one-sided
/// Jacobi: rotate column pairs until all are orthogonal; then the column norms are the singular
/// values and V accumulates the rotations.
pub fn jacobi_svd(mut cols: Vec<Vec<f64>>) -> Svd {
    let n = cols.len();
    let mut v: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|i| (i == j) as u8 as f64).collect()).collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (a, b, g) = (dot(&cols[p], &cols[p]), dot(&cols[q], &cols[q]), dot(&cols[p], &cols[q]));
                if g.abs() <= 1e-15 * (a * b).sqrt() || g == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (b - a) / (2.0 * g);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for m in [&mut cols, &mut v] {
                    let (lo, hi) = m.split_at_mut(q);
                    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                        let (xp, xq) = (*x, *y);
                        *x = c * xp - s * xq;
                        *y = s * xp + c * xq;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    let norms: Vec<f64> = cols.iter().map(|c| dot(c, c).sqrt()).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]));
    let mut out = Svd { u: vec![], s: vec![], v: vec![] };
    for j in order {
        let s = norms[j];
        out.u.push(cols[j].iter().map(|x| if s > 0.0 { x / s } else { 0.0 }).collect());
        out.s.push(s);
        out.v.push(v[j].clone());
    }
    out
}

/// SVD of `Σᵢ Bᵢ·Aᵢ` given the stacked factors: `b` is `R` columns of length `rows` (the columns of
/// all Bᵢ, each already multiplied by its coefficient), `a` is `R` rows of length `cols` (all Aᵢ).
pub fn svd_of_factors(b: &[Vec<f64>], a: &[Vec<f64>]) -> Svd {
    // B = Q_B·R_B and Aᵀ = Q_A·R_A, with R_X = Q_Xᵀ·X (R×R after dropping dependent columns)
    let mut qb = b.to_vec();
    orthonormalize(&mut qb);
    let mut qa = a.to_vec();
    orthonormalize(&mut qa);
    // core C = Q_Bᵀ·B·A·Q_A = (Q_Bᵀ·B)·(A·Q_A): [kb, R]·[R, ka]
    let rb: Vec<Vec<f64>> = qb.iter().map(|q| b.iter().map(|bc| dot(q, bc)).collect()).collect(); // [kb][R]
    let ra: Vec<Vec<f64>> = a.iter().map(|ar| qa.iter().map(|q| dot(ar, q)).collect()).collect(); // [R][ka]
    let ka = qa.len();
    // columns of C: C[:, j] = Σ_r rb[:, r]·ra[r][j]
    let core: Vec<Vec<f64>> =
        (0..ka).map(|j| rb.iter().map(|row| row.iter().zip(&ra).map(|(x, r)| x * r[j]).sum()).collect()).collect();
    let small = jacobi_svd(core);
    // ΔW = Q_B·U_c·S·V_cᵀ·Q_Aᵀ
    let lift = |q: &[Vec<f64>], vecs: &[Vec<f64>], len: usize| -> Vec<Vec<f64>> {
        vecs.iter()
            .map(|w| {
                let mut out = vec![0f64; len];
                for (qc, &x) in q.iter().zip(w) {
                    out.iter_mut().zip(qc).for_each(|(o, y)| *o += x * y);
                }
                out
            })
            .collect()
    };
    let rows = b.first().map_or(0, Vec::len);
    let cols = a.first().map_or(0, Vec::len);
    Svd { u: lift(&qb, &small.u, rows), s: small.s, v: lift(&qa, &small.v, cols) }
}

/// A dense row-major f32 matrix.
pub struct Dense<'a> {
    /// `[rows, cols]` row-major.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl Dense<'_> {
    /// M·X for X given as columns of length `cols`; returns columns of length `rows`.
    fn mul(&self, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let rows: Vec<Vec<f64>> = (0..self.rows)
            .into_par_iter()
            .map(|i| {
                let r = &self.data[i * self.cols..(i + 1) * self.cols];
                x.iter().map(|c| r.iter().zip(c).map(|(&m, &y)| m as f64 * y).sum()).collect()
            })
            .collect();
        (0..x.len()).map(|j| rows.iter().map(|r| r[j]).collect()).collect()
    }

    /// Mᵀ·Y for Y given as columns of length `rows`; returns columns of length `cols`.
    fn mul_t(&self, y: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let l = y.len();
        (0..self.rows)
            .into_par_iter()
            .fold(
                || vec![vec![0f64; self.cols]; l],
                |mut acc, i| {
                    let r = &self.data[i * self.cols..(i + 1) * self.cols];
                    for (a, yc) in acc.iter_mut().zip(y) {
                        let w = yc[i];
                        if w != 0.0 {
                            a.iter_mut().zip(r).for_each(|(o, &m)| *o += w * m as f64);
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![vec![0f64; self.cols]; l],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(p, q)| *p += q));
                    a
                },
            )
    }

    /// Squared Frobenius norm.
    pub fn frobenius2(&self) -> f64 {
        self.data.par_iter().map(|&x| x as f64 * x as f64).sum()
    }
}

/// The top-`k` SVD of a dense matrix by randomized range finding with `oversample` extra columns and
/// `power` power iterations (seeded by `seed`).
pub fn randomized_svd(m: &Dense<'_>, k: usize, oversample: usize, power: usize, seed: u64) -> Svd {
    let l = (k + oversample).min(m.rows).min(m.cols);
    // 1) Ω: Gaussian [cols, l] (Box–Muller on the counter-based generator)
    let stream = rng::stream(seed, "randomized_svd", 0);
    let omega: Vec<Vec<f64>> = (0..l)
        .map(|j| {
            (0..m.cols)
                .map(|i| {
                    let idx = (j * m.cols + i) as u64 * 2;
                    let u1 = (rng::uniform(stream, idx) as f64).max(1e-12);
                    let u2 = rng::uniform(stream, idx + 1) as f64;
                    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                })
                .collect()
        })
        .collect();
    // 2) Q = orth(M·Ω), refined by power iterations Q ← orth(M·orth(Mᵀ·Q))
    let mut q = m.mul(&omega);
    orthonormalize(&mut q);
    for _ in 0..power {
        let mut z = m.mul_t(&q);
        orthonormalize(&mut z);
        q = m.mul(&z);
        orthonormalize(&mut q);
    }
    // 3) Bᵀ = Mᵀ·Q [cols, l]; Bᵀ = U'·S·V'ᵀ, so M ≈ Q·B = (Q·V')·S·U'ᵀ
    let bt = m.mul_t(&q);
    let small = jacobi_svd(bt);
    let u = small
        .v
        .iter()
        .map(|w| {
            let mut out = vec![0f64; m.rows];
            for (qc, &x) in q.iter().zip(w) {
                out.iter_mut().zip(qc).for_each(|(o, y)| *o += x * y);
            }
            out
        })
        .collect();
    Svd { u, s: small.s, v: small.u }.truncate(k)
}
