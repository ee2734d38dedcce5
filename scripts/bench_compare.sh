#!/usr/bin/env bash
# Runs deq-bench (Rust) and bench_torchdeq.py (TorchDEQ on PyTorch CPU) on the same machine,
# 2 threads each, alternating ROUNDS times (default 3), and prints a table of median times and
# ratios. Each side's figure is its best median over the rounds: shared cloud machines have
# slow phases lasting seconds, and alternating rounds keeps one side from getting all of them.
# Both sides read one problem instance, written once by `deq-bench --write-problem`.
# The table gives time per call and time per evaluation of f (counted calls on both sides), so
# that an algorithmic difference (how many evaluations a solver needs) is not read as an
# implementation difference; `solve_iters20/*` rows do exactly 20 iterations on both sides.
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
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
problem="$work/problem.safetensors"
./target/release/deq-bench --write-problem "$problem" --seed 0
for _ in $(seq "$ROUNDS"); do
  RAYON_NUM_THREADS=2 ./target/release/deq-bench --min-time "$MIN_TIME" --problem "$problem" >> "$work/rs.jsonl"
  python3 scripts/bench_torchdeq.py --threads 2 --min-time "$MIN_TIME" --problem "$problem" >> "$work/py.jsonl"
done
python3 - "$work/rs.jsonl" "$work/py.jsonl" <<'PY'
import json, sys
def best(path):
    out = {}
    for j in map(json.loads, open(path)):
        w = j["workload"]
        if w not in out or j["median_s"] < out[w]["median_s"]:
            out[w] = j
    return out
rs, py = best(sys.argv[1]), best(sys.argv[2])
def calls(j):
    return j.get("nfe_counted") or j.get("f_calls_counted")
print("| workload | deq-core reverse pass | deq-core median (ms) | TorchDEQ median (ms) | ratio | f calls rust / torch | ms per f call rust / torch | ratio per f call |")
print("|---|---|---|---|---|---|---|---|")
for w in rs:
    r, p = rs[w], py.get(w)
    if p is None:
        continue
    cr, cp = calls(r), calls(p)
    per_r, per_p = r["median_s"] * 1e3 / cr, p["median_s"] * 1e3 / cp
    print(f"| `{w}` | {r.get('vjp')} | {r['median_s']*1e3:.2f} | {p['median_s']*1e3:.2f} | {r['median_s']/p['median_s']:.2f}x "
          f"| {cr} / {cp} | {per_r:.3f} / {per_p:.3f} | {per_r/per_p:.2f}x |")
PY
