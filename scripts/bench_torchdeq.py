#!/usr/bin/env python3
"""Reference benchmark of TorchDEQ on PyTorch CPU.

Gives baseline numbers that the Rust DEQ solvers can be compared with.
Every workload uses the same small equilibrium layer

    f(z) = tanh(z W^T + x U^T)

with batch 64, width 256 and float32 tensors:

* W (256x256): standard normal, then rescaled so that its spectral norm
  (largest singular value) is exactly 0.9, which makes f a contraction;
* U (256x256): standard normal divided by sqrt(256);
* x (64x256): standard normal.

The input injection x U^T is recomputed inside every call of f, as the Rust
side does, so the cost of one function evaluation is two 64x256x256 matmuls
plus a tanh.

Workloads (names are fixed; the Rust benchmark uses the same ones):

* ``solve/fixed_point_iter``, ``solve/anderson``, ``solve/broyden``:
  one TorchDEQ solver call under ``torch.no_grad()`` from z0 = 0 with
  ``max_iter=50, tol=1e-5, stop_mode='abs'``; every other solver argument
  keeps its TorchDEQ default.
* ``solve_iters20/<solver>``: the same call with ``max_iter=20, tol=0``, so that
  both implementations do exactly 20 iterations (equal work).

With ``--problem FILE`` the instance (W, U, x, head, labels) is read from the
safetensors file ``deq-bench --write-problem FILE`` wrote, so that both sides
solve the identical problem; without it, it is drawn from ``--seed`` here.
* ``train_step/ift_anderson30_fp30``: one training step through a module
  built by ``torchdeq.get_deq`` (Anderson forward solve with 30 iterations,
  implicit-function-theorem backward solved by 30 fixed-point iterations),
  a 256->10 linear head and a cross-entropy loss against fixed random labels.
  The timed region is zero_grad + forward + loss.backward(); with ``--sgd``
  a plain SGD step is added (the ``includes_optimizer_step`` key says which).

Timing: 3 warm-up runs, then at least ``--runs`` timed runs, continuing until
``--min-time`` seconds of timed work have passed (capped by ``--max-runs``).
The median and minimum wall-clock times are reported.

Output: one JSON object per workload and line on stdout, e.g.

    {"impl": "torchdeq", "workload": "solve/anderson", "median_s": ..., ...}

``nfe`` is TorchDEQ's own ``info['nstep']`` averaged over the batch; the
``nfe_counted`` key is the number of calls of f actually made, which is not
always the same thing (see the notes below).

Notes on TorchDEQ 0.1.0 semantics (read from its source):

* The stopping test is ``max over the batch of ||f(z_b) - z_b||_2 < tol``,
  i.e. a per-sample L2 norm, worst sample decides.
* ``info['nstep']`` is the step at which the *lowest* residual was seen, per
  sample, not the number of steps run.  For ``fixed_point_iter`` and
  ``anderson`` a step is one f evaluation (Anderson's two start-up
  evaluations count as steps 1 and 2), so nstep equals the f-evaluation count
  when the last step is the best one.  ``broyden`` counts its first
  evaluation g(z0) as step 0, so it makes nstep + 1 evaluations.
* The returned iterate differs per solver: ``fixed_point_iter`` and
  ``anderson`` return f(z_k) for the best z_k while the recorded residual is
  ||f(z_k) - z_k||; ``broyden`` returns z_k itself.  ``residual_abs_max`` is
  therefore recomputed here from the returned z.
* Anderson's regulariser ``lam=1e-4`` is added to G G^T unscaled; once the
  per-sample residuals fall below ~1e-2 it dominates and Anderson slows to
  roughly plain averaging of the stored iterates, so on this problem it needs
  more evaluations than plain fixed-point iteration (lam=1e-8 fixes that, but
  the benchmark keeps the default on purpose).
* ``get_deq`` defaults to the ``'sliced'`` core, ``f_tol=1e-3`` and
  ``b_tol=1e-6``; the train step keeps those defaults unless
  ``--train-f-tol`` / ``--train-b-tol`` are given.

Usage:

    pip install torch==2.15.0 torchdeq==0.1.0
    python scripts/bench_torchdeq.py                       # all workloads
    python scripts/bench_torchdeq.py --workload solve/     # substring filter
    python scripts/bench_torchdeq.py --runs 50 --threads 1
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_io import read_safetensors

try:
    import torchdeq
    from torchdeq import get_deq
    from torchdeq.solver import get_solver
except ImportError:  # pragma: no cover - only hit when the package is missing
    sys.exit("torchdeq is not installed: pip install torch==2.15.0 torchdeq==0.1.0")

try:
    from importlib.metadata import version as _dist_version
    TORCHDEQ_VERSION = _dist_version("torchdeq")
except Exception:  # pragma: no cover
    TORCHDEQ_VERSION = getattr(torchdeq, "__version__", "unknown")


BATCH = 64
WIDTH = 256
N_CLASSES = 10
SPECTRAL_NORM = 0.9
WARMUP_RUNS = 3

# Solver settings shared by the three solve/* workloads.  Everything not
# listed keeps TorchDEQ's default (Anderson: m=6, lam=1e-4, tau=1.0;
# Broyden: LBFGS_thres=None, ls=False; fixed point: tau=1.0;
# return_final=False for all).
SOLVE_KWARGS = dict(max_iter=50, tol=1e-5, stop_mode="abs")

SOLVE_WORKLOADS = {
    "solve/fixed_point_iter": "fixed_point_iter",
    "solve/anderson": "anderson",
    "solve/broyden": "broyden",
    # Equal work: exactly 20 iterations (tolerance 0) for both implementations.
    "solve_iters20/fixed_point_iter": "fixed_point_iter",
    "solve_iters20/anderson": "anderson",
    "solve_iters20/broyden": "broyden",
}
EQUAL_WORK_KWARGS = dict(max_iter=20, tol=0.0, stop_mode="abs")
TRAIN_WORKLOAD = "train_step/ift_anderson30_fp30"
ALL_WORKLOADS = list(SOLVE_WORKLOADS) + [TRAIN_WORKLOAD]


class Problem(nn.Module):
    """Holds W, U, x, the head and the labels; ``f`` is the DEQ layer."""

    def __init__(self, seed, path=None):
        super().__init__()
        if path is not None:
            self._load(path)
            return
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(WIDTH, WIDTH, generator=gen)
        # Rescale in float64 so the float32 result is as close to 0.9 as the
        # format allows.
        w64 = w.double()
        w64 = w64 * (SPECTRAL_NORM / torch.linalg.matrix_norm(w64, ord=2))
        u = torch.randn(WIDTH, WIDTH, generator=gen) / WIDTH ** 0.5
        x = torch.randn(BATCH, WIDTH, generator=gen)
        labels = torch.randint(0, N_CLASSES, (BATCH,), generator=gen)

        self.W = nn.Parameter(w64.float())
        self.U = nn.Parameter(u)
        self.head = nn.Linear(WIDTH, N_CLASSES)
        with torch.no_grad():  # deterministic head init from the same stream
            bound = 1.0 / WIDTH ** 0.5
            self.head.weight.copy_(
                torch.rand(N_CLASSES, WIDTH, generator=gen) * 2 * bound - bound)
            self.head.bias.copy_(
                torch.rand(N_CLASSES, generator=gen) * 2 * bound - bound)
        self.register_buffer("x", x)
        self.register_buffer("labels", labels)

    def _load(self, path):
        """The instance written by ``deq-bench --write-problem`` (identical on both sides)."""
        t = read_safetensors(path)
        self.W = nn.Parameter(t["w"])
        self.U = nn.Parameter(t["u"])
        self.head = nn.Linear(WIDTH, N_CLASSES)
        with torch.no_grad():
            self.head.weight.copy_(t["head_w"])
            self.head.bias.copy_(t["head_b"])
        self.register_buffer("x", t["x"])
        self.register_buffer("labels", t["labels"].long())

    def f(self, z):
        # x U^T is deliberately recomputed on every call.
        return torch.tanh(z @ self.W.t() + self.x @ self.U.t())

    def residual(self, z):
        """Per-sample ||f(z) - z||_2 (max over batch) and batch Frobenius norm."""
        with torch.no_grad():
            r = self.f(z) - z
            return r.norm(dim=1).max().item(), r.norm().item()


class CountingF:
    """Wraps a function and counts its calls (used only in untimed probes)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.fn(z)


