//! LoRA adapters on linear layers, with PEFT's semantics (Hu et al., arXiv:2106.09685; PEFT
//! `tuners/lora/layer.py`):
//!
//! y = W·x + b + s · B·(A·dropout(x)),   A: [r, in], B: [out, r], s = alpha / r (alpha / √r with rsLoRA).
//!
//! The low-rank path is computed as two thin matmuls, so the dense [out, in] delta is never formed
//! while training; [`LoraAdapter::delta`] forms it only for merging.

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};

/// One adapter on one linear layer.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `lora_A.weight`: [r, in].
    pub lora_a: Tensor<2>,
    /// `lora_B.weight`: [out, r].
    pub lora_b: Tensor<2>,
    /// s = alpha / r (or alpha / √r), times the adapter's weight when several are combined.
    pub scaling: f64,
    /// Probability of zeroing an input of the adapter path while training.
    pub dropout: f64,
    /// Dropout is active only while training.
    pub training: bool,
}

impl LoraAdapter {
    /// s·B·A·x for the input of the layer.
    ///
    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = if self.training && self.dropout > 0.0 {
            // Inverted dropout as torch.nn.Dropout: keep with probability 1-p, scale by 1/(1-p).
            // The RNG is the device's, seeded by the trainer before each forward pass.
            let keep = Tensor::<D>::random(x.shape(), Distribution::Bernoulli(1.0 - self.dropout), &x.device());
            x * keep / (1.0 - self.dropout)
        } else {
            x
        };
        let down = burn::tensor::module::linear(x, self.lora_a.clone().transpose(), None); // [..., r]
        burn::tensor::module::linear(down, self.lora_b.clone().transpose(), None) * self.scaling // [..., out]
    }

    /// The dense update s·B·A: [out, in].
    pub fn delta(&self) -> Tensor<2> {
        self.lora_b.clone().matmul(self.lora_a.clone()) * self.scaling
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }
}

/// The scaling PEFT applies: alpha / r, or alpha / √r with rsLoRA (Kalajdzievski, arXiv:2312.03732).
pub fn lora_scaling(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 }
}
