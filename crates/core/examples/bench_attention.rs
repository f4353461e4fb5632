//! Benchmark: one attention layer's forward and backward, by the three implementations lora has,
//! for the memory they keep (run under `/usr/bin/time -v` for the peak RSS) and their time.
//!
//! - `burn`: burn's `attention` with repeated key/value heads, under autodiff: what burn 0.22 runs
//!   on every backend (`attention_fallback`), keeping `[batch, heads, seq, seq]` for backward.
//! - `tiled`: lora's blocks of query rows (`tiled_attention.rs`), the GPUs' path.
//! - `fused`: lora's CPU kernel (`fused_attention.rs`), the CPU's path.
//!
//! The memory pattern (what autodiff keeps between forward and backward) is the backend's, not the
//! CPU's: on a GPU the same tensors are kept in its memory.
//!
//! cargo run --release -p lora-core --example bench_attention -- tiled 2048 32 8 128 [cpu|wgpu|cuda] [bf16]
//!
//! `bf16` runs the tiled attention's products in bf16 (a bf16 base on a GPU does).

use std::time::Instant;

use lora_core::burn::tensor::module::attention;
use lora_core::burn::tensor::ops::AttentionModuleOptions;
use lora_core::burn::tensor::{Tensor, TensorData};
use lora_core::kernels::fused_attention::{KeyMask, fused_attention};
use lora_core::kernels::host::to_f32_vec;
use lora_core::kernels::tiled_attention::{SCORE_VALUES, tiled_attention};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_attention burn|tiled|fused SEQ HEADS KV_HEADS HEAD_DIM [cpu|wgpu|cuda] [bf16]";
    let [which, t, nh, nkv, hd, rest @ ..] = args.as_slice() else { panic!("{usage}") };
    let num = |s: &String| s.parse::<usize>().unwrap_or_else(|_| panic!("{usage}"));
    let (t, nh, nkv, hd) = (num(t), num(nh), num(nkv), num(hd));
    let backend: lora_core::Backend = rest.first().map_or("cpu", String::as_str).parse().expect("device");
    let compute = match rest.get(1).map(String::as_str) {
        None => None,
        Some("bf16") => Some(lora_core::burn::tensor::FloatDType::BF16),
        Some(other) => panic!("unknown compute dtype '{other}'; {usage}"),
    };
    let device = backend.device().expect("device");
    // The same inputs for every implementation, so that their ∂q sums agree.
    let leaf = |seed: u64, shape: [usize; 4]| {
        let mut s = seed;
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, shape), &device).autodiff().require_grad()
    };
    let (q, k, v) = (leaf(1, [1, nh, t, hd]), leaf(2, [1, nkv, t, hd]), leaf(3, [1, nkv, t, hd]));
    let start = Instant::now();
    let o = match which.as_str() {
        "burn" => {
            let rep = |x: Tensor<4>| x.unsqueeze_dim::<5>(2).expand([1, nkv, nh / nkv, t, hd]).reshape([1, nh, t, hd]);
            let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
            attention(q.clone(), rep(k.clone()), rep(v.clone()), None, None, options)
        }
        "tiled" => tiled_attention(q.clone(), k.clone(), v.clone(), None, true, SCORE_VALUES, compute),
        "fused" => fused_attention(
            q.clone().swap_dims(1, 2),
            k.clone().swap_dims(1, 2),
            v.clone().swap_dims(1, 2),
            KeyMask::Causal { past: 0 },
        )
        .swap_dims(1, 2),
        other => panic!("unknown implementation '{other}'; {usage}"),
    };
    let grads = (o.clone() * o).sum().backward();
    let dq = to_f32_vec(q.grad(&grads).expect("∂q")).expect("∂q values");
    let secs = start.elapsed().as_secs_f64();
    // Forward 4·t²·hd·heads (QKᵀ and PV), backward 2.5x that; halved by the causal mask.
    let flops = 3.5 * 4.0 * (t * t * hd * nh) as f64 / 2.0;
    let checksum: f64 = dq.iter().map(|&x| x as f64).sum();
    println!(
        "{which}{} seq {t} heads {nh}/{nkv} head_dim {hd} on {backend}: {secs:.3} s, {:.1} GFLOP/s, ∂q sum {checksum:.6e}",
        if compute.is_some() { " (bf16 products)" } else { "" },
        flops / secs / 1e9
    );
}
