//! The chunked gated delta rule against its recurrence, token by token.

use burn::tensor::{Tensor, TensorData};
use lora_core::default_device;
use lora_core::kernels::delta_rule::{CHUNK, chunked, recurrent_step};
use lora_core::kernels::host::to_f32_vec;

use crate::common::max_abs_diff;

/// Deterministic values in (lo, hi).
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f32 / (1u64 << 53) as f32)
        })
        .collect()
}

/// The recurrence token by token from `state`: the outputs `[batch, heads, seq, d_v]` and the final
/// state. q, k: `[batch, heads, seq, d_k]`; v: `[batch, heads, seq, d_v]`; g, beta: `[batch, heads, seq]`.
fn recurrence(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    g: &Tensor<3>,
    beta: &Tensor<3>,
    state: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let ([b, h, t, dk], dv) = (q.dims(), v.dims()[3]);
    let mut s = state;
    let mut outs = Vec::new();
    for i in 0..t {
        let at3 = |x: &Tensor<4>, d: usize| x.clone().slice([0..b, 0..h, i..i + 1, 0..d]).reshape([b, h, d]);
        let at2 = |x: &Tensor<3>| x.clone().slice([0..b, 0..h, i..i + 1]).reshape([b, h]);
        let (oi, si) = recurrent_step(at3(q, dk), at3(k, dk), at3(v, dv), at2(g), at2(beta), s);
        outs.push(oi.reshape([b, h, 1, dv]));
        s = si;
    }
    (Tensor::cat(outs, 2), s)
}

#[test]
fn chunked_equals_the_recurrence_across_chunks_and_from_a_state() {
    let device = default_device();
    // More than one chunk and not a whole number of them; d_k != d_v.
    let (b, h, t, dk, dv) = (2, 3, CHUNK + 9, 8, 5);
    let tensor4 = |v: Vec<f32>, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, shape), &device);
    let unit = |x: Tensor<4>| {
        let n = x.clone().square().sum_dim(3).sqrt();
        x / n
    };
    let q = unit(tensor4(values(b * h * t * dk, 1, -1.0, 1.0), [b, h, t, dk])) * (dk as f64).powf(-0.5);
    let k = unit(tensor4(values(b * h * t * dk, 2, -1.0, 1.0), [b, h, t, dk]));
    let v = tensor4(values(b * h * t * dv, 3, -2.0, 2.0), [b, h, t, dv]);
    let g = Tensor::<3>::from_data(TensorData::new(values(b * h * t, 4, -0.7, -0.01), [b, h, t]), &device);
    let beta = Tensor::<3>::from_data(TensorData::new(values(b * h * t, 5, 0.05, 0.95), [b, h, t]), &device);
    let state0 = tensor4(values(b * h * dk * dv, 6, -0.5, 0.5), [b, h, dk, dv]);

    let (o, state) = chunked(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone(), Some(state0.clone()));
    assert_eq!(o.dims(), [b, h, t, dv]);

    let (expected, s) = recurrence(&q, &k, &v, &g, &beta, state0);
    let expected = to_f32_vec(expected).unwrap();
    let ours = to_f32_vec(o).unwrap();
    let d = max_abs_diff(&ours, &expected);
    assert!(d <= 1e-4, "outputs: max |Δ| = {d:e}");
    let d = max_abs_diff(&to_f32_vec(state).unwrap(), &to_f32_vec(s).unwrap());
    assert!(d <= 1e-4, "final state: max |Δ| = {d:e}");
    // The initial state is used: from zero, the outputs differ.
    let (from_zero, _) = chunked(q, k, v, g, beta, None);
    let d = max_abs_diff(&to_f32_vec(from_zero).unwrap(), &ours);
    assert!(d > 1e-2, "the initial state changed nothing (max |Δ| = {d:e})");
}

