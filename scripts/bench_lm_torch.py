#!/usr/bin/env python3
"""Reference DEQ Transformer LM (TorchDEQ's DEQ Zoo `deq-lm`) in PyTorch + TorchDEQ.

The model mirrors `crates/deq-lm` (written from its description and the zoo's, not copied):
embedding (x sqrt(d_model)) -> input dropout, mask (B, 1, D) -> one injection
Linear(D -> 3*H*Dh, bias) added to q/k/v over [memory; segment] -> f = n_layer pre-LN blocks,
each `z + drop(W_o LN2(attn(LN1([mem; z]))) + b_o)` then `x + drop2(W2 drop1(relu(W1 LN(x) + b1)) + b2)`
with Transformer-XL relative attention (sinusoidal positions: sines then cosines, descending
distances, position dropout (1, 1, D), learned r_w/r_r biases, rel_shift, causal mask; q/k/v
interleaved per head), weight norm (torchdeq `apply_norm`) on every linear map inside f,
variational dropout masks (B, 1, features) redrawn per forward (`reset_deq`) -> DEQ
(`torchdeq.get_deq` with the config's [deq] section) from z0 = 0 -> output dropout of whole
positions, mask (B, L, 1) -> tied softmax (output weight = the embedding, own zero bias).
The memory is the last mem_len fixed points and injections (detached), reset each epoch and
each evaluation. Adam, linear warm-up then cosine to 0 at max_step (deq_train::Schedule::Cosine:
step s < warmup uses lr*(s+1)/warmup), global grad-norm clipping.

Needs: `pip install torch torchdeq` (tested with torch 2.15, torchdeq 0.1.0).

Usage (from the repository root):
    python3 scripts/bench_lm_torch.py --params
    python3 scripts/bench_lm_torch.py --bench --threads 2 --min-time 10 --runs 5
    python3 scripts/bench_lm_torch.py --train --minutes 60 --eval-at 15,30,60 --threads 2
    python3 scripts/bench_lm_torch.py --train --max-steps 500 --eval-steps 250,500
    python3 scripts/bench_lm_torch.py --train --max-steps 20 --eval-steps 20 --eval-tokens 20000
Options: --config FILE (default configs/deq-lm/ptb-cpu.toml), --set section.key=VALUE (TOML
value; repeatable; model.init_std = 0 keeps PyTorch's default init of f's linear maps),
--variant deq|explicit|unrolled, --data DIR (PTB folder; default data.dir, else data.name under
$DEQ_DATA_DIR, $DEQ_DATA_DIR/text or datasets/), --device cpu|cuda.
Output: JSON lines on stdout (progress on stderr).
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from collections import Counter

from bench_io import read_toml_with_sets

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from torchdeq import get_deq, reset_deq
    from torchdeq.dropout import VariationalDropout1d
    from torchdeq.norm import apply_norm
except ImportError:  # pragma: no cover
    sys.exit("torchdeq is not installed: pip install torch torchdeq")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The defaults of crates/deq-lm/src/config.rs (the zoo's WikiText-103 deq-lm).
MODEL_DEFAULTS = dict(variant="deq-lm", n_layer=3, d_model=700, d_embed=700, n_head=10, d_head=70, dropatt=0.0, local_size=0,
                      d_inner=14800, dropout=0.05, adaptive=True, cutoffs=[20000, 40000, 200000],
                      div_val=4, mem_len=150, init_std=0.01)
TRAIN_DEFAULTS = dict(batch_size=56, tgt_len=150, max_step=150000, lr=2.5e-4, warmup_step=8000,
                      clip=0.25, eval_interval=5000, eval_batch_size=16, eval_mem_len=0, log_interval=200,
                      max_minutes=0.0, test_at_minutes=[], test_at_steps=[], keep_checkpoints=2, threads=0, seed=42)


# ----------------------------------------------------------------------------- configuration
def load_config(path, sets):
    cfg = read_toml_with_sets(path, sets)
    for sec, defaults in (("model", MODEL_DEFAULTS), ("train", TRAIN_DEFAULTS)):
        unknown = set(cfg.get(sec, {})) - set(defaults)
        if unknown:
            sys.exit(f"{path}: unknown key(s) in [{sec}]: {sorted(unknown)}")
        cfg[sec] = {**defaults, **cfg.get(sec, {})}
    cfg.setdefault("deq", {})
    cfg["data"] = {"dir": "", "name": "wikitext-103", "tokenizer": "word", **cfg.get("data", {})}
    d = cfg["deq"]
    if cfg["data"]["tokenizer"] != "word" or d.get("jac_loss_weight", 0) > 0 or d.get("n_states", 1) > 1 \
            or cfg["model"]["dropatt"] > 0 or cfg["model"]["local_size"] > 0:
        sys.exit("not implemented here: data.tokenizer other than word, deq.jac_loss_weight > 0, deq.n_states > 1, "
                 "model.dropatt > 0, model.local_size > 0")
    return cfg


def variant_overrides(deq, variant):
    """explicit: f once from zero; unrolled: the weight-tied k = grad-step net, also in eval."""
    if variant == "deq":
        return deq
    grad = deq.get("grad", 1)
    k = 1 if variant == "explicit" else int(grad[0] if isinstance(grad, list) else grad)
    return {**deq, "f_solver": "simple_fixed_point_iter", "f_max_iter": 0, "grad": [k], "ift": False,
            "eval_f_max_iter": k, "n_states": 1, "indexing": []}


# ----------------------------------------------------------------------------- data (as data/*.rs)
def read_words(path):
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    if not text:
        return []
    if text.endswith("\n"):
        text = text[:-1]
    words = []
    for line in text.split("\n"):
        words.extend(line.split())
        words.append("<eos>")
    return words


def find_data(cfg):
    """data.dir, else the dataset name under $DEQ_DATA_DIR (or its text/) or datasets/."""
    if cfg["data"].get("dir"):
        return cfg["data"]["dir"]
    name, env = cfg["data"]["name"], os.environ.get("DEQ_DATA_DIR", "")
    roots = [env, os.path.join(env, "text")] if env else []
    for root in roots + [os.path.join(ROOT, "datasets")]:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    sys.exit(f"dataset {name} not found: pass --data DIR or set data.dir / DEQ_DATA_DIR")


def load_ptb(folder):
    """corpus.rs layouts: wiki.{split}.tokens, ptb.{split}.txt or {split}.txt."""
    for pre, suf in (("wiki.", ".tokens"), ("ptb.", ".txt"), ("", ".txt")):
        files = [os.path.join(folder, f"{pre}{s}{suf}") for s in ("train", "valid", "test")]
        if all(os.path.isfile(f) for f in files):
            break
    else:
        sys.exit(f"{folder}: no ptb.{{train,valid,test}}.txt, wiki.*.tokens or {{train,valid,test}}.txt")
    splits = [read_words(f) for f in files]
    counts = Counter(w for w in splits[0] if w != "<eos>")  # insertion order = first occurrence
    vocab = ["<eos>"] + sorted(counts, key=lambda w: -counts[w])  # stable: ties by first occurrence
    if "<unk>" not in counts:
        vocab.append("<unk>")
    ids = {w: i for i, w in enumerate(vocab)}
    unk = ids["<unk>"]
    streams = [torch.tensor([ids.get(w, unk) for w in ws], dtype=torch.long) for ws in splits]
    return streams, len(vocab)


class Segments:
    """The stream in `batch` columns (row-major (batch, n), column c = [c*n, (c+1)*n)) read in
    segments of tgt_len with the targets shifted by one; the last segment may be shorter."""

    def __init__(self, ids, batch, tgt_len):
        per = len(ids) // batch
        if per < 2:
            sys.exit(f"{len(ids)} tokens cannot fill {batch} columns")
        self.data, self.per, self.tgt_len = ids[: per * batch].view(batch, per), per, tgt_len

    def __len__(self):
        return -(-(self.per - 1) // self.tgt_len)

    def get(self, k):
        s = k * self.tgt_len
        n = min(self.tgt_len, self.per - 1 - s)
        return self.data[:, s:s + n], self.data[:, s + 1:s + 1 + n]


# ----------------------------------------------------------------------------- model
class VDrop(VariationalDropout1d):
    """torchdeq variational dropout (one mask per forward, cleared by reset_deq) on (B, L, F);
    per="feature": mask (B, 1, F) (deq-core DropShape::Token); per="position": mask (B, L, 1)
    (DropShape::Channel). The mask is drawn on the input's device."""

    def __init__(self, p, per="feature"):
        super().__init__(p, token_first=True)
        self.per = per

    def reset_mask(self, x):
        b, l, d = x.shape
        shape = (b, 1, d) if self.per == "feature" else (b, l, 1)
        self.mask = x.new_empty(shape).bernoulli_(1 - self.dropout) / (1 - self.dropout)


