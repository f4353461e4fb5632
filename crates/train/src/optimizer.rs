//! AdamW with decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101), step for step as
//! `torch.optim.AdamW` computes it, so that a run replays PEFT + PyTorch's within float rounding:
//!
//! 1) p ← p · (1 − lr·wd)
//! 2) m ← m + (1 − β1)·(g − m)            (torch's lerp)
//! 3) v ← β2·v + (1 − β2)·g²
//! 4) p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//!
//! Scalars are computed in f64 (as Python floats are), tensors in f32.

use lora_core::burn::tensor::Tensor;

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
}

impl AdamW {
    /// Fresh state for parameters of the given shapes (zero moments).
    pub fn new(config: AdamWConfig, params: &[Tensor<2>]) -> Self {
        let moments = params.iter().map(|p| (p.zeros_like().inner(), p.zeros_like().inner())).collect();
        Self { config, step: 0, moments }
    }

    /// One update. `params` are the current values (any autodiff association is dropped), `grads`
    /// their gradients; returns the new values, without autodiff.
    pub fn update(&mut self, params: Vec<Tensor<2>>, grads: Vec<Tensor<2>>, lr: f64) -> Vec<Tensor<2>> {
        assert_eq!(params.len(), self.moments.len(), "parameter count changed");
        assert_eq!(grads.len(), self.moments.len(), "gradient count differs from parameters");
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        let mut out = Vec::with_capacity(params.len());
        for ((p, g), (m, v)) in params.into_iter().zip(grads).zip(self.moments.iter_mut()) {
            let (p, g) = (p.inner(), g.inner());
            let p = p * (1.0 - lr * c.weight_decay); // 1)
            let new_m = m.clone() + (g.clone() - m.clone()) * (1.0 - c.beta1); // 2)
            let new_v = v.clone() * c.beta2 + g.clone() * g * (1.0 - c.beta2); // 3)
            let denom = new_v.clone().sqrt() / bias2_sqrt + c.eps;
            out.push(p - new_m.clone() / denom * step_size); // 4)
            *m = new_m;
            *v = new_v;
        }
        out
    }
}
