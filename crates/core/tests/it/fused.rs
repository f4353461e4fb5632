//! The fused CPU kernels against the plain burn compositions they replace: values and every input
//! gradient within 1e-5 (relative to the largest reference value), on odd shapes, grouped-query
//! heads, causal, full and explicit masks; and the same bits whatever the thread count.

use std::sync::Arc;

use lora_core::burn::tensor::activation::log_softmax;
use lora_core::burn::tensor::module::attention;
use lora_core::burn::tensor::ops::AttentionModuleOptions;
use lora_core::burn::tensor::{Bool, Int, Tensor, TensorData};
use lora_core::default_device;
use lora_core::kernels::fused_attention::{KeyMask, fused_attention};
use lora_core::kernels::fused_rope::rope_bthd;
use lora_core::kernels::fused_swiglu::{swiglu, swiglu_reference};
use lora_core::kernels::host::to_f32_vec;
use lora_core::loss::fused_cross_entropy::cross_entropy_sum;
use lora_core::network::linear::Linear;
use lora_core::network::lora::LoraAdapter;

use crate::common::lcg;
use lora_core::network::norm::{GatedRmsNorm, RmsNorm};
use lora_core::network::rope::apply_rope;

fn leaf<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape), &default_device()).autodiff().require_grad()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    to_f32_vec(t.inner()).unwrap()
}

/// Asserts a ≈ b within 1e-5 of b's largest magnitude (at least 1).
fn close(what: &str, a: &[f32], b: &[f32]) {
    close_within(what, a, b, 1e-5)
}

/// Asserts a ≈ b within `tol` of b's largest magnitude (at least 1).
fn close_within(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d <= tol * scale, "{what}: max |Δ| {d:e} (scale {scale})");
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
}

#[test]
fn fused_swiglu_equals_reference_values_and_gradients() {
    for (n, amp) in [(7usize, 1.0f32), (3 * 16 * 1024 + 5, 12.0)] {
        let (g, u, dy) = (lcg(1, n, amp), lcg(2, n, amp), lcg(3, n, 1.0));
        let run = |fused: bool| {
            let (gl, ul) = (leaf(&g, [n]), leaf(&u, [n]));
            let y = if fused { swiglu(gl.clone(), ul.clone()) } else { swiglu_reference(gl.clone(), ul.clone()) };
            let grads = (y.clone() * Tensor::<1>::from_data(TensorData::new(dy.clone(), [n]), &default_device()))
                .sum()
                .backward();
            (values(y), values(gl.grad(&grads).unwrap()), values(ul.grad(&grads).unwrap()))
        };
        let (a, b) = (run(true), run(false));
        close("swiglu y", &a.0, &b.0);
        close("swiglu ∂gate", &a.1, &b.1);
        close("swiglu ∂up", &a.2, &b.2);
    }
}

#[test]
fn fused_rms_norm_equals_reference_values_and_gradients() {
    for (rows, d) in [(5usize, 37usize), (40, 64)] {
        let (x, w, dy) = (lcg(4, rows * d, 3.0), lcg(5, d, 1.5), lcg(6, rows * d, 1.0));
        let run = |fused: bool| {
            let norm = RmsNorm {
                weight: lora_core::burn::module::Param::from_tensor(leaf(&w, [d])),
                eps: 1e-6,
                zero_centred: false,
            };
            let xl = leaf(&x, [rows, d]);
            let y = if fused { norm.forward(xl.clone()) } else { norm.forward_reference(xl.clone()) };
            let grads = (y.clone() * Tensor::<2>::from_data(TensorData::new(dy.clone(), [rows, d]), &default_device()))
                .sum()
                .backward();
            let gw = norm.weight.val().grad(&grads).map(values);
            (values(y), values(xl.grad(&grads).unwrap()), gw)
        };
        let (a, b) = (run(true), run(false));
        close("rms_norm y", &a.0, &b.0);
        close("rms_norm ∂x", &a.1, &b.1);
        close("rms_norm ∂weight", &a.2.expect("fused ∂w"), &b.2.expect("reference ∂w"));
    }
}