/// The fused CPU kernel (`fused_delta_rule`) against autodiff of the chunked composition and the
/// recurrence: outputs and the gradients of q, k, v, g and β, over more than two chunks with a
/// partial last one, several heads and batch rows, d_k != d_v; one token; exactly one chunk; one
/// chunk and a token.
#[test]
fn fused_delta_rule_equals_the_chunked_form_values_and_gradients() {
    for (b, t, h, dk, dv) in
        [(2, 2 * CHUNK + 22, 3, 8, 12), (1, 1, 2, 4, 6), (1, CHUNK, 1, 16, 8), (2, CHUNK + 1, 2, 8, 8)]
    {
        check_fused(b, t, h, dk, dv);
    }
}

fn check_fused(b: usize, t: usize, h: usize, dk: usize, dv: usize) {
    use lora_core::kernels::fused_delta_rule::gated_delta_rule;
    let device = default_device();
    let leaf4 = |v: Vec<f32>, shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v, shape), &device).autodiff().require_grad()
    };
    let leaf3 = |v: Vec<f32>, shape: [usize; 3]| {
        Tensor::<3>::from_data(TensorData::new(v, shape), &device).autodiff().require_grad()
    };
    // [batch, seq, heads, d] as the layer gives them; |k|² ≤ 1 keeps the recurrence contracting.
    let qv = values(b * t * h * dk, 11, -0.3, 0.3);
    let kv = values(b * t * h * dk, 12, -0.35, 0.35);
    let vv = values(b * t * h * dv, 13, -2.0, 2.0);
    let gv = values(b * t * h, 14, -1.5, -0.01);
    let bv = values(b * t * h, 15, 0.05, 0.95);
    let weights =
        Tensor::<4>::from_data(TensorData::new(values(b * t * h * dv, 16, -1.0, 1.0), [b, t, h, dv]), &device);
    let run = |fused: bool| {
        let (q, k, v) =
            (leaf4(qv.clone(), [b, t, h, dk]), leaf4(kv.clone(), [b, t, h, dk]), leaf4(vv.clone(), [b, t, h, dv]));
        let (g, beta) = (leaf3(gv.clone(), [b, t, h]), leaf3(bv.clone(), [b, t, h]));
        let o = if fused {
            gated_delta_rule(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone())
        } else {
            let sw = |x: Tensor<4>| x.swap_dims(1, 2);
            let (o, _) = chunked(
                sw(q.clone()),
                sw(k.clone()),
                sw(v.clone()),
                g.clone().swap_dims(1, 2),
                beta.clone().swap_dims(1, 2),
                None,
            );
            o.swap_dims(1, 2)
        };
        let grads = (o.clone() * weights.clone().autodiff()).sum().backward();
        let grad4 = |x: &Tensor<4>| to_f32_vec(x.grad(&grads).unwrap()).unwrap();
        let grad3 = |x: &Tensor<3>| to_f32_vec(x.grad(&grads).unwrap()).unwrap();
        (to_f32_vec(o.inner()).unwrap(), [grad4(&q), grad4(&k), grad4(&v), grad3(&g), grad3(&beta)])
    };
    let (fused, fused_grads) = run(true);
    let (plain, plain_grads) = run(false);
    let scale = |x: &[f32]| x.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&fused, &plain);
    assert!(d <= 1e-5 * scale(&plain), "t {t}: outputs: max |Δ| = {d:e}");
    for (name, (a, e)) in ["q", "k", "v", "g", "beta"].iter().zip(fused_grads.iter().zip(&plain_grads)) {
        let d = max_abs_diff(a, e);
        assert!(d <= 1e-4 * scale(e), "t {t}: ∂{name}: max |Δ| = {d:e} (scale {})", scale(e));
        // From a zero state, one token's decay multiplies nothing: ∂g is zero there, and only there.
        if t > 1 || *name != "g" {
            assert!(e.iter().any(|v| v.abs() > 1e-3), "∂{name} is all but zero: the test would prove nothing");
        }
    }

    // And against the recurrence itself, token by token, without autodiff.
    let plain4 = |v: &[f32], d: usize| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, t, h, d]), &device).swap_dims(1, 2)
    };
    let plain3 = |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [b, t, h]), &device).swap_dims(1, 2);
    let (q, k, v, g, beta) = (plain4(&qv, dk), plain4(&kv, dk), plain4(&vv, dv), plain3(&gv), plain3(&bv));
    let (o, _) = recurrence(&q, &k, &v, &g, &beta, Tensor::<4>::zeros([b, h, dk, dv], &device));
    let recurrence = to_f32_vec(o.swap_dims(1, 2)).unwrap();
    let d = max_abs_diff(&fused, &recurrence);
    assert!(d <= 1e-5 * scale(&recurrence), "against the recurrence: max |Δ| = {d:e}");
}

