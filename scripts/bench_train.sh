#!/usr/bin/env bash
# LoRA training throughput, lora against PyTorch + PEFT side by side on the same machine.
#
#   scripts/bench_train.sh [PYTHON]     # PYTHON: an interpreter with torch, transformers, peft
#
# Both use 2 threads (RAYON_NUM_THREADS / torch.set_num_threads), fp32, r=8 on q_proj,v_proj.
# Run it on a quiet machine: a compiler beside it divides PyTorch's figure by 5 or more.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
cargo build --release -q -p lora-train --example bench_train
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_train
small=()
smol=(--hidden 576 --layers 30 --heads 9 --kv-heads 3 --inter 1536 --vocab 49152)
for shape in small smol; do
  declare -n args=$shape
  echo "== $shape ${args[*]:-(reference shape)}"
  ours=$("$bin" "${args[@]}" --steps "${STEPS:-10}")
  echo "$ours"
  if "$py" -c "import torch, peft" 2>/dev/null; then
    ref=$("$py" scripts/bench_train_peft.py "${args[@]}" --threads "$threads" --steps "${STEPS:-10}")
    echo "$ref"
    a=$(echo "$ours" | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1)
    b=$(echo "$ref" | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1)
    awk -v a="$a" -v b="$b" 'BEGIN { printf "ratio lora / peft: %.2fx\n", a / b }'
  else
    echo "(no torch+peft in $py: reference skipped)"
  fi
done
