#!/usr/bin/env bash
# deq-lm training step of configs/deq-lm/ptb-cpu.toml (batch 32 x 70 after a full memory of 70
# positions, 6-step phantom gradient, tied 10k softmax, Adam): deq-zoo-rs (`deq-lm-bench`)
# against the same model in PyTorch + TorchDEQ (`scripts/bench_lm_torch.py --bench`), 2 threads
# each, alternating ROUNDS times (default 2); each side's best median is reported, with the
# forward/loss/backward split of ours and both sides' peak resident memory.
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_TIME="${MIN_TIME:-20}"
ROUNDS="${ROUNDS:-2}"
RUNS="${RUNS:-5}"
cargo build --release -q -p deq-lm --bin deq-lm-bench
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for _ in $(seq "$ROUNDS"); do
  ./target/release/deq-lm-bench --threads 2 --min-time "$MIN_TIME" --runs "$RUNS" --breakdown >> "$work/rs.jsonl"
  python3 scripts/bench_lm_torch.py --bench --threads 2 --min-time "$MIN_TIME" --runs "$RUNS" >> "$work/py.jsonl"
done
python3 - "$work/rs.jsonl" "$work/py.jsonl" <<'PY'
import json, sys
def best(p):
    rows = [json.loads(l) for l in open(p) if l.startswith("{")]
    return min(rows, key=lambda r: r["median_s"])
r, t = best(sys.argv[1]), best(sys.argv[2])
print("| workload | deq-zoo-rs median (s) | forward / loss / backward (s) | TorchDEQ median (s) | ratio | params | first loss rust / torch | peak RSS rust / torch (MB) |")
print("|---|---|---|---|---|---|---|---|")
print(f"| `{r['workload']}` | {r['median_s']:.2f} | {r['forward_s']:.2f} / {r['loss_s']:.2f} / {r['backward_s']:.2f} | {t['median_s']:.2f} | {r['median_s']/t['median_s']:.2f}x "
      f"| {r['params']} / {t['params']} | {r['first_loss']:.4f} / {t['first_loss']:.4f} | {r['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} |")
PY
