//! RMSNorm as in Llama (`LlamaRMSNorm`): y = x / sqrt(mean(x²) + eps) · weight; Qwen3.5's zero-centred
//! form (`Qwen3_5RMSNorm`), y = x / sqrt(mean(x²) + eps) · (1 + weight), multiplied in f32 before any
//! cast back; and the gated norm of its Gated DeltaNet output ([`GatedRmsNorm`]).
//!
//! burn-nn has an RmsNorm, but its parameter is called `gamma`; ours keeps Hugging Face's `weight` so that a
//! tensor name maps to a field with no renaming table. The mean is taken in f32 whatever the input dtype,
//! as transformers does (`hidden_states.to(torch.float32)`), because a bf16 sum of squares over thousands
//! of channels loses most of its mantissa.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::error::Result;
use crate::io::weights::Weights;

/// Root-mean-square layer norm over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `weight`: [dim].
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
    /// The scale is `1 + weight` (zero-centred, Qwen3.5) rather than `weight`.
    pub zero_centred: bool,
}

impl RmsNorm {
    /// Loads `{prefix}.weight`.
    pub fn load(w: &Weights, prefix: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Self::load_as(w, prefix, dim, eps, false, device)
    }

    /// Loads `{prefix}.weight` of a norm that scales by `1 + weight` when `zero_centred`.
    pub fn load_as(
        w: &Weights,
        prefix: &str,
        dim: usize,
        eps: f64,
        zero_centred: bool,
        device: &Device,
    ) -> Result<Self> {
        let weight = Param::from_tensor(w.tensor(&format!("{prefix}.weight"), [dim], device)?);
        Ok(Self { weight, eps, zero_centred })
    }

    /// The per-channel scale: `weight`, or `1 + weight` (in f32) for a zero-centred norm.
    fn scale(&self) -> Tensor<1> {
        let w = self.weight.val();
        if self.zero_centred { w.cast(DType::F32) + 1.0 } else { w }
    }

    /// # Shapes
    /// - x: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if crate::kernels::cpu_kernel::use_fused(&x) {
            let weight = self.scale();
            if weight.dtype() == DType::F32 {
                use crate::kernels::fused_rms_norm::RmsNormBackend;
                let y = <burn::backend::Dispatch as RmsNormBackend>::rms_norm(
                    x.into_dispatch(),
                    weight.into_dispatch(),
                    self.eps,
                );
                return Tensor::from_dispatch(y);
            }
        }
        self.forward_reference(x)
    }

    /// The plain composition of burn operations, the reference of the fused CPU kernel
    /// ([`crate::kernels::fused_rms_norm`]) and the path of the other backends.
    ///
    /// # Shapes
    /// - x: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let rms = (x32.clone().square().mean_dim(D - 1) + self.eps).sqrt(); // [..., 1]
        if self.zero_centred {
            // Qwen3.5 multiplies in f32, then casts (Llama casts, then multiplies).
            return ((x32 / rms) * self.scale().unsqueeze()).cast(dtype);
        }
        ((x32 / rms).cast(dtype)) * self.weight.val().unsqueeze()
    }
}

/// The gated RMSNorm of a Gated DeltaNet's output (`Qwen3_5RMSNormGated`): each value head is
/// normalised, scaled by `weight` (not zero-centred), and multiplied by `silu(z)`.
#[derive(Module, Debug)]
pub struct GatedRmsNorm {
    /// `weight`: [value_head_dim].
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl GatedRmsNorm {
    /// Loads `{prefix}.weight`.
    pub fn load(w: &Weights, prefix: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self { weight: Param::from_tensor(w.tensor(&format!("{prefix}.weight"), [dim], device)?), eps })
    }

    /// # Shapes
    /// - x, z: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>, z: Tensor<D>) -> Tensor<D> {
        use crate::kernels::cpu_kernel::use_fused;
        if use_fused(&x) && use_fused(&z) && self.weight.val().dtype() == DType::F32 {
            use crate::kernels::fused_gated_rms_norm::GatedRmsNormBackend;
            let y = <burn::backend::Dispatch as GatedRmsNormBackend>::gated_rms_norm(
                x.into_dispatch(),
                z.into_dispatch(),
                self.weight.val().into_dispatch(),
                self.eps,
            );
            return Tensor::from_dispatch(y);
        }
        self.forward_reference(x, z)
    }

    /// The plain composition of burn operations, the reference of the fused CPU kernel
    /// ([`crate::kernels::fused_gated_rms_norm`]) and the path of the other backends.
    ///
    /// # Shapes
    /// - x, z: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>, z: Tensor<D>) -> Tensor<D> {
        let x32 = x.cast(DType::F32);
        let rms = (x32.clone().square().mean_dim(D - 1) + self.eps).sqrt(); // [..., 1]
        let z = z.cast(DType::F32);
        (x32 / rms) * self.weight.val().cast(DType::F32).unsqueeze() * burn::tensor::activation::silu(z)
    }
}
