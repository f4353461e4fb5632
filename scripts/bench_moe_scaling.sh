#!/usr/bin/env bash
# How lora's MoE training step scales with the number of experts at a fixed number of active ones
# (issue 22): random Qwen3-MoE models of Qwen3-30B-A3B's width (hidden 2048, experts of 768, top 8,
# 32 / 4 heads of 128) in LAYERS layers (default 2), with EXPERTS experts each (default "16 32 64 128"),
# f32, LoRA r 8 on attention and every expert, batch 1 x SEQ (default 512) tokens, THREADS threads. The
# work per token is the same whatever the number of experts; the step time should stay flat. Models
# are written by lora's writer under DIR (default /var/tmp/lora-moe-scaling) and removed after each run.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-2} seq=${SEQ:-512}
export RAYON_NUM_THREADS=${THREADS:-2}
root=${DIR:-/var/tmp/lora-moe-scaling}
cargo build --release -q --workspace --features lora-core/wgpu --example random_model --example bench_train
target=$(realpath "${CARGO_TARGET_DIR:-target}")/release
mkdir -p "$root"
for experts in ${EXPERTS:-16 32 64 128}; do
  dir="$root/e$experts"
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/config.json" <<JSON
{
  "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
  "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": $layers, "vocab_size": 32000,
  "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "moe_intermediate_size": 768,
  "num_experts": $experts, "num_experts_per_tok": 8, "norm_topk_prob": true, "rms_norm_eps": 1e-6,
  "rope_theta": 1000000.0, "tie_word_embeddings": false
}
JSON
  "$target/examples/random_model" "$dir/config.json" "$dir/model" --dtype f32 >/dev/null
  out=$( { /usr/bin/time -v "$target/examples/bench_train" --dir "$dir/model" \
    --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --batch 1 --seq "$seq" --steps 3 --warmup 1 \
    --r 8; } 2>&1 )
  echo "experts $experts: $(echo "$out" | grep -o '[0-9.]* s/step, [0-9.]* tokens/s') [max RSS $(echo "$out" |
    grep "Maximum resident" | awk '{ printf "%.0f MB", $6 / 1024 }')]"
  rm -rf "$dir"
done
