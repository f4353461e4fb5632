//! PiSSA (Meng et al., arXiv:2404.02948) and OLoRA (Büyükakyüz, arXiv:2406.01775) as PEFT
//! initialises them (`init_lora_weights = "pissa"`, `"pissa_niter_N"`, `"olora"`; `pissa_init` and
//! `olora_init` in `tuners/lora/layer.py`): the adapter starts from a principal part of the base
//! weight, and the base keeps the residual W − s·B₀·A₀, so that the model starts unchanged.
//!
//! - PiSSA: W = V·S·Uᵀ (thin SVD); A₀ = √(S_r / s)·U_rᵀ, B₀ = V_r·√(S_r / s). `pissa_niter_N` takes
//!   the top r triplets from Halko et al.'s randomized range finder with N power iterations
//!   (`torch.svd_lowrank(W, r, niter=N)`), seeded.
//! - OLoRA: W = Q·R (thin QR); A₀ = R[:r], B₀ = Q[:, :r].
//!
//! Singular vectors and the columns of Q are defined up to sign: each pair (column of B₀, row of A₀)
//! may come out negated against LAPACK's, which changes neither B₀·A₀ nor the training (AdamW is
//! equivariant to it), so not the adapter a run saves.
//!
//! The decompositions run in f64 through faer, one module at a time and single-threaded (its
//! results then do not depend on the thread count, which `lora verify` needs); modules go in
//! parallel.

use std::sync::Arc;

use burn::tensor::Device;
use faer::Mat;
use lora_formats::nf4::{Absmax, Nf4Tensor};
use lora_formats::peft::AdapterConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{CoreError, Result};
use crate::network::base_weight::BaseWeight;
use crate::network::linear::Linear;

/// The factors a module's adapter started from, kept to save the run's adapter against the
/// original base.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialFactors {
    /// The module path.
    pub module: String,
    /// A₀: [r, in], row-major.
    pub lora_a: Vec<f32>,
    /// B₀: [out, r], row-major.
    pub lora_b: Vec<f32>,
}

/// Replaces each layer's base by the residual of `init` (in the base's own form: its dtype, or NF4
/// quantized again from the dequantized residual, as PEFT does for OLoRA on a 4-bit base and documents
/// as QPiSSA) and returns each one's (A₀, B₀). `layers` are (path, layer, seed); as many decompositions
/// run at once as rayon has threads, each single-threaded, so that the result does not depend on the
/// thread count.
pub(crate) fn move_bases(
    layers: Vec<(String, &mut Linear, u64)>,
    init: MovingInit,
    r: usize,
    s: f64,
    device: &Device,
) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(layers.len());
    let mut layers = layers;
    let at_once = rayon::current_num_threads().max(1);
    for chunk in layers.chunks_mut(at_once) {
        let weights = chunk
            .iter()
            .map(|(_, lin, _)| Ok((crate::kernels::host::to_f32_vec(lin.weight.to_f32(device))?, lin.weight.dims())))
            .collect::<Result<Vec<_>>>()?;
        let seeds: Vec<(&str, u64)> = chunk.iter().map(|(p, _, seed)| (p.as_str(), *seed)).collect();
        let factors = weights
            .par_iter()
            .zip(&seeds)
            .map(|((w, dims), (path, seed))| {
                initial_factors(init, w, *dims, r, s, *seed).map_err(|e| CoreError::Invalid(format!("{path}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        for (((_, lin, _), (w, dims)), (a, b)) in chunk.iter_mut().zip(weights).zip(factors) {
            let res = residual(&w, &a, &b, dims, r, s);
            lin.weight = match &lin.weight {
                BaseWeight::Dense(t) => {
                    BaseWeight::Dense(crate::io::weights::held_from_f32(res, dims, t.dtype(), device))
                }
                BaseWeight::Nf4(q) => {
                    let double = matches!(q.absmax, Absmax::Double { .. });
                    BaseWeight::Nf4(Arc::new(Nf4Tensor::quantize(&res, &dims, double)))
                }
                BaseWeight::Nf4Device(_) => {
                    return Err(CoreError::Invalid(format!(
                        "{} on a 4-bit base is done on the CPU for now; initialise there, or use a 16-bit base",
                        init.name()
                    )));
                }
            };
            out.push((a, b));
        }
    }
    Ok(out)
}

/// The configuration of the adapter a run with a moving start saves: PEFT's conversion
/// (`path_initial_model_for_weight_conversion`) to a plain LoRA of rank 2r on the original base,
/// A = [A; A₀], B = [B, −B₀], with alpha doubled (× √2 with rsLoRA) so that the scale stays.
pub fn converted_config(cfg: &AdapterConfig) -> AdapterConfig {
    let mut c = cfg.clone();
    c.r *= 2;
    c.lora_alpha *= if c.use_rslora { std::f64::consts::SQRT_2 } else { 2.0 };
    c.init_lora_weights = true.into();
    c
}

/// An initialisation that moves the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovingInit {
    /// `"pissa"`: the full thin SVD.
    Pissa,
    /// `"pissa_niter_N"`: the randomized SVD with N power iterations.
    PissaNiter(usize),
    /// `"olora"`: the thin QR.
    Olora,
}

impl MovingInit {
    /// Parses PEFT's name (`pissa`, `pissa_niter_4`, `olora`); `None` for any other.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pissa" => Some(Self::Pissa),
            "olora" => Some(Self::Olora),
            _ => name.strip_prefix("pissa_niter_").and_then(|n| n.parse().ok()).map(Self::PissaNiter),
        }
    }

    /// PEFT's name.
    pub fn name(&self) -> String {
        match self {
            Self::Pissa => "pissa".into(),
            Self::PissaNiter(n) => format!("pissa_niter_{n}"),
            Self::Olora => "olora".into(),
        }
    }
}

