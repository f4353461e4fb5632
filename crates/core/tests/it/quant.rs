//! The scale work of the base: NF4 against bitsandbytes bit for bit (fixtures of
//! scripts/make_qlora_fixtures.py), bnb-NF4 + PEFT logits, the frozen-weight matmul against its plain
//! reference (values and gradients), bf16 bases, and the chunked loss against the full one.

use std::sync::Arc;

use lora_core::adapter::load_adapter;
use lora_core::burn::tensor::{DType, FloatDType, Tensor, TensorCreationOptions, TensorData};
use lora_core::io::weights::Weights;
use lora_core::kernels::frozen_matmul::{frozen_matmul_blocked, frozen_matmul_in};
use lora_core::kernels::host::to_f32_vec;
use lora_core::loss::chunked::head_loss_chunked;
use lora_core::loss::shifted_cross_entropy_sum;
use lora_core::network::base_weight::BaseWeight;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::quant::nf4_device::DeviceNf4;
use lora_core::{BaseDtype, LoadOptions, Quantize, default_device};
use lora_formats::nf4::{Absmax, Nf4Tensor, dynamic_map};
use lora_formats::safetensors::SafetensorsFile;

use crate::common::*;

fn nf4_golden() -> SafetensorsFile {
    SafetensorsFile::open(fixtures().join("qlora/nf4.safetensors")).unwrap()
}

fn bytes(f: &SafetensorsFile, name: &str) -> Vec<u8> {
    f.bytes(f.info(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))).to_vec()
}

/// `n` values in [-1, 1) from a linear congruential generator seeded with `seed`.
fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every tensor of the fixture (model weights and constructed edge cases): packed bytes, scales
/// and dequantized values equal bitsandbytes', with and without double quantization.
#[test]
fn nf4_equals_bitsandbytes_bit_for_bit() {
    let g = nf4_golden();
    let weights = Weights::open_dir(model_dir("llama")).unwrap();
    let mut checked = 0;
    for name in g.tensors().keys() {
        let Some(base) = name.strip_suffix(".packed") else { continue };
        if base.starts_with("bf16.") {
            continue;
        }
        let (values, shape) = if base.starts_with("edge.") {
            golden_f32(&g, &format!("{base}.input"))
        } else {
            weights.read_f32(base, &weights_shape(&weights, base)).unwrap()
        };
        let q = Nf4Tensor::quantize(&values, &shape, false);
        assert_eq!(q.packed, bytes(&g, name), "{base}: packed bytes");
        let Absmax::F32(absmax) = &q.absmax else { panic!("single quantization") };
        assert_eq!(bits(absmax), bits(&golden_f32(&g, &format!("{base}.absmax")).0), "{base}: absmax");
        assert_eq!(bits(&q.dequantize()), bits(&golden_f32(&g, &format!("{base}.dequant")).0), "{base}: dequant");

        let dq = Nf4Tensor::quantize(&values, &shape, true);
        assert_eq!(dq.packed, q.packed, "{base}: double quantization changes only the scales");
        let Absmax::Double { quantized, absmax, offset } = &dq.absmax else { panic!("double quantization") };
        assert_eq!(quantized, &bytes(&g, &format!("{base}.dq.absmax_q")), "{base}: quantized absmax");
        assert_eq!(bits(absmax), bits(&golden_f32(&g, &format!("{base}.dq.absmax2")).0), "{base}: absmax2");
        assert_eq!(offset.to_bits(), golden_f32(&g, &format!("{base}.dq.offset")).0[0].to_bits(), "{base}: offset");
        assert_eq!(
            bits(&dq.absmax.decode()),
            bits(&golden_f32(&g, &format!("{base}.dq.absmax_dequant")).0),
            "{base}: decoded absmax"
        );
        assert_eq!(
            bits(&dq.dequantize()),
            bits(&golden_f32(&g, &format!("{base}.dq.dequant")).0),
            "{base}: dq dequant"
        );
        checked += 1;
    }
    assert!(checked >= 21 + 15, "only {checked} tensors checked");
}

fn weights_shape(w: &Weights, name: &str) -> Vec<usize> {
    w.files().iter().find_map(|f| f.info(name).map(|i| i.shape.clone())).unwrap()
}

