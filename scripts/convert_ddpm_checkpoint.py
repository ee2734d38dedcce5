#!/usr/bin/env python3
"""Convert a PyTorch DDPM/DDIM UNet checkpoint (ermongroup/ddim key names) to safetensors for deq-ddim.

Usage:
    python3 scripts/convert_ddpm_checkpoint.py IN.ckpt OUT.safetensors [--ema | --no-ema] [--resolution N]

Accepted inputs
  (a) a plain state_dict, e.g. the public converted DDPM EMA checkpoints
      (CIFAR-10 / CelebA / LSUN, "model-790000.ckpt" and friends);
  (b) the DDIM training runner's list [model_sd, optim_sd, epoch, step, ema_sd]:
      the EMA weights (entry 4) are taken by default when present, --no-ema takes
      model_sd, --ema insists on the EMA weights;
  (c) a dict holding the weights under 'state_dict' or 'model' (or 'ema' / 'ema_state_dict'
      when --ema is given).
A leading "module." (DataParallel) prefix is stripped, the optional `logvar`
parameter of the 'bayesian' model type is dropped with a notice, and every tensor
is written as contiguous float32 with metadata {"source": <input basename>,
"format": "ddim-unet"}.

stdout receives one JSON object: the UNet config inferred from the weights
(in_channels, out_ch, ch, ch_mult, num_res_blocks, attention levels,
resamp_with_conv, and attn_resolutions when --resolution is given), ready to be
copied into the [model] table. Notices go to stderr. Exit status 2 when the
input does not look like a DDIM UNet.
"""

import argparse
import json
import os
import re
import sys

