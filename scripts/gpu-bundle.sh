#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU machine without Rust: the stripped
# deq-gpu-check binary (CUDA + NCCL, built by scripts/build-cuda.sh) and the pure-Python
# TorchDEQ wheel, in target/gpu-bundle (about 60 MiB). Carry that folder with the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES=cuda,nccl CRATES=deq-zoo BINS=deq-gpu-check scripts/build-cuda.sh
B=target/gpu-bundle
mkdir -p "$B/wheels"
cp "${CARGO_TARGET_DIR:-target/cuda}/release/stripped/deq-gpu-check" "$B/"
python3 -m pip download -q --no-deps --only-binary :all: -d "$B/wheels" "torchdeq==0.1.0"
du -sh "$B"
