#!/usr/bin/env bash
# The comparisons of README's deq-lm results on PTB (configs/deq-lm/ptb-cpu.toml, 2 threads):
#   deq        the DEQ (6-step phantom training, 6 fixed-point steps in evaluation), 60 min
#   deq-short  the same DEQ for MINUTES (the equal-wall-clock row)
#   explicit   the equal-parameter explicit twin: f applied once from zero, in training and evaluation
#   unrolled   the equal-compute weight-tied net: f applied 6 times from zero, in training and evaluation
#   torch      the same DEQ in PyTorch + TorchDEQ (scripts/bench_lm_torch.py)
# Each variant records validation and test perplexity at MINUTES (training time, evaluation
# excluded) and at STEPS; peak resident memory from /usr/bin/time. Usage:
#   DEQ_DATA_DIR=... scripts/lm_variants.sh deq explicit unrolled torch
# (PTB: datasets/fetch_text.sh ptb). Runs go to runs/lm-<variant>/.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-15}"
STEPS="${STEPS:-250}"
cargo build --release -q -p deq-lm --bin deq-lm
mkdir -p runs
budget=(--set train.max_minutes="$MINUTES" --set "train.test_at_minutes=[$MINUTES]")
for v in "$@"; do
  out="runs/lm-$v"
  case "$v" in
    deq) args=(--set train.max_minutes=60 --set "train.test_at_minutes=[15,30,60]") ;;
    deq-short) args=("${budget[@]}") ;;
    explicit) args=(--set deq.f_solver=simple_fixed_point_iter --set "deq.grad=[1]" --set deq.eval_f_max_iter=1 "${budget[@]}") ;;
    # a step costs what the DEQ's does: 3 extra minutes so that it also reaches STEPS
    unrolled) args=(--set deq.f_solver=simple_fixed_point_iter --set "deq.grad=[6]" --set deq.eval_f_max_iter=6 --set train.max_minutes=$((MINUTES + 3)) --set "train.test_at_minutes=[$MINUTES]") ;;
    torch)
      /usr/bin/time -v python3 scripts/bench_lm_torch.py --train --threads 2 --minutes "$MINUTES" --eval-at "$MINUTES" > "$out.jsonl" 2> "$out.log"
      tail -1 "$out.jsonl"
      grep -E "Maximum resident" "$out.log" || true
      continue ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  rm -rf "$out"
  /usr/bin/time -v ./target/release/deq-lm train --threads 2 --out "$out" --set "train.test_at_steps=[$STEPS]" "${args[@]}" 2> "$out.log" | tail -1
  grep -E "Maximum resident" "$out.log" || true
done
