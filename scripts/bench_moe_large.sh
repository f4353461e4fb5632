#!/usr/bin/env bash
# QLoRA on the whole Qwen3-30B-A3B shape on this machine (issue 22's memory run): the memory plan of
# `lora train --dry-run` beside the measured peak RSS, and seconds per step.
#
#   scripts/bench_moe_large.sh     # LAYERS (default 48) STEPS=2 SEQ=1024 R=2 THREADS=2
#
# Qwen3-30B-A3B's geometry (research/archs.md §2.2): hidden 2048, 48 layers, 32 / 4 heads of 128, 128
# experts of 768 (top 8, renormalised), vocab 151936, untied head. Its random weights are written
# straight into a bitsandbytes 4-bit checkpoint (double quantization; experts per expert, as
# bitsandbytes stores an MoE whose experts are linear layers; routers dense) by lora's writer
# (examples/random_model.rs: about 16 GB, never a bf16 folder), and trained as it is: LoRA r R on
# attention and every expert (gate/up/down_proj: gate_up at 2R), recomputation, batch 1 x SEQ tokens,
# bf16 embeddings and head. LAYERS=4 runs a slice in minutes, to check the plan before a full run. The
# folder goes under DIR (default /var/tmp/lora-qwen3_moe-lLAYERS) and is kept for the next run; delete
# it when the figures are in. Run it with nohup, logging to a file.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-48} steps=${STEPS:-2} seq=${SEQ:-1024} r=${R:-2}
export RAYON_NUM_THREADS=${THREADS:-2}
dir=${DIR:-/var/tmp/lora-qwen3_moe-l$layers}
cargo build --release -q --workspace --features lora-core/wgpu --example random_model --bin lora
target=$(realpath "${CARGO_TARGET_DIR:-target}")/release
mkdir -p "$dir"
if [ ! -f "$dir/model/config.json" ]; then
  free_gb=$(df -BG --output=avail "$dir" | tail -1 | tr -dc 0-9)
  need=$((layers * 32 / 100 + 2))
  if [ "$free_gb" -lt $((need + 15)) ]; then
    echo "only ${free_gb} GB free under $dir; the model takes ~${need} GB and builds need 15 GB more" >&2
    exit 1
  fi
  cat >"$dir/config.json" <<JSON
{
  "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
  "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": $layers, "vocab_size": 151936,
  "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "attention_bias": false,
  "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
  "decoder_sparse_step": 1, "mlp_only_layers": [], "hidden_act": "silu", "rms_norm_eps": 1e-6,
  "max_position_embeddings": 40960, "rope_theta": 1000000.0, "tie_word_embeddings": false,
  "bos_token_id": 0, "eos_token_id": 3, "pad_token_id": 4
}
JSON
  cp tests/fixtures/models/qwen3_moe/tokenizer.json tests/fixtures/models/qwen3_moe/tokenizer_config.json "$dir/"
  echo "== writing the random 4-bit model"
  "$target/examples/random_model" "$dir/config.json" "$dir/model" --dtype bf16 --four-bit --double-quant
fi
du -sh "$dir/model"
awk -v n="$((steps + 1))" -v words="$((seq * 2))" 'BEGIN {
  split("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing", w, " ");
  srand(1);
  for (e = 0; e < n; e++) { s = ""; for (i = 0; i < words; i++) s = s w[int(rand() * 14) + 1] " "; printf "{\"text\": \"%s\"}\n", s }
}' >"$dir/train.jsonl"
cat >"$dir/recipe.toml" <<TOML
[model]
base = "model"
dtype = "bf16"

[lora]
r = $r
alpha = $((2 * r))
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

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
TOML
rm -rf "$dir/run"
(cd "$dir" && "$target/lora" train recipe.toml --dry-run | grep -E "memory plan|adapters on|trainable")
echo "== training: Qwen3-30B-A3B shape, $layers layers, r $r, batch 1 x $seq, $steps steps, $RAYON_NUM_THREADS threads"
start=$(date +%s)
(cd "$dir" && /usr/bin/time -v "$target/lora" train recipe.toml 2>&1) | while IFS= read -r line; do
  echo "[+$(($(date +%s) - start)) s] $line"
done | tee "$dir/train.log" | grep --line-buffered -v "^\[+[0-9]* s\] \s*\(Page size\|Exit status\|Swaps\|File system\|Socket\|Signals\|Average\|Major\|Minor\|Voluntary\|Involuntary\|Percent\)"
grep "Maximum resident" "$dir/train.log" | awk '{ printf "peak RSS %.2f GiB (%.2f GB)\n", $NF / 1048576, $NF * 1024 / 1e9 }'
