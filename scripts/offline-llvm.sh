#!/usr/bin/env bash
# Prepares an offline build of the CUDA backend (cargo feature `cuda`).
#
# burn-cuda pulls cubecl-cuda -> cubecl-llvm, whose build dependency tracel-llvm-bundler downloads a
# prebuilt LLVM 23 into $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 unless that folder already holds
# its marker file `.tracel-llvm-installed`. Air-gapped machines cannot download it, so this script
# lays out that folder from Debian's LLVM instead (package llvm-22-dev: llvm-config, headers, static
# libraries) and writes the marker; the bundler then only runs its llvm-config.
#
# Usage: eval "$(scripts/offline-llvm.sh [PREFIX_ROOT])"   # prints `export XDG_DATA_HOME=...`
# then:  cargo build --release --features cuda
set -euo pipefail
root="${1:-${LORA_LLVM_ROOT:-$HOME/.cache/lora-llvm}}"
llvm="${LORA_SYSTEM_LLVM:-/usr/lib/llvm-22}"
if [ ! -x "$llvm/bin/llvm-config" ]; then
  echo "error: $llvm/bin/llvm-config not found; install Debian's llvm-22-dev (apt-get install llvm-22-dev)" >&2
  exit 2
fi
dest="$root/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$dest"
for d in bin include lib; do ln -sfn "$llvm/$d" "$dest/$d"; done
touch "$dest/.tracel-llvm-installed"
echo "export XDG_DATA_HOME=$root"
