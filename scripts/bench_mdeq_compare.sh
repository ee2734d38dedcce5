#!/usr/bin/env bash
# MDEQ-small (CIFAR-10, the zoo's small setting) training step at batch 32: deq-zoo-rs
# (`mdeq-bench`) against PyTorch + TorchDEQ (`scripts/bench_mdeq_torch.py`), 2 threads each,
# alternating ROUNDS times (default 2); each side's best median is reported. Both read one
# instance written by `mdeq-bench --write-instance` (batch, labels, initial weights); the first
# losses are printed so that the identity of the problem can be seen.
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_TIME="${MIN_TIME:-10}"
ROUNDS="${ROUNDS:-2}"
BATCH="${BATCH:-32}"
RUNS="${RUNS:-20}"
cargo build --release -q -p mdeq --bin mdeq-bench
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
out_rs="$work/rs.jsonl"; out_py="$work/py.jsonl"
# One instance (batch, labels, initial weights), read by both sides.
./target/release/mdeq-bench --batch "$BATCH" --write-instance "$work/instance.safetensors"
for _ in $(seq "$ROUNDS"); do
  ./target/release/mdeq-bench --batch "$BATCH" --threads 2 --min-time "$MIN_TIME" --runs "$RUNS" --instance "$work/instance.safetensors" >> "$out_rs"
  python3 scripts/bench_mdeq_torch.py --batch "$BATCH" --threads 2 --min-time "$MIN_TIME" --runs "$RUNS" --instance "$work/instance.safetensors" >> "$out_py"
done
python3 - "$out_rs" "$out_py" <<'PY'
import json, sys
def best(p):
    rows = [json.loads(l) for l in open(p)]
    return min(rows, key=lambda r: r["median_s"])
r, t = best(sys.argv[1]), best(sys.argv[2])
print("| workload | deq-zoo-rs median (s) | TorchDEQ median (s) | ratio | NFE rust / torch | params | first loss rust / torch |")
print("|---|---|---|---|---|---|---|")
print(f"| `{r['workload']}` | {r['median_s']:.3f} | {t['median_s']:.3f} | {r['median_s']/t['median_s']:.2f}x | {r.get('nfe', 0):.1f} / {t.get('nfe') or 0:.1f} | {r['params']} / {t.get('params')} | {r.get('first_loss', 0):.5f} / {t.get('first_loss') or 0:.5f} |")
PY
