#!/usr/bin/env python3
"""Build the CIFAR-10 binary fixture from the 20 real CIFAR-10 test images.

Reads `cifar10_<index>_<label>.png` (32x32 RGB, 8-bit) from the smoke folder
(default: $DEQ_DATA_DIR/cifar10_smoke) and writes
`datasets/cifar10-fixture/test_batch.bin` in the real CIFAR-10 binary format, in index
order: per record 1 label byte, then 1024 R bytes, 1024 G bytes, 1024 B bytes (row-major).

Only the standard library is used (zlib for the PNG IDAT stream), so no PIL is needed.

Usage: python3 scripts/make_cifar_fixture.py [SRC_DIR] [OUT_FILE]
"""

import os
import re
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


def decode_png_rgb(path):
    """Returns (width, height, rows) with rows a list of bytearrays of RGB triples."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos = 8
    idat = bytearray()
    ihdr = None
    palette = None
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"{path}: truncated chunk header")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ValueError(f"{path}: truncated {ctype!r} chunk")
        pos += 12 + length
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"PLTE":
            palette = body
        elif ctype == b"IDAT":
            idat += body
        elif ctype == b"IEND":
            break
    if ihdr is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, color, _comp, _filt, interlace = ihdr
    if depth != 8 or interlace != 0:
        raise ValueError(f"{path}: only 8-bit non-interlaced PNGs are supported")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if channels is None:
        raise ValueError(f"{path}: unsupported PNG colour type {color}")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"{path}: decompressed size {len(raw)} != {height * (stride + 1)}")
    rows = []
    prev = bytearray(stride)
    bpp = channels
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 0:
                pass
            elif ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                line[x] = (line[x] + paeth(a, b, c)) & 0xFF
            else:
                raise ValueError(f"{path}: bad filter type {ftype} in row {y}")
        prev = line
        rgb = bytearray()
        for x in range(width):
            px = line[x * channels:(x + 1) * channels]
            if color == 2:
                rgb += px
            elif color == 6:
                rgb += px[:3]
            elif color == 0:
                rgb += bytes([px[0]] * 3)
            elif color == 4:
                rgb += bytes([px[0]] * 3)
            elif color == 3:
                if palette is None:
                    raise ValueError(f"{path}: palette image without PLTE")
                rgb += palette[px[0] * 3:px[0] * 3 + 3]
        rows.append(rgb)
    return width, height, rows


def main():
    data_dir = os.environ.get("DEQ_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(data_dir, "cifar10_smoke")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "datasets", "cifar10-fixture", "test_batch.bin")
    pat = re.compile(r"^cifar10_(\d+)_(\d)\.png$")
    entries = []
    for name in os.listdir(src):
        m = pat.match(name)
        if m:
            entries.append((int(m.group(1)), int(m.group(2)), name))
    entries.sort()
    if not entries:
        sys.exit(f"{src}: no cifar10_<index>_<label>.png files")
    records = bytearray()
    for index, label, name in entries:
        w, h, rows = decode_png_rgb(os.path.join(src, name))
        if (w, h) != (32, 32):
            sys.exit(f"{name}: expected 32x32, got {w}x{h}")
        record = bytearray([label])
        for ch in range(3):
            for row in rows:
                record += row[ch::3]
        assert len(record) == 3073
        records += record
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(records)
    labels = " ".join(str(l) for _, l, _ in entries)
    print(f"wrote {out}: {len(entries)} records ({len(records)} bytes); labels: {labels}")


if __name__ == "__main__":
    main()
