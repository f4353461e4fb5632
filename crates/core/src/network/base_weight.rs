//! How the frozen base holds the weight of a linear layer: a dense tensor in the base dtype (f32, bf16,
//! f16), or NF4-packed on the host (QLoRA). Only LoRA's A and B are ever trained, so the base weight
//! is a constant: it needs no gradient and no optimizer state, only a way to be multiplied.

use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use lora_formats::nf4::Nf4Tensor;

use crate::quant::nf4_device::DeviceNf4;

/// The stored weight `[out, in]` of a frozen linear layer.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A dense tensor in the dtype the base is held in.
    Dense(Tensor<2>),
    /// 4-bit NormalFloat, bitsandbytes' layout, on the host; dequantized block by block when used
    /// (the CPU's NF4).
    Nf4(Arc<Nf4Tensor>),
    /// 4-bit NormalFloat on the compute device, dequantized there block by block (a GPU's NF4).
    Nf4Device(Arc<DeviceNf4>),
}

impl BaseWeight {
    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(t) => t.dims(),
            Self::Nf4(q) => [q.shape[0], q.shape[1]],
            Self::Nf4Device(q) => q.shape,
        }
    }

    /// Bytes the weight takes in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.dims().iter().product::<usize>() * t.dtype().size(),
            Self::Nf4(q) => q.bytes(),
            Self::Nf4Device(q) => q.bytes(),
        }
    }

    /// The weight as a dense f32 tensor (dequantized or upcast): for merging and inspection.
    pub fn to_f32(&self, device: &Device) -> Tensor<2> {
        match self {
            Self::Dense(t) => t.clone().cast(DType::F32),
            Self::Nf4(q) => Tensor::from_data(TensorData::new(q.dequantize(), q.shape.clone()), device),
            Self::Nf4Device(q) => q.to_f32(),
        }
    }
}
