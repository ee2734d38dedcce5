#!/usr/bin/env bash
# The MNIST default job against its PyTorch + TorchDEQ twin: `mdeq train --config CONFIG`, then
# `scripts/train_mdeq_torch.py --config CONFIG` (same model, solver and recipe), one after the
# other on the same machine, 2 threads each; prints the wall-clock to each target accuracy
# (`scripts/mdeq_time_to_acc.py`). Extra arguments (`--set train.epochs=3`) go to both.
# Needs `pip install torch==2.15.0 torchdeq==0.1.0`; about twice the job's time; idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-configs/mdeq/mnist-small.toml}"
OUT="${OUT:-runs/mnist-compare}"
cargo build --release -q -p mdeq --bin mdeq
rm -rf "$OUT/rust" "$OUT/torch"
mkdir -p "$OUT"
./target/release/mdeq train --config "$CONFIG" --threads 2 --out "$OUT/rust" "$@" 2> "$OUT/rust.log"
python3 scripts/train_mdeq_torch.py --config "$CONFIG" --threads 2 --out "$OUT/torch" "$@" 2> "$OUT/torch.log"
python3 scripts/mdeq_time_to_acc.py --target 0.98 --target 0.99 --target 0.993 rust="$OUT/rust" torch="$OUT/torch"
