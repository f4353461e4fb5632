#!/usr/bin/env bash
# Mixture-of-experts LoRA training throughput and peak memory, lora against PyTorch + PEFT side by side.
#
#   scripts/bench_moe.sh [PYTHON]     # PYTHON: an interpreter with torch, transformers 5.x, peft >= 0.19
#
# Both train the same random Qwen3-MoE model (written once by bench_moe_peft.py --write; default
# Qwen3-30B-A3B's width in 2 layers: hidden 2048, 128 experts of 768, top 8, vocab 32000), fp32, LoRA r 8
# on q/k/v/o_proj and every expert's gate/up/down_proj (PEFT's target_parameters), batch 1 x seq 512,
# THREADS threads (default 2), the same token pattern. RUNS (default 2) alternating runs of each, so that
# the machine's drift hits both; peak RSS from /usr/bin/time. SHAPE="--experts 64 ..." passes another shape
# to both (bench_moe_peft.py's flags). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
read -r -a shape <<< "${SHAPE:-}"
cargo build --release -q --workspace --features lora-core/wgpu --example bench_train
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_train
dir=${DIR:-${TMPDIR:-/tmp}/lora-bench-moe-$(echo "${shape[*]:-default}" | tr -c 'a-z0-9' '-')}
[ -f "$dir/config.json" ] || "$py" scripts/bench_moe_peft.py "$dir" --write "${shape[@]}"
batch=1 seq=512
for ((i = 0; i < ${#shape[@]}; i++)); do
  case "${shape[$i]}" in --batch) batch=${shape[$((i + 1))]} ;; --seq) seq=${shape[$((i + 1))]} ;; esac
done
peak() { grep "Maximum resident" | awk '{ printf "%.0f MB", $6 / 1024 }'; }
for run in $(seq "${RUNS:-2}"); do
  echo "== run $run"
  out=$( { /usr/bin/time -v "$bin" --dir "$dir" --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
    --batch "$batch" --seq "$seq" --steps "${STEPS:-3}" --warmup 1 --r 8; } 2>&1 )
  echo "$(echo "$out" | grep tokens/s) [max RSS $(echo "$out" | peak)]"
  out=$( { /usr/bin/time -v "$py" scripts/bench_moe_peft.py "$dir" --threads "$threads" \
    --steps "${STEPS:-3}" "${shape[@]}"; } 2>&1 )
  echo "$(echo "$out" | grep tokens/s) [max RSS $(echo "$out" | peak)]"
done
