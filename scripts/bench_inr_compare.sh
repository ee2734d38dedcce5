#!/usr/bin/env bash
# One amortised DEQ-INR training step (siren_like 1L256D on a 256 x 256 grid): deq-zoo-rs
# (`deq-inr-bench`) against PyTorch + TorchDEQ (`scripts/bench_inr_torch.py`, the zoo's model),
# 2 threads each, alternating ROUNDS times (default 2); the best median is kept.
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
WIDTH="${WIDTH:-256}"
cargo build --release -q -p deq-inr --bin deq-inr-bench
out=$(mktemp)
for _ in $(seq "$ROUNDS"); do
  ./target/release/deq-inr-bench --width "$WIDTH" --threads 2 >> "$out"
  python3 scripts/bench_inr_torch.py --width "$WIDTH" --threads 2 2>/dev/null >> "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = lambda i: min((r for r in rows if r["impl"] == i), key=lambda r: r["median_s"])
r, t = best("deq-zoo-rs"), best("torchdeq")
print("| workload | deq-zoo-rs median (s) | TorchDEQ median (s) | ratio |")
print("|---|---|---|---|")
print(f"| `{r['workload']}` | {r['median_s']:.3f} | {t['median_s']:.3f} | {r['median_s'] / t['median_s']:.2f}x |")
PY
