#!/usr/bin/env bash
# Prepares an offline build of the CUDA backend (cargo feature `cuda`).
#
# burn-cuda pulls cubecl-cuda -> cubecl-llvm, whose build dependency tracel-llvm-bundler downloads a
# prebuilt LLVM 23 into $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 unless that folder already holds
# its marker file `.tracel-llvm-installed`. Air-gapped machines cannot download it, so this script
# lays out that folder from Debian's LLVM instead (llvm-22-dev: llvm-config, headers, static
# libraries; a full build also needs libpolly-22-dev and libzstd-dev) and writes the marker; the
# bundler then only runs its llvm-config.
#
# The bundler turns llvm-config's `/usr/lib/.../libz3.so` into `-llibz3`; a `liblibz3.so` link in a
# folder named by LIBRARY_PATH lets the final link find it.
#
# Usage: eval "$(scripts/offline-llvm.sh [PREFIX_ROOT])"   # prints the exports
# then:  cargo build --release --features lora-cli/cuda
set -euo pipefail
root="${1:-${LORA_LLVM_ROOT:-$HOME/.cache/lora-llvm}}"
llvm="${LORA_SYSTEM_LLVM:-/usr/lib/llvm-22}"
if [ ! -x "$llvm/bin/llvm-config" ]; then
  echo "error: $llvm/bin/llvm-config not found; install Debian's llvm-22-dev (apt-get install llvm-22-dev)" >&2
  exit 2
fi
dest="$root/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$dest" "$root/linkfix"
for d in bin include lib; do ln -sfn "$llvm/$d" "$dest/$d"; done
touch "$dest/.tracel-llvm-installed"
z3=$("$llvm/bin/llvm-config" --link-static --system-libs | tr ' ' '\n' | grep '/libz3\.so$' || true)
if [ -n "$z3" ]; then ln -sfn "$z3" "$root/linkfix/liblibz3.so"; fi
echo "export XDG_DATA_HOME=$root"
echo "export LIBRARY_PATH=$root/linkfix\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
