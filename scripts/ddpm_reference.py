#!/usr/bin/env python3
"""PyTorch reference for the DDPM/DDIM UNet and samplers (ermongroup/ddim), used by crates/deq-ddim.

Written from the description in crates/deq-ddim/REFERENCE.md (sections 1-3); the
module tree, and therefore every state_dict key, follows ermongroup/ddim's
`models/diffusion.py::Model`, so a DDIM / DDPM checkpoint loads with
`load_state_dict(strict=True)`.

Contents
  * Model(in_channels, out_ch, ch, ch_mult, num_res_blocks, attn_resolutions,
          dropout, resolution, resamp_with_conv)   -- the UNet, eps-prediction
  * get_beta_schedule(name, beta_start, beta_end, T) -> float64 numpy array
  * compute_alpha(betas, t)                        -- abar(t), with abar(-1) = 1
  * generalized_steps(x, seq, model, betas, eta, noises=None)  -- DDIM sampler
  * ddpm_steps(x, seq, model, betas, noises=None)               -- ancestral sampler
  * uniform_seq / quad_seq                         -- timestep sequences of DDIM's runner

Numerics. The sinusoidal timestep embedding always computes its frequencies in
float32 (as DDIM does), then casts them to the model dtype, so a float64 copy of
the model is "exact arithmetic given float32 frequencies". The samplers take the
betas as float64, form abar with a float64 cumprod, compute every per-step
coefficient in float64 and only then cast it to the dtype of x (DDIM itself uses
float32 betas; float64 keeps the reference tight).

`noises`, when given, is a sequence of tensors shaped like x that replaces
randn_like: entry k is used by the k-th step the loop runs (k = 0 is the step at
the largest timestep seq[-1]). generalized_steps draws at every step, including
the last one (where its coefficient is 0); ddpm_steps too (masked where t == 0).

Command line
  python3 scripts/ddpm_reference.py fixture OUT_DIR
      writes the small test fixture used by crates/deq-ddim/tests (random model,
      DDIM-runner-format model.ckpt, converted model.safetensors, config.json,
      cases.safetensors with float64-computed expectations stored as float32).
  python3 scripts/ddpm_reference.py bench --config mnist|cifar10 --batch B --iters N --threads T
      times one forward+backward of the UNet (eps loss: sum over pixels, mean over
      batch, random t) in float32 on the CPU and prints one JSON line
      {"config", "batch", "ms_per_step"}.
"""

import argparse
import json
import shutil
import tempfile
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------

MNIST_CONFIG = dict(in_channels=1, out_ch=1, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1,
                    attn_resolutions=[7], dropout=0.1, resolution=28, resamp_with_conv=True)
CIFAR10_CONFIG = dict(in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 2, 2], num_res_blocks=2,
                      attn_resolutions=[16], dropout=0.1, resolution=32, resamp_with_conv=True)
FIXTURE_CONFIG = dict(in_channels=2, out_ch=2, ch=32, ch_mult=[1, 1], num_res_blocks=1,
                      attn_resolutions=[4], dropout=0.0, resolution=8, resamp_with_conv=True)


def timestep_embedding(t, dim, dtype=None):
    """Sinusoidal embedding of raw (unscaled) timesteps: [sin(t*f), cos(t*f)].

    f_i = exp(-i * ln(1e4) / (dim//2 - 1)) is evaluated in float32; the products
    and the sin/cos are evaluated in `dtype` (default float32). Odd dims get a zero
    column on the right.
    """
    assert t.dim() == 1
    dtype = dtype or torch.float32
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
    arg = t.to(dtype)[:, None] * freqs.to(device=t.device, dtype=dtype)[None, :]
    out = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    if dim % 2 == 1:
        out = F.pad(out, (0, 1, 0, 0))
    return out


def swish(x):
    return x * torch.sigmoid(x)


