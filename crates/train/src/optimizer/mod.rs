//! AdamW with decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101), step for step as
//! `torch.optim.AdamW` computes it, so that a run replays PEFT + PyTorch's within float rounding:
//!
//! 1) p ← p · (1 − lr·wd)
//! 2) m ← m + (1 − β1)·(g − m)            (torch's lerp)
//! 3) v ← β2·v + (1 − β2)·g²
//! 4) p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//!
//! Scalars are computed in f64 (as Python floats are), tensors in f32.
//!
//! On burn-flex in f32 the update runs as one loop over each parameter's buffers ([`fused_cpu`]):
//! p, m and v are written where they are, so an update allocates nothing when it is handed the only
//! reference to each parameter. The composition of burn operations below is the reference it is
//! tested against, bit for bit, and the path every other backend takes.

mod fused_cpu;

use lora_core::burn::tensor::Tensor;
use lora_core::kernels::cpu_kernel::use_fused;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults: β = (0.9, 0.999), ε = 1e-8, weight decay 0.01.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// Optimizer state: first and second moments of each parameter, and the step count.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    /// (m, v) per parameter, in parameter order.
    pub moments: Vec<(Tensor<2>, Tensor<2>)>,
    /// Each parameter's learning rate as a multiple of the step's (1 each; LoRA+ gives B its ratio,
    /// PEFT's `create_loraplus_optimizer` groups). Weight decay follows the parameter's rate, as in
    /// torch's AdamW with per-group rates.
    pub lr_scales: Vec<f64>,
}

impl AdamW {
    /// Fresh state for parameters of the given shapes (zero moments).
    pub fn new(config: AdamWConfig, params: &[Tensor<2>]) -> Self {
        let moments = params.iter().map(|p| (p.zeros_like().inner(), p.zeros_like().inner())).collect();
        Self { config, step: 0, moments, lr_scales: vec![1.0; params.len()] }
    }

    /// One update. `params` are the current values (any autodiff association is dropped), `grads`
    /// their gradients; returns the new values, without autodiff. On burn-flex in f32, a parameter
    /// passed as its only reference is updated in its own buffer.
    pub fn update(&mut self, params: Vec<Tensor<2>>, grads: Vec<Tensor<2>>, lr: f64) -> Vec<Tensor<2>> {
        self.update_with(params, grads, lr, true)
    }

    /// [`AdamW::update`] with the fused CPU loop allowed or not (`false`: the composed burn
    /// operations on every backend).
    pub(crate) fn update_with(
        &mut self,
        params: Vec<Tensor<2>>,
        grads: Vec<Tensor<2>>,
        lr: f64,
        allow_fused: bool,
    ) -> Vec<Tensor<2>> {
        assert_eq!(params.len(), self.moments.len(), "parameter count changed");
        assert_eq!(grads.len(), self.moments.len(), "gradient count differs from parameters");
        assert_eq!(self.lr_scales.len(), self.moments.len(), "one learning-rate scale per parameter");
        self.step += 1;
        let scalars: Vec<StepScalars> = self.lr_scales.iter().map(|k| self.scalars(lr * k)).collect();
        let mut out = Vec::with_capacity(params.len());
        for (((p, g), (m, v)), s) in params.into_iter().zip(grads).zip(self.moments.iter_mut()).zip(&scalars) {
            let (p, g) = (p.inner(), g.inner());
            let fused = allow_fused && [&p, &g, &*m, &*v].into_iter().all(use_fused);
            if fused {
                out.push(fused_cpu::update(p, g, m, v, s));
            } else {
                out.push(composed(p, g, m, v, s));
            }
        }
        out
    }

    /// The scalars of step `self.step` at learning rate `lr`, computed in f64.
    fn scalars(&self, lr: f64) -> StepScalars {
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        StepScalars {
            decay: 1.0 - lr * c.weight_decay,
            one_minus_beta1: 1.0 - c.beta1,
            beta2: c.beta2,
            one_minus_beta2: 1.0 - c.beta2,
            bias2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
            eps: c.eps,
            step_size: lr / bias1,
        }
    }
}

/// The per-step constants of the update, in f64; both paths round each to f32 where it meets a
/// tensor, as burn does with a scalar operand.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    decay: f64,
    one_minus_beta1: f64,
    beta2: f64,
    one_minus_beta2: f64,
    bias2_sqrt: f64,
    eps: f64,
    step_size: f64,
}

/// The update as burn operations (the reference); replaces `m` and `v`, returns the new `p`.
fn composed(p: Tensor<2>, g: Tensor<2>, m: &mut Tensor<2>, v: &mut Tensor<2>, s: &StepScalars) -> Tensor<2> {
    let p = p * s.decay; // 1)
    let new_m = m.clone() + (g.clone() - m.clone()) * s.one_minus_beta1; // 2)
    let new_v = v.clone() * s.beta2 + g.clone() * g * s.one_minus_beta2; // 3)
    let denom = new_v.clone().sqrt() / s.bias2_sqrt + s.eps;
    let new_p = p - new_m.clone() / denom * s.step_size; // 4)
    *m = new_m;
    *v = new_v;
    new_p
}