#[test]
fn fused_gated_rms_norm_equals_reference_values_and_gradients() {
    for (rows, d) in [(5usize, 37usize), (40, 64)] {
        let (x, z, w, dy) = (lcg(21, rows * d, 3.0), lcg(22, rows * d, 6.0), lcg(23, d, 1.5), lcg(24, rows * d, 1.0));
        let run = |fused: bool| {
            let norm = GatedRmsNorm { weight: lora_core::burn::module::Param::from_tensor(leaf(&w, [d])), eps: 1e-6 };
            let (xl, zl) = (leaf(&x, [rows, d]), leaf(&z, [rows, d]));
            let y = if fused {
                norm.forward(xl.clone(), zl.clone())
            } else {
                norm.forward_reference(xl.clone(), zl.clone())
            };
            let grads = (y.clone() * Tensor::<2>::from_data(TensorData::new(dy.clone(), [rows, d]), &default_device()))
                .sum()
                .backward();
            let gw = norm.weight.val().grad(&grads).map(values);
            (values(y), values(xl.grad(&grads).unwrap()), values(zl.grad(&grads).unwrap()), gw)
        };
        let (a, b) = (run(true), run(false));
        close("gated_rms_norm y", &a.0, &b.0);
        close("gated_rms_norm ∂x", &a.1, &b.1);
        close("gated_rms_norm ∂z", &a.2, &b.2);
        close("gated_rms_norm ∂weight", &a.3.expect("fused ∂w"), &b.3.expect("reference ∂w"));
    }
}

#[test]
fn fused_rope_equals_reference_values_and_gradients() {
    let (b, t, h, hd) = (2usize, 5usize, 3usize, 8usize);
    let (x, dy) = (lcg(7, b * t * h * hd, 2.0), lcg(8, b * t * h * hd, 1.0));
    let angles = lcg(9, b * t * hd, 3.0);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let table = |v: &Vec<f32>| Tensor::<4>::from_data(TensorData::new(v.clone(), [b, 1, t, hd]), &default_device());
    let (cos, sin) = (table(&cos), table(&sin));
    let run = |fused: bool| {
        let xl = leaf(&x, [b, t, h, hd]);
        let y = if fused {
            rope_bthd(xl.clone(), &cos, &sin)
        } else {
            apply_rope(xl.clone().swap_dims(1, 2), &cos, &sin).swap_dims(1, 2)
        };
        let grads = (y.clone() * Tensor::<4>::from_data(TensorData::new(dy.clone(), [b, t, h, hd]), &default_device()))
            .sum()
            .backward();
        (values(y), values(xl.grad(&grads).unwrap()))
    };
    let (a, r) = (run(true), run(false));
    close("rope y", &a.0, &r.0);
    close("rope ∂x", &a.1, &r.1);
}

/// An attention's output and the gradients of its q, k and v for the upstream gradient `g`.
fn output_and_grads(y: Tensor<4>, g: Tensor<4>, [q, k, v]: [&Tensor<4>; 3]) -> [Vec<f32>; 4] {
    let grads = (y.clone() * g).sum().backward();
    [values(y), values(q.grad(&grads).unwrap()), values(k.grad(&grads).unwrap()), values(v.grad(&grads).unwrap())]
}

/// burn's attention on `[b, heads, t, hd]` with repeated key/value heads: the reference.
fn reference_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let [b, _, nh, hd] = q.dims();
    let [_, tk, nkv, _] = k.dims();
    let rep = |x: Tensor<4>| {
        x.swap_dims(1, 2).unsqueeze_dim::<5>(2).expand([b, nkv, nh / nkv, tk, hd]).reshape([b, nh, tk, hd])
    };
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
    attention(q.swap_dims(1, 2), rep(k), rep(v), mask, None, options).swap_dims(1, 2)
}

#[test]
fn fused_attention_equals_reference_values_and_gradients() {
    // (batch, seq, heads, kv heads, head_dim): plain, grouped-query (3 per group), odd sizes.
    // 150 queries: three blocks of the kernel (64, 64, 22), the causal ones seeing growing key prefixes.
    for (b, t, nh, nkv, hd) in
        [(2usize, 9usize, 2usize, 2usize, 8usize), (1, 33, 6, 2, 16), (3, 4, 3, 1, 5), (2, 150, 4, 2, 8)]
    {
        let (q, k, v) = (lcg(10, b * t * nh * hd, 1.5), lcg(11, b * t * nkv * hd, 1.5), lcg(12, b * t * nkv * hd, 1.0));
        let dy = lcg(13, b * t * nh * hd, 1.0);
        // An explicit mask: causal, a padded first key in row 0, every query sees itself.
        let forbidden: Vec<bool> = (0..b)
            .flat_map(|r| (0..t).flat_map(move |i| (0..t).map(move |j| j > i || (r == 0 && j == 0 && i != 0))))
            .collect();
        let full_mask: Vec<bool> = (0..b)
            .flat_map(|r| {
                let row = forbidden[r * t * t..(r + 1) * t * t].to_vec();
                std::iter::repeat_n(row, nh).flatten()
            })
            .collect();
        let masks = [
            ("full", KeyMask::Full, None, false),
            ("causal", KeyMask::Causal { past: 0 }, None, true),
            (
                "explicit",
                KeyMask::Forbidden(Arc::new(forbidden.clone())),
                Some(Tensor::<4, Bool>::from_data(TensorData::new(full_mask, [b, nh, t, t]), &default_device())),
                false,
            ),
        ];
        for (name, key_mask, tensor_mask, causal) in masks {
            let run = |fused: bool| {
                let (ql, kl, vl) = (leaf(&q, [b, t, nh, hd]), leaf(&k, [b, t, nkv, hd]), leaf(&v, [b, t, nkv, hd]));
                let y = if fused {
                    fused_attention(ql.clone(), kl.clone(), vl.clone(), key_mask.clone())
                } else {
                    reference_attention(ql.clone(), kl.clone(), vl.clone(), tensor_mask.clone(), causal)
                };
                let g = Tensor::<4>::from_data(TensorData::new(dy.clone(), [b, t, nh, hd]), &default_device());
                output_and_grads(y, g, [&ql, &kl, &vl])
            };
            let (a, r) = (run(true), run(false));
            for (i, what) in ["o", "∂q", "∂k", "∂v"].iter().enumerate() {
                close(&format!("attention {name} [{b},{t},{nh}/{nkv},{hd}] {what}"), &a[i], &r[i]);
            }
        }
    }
}

