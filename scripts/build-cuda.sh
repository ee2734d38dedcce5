#!/usr/bin/env bash
# Builds the release binaries with CUDA on a Linux machine, with or without a system CUDA
# toolkit:
#
#   scripts/build-cuda.sh                      # mdeq, ignn, deq-inr with --features cuda
#   FEATURES=cuda,nccl CRATES=mdeq scripts/build-cuda.sh
#   FEATURES=cuda,nccl CRATES=deq-zoo BINS=deq-gpu-check scripts/build-cuda.sh   # the GPU checks
#
# Without `nvcc` on PATH (or in $CUDA_HOME / /usr/local/cuda) it installs NVIDIA's CUDA 13.0
# compiler and libraries from PyPI into target/cuda-tools (pinned to 13.0: a GPU driver of
# CUDA 13.0 may not load the PTX of a newer compiler), links against a stub of libcuda (the
# driver library is only needed at run time) and builds into target/cuda. The first build
# compiles candle's kernels for $CUDA_COMPUTE_CAP (default 90: H100/H200) and takes about 15
# minutes on 2 cores. Prints the binaries, their sizes and the shared libraries they need.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES="${FEATURES:-cuda}"
CRATES="${CRATES:-mdeq ignn deq-inr}"
BINS="${BINS:-$CRATES}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
TOOLS="${CUDA_TOOLS:-$PWD/target/cuda-tools}"
LINK="$TOOLS/link"
mkdir -p "$LINK"
start=$(date +%s)

# 1. nvcc: the system's, or PyPI's.
if [ -z "${NVCC:-}" ]; then
  for c in "$(command -v nvcc || true)" "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then NVCC="$c"; break; fi
  done
fi
if [ -z "${NVCC:-}" ]; then
  WHEELS="$TOOLS/wheels"
  if [ ! -x "$WHEELS/nvidia/cu13/bin/nvcc" ]; then
    echo "build-cuda: no nvcc found; installing NVIDIA's CUDA 13.0 wheels from PyPI into $WHEELS" >&2
    # Every compiler piece pinned to 13.0: nvcc's dependencies nvvm and crt are otherwise the
    # newest, whose PTX the 13.0 ptxas rejects ("Unsupported .version").
    python3 -m pip install -q --target "$WHEELS" "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
      "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" nvidia-curand "nvidia-cuda-nvrtc==13.0.*" nvidia-nccl-cu13 \
      "nvidia-cuda-runtime==13.0.*" 2>&1 | grep -v -e "dependency resolver" -e "requires nvidia" -e "as the 'root' user" >&2 || true
  fi
  NVCC="$WHEELS/nvidia/cu13/bin/nvcc"
  export CUDA_HOME="$WHEELS/nvidia/cu13"
  # The wheels ship versioned names only: link names for the linker.
  for lib in "$WHEELS"/nvidia/cu13/lib/lib*.so.* "$WHEELS"/nvidia/nccl/lib/libnccl.so.*; do
    [ -e "$lib" ] || continue
    base="$(basename "$lib")"
    ln -sf "$lib" "$LINK/${base%%.so.*}.so"
  done
  # libcuda is the driver's: link against a stub exporting the driver API's symbols.
  if [ ! -e "$LINK/libcuda.so" ]; then
    grep -oE 'CUDAAPI[[:space:]]+cu[A-Za-z0-9_]+' "$CUDA_HOME/include/cuda.h" | awk '{print $2}' | sort -u \
      | awk '{print "void " $1 "(void) {}"}' > "$LINK/cuda_stub.c"
    # The versioned entry points (cuFoo_v2, ...) are macros in cuda.h: export those names too.
    grep -oE '#define[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]+cu[A-Za-z0-9_]+' "$CUDA_HOME/include/cuda.h" | awk '{print $3}' | sort -u \
      | awk '{print "void " $1 "(void) {}"}' >> "$LINK/cuda_stub.c"
    sort -u "$LINK/cuda_stub.c" -o "$LINK/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
  fi
  export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK"
fi
export NVCC
export PATH="$(dirname "$NVCC"):$PATH"
echo "build-cuda: nvcc $NVCC ($("$NVCC" --version | tail -1)), compute capability $CUDA_COMPUTE_CAP, features $FEATURES" >&2

# 2. Build (its own target dir: these flags would otherwise rebuild the CPU build).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
args=()
for c in $CRATES; do args+=(-p "$c"); done
cargo build --release --features "$FEATURES" "${args[@]}"

# 3. What was built and what it needs at run time.
echo "build-cuda: done in $(( $(date +%s) - start )) s; binaries (stripped copies in $CARGO_TARGET_DIR/release/stripped):" >&2
mkdir -p "$CARGO_TARGET_DIR/release/stripped"
for c in $BINS; do
  bin="$CARGO_TARGET_DIR/release/$c"
  [ -x "$bin" ] || continue
  strip -o "$CARGO_TARGET_DIR/release/stripped/$c" "$bin"
  printf '  %s  %s (stripped %s)\n' "$bin" "$(du -h "$bin" | cut -f1)" "$(du -h "$CARGO_TARGET_DIR/release/stripped/$c" | cut -f1)" >&2
done
first=$(for c in $BINS; do [ -x "$CARGO_TARGET_DIR/release/$c" ] && echo "$CARGO_TARGET_DIR/release/$c" && break; done)
if [ -n "$first" ]; then
  echo "build-cuda: shared libraries needed at run time (on a GPU machine whose CUDA libraries come from a Python environment, point LD_LIBRARY_PATH at them; find / -name libnccl.so.2):" >&2
  readelf -d "$first" | awk '/NEEDED/ {print "  " $NF}' | tr -d '[]' >&2
fi
