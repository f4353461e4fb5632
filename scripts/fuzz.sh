#!/usr/bin/env bash
# Fuzzes lora's input readers with libFuzzer (cargo-fuzz, nightly) and prints one table.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]     default: 600 s each, every target
#
# Targets (fuzz/fuzz_targets, each one function of crates/fuzzing): safetensors, gguf, model_config,
# adapter_config, recipe, merge_config, dataset_line, chat_template. JOBS targets run at once
# (default 2, one per core here). Needs `cargo install cargo-fuzz` and the nightly toolchain;
# SANITIZER=address (default none: the readers are safe code, and uninstrumented runs go ~3x faster).
# New inputs go to fuzz/corpus/TARGET (ignored by git, except the seed-* files); a crash is left in
# fuzz/artifacts/TARGET and makes the script exit 1: copy it to fuzz/regressions/TARGET, where the
# CLI's test binary replays it, and fix the reader.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors gguf model_config adapter_config recipe merge_config dataset_line chat_template)
jobs=${JOBS:-2}
sanitizer=${SANITIZER:-none}
cargo +nightly fuzz build -s "$sanitizer"
logs=$(mktemp -d)
run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  # -rss_limit_mb: a reader that allocates what a header claims shows as a crash; -timeout: a hang does.
  cargo +nightly fuzz run -s "$sanitizer" "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=65536 \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -close_fd_mask=3 >"$logs/$t.log" 2>&1 || true
}
running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait
status=0
printf '| target | seconds | executions | exec/s | corpus | crashes |\n|---|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
  log="$logs/$t.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
  [ "$crashes" -gt 0 ] && status=1
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "${execs:-0}" "${rate:-0}" "$corpus" "$crashes"
done
[ "$status" -eq 0 ] || echo "crashes: see fuzz/artifacts/ and the logs in $logs" >&2
exit $status