def group_norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    # attribute creation order == state_dict order: norm1, conv1, temb_proj, norm2, conv2, nin_shortcut
    def __init__(self, in_ch, out_ch, temb_ch, dropout):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if self.in_ch != self.out_ch else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual output."""

    def __init__(self, channels):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        n = self.norm(x)
        q = self.q(n).flatten(2)  # (b, c, hw)
        k = self.k(n).flatten(2)
        v = self.v(n).flatten(2)
        logits = torch.einsum("bci,bcj->bij", q, k) * (int(c) ** -0.5)  # query i, key j
        attn = torch.softmax(logits, dim=2)
        out = torch.einsum("bcj,bij->bci", v, attn).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        if self.with_conv:
            # pad right column and bottom row only, then a valid stride-2 conv
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Model(nn.Module):
    """DDIM/DDPM UNet predicting epsilon; forward(x, t) with t a 1-D tensor of timesteps."""

    def __init__(self, in_channels, out_ch, ch, ch_mult, num_res_blocks, attn_resolutions,
                 dropout, resolution, resamp_with_conv=True, logvar_timesteps=None):
        super().__init__()
        ch_mult = tuple(ch_mult)
        self.ch = ch
        self.temb_ch = 4 * ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        if logvar_timesteps:  # 'bayesian' model type only; unused by the samplers
            self.logvar = nn.Parameter(torch.zeros(logvar_timesteps))

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch),
                                         nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)

        widths_in = (1,) + ch_mult
        res = resolution
        self.down = nn.ModuleList()
        width = None
        for lvl in range(self.num_resolutions):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            width = ch * widths_in[lvl]
            w_out = ch * ch_mult[lvl]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(width, w_out, self.temb_ch, dropout))
                width = w_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(width))
            if lvl != self.num_resolutions - 1:
                level.downsample = Downsample(width, resamp_with_conv)
                res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(width, width, self.temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(width)
        self.mid.block_2 = ResnetBlock(width, width, self.temb_ch, dropout)

        up_levels = []
        for lvl in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            w_out = ch * ch_mult[lvl]
            for j in range(num_res_blocks + 1):
                skip = ch * (widths_in[lvl] if j == num_res_blocks else ch_mult[lvl])
                level.block.append(ResnetBlock(width + skip, w_out, self.temb_ch, dropout))
                width = w_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(width))
            if lvl != 0:
                level.upsample = Upsample(width, resamp_with_conv)
                res *= 2
            up_levels.insert(0, level)  # up.0 = finest level, registered first
        self.up = nn.ModuleList(up_levels)

        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, 1, 1)

    def forward(self, x, t):
        assert x.shape[2] == x.shape[3] == self.resolution, x.shape
        emb = timestep_embedding(t, self.ch, dtype=self.conv_in.weight.dtype)
        temb = self.temb.dense[1](swish(self.temb.dense[0](emb)))

        skips = [self.conv_in(x)]
        for lvl, level in enumerate(self.down):
            for j, blk in enumerate(level.block):
                h = blk(skips[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
                skips.append(h)
            if lvl != self.num_resolutions - 1:
                skips.append(level.downsample(skips[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(skips[-1], temb)), temb)

        for lvl in reversed(range(self.num_resolutions)):
            level = self.up[lvl]
            for j, blk in enumerate(level.block):
                h = blk(torch.cat([h, skips.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if lvl != 0:
                h = level.upsample(h)
        assert not skips
        return self.conv_out(swish(self.norm_out(h)))


def build_model(cfg):
    keys = ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
            "dropout", "resolution", "resamp_with_conv")
    return Model(**{k: cfg[k] for k in keys})


# ---------------------------------------------------------------------------
# Schedules and samplers
# ---------------------------------------------------------------------------

def get_beta_schedule(name, beta_start=1e-4, beta_end=0.02, num_timesteps=1000):
    """Beta schedules of DDIM's runner, as float64 numpy arrays."""
    T = num_timesteps
    if name == "linear":
        b = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif name == "quad":
        b = np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2
    elif name == "const":
        b = beta_end * np.ones(T, dtype=np.float64)
    elif name == "jsd":
        b = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    elif name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-np.linspace(-6, 6, T)))
        b = s * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(f"unknown beta schedule {name!r}")
    assert b.shape == (T,)
    return b