/// A bf16 checkpoint quantizes to what bitsandbytes makes of the same bf16 tensor.
#[test]
fn nf4_of_a_bf16_checkpoint_equals_bitsandbytes() {
    let g = nf4_golden();
    let weights = Weights::open_dir(model_dir("llama-bf16")).unwrap();
    let mut checked = 0;
    for name in g.tensors().keys() {
        let Some(base) = name.strip_prefix("bf16.").and_then(|n| n.strip_suffix(".packed")) else { continue };
        let (values, shape) = weights.read_f32(base, &weights_shape(&weights, base)).unwrap();
        let q = Nf4Tensor::quantize(&values, &shape, false);
        assert_eq!(q.packed, bytes(&g, name), "{base}: packed bytes");
        let Absmax::F32(absmax) = &q.absmax else { panic!() };
        assert_eq!(bits(absmax), bits(&golden_f32(&g, &format!("bf16.{base}.absmax")).0), "{base}: absmax");
        checked += 1;
    }
    assert_eq!(checked, 21);
}

#[test]
fn dynamic_map_and_codebook_equal_bitsandbytes() {
    let g = nf4_golden();
    assert_eq!(bits(&dynamic_map()), bits(&golden_f32(&g, "dynamic_code").0));
    assert_eq!(bits(&lora_formats::nf4::CODE), bits(&golden_f32(&g, "nf4_code").0));
}

/// transformers + bitsandbytes (nf4, compute f32) with and without a PEFT adapter on top.
#[test]
fn nf4_model_logits_equal_bitsandbytes_with_and_without_peft_adapter() {
    let g = SafetensorsFile::open(fixtures().join("qlora/golden.safetensors")).unwrap();
    let (ids, shape) = golden_i64(&g, "input_ids");
    let t = shape[1];
    let batch = TokenBatch::rows(ids.chunks(t).map(|r| r.iter().map(|&i| i as u32).collect()).collect());
    let device = default_device();
    for (double_quant, tag) in [(false, "nf4"), (true, "nf4-dq")] {
        let opts = LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant } };
        let mut model = CausalLm::load_dir_with(model_dir("llama"), &device, &opts).unwrap();
        assert!(matches!(model.model.layers[1].mlp.as_ref().unwrap().down_proj.weight, BaseWeight::Nf4(_)));
        assert!(matches!(model.lm_head.weight, BaseWeight::Dense(_)), "the head stays dense, as bitsandbytes");
        let ours = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
        let d = max_abs_diff(&ours, &golden_f32(&g, &format!("logits.{tag}")).0);
        assert!(d <= 1e-4, "{tag}: max |Δ| {d:e}");
        load_adapter(&mut model, &fixtures().join("lora/adapter-qv"), 1.0, false).unwrap();
        let ours = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
        let d = max_abs_diff(&ours, &golden_f32(&g, &format!("logits.{tag}.adapter-qv")).0);
        assert!(d <= 1e-4, "{tag} + adapter: max |Δ| {d:e}");
    }
    // The packed base: about 0.56 bytes per quantized value.
    let nf4 = CausalLm::load_dir_with(
        model_dir("llama"),
        &device,
        &LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: false } },
    )
    .unwrap();
    let dense = CausalLm::load_dir(model_dir("llama"), &device).unwrap();
    let linear = |m: &CausalLm| -> usize {
        m.linear_modules().iter().filter(|(p, _)| p != "lm_head").map(|(_, l)| l.weight.bytes()).sum()
    };
    let values = linear(&dense) / 4;
    assert_eq!(linear(&nf4), values / 2 + values / 64 * 4);
    assert!(nf4.base_bytes() < dense.base_bytes());
}

/// A bf16 file held in bf16 gives the f32 load's logits (same values, upcast per block).
#[test]
fn bf16_base_equals_f32_load_of_the_same_file() {
    let device = default_device();
    let batch = TokenBatch::rows(vec![vec![0, 17, 250, 33, 100, 7], vec![5, 300, 21, 9, 44, 180]]);
    let f32_model = CausalLm::load_dir(model_dir("llama-bf16"), &device).unwrap();
    let bf16_model = CausalLm::load_dir_with(
        model_dir("llama-bf16"),
        &device,
        &LoadOptions { dtype: BaseDtype::Bf16, quantize: Quantize::None },
    )
    .unwrap();
    let a = to_f32_vec(f32_model.forward(&batch, None).unwrap()).unwrap();
    let b = to_f32_vec(bf16_model.forward(&batch, None).unwrap()).unwrap();
    assert!(max_abs_diff(&a, &b) <= 1e-5, "max |Δ| {:e}", max_abs_diff(&a, &b));
    assert!(bf16_model.base_bytes() * 10 < f32_model.base_bytes() * 6, "bf16 holds about half the bytes");
}

