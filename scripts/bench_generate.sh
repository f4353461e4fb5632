#!/usr/bin/env bash
# Greedy generation on the CPU, lora against transformers side by side: prefill and decode tokens/s.
#
#   scripts/bench_generate.sh MODEL_DIR [PYTHON]    # PYTHON: an interpreter with torch and transformers
#
# PROMPT (default 64) prompt ids, NEW (default 64) new tokens, THREADS (default 2), RUNS (default 3)
# alternating runs. Both keep the KV cache (and, for Qwen3.5, the Gated DeltaNet's recurrent state).
# A random Qwen3.5-0.8B shape: `python scripts/bench_qwen3_5_peft.py DIR --write --hidden 1024
# --layers 24 --heads 8 --kv-heads 2 --head-dim 256 --inter 3584 --vocab 248320 --linear-k-heads 16
# --linear-v-heads 16 --linear-head-dim 128`. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$1"
py="${2:-python3}"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
cargo build --release -q --workspace --features lora-core/wgpu --example bench_generate
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_generate
for run in $(seq "${RUNS:-3}"); do
  echo "== run $run"
  "$bin" --dir "$dir" --prompt "${PROMPT:-64}" --new "${NEW:-64}"
  "$py" scripts/bench_generate_peft.py "$dir" --prompt "${PROMPT:-64}" --new "${NEW:-64}" --threads "$threads" 2>&1 |
    grep tokens/s
done
