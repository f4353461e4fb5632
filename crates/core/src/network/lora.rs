//! LoRA adapters on linear layers, with PEFT's semantics (Hu et al., arXiv:2106.09685; PEFT
//! `tuners/lora/layer.py`):
//!
//! y = W·x + b + s · B·(A·dropout(x)),   A: [r, in], B: [out, r], s = alpha / r (alpha / √r with rsLoRA).
//!
//! The low-rank path is computed as two thin matmuls, so the dense [out, in] delta is never formed
//! while training; [`LoraAdapter::delta`] forms it only for merging.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use crate::network::dora::Dora;

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
    /// Seed of this adapter's dropout mask for the next forward pass (set by the trainer per
    /// micro-batch and module, so that masks are reproducible and independent of any global RNG).
    pub dropout_seed: u64,
    /// DoRA (PEFT's `use_dora`): the magnitude m, and the layer's output is
    /// g ⊙ (W·x + s·B·A·x) + bias with g = m / ‖W + s·B·A‖ per output row ([`crate::network::dora`]).
    pub dora: Option<Dora>,
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
            let mask = dropout_mask(x.shape().iter().product(), self.dropout, self.dropout_seed);
            let keep = Tensor::<D>::from_data(TensorData::new(mask, x.shape()), &x.device());
            x * keep
        } else {
            x
        };
        self.product(x)
    }

    /// s·B·A·x, without dropout.
    ///
    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn product<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let down = burn::tensor::module::linear(x, self.lora_a.clone().transpose(), None); // [..., r]
        burn::tensor::module::linear(down, self.lora_b.clone().transpose(), None) * self.scaling // [..., out]
    }

    /// The inverted-dropout mask of this forward pass over `n` inputs, or none when dropout is off.
    pub fn dropout_keep(&self, n: usize) -> Option<Vec<f32>> {
        (self.training && self.dropout > 0.0).then(|| dropout_mask(n, self.dropout, self.dropout_seed))
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

/// A dropout mask of `n` values, 0 with probability `p` and 1/(1−p) otherwise, from a counter-based
/// generator (splitmix64), so that the same seed gives the same mask on any thread.
pub fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let threshold = (p * (1u64 << 53) as f64) as u64;
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if (z >> 11) < threshold { 0.0 } else { keep }
        })
        .collect()
}
