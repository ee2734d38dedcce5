#!/usr/bin/env python3
"""PyTorch + TorchDEQ twin of `mdeq train --config FILE`: the same model, solver and recipe.

Reads a Rust `mdeq` config (`configs/mdeq/mnist-small.toml` by default; the keys of its
`[model]`, `[deq]`, `[train]` and `[data]` tables), builds the architecture of
`scripts/bench_mdeq_torch.py` configured from `[model]`, wraps it with TorchDEQ's `get_deq`
(the `[deq]` table as keyword arguments, weight norm on `f` recomputed every step) and trains it
on MNIST read from the IDX files (`datasets/mnist`, or `--data-dir`) with the same schedule as
the Rust trainer: SGD or Adam, per-step linear warm-up then cosine decay to `min_lr`, one test
evaluation per epoch. Writes the Rust trainer's `metrics.jsonl` keys (`epoch`, `step`, `lr`,
`train_loss`, `train_acc`, `test_acc`, `test_loss`, `epoch_train_seconds`, `elapsed_seconds`)
to `--out/metrics.jsonl`, so that `scripts/mdeq_time_to_acc.py` reads both runs alike.

Differences that remain: PyTorch's initialisation and random streams (shuffling), not the Rust
trainer's; TorchDEQ's Anderson (absolute `lam`; see README, "Where TorchDEQ is wrong").

Usage:
    python3 scripts/train_mdeq_torch.py --config configs/mdeq/mnist-small.toml --out runs/mdeq-torch
    python3 scripts/train_mdeq_torch.py --set train.epochs=1 --set train.train_limit=1024 --out /tmp/t
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_mdeq_torch as arch  # noqa: E402
from bench_io import read_toml_with_sets  # noqa: E402

try:
    from torchdeq import get_deq
    from torchdeq.norm import apply_norm, reset_norm
except ImportError:  # pragma: no cover
    sys.exit("torchdeq is not installed: pip install torch==2.15.0 torchdeq==0.1.0")

# The Rust trainer's defaults for the keys a config may leave out.
TRAIN_DEFAULTS = dict(epochs=6, batch_size=128, eval_batch_size=500, optimizer="sgd", lr=0.1,
                      momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="cosine",
                      warmup_epochs=0.0, min_lr=0.0, seed=0, threads=0, train_limit=0,
                      test_limit=0, grad_clip=0.0)
# `[deq]` keys passed to TorchDEQ's get_deq as they are.
DEQ_KEYS = {"f_solver", "b_solver", "f_max_iter", "b_max_iter", "f_tol", "b_tol", "f_stop_mode",
            "b_stop_mode", "eval_factor", "eval_f_max_iter", "ift", "hook_ift", "grad", "tau",
            "sup_gap", "sup_loc", "core", "n_states", "indexing", "gamma"}


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise SystemExit(f"{path}: truncated IDX header")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != math.prod(dims):
        raise SystemExit(f"{path}: {len(body)} bytes for dims {dims}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def load_mnist(root, split, mean, std, limit):
    prefix = "train" if split == "train" else "t10k"
    find = lambda stem: next((os.path.join(root, stem + ext) for ext in (".gz", "")  # noqa: E731
                              if os.path.exists(os.path.join(root, stem + ext))), None)
    img, lab = find(f"{prefix}-images-idx3-ubyte"), find(f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise SystemExit(f"{root}: no MNIST {split} IDX files")
    x = read_idx(img).float().div_(255.0).unsqueeze(1)
    y = read_idx(lab).long()
    if limit:
        x, y = x[:limit], y[:limit]
    return (x - mean) / std, y


def lr_at(t, step, steps_per_epoch):
    """The Rust trainer's schedule (deq_train::Schedule)."""
    base = t["lr"]
    if t["schedule"] == "constant":
        return base
    if t["schedule"] != "cosine":
        raise SystemExit(f"train.schedule = {t['schedule']!r}: this twin implements constant and cosine")
    total = t["epochs"] * steps_per_epoch
    warm = round(t["warmup_epochs"] * steps_per_epoch)
    if step < warm:
        return base * (step + 1) / warm
    progress = min((step - warm) / max(total - warm, 1), 1.0)
    return t["min_lr"] + 0.5 * (base - t["min_lr"]) * (1 + math.cos(math.pi * progress))


