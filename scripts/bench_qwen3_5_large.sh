#!/usr/bin/env bash
# QLoRA on large Qwen3.5 shapes on this machine (issue 36's runs): the memory plan of
# `lora train --dry-run` beside the measured peak RSS, and seconds per step.
#
#   scripts/bench_qwen3_5_large.sh           # SIZE=27b (or 9b) LAYERS STEPS=2 SEQ=1024 R=16 THREADS=2
#   SIZE=9b QUANTIZE=1 scripts/bench_qwen3_5_large.sh   # instead: peak RSS of `lora quantize` on the bf16 folder
#
# SIZE=27b: the 27B's geometry (research/archs.md §1.2): hidden 5120, FFN 17408, 64 layers, 3 Gated
# DeltaNet + 1 gated attention per 4 (16 QK / 48 V heads of 128; 24 / 4 attention heads of 256), vocab
# 248320, untied head. Its random weights are written straight into a bitsandbytes 4-bit checkpoint
# (double quantization) by lora's writer (examples/random_model.rs: about 17 GB, never a bf16 folder),
# and trained as it is.
# SIZE=9b: Qwen3_5TextConfig's defaults (hidden 4096, FFN 12288, 32 layers, 16 / 4 heads, 32 V heads),
# written as a bf16 folder (about 18 GB) and quantized to NF4 while loading (quantize = "nf4").
# LAYERS=8 runs a slice (same widths and vocabulary) in minutes, to check the plan before a full run.
# The folder goes under DIR (default /var/tmp/lora-qwen3_5-SIZE-lLAYERS) and is kept for the next run;
# delete it when the figures are in. The run: r R on all linear layers, recomputation, batch 1 x SEQ
# tokens, bf16 embeddings and head, STEPS optimizer steps. The 27B takes about half an hour on 2
# cores: run it with nohup, logging to a file.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${SIZE:-27b}
case "$size" in
  27b) hidden=5120 inter=17408 all_layers=64 heads=24 v_heads=48 four_bit=1 ;;
  9b) hidden=4096 inter=12288 all_layers=32 heads=16 v_heads=32 four_bit=0 ;;
  *) echo "SIZE is 27b or 9b" >&2; exit 2 ;;
esac
layers=${LAYERS:-$all_layers} steps=${STEPS:-2} seq=${SEQ:-1024} r=${R:-16}
export RAYON_NUM_THREADS=${THREADS:-2}
dir=${DIR:-/var/tmp/lora-qwen3_5-$size-l$layers}
cargo build --release -q --workspace --features lora-core/wgpu --example random_model --bin lora
target=$(realpath "${CARGO_TARGET_DIR:-target}")/release
mkdir -p "$dir"

if [ ! -f "$dir/model/config.json" ]; then
  free_gb=$(df -BG --output=avail "$dir" | tail -1 | tr -dc 0-9)
  # GB on disk: 4-bit layers and bf16 embeddings + head, or all in bf16.
  if [ "$four_bit" = 1 ]; then need=$((layers * 20 / 100 + 6)); else need=$((layers * 45 / 100 + 5)); fi
  if [ "$free_gb" -lt $((need + 20)) ]; then
    echo "only ${free_gb} GB free under $dir; the model takes ~${need} GB and builds need 20 GB more" >&2
    exit 1
  fi
  types=$(for ((i = 1; i <= layers; i++)); do
    if ((i % 4 == 0)); then printf '"full_attention"'; else printf '"linear_attention"'; fi
    if ((i < layers)); then printf ', '; fi
  done)
  cat >"$dir/config.json" <<EOF
{
  "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
  "hidden_size": $hidden, "intermediate_size": $inter, "num_hidden_layers": $layers, "vocab_size": 248320,
  "num_attention_heads": $heads, "num_key_value_heads": 4, "head_dim": 256, "attention_bias": false,
  "linear_num_key_heads": 16, "linear_num_value_heads": $v_heads, "linear_key_head_dim": 128,
  "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "layer_types": [$types],
  "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
  "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
    "mrope_section": [11, 11, 10], "mrope_interleaved": true},
  "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 3, "pad_token_id": 4
}
EOF
  # Any tokenizer whose ids are below the vocabulary will do: the fixture's (384 tokens).
  cp tests/fixtures/models/qwen3_5/tokenizer.json tests/fixtures/models/qwen3_5/tokenizer_config.json "$dir/"
  if [ "$four_bit" = 1 ]; then
    echo "== writing the random 4-bit model"
    "$target/examples/random_model" "$dir/config.json" "$dir/model" --dtype bf16 --four-bit --double-quant
  else
    echo "== writing the random bf16 model"
    "$target/examples/random_model" "$dir/config.json" "$dir/model" --dtype bf16
  fi
fi
du -sh "$dir/model"

if [ "${QUANTIZE:-0}" = 1 ]; then
  # `lora quantize` of the bf16 folder into a 4-bit checkpoint (written beside it, then removed): its
  # peak RSS and time, which must stay far below the model's size.
  [ "$four_bit" = 0 ] || { echo "QUANTIZE=1 needs a bf16 folder (SIZE=9b)" >&2; exit 2; }
  rm -rf "$dir/nf4"
  echo "== lora quantize: $size shape, $layers layers, double quantization"
  /usr/bin/time -v "$target/lora" quantize "$dir/model" -o "$dir/nf4" --double-quant 2>&1 | tee "$dir/quantize.log" |
    grep -E "Elapsed|Maximum resident|written"
  du -sh "$dir/nf4"
  grep "Maximum resident" "$dir/quantize.log" | awk '{ printf "peak RSS %.2f GiB (%.2f GB)\n", $NF / 1048576, $NF * 1024 / 1e9 }'
  rm -rf "$dir/nf4"
  exit 0
fi

# Text long enough for SEQ tokens per example.
awk -v n="$((steps + 1))" -v words="$((seq * 2))" 'BEGIN {
  split("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing", w, " ");
  srand(1);
  for (e = 0; e < n; e++) { s = ""; for (i = 0; i < words; i++) s = s w[int(rand() * 14) + 1] " "; printf "{\"text\": \"%s\"}\n", s }
}' >"$dir/train.jsonl"
cat >"$dir/recipe.toml" <<EOF
[model]
base = "model"
dtype = "bf16"
$(if [ "$four_bit" = 0 ]; then printf 'quantize = "nf4"\ndouble_quant = true\n'; fi)

[lora]
r = $r
alpha = $((2 * r))
targets = "all-linear"

[data]
train = "train.jsonl"
format = "text"
max_seq_len = $seq

[train]
max_steps = $steps
batch_size = 1
lr = 1e-4
gradient_checkpointing = true

[output]
dir = "run"
EOF
rm -rf "$dir/run"
(cd "$dir" && "$target/lora" train recipe.toml --dry-run | grep "memory plan")
echo "== training: $size shape, $layers layers, r $r, batch 1 x $seq, $steps steps, $RAYON_NUM_THREADS threads"
start=$(date +%s)
(cd "$dir" && /usr/bin/time -v "$target/lora" train recipe.toml 2>&1) | while IFS= read -r line; do
  echo "[+$(($(date +%s) - start)) s] $line"
done | tee "$dir/train.log" | grep --line-buffered -v "^\[+[0-9]* s\] \s*\(Page size\|Exit status\|Swaps\|File system\|Socket\|Signals\|Average\|Major\|Minor\|Voluntary\|Involuntary\|Percent\)"
grep "Maximum resident" "$dir/train.log" | awk '{ printf "peak RSS %.2f GiB (%.2f GB)\n", $NF / 1048576, $NF * 1024 / 1e9 }'
