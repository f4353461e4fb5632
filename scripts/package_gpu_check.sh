#!/usr/bin/env bash
# Builds, here, the binaries scripts/gpu_check.sh runs on a GPU machine that has no network and no
# Rust toolchain, and packs them into gpu-check/bundle.tar.xz (ignored by git). The device tool
# carries ignored files only when named, at most 64 MiB: `carry: ["gpu-check"]`.
#
#   scripts/package_gpu_check.sh [cuda|wgpu|none]     # the backend feature (default cuda)
#
# The bundle: `lora`, the test binaries of lora-core and lora-train (their `gpu_` tests run the
# golden checks on the device named by LORA_TEST_GPU), the training benchmark and the attention
# benchmark, stripped.
# For `cuda` the offline LLVM of scripts/offline-llvm.sh is used (apt-get install llvm-22-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
feature="${1:-cuda}"
target="${CARGO_TARGET_DIR:-target}"
features=()
case "$feature" in
  cuda)
    if ! ls /usr/lib/llvm-22/lib/libPolly.a >/dev/null 2>&1; then
      echo "error: the cuda link needs Debian's libpolly-22-dev and libzstd-dev besides llvm-22-dev" >&2
      exit 2
    fi
    eval "$(scripts/offline-llvm.sh "$target/offline-llvm")"
    features=(--features lora-core/cuda)
    ;;
  wgpu) features=(--features lora-core/wgpu) ;;
  none) ;;
  *) echo "error: unknown backend feature '$feature' (cuda, wgpu or none)" >&2; exit 2 ;;
esac
# One cargo invocation, so that the binaries share one build of burn with one feature set.
json=$(cargo test --release -p lora-core -p lora-train -p lora-cli "${features[@]}" --no-run \
  --message-format=json-render-diagnostics)
exe() { # the executable of target `$2` of kind `$3` whose source lies under `$1`
  jq -r --arg d "/$1/" --arg n "$2" --arg k "$3" \
    'select(.reason == "compiler-artifact" and .executable != null and .target.name == $n
      and (.target.kind | index($k)) and (.target.src_path | contains($d))
      and (.profile.test == ($k == "test"))) | .executable' <<<"$json" | tail -n 1
}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$(exe crates/cli lora bin)" "$stage/lora"
cp "$(exe crates/core it test)" "$stage/core-it"
cp "$(exe crates/train it test)" "$stage/train-it"
cp "$(exe crates/train bench_train example)" "$stage/bench_train"
cp "$(exe crates/core bench_attention example)" "$stage/bench_attention"
strip "$stage"/*
echo "$feature $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)" >"$stage/BUILD"
mkdir -p gpu-check
# The binaries share ~90 MB of statically linked LLVM (cubecl-cuda compiles kernels to PTX with it): a
# dictionary larger than one binary lets xz store it once (measured: 41 MB instead of 91 MB at -6).
tar -C "$stage" -cf - . | xz -T1 --lzma2=preset=9,dict=512MiB >gpu-check/bundle.tar.xz.tmp
mv gpu-check/bundle.tar.xz.tmp gpu-check/bundle.tar.xz
ls -l "$stage"
echo "gpu-check/bundle.tar.xz: $(du -h gpu-check/bundle.tar.xz | cut -f1) ($feature)"