def evaluate(model, x, y, batch):
    model.eval()
    correct, loss, nfe = 0, 0.0, []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits = model(x[i:i + batch])
            loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
            info = model.last_info
            if info is not None and "nstep" in info:
                nfe.append(float(info["nstep"].float().mean()))
    model.train()
    return correct / len(y), loss / len(y), (sum(nfe) / len(nfe) if nfe else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/mdeq/mnist-small.toml")
    ap.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    ap.add_argument("--out", required=True, help="run folder (metrics.jsonl)")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the MNIST IDX files (default: $DEQ_DATA_DIR/mnist or datasets/mnist)")
    ap.add_argument("--threads", type=int, default=None, help="default: train.threads, else 2")
    args = ap.parse_args()

    cfg = read_toml_with_sets(args.config, args.set)
    unknown = sorted(set(cfg) - {"model", "deq", "train", "data"})
    if unknown:
        raise SystemExit(f"{args.config}: unknown tables {unknown}")
    t = dict(TRAIN_DEFAULTS)
    for k, v in cfg.get("train", {}).items():
        if k not in TRAIN_DEFAULTS and k not in ("dtype", "keep_checkpoints"):
            raise SystemExit(f"train.{k}: not implemented by this twin")
        t[k] = v
    if t.get("dtype", "f32") != "f32":
        raise SystemExit("train.dtype: this twin trains in f32")
    data = cfg.get("data", {})
    if data.get("dataset", "mnist") != "mnist":
        raise SystemExit(f"data.dataset = {data.get('dataset')!r}: this twin reads MNIST only")
    if data.get("crop_padding", 0) or data.get("flip", False):
        raise SystemExit("data.crop_padding / data.flip: this twin has no augmentation")
    deq = cfg.get("deq", {})
    norm_type = deq.get("norm_type", "weight_norm")
    deq_kwargs = {k: v for k, v in deq.items() if k in DEQ_KEYS}
    other = sorted(set(deq) - DEQ_KEYS - {"norm_type"})
    if other:
        raise SystemExit(f"[deq] keys this twin does not pass on: {other}")

    threads = args.threads or t["threads"] or 2
    torch.set_num_threads(threads)
    torch.manual_seed(t["seed"])

    root = args.data_dir or data.get("dir") or ""
    if not root:
        env = os.environ.get("DEQ_DATA_DIR")
        root = os.path.join(env, "mnist") if env and os.path.isdir(os.path.join(env, "mnist")) else "datasets/mnist"
    mean, std = data.get("mean", [0.1307])[0], data.get("std", [0.3081])[0]
    xtr, ytr = load_mnist(root, "train", mean, std, t["train_limit"])
    xte, yte = load_mnist(root, "test", mean, std, t["test_limit"])

    arch.configure(cfg.get("model", {}))
    arch.DEQ_KWARGS.clear()
    arch.DEQ_KWARGS.update(deq_kwargs)
    model = arch.MDEQSmall()
    if norm_type != "weight_norm":
        raise SystemExit(f"deq.norm_type = {norm_type!r}: this twin applies weight_norm only")
    model.train()
    n_params = arch.count_params(model)

    if t["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                              nesterov=t["nesterov"], weight_decay=t["weight_decay"])
    elif t["optimizer"] in ("adam", "adamw"):
        cls = torch.optim.Adam if t["optimizer"] == "adam" else torch.optim.AdamW
        opt = cls(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    else:
        raise SystemExit(f"train.optimizer = {t['optimizer']!r}")

    os.makedirs(args.out, exist_ok=True)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    bs = t["batch_size"]
    steps_per_epoch = math.ceil(len(ytr) / bs)
    gen = torch.Generator().manual_seed(t["seed"])
    print(f"params {n_params}, train {len(ytr)}, test {len(yte)}, {steps_per_epoch} steps/epoch, "
          f"{threads} threads", file=sys.stderr)
    start = time.perf_counter()
    step = 0
    for epoch in range(t["epochs"]):
        t0 = time.perf_counter()
        perm = torch.randperm(len(ytr), generator=gen)
        loss_sum, correct, seen, nfes = 0.0, 0, 0, []
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            x, y = xtr[idx], ytr[idx]
            lr = lr_at(t, step, steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            reset_norm(model)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if t["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            info = model.last_info
            if info is not None and "nstep" in info:
                nfes.append(float(info["nstep"].float().mean()))
            if b % 50 == 0:
                print(f"epoch {epoch + 1} step {b}/{steps_per_epoch} loss {loss_sum / seen:.4f} "
                      f"acc {correct / seen:.4f} lr {lr:.4f} {time.perf_counter() - t0:.0f}s",
                      file=sys.stderr, flush=True)
        train_secs = time.perf_counter() - t0
        reset_norm(model)
        acc, tloss, tnfe = evaluate(model, xte, yte, t["eval_batch_size"])
        rec = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / seen,
               "train_acc": correct / seen, "train_mean_nfe": (sum(nfes) / len(nfes) if nfes else None),
               "test_acc": acc, "test_loss": tloss, "test_mean_nfe": tnfe,
               "epoch_train_seconds": train_secs, "elapsed_seconds": time.perf_counter() - start,
               "impl": "torchdeq", "params": n_params, "threads": threads}
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        print(f"epoch {epoch + 1}: train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f} | "
              f"test acc {acc:.4f} loss {tloss:.4f} | {train_secs:.0f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