def uniform_seq(num_timesteps, steps):
    return list(range(0, num_timesteps, num_timesteps // steps))


def quad_seq(num_timesteps, steps):
    return [int(s) for s in np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2]


def _betas64(betas):
    if isinstance(betas, np.ndarray):
        return torch.from_numpy(betas).to(torch.float64)
    return betas.to(torch.float64)


def compute_alpha(betas, t):
    """abar(t) = prod_{s<=t} (1 - beta_s), abar(-1) = 1; t a long tensor -> shape (-1,1,1,1), float64."""
    b = _betas64(betas)
    b = torch.cat([torch.zeros(1, dtype=b.dtype, device=b.device), b])
    abar = torch.cumprod(1.0 - b, dim=0)
    return abar.index_select(0, t.long().to(b.device) + 1).view(-1, 1, 1, 1)


def _step_pairs(seq):
    seq = list(seq)
    prev = [-1] + seq[:-1]
    return list(zip(reversed(seq), reversed(prev)))


def _noise(noises, k, x):
    if noises is None:
        return torch.randn_like(x)
    z = noises[k]
    assert z.shape == x.shape, (z.shape, x.shape)
    return z.to(dtype=x.dtype, device=x.device)


@torch.no_grad()
def generalized_steps(x, seq, model, betas, eta=0.0, noises=None):
    """DDIM sampler (eta = 0: deterministic). Returns (xs, x0_preds); xs[0] = x_T, xs[-1] = sample."""
    n = x.shape[0]
    xs, x0_preds = [x], []
    for k, (i, j) in enumerate(_step_pairs(seq)):
        t = torch.full((n,), float(i), dtype=x.dtype, device=x.device)
        at = compute_alpha(betas, torch.full((n,), i, dtype=torch.long))
        an = compute_alpha(betas, torch.full((n,), j, dtype=torch.long))
        c1 = eta * ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
        c2 = ((1 - an) - c1 ** 2).sqrt()
        cast = lambda v: v.to(dtype=x.dtype, device=x.device)  # noqa: E731
        xt = xs[-1]
        e = model(xt, t)
        x0 = (xt - e * cast((1 - at).sqrt())) / cast(at.sqrt())
        x0_preds.append(x0)
        z = _noise(noises, k, x)
        xs.append(cast(an.sqrt()) * x0 + cast(c1) * z + cast(c2) * e)
    return xs, x0_preds


@torch.no_grad()
def ddpm_steps(x, seq, model, betas, noises=None):
    """Ancestral DDPM sampler over seq (x0 clamped to [-1,1]). Returns (xs, x0_preds)."""
    n = x.shape[0]
    xs, x0_preds = [x], []
    for k, (i, j) in enumerate(_step_pairs(seq)):
        t = torch.full((n,), float(i), dtype=x.dtype, device=x.device)
        at = compute_alpha(betas, torch.full((n,), i, dtype=torch.long))
        atm1 = compute_alpha(betas, torch.full((n,), j, dtype=torch.long))
        beta_t = 1 - at / atm1
        cast = lambda v: v.to(dtype=x.dtype, device=x.device)  # noqa: E731
        xt = xs[-1]
        e = model(xt, t)
        x0 = cast((1.0 / at).sqrt()) * xt - cast((1.0 / at - 1).sqrt()) * e
        x0 = x0.clamp(-1, 1)
        x0_preds.append(x0)
        mean = (cast(atm1.sqrt() * beta_t) * x0 + cast((1 - beta_t).sqrt() * (1 - atm1)) * xt) \
            / cast(1.0 - at)
        z = _noise(noises, k, x)
        mask = (1.0 - (t == 0).to(x.dtype)).view(-1, 1, 1, 1)
        xs.append(mean + mask * cast(torch.exp(0.5 * beta_t.log())) * z)
    return xs, x0_preds


# ---------------------------------------------------------------------------
# fixture
# ---------------------------------------------------------------------------

def _perturb_group_norms(model, gen):
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            with torch.no_grad():
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=gen))


