#!/usr/bin/env bash
# LoRA training throughput, lora against PyTorch + PEFT side by side on the same machine.
#
#   scripts/bench_train.sh [PYTHON]     # PYTHON: an interpreter with torch, transformers, peft
#
# Both use THREADS threads (default 2: RAYON_NUM_THREADS / torch.set_num_threads), fp32, r=8 on
# q_proj,v_proj, the same random Llama-shaped model and token pattern. First each side's 2048³ sgemm
# rate is measured; the higher is the machine's fp32 peak the MFU figures are taken against.
# SHAPES picks shapes (default "small smol qwen"); REFERENCE_KERNELS=1 also runs lora with its plain
# burn compositions instead of the fused CPU kernels (LORA_REFERENCE_KERNELS=1).
# DORA=1 makes every adapter DoRA on both sides (use_dora).
# Run it on a quiet machine: a compiler beside it divides PyTorch's figure by 5 or more.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
cargo build --release -q -p lora-train --example bench_train
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_train
have_ref=0
"$py" -c "import torch, peft" 2>/dev/null && have_ref=1

ours_peak=$("$bin" --measure-peak)
echo "$ours_peak"
peak=$(echo "$ours_peak" | grep -o '[0-9.]* GFLOP/s' | cut -d' ' -f1)
if [ "$have_ref" = 1 ]; then
  ref_peak=$("$py" scripts/bench_train_peft.py --threads "$threads" --measure-peak 2>/dev/null)
  echo "$ref_peak"
  peak=$(echo "$ref_peak" | grep -o '[0-9.]* GFLOP/s' | cut -d' ' -f1 | awk -v a="$peak" '{ print ($1 > a ? $1 : a) }')
fi
peak_tflops=$(awk -v p="$peak" 'BEGIN { printf "%.4f", p / 1000 }')
echo "fp32 peak for MFU: $peak_tflops TFLOP/s"

small=()
smol=(--hidden 576 --layers 30 --heads 9 --kv-heads 3 --inter 1536 --vocab 49152)
qwen=(--hidden 896 --layers 24 --heads 14 --kv-heads 2 --inter 4864 --vocab 151936 --batch 1 --seq 512)
for shape in ${SHAPES:-small smol qwen}; do
  declare -n args=$shape
  echo "== $shape ${args[*]:-(reference shape)}"
  if [ "${DORA:-0}" = 1 ]; then args+=(--dora); fi
  ours=$("$bin" "${args[@]}" --steps "${STEPS:-10}" --peak-tflops "$peak_tflops")
  echo "$ours"
  if [ "${REFERENCE_KERNELS:-0}" = 1 ]; then
    LORA_REFERENCE_KERNELS=1 "$bin" "${args[@]}" --steps "${STEPS:-10}" --peak-tflops "$peak_tflops" | sed 's/^lora/lora (plain burn ops)/'
  fi
  if [ "$have_ref" = 1 ]; then
    ref=$("$py" scripts/bench_train_peft.py "${args[@]}" --threads "$threads" --steps "${STEPS:-10}" \
      --peak-tflops "$peak_tflops" 2>/dev/null)
    echo "$ref"
    a=$(echo "$ours" | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1)
    b=$(echo "$ref" | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1)
    awk -v a="$a" -v b="$b" 'BEGIN { printf "ratio lora / peft: %.2fx\n", a / b }'
  else
    echo "(no torch+peft in $py: reference skipped)"
  fi
done
