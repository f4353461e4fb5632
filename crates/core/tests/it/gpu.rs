//! The golden checks again on a GPU (`LORA_TEST_GPU=wgpu|cuda`; see `common::gpu_device`): the
//! CubeCL kernels, fusion and autodiff that burn's GPU backends share, against the same
//! transformers and bitsandbytes goldens as the CPU.
//!
//! Tolerance: 1e-4, the CPU's. The models are f32 end to end on the GPU as on the CPU; only the
//! order of the sums inside matmuls and reductions differs, which at these sizes moves logits by
//! far less than 1e-4.

use lora_core::adapter::load_adapter;
use lora_core::kernels::host::to_f32_vec;
use lora_core::network::base_weight::BaseWeight;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{BaseDtype, LoadOptions, Quantize};
use lora_formats::safetensors::SafetensorsFile;

use crate::common::*;
use crate::parity::check_architecture_on;

const TOL: f32 = 1e-4;

/// NF4 codes dequantized on the GPU: the host's values bit for bit.
#[test]
fn gpu_device_nf4_dequantizes_to_the_host_values_bit_for_bit() {
    let Some(device) = gpu_device() else { return };
    crate::quant::check_device_nf4_on(&device);
}

/// The tiled attention's values and gradients against burn's attention, both on the GPU.
#[test]
fn gpu_tiled_attention_equals_reference_values_and_gradients() {
    let Some(device) = gpu_device() else { return };
    crate::fused::check_tiled_attention_on(&device, TOL);
}

#[test]
fn gpu_every_architecture_matches_transformers() {
    let Some(device) = gpu_device() else { return };
    for name in ["llama", "llama-tied", "mistral", "qwen2", "qwen3", "qwen3_5", "qwen3_5-hub", "qwen3_moe", "mixtral"] {
        check_architecture_on(name, &device, TOL);
    }
    // Qwen3.5-MoE's hidden states agree to 1.22e-4 on lavapipe (within 1e-4 on the CPU), as its Hub
    // form's logits do on the CPU: held to the Hub form's 2e-4.
    check_architecture_on("qwen3_5_moe", &device, 2e-4);
}

/// The NF4 base (its codes on the GPU, dequantized there a block of rows at a time) and bf16 storage
/// on the GPU, against bitsandbytes' logits and the f32 load.
#[test]
fn gpu_nf4_and_bf16_bases_match_their_references() {
    let Some(device) = gpu_device() else { return };
    let g = SafetensorsFile::open(fixtures().join("qlora/golden.safetensors")).unwrap();
    let (ids, shape) = golden_i64(&g, "input_ids");
    let batch = TokenBatch::rows(ids.chunks(shape[1]).map(|r| r.iter().map(|&i| i as u32).collect()).collect());
    let opts = LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: true } };
    let mut model = CausalLm::load_dir_with(model_dir("llama"), &device, &opts).unwrap();
    // (LORA_TEST_GPU=cpu runs these checks on the CPU, which keeps its host NF4.)
    let on_device = matches!(model.model.layers[0].mlp.as_ref().unwrap().down_proj.weight, BaseWeight::Nf4Device(_));
    assert_eq!(on_device, !lora_core::kernels::backend::is_cpu(&device), "a GPU's NF4 codes stay on the GPU");
    let d =
        max_abs_diff(&to_f32_vec(model.forward(&batch, None).unwrap()).unwrap(), &golden_f32(&g, "logits.nf4-dq").0);
    assert!(d <= TOL, "nf4-dq on the GPU: max |Δ| {d:e}");
    load_adapter(&mut model, &fixtures().join("lora/adapter-qv"), 1.0, false).unwrap();
    let ours = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    let d = max_abs_diff(&ours, &golden_f32(&g, "logits.nf4-dq.adapter-qv").0);
    assert!(d <= TOL, "nf4-dq + adapter on the GPU: max |Δ| {d:e}");

    // bf16 and f16 storage where the device has them (the bf16 file's values are exact in f16; a
    // bf16 base computes in bf16 on CUDA); where it has not (WGSL has no bf16), loading says so
    // instead of computing garbage.
    let f32_model = CausalLm::load_dir(model_dir("llama-bf16"), &device).unwrap();
    let a = to_f32_vec(f32_model.forward(&batch, None).unwrap()).unwrap();
    for dtype in [BaseDtype::Bf16, BaseDtype::F16] {
        let opts = LoadOptions { dtype, quantize: Quantize::None };
        if device.supports_dtype(dtype.dtype()) {
            let model = CausalLm::load_dir_with(model_dir("llama-bf16"), &device, &opts).unwrap();
            let b = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
            let d = max_abs_diff(&a, &b);
            if opts.compute_dtype(&device).is_some() {
                // Products in bf16 (CUDA): bf16's rounding, as on the CPU when forced (quant.rs).
                let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                assert!(d > 0.0 && d <= 0.02 * scale, "{dtype} compute on the GPU: max |Δ| {d:e} (scale {scale})");
            } else {
                assert!(d <= 1e-5, "{dtype} storage on the GPU: max |Δ| {d:e}");
            }
        } else {
            let e = CausalLm::load_dir_with(model_dir("llama-bf16"), &device, &opts).err().expect("refused");
            assert!(e.to_string().contains(&format!("cannot compute in {dtype}")), "{e}");
        }
    }
}