/// The tiled attention (blocks of query rows, recomputed in backward: the GPUs' path) against
/// burn's attention on `device`: values and the gradients of q, k and v within `tol` of the
/// largest reference value. Blocks of 5 rows give uneven last blocks and growing causal prefixes;
/// keys longer than the queries stand for cached keys before them.
pub(crate) fn check_tiled_attention_on(device: &lora_core::burn::tensor::Device, tol: f32) {
    use lora_core::kernels::tiled_attention::tiled_attention;
    let leaf = |v: &[f32], shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), device).autodiff().require_grad()
    };
    // (batch, seq, keys, heads, kv heads, head_dim)
    for (b, t, tk, nh, nkv, hd) in
        [(2usize, 9usize, 9usize, 2usize, 2usize, 8usize), (1, 23, 23, 6, 2, 16), (3, 4, 7, 3, 1, 5)]
    {
        let (q, k, v) =
            (lcg(30, b * t * nh * hd, 1.5), lcg(31, b * tk * nkv * hd, 1.5), lcg(32, b * tk * nkv * hd, 1.0));
        let dy = lcg(33, b * t * nh * hd, 1.0);
        let past = tk - t;
        // Explicit masks: causal with a hidden first key in row 0, and a non-causal one hiding
        // every third key (never a query's own).
        let causal_mask = |r: usize, i: usize, j: usize| j > past + i || (r == 0 && j == 0 && i + past != 0);
        let other_mask = |_r: usize, i: usize, j: usize| j % 3 == 2 && j != past + i;
        let tensor_mask = |f: &dyn Fn(usize, usize, usize) -> bool| {
            let data: Vec<bool> = (0..b)
                .flat_map(|r| (0..nh).flat_map(move |_| (0..t).flat_map(move |i| (0..tk).map(move |j| (r, i, j)))))
                .map(|(r, i, j)| f(r, i, j))
                .collect();
            Tensor::<4, Bool>::from_data(TensorData::new(data, [b, nh, t, tk]), device)
        };
        let cases = [
            ("full", None, false),
            ("causal", None, true),
            ("explicit causal", Some(tensor_mask(&causal_mask)), true),
            ("explicit", Some(tensor_mask(&other_mask)), false),
        ];
        for (name, mask, causal) in cases {
            let run = |tiled: bool| {
                let (ql, kl, vl) = (leaf(&q, [b, nh, t, hd]), leaf(&k, [b, nkv, tk, hd]), leaf(&v, [b, nkv, tk, hd]));
                let y = if tiled {
                    tiled_attention(ql.clone(), kl.clone(), vl.clone(), mask.clone(), causal, b * nh * tk * 5, None)
                } else {
                    let rep = |x: Tensor<4>| {
                        x.unsqueeze_dim::<5>(2).expand([b, nkv, nh / nkv, tk, hd]).reshape([b, nh, tk, hd])
                    };
                    // An explicit causal mask already hides the later keys.
                    let is_causal = causal && mask.is_none();
                    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal };
                    attention(ql.clone(), rep(kl.clone()), rep(vl.clone()), mask.clone(), None, options)
                };
                let g = Tensor::<4>::from_data(TensorData::new(dy.clone(), [b, nh, t, hd]), device);
                output_and_grads(y, g, [&ql, &kl, &vl])
            };
            let (a, r) = (run(true), run(false));
            for (i, what) in ["o", "∂q", "∂k", "∂v"].iter().enumerate() {
                close_within(
                    &format!("tiled attention {name} [{b},{t}/{tk},{nh}/{nkv},{hd}] {what}"),
                    &a[i],
                    &r[i],
                    tol,
                );
            }
        }
    }
}