/// Values and input gradients of the frozen matmul equal x·Wᵀ with the upcast / dequantized W (and
/// with an f32 W, whose products the CPU computes directly),
/// over odd shapes, one row, and blocks that split the rows unevenly.
#[test]
fn frozen_matmul_equals_plain_reference_values_and_gradients() {
    let device = default_device();
    for (n, d_in, d_out) in [(5, 70, 37), (1, 64, 3), (9, 33, 130)] {
        let wv = lcg(d_in as u64, d_out * d_in);
        let xv = lcg(n as u64 + 7, n * d_in);
        let gv = lcg(3, n * d_out);
        let bf16 = BaseWeight::Dense(Tensor::<2>::from_data(
            TensorData::new(wv.clone(), [d_out, d_in]).convert_dtype(DType::BF16),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::BF16),
        ));
        let q = Nf4Tensor::quantize(&wv, &[d_out, d_in], false);
        let nf4_device = BaseWeight::Nf4Device(Arc::new(DeviceNf4::upload(&q, &device)));
        let nf4 = BaseWeight::Nf4(Arc::new(q));
        // f32 goes through the direct CPU products (frozen_matmul_cpu.rs).
        let f32w = BaseWeight::Dense(Tensor::<2>::from_data(TensorData::new(wv.clone(), [d_out, d_in]), &device));
        for w in [&bf16, &nf4, &nf4_device, &f32w] {
            let dense = w.to_f32(&device); // [out, in]
            for block in [usize::MAX, 2 * d_in + 5, 1] {
                let x =
                    Tensor::<2>::from_data(TensorData::new(xv.clone(), [n, d_in]), &device).autodiff().require_grad();
                let y = frozen_matmul_blocked(x.clone(), w, block);
                let grad_y = Tensor::<2>::from_data(TensorData::new(gv.clone(), [n, d_out]), &device);
                let gx = x.grad(&(y.clone() * grad_y.clone()).sum().backward()).unwrap();

                let xr =
                    Tensor::<2>::from_data(TensorData::new(xv.clone(), [n, d_in]), &device).autodiff().require_grad();
                let yr = xr.clone().matmul(dense.clone().transpose());
                let gr = xr.grad(&(yr.clone() * grad_y).sum().backward()).unwrap();

                let dy = max_abs_diff(&to_f32_vec(y.inner()).unwrap(), &to_f32_vec(yr.inner()).unwrap());
                let dg = max_abs_diff(&to_f32_vec(gx).unwrap(), &to_f32_vec(gr).unwrap());
                assert!(dy <= 1e-5 && dg <= 1e-5, "[{n}x{d_in}]·[{d_out}x{d_in}]ᵀ block {block}: {dy:e} {dg:e}");
            }
        }
    }
}

/// NF4 on the device (a GPU's): the codes and scales uploaded and dequantized there give the host
/// dequantization's values bit for bit, whole and by blocks of rows that start and end inside a
/// word and a scale block, with and without double quantization.
pub(crate) fn check_device_nf4_on(device: &lora_core::burn::tensor::Device) {
    use lora_core::burn::backend::Dispatch;
    use lora_core::quant::nf4_device::dequantize_rows;
    for (rows, cols, double_quant) in [(37usize, 70usize, false), (130, 33, true), (3, 64, false), (5, 7, true)] {
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0).collect();
        let q = Nf4Tensor::quantize(&values, &[rows, cols], double_quant);
        let host = q.dequantize();
        let d = DeviceNf4::upload(&q, device);
        assert_eq!(bits(&to_f32_vec(d.to_f32()).unwrap()), bits(&host), "[{rows}, {cols}] dq {double_quant}: whole");
        for (r0, r1) in [(1, rows.min(4)), (rows / 3, rows - rows / 4), (rows - 1, rows)] {
            let part = dequantize_rows::<Dispatch>(
                &d.words.clone().into_dispatch(),
                &d.absmax.clone().into_dispatch(),
                cols,
                r0,
                r1,
            );
            let part = to_f32_vec(Tensor::<2>::from_dispatch(part)).unwrap();
            assert_eq!(bits(&part), bits(&host[r0 * cols..r1 * cols]), "[{rows}, {cols}] rows {r0}..{r1}");
        }
    }
}

