//! DoRA, weight-decomposed low-rank adaptation (Liu et al., arXiv:2402.09353), as PEFT runs it
//! (`tuners/lora/dora.py`, `use_dora`):
//!
//! y = g ⊙ (W·x + s·B·A·x) + b,   g = m / ‖W + s·B·A‖ per output row, the norm detached,
//!
//! which is PEFT's `(g − 1)·W·x + g·s·B·A·x` added to the base layer's output. With dropout while
//! training, PEFT feeds the dropped input to both terms: y = W·x + b + (g − 1)·W·x' + g·s·B·A·x'.
//!
//! The row norms never form W + s·B·A: ‖W_o + s·(BA)_o‖² = ‖W_o‖² + 2s·B_o·(A·W_oᵀ) + s²·B_o·(A·Aᵀ)·B_oᵀ,
//! so a step costs one frozen product of the r rows of A (`frozen_matmul`, any base: dense, bf16,
//! NF4) and r×r work, against PEFT's dense [out, in] sum; ‖W_o‖² is computed once.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::kernels::frozen_matmul::{BLOCK_VALUES, frozen_matmul_in};
use crate::network::base_weight::BaseWeight;

/// DoRA's part of one adapter: the magnitude (PEFT's `lora_magnitude_vector`) and what its
/// scale needs of the frozen base.
#[derive(Module, Debug)]
pub struct Dora {
    /// m: [1, out] (a row, so that the trainer steps it beside the factors, which are 2-D).
    pub magnitude: Tensor<2>,
    /// ‖W_o‖² per output row: [1, out], the base's part of the weight norm, computed once in f32.
    pub base_norm_sq: Tensor<2>,
    /// g fixed when the adapter is loaded for inference (generate, eval, `merge --check`): [1, out].
    /// `None` while training, where g follows the factors and the magnitude every step.
    pub fixed_scale: Option<Tensor<2>>,
}

impl Dora {
    /// The DoRA part of an adapter with magnitude `magnitude` ([out]) on base `weight`.
    pub fn new(magnitude: Vec<f32>, weight: &BaseWeight, device: &Device, trainable: bool) -> Self {
        let out = magnitude.len();
        let base_norm_sq = weight.to_f32(device).square().sum_dim(1).reshape([1, out]);
        let mut magnitude = Tensor::<2>::from_data(TensorData::new(magnitude, [1, out]), device);
        if trainable {
            magnitude = magnitude.autodiff().require_grad();
        }
        Self { magnitude, base_norm_sq, fixed_scale: None }
    }

    /// A new adapter's DoRA part: m = ‖W + s·B·A‖ per row, PEFT's initial magnitude (the row norms
    /// of W when B is zero), so that the adapted layer starts as the base plus s·B·A.
    pub fn init(
        weight: &BaseWeight,
        lora_a: &Tensor<2>,
        lora_b: &Tensor<2>,
        s: f64,
        device: &Device,
        trainable: bool,
    ) -> Self {
        let out = lora_b.dims()[0];
        let mut dora = Self::new(vec![0.0; out], weight, device, false);
        let m = dora.weight_norm(weight, &lora_a.clone().inner(), &lora_b.clone().inner(), s).inner();
        dora.magnitude = if trainable { m.autodiff().require_grad() } else { m };
        dora
    }

    /// ‖W + s·B·A‖ per output row, without autodiff (PEFT detaches it).
    ///
    /// # Shapes
    /// - lora_a: `[r, in]`, lora_b: `[out, r]`
    /// - output: `[1, out]`
    pub fn weight_norm(&self, weight: &BaseWeight, lora_a: &Tensor<2>, lora_b: &Tensor<2>, s: f64) -> Tensor<2> {
        let (a, b) = (lora_a.clone().detach(), lora_b.clone().detach());
        let out = b.dims()[0];
        // A·Wᵀ: [r, out], the frozen product of A's rows (in f32 whatever the base's compute dtype).
        let aw = frozen_matmul_in(a.clone(), weight, None, BLOCK_VALUES);
        let cross = (b.clone() * aw.transpose()).sum_dim(1); // B_o·(A·W_oᵀ): [out, 1]
        let gram = a.clone().matmul(a.transpose()); // A·Aᵀ: [r, r]
        let quad = (b.clone().matmul(gram) * b).sum_dim(1); // B_o·A·Aᵀ·B_oᵀ: [out, 1]
        let sq = self.base_norm_sq.clone().detach() + (cross * (2.0 * s) + quad * (s * s)).reshape([1, out]);
        // A sum that rounds below zero (B·A ≈ −W) is a zero norm, as PEFT's.
        sq.clamp_min(0.0).sqrt().detach()
    }

    /// g = m / ‖W + s·B·A‖: [1, out], tracked through m while training.
    pub fn scale(&self, weight: &BaseWeight, lora_a: &Tensor<2>, lora_b: &Tensor<2>, s: f64) -> Tensor<2> {
        match &self.fixed_scale {
            Some(g) => g.clone(),
            None => self.magnitude.clone() / self.weight_norm(weight, lora_a, lora_b, s),
        }
    }

    /// Fixes g at its present value (for inference: the factors no longer change).
    pub fn fix(&mut self, weight: &BaseWeight, lora_a: &Tensor<2>, lora_b: &Tensor<2>, s: f64) {
        let g = self.magnitude.clone().inner() / self.weight_norm(weight, lora_a, lora_b, s).inner();
        self.fixed_scale = Some(g);
    }
}
