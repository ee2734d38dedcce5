#!/usr/bin/env python3
"""DEQ-Flow in PyTorch + TorchDEQ, built from one of deq-flow's TOML configurations, and the timing
of its training step: the twin of `deq-flow-bench` for `scripts/bench_flow_compare.sh`.

The model is written here from the DEQ-Flow / RAFT papers and the zoo's settings (RAFT's encoders
with instance and batch norm, the all-pairs correlation pyramid with grid_sample lookups, the
weight-normalised update block as TorchDEQ's fixed-point function over (hidden, coordinates), the
mask head and convex upsampling outside f), with the `[model]` and `[deq]` tables of the TOML.
One step = forward with the supervised states, the fixed-point correction loss, backward, gradient
clipping and an AdamW step, on a random batch of the configured size.

    pip install torch==2.15.0 torchdeq==0.1.0
    python3 scripts/bench_flow_torch.py --config configs/deq-flow/synthetic-tiny.toml --batch 4
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_io import read_toml_with_sets  # noqa: E402


def norm_layer(kind, ch):
    if kind == "instance":
        return nn.InstanceNorm2d(ch)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(max(ch // 8, 1), ch)
    return nn.Identity()


class Residual(nn.Module):
    def __init__(self, cin, planes, norm, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
        self.norm1, self.norm2 = norm_layer(norm, planes), norm_layer(norm, planes)
        self.down = None
        if stride != 1 or cin != planes:
            self.down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride), norm_layer(norm, planes))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.down is None else self.down(x)) + y)


class Encoder(nn.Module):
    def __init__(self, dims, out, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(3, dims[0], 7, 2, 3)
        self.norm1 = norm_layer(norm, dims[0])
        layers, cin = [], dims[0]
        for i, d in enumerate(dims):
            layers += [Residual(cin, d, norm, 1 if i == 0 else 2), Residual(d, d, norm, 1)]
            cin = d
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(dims[2], out, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.conv2(self.layers(F.relu(self.norm1(self.conv1(x)))))


class Corr:
    """The correlation pyramid and RAFT's lookup (x offset outer, align_corners=True)."""

    def __init__(self, f1, f2, levels, radius):
        b, d, h, w = f1.shape
        vol = torch.matmul(f1.view(b, d, h * w).transpose(1, 2), f2.view(b, d, h * w)) / math.sqrt(d)
        vol = vol.reshape(b * h * w, 1, h, w)
        self.pyr = [vol]
        for _ in range(levels - 1):
            vol = F.avg_pool2d(vol, 2, 2)
            self.pyr.append(vol)
        self.r = radius

    def __call__(self, coords):
        b, _, h, w = coords.shape
        c = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        r = self.r
        d = torch.linspace(-r, r, 2 * r + 1, device=coords.device, dtype=coords.dtype)
        # delta[p, q] = (d[p], d[q]) added as (x, y): the x offset is the outer index.
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for lvl, vol in enumerate(self.pyr):
            hl, wl = vol.shape[-2:]
            pts = c / 2 ** lvl + delta
            gx = 2 * pts[..., 0] / (wl - 1) - 1
            gy = 2 * pts[..., 1] / (hl - 1) - 1
            s = F.grid_sample(vol, torch.stack([gx, gy], -1), align_corners=True)
            out.append(s.view(b, h, w, -1))
        return torch.cat(out, -1).permute(0, 3, 1, 2).contiguous()


class Update(nn.Module):
    def __init__(self, m):
        super().__init__()
        side = 2 * m["corr_radius"] + 1
        corr = m["corr_levels"] * side * side
        c1, c2, f1, f2 = m["motion_dims"]
        hid, ctx, mo = m["hidden_dim"], m["context_dim"], m["motion_out"]
        self.convc1, self.convc2 = nn.Conv2d(corr, c1, 1), nn.Conv2d(c1, c2, 3, padding=1)
        self.convf1, self.convf2 = nn.Conv2d(2, f1, 7, padding=3), nn.Conv2d(f1, f2, 3, padding=1)
        self.conv = nn.Conv2d(c2 + f2, mo - 2, 3, padding=1)
        gin = hid + ctx + mo
        self.z1, self.r1, self.q1 = (nn.Conv2d(gin, hid, (1, 5), padding=(0, 2)) for _ in range(3))
        self.z2, self.r2, self.q2 = (nn.Conv2d(gin, hid, (5, 1), padding=(2, 0)) for _ in range(3))
        self.head1, self.head2 = nn.Conv2d(hid, m["head_dim"], 3, padding=1), nn.Conv2d(m["head_dim"], 2, 3, padding=1)

    def forward(self, h, ctx, corr, flow):
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        x = torch.cat([ctx, F.relu(self.conv(torch.cat([cor, flo], 1))), flow], 1)
        for z, r, q in ((self.z1, self.r1, self.q1), (self.z2, self.r2, self.q2)):
            hx = torch.cat([h, x], 1)
            zz, rr = torch.sigmoid(z(hx)), torch.sigmoid(r(hx))
            qq = torch.tanh(q(torch.cat([rr * h, x], 1)))
            h = (1 - zz) * h + zz * qq
        return h, self.head2(F.relu(self.head1(h)))


