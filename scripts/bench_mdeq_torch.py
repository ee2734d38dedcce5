#!/usr/bin/env python3
"""Reference benchmark: one MDEQ-small training step in PyTorch + TorchDEQ.

The model is the DEQ Zoo's CIFAR-10 "small" multiscale DEQ (configs/small.yaml
+ run_small.sh), written from the architecture description rather than copied:

* stem: conv3x3(3->24, no bias) BN ReLU conv3x3(24->24, no bias) BN ReLU, both
  stride 1 (DOWNSAMPLE_TIMES = 0), no stage0 -- the stem output is the
  injection u for branch 0;
* f(z; u) over 2 branches of 24 channels at 32x32 and 16x16:
  - per branch: conv3x3(c->5c) GN ReLU conv3x3(5c->c) [+u on branch 0] GN
    (+z) ReLU GN, GroupNorm with 8 groups;
  - fusion: s_i = b_i + sum_j path_{j->i}(b_j) (upsample: conv1x1 GN nearest
    x2; downsample: conv3x3 stride 2 GN), then GN(4 groups)(conv1x1(ReLU(s_i)));
  - weight norm (torchdeq) on every conv inside f, recomputed once per step;
* head: per-branch Bottleneck (hd = [8, 16], expansion 4, inner BNs without
  affine, affine shortcut BN), conv3x3 stride 2 (bias) BN ReLU between
  branches, conv1x1(64->200, bias) BN ReLU, global average pool, Linear(200, 10).

The DEQ is torchdeq's default ("sliced") core: Broyden, 22 iterations,
tol 1e-3 (abs), phantom gradient with 5 steps and tau 0.5, no IFT.

One timed step = zero_grad, reset_norm, forward, cross-entropy, backward, SGD
step (lr 0.1, momentum 0.9, wd 1e-4). Output: one JSON line on stdout.

With --instance FILE (written by `mdeq-bench --write-instance`) the batch, the labels and
the initial weights are the Rust side's, so that both train the identical problem.

Usage:
    python3 scripts/bench_mdeq_torch.py --batch 32 --threads 2
    python3 scripts/bench_mdeq_torch.py --batch 2 --runs 1 --warmup 0 --min-time 0
"""

import argparse
import json
import statistics
import sys
import time

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_io import read_safetensors

try:
    from torchdeq import get_deq
    from torchdeq.norm import apply_norm, reset_norm
except ImportError:  # pragma: no cover - only hit when the package is missing
    sys.exit("torchdeq is not installed: pip install torch==2.15.0 torchdeq==0.1.0")


# ZOO CIFAR-10 SMALL configuration.
IN_CHANNELS = 3
NUM_CLASSES = 10
CHANNELS = [24, 24]          # per branch, finest resolution first
HEAD_CHANNELS = [8, 16]      # bottleneck widths (outputs are 4x these)
FINAL_CHANSIZE = 200
EXPANSION = 5
GROUPS = 8                   # post-fusion GN uses GROUPS // 2
DOWNSAMPLE_TIMES = 0         # stride-2 stem convs (1 or 2 of them; >0 adds stage0)
EXPECTED_PARAMS = 159_034


def configure(model):
    """Switches the architecture to a `[model]` table of a Rust `mdeq` config (a dict with the
    keys of `configs/mdeq/*.toml`); call before building `MDEQSmall`."""
    global IN_CHANNELS, NUM_CLASSES, CHANNELS, HEAD_CHANNELS, FINAL_CHANSIZE, EXPANSION, GROUPS
    global DOWNSAMPLE_TIMES
    known = {"in_channels", "num_classes", "channels", "head_channels", "final_chansize",
             "expansion", "groups", "downsample_times"}
    unknown = sorted(set(model) - known)
    if unknown:
        raise SystemExit(f"[model]: keys this PyTorch twin does not implement: {unknown}")
    IN_CHANNELS = model.get("in_channels", IN_CHANNELS)
    NUM_CLASSES = model.get("num_classes", NUM_CLASSES)
    CHANNELS = list(model.get("channels", CHANNELS))
    HEAD_CHANNELS = list(model.get("head_channels", HEAD_CHANNELS))
    FINAL_CHANSIZE = model.get("final_chansize", FINAL_CHANSIZE)
    EXPANSION = model.get("expansion", EXPANSION)
    GROUPS = model.get("groups", GROUPS)
    DOWNSAMPLE_TIMES = model.get("downsample_times", DOWNSAMPLE_TIMES)

DEQ_KWARGS = dict(
    f_solver="broyden",
    f_max_iter=22,
    f_tol=1e-3,
    f_stop_mode="abs",
    ift=False,
    grad=5,
    tau=0.5,
)


