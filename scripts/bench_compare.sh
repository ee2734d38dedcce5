#!/usr/bin/env bash
# Runs deq-bench (Rust) and bench_torchdeq.py (TorchDEQ on PyTorch CPU) one after the other on
# the same machine, 2 threads each, and prints a table of median times and ratios.
# Needs: `pip install torch torchdeq`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_TIME="${MIN_TIME:-5}"
cargo build --release -q -p deq-core --bin deq-bench
out_rs=$(mktemp); out_py=$(mktemp)
RAYON_NUM_THREADS=2 ./target/release/deq-bench --min-time "$MIN_TIME" > "$out_rs"
python3 scripts/bench_torchdeq.py --threads 2 --min-time "$MIN_TIME" > "$out_py"
python3 - "$out_rs" "$out_py" <<'PY'
import json, sys
rs = {j["workload"]: j for j in map(json.loads, open(sys.argv[1]))}
py = {j["workload"]: j for j in map(json.loads, open(sys.argv[2]))}
print(f"| workload | deq-core median (ms) | TorchDEQ median (ms) | ratio | NFE rust / torch |")
print("|---|---|---|---|---|")
for w in rs:
    r, p = rs[w], py.get(w)
    if p is None:
        continue
    print(f"| `{w}` | {r['median_s']*1e3:.2f} | {p['median_s']*1e3:.2f} | {r['median_s']/p['median_s']:.2f}x | {r.get('nfe')} / {p.get('nfe')} |")
PY
