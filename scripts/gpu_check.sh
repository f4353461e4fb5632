#!/usr/bin/env bash
# The GPU check, in one go, on a machine with one GPU, no network and no Rust toolchain. It needs
# only the working tree and gpu-check/bundle.tar.xz from scripts/package_gpu_check.sh (built on
# another machine; the device tool carries it with `carry: ["gpu-check"]`).
#
#   scripts/gpu_check.sh [DEVICE] [SHAPES]
#     DEVICE  cuda (default), wgpu, or cpu: the same run on the CPU, to prove the script and the bundle
#     SHAPES  default "llama1b llama8b" (seq 2048); "tiny" runs a small shape in seconds
#   env: PEAK_TFLOPS (default 989, an H200's dense bf16 peak), STEPS (default 3), GPU_CHECK_DIR
#
# It runs, and stops at the first failure:
#  1. the parity fixtures on DEVICE: every architecture's logits, hidden states, greedy generation
#     and eval loss against transformers; the nf4 base against bitsandbytes; bf16 storage;
#  2. a training replay on DEVICE: 20 AdamW steps against PEFT + PyTorch's losses and adapter,
#     and `lora generate` on DEVICE against the CPU, token for token;
#  3. the training benchmark (LoRA r8 on q/v, batch 1, bf16 and nf4 bases, recomputation on), one
#     table: tokens/s, model TFLOP/s, MFU against PEAK_TFLOPS, peak GPU memory (nvidia-smi's
#     highest `memory.used` of the run, polled every 0.2 s; burn's memory pool included) and peak RSS;
#  4. one Llama-3.1-8B-shaped attention layer (seq 2048, 32/8 heads), forward and backward: burn's
#     own attention against lora's tiled one (f32, and bf16 products), time and peak memory;
#  5. on cuda, data-parallel training over NCCL (recipes/tiny.toml): `lora launch` of one rank with
#     the NCCL engine against the plain run on the same GPU, and of 2 ranks (exact and fast) when the
#     machine has 2 GPUs or more; libnccl.so.2 missing is a skip, said so.
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
shapes="${2:-llama1b llama8b}"
peak="${PEAK_TFLOPS:-989}"
steps="${STEPS:-3}"
work="${GPU_CHECK_DIR:-/tmp/lora-gpu-check}"
bundle=gpu-check/bundle.tar.xz
[ -f "$bundle" ] || { echo "error: $bundle not found: run scripts/package_gpu_check.sh first" >&2; exit 2; }
mkdir -p "$work/bin" "$work/models"
xz -dc "$bundle" | tar -C "$work/bin" -xf -
echo "bundle: $(cat "$work/bin/BUILD"); device: $device"
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
export LORA_REPO="$PWD" LORA_TEST_GPU="$device"

echo "== 1-2. golden checks on $device"
"$work/bin/core-it" gpu_ --test-threads 1
"$work/bin/train-it" gpu_ --test-threads 1
for arch in llama qwen3; do
  m=tests/fixtures/models/$arch
  a=$("$work/bin/lora" generate --model "$m" --prompt "The quick brown fox" --max-new-tokens 12 --device cpu)
  b=$("$work/bin/lora" generate --model "$m" --prompt "The quick brown fox" --max-new-tokens 12 --device "$device")
  [ "$a" = "$b" ] || { echo "error: lora generate on $device differs from the CPU for $arch: '$b' vs '$a'" >&2; exit 1; }
  echo "lora generate $arch: $device equals cpu token for token"
done

echo "== 3. training benchmark on $device"
tiny=(--hidden 256 --layers 4 --heads 4 --kv-heads 4 --inter 688 --vocab 1000 --seq 256)
llama1b=(--hidden 2048 --layers 16 --heads 32 --kv-heads 8 --inter 8192 --vocab 128256 --seq 2048)
llama8b=(--hidden 4096 --layers 32 --heads 32 --kv-heads 8 --inter 14336 --vocab 128256 --seq 2048 --untied)
gpu_mem() { # polls nvidia-smi into $1 until killed
  while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$1" 2>/dev/null || true; sleep 0.2; done
}
table=$(mktemp)
printf '| shape | base | tokens/s | model TFLOP/s | MFU | peak GPU memory | peak RSS |\n|---|---|---|---|---|---|---|\n' >"$table"
for shape in $shapes; do
  declare -n args=$shape
  for quant in none nf4; do
    log=$(mktemp) mem=$(mktemp)
    poller=
    if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then gpu_mem "$mem" & poller=$!; fi
    out=$(/usr/bin/time -v "$work/bin/bench_train" "${args[@]}" --batch 1 --steps "$steps" --warmup 1 \
      --backend "$device" --dtype bf16 --quantize "$quant" --file-dtype bf16 --checkpointing \
      --peak-tflops "$peak" --dir "$work/models/$shape" 2>"$log") || { cat "$log" >&2; exit 1; }
    [ -n "$poller" ] && kill "$poller" 2>/dev/null && wait "$poller" 2>/dev/null || true
    echo "$out"
    tps=$(grep -o '[0-9.]* tokens/s' <<<"$out" | cut -d' ' -f1)
    tf=$(grep -o '[0-9.]* model TFLOP/s' <<<"$out" | cut -d' ' -f1)
    mfu=$(grep -o 'MFU [0-9.]*%' <<<"$out" | cut -d' ' -f2)
    gmem=$(sort -n "$mem" | tail -n 1)
    rss=$(grep "Maximum resident" "$log" | awk '{ printf "%.2f GB", $6 / 1048576 }')
    base=bf16; [ "$quant" = nf4 ] && base="nf4 (bf16 file)"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$shape" "$base" "$tps" "$tf" "$mfu" \
      "${gmem:+$(awk -v m="$gmem" 'BEGIN { printf "%.1f GiB", m / 1024 }')}" "$rss" >>"$table"
    rm -f "$log" "$mem"
  done
