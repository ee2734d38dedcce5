#!/usr/bin/env bash
# conv2d forward and backward on the zoo's shapes (configs/bench/conv-shapes.txt): deq-core's
# kernels (`conv-bench`), candle's conv2d and PyTorch's (`scripts/bench_conv_torch.py`),
# THREADS threads each (default 2), alternating ROUNDS times (default 2); each side's best
# median per shape is kept. Prints the markdown table of README. Extra arguments go to both
# benchmarks (e.g. `--filter mdeq-s`). Needs `pip install torch==2.15.0`; run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
MIN_TIME="${MIN_TIME:-1}"
cargo build --release -q -p deq-core --bin conv-bench
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export RAYON_NUM_THREADS="$THREADS"
for _ in $(seq "$ROUNDS"); do
  ./target/release/conv-bench --impl deq --threads "$THREADS" --min-time "$MIN_TIME" "$@" >> "$work/deq.jsonl"
  python3 scripts/bench_conv_torch.py --threads "$THREADS" --min-time "$MIN_TIME" "$@" >> "$work/torch.jsonl"
done
if [ "${CANDLE:-1}" = 1 ]; then
  ./target/release/conv-bench --impl candle --threads "$THREADS" --min-time "$MIN_TIME" "$@" >> "$work/candle.jsonl"
fi
touch "$work/candle.jsonl"
python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
def best(name):
    rows = {}
    for line in open(os.path.join(work, name)):
        r = json.loads(line)
        w = r["workload"]
        if w not in rows:
            rows[w] = dict(r)
        else:
            rows[w]["forward_s"] = min(rows[w]["forward_s"], r["forward_s"])
            rows[w]["backward_s"] = min(rows[w]["backward_s"], r["backward_s"])
    return rows
d, t, c = best("deq.jsonl"), best("torch.jsonl"), best("candle.jsonl")
print("| shape | forward ms (GFLOP/s) | torch fwd ms | fwd ratio | backward ms (GFLOP/s) | torch bwd ms | bwd ratio | candle fwd / bwd ms |")
print("|---|---|---|---|---|---|---|---|")
worst = [0.0, 0.0]
for w, r in d.items():
    tr = t.get(w)
    if tr is None:
        continue
    fr, br = r["forward_s"] / tr["forward_s"], r["backward_s"] / tr["backward_s"]
    worst = [max(worst[0], fr), max(worst[1], br)]
    flops_f = r["forward_gflops"] * r["forward_s"]
    cc = c.get(w)
    cand = f"{cc['forward_s']*1e3:.2f} / {cc['backward_s']*1e3:.2f}" if cc else "-"
    print(f"| `{w[5:]}` | {r['forward_s']*1e3:.2f} ({flops_f/r['forward_s']:.0f}) | {tr['forward_s']*1e3:.2f} | {fr:.2f}x "
          f"| {r['backward_s']*1e3:.2f} ({2*flops_f/r['backward_s']:.0f}) | {tr['backward_s']*1e3:.2f} | {br:.2f}x | {cand} |")
print(f"\nworst ratio: forward {worst[0]:.2f}x, backward {worst[1]:.2f}x")
PY
