//! A linear layer stored as Hugging Face stores it: `weight` [out, in], optional `bias` [out].
//!
//! Keeping PyTorch's layout avoids a transpose of every matrix at load time; burn's CPU and CUDA matmuls
//! read the transposed view by strides without copying.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::lora::LoraAdapter;
use crate::weights::Weights;

/// y = x·Wᵀ + b, plus the low-rank updates of any attached LoRA adapters.
#[derive(Module, Debug)]
pub struct Linear {
    /// `weight`: [out, in].
    pub weight: Param<Tensor<2>>,
    /// `bias`: [out].
    pub bias: Option<Param<Tensor<1>>>,
    /// Attached adapters (none for a plain layer; several when adapters are combined at inference).
    pub lora: Vec<LoraAdapter>,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`).
    pub fn load(w: &Weights, prefix: &str, d_in: usize, d_out: usize, bias: bool, device: &Device) -> Result<Self> {
        let weight = Param::from_tensor(w.tensor(&format!("{prefix}.weight"), [d_out, d_in], device)?);
        let bias =
            if bias { Some(Param::from_tensor(w.tensor(&format!("{prefix}.bias"), [d_out], device)?)) } else { None };
        Ok(Self { weight, bias, lora: Vec::new() })
    }

    /// Builds a layer from an existing weight (e.g. tied embeddings).
    pub fn from_weight(weight: Tensor<2>) -> Self {
        Self { weight: Param::from_tensor(weight), bias: None, lora: Vec::new() }
    }

    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base =
            burn::tensor::module::linear(x.clone(), self.weight.val().transpose(), self.bias.as_ref().map(|b| b.val()));
        self.lora.iter().fold(base, |y, a| y + a.forward(x.clone()))
    }

    /// Input and output widths.
    pub fn dims(&self) -> (usize, usize) {
        let [out, inp] = self.weight.val().dims();
        (inp, out)
    }
}
