//! Benchmark: the f32 products of a LoRA training step, at the shapes `scripts/bench_train.sh` uses,
//! through [`lora_core::kernels::cpu_kernel::gemm_f32`] (the `gemm` crate). Prints GFLOP/s per product;
//! `scripts/bench_gemm.py` prints the same table for PyTorch (MKL) and NumPy (OpenBLAS).
//!
//! Each product is timed three ways: through `gemm_f32` as the training step calls it (its own split
//! over the threads), and split by hand over output columns and over rows, each part one
//! single-threaded call. LHS_MT / RHS_T set gemm's packing thresholds, to measure unpacked operands.
//!
//! RAYON_NUM_THREADS=2 cargo run --release -p lora-core --example bench_gemm

use std::time::Instant;

use rayon::prelude::*;

use lora_core::kernels::cpu_kernel::gemm_f32;

/// `(name, m, k, n, rhs transposed)`: C[m, n] = A[m, k] · B, B stored `[n, k]` when transposed
/// (x·Wᵀ, a forward product) and `[k, n]` otherwise (g·W, a backward product).
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("small x.Wt 512x256x256", 512, 256, 256, true),
    ("small g.W 512x256x256", 512, 256, 256, false),
    ("small up x.Wt 512x256x688", 512, 256, 688, true),
    ("small up g.W 512x688x256", 512, 688, 256, false),
    ("small qkv x.Wt 512x256x768", 512, 256, 768, true),
    ("small qkv g.W 512x768x256", 512, 768, 256, false),
    ("small gate+up x.Wt 512x256x1376", 512, 256, 1376, true),
    ("small gate+up g.W 512x1376x256", 512, 1376, 256, false),
    ("135M q x.Wt 512x576x576", 512, 576, 576, true),
    ("135M k x.Wt 512x576x192", 512, 576, 192, true),
    ("135M k g.W 512x192x576", 512, 192, 576, false),
    ("135M q g.W 512x576x576", 512, 576, 576, false),
    ("135M qkv x.Wt 512x576x960", 512, 576, 960, true),
    ("135M qkv g.W 512x960x576", 512, 960, 576, false),
    ("135M up x.Wt 512x576x1536", 512, 576, 1536, true),
    ("135M up g.W 512x1536x576", 512, 1536, 576, false),
    ("135M gate+up x.Wt 512x576x3072", 512, 576, 3072, true),
    ("135M gate+up g.W 512x3072x576", 512, 3072, 576, false),
    ("135M down x.Wt 512x1536x576", 512, 1536, 576, true),
    ("135M down g.W 512x576x1536", 512, 576, 1536, false),
    ("135M head x.Wt 512x576x49152", 512, 576, 49152, true),
    ("135M head g.W 512x49152x576", 512, 49152, 576, false),
    ("qwen q x.Wt 512x896x896", 512, 896, 896, true),
    ("qwen down x.Wt 512x4864x896", 512, 4864, 896, true),
    ("qwen down g.W 512x896x4864", 512, 896, 4864, false),
    ("square 2048^3", 2048, 2048, 2048, false),
];

/// The output, shared by the parts of a split product (each writes its own block).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the parts write disjoint blocks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn rate(run: &mut dyn FnMut(), macs: usize) -> f64 {
    run();
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed().as_secs_f64() < 0.5 {
        run();
        runs += 1;
    }
    2.0 * macs as f64 * runs as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    rayon::ThreadPoolBuilder::new().build_global().ok();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(v) = env("LHS_MT") {
        gemm::set_lhs_packing_threshold_multi_thread(v);
    }
    if let Some(v) = env("RHS_T") {
        gemm::set_rhs_packing_threshold(v);
    }
    for &(name, m, k, n, transposed) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3).collect();
        let mut c = vec![0f32; m * n];
        // B element (kk, j): [n, k] storage when transposed, [k, n] otherwise.
        let (b_rs, b_cs) = if transposed { (1, k) } else { (n, 1) };
        let mut run = || unsafe {
            gemm_f32([m, n, k], (c.as_mut_ptr(), n, 1), (a.as_ptr(), k, 1), (b.as_ptr(), b_rs, b_cs), false, 1.0, true)
        };
        let g1 = rate(&mut run, m * n * k);
        let cp = SendPtr(c.as_mut_ptr());
        let mut split = || {
            let parts = rayon::current_num_threads();
            let per = n.div_ceil(parts).div_ceil(16) * 16;
            (0..parts).into_par_iter().for_each(|p| {
                let (j0, j1) = (p * per, ((p + 1) * per).min(n));
                if j0 >= j1 {
                    return;
                }
                unsafe {
                    let bptr = if transposed { b.as_ptr().add(j0 * k) } else { b.as_ptr().add(j0) };
                    gemm_f32(
                        [m, j1 - j0, k],
                        (cp.get().add(j0), n, 1),
                        (a.as_ptr(), k, 1),
                        (bptr, b_rs, b_cs),
                        false,
                        1.0,
                        false,
                    )
                }
            });
        };
        let g2 = rate(&mut split, m * n * k);
        let mut by_rows = || {
            let parts = rayon::current_num_threads();
            let per = m / parts / 16 * 16;
            (0..parts).into_par_iter().for_each(|p| {
                let (i0, i1) = (p * per, if p + 1 == parts { m } else { (p + 1) * per });
                unsafe {
                    gemm_f32(
                        [i1 - i0, n, k],
                        (cp.get().add(i0 * n), n, 1),
                        (a.as_ptr().add(i0 * k), k, 1),
                        (b.as_ptr(), b_rs, b_cs),
                        false,
                        1.0,
                        false,
                    )
                }
            });
        };
        let g3 = rate(&mut by_rows, m * n * k);
        println!("{name:34} gemm_f32 {g1:6.1}  by columns {g2:6.1}  by rows {g3:6.1} GFLOP/s");
    }
}
