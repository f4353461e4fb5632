#!/usr/bin/env bash
# Merge benchmark: ~500M-parameter fp16 Llama-shaped random models (hidden 1536, 16 layers, 12/4 heads,
# intermediate 4096, vocab 32000; ~1.0 GB each). Times lora's linear, task_arithmetic and TIES
# (density 0.5) merges of two fine-tunes and a rank-16 adapter fold; prints wall time, input GB/s,
# the time to read the inputs from the page cache, and peak RSS; runs mergekit side by side when
# `mergekit-yaml` is installed and prints the ratios.
#
# Usage: scripts/bench_merge.sh [WORKDIR]   (default /work/bench-merge; ~10 GB free needed; deleted after)
# Needs: python with torch and safetensors to create the inputs (PYTHON=..., default python3).
# Run it on an idle machine: timings on a busy one mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/work/bench-merge}"
PYTHON="${PYTHON:-python3}"
MERGEKIT="${MERGEKIT:-$(command -v mergekit-yaml || true)}"
mkdir -p "$WORK"
# KEEP=1 keeps the inputs for another run (and reuses them when present).
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

# The engine's example front end: the same code as `lora merge`, without building burn.
cargo build --release -q -p lora-merge --example merge
ENGINE="${CARGO_TARGET_DIR:-target}/release/examples/merge"

if [ ! -f "$WORK/fold.yml" ]; then
  echo "creating inputs in $WORK ..."
  "$PYTHON" scripts/bench_merge.py "$WORK"
fi

# Seconds to read FILES from the page cache (second pass; the first one warms the cache).
read_time() {
  cat "$@" > /dev/null
  local t0 t1
  t0=$(date +%s.%N); cat "$@" > /dev/null; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

# Runs a command under /usr/bin/time; prints "wall_s peak_rss_mb".
measure() {
  local log="$WORK/time.log"
  /usr/bin/time -v -o "$log" "$@" > "$WORK/cmd.log" 2>&1 || { cat "$WORK/cmd.log"; return 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2/1024}' "$log")
  echo "$wall $rss"
}

printf '%-16s %8s %8s %8s %9s %8s | %10s %9s %8s\n' method "in GB" "read s" "lora s" "GB/s" "RSS MB" "mergekit s" "RSS MB" "ratio"
run_case() {
  local name="$1"; shift
  local inputs=("$@")
  local gb rt ours ours_s ours_rss mk mk_s="-" mk_rss="-" ratio="-"
  gb=$(du -cb "${inputs[@]}" | tail -1 | awk '{print $1/1e9}')
  rt=$(read_time "${inputs[@]}")
  if [ "$name" = fold ]; then
    ours=$(measure "$ENGINE" fold "$WORK/base" "$WORK/adapter" "$WORK/out-lora")
  else
    ours=$(measure "$ENGINE" config "$WORK/$name.toml" "$WORK/out-lora")
  fi
  read -r ours_s ours_rss <<< "$ours"
  rm -rf "$WORK/out-lora"
  if [ -n "$MERGEKIT" ]; then
    local extra=()
    [ "$name" = fold ] && extra=(--lora-merge-cache "$WORK/lora-cache")
    if mk=$(measure "$MERGEKIT" "$WORK/$name.yml" "$WORK/out-mk" --no-copy-tokenizer "${extra[@]}"); then
      read -r mk_s mk_rss <<< "$mk"
      ratio=$(echo "$mk_s / $ours_s" | bc -l | xargs printf '%.1fx')
      mk_rss=$(printf '%.0f' "$mk_rss")
    fi
    rm -rf "$WORK/out-mk" "$WORK/lora-cache"
  fi
  printf '%-16s %8.2f %8.2f %8.2f %9.2f %8.0f | %10s %9s %8s\n' "$name" "$gb" "$rt" "$ours_s" \
    "$(echo "$gb / $ours_s" | bc -l)" "$ours_rss" "$mk_s" "$mk_rss" "$ratio"
}

M="model.safetensors"
run_case linear "$WORK/ft1/$M" "$WORK/ft2/$M"
run_case task_arithmetic "$WORK/base/$M" "$WORK/ft1/$M" "$WORK/ft2/$M"
run_case ties "$WORK/base/$M" "$WORK/ft1/$M" "$WORK/ft2/$M"
run_case fold "$WORK/base/$M" "$WORK/adapter/adapter_model.safetensors"
