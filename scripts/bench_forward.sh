#!/usr/bin/env bash
# Forward throughput, load time and peak RSS of Llama-shaped random models on CPU, per backend.
#
#   scripts/bench_forward.sh            # the 135M SmolLM2 shape on flex and ndarray, and a ~500M load
#
# Peak RSS is reported twice: by the program (VmHWM) and by /usr/bin/time -v.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
cargo build --release -q -p lora-core --example bench_forward --features ndarray
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_forward
smol="--hidden 576 --layers 30 --heads 9 --kv-heads 3 --inter 1536 --vocab 49152"
run() { /usr/bin/time -v "$bin" "$@" 2> >(grep -E "Maximum resident|^wrote" >&2); }
echo "== 135M (SmolLM2-135M shape), f32 weights"
for backend in cpu ndarray; do
  run $smol --batch 1 --seq 128 --iters 5 --backend "$backend"
  run $smol --batch 4 --seq 128 --iters 3 --backend "$backend"
done
echo "== 135M load from bf16 weights"
run $smol --dtype bf16 --load-only
echo "== ~500M (hidden 1536, 16 layers, 12/4 heads, inter 4096, vocab 32000), load only"
run --hidden 1536 --layers 16 --heads 12 --kv-heads 4 --inter 4096 --vocab 32000 --dtype bf16 --load-only
run --hidden 1536 --layers 16 --heads 12 --kv-heads 4 --inter 4096 --vocab 32000 --dtype f32 --load-only
