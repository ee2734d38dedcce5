#!/usr/bin/env bash
# Runs deq-bench (Rust) and bench_torchdeq.py (TorchDEQ on PyTorch CPU) on the same machine,
# 2 threads each, alternating ROUNDS times (default 3), and prints a table of median times and
# ratios. Each side's figure is its best median over the rounds: shared cloud machines have
# slow phases lasting seconds, and alternating rounds keeps one side from getting all of them.
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
# FEATURES selects deq-core's reverse pass: `pruned-vjp` (default; needs the workspace's patched
# candle-core) or empty for the stock path a crate outside the workspace gets
# (`FEATURES= scripts/bench_compare.sh`). The table says which one it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_TIME="${MIN_TIME:-5}"
ROUNDS="${ROUNDS:-3}"
FEATURES="${FEATURES-pruned-vjp}"
cargo build --release -q -p deq-core --bin deq-bench --features "$FEATURES"
out_rs=$(mktemp); out_py=$(mktemp)
for _ in $(seq "$ROUNDS"); do
  RAYON_NUM_THREADS=2 ./target/release/deq-bench --min-time "$MIN_TIME" >> "$out_rs"
  python3 scripts/bench_torchdeq.py --threads 2 --min-time "$MIN_TIME" >> "$out_py"
done
python3 - "$out_rs" "$out_py" <<'PY'
import json, sys
def best(path):
    out = {}
    for j in map(json.loads, open(path)):
        w = j["workload"]
        if w not in out or j["median_s"] < out[w]["median_s"]:
            out[w] = j
    return out
rs, py = best(sys.argv[1]), best(sys.argv[2])
print("| workload | deq-core reverse pass | deq-core median (ms) | TorchDEQ median (ms) | ratio | NFE rust / torch |")
print("|---|---|---|---|---|---|")
for w in rs:
    r, p = rs[w], py.get(w)
    if p is None:
        continue
    print(f"| `{w}` | {r.get('vjp')} | {r['median_s']*1e3:.2f} | {p['median_s']*1e3:.2f} | {r['median_s']/p['median_s']:.2f}x | {r.get('nfe')} / {p.get('nfe')} |")
PY