def make_fixture(out_dir):
    from safetensors.torch import save_file, load_file

    os.makedirs(out_dir, exist_ok=True)
    cfg = dict(FIXTURE_CONFIG)
    sched = dict(type="linear", beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)

    torch.manual_seed(0)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(1)
    _perturb_group_norms(model, gen)
    model.eval()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    # DDIM training-runner layout: [model_sd ("module." keys), optim_sd, epoch, step, ema_sd].
    # model_sd and ema_sd share storages, so torch.save writes the weights once.
    # The .ckpt only exercises the converter; it is not part of the committed fixture.
    tmp_dir = tempfile.mkdtemp(prefix="ddpm-fixture-")
    ckpt_path = os.path.join(tmp_dir, "model.ckpt")
    torch.save([{"module." + k: v for k, v in sd.items()}, {}, 0, 0, dict(sd)], ckpt_path)

    st_path = os.path.join(out_dir, "model.safetensors")
    conv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_ddpm_checkpoint.py")
    proc = subprocess.run([sys.executable, conv, ckpt_path, st_path, "--resolution",
                           str(cfg["resolution"])], capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"converter failed ({proc.returncode})")
    shutil.rmtree(tmp_dir)
    inferred = json.loads(proc.stdout)
    print("converter inferred config:", json.dumps(inferred), file=sys.stderr)
    for key in ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                "resamp_with_conv"):
        assert inferred[key] == cfg[key], (key, inferred[key], cfg[key])
    loaded = load_file(st_path)
    assert loaded.keys() == sd.keys()
    for k in sd:
        assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], sd[k]), k

    # Expected values: float64 copy of the (float32-valued) weights.
    m64 = build_model(cfg).double().eval()
    m64.load_state_dict({k: v.double() for k, v in loaded.items()})
    m32 = build_model(cfg).eval()
    m32.load_state_dict(loaded)
    betas = get_beta_schedule("linear", sched["beta_start"], sched["beta_end"],
                              sched["num_diffusion_timesteps"])
    C, R = cfg["in_channels"], cfg["resolution"]

    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, C, R, R, generator=g)
    t = torch.tensor([0.0, 417.0, 999.0])
    xT = torch.randn(2, C, R, R, generator=g)
    steps = 10
    ddim_noise = torch.randn(steps, 2, C, R, R, generator=g)
    ddpm_noise = torch.randn(steps, 2, C, R, R, generator=g)
    seq = uniform_seq(1000, steps)
    qseq = quad_seq(1000, steps)

    with torch.no_grad():
        eps64 = m64(x.double(), t.double())
        eps32 = m32(x, t)
    x64 = xT.double()
    ddim0 = generalized_steps(x64, seq, m64, betas, eta=0.0)[0][-1]
    ddim05 = generalized_steps(x64, seq, m64, betas, eta=0.5,
                               noises=[z.double() for z in ddim_noise])[0][-1]
    ddpm = ddpm_steps(x64, seq, m64, betas, noises=[z.double() for z in ddpm_noise])[0][-1]
    ddimq = generalized_steps(x64, qseq, m64, betas, eta=0.0)[0][-1]

    f32 = lambda v: v.to(torch.float32).contiguous()  # noqa: E731
    cases = dict(x=f32(x), t=f32(t), eps=f32(eps64), eps_f32=f32(eps32), xT=f32(xT),
                 ddim_eta0=f32(ddim0), ddim_eta05=f32(ddim05), ddim_noise=f32(ddim_noise),
                 ddpm=f32(ddpm), ddpm_noise=f32(ddpm_noise), ddim_quad=f32(ddimq))
    save_file(cases, os.path.join(out_dir, "cases.safetensors"),
              metadata={"generator": "scripts/ddpm_reference.py fixture"})

    config = {
        "model": cfg,
        "diffusion": sched,
        "temb_freqs_dtype": "float32",
        "expected_dtype": "computed in float64 (float64 model copy, float64 alphas), stored as float32",
        "ddim_seq": seq,
        "quad_seq": qseq,
        "ddim_eta05_eta": 0.5,
        "noise_order": "noise[k] is used by the k-th loop step, k=0 at t=seq[-1]; ddpm noise at t=0 is masked",
        "cases": {k: list(v.shape) for k, v in cases.items()},
        "cases_doc": {
            "eps": "model(x, t) from a float64 copy of the model",
            "eps_f32": "model(x, t) from the float32 model",
            "ddim_eta0": "generalized_steps(xT, ddim_seq, eta=0)[-1]",
            "ddim_eta05": "generalized_steps(xT, ddim_seq, eta=0.5, noises=ddim_noise)[-1]",
            "ddpm": "ddpm_steps(xT, ddim_seq, noises=ddpm_noise)[-1]",
            "ddim_quad": "generalized_steps(xT, quad_seq, eta=0)[-1]",
        },
        "num_params": int(sum(v.numel() for v in sd.values())),
        "num_tensors": len(sd),
    }
    text = json.dumps(config, indent=2)
    # keep lists of numbers on one line
    text = re.sub(r"\[[-0-9.e,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        fh.write(text + "\n")
    for name in os.listdir(out_dir):
        os.chmod(os.path.join(out_dir, name), 0o644)
    for name in sorted(os.listdir(out_dir)):
        print(f"{name}\t{os.path.getsize(os.path.join(out_dir, name))} bytes")
    print("eps max |f64 - f32|:", float((eps64 - eps32.double()).abs().max()))


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

def bench(config, batch, iters, threads, warmup=2, forward_only=False):
    torch.set_num_threads(threads)
    cfg = {"mnist": MNIST_CONFIG, "cifar10": CIFAR10_CONFIG}[config]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    abar = torch.from_numpy(np.cumprod(1.0 - get_beta_schedule("linear"))).float()
    C, R = cfg["in_channels"], cfg["resolution"]
    x0 = torch.rand(batch, C, R, R) * 2 - 1

    def step():
        if forward_only:
            with torch.no_grad():
                model(x0, torch.full((batch,), 500.0)).sum().item()
            return
        model.zero_grad(set_to_none=True)
        t = torch.randint(0, 1000, (batch,))
        a = abar[t].view(-1, 1, 1, 1)
        e = torch.randn_like(x0)
        xt = x0 * a.sqrt() + e * (1 - a).sqrt()
        out = model(xt, t.float())
        loss = (e - out).square().sum(dim=(1, 2, 3)).mean()
        loss.backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"config": config, "batch": batch, "forward_only": forward_only, "params": params,
                      "ms_per_step": round(times[len(times) // 2], 3)}))


def main():
    ap = argparse.ArgumentParser(
        description="PyTorch reference of the DDIM/DDPM UNet (ermongroup/ddim Model) and its "
                    "samplers; writes the deq-ddim test fixture or times a training step.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="As a module: from ddpm_reference import Model, generalized_steps, ddpm_steps, "
               "compute_alpha, get_beta_schedule.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fx = sub.add_parser("fixture", help="write the small fixture (model.ckpt, model.safetensors, "
                                        "config.json, cases.safetensors) into OUT_DIR")
    fx.add_argument("out_dir")
    bp = sub.add_parser("bench", help="time forward+backward of the UNet in float32 on the CPU")
    bp.add_argument("--config", choices=["mnist", "cifar10"], default="mnist")
    bp.add_argument("--batch", type=int, default=32)
    bp.add_argument("--iters", type=int, default=5)
    bp.add_argument("--threads", type=int, default=1)
    bp.add_argument("--forward-only", action="store_true", help="time the forward pass alone (no gradient), as in sampling")
    args = ap.parse_args()
    if args.cmd == "fixture":
        make_fixture(args.out_dir)
    else:
        bench(args.config, args.batch, args.iters, args.threads, forward_only=args.forward_only)


if __name__ == "__main__":
    main()
