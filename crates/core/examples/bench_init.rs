//! Benchmark: the starts that move the base (PiSSA's thin SVD, `pissa_niter_N`'s randomized SVD,
//! OLoRA's thin QR) on one random weight, seconds per module. `--out 4096 --in 4096 --r 16`.
//!
//! The decompositions run single-threaded per module (so that `lora verify` reproduces them) and
//! modules in parallel: a model's start takes about (modules / threads) times this.

use std::time::Instant;

use lora_core::adapter::base_init::{MovingInit, initial_factors};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (out, inp, r) = (arg("--out", 4096), arg("--in", 4096), arg("--r", 16));
    let mut s = 0x9E37_79B9_u64;
    let w: Vec<f32> = (0..out * inp)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect();
    for init in [MovingInit::Olora, MovingInit::PissaNiter(4), MovingInit::Pissa] {
        let t = Instant::now();
        initial_factors(init, &w, [out, inp], r, 2.0, 1).unwrap();
        println!("{} [{out}, {inp}] r {r}: {:.2} s", init.name(), t.elapsed().as_secs_f64());
    }
}
