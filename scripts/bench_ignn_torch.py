"""IGNN training epoch on PyTorch + TorchDEQ (CPU), the counterpart of `ignn-bench`.

The zoo's ImplicitGraph layer (features as columns, torch.sparse products, the row-wise
L1-ball projection of W in numpy as in the IGNN code) with the model and solver of
configs/ignn/cora.toml: one implicit layer with the Omega_2 skip term, dropout 0.5 on the
input and before a linear readout, Adam 0.01 with weight decay 5e-4, per-parameter gradient
clipping 0.5, Anderson forward (50 iterations, tol 1e-4), implicit backward by fixed-point
iteration (50, tol 1e-5). Graphs: Cora from datasets/cora, or a random graph (edges / 2 random
pairs stored both ways, dense N(0, 1) features, 8 random classes, every 10th node trains).
With `--instance FILE` (written by `ignn-bench --write-instance`) the initial weights, and for
the random graph the graph itself, are the Rust side's, so that both train the identical
problem (the dropout masks still come from each side's own generator). Prints one JSON line.

    python3 scripts/bench_ignn_torch.py --graph cora --threads 2
"""

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch

from bench_io import read_safetensors
import torch.nn as nn
import torch.nn.functional as F

try:
    from torchdeq import get_deq
except ImportError:  # pragma: no cover
    sys.exit("torchdeq is not installed: pip install torch==2.15.0 torchdeq==0.1.0")

DEQ_KWARGS = dict(f_solver="anderson", f_max_iter=50, f_tol=1e-4, b_solver="fixed_point_iter", b_max_iter=50, b_tol=1e-5, ift=True)