class DEQFlow(nn.Module):
    def __init__(self, m, deq_args):
        super().__init__()
        from torchdeq import get_deq
        from torchdeq.norm import apply_norm
        self.m = m
        self.fnet = Encoder(m["encoder_dims"], m["feature_dim"], m.get("feature_norm", "instance"))
        self.cnet = Encoder(m["encoder_dims"], m["context_dim"], m.get("context_norm", "batch"))
        self.update = Update(m)
        self.mask = nn.Sequential(nn.Conv2d(m["hidden_dim"], m["mask_dim"], 3, padding=1), nn.ReLU(), nn.Conv2d(m["mask_dim"], 576, 1))
        apply_norm(self.update, norm_type=deq_args.get("norm_type", "weight_norm"))
        self.deq = get_deq(deq_args)

    def upsample(self, flow, mask):
        n, _, h, w = flow.shape
        mask = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
        up = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
        up = torch.sum(mask * up, dim=2).permute(0, 1, 4, 2, 5, 3)
        return up.reshape(n, 2, 8 * h, 8 * w)

    def forward(self, img1, img2):
        from torchdeq.norm import reset_norm
        img1, img2 = 2 * (img1 / 255.0) - 1, 2 * (img2 / 255.0) - 1
        b = img1.shape[0]
        f1, f2 = self.fnet(torch.cat([img1, img2], 0)).split(b, 0)
        corr = Corr(f1, f2, self.m["corr_levels"], self.m["corr_radius"])
        ctx = F.relu(self.cnet(img1))
        _, _, h8, w8 = f1.shape
        ys, xs = torch.meshgrid(torch.arange(h8), torch.arange(w8), indexing="ij")
        coords0 = torch.stack([xs, ys], 0).float()[None].repeat(b, 1, 1, 1)
        reset_norm(self.update)
        all_grad = self.m.get("all_grad", False)

        def f(h, c):
            if not all_grad:
                c = c.detach()
            h, d = self.update(h, ctx, corr(c), c - coords0)
            return h, c + d

        h0 = torch.zeros(b, self.m["hidden_dim"], h8, w8)
        states, info = self.deq(f, (h0, coords0.clone()))
        return [self.upsample(c - coords0, 0.25 * self.mask(h)) for h, c in states]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/deq-flow/synthetic-tiny.toml")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--height", type=int, default=0, help="default: the config's crop")
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=10.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = read_toml_with_sets(args.config, args.sets)
    m, deq = cfg["model"], dict(cfg.get("deq", {}))
    train = cfg.get("train", {})
    crop = cfg["data"]["augment"]["crop"]
    h, w = args.height or crop[0], args.width or crop[1]
    if isinstance(deq.get("grad"), list) and len(deq["grad"]) == 1:
        deq["grad"] = deq["grad"][0]
    model = DEQFlow(m, deq)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=train.get("lr", 4e-4), weight_decay=train.get("weight_decay", 1e-4), eps=1e-8)
    gamma, max_flow = deq.get("gamma", 0.8), train.get("max_flow", 400.0)
    img1, img2 = torch.rand(args.batch, 3, h, w) * 255, torch.rand(args.batch, 3, h, w) * 255
    gt = torch.randn(args.batch, 2, h, w) * 5
    valid = torch.ones(args.batch, h, w)

    def step():
        flows = model(img1, img2)
        mask = ((valid >= 0.5) & (gt.norm(dim=1) < max_flow)).float()[:, None]
        n = len(flows)
        loss = sum(gamma ** (n - i - 1) * ((f - gt).abs() * mask).mean() for i, f in enumerate(flows))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.get("clip", 1.0))
        opt.step()
        return float(loss.detach())

    first = step()
    times, t_end = [], time.perf_counter() + args.min_time
    while len(times) < args.runs or time.perf_counter() < t_end:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"impl": "torch", "label": args.label, "batch": args.batch, "height": h, "width": w, "median_s": statistics.median(times), "runs": len(times), "params": params, "first_loss": first, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
