#!/usr/bin/env bash
# DEQ-Flow training step, deq-zoo-rs (`deq-flow-bench`) against the same model in PyTorch +
# TorchDEQ (`scripts/bench_flow_torch.py`), 2 threads each, alternating ROUNDS times (default 2);
# each side's best median is reported. CONFIGS (default: the CPU configuration and DEQ-Flow-B's
# Chairs recipe) with BATCH pairs at the configured crop, or HEIGHT x WIDTH when set.
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_TIME="${MIN_TIME:-10}"
ROUNDS="${ROUNDS:-2}"
RUNS="${RUNS:-3}"
CONFIGS="${CONFIGS:-configs/deq-flow/synthetic-tiny.toml:4:0:0 configs/deq-flow/chairs-B.toml:1:184:248}"
cargo build --release -q -p deq-flow --bin deq-flow-bench
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for spec in $CONFIGS; do
  IFS=: read -r cfg batch h w <<< "$spec"
  for _ in $(seq "$ROUNDS"); do
    ./target/release/deq-flow-bench --config "$cfg" --batch "$batch" --height "$h" --width "$w" --threads 2 --min-time "$MIN_TIME" --runs "$RUNS" --label "$cfg" >> "$work/rs.jsonl"
    python3 scripts/bench_flow_torch.py --config "$cfg" --batch "$batch" --height "$h" --width "$w" --threads 2 --min-time "$MIN_TIME" --runs "$RUNS" --label "$cfg" >> "$work/py.jsonl"
  done
done
python3 - "$work/rs.jsonl" "$work/py.jsonl" <<'PY'
import json, sys
def best(p):
    out = {}
    for l in open(p):
        r = json.loads(l)
        k = (r["label"], r["batch"], r["height"], r["width"])
        if k not in out or r["median_s"] < out[k]["median_s"]:
            out[k] = r
    return out
r, t = best(sys.argv[1]), best(sys.argv[2])
print("| configuration | batch x frame | params rust / torch | deq-zoo-rs median (s) | TorchDEQ median (s) | ratio |")
print("|---|---|---|---|---|---|")
for k in r:
    a, b = r[k], t[k]
    print(f"| `{k[0]}` | {k[1]} x {k[2]}x{k[3]} | {a['params']:,} / {b['params']:,} | {a['median_s']:.3f} | {b['median_s']:.3f} | {a['median_s'] / b['median_s']:.2f}x |")
PY
