#!/usr/bin/env bash
# The GPU checks, on a one-GPU Linux machine with a CUDA 13.0 driver and PyTorch (with its
# NVIDIA/NCCL libraries) in a Python environment, and no Rust toolchain:
#
#   scripts/gpu-bundle.sh              # on the build machine: target/gpu-bundle (< 64 MiB)
#   scripts/gpu-check.sh [BUNDLE]      # on the GPU machine, from the repository root
#
# 1. every custom op on CUDA against the CPU (deq-gpu-check ops);
# 2. a data-parallel job of two processes on the one GPU through NCCL (scripts/launch.sh);
#    when NCCL refuses two ranks on one device, world size 1 through the same NCCL path;
# 3. the MDEQ CIFAR-small training step at batch 32 and 128 against PyTorch + TorchDEQ
#    (scripts/bench_mdeq_torch.py --device cuda) on the same GPU: ratio of median step times;
# 4. peak GPU memory of an IFT step at f_max_iter 10 and 100 (flat if the backward pass keeps
#    no solver history), both implementations.
# Results: BUNDLE/results/{ops.txt,nccl.txt,steps.jsonl,summary.txt}. Exit code 1 when a
# correctness check fails (the speed and memory figures are reported, not judged).
set -uo pipefail
cd "$(dirname "$0")/.."
B="${1:-target/gpu-bundle}"
BIN="$B/deq-gpu-check"
OUT="$B/results"
[ -x "$BIN" ] || { echo "gpu-check: no $BIN (make it with scripts/gpu-bundle.sh)" >&2; exit 2; }
mkdir -p "$OUT"
: > "$OUT/steps.jsonl"

# Run-time libraries (cuBLAS, cuRAND, NCCL, the CUDA runtime) from the Python environment's
# NVIDIA wheels, unless the system has them.
libs=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# TorchDEQ: installed, or the pure-Python wheel that travels in the bundle.
if ! python3 -c "import torchdeq" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index --target "$B/py" "$B"/wheels/torchdeq-*.whl || { echo "gpu-check: cannot install torchdeq" >&2; exit 2; }
  export PYTHONPATH="$B/py${PYTHONPATH:+:$PYTHONPATH}"
fi
status=0
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== 1. custom ops: CUDA against CPU"
"$BIN" ops --device cuda:0 2>&1 | tee "$OUT/ops.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 2. NCCL: two ranks on one GPU"
port=$((29600 + RANDOM % 1000))
if DEQ_DIST_TIMEOUT=120 timeout 300 scripts/launch.sh --nproc-per-node 2 --master-port "$port" -- "$BIN" nccl --device cuda:0 > "$OUT/nccl.txt" 2>&1; then
  echo "world 2 on one GPU: ok" | tee -a "$OUT/nccl.txt"
else
  echo "world 2 on one GPU refused or failed (NCCL may not allow two ranks on one device); world 1 through NCCL:" | tee -a "$OUT/nccl.txt"
  if DEQ_DIST_TIMEOUT=60 timeout 120 "$BIN" nccl --device cuda:0 --force-nccl >> "$OUT/nccl.txt" 2>&1; then
    echo "world 1 through NCCL: ok" | tee -a "$OUT/nccl.txt"
  else
    status=1
  fi
fi
tail -5 "$OUT/nccl.txt"

echo "== 3. MDEQ CIFAR-small training step, deq-zoo-rs against PyTorch + TorchDEQ"
for b in 32 128; do
  "$BIN" mdeq-step --device cuda:0 --batch "$b" --runs 20 --min-time 3 | tee -a "$OUT/steps.jsonl" || status=1
  python3 scripts/bench_mdeq_torch.py --device cuda --batch "$b" --runs 20 --min-time 3 | tee -a "$OUT/steps.jsonl" || status=1
done

echo "== 4. peak GPU memory of an IFT step"
for n in 10 100; do
  "$BIN" mdeq-step --device cuda:0 --batch 32 --ift --f-max-iter "$n" --runs 3 --warmup 1 --min-time 0 | tee -a "$OUT/steps.jsonl" || status=1
  python3 scripts/bench_mdeq_torch.py --device cuda --batch 32 --ift --f-max-iter "$n" --runs 3 --warmup 1 --min-time 0 | tee -a "$OUT/steps.jsonl" || status=1
done

python3 - "$OUT/steps.jsonl" <<'PY' | tee "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def pick(impl, **kw):
    for r in rows:
        if r.get("impl") == impl and all(r.get(k) == v for k, v in kw.items()):
            return r
for b in (32, 128):
    w = f"mdeq/cifar-small/train_step_b{b}"
    a, t = pick("deq-zoo-rs", workload=w, ift=False), pick("torchdeq", workload=w, ift=False)
    if a and t:
        print(f"{w}: deq-zoo-rs {a['median_s']*1e3:.1f} ms, torchdeq {t['median_s']*1e3:.1f} ms, ratio {a['median_s']/t['median_s']:.2f}x")
for n in (10, 100):
    a, t = pick("deq-zoo-rs", ift=True, f_max_iter=n), pick("torchdeq", ift=True, f_max_iter=n)
    if a and t:
        print(f"IFT step, f_max_iter {n}: peak GPU memory deq-zoo-rs {a['peak_gpu_mb']:.0f} MiB, torchdeq {t['peak_gpu_mb']:.0f} MiB")
PY
echo "gpu-check: done in $(( $(date +%s) - start )) s, status $status"
exit $status