/// A₀ ([r, in]) and B₀ ([out, r]), row-major, of weight `w` ([out, in], row-major) at scale `s`;
/// `seed` draws the randomized SVD's test matrix.
pub fn initial_factors(
    init: MovingInit,
    w: &[f32],
    [out, inp]: [usize; 2],
    r: usize,
    s: f64,
    seed: u64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let k = out.min(inp);
    if r > k {
        return Err(CoreError::Invalid(format!(
            "{} needs a rank of at most min(out, in) = {k} for a [{out}, {inp}] weight, got {r}",
            init.name()
        )));
    }
    let m = Mat::<f64>::from_fn(out, inp, |i, j| w[i * inp + j] as f64);
    let (a, b) = match init {
        MovingInit::Olora => {
            let qr = m.qr();
            let (q, rr) = (qr.compute_thin_Q(), qr.thin_R());
            let a: Vec<f64> = (0..r).flat_map(|i| (0..inp).map(move |j| (i, j))).map(|(i, j)| rr[(i, j)]).collect();
            let b: Vec<f64> = (0..out).flat_map(|i| (0..r).map(move |j| (i, j))).map(|(i, j)| q[(i, j)]).collect();
            (a, b)
        }
        MovingInit::Pissa | MovingInit::PissaNiter(_) => {
            let (u, sv, v) = match init {
                MovingInit::PissaNiter(niter) => randomized_svd(&m, r, niter, seed)?,
                _ => thin_svd(&m)?,
            };
            // √(S_i / s) on both sides.
            let root: Vec<f64> = (0..r).map(|i| (sv[i] / s).sqrt()).collect();
            let a = (0..r).flat_map(|i| (0..inp).map(move |j| (i, j))).map(|(i, j)| root[i] * v[(j, i)]).collect();
            let b = (0..out).flat_map(|o| (0..r).map(move |i| (o, i))).map(|(o, i)| u[(o, i)] * root[i]).collect();
            (a, b)
        }
    };
    Ok((a.into_iter().map(|x| x as f32).collect(), b.into_iter().map(|x| x as f32).collect()))
}

/// W − s·B₀·A₀ in f32, as PEFT writes the residual base.
///
/// # Shapes
/// - w: `[out, in]`, a: `[r, in]`, b: `[out, r]` (row-major)
pub fn residual(w: &[f32], a: &[f32], b: &[f32], [out, inp]: [usize; 2], r: usize, s: f64) -> Vec<f32> {
    let mut res = w.to_vec();
    for o in 0..out {
        let row = &mut res[o * inp..(o + 1) * inp];
        for (j, x) in row.iter_mut().enumerate() {
            let ba: f64 = (0..r).map(|i| b[o * r + i] as f64 * a[i * inp + j] as f64).sum();
            *x = (*x as f64 - s * ba) as f32;
        }
    }
    res
}

