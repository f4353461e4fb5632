//! Model Stock: interpolate between the base and the average of the fine-tunes, by a ratio set from
//! the angle between their task vectors.
//!
//! Reference: Jang et al., "Model Stock", <https://arxiv.org/abs/2403.19522>; mergekit's
//! `merge_methods/model_stock.py` (whole-tensor angles, `filter_wise = false`). With N models and
//! cos θ the mean pairwise cosine of the task vectors, t = N·cos θ / (1 + (N−1)·cos θ) and
//! θ = t·mean(θᵢ) + (1−t)·θ_base; at the singularity 1 + (N−1)·cos θ ≈ 0 the base is kept.

use rayon::prelude::*;

use crate::error::{MergeError, Result};
use crate::methods::{Combine, Job, MergeMethod, ParamSpec, with_scratch};
use crate::recipe::Value;
use crate::stream::chunks;

/// The model stock method.
#[derive(Debug, Clone, Copy)]
pub struct ModelStock;

struct Prepared {
    t: f32,
}

impl MergeMethod for ModelStock {
    fn name(&self) -> &'static str {
        "model_stock"
    }

    fn needs_base(&self) -> bool {
        true
    }

    fn model_count(&self) -> (usize, usize) {
        (2, usize::MAX)
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::shared("filter_wise", Some(Value::Bool(false)))]
    }

    fn prepare(&self, job: &Job<'_>) -> Result<Box<dyn Combine>> {
        if job.params.flag("filter_wise") {
            return Err(MergeError::Parameter("model_stock: filter_wise = true is not supported".into()));
        }
        let m = job.models.len();
        let base = job.base.expect("base");
        // Gram matrix of the task vectors, accumulated in f64.
        let gram = chunks(job.numel())
            .map(|(s, e)| {
                with_scratch(m + 1, e - s, |buf| {
                    let (b, d) = buf.split_first_mut().expect("buffers");
                    base.read(s, b);
                    for (i, di) in d.iter_mut().enumerate() {
                        job.models[i].read(s, di);
                        di.iter_mut().zip(b.iter()).for_each(|(x, y)| *x -= y);
                    }
                    let mut g = vec![0f64; m * m];
                    for i in 0..m {
                        for j in i..m {
                            g[i * m + j] = d[i].iter().zip(d[j].iter()).map(|(&x, &y)| x as f64 * y as f64).sum();
                        }
                    }
                    g
                })
            })
            .reduce(
                || vec![0f64; m * m],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let mut cos = Vec::new();
        for i in 0..m {
            for j in i + 1..m {
                let norm = (gram[i * m + i].sqrt() * gram[j * m + j].sqrt()).max(1e-6);
                cos.push((gram[i * m + j] / norm).clamp(-1.0, 1.0));
            }
        }
        let cos = cos.iter().sum::<f64>() / cos.len() as f64;
        let n = m as f64;
        let den = 1.0 + (n - 1.0) * cos;
        let t = if den.abs() < 1e-6 { 0.0 } else { n * cos / den };
        Ok(Box::new(Prepared { t: t as f32 }))
    }
}

impl Combine for Prepared {
    fn fill(&self, job: &Job<'_>, start: usize, out: &mut [f32]) {
        let m = job.models.len();
        with_scratch(2, out.len(), |s| {
            let (avg, x) = s.split_at_mut(1);
            let (avg, x) = (&mut avg[0], &mut x[0]);
            avg.fill(0.0);
            for src in &job.models {
                src.read(start, x);
                avg.iter_mut().zip(x.iter()).for_each(|(a, &v)| *a += v);
            }
            job.base.expect("base").read(start, out);
            let t = self.t;
            out.iter_mut().zip(avg.iter()).for_each(|(o, &a)| {
                *o = t * (a / m as f32) + (1.0 - t) * *o;
            });
        })
    }
}
