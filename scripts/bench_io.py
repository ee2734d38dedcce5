"""Shared by the PyTorch benchmark twins: reading the problem instances the Rust benchmarks
write (`deq-bench --write-problem`, `ignn-bench --write-instance`), so that both sides measure
the identical problem. Standard library and torch only (no `safetensors` package needed).
"""

import json

import torch

_DTYPES = {"F32": torch.float32, "F64": torch.float64, "U32": torch.int32, "I64": torch.int64}


def read_safetensors(path):
    """Reads every tensor of a safetensors file into a dict of torch tensors (U32 as int32)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8:
        raise SystemExit(f"{path}: not a safetensors file (truncated)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise SystemExit(f"{path}: header length {n} exceeds the file ({len(data)} bytes)")
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in _DTYPES:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        lo, hi = meta["data_offsets"]
        if not 0 <= lo <= hi <= len(body):
            raise SystemExit(f"{path}: tensor {name} lies outside the file")
        t = torch.frombuffer(bytearray(body[lo:hi]), dtype=_DTYPES[meta["dtype"]])
        out[name] = t.reshape(meta["shape"]).clone()
    return out


def read_toml_with_sets(path, sets):
    """A TOML config with `--set TABLE.KEY=VALUE` overrides applied (values parsed as TOML, bare
    words as strings: `deq.f_solver=broyden`), as the Rust binaries read `--config` and `--set`."""
    import tomllib
    with open(path, "rb") as fh:
        cfg = tomllib.load(fh)
    for s in sets:
        key, _, raw = s.partition("=")
        table, _, name = key.partition(".")
        if not name or not raw:
            raise SystemExit(f"--set {s}: expected TABLE.KEY=VALUE")
        try:
            val = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            val = raw
        cfg.setdefault(table, {})[name] = val
    return cfg