def time_runs(step, runs, min_time, max_runs):
    """Warm up, then time ``step`` until enough runs and time have passed."""
    for _ in range(WARMUP_RUNS):
        step()
    times = []
    total = 0.0
    while len(times) < max_runs and (len(times) < runs or total < min_time):
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return times


def timing_fields(times):
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "n_runs": len(times),
        "warmup_runs": WARMUP_RUNS,
    }


def bench_solve(problem, workload, args):
    solver_name = SOLVE_WORKLOADS[workload]
    solver = get_solver(solver_name)

    kwargs = EQUAL_WORK_KWARGS if workload.startswith("solve_iters20/") else SOLVE_KWARGS

    def run(fn):
        with torch.no_grad():
            z0 = torch.zeros(BATCH, WIDTH)
            return solver(fn, z0, **kwargs)

    # Untimed probe: statistics and the real number of f calls.
    counter = CountingF(problem.f)
    z_star, _, info = run(counter)
    res_max, res_fro = problem.residual(z_star)

    times = time_runs(lambda: run(problem.f), args.runs, args.min_time,
                      args.max_runs)
    return {
        **timing_fields(times),
        "nfe": info["nstep"].float().mean().item(),
        "nfe_max": info["nstep"].max().item(),
        "nfe_counted": counter.calls,
        "solver_abs_lowest_max": info["abs_lowest"].max().item(),
        "residual_abs_max": res_max,
        "residual_abs_fro": res_fro,
        "converged": bool(info["abs_lowest"].max().item() < kwargs["tol"]),
        "solver": solver_name,
        "solver_kwargs": kwargs,
    }


