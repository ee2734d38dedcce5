#!/usr/bin/env bash
# DDPM UNet forward + backward (and forward alone, as in sampling), deq-zoo-rs
# (`deq-ddim-bench`) against the same model in PyTorch (`scripts/ddpm_reference.py bench`),
# 2 threads each, alternating ROUNDS times (default 2); each side's best median is reported.
# SPECS: config:batch pairs (default: MNIST at 64, CIFAR-10 at 8).
# Needs: `pip install torch==2.15.0 numpy`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
ITERS="${ITERS:-5}"
SPECS="${SPECS:-mnist:64 cifar10:8}"
cargo build --release -q -p deq-ddim --bin deq-ddim-bench
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for spec in $SPECS; do
  IFS=: read -r cfg batch <<< "$spec"
  for mode in "" "--forward-only"; do
    for _ in $(seq "$ROUNDS"); do
      ./target/release/deq-ddim-bench --config "$cfg" --batch "$batch" --iters "$ITERS" --threads 2 $mode >> "$work/rs.jsonl"
      python3 scripts/ddpm_reference.py bench --config "$cfg" --batch "$batch" --iters "$ITERS" --threads 2 $mode >> "$work/py.jsonl"
    done
  done
done
python3 - "$work/rs.jsonl" "$work/py.jsonl" <<'PY'
import json, sys
def best(p):
    out = {}
    for l in open(p):
        r = json.loads(l)
        k = (r["config"], r["batch"], r["forward_only"])
        if k not in out or r["ms_per_step"] < out[k]["ms_per_step"]:
            out[k] = r
    return out
r, t = best(sys.argv[1]), best(sys.argv[2])
print("| UNet | batch | pass | params rust / torch | deq-zoo-rs (ms) | PyTorch (ms) | ratio |")
print("|---|---|---|---|---|---|---|")
for k in r:
    a, b = r[k], t[k]
    print(f"| {k[0]} | {k[1]} | {'forward' if k[2] else 'forward + backward'} | {a['params']:,} / {b['params']:,} | {a['ms_per_step']:.1f} | {b['ms_per_step']:.1f} | {a['ms_per_step'] / b['ms_per_step']:.2f}x |")
PY
