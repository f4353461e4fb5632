//! RMSNorm as in Llama (`LlamaRMSNorm`): y = x / sqrt(mean(x²) + eps) · weight.
//!
//! burn-nn has an RmsNorm, but its parameter is called `gamma`; ours keeps Hugging Face's `weight` so that a
//! tensor name maps to a field with no renaming table. The mean is taken in f32 whatever the input dtype,
//! as transformers does (`hidden_states.to(torch.float32)`), because a bf16 sum of squares over thousands
//! of channels loses most of its mantissa.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::error::Result;
use crate::weights::Weights;

/// Root-mean-square layer norm over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `weight`: [dim].
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight`.
    pub fn load(w: &Weights, prefix: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self { weight: Param::from_tensor(w.tensor(&format!("{prefix}.weight"), [dim], device)?), eps })
    }

    /// # Shapes
    /// - x: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = self.weight.val();
        if crate::cpu_kernel::use_fused(&x) && weight.dtype() == DType::F32 {
            use crate::fused_rms_norm::RmsNormBackend;
            let y = <burn::backend::Dispatch as RmsNormBackend>::rms_norm(
                x.into_dispatch(),
                weight.into_dispatch(),
                self.eps,
            );
            return Tensor::from_dispatch(y);
        }
        self.forward_reference(x)
    }

    /// The plain composition of burn operations, the reference of the fused CPU kernel
    /// ([`crate::fused_rms_norm`]) and the path of the other backends.
    ///
    /// # Shapes
    /// - x: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let rms = (x32.clone().square().mean_dim(D - 1) + self.eps).sqrt(); // [..., 1]
        ((x32 / rms).cast(dtype)) * self.weight.val().unsqueeze()
    }
}