/// The tiled attention with its products in bf16 (a GPU's compute for a bf16 base, forced here on
/// the CPU): values and gradients in f32, within bf16's rounding of the f32 run's (3% of the largest
/// value), and not the same.
#[test]
fn tiled_attention_in_bf16_is_within_bf16_rounding() {
    use lora_core::burn::tensor::{DType, FloatDType};
    use lora_core::kernels::tiled_attention::tiled_attention;
    let (b, t, nh, nkv, hd) = (1usize, 23usize, 6usize, 2usize, 16usize);
    let (q, k, v) = (lcg(40, b * t * nh * hd, 1.5), lcg(41, b * t * nkv * hd, 1.5), lcg(42, b * t * nkv * hd, 1.0));
    let dy = lcg(43, b * t * nh * hd, 1.0);
    let run = |compute: Option<FloatDType>| {
        let (ql, kl, vl) = (leaf(&q, [b, nh, t, hd]), leaf(&k, [b, nkv, t, hd]), leaf(&v, [b, nkv, t, hd]));
        let y = tiled_attention(ql.clone(), kl.clone(), vl.clone(), None, true, b * nh * t * 5, compute);
        assert_eq!(y.dtype(), DType::F32);
        let g = Tensor::<4>::from_data(TensorData::new(dy.clone(), [b, nh, t, hd]), &default_device());
        output_and_grads(y, g, [&ql, &kl, &vl])
    };
    let (half, full) = (run(Some(FloatDType::BF16)), run(None));
    for (i, what) in ["o", "∂q", "∂k", "∂v"].iter().enumerate() {
        let scale = full[i].iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = full[i].iter().zip(&half[i]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d > 0.0 && d <= 0.03 * scale, "bf16 tiled attention {what}: max |Δ| {d:e} (scale {scale})");
    }
}

#[test]
fn tiled_attention_equals_reference_values_and_gradients() {
    check_tiled_attention_on(&default_device(), 1e-5);
}

#[test]
fn fused_cross_entropy_equals_log_softmax_gather_values_and_gradients() {
    let (n, vocab) = (6usize, 1003usize);
    let z = lcg(14, n * vocab, 8.0);
    let targets: Vec<u32> = (0..n).map(|i| ((i * 389 + 7) % vocab) as u32).collect();
    let run = |fused: bool| {
        let zl = leaf(&z, [n, vocab]);
        let loss = if fused {
            cross_entropy_sum(zl.clone(), targets.clone(), None)
        } else {
            let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
            let idx = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &default_device());
            log_softmax(zl.clone(), 1).gather(1, idx).sum().neg()
        };
        let grads = (loss.clone() * 0.25).backward();
        (values(loss), values(zl.grad(&grads).unwrap()))
    };
    let (a, r) = (run(true), run(false));
    close("cross-entropy sum", &a.0, &r.0);
    close("cross-entropy ∂logits", &a.1, &r.1);
}

/// The kernels split work by rows and heads and reduce in a fixed order: one thread and many give
/// the same bits.
#[test]
fn fused_kernels_give_the_same_bits_on_one_thread_and_many() {
    let (b, t, nh, nkv, hd) = (2usize, 40usize, 4usize, 2usize, 16usize);
    let (q, k, v) = (lcg(20, b * t * nh * hd, 1.0), lcg(21, b * t * nkv * hd, 1.0), lcg(22, b * t * nkv * hd, 1.0));
    let run = || {
        let (ql, kl, vl) = (leaf(&q, [b, t, nh, hd]), leaf(&k, [b, t, nkv, hd]), leaf(&v, [b, t, nkv, hd]));
        let y = fused_attention(ql.clone(), kl.clone(), vl.clone(), KeyMask::Causal { past: 0 });
        let y = swiglu(y.clone(), y);
        let grads = y.clone().sum().backward();
        [values(y), values(ql.grad(&grads).unwrap()), values(kl.grad(&grads).unwrap())]
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let many = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(run);
    for i in 0..3 {
        let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one[i]), bits(&many[i]), "output {i} differs between 1 and 4 threads");
    }
}

