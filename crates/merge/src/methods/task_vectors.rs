//! The task-vector family: task arithmetic, TIES, DARE, breadcrumbs and DELLA are one algorithm,
//! configured by a sparsification and a sign consensus.
//!
//! For each model i with task vector δᵢ = θᵢ − θ_base (mergekit's `generalized_task_arithmetic.py`):
//! 1) sparsify δᵢ (see [`sparsify`](crate::methods::sparsify)) and rescale it;
//! 2) weight it: δᵢ ← wᵢ·δᵢ;
//! 3) with consensus, elect the sign of Σᵢ δᵢ per element and keep only the δᵢ of that sign
//!    (TIES's "trim, elect sign, disjoint merge"); the divisor is the sum of the kept models' weights;
//!    without consensus, all δᵢ and all weights;
//! 4) δ = Σᵢ δᵢ, divided by the divisor when `normalize`, times `lambda`; θ = θ_base + δ.
//!
//! Like mergekit, and unlike PEFT's TIES (which elects signs on unweighted deltas and divides by the
//! number of kept models), the sign is elected on weighted deltas and the divisor is the kept weight.
//! Everything is computed in f32 in mergekit's operation order, so merges of f32 models match it
//! bit for bit up to the summation order of the rescaling norms.

use crate::error::{MergeError, Result};
use crate::methods::{
    Combine, Job, Keep, MergeMethod, ParamSpec, Sparse, Sparsification, SparsifyParams, TopK, sparsify, with_scratch,
};
use crate::recipe::Value;
use crate::rng;

/// A configured member of the family.
#[derive(Debug, Clone, Copy)]
pub struct TaskVectors {
    /// Method name.
    pub name: &'static str,
    /// How task vectors are sparsified, if at all.
    pub sparsification: Option<Sparsification>,
    /// Whether signs are elected (TIES consensus by sum).
    pub consensus: bool,
    /// Default of `normalize`.
    pub normalize: bool,
    /// Default of `rescale`.
    pub rescale: bool,
    /// The paper.
    pub reference: &'static str,
}

/// The named methods, with mergekit's defaults.
pub const TASK_VECTOR_METHODS: &[TaskVectors] = &[
    TaskVectors {
        name: "task_arithmetic",
        sparsification: None,
        consensus: false,
        normalize: false,
        rescale: false,
        reference: "https://arxiv.org/abs/2212.04089",
    },
    TaskVectors {
        name: "ties",
        sparsification: Some(Sparsification::Magnitude),
        consensus: true,
        normalize: true,
        rescale: false,
        reference: "https://arxiv.org/abs/2306.01708",
    },
    TaskVectors {
        name: "dare_ties",
        sparsification: Some(Sparsification::Random),
        consensus: true,
        normalize: false,
        rescale: true,
        reference: "https://arxiv.org/abs/2311.03099",
    },
    TaskVectors {
        name: "dare_linear",
        sparsification: Some(Sparsification::Random),
        consensus: false,
        normalize: false,
        rescale: true,
        reference: "https://arxiv.org/abs/2311.03099",
    },
    TaskVectors {
        name: "breadcrumbs",
        sparsification: Some(Sparsification::MagnitudeOutliers),
        consensus: false,
        normalize: false,
        rescale: false,
        reference: "https://arxiv.org/abs/2312.06795",
    },
    TaskVectors {
        name: "breadcrumbs_ties",
        sparsification: Some(Sparsification::MagnitudeOutliers),
        consensus: true,
        normalize: false,
        rescale: false,
        reference: "https://arxiv.org/abs/2312.06795",
    },
    TaskVectors {
        name: "della",
        sparsification: Some(Sparsification::DellaMagprune),
        consensus: true,
        normalize: true,
        rescale: true,
        reference: "https://arxiv.org/abs/2406.11617",
    },
    TaskVectors {
        name: "della_linear",
        sparsification: Some(Sparsification::DellaMagprune),
        consensus: false,
        normalize: false,
        rescale: true,
        reference: "https://arxiv.org/abs/2406.11617",
    },
];

impl TaskVectors {
    /// The member named `name`.
    pub fn named(name: &str) -> Option<Self> {
        TASK_VECTOR_METHODS.iter().find(|m| m.name == name).copied()
    }
}

struct Prepared {
    sparse: Vec<Sparse>,
    weights: Vec<f32>,
    consensus: bool,
    normalize: bool,
    lambda: f32,
}

