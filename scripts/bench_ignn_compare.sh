#!/usr/bin/env bash
# IGNN training epoch (forward solve, implicit backward, Adam step): deq-zoo-rs (`ignn-bench`)
# against PyTorch + TorchDEQ (`scripts/bench_ignn_torch.py`, the zoo's layer), 2 threads each,
# on Cora and on a random graph of 100k nodes / 1M directed edges, with the Cora config's
# solvers (Anderson; NFE differ) and in equal-work mode (20 fixed-point steps each way).
# Each side runs ROUNDS times (default 2), alternating; the best median is kept. Both read one
# instance per graph written by `ignn-bench --write-instance` (initial weights, random graph).
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
cargo build --release -q -p ignn --bin ignn-bench
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
out="$work/rows.jsonl"
for graph in cora random; do
  epochs=10; [ "$graph" = random ] && epochs=3
  # One instance per graph (initial weights; the random graph itself), read by both sides.
  inst="$work/$graph.safetensors"
  ./target/release/ignn-bench --graph "$graph" --write-instance "$inst"
  for iters in 0 20; do
    for _ in $(seq "$ROUNDS"); do
      ./target/release/ignn-bench --graph "$graph" --epochs "$epochs" --fixed-iters "$iters" --threads 2 --instance "$inst" 2>/dev/null >> "$out"
      python3 scripts/bench_ignn_torch.py --graph "$graph" --epochs "$epochs" --fixed-iters "$iters" --threads 2 --instance "$inst" 2>/dev/null >> "$out"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def best(impl, g, it):
    c = [r for r in rows if r["impl"] == impl and r["graph"] == g and r["fixed_iters"] == it]
    return min(c, key=lambda r: r["epoch_median_s"])
mb = lambda b: f"{b / 2**20:.0f}"
print("| graph | solvers | deq-zoo-rs epoch | TorchDEQ epoch | ratio | fwd NFE rs / torch | peak RSS rs / torch (MiB, above start) | rs peak heap (MiB) |")
print("|---|---|---|---|---|---|---|---|")
for g in ["cora", "random"]:
    for it in [0, 20]:
        r, t = best("deq-zoo-rs", g, it), best("torchdeq", g, it)
        mode = "Anderson (config)" if it == 0 else f"{it} fixed-point steps"
        print(f"| {g} ({r['nodes']} nodes, {r['directed_edges']} edges) | {mode} | {r['epoch_median_s']*1e3:.1f} ms | {t['epoch_median_s']*1e3:.1f} ms | "
              f"{r['epoch_median_s']/t['epoch_median_s']:.2f}x | {r['train_fwd_nfe_mean']:.1f} / {t['train_fwd_nfe_mean']:.1f} | "
              f"{mb(r['peak_rss_bytes'] - r['rss_at_start_bytes'])} / {mb(t['peak_rss_bytes'] - t['rss_at_start_bytes'])} | {mb(r['peak_heap_bytes'])} |")
PY