/// A linear layer with one adapter, fused and plain, with and without dropout: y, ∂x, ∂A, ∂B.
fn lora_layer_run(fused: bool, n: usize, d_in: usize, d_out: usize, r: usize, dropout: f64) -> [Vec<f32>; 4] {
    let (w, a, b) = (lcg(30, d_out * d_in, 0.5), lcg(31, r * d_in, 0.5), lcg(32, d_out * r, 0.5));
    let (x, dy) = (lcg(33, n * d_in, 1.0), lcg(34, n * d_out, 1.0));
    let device = default_device();
    let weight = Tensor::<2>::from_data(TensorData::new(w, [d_out, d_in]), &device.clone().autodiff());
    let mut layer = Linear::from_weight(weight);
    let (al, bl) = (leaf(&a, [r, d_in]), leaf(&b, [d_out, r]));
    layer.lora.push(LoraAdapter {
        lora_a: al.clone(),
        lora_b: bl.clone(),
        scaling: 2.0,
        dropout,
        training: true,
        dropout_seed: 77,
        dora: None,
    });
    let xl = leaf(&x, [n, d_in]);
    let y = if fused { layer.forward(xl.clone()) } else { layer.forward_reference(xl.clone()) };
    let grads = (y.clone() * Tensor::<2>::from_data(TensorData::new(dy, [n, d_out]), &device)).sum().backward();
    [values(y), values(xl.grad(&grads).unwrap()), values(al.grad(&grads).unwrap()), values(bl.grad(&grads).unwrap())]
}

#[test]
fn fused_lora_linear_equals_reference_values_and_gradients() {
    // Small (one thread) and large enough that the products are split over threads.
    for (n, d_in, d_out, r) in [(5usize, 37usize, 19usize, 3usize), (400, 160, 128, 8)] {
        for dropout in [0.0, 0.1] {
            let (a, b) =
                (lora_layer_run(true, n, d_in, d_out, r, dropout), lora_layer_run(false, n, d_in, d_out, r, dropout));
            for (i, what) in ["y", "∂x", "∂A", "∂B"].iter().enumerate() {
                close(&format!("lora linear [{n}x{d_in}]→{d_out} r{r} dropout {dropout} {what}"), &a[i], &b[i]);
            }
        }
    }
}

#[test]
fn fused_lora_linear_gives_the_same_bits_on_one_thread_and_many() {
    let run = || lora_layer_run(true, 400, 160, 128, 8, 0.0); // 8.2M multiply-adds: split
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let many = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(run);
    for i in 0..4 {
        let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one[i]), bits(&many[i]), "output {i} differs between 1 and 4 threads");
    }
}

/// The CPU product split over the threads (by output columns, or by rows for a thin product) gives
/// the bits of one single-threaded call, with a reduction longer than gemm's 512-long small-product
/// blocks and parts that do not divide the output evenly, both orientations of the right operand,
/// and accumulation.
#[test]
fn cpu_gemm_gives_the_same_bits_on_one_thread_and_many() {
    // By columns; by panels shared by rows; by rows for a small right operand (a k/v projection);
    // by rows (an adapter's x·Aᵀ); by columns with a rank-tall output (∂A).
    for (m, k, n) in [(40usize, 600usize, 250usize), (200, 600, 576), (400, 600, 192), (400, 600, 8), (8, 520, 576)] {
        let (a, b) = (lcg(40, m * k, 1.0), lcg(41, k * n, 1.0));
        let run = |transposed: bool, accumulate: bool| {
            let mut c = lcg(42, m * n, 1.0);
            let (b_rs, b_cs) = if transposed { (1, k) } else { (n, 1) };
            // SAFETY: contiguous matrices of the shapes given.
            unsafe {
                lora_core::kernels::cpu_kernel::gemm_f32(
                    [m, n, k],
                    (c.as_mut_ptr(), n, 1),
                    (a.as_ptr(), k, 1),
                    (b.as_ptr(), b_rs, b_cs),
                    accumulate,
                    0.5,
                    true,
                )
            };
            c
        };
        for (transposed, accumulate) in [(false, false), (true, false), (true, true)] {
            let on = |threads| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| run(transposed, accumulate))
            };
            let one = on(1);
            let expected: f32 = (0..k).map(|p| a[p] * if transposed { b[p] } else { b[p * n] }).sum::<f32>() * 0.5
                + if accumulate { lcg(42, 1, 1.0)[0] } else { 0.0 };
            assert!((one[0] - expected).abs() < 1e-3 * expected.abs().max(1.0), "{} vs {expected}", one[0]);
            for threads in [2, 3, 4] {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&one),
                    bits(&on(threads)),
                    "[{m}x{k}]·[{k}x{n}] transposed {transposed}: 1 and {threads} threads differ"
                );
            }
        }
    }
}
