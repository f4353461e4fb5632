#!/usr/bin/env bash
# Memory and speed of LoRA training on large shapes: f32 / bf16 / nf4 bases, with and without
# recomputation, beside PyTorch + PEFT in f32 where it fits (the issue's table).
#
#   scripts/bench_scale.sh [PYTHON] [SHAPES]    # PYTHON with torch + peft; SHAPES: "qwen05 llama1b llama8b"
#
# batch 1, seq 512 (256 for the 8B shape), r = 8 on q_proj, v_proj, 2 threads; peak RSS from
# /usr/bin/time -v. Random models are written once under $BENCH_DIR (default /var/tmp/lora-bench):
# the 8B one is a ~16 GB bf16 folder. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
shapes="${2:-qwen05 llama1b llama8b}"
threads="${THREADS:-2}"
steps="${STEPS:-2}"
export RAYON_NUM_THREADS="$threads"
dir="${BENCH_DIR:-/var/tmp/lora-bench}"
mkdir -p "$dir"
cargo build --release -q -p lora-train --example bench_train
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_train

qwen05=(--hidden 896 --layers 24 --heads 14 --kv-heads 2 --inter 4864 --vocab 151936 --seq 512)
llama1b=(--hidden 2048 --layers 16 --heads 32 --kv-heads 8 --inter 8192 --vocab 128256 --seq 512)
llama8b=(--hidden 4096 --layers 32 --heads 32 --kv-heads 8 --inter 14336 --vocab 128256 --seq 256 --untied)

rss() { grep "Maximum resident" "$1" | awk '{ printf "%.2f GB", $6 / 1048576 }'; }

for shape in $shapes; do
  declare -n args=$shape
  echo "== $shape ${args[*]}"
  file_dtype=f32
  configs=("f32 none" "f32 none ckpt" "bf16 none" "bf16 none ckpt" "bf16 nf4" "bf16 nf4 ckpt")
  if [ "$shape" = llama8b ]; then
    # f32 would need 32 GB; the 8B model is trained from a bf16 folder, as published.
    file_dtype=bf16
    configs=("bf16 nf4 ckpt")
  fi
  for c in "${configs[@]}"; do
    read -r dtype quant ckpt <<<"$c"
    extra=()
    [ -n "${ckpt:-}" ] && extra+=(--checkpointing)
    log=$(mktemp)
    n=$steps
    [ "$shape" = llama8b ] && n=1
    out=$(/usr/bin/time -v "$bin" "${args[@]}" --batch 1 --steps "$n" --warmup 1 --dtype "$dtype" --quantize "$quant" \
      --file-dtype "$file_dtype" --dir "$dir/$shape-$file_dtype" "${extra[@]}" 2>"$log") || { cat "$log"; exit 1; }
    echo "$out; peak RSS (time -v) $(rss "$log")"
    rm -f "$log"
  done
  if [ "$shape" != llama8b ] && "$py" -c "import torch, peft" 2>/dev/null; then
    log=$(mktemp)
    out=$(/usr/bin/time -v "$py" scripts/bench_train_peft.py "${args[@]}" --batch 1 --threads "$threads" \
      --steps "$steps" 2>"$log") || { cat "$log"; exit 1; }
    echo "$out; peak RSS (time -v) $(rss "$log")"
    rm -f "$log"
  fi
done
