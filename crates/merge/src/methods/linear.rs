//! Linear merge (model soup): Σᵢ wᵢ·θᵢ, divided by Σᵢ wᵢ when `normalize` (the default).
//!
//! Reference: Wortsman et al., "Model soups", <https://arxiv.org/abs/2203.05482>; mergekit's
//! `merge_methods/linear.py`. The arithmetic follows mergekit's f32 order exactly (accumulate
//! `acc += θᵢ·wᵢ` from zero in model order, then one division by the f32 sum of the weights), so f32
//! merges are bit-identical to mergekit's. mergekit's `addcmul_` runs torch's AVX2 kernel, which the
//! compiler contracts into a fused multiply-add: the accumulation here is fused too (`fma_axpy`); an
//! unfused multiply and add differs from mergekit by one ulp in a few percent of the elements.

use crate::error::Result;
use crate::methods::{Combine, Job, MergeMethod, ParamSpec, with_scratch};
use crate::recipe::Value;

/// The linear method.
#[derive(Debug, Clone, Copy)]
pub struct Linear;

struct Prepared {
    weights: Vec<f32>,
    denominator: Option<f32>,
}

impl MergeMethod for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn needs_base(&self) -> bool {
        false
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::model("weight", None), ParamSpec::shared("normalize", Some(Value::Bool(true)))]
    }

    fn prepare(&self, job: &Job<'_>) -> Result<Box<dyn Combine>> {
        let weights: Vec<f32> = (0..job.models.len()).map(|i| job.params.model_number(i, "weight") as f32).collect();
        let denominator = job.params.flag("normalize").then(|| weights.iter().sum::<f32>());
        Ok(Box::new(Prepared { weights, denominator }))
    }
}

impl Combine for Prepared {
    fn fill(&self, job: &Job<'_>, start: usize, out: &mut [f32]) {
        with_scratch(1, out.len(), |s| {
            let x = &mut s[0];
            out.fill(0.0);
            for (src, &w) in job.models.iter().zip(&self.weights) {
                src.read(start, x);
                fma_axpy(out, x, w);
            }
            if let Some(d) = self.denominator {
                out.iter_mut().for_each(|o| *o /= d);
            }
        })
    }
}

/// `out[i] = fma(x[i], w, out[i])`, with hardware FMA when the CPU has it.
fn fma_axpy(out: &mut [f32], x: &[f32], w: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX and FMA (checked above).
        return unsafe { fma_axpy_x86(out, x, w) };
    }
    // Correctly rounded in software (libm's fmaf) elsewhere: the same values, slower.
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.mul_add(w, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
unsafe fn fma_axpy_x86(out: &mut [f32], x: &[f32], w: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.mul_add(w, *o);
    }
}
