//! A linear layer stored as Hugging Face stores it: `weight` [out, in], optional `bias` [out].
//!
//! Keeping PyTorch's layout avoids a transpose of every matrix at load time; burn's CPU and CUDA matmuls
//! read the transposed view by strides without copying. The weight is frozen ([`BaseWeight`]): dense in
//! the base dtype, or NF4, multiplied by [`frozen_matmul`], which never keeps an f32 copy of the weight
//! (nor the input) between forward and backward.

use burn::module::{Module, Param};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use crate::error::Result;
use crate::io::load_options::{LoadOptions, Quantize};
use crate::io::weights::Weights;
use crate::kernels::frozen_matmul::{BLOCK_VALUES, frozen_matmul_in};
use crate::network::base_weight::BaseWeight;
use crate::network::dora::Dora;
use crate::network::lora::LoraAdapter;
use crate::quant::nf4_device::DeviceNf4;

/// y = x·Wᵀ + b, plus the low-rank updates of any attached LoRA adapters.
#[derive(Module, Debug)]
pub struct Linear {
    /// `weight`: [out, in].
    #[module(skip)]
    pub weight: BaseWeight,
    /// `bias`: [out].
    pub bias: Option<Param<Tensor<1>>>,
    /// Attached adapters (none for a plain layer; several when adapters are combined at inference).
    pub lora: Vec<LoraAdapter>,
    /// The dtype the base's product runs in, forward and backward (`None`: the input's, f32). bf16 on
    /// a GPU for a bf16 base ([`LoadOptions::compute_dtype`]); the adapters' products stay in f32.
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) in the base dtype, quantized when
    /// `opts` says so (`quantizable` is false for the head, which QLoRA keeps dense).
    pub fn load(
        w: &Weights,
        prefix: &str,
        (d_in, d_out): (usize, usize),
        bias: bool,
        opts: &LoadOptions,
        quantizable: bool,
        device: &Device,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        // A 4-bit checkpoint's weight is held as stored, whatever `quantize` says: its codes are
        // what the model is.
        let nf4 = match (w.stored_nf4(&name, [d_out, d_in])?, opts.quantize) {
            (Some(q), _) => Some(q),
            (None, Quantize::Nf4 { double_quant }) if quantizable => {
                Some(w.nf4(&name, [d_out, d_in], double_quant, opts.dtype.dtype())?)
            }
            _ => None,
        };
        let weight = match nf4 {
            Some(q) if crate::kernels::backend::is_cpu(device) => BaseWeight::Nf4(std::sync::Arc::new(q)),
            // On a GPU the codes live and are dequantized there (nf4_device.rs).
            Some(q) => BaseWeight::Nf4Device(std::sync::Arc::new(DeviceNf4::upload(&q, device))),
            None => BaseWeight::Dense(w.tensor_as(&name, [d_out, d_in], opts.dtype.dtype(), device)?),
        };
        let bias =
            if bias { Some(Param::from_tensor(w.tensor(&format!("{prefix}.bias"), [d_out], device)?)) } else { None };
        Ok(Self { weight, bias, lora: Vec::new(), compute: opts.compute_dtype(device) })
    }

    /// A frozen layer of a weight given as values (an expert's gate and up projections stacked), held
    /// as [`Self::load`] holds a stored one: NF4 when the options quantize (bitsandbytes' blocks over
    /// the values in order), else in the load dtype. No bias.
    ///
    /// # Shapes
    /// - values: `[d_out · d_in]`, row-major
    pub fn from_values(mut values: Vec<f32>, [d_out, d_in]: [usize; 2], opts: &LoadOptions, device: &Device) -> Self {
        let weight = match opts.quantize {
            Quantize::Nf4 { double_quant } => {
                // As Weights::nf4: the values rounded to the load dtype first.
                crate::io::weights::round_to(&mut values, opts.dtype.dtype());
                let q = lora_formats::nf4::Nf4Tensor::quantize(&values, &[d_out, d_in], double_quant);
                if crate::kernels::backend::is_cpu(device) {
                    BaseWeight::Nf4(std::sync::Arc::new(q))
                } else {
                    BaseWeight::Nf4Device(std::sync::Arc::new(DeviceNf4::upload(&q, device)))
                }
            }
            Quantize::None => {
                BaseWeight::Dense(crate::io::weights::held_from_f32(values, [d_out, d_in], opts.dtype.dtype(), device))
            }
        };
        Self { weight, bias: None, lora: Vec::new(), compute: opts.compute_dtype(device) }
    }

    /// A frozen layer of a 4-bit weight (a stored bitsandbytes one, or several stacked), on the CPU
    /// as the codes, elsewhere uploaded. No bias.
    pub fn from_nf4(q: lora_formats::nf4::Nf4Tensor, opts: &LoadOptions, device: &Device) -> Self {
        let weight = if crate::kernels::backend::is_cpu(device) {
            BaseWeight::Nf4(std::sync::Arc::new(q))
        } else {
            BaseWeight::Nf4Device(std::sync::Arc::new(DeviceNf4::upload(&q, device)))
        };
        Self { weight, bias: None, lora: Vec::new(), compute: opts.compute_dtype(device) }
    }

    /// Builds a layer from an existing weight (e.g. tied embeddings), computing in the input's dtype.
    pub fn from_weight(weight: Tensor<2>) -> Self {
        Self { weight: BaseWeight::Dense(weight), bias: None, lora: Vec::new(), compute: None }
    }

    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let ([adapter], BaseWeight::Dense(w)) = (self.lora.as_slice(), &self.weight)
            && w.dtype() == burn::tensor::DType::F32
            && adapter.lora_a.dtype() == burn::tensor::DType::F32
            && adapter.lora_b.dtype() == burn::tensor::DType::F32
            && crate::kernels::cpu_kernel::use_fused(&x)
        {
            // One adapter on an f32 base on the CPU: the fused layer (crate::kernels::fused_lora_linear).
            let keep = adapter.dropout_keep(x.shape().num_elements());
            let fused = |x: Tensor<2>, keep: Option<Vec<f32>>| {
                crate::kernels::fused_lora_linear::lora_linear(
                    x,
                    w.clone(),
                    adapter.lora_a.clone(),
                    adapter.lora_b.clone(),
                    adapter.scaling,
                    keep,
                )
            };
            match (&adapter.dora, keep) {
                (None, keep) => return self.on_rows(x, |x| fused(x, keep)),
                // DoRA without dropout: g ⊙ (W·x + s·B·A·x) is the fused layer's output scaled per row.
                (Some(dora), None) => {
                    let g = dora.scale(&self.weight, &adapter.lora_a, &adapter.lora_b, adapter.scaling);
                    return self.plus_bias(self.rows(x, |x| fused(x, None)) * g.unsqueeze::<D>());
                }
                (Some(_), Some(_)) => {}
            }
        }
        self.forward_reference(x)
    }

    /// The frozen matmul, the bias and each adapter's path composed from burn operations: the
    /// reference of the fused CPU layer and the path of every other case.
    ///
    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // Every base weight, f32 included, goes through the frozen matmul: it saves nothing of x for
        // backward, where burn's matmul would keep both operands (measured on a 1B shape: 12.3 GB peak
        // with burn's linear in f32, 6.3 GB with this in bf16, and faster).
        if let [adapter @ LoraAdapter { dora: Some(dora), .. }] = self.lora.as_slice() {
            return self.forward_dora(x, adapter, dora);
        }
        let base = self.on_rows(x.clone(), |x| self.frozen(x));
        self.lora.iter().fold(base, |y, a| y + a.forward(x.clone()))
    }

    /// A DoRA adapter alone on the layer, as PEFT runs it ([`crate::network::dora`]):
    /// g ⊙ (W·x + s·B·A·x) + b, or with dropout's x' while training W·x + b + (g − 1)·W·x' + g·s·B·A·x'.
    ///
    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    fn forward_dora<const D: usize>(&self, x: Tensor<D>, a: &LoraAdapter, dora: &Dora) -> Tensor<D> {
        let g = dora.scale(&self.weight, &a.lora_a, &a.lora_b, a.scaling).unsqueeze::<D>(); // [1, .., out]
        let y = match a.dropout_keep(x.shape().num_elements()) {
            None => (self.rows(x.clone(), |x| self.frozen(x)) + a.product(x)) * g,
            Some(keep) => {
                let keep = Tensor::<D>::from_data(TensorData::new(keep, x.shape()), &x.device());
                let dropped = x.clone() * keep;
                let wx = self.rows(x, |x| self.frozen(x));
                let wx_dropped = self.rows(dropped.clone(), |x| self.frozen(x));
                wx + wx_dropped * (g.clone() - 1.0) + a.product(dropped) * g
            }
        };
        self.plus_bias(y)
    }

    /// x·Wᵀ through the frozen matmul.
    ///
    /// # Shapes
    /// - x: `[rows, in]`
    /// - output: `[rows, out]`
    fn frozen(&self, x: Tensor<2>) -> Tensor<2> {
        frozen_matmul_in(x, &self.weight, self.compute, BLOCK_VALUES)
    }

    /// `product` of the rows of x (`[rows, in]` → `[rows, out]`), back in x's leading shape.
    fn rows<const D: usize>(&self, x: Tensor<D>, product: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Tensor<D> {
        let mut shape = x.dims();
        let d_in = shape[D - 1];
        let rows = shape[..D - 1].iter().product::<usize>();
        let y = product(x.reshape([rows, d_in])); // [rows, out]
        shape[D - 1] = self.weight.dims()[0];
        y.reshape(shape)
    }

    /// `product` of the rows of x (`[rows, in]` → `[rows, out]`), back in x's leading shape, plus the
    /// bias.
    fn on_rows<const D: usize>(&self, x: Tensor<D>, product: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Tensor<D> {
        self.plus_bias(self.rows(x, product))
    }

    /// y plus the bias, when the layer has one.
    fn plus_bias<const D: usize>(&self, y: Tensor<D>) -> Tensor<D> {
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }

    /// Input and output widths.
    pub fn dims(&self) -> (usize, usize) {
        let [out, inp] = self.weight.dims();
        (inp, out)
    }
}