import torch


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def note(msg):
    print(f"note: {msg}", file=sys.stderr)


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- retry with the full unpickler
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        first = (text.splitlines()[0] if text else type(exc).__name__)[:160]
        note(f"weights_only load of {path} failed ({first}); retrying with weights_only=False "
             "(only do this for files you trust)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        fail(f"cannot load {path}: {exc}")


def is_tensor_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def select_state_dict(obj, ema, path):
    """Return (state_dict, description). `ema` is True, False or None (= default)."""
    if isinstance(obj, (list, tuple)):
        has_ema = len(obj) >= 5 and is_tensor_dict(obj[4])
        if ema is True and not has_ema:
            fail(f"{path}: --ema requested but the checkpoint list has no EMA state at index 4")
        if ema is not False and has_ema:
            return obj[4], "DDIM runner list, EMA weights (index 4)"
        if len(obj) == 0 or not is_tensor_dict(obj[0]):
            fail(f"{path}: list checkpoint whose first entry is not a state_dict")
        return obj[0], "DDIM runner list, raw model weights (index 0)"
    if isinstance(obj, dict):
        if ema is True:
            for key in ("ema", "ema_state_dict"):
                if is_tensor_dict(obj.get(key)):
                    return obj[key], f"dict, '{key}' entry"
        for key in ("state_dict", "model"):
            if is_tensor_dict(obj.get(key)):
                if ema is True:
                    note(f"{path}: no EMA entry found, using '{key}'")
                return obj[key], f"dict, '{key}' entry"
        if is_tensor_dict(obj):
            if ema is False:
                note(f"{path} is a plain state_dict; --no-ema has no effect")
            return obj, "plain state_dict"
    fail(f"{path}: unrecognised checkpoint layout ({type(obj).__name__}); expected a state_dict, "
         "the DDIM runner list [model, optim, epoch, step, ema] or a dict with 'state_dict'/'model'")


def clean_state_dict(sd, path):
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k == "logvar":
            note(f"dropping 'logvar' {tuple(v.shape)} (bayesian variance, unused by the samplers)")
            continue
        if not torch.is_floating_point(v):
            note(f"dropping non-floating tensor {k!r} ({v.dtype})")
            continue
        if k in out:
            fail(f"{path}: duplicate key {k!r} after stripping 'module.'")
        out[k] = v.detach().to(torch.float32).contiguous()
    for req in ("conv_in.weight", "conv_out.weight"):
        if req not in out:
            fail(f"{path} does not look like a DDIM UNet checkpoint: no '{req}' "
                 f"(first keys: {list(out)[:5]})")
    return out


def infer_config(sd, resolution=None):
    ch, in_channels = sd["conv_in.weight"].shape[:2]
    out_ch = sd["conv_out.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"down\.(\d+)\.", k)] if m})
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"down levels {levels} are not 0..L-1")
    ch_mult = []
    for i in levels:
        w = sd.get(f"down.{i}.block.0.conv1.weight")
        if w is None or w.shape[0] % ch:
            raise ValueError(f"down.{i}.block.0.conv1.weight missing or not a multiple of ch={ch}")
        ch_mult.append(int(w.shape[0] // ch))
    nrb = len({int(m.group(1)) for k in sd for m in [re.match(r"down\.0\.block\.(\d+)\.", k)] if m})
    attn_levels = [i for i in levels if any(k.startswith(f"down.{i}.attn.") for k in sd)]
    resamp = any(".downsample.conv." in k for k in sd)
    cfg = {
        "in_channels": int(in_channels),
        "out_ch": int(out_ch),
        "ch": int(ch),
        "ch_mult": ch_mult,
        "num_res_blocks": nrb,
        "attn_levels": attn_levels,
        "resamp_with_conv": resamp,
    }
    if resolution:
        cfg["resolution"] = int(resolution)
        cfg["attn_resolutions"] = [int(resolution) >> i for i in attn_levels]
    return cfg


def structure_check(sd, cfg):
    """Build the reference UNet for cfg and compare key names and shapes (skipped if unavailable)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from ddpm_reference import Model
    except Exception:  # noqa: BLE001
        return "skipped (ddpm_reference.py not importable)"
    L = len(cfg["ch_mult"])
    res = 2 ** (L + 2)  # any size that halves cleanly; attention is placed by level
    model = Model(cfg["in_channels"], cfg["out_ch"], cfg["ch"], cfg["ch_mult"],
                  cfg["num_res_blocks"], [res >> i for i in cfg["attn_levels"]], 0.0, res,
                  cfg["resamp_with_conv"])
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    bad = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or bad:
        return (f"MISMATCH: {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected "
                f"(e.g. {extra[:3]}), {len(bad)} wrong shapes (e.g. {bad[:3]})")
    return "ok"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Prints the inferred UNet config as JSON on stdout.")
    ap.add_argument("input", help="PyTorch checkpoint (.ckpt/.pth/.pt)")
    ap.add_argument("output", help="output .safetensors path")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--ema", dest="ema", action="store_true", default=None,
                   help="require the EMA weights (default for runner lists when present)")
    g.add_argument("--no-ema", dest="ema", action="store_false",
                   help="take the raw model weights from a runner list")
    ap.add_argument("--resolution", type=int, default=None,
                    help="image size, to report attn_resolutions (weights do not encode it)")
    args = ap.parse_args()

    from safetensors.torch import save_file

    if not os.path.isfile(args.input):
        fail(f"no such file: {args.input}")
    obj = load_checkpoint(args.input)
    sd, desc = select_state_dict(obj, args.ema, args.input)
    note(f"{args.input}: {desc}, {len(sd)} entries")
    sd = clean_state_dict(sd, args.input)
    try:
        cfg = infer_config(sd, args.resolution)
    except ValueError as exc:
        fail(f"{args.input} does not look like a DDIM UNet checkpoint: {exc}")
    check = structure_check(sd, cfg)
    if check.startswith("MISMATCH"):
        fail(f"{args.input}: keys do not match a DDIM UNet with the inferred config: {check}")
    cfg["num_tensors"] = len(sd)
    cfg["num_params"] = int(sum(v.numel() for v in sd.values()))
    cfg["structure_check"] = check

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    save_file(sd, args.output, metadata={"source": os.path.basename(args.input),
                                         "format": "ddim-unet"})
    note(f"wrote {args.output} ({len(sd)} tensors, {cfg['num_params']} parameters, float32)")
    print(json.dumps(cfg))


if __name__ == "__main__":
    main()