def rel_shift(x):
    """Transformer-XL: pad a zero column on the left, read as (.., klen+1, qlen), drop a row."""
    *lead, q, k = x.shape
    x = F.pad(x, (1, 0)).view(*lead, k + 1, q)[..., 1:, :]
    return x.reshape(*lead, q, k)


def positions(klen, d, like):
    dist = torch.arange(klen - 1, -1, -1, dtype=torch.float64)
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = dist[:, None] * inv[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1).to(like)  # (klen, d)


class Block(nn.Module):
    """Pre-LN block of deq-lm (block.rs PreLn + attention.rs PerHead)."""

    def __init__(self, d, h, dh, d_inner, p):
        super().__init__()
        self.h, self.dh = h, dh
        self.qkv = nn.Linear(d, 3 * h * dh, bias=False)
        self.r = nn.Linear(d, h * dh, bias=False)
        self.o = nn.Linear(h * dh, d)
        self.r_w_bias = nn.Parameter(torch.empty(h, dh).uniform_(-0.05, 0.05))
        self.r_r_bias = nn.Parameter(torch.empty(h, dh).uniform_(-0.05, 0.05))
        self.w1, self.w2 = nn.Linear(d, d_inner), nn.Linear(d_inner, d)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(h * dh), nn.LayerNorm(d)
        self.drop_attn, self.drop_inner, self.drop_ffn = VDrop(p), VDrop(p), VDrop(p)

    def project_positions(self, pos):  # (klen, d) -> (h, klen, dh), once per forward
        return self.r(pos).view(pos.shape[0], self.h, self.dh).transpose(0, 1)

    def forward(self, z, z_hist, u, r, mask):
        b, qlen, _ = z.shape
        mlen = z_hist.shape[1]
        klen = mlen + qlen
        wh = (self.qkv(self.ln1(torch.cat([z_hist, z], 1))) + u).view(b, klen, self.h, 3, self.dh)
        q = wh[:, mlen:, :, 0].transpose(1, 2)  # (b, h, qlen, dh)
        k = wh[:, :, :, 1].transpose(1, 2)
        v = wh[:, :, :, 2].transpose(1, 2)
        ac = torch.matmul(q + self.r_w_bias[:, None, :], k.transpose(-1, -2))
        bd = rel_shift(torch.matmul(q + self.r_r_bias[:, None, :], r.transpose(-1, -2)))
        s = ((ac + bd) * (1.0 / math.sqrt(self.dh))).masked_fill(mask, float("-inf"))
        a = torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(b, qlen, -1)
        z = z + self.drop_attn(self.o(self.ln2(a)))
        return z + self.drop_ffn(self.w2(self.drop_inner(torch.relu(self.w1(self.ln3(z))))))


