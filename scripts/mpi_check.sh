#!/usr/bin/env bash
# Data-parallel training over MPI on this machine (issue 24), as CI runs it: Open MPI from the
# system, ranks over loopback, one thread each.
#
#   scripts/mpi_check.sh
#
# Builds lora with the `mpi` feature (on the test build's features, so that burn is not rebuilt),
# then on recipes/tiny.toml (2 micro-batches a step):
# - `mpirun -np 2` and `-np 3` (one rank without micro-batches) with grad_reduce = "exact" write the
#   single process's adapter byte for byte, and `lora verify` of a distributed run passes;
# - `-np 2` with grad_reduce = "fast" trains;
# - a rank killed mid-run ends the whole job with a non-zero status within seconds.
# Needs: libopenmpi-dev, openmpi-bin, libclang-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lora-ci-target}"
cargo build --release --workspace --features lora-core/wgpu,lora-cli/mpi
bin="$CARGO_TARGET_DIR/release/lora"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Containers run as root; one thread per rank (the adapter's bits are those of a thread count).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RAYON_NUM_THREADS=1
train() { "$bin" train recipes/tiny.toml --set "output.dir=\"$1\"" "${@:2}"; }

train "$tmp/single" > "$tmp/single.log" 2>&1
for np in 2 3; do
  mpirun --oversubscribe -np "$np" "$bin" train recipes/tiny.toml --set "output.dir=\"$tmp/np$np\"" \
    > "$tmp/np$np.log" 2>&1 || { cat "$tmp/np$np.log"; exit 1; }
  cmp "$tmp/single/adapter_model.safetensors" "$tmp/np$np/adapter_model.safetensors"
  echo "mpirun -np $np, exact: the single process's adapter byte for byte"
done
"$bin" verify "$tmp/np3" | tail -1
mpirun --oversubscribe -np 2 "$bin" train recipes/tiny.toml --set "output.dir=\"$tmp/fast\"" \
  --set 'train.grad_reduce="fast"' > "$tmp/fast.log" 2>&1 || { cat "$tmp/fast.log"; exit 1; }
test -f "$tmp/fast/adapter_model.safetensors"
echo "mpirun -np 2, fast: trained"

# A rank that dies: the job ends non-zero, soon.
mpirun --oversubscribe -np 2 "$bin" train recipes/tiny.toml --set "output.dir=\"$tmp/killed\"" \
  --set train.max_steps=100000 --set train.eval_every=0 > "$tmp/killed.log" 2>&1 &
job=$!
sleep 3
pkill -KILL -f "output.dir=\"$tmp/killed\"" -n || true
started=$(date +%s)
if wait "$job"; then echo "a killed rank left the job succeeding"; exit 1; fi
took=$(( $(date +%s) - started ))
[ "$took" -le 60 ] || { echo "the job took ${took} s to end after a rank died"; exit 1; }
echo "a killed rank ended the job non-zero in ${took} s"