/// δ = θ − θ_base for a chunk.
fn read_delta(job: &Job<'_>, i: usize, start: usize, out: &mut [f32]) {
    let base = job.base.expect("task-vector methods have a base");
    with_scratch(1, out.len(), |s| {
        base.read(start, &mut s[0]);
        job.models[i].read(start, out);
        out.iter_mut().zip(s[0].iter()).for_each(|(d, b)| *d -= b);
    })
}

impl MergeMethod for TaskVectors {
    fn name(&self) -> &'static str {
        self.name
    }

    fn needs_base(&self) -> bool {
        true
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![
            ParamSpec::shared("normalize", Some(Value::Bool(self.normalize))),
            ParamSpec::shared("rescale", Some(Value::Bool(self.rescale))),
            ParamSpec::shared("lambda", Some(Value::Number(1.0))),
            // Accepted for compatibility; the mask is never materialised, so it changes nothing.
            ParamSpec::shared("int8_mask", Some(Value::Bool(false))),
            ParamSpec::model("weight", None),
            ParamSpec::model("density", Some(Value::Number(1.0))),
        ];
        match self.sparsification {
            Some(Sparsification::MagnitudeOutliers) => p.push(ParamSpec::model("gamma", Some(Value::Number(0.01)))),
            Some(Sparsification::DellaMagprune) => p.push(ParamSpec::model("epsilon", Some(Value::Number(0.15)))),
            _ => {}
        }
        p
    }

    fn prepare(&self, job: &Job<'_>) -> Result<Box<dyn Combine>> {
        let n = job.numel();
        let cols = job.shape.last().copied().unwrap_or(1);
        let rescale = job.params.flag("rescale");
        let mut sparse = Vec::with_capacity(job.models.len());
        for i in 0..job.models.len() {
            let s = match self.sparsification {
                None => Sparse { keep: Keep::All, scale: 1.0 },
                Some(method) => {
                    let has = |k: &str| self.params().iter().any(|p| p.name == k);
                    let density = job.params.model_number(i, "density");
                    if !(density > 0.0 && density <= 1.0) {
                        return Err(MergeError::Parameter(format!(
                            "tensor '{}': density {density} of model {} is outside (0, 1]; density is the fraction \
                             of the task vector kept, as in mergekit",
                            job.tensor,
                            i + 1
                        )));
                    }
                    let p = SparsifyParams {
                        density,
                        gamma: if has("gamma") { job.params.model_number(i, "gamma") } else { 0.0 },
                        epsilon: if has("epsilon") { job.params.model_number(i, "epsilon") } else { 0.0 },
                        rescale,
                    };
                    let stream = rng::stream(job.seed, job.tensor, i);
                    sparsify(method, p, n, cols, stream, job.tensor, &|s, out| read_delta(job, i, s, out))?
                }
            };
            sparse.push(s);
        }
        Ok(Box::new(Prepared {
            sparse,
            weights: (0..job.models.len()).map(|i| job.params.model_number(i, "weight") as f32).collect(),
            consensus: self.consensus,
            normalize: job.params.flag("normalize"),
            lambda: job.params.number("lambda") as f32,
        }))
    }
}

impl Combine for Prepared {
    fn fill(&self, job: &Job<'_>, start: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { self.fill_avx2(job, start, out) };
        }
        self.fill_any(job, start, out)
    }
}