def rss(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def load_cora(root):
    meta = dict(l.split(None, 1) for l in open(f"{root}/meta.txt") if l.strip())
    n, p, c = int(meta["nodes"]), int(meta["features"]), int(meta["classes"])
    edges = [tuple(map(int, l.split())) for l in open(f"{root}/edges.txt") if l.strip()]
    loops = [int(l.split()[0]) for l in open(f"{root}/self_loops.txt") if l.strip()]
    src = [a for a, b in edges] + [b for a, b in edges] + loops
    dst = [b for a, b in edges] + [a for a, b in edges] + loops
    x = np.zeros((n, p), dtype=np.float32)
    for l in open(f"{root}/features.txt"):
        t = l.split()
        if not t:
            continue
        for e in t[2:]:
            j, v = e.split(":")
            x[int(t[0]), int(j)] = float(v)
    s = x.sum(1, keepdims=True)
    x = np.where(s > 0, x / np.where(s > 0, s, 1), x)
    y = np.array([max(int(l), 0) for l in open(f"{root}/labels.txt") if l.strip()])
    split = {l.split()[0]: [int(v) for v in l.split()[1].split(",") if v] for l in open(f"{root}/split.txt") if l.strip()}
    return n, np.array(src), np.array(dst), np.ones(len(src), dtype=np.float32), x, y, c, split["train"]


def random_graph(n, e, p, seed=7):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, e // 2)
    b = rng.integers(0, n, e // 2)
    src, dst = np.concatenate([a, b]), np.concatenate([b, a])
    x = rng.standard_normal((n, p), dtype=np.float32)
    y = rng.integers(0, 8, n)
    return n, src, dst, np.ones(len(src), dtype=np.float32), x, y, 8, list(range(0, n, 10))


def aug_normalized(n, src, dst, w):
    deg = np.ones(n)
    np.add.at(deg, src, np.abs(w))
    inv = 1.0 / np.sqrt(deg)
    s = np.concatenate([src, np.arange(n)])
    d = np.concatenate([dst, np.arange(n)])
    v = np.concatenate([w * inv[src] * inv[dst], inv * inv]).astype(np.float32)
    return s, d, v


def lambda_pf(n, s, d, v, iters=10000):
    x = np.full(n, 1.0 / math.sqrt(n))
    lam = 0.0
    for _ in range(iters):
        y = x.copy()
        np.add.at(y, d, np.abs(v) * x[s])
        norm = np.linalg.norm(y)
        nxt = norm / np.linalg.norm(x) - 1.0
        x = y / norm
        if abs(nxt - lam) <= 1e-9 * max(abs(nxt), 1e-12):
            return nxt
        lam = nxt
    return lam


def projection_norm_inf(W, kappa):
    """The IGNN code's projection: each row of W onto the L1 ball of radius kappa (numpy)."""
    A = W.detach().cpu().numpy().copy()
    x = np.abs(A).sum(axis=-1)
    for idx in np.where(x > kappa)[0]:
        a_abs = np.abs(A[idx])
        a = np.sort(a_abs)
        s, l = a.sum() - kappa, float(len(a))
        for i in range(len(a)):
            if s / l > a[i]:
                s -= a[i]
                l -= 1
            else:
                break
        A[idx] = np.sign(A[idx]) * np.maximum(a_abs - s / l, 0)
    W.data.copy_(torch.from_numpy(A))


class ImplicitGraph(nn.Module):
    def __init__(self, p, m, kappa):
        super().__init__()
        s = 1.0 / math.sqrt(m)
        self.W = nn.Parameter(torch.empty(m, m).uniform_(-s, s))
        self.Omega_1 = nn.Parameter(torch.empty(m, p).uniform_(-s, s))
        self.Omega_2 = nn.Parameter(torch.empty(m, p).uniform_(-s, s))
        self.kappa = kappa
        self.deq = get_deq(**DEQ_KWARGS)
        self.last_info = None

    def forward(self, A, At, U, rho):
        projection_norm_inf(self.W, self.kappa / rho)
        b1 = torch.sparse.mm(At, U @ self.Omega_1.T).T  # (m, n): Omega_1 U A
        B = b1 + (U @ self.Omega_2.T).T
        W = self.W

        calls = [0]

        def func(X):
            calls[0] += 1
            return F.relu(torch.sparse.mm(At, (W @ X).T).T + B)

        out, info = self.deq(func, torch.zeros_like(B))
        self.last_info = info
        # Calls of f during the forward pass: the solver's, plus the one call that builds the
        # graph for the implicit backward.
        self.last_calls = calls[0]
        return out[-1].T  # (n, m)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graph", default="cora")
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fixed-iters", type=int, default=0,
                    help="equal-work mode: fixed-point iteration with tolerance 0, this many steps forward and backward")
    ap.add_argument("--instance", default=None,
                    help="read the instance written by `ignn-bench --write-instance` (initial weights; the random graph)")
    args = ap.parse_args()
    if args.fixed_iters > 0:
        DEQ_KWARGS.update(f_solver="fixed_point_iter", f_max_iter=args.fixed_iters, f_tol=0.0, b_max_iter=args.fixed_iters, b_tol=0.0)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_at_start = rss("VmRSS:")
    inst = read_safetensors(args.instance) if args.instance else None
    if args.graph == "cora":
        n, src, dst, w, x, y, c, train = load_cora("datasets/cora")
        hidden = 64
    else:
        if inst is not None:
            x = inst["features"].numpy()
            n = x.shape[0]
            src, dst = inst["graph.src"].long().numpy(), inst["graph.dst"].long().numpy()
            w = inst["graph.weight"].numpy()
            y = inst["labels"].long().numpy()
            c = int(y.max()) + 1
            train = inst["train"].long().tolist()
        else:
            n, src, dst, w, x, y, c, train = random_graph(args.nodes, args.edges, args.features)
        hidden = args.hidden
    s, d, v = aug_normalized(n, src, dst, w)
    rho = lambda_pf(n, s, d, v) + 1e-5
    # At[j, i] = A[i, j]: At @ X^T sums over in-edges.
    At = torch.sparse_coo_tensor(np.stack([d, s]), torch.from_numpy(v), (n, n)).coalesce()
    U = torch.from_numpy(x)
    Y = torch.from_numpy(y)
    idx = torch.tensor(train)
    layer = ImplicitGraph(U.shape[1], hidden, 0.9)
    readout = nn.Linear(hidden, c, bias=False)
    if inst is not None:
        # The Rust model's initial weights (same layouts: W (m, m), Omega (m, p), readout (c, m)).
        with torch.no_grad():
            for t, key in [(layer.W, "model.ignn.w"), (layer.Omega_1, "model.ignn.omega1"), (layer.Omega_2, "model.ignn.omega2"), (readout.weight, "model.readout")]:
                if tuple(inst[key].shape) != tuple(t.shape):
                    raise SystemExit(f"{args.instance}: {key} is {tuple(inst[key].shape)}, expected {tuple(t.shape)}")
                t.copy_(inst[key])
    params = list(layer.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=0.01, weight_decay=5e-4)

    def epoch():
        opt.zero_grad()
        u = F.dropout(U, 0.5, training=True)
        h = F.dropout(layer(None, At, u, rho), 0.5, training=True)  # (n, m)
        loss = F.cross_entropy(readout(h)[idx], Y[idx])
        loss.backward()
        for p in params:
            torch.nn.utils.clip_grad_norm_(p, 0.5)
        opt.step()
        # Solver evaluations of f, counted (not TorchDEQ's batch-mean nstep: with Anderson the
        # zoo's layer solves every feature row as its own sample).
        return float(layer.last_calls - 1)

    t0 = time.perf_counter()
    epoch()  # warm-up
    times, nfes = [], []
    for _ in range(args.epochs):
        a = time.perf_counter()
        nfes.append(epoch())
        times.append(time.perf_counter() - a)
    times.sort()
    print(json.dumps({
        "impl": "torchdeq", "graph": args.graph, "fixed_iters": args.fixed_iters, "nodes": n, "directed_edges": len(src), "features": U.shape[1], "hidden": hidden,
        "threads": args.threads, "epoch_median_s": statistics.median(times), "epoch_min_s": times[0], "epochs_timed": len(times),
        # Counted calls of f by the forward solver (the graph-building call excluded).
        "train_fwd_nfe_mean": statistics.mean(nfes), "rss_at_start_bytes": rss_at_start, "peak_rss_bytes": rss("VmHWM:"),
        "total_s": time.perf_counter() - t0, "torch": torch.__version__, "instance": args.instance,
    }), flush=True)


if __name__ == "__main__":
    main()