def conv3x3(cin, cout, stride=1, bias=False):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(cin, cout, bias=False):
    return nn.Conv2d(cin, cout, kernel_size=1, bias=bias)


# ---------------------------------------------------------------------------
# Inside f (GroupNorm, weight-normalised convs)
# ---------------------------------------------------------------------------

class BranchBlock(nn.Module):
    """Residual block of one branch; ReLU comes before the last GroupNorm."""

    def __init__(self, c):
        super().__init__()
        inner = EXPANSION * c
        self.conv1 = conv3x3(c, inner)
        self.gn1 = nn.GroupNorm(GROUPS, inner)
        self.conv2 = conv3x3(inner, c)
        self.gn2 = nn.GroupNorm(GROUPS, c)
        self.gn3 = nn.GroupNorm(GROUPS, c)

    def forward(self, z, u=None):
        t = F.relu(self.gn1(self.conv1(z)))
        t = self.conv2(t)
        if u is not None:          # injection: after conv2, before gn2
            t = t + u
        t = F.relu(self.gn2(t) + z)
        return self.gn3(t)


class Fusion(nn.Module):
    """Multiscale fusion (plain sum) followed by the post-fusion conv + GN."""

    def __init__(self, channels):
        super().__init__()
        nb = len(channels)
        self.paths = nn.ModuleList()
        for i in range(nb):
            row = nn.ModuleList()
            for j in range(nb):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    # coarser -> finer: conv1x1, GN, then nearest upsampling
                    row.append(nn.Sequential(
                        conv1x1(channels[j], channels[i]),
                        nn.GroupNorm(GROUPS, channels[i]),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    ))
                else:
                    # finer -> coarser: (i - j) stride-2 conv3x3 + GN stages,
                    # ReLU between them, the last one maps to channels[i]
                    stages = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = channels[i] if last else channels[j]
                        stages += [conv3x3(channels[j], cout, stride=2),
                                   nn.GroupNorm(GROUPS, cout)]
                        if not last:
                            stages.append(nn.ReLU())
                    row.append(nn.Sequential(*stages))
            self.paths.append(row)
        self.post = nn.ModuleList(
            nn.Sequential(nn.ReLU(), conv1x1(c, c), nn.GroupNorm(GROUPS // 2, c))
            for c in channels
        )

    def forward(self, b):
        out = []
        for i, row in enumerate(self.paths):
            s = b[i]
            for j, path in enumerate(row):
                if j != i:
                    s = s + path(b[j])
            out.append(self.post[i](s))
        return out


class DEQFunc(nn.Module):
    """f(z; u): per-branch blocks (injection into branch 0), then fusion."""

    def __init__(self, channels):
        super().__init__()
        self.blocks = nn.ModuleList(BranchBlock(c) for c in channels)
        self.fusion = Fusion(channels)

    def forward(self, z_list, u):
        b = [blk(z, u if i == 0 else None)
             for i, (blk, z) in enumerate(zip(self.blocks, z_list))]
        return self.fusion(b)


# ---------------------------------------------------------------------------
# Head (BatchNorm)
# ---------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """ResNet bottleneck, expansion 4; inner BNs have no affine parameters."""

    def __init__(self, cin, planes):
        super().__init__()
        cout = 4 * planes
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes, affine=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, affine=False)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout, affine=False)
        self.shortcut = None
        if cin != cout:
            self.shortcut = nn.Sequential(conv1x1(cin, cout), nn.BatchNorm2d(cout))

    def forward(self, x):
        t = F.relu(self.bn1(self.conv1(x)))
        t = F.relu(self.bn2(self.conv2(t)))
        t = self.bn3(self.conv3(t))
        s = x if self.shortcut is None else self.shortcut(x)
        return F.relu(t + s)