class DEQTransformerLM(nn.Module):
    def __init__(self, m, deq_cfg, n_token):
        super().__init__()
        if m["variant"] != "deq-lm" or m["adaptive"]:
            sys.exit("only model.variant = deq-lm with model.adaptive = false is implemented here")
        d, h, dh = m["d_model"], m["n_head"], m["d_head"]
        if h * dh != d:
            sys.exit("deq-lm needs n_head * d_head = d_model")
        self.d, self.hd, self.n_token = d, h * dh, n_token
        self.emb = nn.Embedding(n_token, m["d_embed"])
        # adaptive.rs: a projection only when d_embed != d_model; the output's own (untied) one.
        self.emb_proj = self.out_proj = None
        if m["d_embed"] != d:
            self.emb_proj = nn.Parameter(torch.empty(d, m["d_embed"]))
            self.out_proj = nn.Parameter(torch.empty(d, m["d_embed"]))
        self.out_bias = nn.Parameter(torch.zeros(n_token))
        self.injection = nn.Linear(d, 3 * self.hd)
        self.func = nn.ModuleList(Block(d, h, dh, m["d_inner"], m["dropout"]) for _ in range(m["n_layer"]))
        self.drop_in, self.drop_pos = VDrop(m["dropout"]), VDrop(m["dropout"])
        self.drop_out = VDrop(m["dropout"], per="position")
        self._init(m["init_std"])
        apply_norm(self.func, args=deq_cfg)  # weight norm after init (the zoo's deq-lm order)
        self.deq = get_deq(deq_cfg)
        self.nfe = 0

    @torch.no_grad()
    def _init(self, std):
        """model.init_std > 0: the zoo's draw (init.rs): linear maps, embedding, projections N(0, std),
        biases 0, LayerNorm weights N(1, std), r_w/r_r keep U(-0.05, 0.05). init_std = 0: the Rust
        constructors' draw: f's linear maps nn.Linear's default (deq-core NormLinear: weight and bias
        U(+-1/sqrt(fan_in))), LayerNorm 1/0, the injection, embedding and projections N(0, 0.01)."""
        sd = std if std > 0 else 0.01
        for mod in self.modules():
            if isinstance(mod, nn.Linear) and (std > 0 or mod is self.injection):
                mod.weight.normal_(0.0, sd)
                if mod.bias is not None:
                    mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm) and std > 0:
                mod.weight.normal_(1.0, std)
                mod.bias.zero_()
        self.emb.weight.normal_(0.0, sd)
        for p in (self.emb_proj, self.out_proj):
            if p is not None:
                p.normal_(0.0, sd)

    def empty_memory(self, b, device):
        return torch.zeros(b, 0, self.d, device=device), torch.zeros(b, 0, 3 * self.hd, device=device)

    def f(self, z, z_hist, u_cat, rs, mask):
        self.nfe += 1
        for blk, r in zip(self.func, rs):
            z = blk(z, z_hist, u_cat, r, mask)
        return z

    def forward(self, x, memory, mem_len):
        """Segment x (B, L) after memory (z, u) -> (hidden (B, L, D) after output dropout, memory)."""
        reset_deq(self)  # weight norm recomputed once; variational masks redrawn on first use
        self.nfe = 0
        z_hist, u_hist = memory
        b, qlen = x.shape
        mlen = z_hist.shape[1]
        e = self.emb(x)
        if self.emb_proj is not None:
            e = e @ self.emb_proj.t()
        u_now = self.injection(self.drop_in(e * math.sqrt(self.d)))
        u_cat = torch.cat([u_hist, u_now], 1)
        pos = self.drop_pos(positions(mlen + qlen, self.d, e)[None])[0]
        rs = [blk.project_positions(pos) for blk in self.func]
        j = torch.arange(mlen + qlen, device=x.device)
        mask = j[None, :] > (torch.arange(qlen, device=x.device)[:, None] + mlen)  # True = hidden
        z0 = e.new_zeros(b, qlen, self.d)
        z_out, _ = self.deq(lambda z: self.f(z, z_hist, u_cat, rs, mask), z0)
        z_star = z_out[-1]
        keep = lambda t: t[:, max(0, t.shape[1] - mem_len):].detach()
        memory = (keep(torch.cat([z_hist, z_star.detach()], 1)), keep(torch.cat([u_hist, u_now.detach()], 1)))
        return self.drop_out(z_star), memory

    def loss(self, hidden, y):
        h = hidden.reshape(-1, self.d)
        if self.out_proj is not None:
            h = h @ self.out_proj
        return F.cross_entropy(F.linear(h, self.emb.weight, self.out_bias), y.reshape(-1))


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- training
def lr_at(t, step):
    """deq_train::Schedule::Cosine { warmup_steps, total_steps: max_step, min_lr: 0 }."""
    base, warm, total = t["lr"], t["warmup_step"], t["max_step"]
    if step < warm:
        return base * (step + 1) / warm
    progress = min((step - warm) / max(total - warm, 1), 1.0)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, model, t, device):
        self.model, self.t, self.device = model, t, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=t["lr"], betas=(0.9, 0.999), eps=1e-8)
        self.step_no = 0
        self.mem = model.empty_memory(t["batch_size"], device)

    def step(self, x, y):
        model, t = self.model, self.t
        model.train()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(t, self.step_no)
        self.opt.zero_grad(set_to_none=True)
        hidden, mem = model(x.to(self.device), self.mem, model.mem_len)
        loss = model.loss(hidden, y.to(self.device))
        loss.backward()
        if t["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.params, t["clip"])
        self.opt.step()
        self.mem = mem
        self.step_no += 1
        return loss.item(), model.nfe


@torch.no_grad()
def evaluate(model, ids, batch, tgt_len, mem_len, device, max_tokens=0):
    """(perplexity, mean forward NFE per segment); max_tokens > 0 stops after that many target
    tokens (whole segments), as train.rs evaluate."""
    model.eval()
    seg = Segments(ids, batch, tgt_len)
    mem = model.empty_memory(batch, device)
    nll, tokens, nfe = 0.0, 0, 0
    for k in range(len(seg)):
        x, y = seg.get(k)
        hidden, mem = model(x.to(device), mem, mem_len)
        nll += model.loss(hidden, y.to(device)).item() * y.numel()
        tokens += y.numel()
        nfe += model.nfe
        if max_tokens and tokens >= max_tokens:
            break
    model.train()
    return math.exp(nll / max(tokens, 1)), nfe / (k + 1)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_bench(args, cfg, model, trainer, streams, device):
    t = cfg["train"]
    b, L = t["batch_size"], t["tgt_len"]
    if streams is not None:
        seg = Segments(streams[0], b, L)
        batch_at = lambda i: seg.get(i % len(seg))
    else:
        gen = torch.Generator().manual_seed(t["seed"])
        batch_at = lambda i: (lambda s: (s[:, :-1], s[:, 1:]))(torch.randint(0, model.n_token, (b, L + 1), generator=gen))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm = max(args.warmup, -(-model.mem_len // L) + 1)  # the memory holds mem_len positions after these
    first_loss, i = None, 0
    for _ in range(warm):
        loss, _ = trainer.step(*batch_at(i))
        first_loss = loss if first_loss is None else first_loss
        i += 1
    times, nfes = [], []
    while len(times) < args.runs or sum(times) < args.min_time:
        x, y = batch_at(i)
        sync()
        t0 = time.perf_counter()
        _, nfe = trainer.step(x, y)
        sync()
        times.append(time.perf_counter() - t0)
        nfes.append(nfe)
        i += 1
    print(json.dumps({"workload": "deq-lm/ptb-cpu/train_step", "impl": "torchdeq", "variant": args.variant,
                      "median_s": statistics.median(times), "min_s": min(times), "runs": len(times),
                      "params": count_params(model), "first_loss": first_loss, "nfe": statistics.mean(nfes),
                      "mem_positions": trainer.mem[0].shape[1], "threads": args.threads,
                      "peak_rss_mb": peak_rss_mb()}), flush=True)


def run_train(args, cfg, model, trainer, streams, device):
    t = cfg["train"]
    train_ids, valid_ids, test_ids = streams
    seg = Segments(train_ids, t["batch_size"], t["tgt_len"])
    eval_mem = t["eval_mem_len"] or model.mem_len
    last = min(args.max_steps, t["max_step"]) if args.max_steps else t["max_step"]
    budget = args.minutes * 60.0 if args.minutes else float("inf")
    marks = sorted(float(v) for v in args.eval_at.split(",") if v) if args.eval_at else list(t["test_at_minutes"])
    if args.minutes and args.minutes not in marks:
        marks.append(float(args.minutes))
    step_marks = sorted(int(v) for v in args.eval_steps.split(",") if v) if args.eval_steps else []
    train_time, loss_sum, loss_n, last_eval_step, result = 0.0, 0.0, 0, -1, {}

    def do_eval(minute):
        nonlocal loss_sum, loss_n, last_eval_step, result
        ev = lambda ids: evaluate(model, ids, t["eval_batch_size"], t["tgt_len"], eval_mem, device, args.eval_tokens)
        (vppl, vnfe), (tppl, _) = ev(valid_ids), ev(test_ids)
        result = {"minute": minute, "train_minutes": train_time / 60.0, "step": trainer.step_no, "train_loss": loss_sum / max(loss_n, 1),
                  "valid_ppl": vppl, "test_ppl": tppl, "valid_nfe": vnfe,
                  "seconds_per_step": train_time / max(trainer.step_no, 1), "lr": lr_at(t, trainer.step_no - 1)}
        print(json.dumps(result), flush=True)
        loss_sum, loss_n, last_eval_step = 0.0, 0, trainer.step_no

    while trainer.step_no < last and train_time < budget:
        k = trainer.step_no % len(seg)
        if k == 0:  # a new epoch: the memory restarts
            trainer.mem = model.empty_memory(t["batch_size"], device)
        t0 = time.perf_counter()
        loss, _ = trainer.step(*seg.get(k))
        train_time += time.perf_counter() - t0
        if not math.isfinite(loss):
            sys.exit(f"step {trainer.step_no}: the training loss is {loss}")
        loss_sum, loss_n = loss_sum + loss, loss_n + 1
        if args.log_every and trainer.step_no % args.log_every == 0:
            print(f"step {trainer.step_no} loss {loss:.4f} {train_time / trainer.step_no:.3f} s/step", file=sys.stderr)
        while marks and train_time >= marks[0] * 60.0:
            do_eval(marks.pop(0))
        while step_marks and trainer.step_no >= step_marks[0]:
            step_marks.pop(0)
            do_eval(round(train_time / 60.0, 3))
    if last_eval_step != trainer.step_no:
        do_eval(round(train_time / 60.0, 3))
    print(json.dumps({"final": True, **result, "train_seconds": train_time, "variant": args.variant,
                      "params": count_params(model), "threads": args.threads, "peak_rss_mb": peak_rss_mb()}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/deq-lm/ptb-cpu.toml"))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--variant", choices=["deq", "explicit", "unrolled"], default="deq")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--params", action="store_true")
    mode.add_argument("--bench", action="store_true")
    mode.add_argument("--train", action="store_true")
    ap.add_argument("--data", default=None, help="PTB folder (ptb.{train,valid,test}.txt)")
    ap.add_argument("--vocab", type=int, default=10000, help="vocabulary without --data")
    ap.add_argument("--threads", type=int, default=None, help="default: train.threads (0: every core)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=None, help="default: train.max_minutes")
    ap.add_argument("--eval-at", default="", help="minute marks of training time, e.g. 15,30,60 "
                    "(default: train.test_at_minutes)")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--eval-steps", default="", help="steps at which to evaluate, e.g. 250,500")
    ap.add_argument("--eval-tokens", type=int, default=0,
                    help="stop each evaluation after this many target tokens (whole segments; smoke tests)")
    ap.add_argument("--log-every", type=int, default=0)
    args = ap.parse_args()

    cfg = load_config(args.config, args.set)
    if args.threads is None:
        args.threads = cfg["train"]["threads"] or os.cpu_count()
    if args.minutes is None:
        args.minutes = cfg["train"]["max_minutes"]
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    deq_cfg = variant_overrides(cfg["deq"], args.variant)
    device = torch.device(args.device)
    streams = None
    if args.train and not args.data:
        args.data = find_data(cfg)
    if args.data:
        streams, n_token = load_ptb(args.data)
    else:
        n_token = args.vocab
    torch.manual_seed(cfg["train"]["seed"])
    model = DEQTransformerLM(cfg["model"], deq_cfg, n_token).to(device)
    model.mem_len = cfg["model"]["mem_len"]
    if args.params:
        print(count_params(model))
        return
    print(f"params {count_params(model)}, vocab {n_token}, deq {deq_cfg}", file=sys.stderr)
    trainer = Trainer(model, cfg["train"], device)
    if args.bench:
        run_bench(args, cfg, model, trainer, streams, device)
    else:
        if not (args.minutes or args.max_steps):
            sys.exit("--train needs --minutes M or --max-steps N")
        run_train(args, cfg, model, trainer, streams, device)


if __name__ == "__main__":
    main()
