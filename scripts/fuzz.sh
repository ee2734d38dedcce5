#!/usr/bin/env bash
# Fuzzes every reader of outside data with libFuzzer (cargo-fuzz, nightly toolchain):
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 600 s, every target)
# Seeds fuzz/corpus/ from the committed fixtures, runs each target with a 2 GiB RSS limit and
# a 1 GiB single-allocation limit (a larger malloc is reported as a crash: the bounded-
# allocation rule), and appends one JSON line per target to fuzz/report.jsonl (executions,
# coverage, features, corpus size, crashes). Crashing inputs land in fuzz/artifacts/<target>/.
# Needs: rustup toolchain nightly, `cargo install cargo-fuzz`, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=($(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v deq-zoo-fuzz))
fi
python3 scripts/fuzz_seeds.py >/dev/null
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  log=fuzz/logs/$t.log
  mkdir -p fuzz/logs "fuzz/artifacts/$t"
  set +e
  cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -timeout=10 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corp=$(ls "fuzz/corpus/$t" | wc -l)
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
  line="{\"target\": \"$t\", \"seconds\": $secs, \"rc\": $rc, \"executions\": ${execs:-0}, \"coverage\": ${cov:-0}, \"features\": ${ft:-0}, \"corpus\": $corp, \"crash_files\": $crashes, \"date\": \"$(date -u +%FT%TZ)\"}"
  echo "$line" | tee -a fuzz/report.jsonl
done
