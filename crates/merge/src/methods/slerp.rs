//! Spherical linear interpolation between the base and one other model, per tensor.
//!
//! Reference: Shoemake 1985, <https://en.wikipedia.org/wiki/Slerp>; mergekit's `merge_methods/slerp.py`.
//! With θ the angle between the two tensors (flattened, each divided by its norm),
//! result = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b, falling back to (1−t)·a + t·b when the tensors
//! are nearly collinear (|cos θ| > 0.9995). Norms and the dot product are accumulated in f64 (mergekit
//! uses f32 chunk norms), so results agree with mergekit to within f32 rounding, not bit for bit.

use rayon::prelude::*;

use crate::error::Result;
use crate::methods::{Combine, Job, MergeMethod, ParamSpec, with_scratch};
use crate::stream::chunks;

/// The slerp method.
#[derive(Debug, Clone, Copy)]
pub struct Slerp;

struct Prepared {
    ca: f32,
    cb: f32,
}

/// (Σa², Σb², Σab) over two sources.
pub(crate) fn dots(a: &crate::source::Source<'_>, b: &crate::source::Source<'_>) -> (f64, f64, f64) {
    chunks(a.numel())
        .map(|(s, e)| {
            with_scratch(2, e - s, |buf| {
                let (x, y) = buf.split_at_mut(1);
                a.read(s, &mut x[0]);
                b.read(s, &mut y[0]);
                let (mut aa, mut bb, mut ab) = (0f64, 0f64, 0f64);
                for (&p, &q) in x[0].iter().zip(y[0].iter()) {
                    let (p, q) = (p as f64, q as f64);
                    aa += p * p;
                    bb += q * q;
                    ab += p * q;
                }
                (aa, bb, ab)
            })
        })
        .reduce(|| (0.0, 0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2))
}

impl MergeMethod for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }

    fn needs_base(&self) -> bool {
        true
    }

    fn model_count(&self) -> (usize, usize) {
        (1, 1)
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::shared("t", None)]
    }

    fn prepare(&self, job: &Job<'_>) -> Result<Box<dyn Combine>> {
        let t = job.params.number("t");
        let (aa, bb, ab) = dots(job.base.expect("base"), job.models[0]);
        const EPS: f64 = 1e-8;
        let na = if aa.sqrt() > EPS { aa.sqrt() } else { 1.0 };
        let nb = if bb.sqrt() > EPS { bb.sqrt() } else { 1.0 };
        let dot = (ab / (na * nb)).clamp(-1.0, 1.0);
        let (ca, cb) = if dot.abs() > 0.9995 {
            (1.0 - t, t)
        } else {
            let theta = dot.acos();
            let s = theta.sin();
            (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
        };
        Ok(Box::new(Prepared { ca: ca as f32, cb: cb as f32 }))
    }
}

impl Combine for Prepared {
    fn fill(&self, job: &Job<'_>, start: usize, out: &mut [f32]) {
        with_scratch(1, out.len(), |s| {
            job.base.expect("base").read(start, out);
            job.models[0].read(start, &mut s[0]);
            out.iter_mut().zip(s[0].iter()).for_each(|(a, &b)| {
                *a = self.ca * *a + self.cb * b;
            });
        })
    }
}