/// The fused causal convolution with SiLU against autodiff of the plain composition: outputs and the
/// gradients of the input and of the weight, on sequences shorter than the kernel, one token, and
/// longer; and the plain one's window, carried over a split sequence, against the whole.
#[test]
fn fused_causal_conv_equals_the_plain_composition_values_and_gradients() {
    use lora_core::kernels::causal_conv::{causal_conv_silu, plain};
    let device = default_device();
    for (b, t, c, kern) in [(2, 37, 24, 4), (1, 1, 8, 4), (2, 2, 16, 3), (1, 70, 40, 4)] {
        let xv = values(b * t * c, 21, -2.0, 2.0);
        let wv = values(c * kern, 22, -0.8, 0.8);
        let weights = Tensor::<3>::from_data(TensorData::new(values(b * t * c, 23, -1.0, 1.0), [b, t, c]), &device);
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, t, c]), &device).autodiff().require_grad();
            let w = Tensor::<2>::from_data(TensorData::new(wv.clone(), [c, kern]), &device).autodiff().require_grad();
            let y = if fused { causal_conv_silu(x.clone(), w.clone()) } else { plain(x.clone(), w.clone(), None).0 };
            let grads = (y.clone() * weights.clone().autodiff()).sum().backward();
            (
                to_f32_vec(y.inner()).unwrap(),
                to_f32_vec(x.grad(&grads).unwrap()).unwrap(),
                to_f32_vec(w.grad(&grads).unwrap()).unwrap(),
            )
        };
        let (fy, fdx, fdw) = run(true);
        let (py, pdx, pdw) = run(false);
        for (name, a, e) in [("y", &fy, &py), ("dx", &fdx, &pdx), ("dw", &fdw, &pdw)] {
            let scale = e.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(a, e);
            assert!(d <= 1e-5 * scale, "t {t}, K {kern}: {name} max |Δ| = {d:e}");
            assert!(e.iter().any(|v| v.abs() > 1e-3), "{name} is all but zero");
        }
    }
    // The window: the second half of a sequence after the first half's window equals the whole.
    let (b, t, c, kern) = (1, 20, 6, 4);
    let x = Tensor::<3>::from_data(TensorData::new(values(b * t * c, 24, -1.0, 1.0), [b, t, c]), &device);
    let w = Tensor::<2>::from_data(TensorData::new(values(c * kern, 25, -1.0, 1.0), [c, kern]), &device);
    let (whole, _) = plain(x.clone(), w.clone(), None);
    let (_, window) = plain(x.clone().slice([0..1, 0..9, 0..c]), w.clone(), None);
    let (second, _) = plain(x.slice([0..1, 9..t, 0..c]), w, Some(window));
    let d = max_abs_diff(&to_f32_vec(second).unwrap(), &to_f32_vec(whole.slice([0..1, 9..t, 0..c])).unwrap());
    assert!(d <= 1e-6, "window: max |Δ| = {d:e}");
}