done

echo "== 4. one attention layer's forward and backward on $device (Llama-3.1-8B shape, seq 2048)"
attn=$(mktemp)
printf '| attention | time | peak GPU memory | peak RSS |\n|---|---|---|---|\n' >"$attn"
for which in "burn" "tiled" "tiled bf16"; do
  read -r impl compute <<<"$which"
  [ "$device" = wgpu ] && [ -n "$compute" ] && continue # WGSL has no bf16
  log=$(mktemp) mem=$(mktemp)
  poller=
  if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then gpu_mem "$mem" & poller=$!; fi
  out=$(/usr/bin/time -v "$work/bin/bench_attention" "$impl" 2048 32 8 128 "$device" $compute 2>"$log") \
    || { cat "$log" >&2; exit 1; }
  [ -n "$poller" ] && kill "$poller" 2>/dev/null && wait "$poller" 2>/dev/null || true
  echo "$out"
  secs=$(grep -o '[0-9.]* s,' <<<"$out" | cut -d' ' -f1)
  gmem=$(sort -n "$mem" | tail -n 1)
  rss=$(grep "Maximum resident" "$log" | awk '{ printf "%.2f GB", $6 / 1048576 }')
  printf '| %s | %s s | %s | %s |\n' "$which" "$secs" \
    "${gmem:+$(awk -v m="$gmem" 'BEGIN { printf "%.1f GiB", m / 1024 }')}" "$rss" >>"$attn"
  rm -f "$log" "$mem"
done

nccl_check() {
  local lora="$work/bin/lora" runs="$work/nccl"
  rm -rf "$runs"
  tiny() { # tiny OUT [lora launch args --] [--set ...]: recipes/tiny.toml on the GPU into OUT
    local out=$1; shift
    "$lora" "$@" train recipes/tiny.toml --set "output.dir=\"$out\"" --set 'train.device="cuda"' \
      "${sets[@]}" >"$out.log" 2>&1
  }
  local sets=()
  tiny "$runs/single" || { cat "$runs/single.log" >&2; return 1; }
  tiny "$runs/single-again" || { cat "$runs/single-again.log" >&2; return 1; }
  local same=yes
  cmp -s "$runs/single/adapter_model.safetensors" "$runs/single-again/adapter_model.safetensors" || same=no
  echo "two plain runs on the GPU: identical adapters: $same"
  sets=(--set 'train.distributed="nccl"')
  if ! tiny "$runs/nccl1" launch --nproc-per-node 1 --; then
    if grep -q "libnccl.so.2" "$runs/nccl1.log"; then
      echo "skip: libnccl.so.2 is not loadable here; the NCCL engine was not run"
      return 0
    fi
    cat "$runs/nccl1.log" >&2; return 1
  fi
  if cmp -s "$runs/single/adapter_model.safetensors" "$runs/nccl1/adapter_model.safetensors"; then
    echo "NCCL, 1 rank: the plain run's adapter byte for byte"
  elif [ "$same" = yes ]; then
    echo "error: the 1-rank NCCL run's adapter differs from the plain run's" >&2; return 1
  else
    echo "NCCL, 1 rank: trained (the GPU's runs are not bit-reproducible, so no byte comparison)"
  fi
  local gpus
  gpus=$(nvidia-smi -L | wc -l)
  if [ "$gpus" -lt 2 ]; then echo "skip: 1 GPU, no 2-rank NCCL run"; return 0; fi
  tiny "$runs/nccl2" launch --nproc-per-node 2 -- || { cat "$runs/nccl2.log" >&2; return 1; }
  if cmp -s "$runs/single/adapter_model.safetensors" "$runs/nccl2/adapter_model.safetensors"; then
    echo "NCCL, 2 ranks on 2 GPUs, exact: the plain run's adapter byte for byte"
  else
    echo "NCCL, 2 ranks on 2 GPUs, exact: the adapter differs from the plain run's on GPU 0 (same=$same)"
  fi
  sets=(--set 'train.distributed="nccl"' --set 'train.grad_reduce="fast"')
  tiny "$runs/nccl2-fast" launch --nproc-per-node 2 -- || { cat "$runs/nccl2-fast.log" >&2; return 1; }
  echo "NCCL, 2 ranks, fast: trained"
}
if [ "$device" = cuda ]; then
  echo "== 5. data-parallel training over NCCL"
  nccl_check
fi

echo
echo "LoRA r8 on q_proj, v_proj, batch 1, recomputation on, $steps timed steps after 1 warm-up, device $device"
cat "$table"
echo
echo "Attention: burn's own (attention_fallback under autodiff) against lora's tiled attention"
cat "$attn"
rm -f "$table" "$attn"
