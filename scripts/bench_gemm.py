"""The f32 products of a LoRA training step through PyTorch (MKL) and NumPy (OpenBLAS), beside
`cargo run --release -p lora-core --example bench_gemm` (the `gemm` crate) at the same shapes.

    OPENBLAS_NUM_THREADS=2 python scripts/bench_gemm.py [--threads 2]
"""
import argparse
import time

import numpy as np
import torch

# (name, m, k, n, rhs transposed): C[m, n] = A[m, k] . B, B stored [n, k] when transposed.
SHAPES = [
    ("small x.Wt 512x256x256", 512, 256, 256, True),
    ("small g.W 512x256x256", 512, 256, 256, False),
    ("small up x.Wt 512x256x1024", 512, 256, 1024, True),
    ("135M q x.Wt 512x576x576", 512, 576, 576, True),
    ("135M up x.Wt 512x576x1536", 512, 576, 1536, True),
    ("135M down g.W 512x576x1536", 512, 576, 1536, False),
    ("135M head x.Wt 512x576x49152", 512, 576, 49152, True),
    ("135M head g.W 512x49152x576", 512, 49152, 576, False),
    ("qwen q x.Wt 512x896x896", 512, 896, 896, True),
    ("qwen down x.Wt 512x4864x896", 512, 4864, 896, True),
    ("qwen down g.W 512x896x4864", 512, 896, 4864, False),
    ("square 2048^3", 2048, 2048, 2048, False),
]


def rate(f, flops):
    f()
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < 0.5:
        f()
        runs += 1
    return flops * runs / (time.perf_counter() - start) / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    torch.set_num_threads(p.parse_args().threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    for name, m, k, n, transposed in SHAPES:
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(n, k).astype(np.float32) if transposed else np.random.rand(k, n).astype(np.float32)
        c = np.empty((m, n), np.float32)
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        bt, tbt = (b.T, tb.T) if transposed else (b, tb)
        flops = 2 * m * k * n
        mkl = rate(lambda: torch.matmul(ta, tbt, out=tc), flops)
        openblas = rate(lambda: np.matmul(a, bt, out=c), flops)
        print(f"{name:34s} torch (MKL) {mkl:6.1f}  numpy (OpenBLAS) {openblas:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