/// The fused Gated DeltaNet middle (`fused_gated_delta_net`: convolution, SiLU, split, L2 norms, delta
/// rule) against autodiff of the plain composition the layer runs elsewhere: outputs and the
/// gradients of the convolution's input and weight, g and β; with one key head per value head and
/// with several value heads per key head, d_k ≠ d_v, partial chunks and one token.
#[test]
fn fused_gated_delta_net_equals_the_plain_composition_values_and_gradients() {
    // (batch, seq, key heads, value heads, d_k, d_v, kernel)
    for (b, t, nk, nv, dk, dv, kern) in [
        (2, CHUNK + 21, 2, 4, 8, 6, 4),
        (1, 1, 1, 3, 4, 4, 4),
        (1, 2 * CHUNK + 3, 3, 3, 6, 10, 3),
        (2, 5, 2, 2, 4, 4, 4),
    ] {
        check_conv_delta_rule(b, t, nk, nv, dk, dv, kern);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_conv_delta_rule(b: usize, t: usize, nk: usize, nv: usize, dk: usize, dv: usize, kern: usize) {
    use lora_core::kernels::causal_conv::plain;
    use lora_core::kernels::fused_gated_delta_net::conv_delta_rule;
    let device = default_device();
    let (kd, c) = (nk * dk, 2 * nk * dk + nv * dv);
    let xv = values(b * t * c, 31, -1.5, 1.5);
    let wv = values(c * kern, 32, -0.8, 0.8);
    let gv = values(b * t * nv, 33, -1.5, -0.01);
    let bv = values(b * t * nv, 34, 0.05, 0.95);
    let weights =
        Tensor::<4>::from_data(TensorData::new(values(b * t * nv * dv, 35, -1.0, 1.0), [b, t, nv, dv]), &device);
    let run = |fused: bool| {
        let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, t, c]), &device).autodiff().require_grad();
        let w = Tensor::<2>::from_data(TensorData::new(wv.clone(), [c, kern]), &device).autodiff().require_grad();
        let g = Tensor::<3>::from_data(TensorData::new(gv.clone(), [b, t, nv]), &device).autodiff().require_grad();
        let beta = Tensor::<3>::from_data(TensorData::new(bv.clone(), [b, t, nv]), &device).autodiff().require_grad();
        let o = if fused {
            conv_delta_rule(x.clone(), w.clone(), g.clone(), beta.clone(), nk, dk)
        } else {
            let (y, _) = plain(x.clone(), w.clone(), None);
            let unit = |u: Tensor<4>| {
                let u = u.unsqueeze_dim::<5>(3).expand([b, t, nk, nv / nk, dk]).reshape([b, t, nv, dk]);
                let n = (u.clone().square().sum_dim(3) + 1e-6).sqrt();
                (u / n).swap_dims(1, 2)
            };
            let q = unit(y.clone().slice([0..b, 0..t, 0..kd]).reshape([b, t, nk, dk])) * (dk as f64).powf(-0.5);
            let k = unit(y.clone().slice([0..b, 0..t, kd..2 * kd]).reshape([b, t, nk, dk]));
            let v = y.slice([0..b, 0..t, 2 * kd..c]).reshape([b, t, nv, dv]).swap_dims(1, 2);
            let (o, _) = chunked(q, k, v, g.clone().swap_dims(1, 2), beta.clone().swap_dims(1, 2), None);
            o.swap_dims(1, 2)
        };
        let grads = (o.clone() * weights.clone().autodiff()).sum().backward();
        let grads = [
            to_f32_vec(x.grad(&grads).unwrap()).unwrap(),
            to_f32_vec(w.grad(&grads).unwrap()).unwrap(),
            to_f32_vec(g.grad(&grads).unwrap()).unwrap(),
            to_f32_vec(beta.grad(&grads).unwrap()).unwrap(),
        ];
        (to_f32_vec(o.inner()).unwrap(), grads)
    };
    let (fused, fused_grads) = run(true);
    let (plain, plain_grads) = run(false);
    let scale = |x: &[f32]| x.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&fused, &plain);
    assert!(d <= 1e-5 * scale(&plain), "t {t}: outputs: max |Δ| = {d:e}");
    for (name, (a, e)) in ["x", "conv weight", "g", "beta"].iter().zip(fused_grads.iter().zip(&plain_grads)) {
        let d = max_abs_diff(a, e);
        assert!(d <= 1e-4 * scale(e), "t {t}, {nk}/{nv} heads: ∂{name}: max |Δ| = {d:e} (scale {})", scale(e));
        if t > 1 || *name != "g" {
            assert!(e.iter().any(|v| v.abs() > 1e-3), "∂{name} is all but zero: the test would prove nothing");
        }
    }
}
