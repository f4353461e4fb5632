#!/usr/bin/env bash
# Data-parallel training on this machine: one process with 2 threads against `lora launch` of 2
# ranks with 1 thread each (the TCP engine over loopback), and `mpirun -np 2` when MPI=1 and the
# lora binary was built with the `mpi` feature (scripts/mpi_check.sh builds it), alternating, ROUNDS
# rounds (default 2).
#
#   scripts/bench_distributed.sh
#
# The model: the SmolLM-135M shape (hidden 576, 30 layers, 9/3 heads, intermediate 1536) with the
# test fixture's 384-token tokenizer, random f32 weights (examples/random_model.rs); LoRA r 8 on
# q_proj, v_proj; datasets/quickstart-chat.jsonl, 8 rows a step (batch 2 x grad_accum 4), STEPS
# steps (default 20). Reports tokens/s (the mean of the steps after the first), wall time, rank 0's
# mean time per step in the reductions (`comm_s` of metrics.jsonl: transfers and waiting for the
# other rank), peak RSS per process, and whether the adapters equal the single process's (exact
# needs the same thread count per rank, so the 2-thread run is compared only for speed; a 1-thread
# single run is the byte reference).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lora-ci-target}"
target="$CARGO_TARGET_DIR/release"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q --workspace --features lora-core/wgpu --example random_model --bin lora
steps="${STEPS:-20}"
rounds="${ROUNDS:-2}"
dir=$(mktemp -d /var/tmp/lora-bench-dist.XXXX)
trap 'rm -rf "$dir"' EXIT
fx=tests/fixtures/models/llama
mkdir -p "$dir/src"
python3 - "$fx/config.json" "$dir/src/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
         head_dim=64, intermediate_size=1536, attention_bias=False, mlp_bias=False)
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF
cp "$fx/tokenizer.json" "$fx/tokenizer_config.json" "$dir/src/"
"$target/examples/random_model" "$dir/src/config.json" "$dir/model" --dtype f32 >/dev/null
cat >"$dir/recipe.toml" <<EOF
[model]
base = "$dir/model"
[lora]
r = 8
alpha = 16
targets = ["q_proj", "v_proj"]
[data]
train = "$PWD/datasets/quickstart-chat.jsonl"
format = "chat"
max_seq_len = 128
[train]
max_steps = $steps
batch_size = 2
grad_accum = 4
lr = 1e-3
seed = 5
[output]
dir = "$dir/runs/unused"
EOF
lora="$target/lora"
# tokens/s: the mean over the steps after the first; comm: rank 0's mean comm_s.
summary() {
  python3 - "$1/metrics.jsonl" <<'EOF'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])][1:]
tps = sum(x["tokens_per_s"] for x in m) / len(m)
comm = [x["comm_s"] for x in m if "comm_s" in x]
print(f"{tps:.0f} tokens/s" + (f", comm {1e3 * sum(comm) / len(comm):.0f} ms/step" if comm else ""))
EOF
}
run() { # run NAME THREADS: one process
  local name=$1 threads=$2
  local out="$dir/runs/single" log="$dir/single.time"
  local t0 t1
  t0=$(date +%s.%N)
  RAYON_NUM_THREADS=$threads /usr/bin/time -v -o "$log" "$lora" train "$dir/recipe.toml" \
    --set "output.dir=\"$out\"" >/dev/null 2>"$dir/single.log" || { cat "$dir/single.log"; exit 1; }
  t1=$(date +%s.%N)
  rss=$(grep "Maximum resident" "$log" | awk '{ printf "%.2f GB", $6 / 1048576 }')
  printf '%-26s %s, %.1f s wall, peak RSS %s\n' "$name" "$(summary "$out")" "$(echo "$t1 - $t0" | bc)" "$rss"
}
RAYON_NUM_THREADS=1 "$lora" train "$dir/recipe.toml" --set "output.dir=\"$dir/runs/reference\"" >/dev/null 2>&1
for r in $(seq 1 "$rounds"); do
  echo "== round $r"
  rm -rf "$dir/runs/single" "$dir/runs/launch" "$dir/runs/mpirun"
  run "1 process x 2 threads" 2
  # /usr/bin/time on the launcher: its peak RSS is the largest child's.
  t0=$(date +%s.%N)
  RAYON_NUM_THREADS=1 /usr/bin/time -v -o "$dir/launch.time" "$lora" launch --nproc-per-node 2 -- train \
    "$dir/recipe.toml" --set "output.dir=\"$dir/runs/launch\"" >/dev/null 2>"$dir/launch.log" \
    || { cat "$dir/launch.log"; exit 1; }
  t1=$(date +%s.%N)
  rss=$(grep "Maximum resident" "$dir/launch.time" | awk '{ printf "%.2f GB", $6 / 1048576 }')
  printf '%-26s %s, %.1f s wall, largest rank RSS %s\n' "lora launch, 2 x 1 thread" \
    "$(summary "$dir/runs/launch")" "$(echo "$t1 - $t0" | bc)" "$rss"
  cmp -s "$dir/runs/reference/adapter_model.safetensors" "$dir/runs/launch/adapter_model.safetensors" \
    && echo "  lora launch: the 1-thread single process's adapter byte for byte" \
    || { echo "error: lora launch wrote another adapter"; exit 1; }
  if [ "${MPI:-0}" = 1 ]; then
    t0=$(date +%s.%N)
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RAYON_NUM_THREADS=1 mpirun --oversubscribe -np 2 \
      "$lora" train "$dir/recipe.toml" --set "output.dir=\"$dir/runs/mpirun\"" >/dev/null 2>"$dir/mpirun.log" \
      || { cat "$dir/mpirun.log"; exit 1; }
    t1=$(date +%s.%N)
    printf '%-26s %s, %.1f s wall\n' "mpirun -np 2 x 1 thread" "$(summary "$dir/runs/mpirun")" "$(echo "$t1 - $t0" | bc)"
  fi
done