#[test]
fn device_nf4_dequantizes_to_the_host_values_bit_for_bit() {
    check_device_nf4_on(&default_device());
}

/// The base's products in bf16 (the GPUs' compute for a bf16 base, forced here on the CPU): the
/// output and ∂x come back in f32, equal to the bf16 product of the bf16-rounded operands (one
/// block: bit for bit; NF4 in blocks: the blocks' bf16 partial products summed in f32), and differ
/// from the f32 product by bf16 rounding only.
#[test]
fn frozen_matmul_in_bf16_is_the_bf16_product() {
    let device = default_device();
    let bf16 = |t: Tensor<2>| t.cast(DType::BF16);
    let (n, d_in, d_out) = (9usize, 96usize, 130usize);
    let (wv, xv, gv) = (lcg(1, d_out * d_in), lcg(2, n * d_in), lcg(3, n * d_out));
    let dense = BaseWeight::Dense(bf16(Tensor::<2>::from_data(TensorData::new(wv.clone(), [d_out, d_in]), &device)));
    let nf4 = BaseWeight::Nf4(Arc::new(Nf4Tensor::quantize(&wv, &[d_out, d_in], false)));
    for (name, w, block, exact) in [("bf16", &dense, usize::MAX, true), ("nf4", &nf4, 40 * d_in, false)] {
        let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), [n, d_in]), &device).autodiff().require_grad();
        let grad_y = Tensor::<2>::from_data(TensorData::new(gv.clone(), [n, d_out]), &device);
        let y = frozen_matmul_in(x.clone(), w, Some(FloatDType::BF16), block);
        assert_eq!(y.dtype(), DType::F32, "{name}: the output keeps x's dtype");
        let gx = x.grad(&(y.clone() * grad_y.clone()).sum().backward()).unwrap();
        assert_eq!(gx.dtype(), DType::F32, "{name}: ∂x keeps x's dtype");

        let wb = bf16(w.to_f32(&device)); // [out, in]
        let xb = bf16(Tensor::<2>::from_data(TensorData::new(xv.clone(), [n, d_in]), &device));
        let yr = to_f32_vec(xb.matmul(wb.clone().transpose()).cast(DType::F32)).unwrap();
        let gr = to_f32_vec(bf16(grad_y.clone()).matmul(wb).cast(DType::F32)).unwrap();
        let (y, gx) = (to_f32_vec(y.inner()).unwrap(), to_f32_vec(gx).unwrap());
        let scale = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let (dy, dg) = (max_abs_diff(&y, &yr), max_abs_diff(&gx, &gr));
        if exact {
            assert!(dy == 0.0 && dg == 0.0, "{name}: y {dy:e}, ∂x {dg:e} from the bf16 product");
        } else {
            // Each block's partial sum is rounded to bf16 once: within 2⁻⁸ of the largest value.
            let (ty, tg) = (scale(&yr) / 256.0, scale(&gr) / 256.0);
            assert!(dy <= ty && dg <= tg, "{name}: y {dy:e} (≤ {ty:e}), ∂x {dg:e} (≤ {tg:e})");
        }

        // And really in bf16: not the f32 product, but within bf16's rounding of it.
        let xf = Tensor::<2>::from_data(TensorData::new(xv.clone(), [n, d_in]), &device);
        let yf = to_f32_vec(xf.matmul(w.to_f32(&device).transpose())).unwrap();
        let d = max_abs_diff(&y, &yf);
        assert!(d > 0.0 && d <= scale(&yf) / 64.0, "{name}: {d:e} from the f32 product (scale {})", scale(&yf));
    }
}