impl Prepared {
    /// `fill_any` compiled for AVX2: its loops are elementwise, so 8 lanes instead of SSE's 4. Rust
    /// never fuses a multiply and an add on its own, so the results are the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_avx2(&self, job: &Job<'_>, start: usize, out: &mut [f32]) {
        self.fill_any(job, start, out)
    }

    #[inline(always)]
    fn fill_any(&self, job: &Job<'_>, start: usize, out: &mut [f32]) {
        let m = job.models.len();
        let len = out.len();
        // One loop per model and per step, over contiguous chunks, so each loop vectorizes; a loop
        // over models inside a loop over elements ran 5x slower.
        with_scratch(m + 4, len, |s| {
            let (base, rest) = s.split_first_mut().expect("m + 4 buffers");
            let (deltas, tmp) = rest.split_at_mut(m);
            let [mixed, sign, divisor] = tmp else { unreachable!("three temporaries") };
            job.base.expect("base").read(start, base);
            // 1)-2) sparsified, rescaled, weighted task vectors: ((δ·mask)·scale)·w, mergekit's order
            for (i, d) in deltas.iter_mut().enumerate() {
                job.models[i].read(start, d);
                d.iter_mut().zip(base.iter()).for_each(|(d, b)| *d -= b);
                let (sp, w) = (&self.sparse[i], self.weights[i]);
                apply_mask(&sp.keep, start, d);
                let scale = sp.scale;
                d.iter_mut().for_each(|x| *x = (*x * scale) * w);
            }
            // 3) sign election and disjoint sum
            mixed.fill(0.0);
            if self.consensus {
                sign.fill(0.0);
                for d in deltas.iter() {
                    sign.iter_mut().zip(d.iter()).for_each(|(s, &x)| *s += x);
                }
                // the majority sign: + where Σδ ≥ 0
                sign.iter_mut().for_each(|s| *s = if *s >= 0.0 { 1.0 } else { -1.0 });
                divisor.fill(0.0);
                for (d, &w) in deltas.iter().zip(&self.weights) {
                    for ((mx, dv), (&x, &sg)) in mixed.iter_mut().zip(divisor.iter_mut()).zip(d.iter().zip(sign.iter()))
                    {
                        // sign(x) == majority, without branches: random signs would mispredict half
                        // the time, which made this loop 4x slower than the arithmetic
                        let keep = ((x > 0.0) & (sg > 0.0)) | ((x < 0.0) & (sg < 0.0));
                        *mx += if keep { x } else { 0.0 };
                        *dv += if keep { w } else { 0.0 };
                    }
                }
                divisor.iter_mut().for_each(|v| *v = if *v == 0.0 { 1.0 } else { *v });
            } else {
                for d in deltas.iter() {
                    mixed.iter_mut().zip(d.iter()).for_each(|(mx, &x)| *mx += x);
                }
                let mut w = 0f32;
                for &x in &self.weights {
                    w += x;
                }
                divisor.fill(if w.abs() < 1e-8 { 1.0 } else { w });
            }
            // 4) normalise, scale, add to the base
            for ((o, (&b, &mx)), &dv) in out.iter_mut().zip(base.iter().zip(mixed.iter())).zip(divisor.iter()) {
                let mut x = mx;
                if self.normalize {
                    x /= dv;
                }
                if self.lambda != 1.0 {
                    x *= self.lambda;
                }
                *o = b + x;
            }
        })
    }
}

/// Multiplies the elements `keep` drops by 0 (as mergekit's `tensor * mask`), one loop per kind of
/// mask so that each is free of unpredictable branches.
fn apply_mask(keep: &Keep, start: usize, d: &mut [f32]) {
    match keep {
        Keep::All => {}
        Keep::Nothing => d.iter_mut().for_each(|x| *x *= 0.0),
        Keep::Top(t) => threshold_mask(t, None, start, d),
        Keep::Band { outer, inner } => threshold_mask(outer, Some(inner), start, d),
        Keep::Random { stream, p } => d.iter_mut().enumerate().for_each(|(j, x)| {
            *x *= rng::bernoulli(*stream, (start + j) as u64, *p) as u8 as f32;
        }),
        Keep::Bits(_) => d.iter_mut().enumerate().for_each(|(j, x)| *x *= keep.keeps(start + j, *x) as u8 as f32),
    }
}

/// Keeps elements in the top-k `outer` and not in the top-k `inner`.
fn threshold_mask(outer: &TopK, inner: Option<&TopK>, start: usize, d: &mut [f32]) {
    // (bits, last_tie) with "keep everything" and "keep nothing" as extreme thresholds
    let bounds = |t: &TopK| match *t {
        TopK::All => (0u32, usize::MAX, true),
        TopK::None => (u32::MAX, 0, false),
        TopK::Threshold { bits, last_tie } => (bits, last_tie, false),
    };
    let in_top =
        |(bits, last, all): (u32, usize, bool), i: usize, b: u32| all | (b > bits) | ((b == bits) & (i <= last));
    let o = bounds(outer);
    let inn = inner.map(bounds);
    for (j, x) in d.iter_mut().enumerate() {
        let b = x.to_bits() & 0x7fff_ffff;
        let i = start + j;
        let mut keep = in_top(o, i, b);
        if let Some(n) = inn {
            keep &= !in_top(n, i, b);
        }
        *x *= keep as u8 as f32;
    }
}
