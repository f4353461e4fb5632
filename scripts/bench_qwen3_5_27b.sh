#!/usr/bin/env bash
# QLoRA on a Qwen3.5-27B-shaped bitsandbytes 4-bit checkpoint on this machine (issue 36's moonshot):
# the memory plan of `lora train --dry-run` beside the measured peak RSS, and seconds per step.
#
#   scripts/bench_qwen3_5_27b.sh            # LAYERS=64 STEPS=2 SEQ=1024 R=16 THREADS=2
#
# The geometry is the 27B's (research/archs.md §1.2): hidden 5120, FFN 17408, 3 Gated DeltaNet + 1
# gated attention per 4 layers (16 QK / 48 V heads of 128; 24 / 4 attention heads of 256), vocab
# 248320, untied head. LAYERS=8 runs a slice of it (same widths and vocabulary) in minutes, to check
# the plan before the full run. Random weights are written straight into 4 bits by lora's writer
# (examples/random_model.rs: about 17 GB for 64 layers, never a bf16 folder) under DIR, default
# /var/tmp/lora-qwen3_5-27b-lLAYERS, kept for the next run; delete it when the figures are in.
# The run: r R on all linear layers, recomputation, batch 1 x SEQ tokens, bf16 embeddings and head,
# STEPS optimizer steps. It takes hours on 2 cores: run it with nohup, logging to a file.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-64} steps=${STEPS:-2} seq=${SEQ:-1024} r=${R:-16}
export RAYON_NUM_THREADS=${THREADS:-2}
dir=${DIR:-/var/tmp/lora-qwen3_5-27b-l$layers}
cargo build --release -q --workspace --features lora-core/wgpu --example random_model --bin lora
target=$(realpath "${CARGO_TARGET_DIR:-target}")/release
mkdir -p "$dir"

if [ ! -f "$dir/model/config.json" ]; then
  free_gb=$(df -BG --output=avail "$dir" | tail -1 | tr -dc 0-9)
  need=$((2 + layers * 26 / 100 + 5))
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
  "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": $layers, "vocab_size": 248320,
  "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256, "attention_bias": false,
  "linear_num_key_heads": 16, "linear_num_value_heads": 48, "linear_key_head_dim": 128,
  "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "layer_types": [$types],
  "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
  "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
    "mrope_section": [11, 11, 10], "mrope_interleaved": true},
  "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 3, "pad_token_id": 4
}
EOF
  # Any tokenizer whose ids are below the vocabulary will do: the fixture's (384 tokens).
  cp tests/fixtures/models/qwen3_5/tokenizer.json tests/fixtures/models/qwen3_5/tokenizer_config.json "$dir/"
  echo "== writing the random 4-bit model"
  "$target/examples/random_model" "$dir/config.json" "$dir/model" --dtype bf16 --four-bit --double-quant
fi
du -sh "$dir/model"

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
echo "== training: $layers layers, r $r, batch 1 x $seq, $steps steps, $RAYON_NUM_THREADS threads"
start=$(date +%s)
(cd "$dir" && /usr/bin/time -v "$target/lora" train recipe.toml 2>&1) | while IFS= read -r line; do
  echo "[+$(($(date +%s) - start)) s] $line"
done | tee "$dir/train.log" | grep -v "^\[+[0-9]* s\] \s*\(Page size\|Exit status\|Swaps\|File system\|Socket\|Signals\|Average\|Major\|Minor\|Voluntary\|Involuntary\|Percent\)"
grep "Maximum resident" "$dir/train.log" | awk '{ printf "peak RSS %.2f GB\n", $NF / 1048576 }'
