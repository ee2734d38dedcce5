#!/usr/bin/env python3
"""Reference for `conv-bench`: PyTorch's conv2d forward and backward (input and weight
gradient, one autograd call) on the shapes of configs/bench/conv-shapes.txt, one JSON line
per shape, in the format of `conv-bench`.

Usage:
    python3 scripts/bench_conv_torch.py --threads 2 [--filter mdeq-s] [--min-time 1]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def read_shapes(path):
    shapes = []
    for i, line in enumerate(open(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) != 12:
            raise SystemExit(f"{path}:{i}: 12 columns expected, found {len(f)}")
        n, c, h, w, o, kh, kw, stride, ph, pw, groups = map(int, f[1:])
        shapes.append(dict(name=f[0], x=(n, c, h, w), k=(o, c // groups, kh, kw), stride=stride, padding=(ph, pw), groups=groups))
    return shapes


def timed(fn, runs, min_time):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="configs/bench/conv-shapes.txt")
    ap.add_argument("--filter", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "f32" else torch.float64
    g = torch.Generator().manual_seed(0)
    for s in read_shapes(args.shapes):
        if args.filter and not any(f in s["name"] for f in args.filter):
            continue
        x = torch.randn(s["x"], generator=g, dtype=dtype).requires_grad_(True)
        k = (torch.randn(s["k"], generator=g, dtype=dtype) * 0.1).requires_grad_(True)
        conv = lambda: F.conv2d(x, k, stride=s["stride"], padding=s["padding"], groups=s["groups"])
        with torch.no_grad():
            y = conv()
        dy = torch.randn(y.shape, generator=g, dtype=dtype)

        def fwd():
            with torch.no_grad():
                conv()

        def bwd():
            y = conv()
            torch.autograd.grad(y, (x, k), dy)

        # The backward closure also runs the forward (autograd needs the graph): subtract it.
        tf = timed(fwd, args.runs, args.min_time)
        tb = max(timed(bwd, args.runs, args.min_time) - tf, 1e-9)
        n, c, h, w = s["x"]
        o, cg, kh, kw = s["k"]
        flops = 2.0 * n * o * y.shape[2] * y.shape[3] * cg * kh * kw
        print(json.dumps({"workload": f"conv/{s['name']}", "impl": "torch", "threads": args.threads, "dtype": args.dtype,
                          "forward_s": tf, "backward_s": tb, "forward_gflops": flops / tf / 1e9,
                          "backward_gflops": 2 * flops / tb / 1e9, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
