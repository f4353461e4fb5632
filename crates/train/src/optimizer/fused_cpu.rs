//! The AdamW update as one loop over a parameter's buffers on burn-flex, in f32.
//!
//! burn's composition allocates a new p, m and v beside the old ones (and a few temporaries) for
//! every parameter; at the end of a step on a large model that is the moment memory peaks (measured
//! on the Qwen3.5-27B shape: +0.7 GiB over the step). Here p, m and v are read back as their own
//! buffers when this is their only reference (burn-flex hands over a unique buffer without a copy),
//! written in place and wrapped again, so nothing is allocated. A shared parameter is copied first,
//! which is still correct.
//!
//! Each element goes through the operations of [`super::composed`] in the same order, with each
//! scalar rounded to f32 as burn rounds a scalar operand, so the two agree to the bit (a test checks
//! it): +, −, ×, ÷ and √ are correctly rounded, and Rust neither fuses nor reorders them.

use lora_core::burn::tensor::{Tensor, TensorData};

use super::StepScalars;

/// Updates one parameter: returns the new p, and replaces `m` and `v` by their new values.
///
/// # Shapes
/// `p`, `g`, `m`, `v`: the same `[rows, cols]`, f32 on burn-flex.
pub(super) fn update(p: Tensor<2>, g: Tensor<2>, m: &mut Tensor<2>, v: &mut Tensor<2>, s: &StepScalars) -> Tensor<2> {
    let device = p.device();
    let dims = p.dims();
    // Taken out, so that the optimizer's reference is the only one and the buffers come back unshared.
    let mut m_data = std::mem::replace(m, Tensor::empty([0, 0], &device)).into_data();
    let mut v_data = std::mem::replace(v, Tensor::empty([0, 0], &device)).into_data();
    let mut p_data = p.into_data();
    let g_data = g.into_data();
    step(
        p_data.as_mut_slice::<f32>().expect("use_fused checked f32"),
        g_data.as_slice::<f32>().expect("use_fused checked f32"),
        m_data.as_mut_slice::<f32>().expect("use_fused checked f32"),
        v_data.as_mut_slice::<f32>().expect("use_fused checked f32"),
        s,
    );
    drop(g_data);
    let wrap = |d: TensorData| Tensor::<2>::from_data(d, &device);
    *m = wrap(m_data);
    *v = wrap(v_data);
    let new_p = wrap(p_data);
    debug_assert_eq!(new_p.dims(), dims);
    new_p
}

/// The element loop: steps 1)–4) of the module docs, in place.
fn step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &StepScalars) {
    assert!(g.len() == p.len() && m.len() == p.len() && v.len() == p.len(), "AdamW buffers differ in length");
    let decay = s.decay as f32;
    let one_minus_beta1 = s.one_minus_beta1 as f32;
    let beta2 = s.beta2 as f32;
    let one_minus_beta2 = s.one_minus_beta2 as f32;
    let bias2_sqrt = s.bias2_sqrt as f32;
    let eps = s.eps as f32;
    let step_size = s.step_size as f32;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let decayed = *p * decay; // 1)
        *m += (g - *m) * one_minus_beta1; // 2)
        *v = *v * beta2 + g * g * one_minus_beta2; // 3)
        let denom = v.sqrt() / bias2_sqrt + eps;
        *p = decayed - *m / denom * step_size; // 4)
    }
}

#[cfg(test)]
mod tests {
    use lora_core::burn::tensor::{Device, Tensor, TensorData};
    use lora_core::kernels::host::to_f32_vec;

    use crate::optimizer::{AdamW, AdamWConfig};

