//! The chunked gated delta rule against its recurrence, token by token.

use burn::tensor::{Tensor, TensorData};
use lora_core::default_device;
use lora_core::delta_rule::{CHUNK, chunked, recurrent_step};
use lora_core::host::to_f32_vec;

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

    let mut s = state0;
    let mut outs = Vec::new();
    for i in 0..t {
        let at3 = |x: &Tensor<4>, d: usize| x.clone().slice([0..b, 0..h, i..i + 1, 0..d]).reshape([b, h, d]);
        let at2 = |x: &Tensor<3>| x.clone().slice([0..b, 0..h, i..i + 1]).reshape([b, h]);
        let (oi, si) = recurrent_step(at3(&q, dk), at3(&k, dk), at3(&v, dv), at2(&g), at2(&beta), s);
        outs.push(oi.reshape([b, h, 1, dv]));
        s = si;
    }
    let expected = to_f32_vec(Tensor::cat(outs, 2)).unwrap();
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
