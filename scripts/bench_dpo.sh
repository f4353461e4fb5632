#!/usr/bin/env bash
# DPO training throughput and peak memory, lora against TRL's DPOTrainer + PEFT side by side.
#
#   scripts/bench_dpo.sh [PYTHON]     # PYTHON: an interpreter with torch, transformers, peft, trl
#
# Both train a random Llama of the same shape (fp32, tied embeddings; LoRA r 8 on q_proj, v_proj),
# PAIRS pairs per step (default 2) of PROMPT + COMPLETION tokens per sequence (default 128 + 128),
# beta 0.1, sigmoid loss, the reference the base with the adapter disabled, THREADS threads
# (default 2), STEPS timed steps after one warm-up; with the reference computed in every step and
# precomputed once. SHAPES picks shapes (default "smol qwen": SmolLM2-135M's and Qwen2.5-0.5B's).
# RUNS (default 1) alternating rounds. Peak RSS from /usr/bin/time. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
cargo build --release -q --workspace --features lora-core/wgpu --example bench_dpo
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_dpo
smol=(--hidden 576 --layers 30 --heads 9 --kv-heads 3 --inter 1536 --vocab 49152)
qwen=(--hidden 896 --layers 24 --heads 14 --kv-heads 2 --inter 4864 --vocab 151936)
common=(--pairs "${PAIRS:-2}" --prompt "${PROMPT:-128}" --completion "${COMPLETION:-128}" --steps "${STEPS:-5}")
peak() { grep "Maximum resident" | awk '{ printf "%.0f MB", $6 / 1024 }'; }
for run in $(seq "${RUNS:-1}"); do
  for shape in ${SHAPES:-smol qwen}; do
    declare -n args=$shape
    for pre in "" --precompute; do
      echo "== run $run $shape ${pre:-(reference per step)}"
      out=$( { /usr/bin/time -v "$bin" "${args[@]}" "${common[@]}" $pre; } 2>&1 )
      echo "$(echo "$out" | grep '^lora dpo') [max RSS $(echo "$out" | peak)]"
      out=$( { /usr/bin/time -v "$py" scripts/bench_dpo_trl.py "${args[@]}" "${common[@]}" --threads "$threads" \
        --tokenizer tests/fixtures/models/llama $pre; } 2>&1 )
      echo "$(echo "$out" | grep '^trl dpo') [max RSS $(echo "$out" | peak)]"
    done
  done
done