class Head(nn.Module):
    def __init__(self, channels, head_channels):
        super().__init__()
        self.incre = nn.ModuleList(
            Bottleneck(c, h) for c, h in zip(channels, head_channels))
        self.downsamp = nn.ModuleList(
            nn.Sequential(
                conv3x3(4 * head_channels[i], 4 * head_channels[i + 1],
                        stride=2, bias=True),
                nn.BatchNorm2d(4 * head_channels[i + 1]),
                nn.ReLU(),
            )
            for i in range(len(channels) - 1)
        )
        self.final = nn.Sequential(
            conv1x1(4 * head_channels[-1], FINAL_CHANSIZE, bias=True),
            nn.BatchNorm2d(FINAL_CHANSIZE),
            nn.ReLU(),
        )
        self.fc = nn.Linear(FINAL_CHANSIZE, NUM_CLASSES)

    def forward(self, z_list):
        y = self.incre[0](z_list[0])
        for i in range(1, len(z_list)):
            y = self.incre[i](z_list[i]) + self.downsamp[i - 1](y)
        y = self.final(y)
        return self.fc(y.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------
# Full model
# ---------------------------------------------------------------------------

class MDEQSmall(nn.Module):
    def __init__(self):
        super().__init__()
        c0 = CHANNELS[0]
        # DOWNSAMPLE_TIMES stride-2 stem convs (0 for CIFAR); stage0 (conv1x1 BN ReLU) when
        # downsampling or with more than two branches.
        s1 = 2 if DOWNSAMPLE_TIMES >= 1 else 1
        s2 = 2 if DOWNSAMPLE_TIMES >= 2 else 1
        stem = [conv3x3(IN_CHANNELS, c0, stride=s1), nn.BatchNorm2d(c0), nn.ReLU(),
                conv3x3(c0, c0, stride=s2), nn.BatchNorm2d(c0), nn.ReLU()]
        if DOWNSAMPLE_TIMES > 0 or len(CHANNELS) > 2:
            stem += [conv1x1(c0, c0), nn.BatchNorm2d(c0), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self.f = DEQFunc(CHANNELS)
        self.head = Head(CHANNELS, HEAD_CHANNELS)
        self.deq = get_deq(**DEQ_KWARGS)

        # Initialisation as in the zoo: weight norm is applied first, so the
        # normalised convs in f keep PyTorch's default init (v) with g = ||v||;
        # every other conv gets N(0, 0.01) weights and biases.  Norm layers
        # and the Linear keep PyTorch defaults (weight 1 / bias 0, uniform).
        apply_norm(self.f, norm_type="weight_norm")
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("f."):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.01)

        self.last_info = None

    def forward(self, x):
        u = self.stem(x)
        # Zero initial state per branch, resolutions halved (floor) per branch.
        b, _, h, w = u.shape
        z0 = []
        for c in CHANNELS:
            z0.append(torch.zeros(b, c, h, w, dtype=u.dtype, device=u.device))
            h, w = (h + 1) // 2, (w + 1) // 2
        # torchdeq's multi-tensor wrapper calls func(*branch_states).
        func = lambda *z: self.f(list(z), u)  # noqa: E731
        z_out, info = self.deq(func, z0)
        self.last_info = info
        return self.head(z_out[-1])


def torch_name(rust):
    """The parameter of this model that `mdeq-bench --write-instance` stores as `model.<rust>`."""
    rules = [
        (r"stem\.(\d+)\.conv\.(\w+)$", lambda m: f"stem.{3 * int(m[1])}.{m[2]}"),
        (r"stem\.(\d+)\.bn\.(\w+)$", lambda m: f"stem.{3 * int(m[1]) + 1}.{m[2]}"),
        (r"f\.block\.(\d+)\.(.+)$", lambda m: f"f.blocks.{m[1]}.{m[2]}"),
        (r"f\.fuse\.(\d+)\.(\d+)\.conv\.(\w+)$", lambda m: f"f.fusion.paths.{m[1]}.{m[2]}.0.{m[3]}"),
        (r"f\.fuse\.(\d+)\.(\d+)\.gn\.(\w+)$", lambda m: f"f.fusion.paths.{m[1]}.{m[2]}.1.{m[3]}"),
        (r"f\.fuse\.(\d+)\.(\d+)\.(\d+)\.conv\.(\w+)$", lambda m: f"f.fusion.paths.{m[1]}.{m[2]}.{3 * int(m[3])}.{m[4]}"),
        (r"f\.fuse\.(\d+)\.(\d+)\.(\d+)\.gn\.(\w+)$", lambda m: f"f.fusion.paths.{m[1]}.{m[2]}.{3 * int(m[3]) + 1}.{m[4]}"),
        (r"f\.post\.(\d+)\.conv\.(\w+)$", lambda m: f"f.fusion.post.{m[1]}.1.{m[2]}"),
        (r"f\.post\.(\d+)\.gn\.(\w+)$", lambda m: f"f.fusion.post.{m[1]}.2.{m[2]}"),
        (r"head\.incre\.(\d+)\.shortcut\.conv\.(\w+)$", lambda m: f"head.incre.{m[1]}.shortcut.0.{m[2]}"),
        (r"head\.incre\.(\d+)\.shortcut\.bn\.(\w+)$", lambda m: f"head.incre.{m[1]}.shortcut.1.{m[2]}"),
        (r"head\.incre\.(\d+)\.(conv\d)\.(\w+)$", lambda m: f"head.incre.{m[1]}.{m[2]}.{m[3]}"),
        (r"head\.downsamp\.(\d+)\.conv\.(\w+)$", lambda m: f"head.downsamp.{m[1]}.0.{m[2]}"),
        (r"head\.downsamp\.(\d+)\.bn\.(\w+)$", lambda m: f"head.downsamp.{m[1]}.1.{m[2]}"),
        (r"head\.final\.conv\.(\w+)$", lambda m: f"head.final.0.{m[1]}"),
        (r"head\.final\.bn\.(\w+)$", lambda m: f"head.final.1.{m[1]}"),
        (r"head\.fc\.(\w+)$", lambda m: f"head.fc.{m[1]}"),
    ]
    for pattern, to in rules:
        m = re.match(pattern, rust)
        if m:
            return to(m)
    raise SystemExit(f"no parameter of the PyTorch model corresponds to `{rust}`")


def load_instance(model, path):
    """Copies the Rust model's initial weights into `model`; returns the batch and labels."""
    t = read_safetensors(path)
    params = dict(model.named_parameters())
    done = set()
    for key, value in t.items():
        if not key.startswith("model."):
            continue
        name = torch_name(key[len("model."):])
        if name not in params:
            raise SystemExit(f"{path}: `{key}` maps to `{name}`, which this model does not have")
        p = params[name]
        if p.numel() != value.numel():
            raise SystemExit(f"{path}: `{key}` has {value.numel()} values, `{name}` {p.numel()}")
        with torch.no_grad():
            p.copy_(value.reshape(p.shape))
        done.add(name)
    missing = sorted(set(params) - done)
    if missing:
        raise SystemExit(f"{path}: no value for {missing}")
    return t["x"], t["labels"].long()


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="minimum timed runs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=5.0,
                    help="minimum total timed seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instance", default=None,
                    help="read the batch, labels and initial weights written by "
                         "`mdeq-bench --write-instance` (the identical problem on both sides)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--ift", action="store_true",
                    help="implicit differentiation instead of the 5-step phantom gradient")
    ap.add_argument("--f-max-iter", type=int, default=None,
                    help="forward (and with --ift backward) iterations, tolerance 0")
    ap.add_argument("--profile", action="store_true",
                    help="profile one extra step and print the top ops to stderr")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.ift:
        DEQ_KWARGS.update(ift=True, grad=1)
    if args.f_max_iter is not None:
        DEQ_KWARGS.update(f_max_iter=args.f_max_iter, b_max_iter=args.f_max_iter, f_tol=0.0, b_tol=0.0)
    dev = torch.device(args.device)

    model = MDEQSmall()
    model.train()
    n_params = count_params(model)
    print(f"params: {n_params}", file=sys.stderr)
    assert n_params == EXPECTED_PARAMS, f"expected {EXPECTED_PARAMS} params, got {n_params}"

    if args.instance:
        x, y = load_instance(model, args.instance)
        if tuple(x.shape) != (args.batch, IN_CHANNELS, 32, 32):
            raise SystemExit(f"{args.instance}: the batch is {tuple(x.shape)}, not {args.batch} CIFAR images")
    else:
        x = torch.randn(args.batch, IN_CHANNELS, 32, 32)
        y = torch.randint(0, NUM_CLASSES, (args.batch,))
    model.to(dev)
    x, y = x.to(dev), y.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad()
        reset_norm(model)  # recompute the weight-normed kernels once per step
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        sync()
        return model.last_info

    losses = []

    for _ in range(args.warmup):
        step()

    peak_mb = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20

    times, nfes = [], []
    total = 0.0
    while len(times) < args.runs or total < args.min_time:
        t0 = time.perf_counter()
        info = step()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
        if info is not None and "nstep" in info:
            nfes.append(float(info["nstep"].float().mean()))

    print(json.dumps({
        "workload": f"mdeq/cifar-small/train_step_b{args.batch}",
        "impl": "torchdeq",
        "median_s": statistics.median(times),
        "min_s": min(times),
        "n_runs": len(times),
        "threads": args.threads,
        "params": n_params,
        # torchdeq's info['nstep']: Broyden step with the lowest residual
        # (batch mean, averaged over the timed runs); f evaluations = nstep + 1.
        "nfe": statistics.mean(nfes) if nfes else None,
        "first_loss": losses[0] if losses else None,
        "instance": args.instance,
        "device": args.device, "ift": DEQ_KWARGS["ift"], "f_max_iter": DEQ_KWARGS["f_max_iter"],
        "peak_gpu_mb": peak_mb,
    }), flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
              file=sys.stderr)


if __name__ == "__main__":
    main()
