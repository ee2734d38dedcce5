#!/usr/bin/env python3
"""Writes tests/fixtures/formats/: one small, valid file per outside-data format the
workspace reads. The hostile-input tests (`cargo test`, every truncation and seeded
mutations of each file) and the fuzz targets' seed corpora (scripts/fuzz.sh) start from
them. Sources: the committed MNIST test set and CIFAR-10 fixture (first records), and
synthetic values written here. Needs numpy, Pillow, safetensors and tokenizers.

    python3 scripts/make_format_fixtures.py
"""
import gzip, io, json, os, struct, sys, zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "formats")


def put(name, data):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")


def gz(data):
    # mtime 0 so that the file is the same on every run
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def png(width, height, rows, color_type, bit_depth):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def main():
    # IDX: the first three MNIST test digits and their labels, raw and gzipped.
    with gzip.open(os.path.join(ROOT, "datasets/mnist/t10k-images-idx3-ubyte.gz")) as f:
        images = f.read()
    with gzip.open(os.path.join(ROOT, "datasets/mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read()
    n = 3
    img = struct.pack(">IIII", 2051, n, 28, 28) + images[16:16 + n * 784]
    lab = struct.pack(">II", 2049, n) + labels[8:8 + n]
    put("mnist-images-idx3-ubyte", img)
    put("mnist-labels-idx1-ubyte", lab)
    put("mnist-images-idx3-ubyte.gz", gz(img))
    put("mnist-labels-idx1-ubyte.gz", gz(lab))
    # CIFAR-10 binary: the first record of the committed fixture.
    with open(os.path.join(ROOT, "datasets/cifar10-fixture/test_batch.bin"), "rb") as f:
        put("cifar10.bin", f.read(3073))
    # .npy: a little-endian f4 C-order array, and a big-endian f8 Fortran-order one.
    for name, arr, fortran in [("array-f4.npy", np.arange(12, dtype="<f4").reshape(3, 4) / 4, False),
                               ("array-f8-fortran.npy", np.arange(6, dtype=">f8").reshape(2, 3) - 2.5, True)]:
        buf = io.BytesIO()
        np.save(buf, np.asfortranarray(arr) if fortran else arr)
        put(name, buf.getvalue())
    # Images: an 8-bit RGB PNG, a grey PNG, a 16-bit RGB KITTI flow PNG, a JPEG.
    w, h = 9, 7
    rgb_rows = [bytes([(x * 29 + y * 7) % 256 for x in range(w) for _ in range(3)]) for y in range(h)]
    put("image-rgb.png", png(w, h, rgb_rows, 2, 8))
    put("image-grey.png", png(w, h, [bytes([(x * 31 + y * 11) % 256 for x in range(w)]) for y in range(h)], 0, 8))
    kitti_rows = []
    for y in range(h):
        row = b""
        for x in range(w):
            u, v = (x - 4) * 1.5, (y - 3) * -0.75
            row += struct.pack(">HHH", int(round(u * 64 + 2 ** 15)), int(round(v * 64 + 2 ** 15)), 1 if (x + y) % 5 else 0)
        kitti_rows.append(row)
    put("flow-kitti.png", png(w, h, kitti_rows, 2, 16))
    from PIL import Image
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), b"".join(rgb_rows)).save(buf, format="JPEG", quality=90)
    put("image.jpg", buf.getvalue())
    # Optical flow: Middlebury .flo and a colour .pfm (little-endian, bottom row first).
    uv = np.stack(np.meshgrid(np.arange(w) - 4.0, np.arange(h) * 0.5), -1).astype("<f4")
    put("flow.flo", b"PIEH" + struct.pack("<ii", w, h) + uv.tobytes())
    pfm = np.concatenate([uv, np.zeros((h, w, 1), "<f4")], -1)[::-1]
    put("flow.pfm", f"PF\n{w} {h}\n-1.0\n".encode() + pfm.astype("<f4").tobytes())
    # WAV: 16-bit PCM mono and 32-bit float stereo.
    t = np.arange(200)
    pcm = (np.sin(t * 0.1) * 12000).astype("<i2").tobytes()
    put("audio-pcm16.wav", b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data" + struct.pack("<I", len(pcm)) + pcm)
    fl = np.stack([np.sin(t * 0.05), np.cos(t * 0.07)], -1).astype("<f4").tobytes()
    put("audio-float32.wav", b"RIFF" + struct.pack("<I", 36 + len(fl)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 3, 2, 8000, 64000, 8, 32) + b"data" + struct.pack("<I", len(fl)) + fl)
    # Text corpus lines and a word-level tokenizer in the tokenizers JSON format.
    text = "the solver finds a fixed point\nthe gradient comes from the implicit function theorem\n<unk> words stay unknown\n"
    put("corpus.txt", text.encode())
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = sorted(set(text.split()) - {"<unk>"})
    vocab = {"<unk>": 0, "<eos>": 1, **{wd: i + 2 for i, wd in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    put("tokenizer.json", tok.to_str().encode())
    # deq-lm token cache: header (magic, version, pad, fingerprint, count) and u32 ids.
    ids = np.array([2, 5, 3, 1, 4, 0, 1], "<u4")
    put("tokens.ids", b"DEQLMTOK" + struct.pack("<IIQQ", 1, 0, 0x1234_5678_9abc_def0, len(ids)) + ids.tobytes())
    # A checkpoint: safetensors (two tensors) and its JSON sidecar.
    from safetensors.numpy import save
    put("checkpoint/step-00000002.safetensors", save({"w": np.arange(6, dtype="<f4").reshape(2, 3), "b": np.ones(3, "<f4")}))
    put("checkpoint/latest.json", json.dumps({"step": 2, "tensors": "step-00000002.safetensors", "epoch": 0, "rng_state": 12345}, indent=2).encode())
    # Planetoid text format: 5 nodes, 4 features, 2 classes.
    put("planetoid/meta.txt", b"nodes 5\nfeatures 4\nclasses 2\n")
    put("planetoid/edges.txt", b"0 1\n1 2\n2 3\n3 4\n4 0\n")
    put("planetoid/features.txt", b"0 2 0:1 3:1\n1 1 1:1\n2 2 2:1 3:0.5\n3 1 0:2\n4 1 3:1\n")
    put("planetoid/labels.txt", b"0\n1\n0\n-1\n1\n")
    put("planetoid/split.txt", b"train 0,1\nval 2\ntest 4\n")


if __name__ == "__main__":
    sys.exit(main())