def bench_train(problem, args):
    deq_kwargs = dict(
        f_solver="anderson", f_max_iter=30,
        b_solver="fixed_point_iter", b_max_iter=30,
        ift=True,
    )
    if args.train_f_tol is not None:
        deq_kwargs["f_tol"] = args.train_f_tol
    if args.train_b_tol is not None:
        deq_kwargs["b_tol"] = args.train_b_tol
    deq = get_deq(**deq_kwargs)
    deq.train()
    problem.train()
    params = [problem.W, problem.U, *problem.head.parameters()]
    opt = torch.optim.SGD(params, lr=args.lr) if args.sgd else None

    def step(fn=problem.f, writer=None):
        problem.zero_grad(set_to_none=True)
        z0 = torch.zeros(BATCH, WIDTH)
        z_out, info = deq(fn, z0, backward_writer=writer)
        logits = problem.head(z_out[-1])
        loss = F.cross_entropy(logits, problem.labels)
        loss.backward()
        if opt is not None:
            opt.step()
        return loss, info

    # Untimed probe on a copy of the state so a --sgd run starts identically.
    state = {k: v.clone() for k, v in problem.state_dict().items()}
    counter = CountingF(problem.f)
    b_infos = []
    loss, f_info = step(counter, writer=b_infos.append)
    problem.load_state_dict(state)
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum()
                               for p in params if p.grad is not None)).item()
    b_info = b_infos[-1] if b_infos else None

    times = time_runs(step, args.runs, args.min_time, args.max_runs)
    problem.load_state_dict(state)

    return {
        **timing_fields(times),
        # Forward Anderson steps at the lowest residual (batch mean).
        "nfe": f_info["nstep"].float().mean().item(),
        "f_abs_lowest_max": f_info["abs_lowest"].max().item(),
        "b_nstep": (b_info["nstep"].float().mean().item()
                    if b_info is not None else None),
        "b_abs_lowest_max": (b_info["abs_lowest"].max().item()
                             if b_info is not None else None),
        # All calls of f in one step: forward solve, the one grad-tracked
        # call of the IFT layer, and its re-evaluation inside backward
        # (the 30 backward iterations are VJPs, not f calls).
        "f_calls_counted": counter.calls,
        "loss": loss.item(),
        "grad_norm": grad_norm,
        "includes_optimizer_step": opt is not None,
        "timed_region": ("zero_grad+forward+backward"
                         + ("+sgd_step" if opt is not None else "")),
        "deq_kwargs": deq_kwargs,
        "resolved": {
            "core": deq.args.get("core", "sliced"),
            "f_tol": deq.f_tol, "b_tol": deq.b_tol,
            "f_stop_mode": deq.f_stop_mode, "b_stop_mode": deq.b_stop_mode,
            "f_max_iter": deq.f_max_iter, "b_max_iter": deq.b_max_iter,
        },
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Workloads: " + ", ".join(ALL_WORKLOADS))
    ap.add_argument("--runs", type=int, default=20,
                    help="minimum number of timed runs (default 20)")
    ap.add_argument("--min-time", type=float, default=10.0,
                    help="keep timing until this many seconds have been "
                         "spent in timed runs (default 10)")
    ap.add_argument("--max-runs", type=int, default=2000,
                    help="upper bound on timed runs (default 2000)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads value (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--problem", default=None,
                    help="read the instance from this safetensors file (written by "
                         "`deq-bench --write-problem`) instead of drawing it from --seed")
    ap.add_argument("--workload", action="append", default=None,
                    help="run only workloads whose name contains this "
                         "string; may be repeated")
    ap.add_argument("--sgd", action="store_true",
                    help="include an SGD step in the timed train step")
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="SGD learning rate when --sgd is given")
    ap.add_argument("--train-f-tol", type=float, default=None,
                    help="override get_deq f_tol (TorchDEQ default 1e-3)")
    ap.add_argument("--train-b-tol", type=float, default=None,
                    help="override get_deq b_tol (TorchDEQ default 1e-6)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    selected = [w for w in ALL_WORKLOADS
                if args.workload is None
                or any(s in w for s in args.workload)]
    if not selected:
        ap.error("no workload matches " + repr(args.workload))

    problem = Problem(args.seed, args.problem)
    w_norm = torch.linalg.matrix_norm(problem.W.detach().double(), ord=2).item()

    common = {
        "impl": "torchdeq",
        "torch_version": torch.__version__,
        "torchdeq_version": TORCHDEQ_VERSION,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "width": WIDTH,
        "dtype": "f32",
        "seed": args.seed,
        "problem": args.problem or f"seed {args.seed}",
        "w_spectral_norm": w_norm,
    }

    for workload in selected:
        if workload == TRAIN_WORKLOAD:
            result = bench_train(problem, args)
        else:
            result = bench_solve(problem, workload, args)
        line = {"workload": workload, **common, **result}
        if hasattr(os, "getloadavg"):
            line["loadavg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