    /// Values spread over several orders of magnitude, from a fixed seed.
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * scale * 10f32.powi((x % 5) as i32 - 2)
            })
            .collect()
    }

    fn tensor(v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape.to_vec()), &Device::flex())
    }

    fn bits(t: &Tensor<2>) -> Vec<u32> {
        to_f32_vec(t.clone()).unwrap().iter().map(|x| x.to_bits()).collect()
    }

    /// Five steps at changing learning rates, on parameters shaped as LoRA's A and B: the fused loop
    /// and the burn composition give the same parameters and moments to the bit.
    #[test]
    fn fused_update_equals_composed_to_the_bit() {
        let shapes = [[8, 48], [40, 8], [1, 1]];
        let config = AdamWConfig { weight_decay: 0.05, ..AdamWConfig::default() };
        let start: Vec<Tensor<2>> =
            shapes.iter().enumerate().map(|(i, &s)| tensor(values(s[0] * s[1], i as u64 + 1, 0.2), s)).collect();
        let mut fused = AdamW::new(config, &start);
        let mut plain = AdamW::new(config, &start);
        let (mut pf, mut pp) = (start.clone(), start);
        for step in 0..5u64 {
            let lr = 1e-3 * (1.0 + step as f64 * 0.37);
            let grads: Vec<Tensor<2>> = shapes
                .iter()
                .enumerate()
                .map(|(i, &s)| tensor(values(s[0] * s[1], 100 * step + i as u64 + 7, 1.0), s))
                .collect();
            pf = fused.update_with(pf, grads.clone(), lr, true);
            pp = plain.update_with(pp, grads, lr, false);
            for (i, (a, b)) in pf.iter().zip(&pp).enumerate() {
                assert_eq!(bits(a), bits(b), "step {step}, parameter {i}");
                assert_eq!(bits(&fused.moments[i].0), bits(&plain.moments[i].0), "m, step {step}, parameter {i}");
                assert_eq!(bits(&fused.moments[i].1), bits(&plain.moments[i].1), "v, step {step}, parameter {i}");
            }
        }
        // The update moved the parameters (a no-op would also agree).
        let before = values(8 * 48, 1, 0.2);
        let after = to_f32_vec(pf[0].clone()).unwrap();
        assert!(before.iter().zip(&after).filter(|(a, b)| a != b).count() > 300);
    }

    /// A parameter held elsewhere too (as the model holds it) is copied, not written under the
    /// other holder.
    #[test]
    fn shared_parameter_is_left_unchanged() {
        let p = tensor(values(64, 3, 0.2), [8, 8]);
        let kept = p.clone();
        let before = bits(&kept);
        let mut opt = AdamW::new(AdamWConfig::default(), std::slice::from_ref(&p));
        let new = opt.update(vec![p], vec![tensor(values(64, 4, 1.0), [8, 8])], 1e-2);
        assert_eq!(bits(&kept), before);
        assert_ne!(bits(&new[0]), before);
    }

    /// Handed the only reference, the update writes p, m and v where they are: the new values are
    /// in the buffers of the old (which is what keeps the end of a large step from peaking).
    #[test]
    fn a_unique_parameter_is_updated_in_its_own_buffer() {
        let data = TensorData::new(values(96, 5, 0.2), vec![8, 12]);
        let p_ptr = data.as_slice::<f32>().unwrap().as_ptr();
        let p = Tensor::<2>::from_data(data, &Device::flex());
        let mut opt = AdamW::new(AdamWConfig::default(), std::slice::from_ref(&p));
        let g = || tensor(values(96, 6, 1.0), [8, 12]);
        let mut params = opt.update(vec![p], vec![g()], 1e-2);
        // The moments' buffers, read without a copy (the optimizer's are the only references: a
        // clone would make into_data copy, and a copy's address proves nothing), then put back.
        let moment_ptrs = |opt: &mut AdamW| {
            let (m, v) = opt.moments.pop().unwrap();
            let (m, v) = (m.into_data(), v.into_data());
            let ptrs = (m.as_slice::<f32>().unwrap().as_ptr(), v.as_slice::<f32>().unwrap().as_ptr());
            opt.moments.push((Tensor::from_data(m, &Device::flex()), Tensor::from_data(v, &Device::flex())));
            ptrs
        };
        let (m_ptr, v_ptr) = moment_ptrs(&mut opt);
        params = opt.update(params, vec![g()], 1e-2);
        assert_eq!(moment_ptrs(&mut opt), (m_ptr, v_ptr));
        assert_eq!(params.pop().unwrap().into_data().as_slice::<f32>().unwrap().as_ptr(), p_ptr);
    }
}
