"""One amortised DEQ-INR training step on PyTorch + TorchDEQ (CPU), the counterpart of
`deq-inr-bench`: the zoo's siren_like model (injection Linear(2 -> D (L + 1)), weight-normed
Linear(D, D) layers, sin filters, linear readout), a full 256 x 256 coordinate grid as one
batch, the solver skipped (f_max_iter 0, warm start from a cached state) and 3 phantom-gradient
steps, MSE, Adam. The injection and the first filter are computed once per step, outside `f`
(as deq-inr does). PyTorch runs on its default allocator (glibc malloc); deq-inr-bench links
jemalloc with transparent huge pages: `scripts/bench_inr_compare.sh` also runs this script under
jemalloc (LD_PRELOAD) when the library is installed, and reports which allocator each row used.
Prints one JSON line.

    python3 scripts/bench_inr_torch.py --width 256 --threads 2
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn

from bench_io import read_safetensors

try:
    from torchdeq import get_deq
    from torchdeq.norm import apply_norm, reset_norm
except ImportError:  # pragma: no cover
    sys.exit("torchdeq is not installed: pip install torch==2.15.0 torchdeq==0.1.0")


class F(nn.Module):
    def __init__(self, width, layers):
        super().__init__()
        self.maps = nn.ModuleList([nn.Linear(width, width) for _ in range(layers)])

    def forward(self, z, us):
        # us[0] arrives filtered (sin applied once per step, outside f, as deq-inr does).
        h = z + us[0]
        for i, m in enumerate(self.maps):
            h = torch.sin(m(h) + us[i + 1])
        return h


class DeqInr(nn.Module):
    def __init__(self, width, layers, scale):
        super().__init__()
        self.inj = nn.Linear(2, width * (layers + 1))
        with torch.no_grad():
            self.inj.weight.mul_(scale / math.sqrt(layers + 1))
            self.inj.bias.uniform_(-math.pi, math.pi)
        self.f = F(width, layers)
        apply_norm(self.f, norm_type="weight_norm")
        self.out = nn.Linear(width, 1)
        self.layers = layers
        self.deq = get_deq(f_solver="fixed_point_iter", f_max_iter=100, f_tol=1e-3, grad=3, tau=1.0, ift=False)

    def forward(self, x, z0, skip):
        reset_norm(self.f)
        # The injection (and the first filter) is computed once per step, outside f: what a
        # careful PyTorch user writes, and what deq-inr does.
        us = list(self.inj(x).chunk(self.layers + 1, dim=-1))
        us[0] = torch.sin(us[0])
        kwargs = {"f_max_iter": 0} if skip else {}
        z, _ = self.deq(lambda z: self.f(z, us), z0, solver_kwargs=kwargs)
        return self.out(z[-1]), z[-1].detach()


def allocator():
    """Which malloc this process runs on: jemalloc when preloaded, else the C library's."""
    import os
    pre = os.environ.get("LD_PRELOAD", "")
    return "jemalloc (LD_PRELOAD)" if "jemalloc" in pre else "glibc malloc"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--instance", default=None,
                    help="read the coordinates, targets and initial weights written by "
                         "`deq-inr-bench --write-instance` (the identical problem on both sides)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    v = torch.linspace(-1, 1, args.size)
    x = torch.stack(torch.meshgrid(v, v, indexing="xy"), -1).reshape(-1, 2)
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    model = DeqInr(args.width, args.layers, 256.0)
    if args.instance:
        t = read_safetensors(args.instance)
        x, y = t["x"], t["y"]
        names = {"injection.weight": "inj.weight", "injection.bias": "inj.bias", "output.weight": "out.weight", "output.bias": "out.bias"}
        for i in range(args.layers):
            for k in ("weight_v", "weight_g", "bias"):
                names[f"z_map.{i}.{k}"] = f"f.maps.{i}.{k}"
        params = dict(model.named_parameters())
        if set(names.values()) != set(params):
            raise SystemExit(f"parameters {sorted(params)} do not match the instance's {sorted(names.values())}")
        with torch.no_grad():
            for rust, name in names.items():
                value = t.get("model." + rust)
                if value is None or value.numel() != params[name].numel():
                    raise SystemExit(f"{args.instance}: model.{rust} is missing or has the wrong size for {name}")
                params[name].copy_(value.reshape(params[name].shape))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cache = torch.zeros(x.shape[0], args.width)

    losses = []

    def step(skip):
        nonlocal cache
        opt.zero_grad()
        pred, cache = model(x, cache, skip)
        loss = ((pred - y) ** 2).mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()

    step(False)  # the full first solve
    step(True)  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(True)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"impl": "torchdeq", "workload": f"inr/siren_like-{args.layers}L{args.width}D/{args.size}x{args.size}/amortised_step",
                      "median_s": statistics.median(times), "min_s": min(times), "steps": len(times), "threads": args.threads,
                      "torch": torch.__version__, "allocator": allocator(), "instance": args.instance,
                      "first_loss": losses[0]}), flush=True)


if __name__ == "__main__":
    main()
