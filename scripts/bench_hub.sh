#!/usr/bin/env bash
# Hub transfers against the loopback fake Hub (a process of its own, so that its in-memory storage
# is not counted): `lora publish` of a folder with one SIZE_MB safetensors file (default 100), then
# `lora download` of it into an empty cache. Time and peak RSS of each command, ROUNDS times
# (default 2). Issue 26 measures the Hub client before and after moving onto hf-hub with it.
# STORAGE=xet makes the fake speak Xet (uploads and downloads through a local Xet CAS server);
# the default is Git LFS behind a storage redirect. lora bounds Xet's buffers (crates/hub's
# xet_memory.rs); XET_BUFFERS=hf-xet sets hf-xet's own defaults for this machine's memory instead
# (download buffer usable/16 + usable/64 per file up to usable/4, 64 xorb uploads at once).
#
# LORA=path/to/lora times another build of the client (e.g. one from before a change) against the
# same fake.
#
#   scripts/bench_hub.sh
#   STORAGE=xet SIZE_MB=400 scripts/bench_hub.sh
#   STORAGE=xet SIZE_MB=400 XET_BUFFERS=hf-xet scripts/bench_hub.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lora-ci-target}"
target="$CARGO_TARGET_DIR/release"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q --workspace --features lora-core/wgpu --example fake_hub_server --bin lora
size_mb="${SIZE_MB:-100}"
rounds="${ROUNDS:-2}"
token=hf_BenchTokenNeverPrinted0123456789
dir=$(mktemp -d /var/tmp/lora-bench-hub.XXXX)
exec 3> >("$target/examples/fake_hub_server" "$token" "${STORAGE:-lfs}" >"$dir/url")
server=$!
trap 'exec 3>&-; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do [ -s "$dir/url" ] && break; sleep 0.1; done
url=$(head -n 1 "$dir/url")
# The folder: a trained tiny adapter's files with a SIZE_MB safetensors file of one f32 tensor.
RAYON_NUM_THREADS=1 "$target/lora" train recipes/tiny.toml --set "output.dir=\"$dir/run\"" >/dev/null 2>&1
python3 - "$dir/run/adapter_model.safetensors" "$size_mb" <<'PY'
import json, os, struct, sys
path, mb = sys.argv[1], int(sys.argv[2])
n = mb * (1 << 20) // 4
header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                     {"dtype": "F32", "shape": [n // 1024, 1024], "data_offsets": [0, n // 1024 * 1024 * 4]}}).encode()
header += b" " * (-len(header) % 8)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
    for _ in range(mb):
        f.write(os.urandom(1 << 20))
PY
if [ "${XET_BUFFERS:-lora}" = hf-xet ]; then
  mem_kb=$(awk '/MemTotal/ { print $2 }' /proc/meminfo)
  export HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_SIZE="$((mem_kb / 16))kib"
  export HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_PERFILE_SIZE="$((mem_kb / 64))kib"
  export HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_LIMIT="$((mem_kb / 4))kib"
  export HF_XET_CLIENT_AC_MAX_UPLOAD_CONCURRENCY=64
fi
hub() { # hub HF_HOME LOG lora args...: one command against the fake, timed
  local home=$1 log=$2; shift 2
  HF_ENDPOINT="$url" HF_HOME="$home" HF_XET_CACHE="$home/xet" HF_TOKEN="$token" /usr/bin/time -v -o "$log" "${LORA:-$target/lora}" "$@" >/dev/null 2>"$log.err" || { cat "$log.err"; exit 1; }
}
report() { # report NAME LOG
  awk -v n="$1" -F': ' '/Elapsed \(wall clock\)/ { t = $2 } /Maximum resident/ { r = $2 }
    END { printf "%-10s %s wall, peak RSS %.1f MB\n", n, t, r / 1024 }' "$2"
}
echo "$size_mb MB folder, fake Hub (${STORAGE:-lfs}, ${XET_BUFFERS:-lora} Xet buffers) at $url, ${LORA:-$target/lora}"
for r in $(seq 1 "$rounds"); do
  # New random data each round: the fake (as the Hub) skips objects it already has, and Xet skips
  # every chunk it has seen (its shard cache under HF_XET_CACHE stays between rounds).
  dd if=/dev/urandom of="$dir/run/adapter_model.safetensors" bs=1M seek=1 count=$((size_mb - 1)) conv=notrunc status=none
  hub "$dir/home-up" "$dir/up.time" publish "$dir/run" --repo "me/bench-$r" --base-model tiny-org/tiny-llama
  report "publish" "$dir/up.time"
  rm -rf "$dir/home-down"
  hub "$dir/home-down" "$dir/down.time" download "me/bench-$r"
  report "download" "$dir/down.time"
  cmp "$dir/run/adapter_model.safetensors" \
    "$(ls -d "$dir"/home-down/hub/models--me--bench-"$r"/snapshots/*)/adapter_model.safetensors"
done
