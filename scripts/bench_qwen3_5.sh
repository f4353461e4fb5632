#!/usr/bin/env bash
# Qwen3.5 LoRA training throughput and peak memory, lora against PyTorch + PEFT side by side.
#
#   scripts/bench_qwen3_5.sh [PYTHON]     # PYTHON: an interpreter with torch, transformers 5.24, peft
#
# Both train the same random Qwen3.5 text model (written once by bench_qwen3_5_peft.py --write; default
# hidden 512, 8 layers = 6 Gated DeltaNet + 2 gated attention, vocab 32000), fp32, LoRA r 8 on all
# linear layers, batch 2 x seq 512, THREADS threads (default 2), the same token pattern. RUNS (default
# 3) alternating runs of each, so that the machine's drift hits both; peak RSS from /usr/bin/time.
# REFERENCE_KERNELS=1 adds lora with its plain burn compositions (LORA_REFERENCE_KERNELS=1).
# SHAPE="--hidden ... --seq ..." passes another shape to both (bench_qwen3_5_peft.py's flags).
# Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
read -r -a shape <<< "${SHAPE:-}"
cargo build --release -q --workspace --features lora-core/wgpu --example bench_train
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_train
dir=${DIR:-${TMPDIR:-/tmp}/lora-bench-qwen3_5-$(echo "${shape[*]:-default}" | tr -c 'a-z0-9' '-')}
[ -f "$dir/config.json" ] || "$py" scripts/bench_qwen3_5_peft.py "$dir" --write "${shape[@]}"
batch=2 seq=512
for ((i = 0; i < ${#shape[@]}; i++)); do
  case "${shape[$i]}" in --batch) batch=${shape[$((i + 1))]} ;; --seq) seq=${shape[$((i + 1))]} ;; esac
done
peak() { grep "Maximum resident" | awk '{ printf "%.0f MB", $6 / 1024 }'; }
for run in $(seq "${RUNS:-3}"); do
  echo "== run $run"
  out=$( { /usr/bin/time -v "$bin" --dir "$dir" --targets all-linear --batch "$batch" --seq "$seq" \
    --steps "${STEPS:-5}" --r 8; } 2>&1 )
  echo "$(echo "$out" | grep tokens/s) [max RSS $(echo "$out" | peak)]"
  if [ "${REFERENCE_KERNELS:-0}" = 1 ]; then
    out=$( { LORA_REFERENCE_KERNELS=1 /usr/bin/time -v "$bin" --dir "$dir" --targets all-linear --batch "$batch" \
      --seq "$seq" --steps "${STEPS:-5}" --r 8; } 2>&1 )
    echo "$(echo "$out" | grep tokens/s | sed 's/^lora/lora (plain burn ops)/') [max RSS $(echo "$out" | peak)]"
  fi
  out=$( { /usr/bin/time -v "$py" scripts/bench_qwen3_5_peft.py "$dir" --threads "$threads" \
    --steps "${STEPS:-5}" "${shape[@]}"; } 2>&1 )
  echo "$(echo "$out" | grep tokens/s) [max RSS $(echo "$out" | peak)]"
done