/// A bf16 base with its products in bf16 (as on a GPU) gives the logits of the f32-compute run within
/// bf16's rounding (2% of the largest logit on the 2-layer fixture), and not the same ones.
#[test]
fn bf16_compute_gives_the_f32_logits_within_bf16_rounding() {
    let device = default_device();
    let g = SafetensorsFile::open(fixtures().join("qlora/golden.safetensors")).unwrap();
    let (ids, shape) = golden_i64(&g, "input_ids");
    let batch = TokenBatch::rows(ids.chunks(shape[1]).map(|r| r.iter().map(|&i| i as u32).collect()).collect());
    let opts = LoadOptions { dtype: BaseDtype::Bf16, quantize: Quantize::None };
    assert_eq!(opts.compute_dtype(&device), None, "the CPU computes a bf16 base in f32");
    let mut model = CausalLm::load_dir_with(model_dir("llama-bf16"), &device, &opts).unwrap();
    let f32_logits = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    for (_, linear) in model.linear_modules_mut() {
        linear.compute = Some(FloatDType::BF16);
    }
    let bf16_logits = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    let scale = f32_logits.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let d = max_abs_diff(&bf16_logits, &f32_logits);
    assert!(d > 0.0 && d <= 0.02 * scale, "bf16 compute: max |Δ| {d:e} against the f32 compute (scale {scale})");
}

/// The chunked loss over labelled rows equals the full-logits loss within 1e-6 relative, and so do
/// the adapter's gradients within 5e-6 (on the CPU the chunks go through the fused cross-entropy
/// kernel, the full loss through burn's log-softmax: two roundings of the same sum), for chunks of
/// one, three (uneven) and all rows.
#[test]
fn chunked_loss_equals_full_loss_and_gradients() {
    let device = default_device();
    let lora = SafetensorsFile::open(fixtures().join("lora/golden.safetensors")).unwrap();
    let (ids, shape) = golden_i64(&lora, "input_ids");
    let (labels, _) = golden_i64(&lora, "labels");
    let t = shape[1];
    let batch = TokenBatch::rows(ids.chunks(t).map(|r| r.iter().map(|&i| i as u32).collect()).collect());
    let labels: Vec<Vec<Option<u32>>> =
        labels.chunks(t).map(|r| r.iter().map(|&l| (l >= 0).then_some(l as u32)).collect()).collect();
    let mut model = CausalLm::load_dir(model_dir("llama"), &device).unwrap();
    load_adapter(&mut model, &fixtures().join("lora/adapter-qv"), 1.0, true).unwrap();
    let params: Vec<Tensor<2>> = model
        .linear_modules()
        .iter()
        .flat_map(|(_, l)| l.lora.iter().flat_map(|a| [a.lora_a.clone(), a.lora_b.clone()]))
        .collect();

    let (full, count) = shifted_cross_entropy_sum(model.forward(&batch, None).unwrap(), &labels);
    let full_value = to_f32_vec(full.clone().inner()).unwrap()[0] as f64;
    let g = full.backward();
    let full_grads: Vec<Vec<f32>> = params.iter().map(|p| to_f32_vec(p.grad(&g).unwrap()).unwrap()).collect();

    for per in [1, 3, 4096] {
        let hidden = model.last_hidden(&batch).unwrap();
        let head = head_loss_chunked(&mut model, hidden.clone(), &labels, Some(1.0), per, |_| {}).unwrap();
        assert_eq!(head.count, count);
        assert!(((head.sum - full_value) / full_value).abs() <= 1e-6, "chunks of {per}: {} vs {full_value}", head.sum);
        let g = (hidden * head.grad.unwrap()).sum().backward();
        for (p, want) in params.iter().zip(&full_grads) {
            let got = to_f32_vec(p.grad(&g).unwrap()).unwrap();
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&got, want);
            assert!(d <= 5e-6 * scale.max(1e-3), "chunks of {per}: gradient max |Δ| {d:e} (scale {scale:e})");
        }
        // Without gradients: the same sum.
        let hidden = model.last_hidden(&batch).unwrap();
        let eval = head_loss_chunked(&mut model, hidden, &labels, None, per, |_| {}).unwrap();
        assert!(eval.grad.is_none());
        assert!(((eval.sum - full_value) / full_value).abs() <= 1e-6);
    }
}
