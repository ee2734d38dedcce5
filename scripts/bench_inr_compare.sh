#!/usr/bin/env bash
# One amortised DEQ-INR training step (siren_like 1L256D on a 256 x 256 grid): deq-zoo-rs
# (`deq-inr-bench`) against PyTorch + TorchDEQ (`scripts/bench_inr_torch.py`, the zoo's model),
# 2 threads each, alternating ROUNDS times (default 2); the best median is kept. The PyTorch twin
# computes the injection once per step outside f, as deq-inr does.
# Needs: `pip install torch==2.15.0 torchdeq==0.1.0`. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
WIDTH="${WIDTH:-256}"
cargo build --release -q -p deq-inr --bin deq-inr-bench
out=$(mktemp)
# deq-inr-bench runs on jemalloc with transparent huge pages; PyTorch runs on glibc malloc and,
# when libjemalloc is installed (Debian/Ubuntu: `apt install libjemalloc2`), also on jemalloc
# with the same options, so that the allocator is not mistaken for the implementation.
JEMALLOC="${JEMALLOC:-$(ls /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 2>/dev/null | head -1 || true)}"
# One instance (coordinates, targets, initial weights), read by both sides.
inst="$(mktemp -d)/instance.safetensors"
./target/release/deq-inr-bench --width "$WIDTH" --write-instance "$inst"
for _ in $(seq "$ROUNDS"); do
  ./target/release/deq-inr-bench --width "$WIDTH" --threads 2 --instance "$inst" >> "$out"
  python3 scripts/bench_inr_torch.py --width "$WIDTH" --threads 2 --instance "$inst" 2>/dev/null >> "$out"
  if [ -n "$JEMALLOC" ]; then
    LD_PRELOAD="$JEMALLOC" MALLOC_CONF="oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000,thp:always" \
      python3 scripts/bench_inr_torch.py --width "$WIDTH" --threads 2 --instance "$inst" 2>/dev/null >> "$out"
  fi
done
rm -rf "$(dirname "$inst")"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = min((x for x in rows if x["impl"] == "deq-zoo-rs"), key=lambda x: x["median_s"])
print(f"first loss (the full solve from zeros): rust {r.get('first_loss')}, torch " + ", ".join(str(x.get("first_loss")) for x in rows if x["impl"] == "torchdeq"))
print("| workload | deq-zoo-rs median (s), jemalloc + THP | TorchDEQ median (s) | PyTorch allocator | ratio |")
print("|---|---|---|---|---|")
for alloc in sorted({x.get("allocator", "glibc malloc") for x in rows if x["impl"] == "torchdeq"}):
    t = min((x for x in rows if x["impl"] == "torchdeq" and x.get("allocator", "glibc malloc") == alloc), key=lambda x: x["median_s"])
    print(f"| `{r['workload']}` | {r['median_s']:.3f} | {t['median_s']:.3f} | {alloc} | {r['median_s'] / t['median_s']:.2f}x |")
PY