/// (U [m, k], S [k], V [n, k]) of the thin SVD, M = U·diag(S)·Vᵀ, S descending.
fn thin_svd(m: &Mat<f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let svd = m.thin_svd().map_err(|e| CoreError::Invalid(format!("the SVD did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let sv = (0..s.nrows()).map(|i| s[i]).collect();
    Ok((svd.U().to_owned(), sv, svd.V().to_owned()))
}

/// The top `q` singular triplets through Halko et al.'s randomized range finder (their algorithm
/// 4.4, as `torch.svd_lowrank` with `niter` power iterations and no oversampling): Q spans M·Ω for
/// a Gaussian Ω [n, q], refined `niter` times through Mᵀ and M, then the SVD of Qᵀ·M.
fn randomized_svd(m: &Mat<f64>, q: usize, niter: usize, seed: u64) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let omega = Mat::<f64>::from_fn(m.ncols(), q, |_, _| {
        // Box-Muller: N(0, 1).
        let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    });
    let orth = |x: Mat<f64>| x.qr().compute_thin_Q();
    let mut basis = orth(m * &omega); // [m, q]
    for _ in 0..niter {
        let back = orth(m.transpose() * &basis); // [n, q]
        basis = orth(m * &back);
    }
    let small = basis.transpose() * m; // [q, n]
    let (u, s, v) = thin_svd(&small)?;
    Ok((&basis * &u, s, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Every start leaves W = residual + s·B₀·A₀, and PiSSA's B₀·A₀ is the best rank-r part:
    /// its residual's norm is the tail of the spectrum, which the randomized SVD approaches.
    #[test]
    fn factors_and_residual_rebuild_the_weight() {
        let (out, inp, r, s) = (12, 9, 3, 2.0);
        let w = lcg(5, out * inp);
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let mut residual_norms = Vec::new();
        for init in [MovingInit::Pissa, MovingInit::PissaNiter(4), MovingInit::Olora] {
            let (a, b) = initial_factors(init, &w, [out, inp], r, s, 1).unwrap();
            let res = residual(&w, &a, &b, [out, inp], r, s);
            let back = residual(&res, &a, &b, [out, inp], r, -s);
            let d = w.iter().zip(&back).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(d < 1e-6, "{init:?}: {d}");
            residual_norms.push(norm(&res));
        }
        // PiSSA's residual is the smallest any rank-3 part leaves; the randomized one within 1%.
        assert!(residual_norms[0] < residual_norms[2], "{residual_norms:?}");
        assert!((residual_norms[1] - residual_norms[0]).abs() < 0.01 * residual_norms[0], "{residual_norms:?}");
        // PiSSA's A₀ rows are orthogonal with norms S_i / s.
        let (a, _) = initial_factors(MovingInit::Pissa, &w, [out, inp], r, s, 1).unwrap();
        let dot = |i: usize, j: usize| (0..inp).map(|k| a[i * inp + k] as f64 * a[j * inp + k] as f64).sum::<f64>();
        assert!(dot(0, 1).abs() < 1e-6 && dot(0, 0) > dot(1, 1) && dot(1, 1) > dot(2, 2));
    }

    #[test]
    fn names_parse_as_peft_spells_them() {
        assert_eq!(MovingInit::parse("pissa"), Some(MovingInit::Pissa));
        assert_eq!(MovingInit::parse("pissa_niter_16"), Some(MovingInit::PissaNiter(16)));
        assert_eq!(MovingInit::parse("olora"), Some(MovingInit::Olora));
        assert_eq!(MovingInit::parse("pissa_niter_x"), None);
        assert_eq!(MovingInit::PissaNiter(4).name(), "pissa_niter_4");
        assert!(initial_factors(MovingInit::Olora, &[0.0; 6], [2, 3], 3, 1.0, 0).is_err());
    }
}
