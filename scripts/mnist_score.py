#!/usr/bin/env python3
"""Score generated MNIST digits with a small CNN classifier (confidence, class balance, FD).

Self-contained (numpy + torch, CPU, one thread). Two subcommands:

  python3 scripts/mnist_score.py train --data datasets/mnist --out runs/mnist-classifier.pt \
          [--epochs 2] [--seed 0] [--batch 128] [--lr 1e-3] [--width 32]
      Trains the classifier on the 60,000 MNIST training images, read from the IDX files
      (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`; gzip or
      plain; headers parsed and checked here: magic 2051/2049, counts, 28x28, file size).
      Pixels are scaled to [-1, 1] (x / 127.5 - 1, the diffusion model's range).
      Architecture (3x3 convs without padding, ReLU):
          conv 1->w (26x26) -> conv w->2w (24x24) -> maxpool (12x12) -> dropout 0.25
          -> conv 2w->4w (10x10) -> maxpool (5x5) -> dropout 0.25
          -> fc 4w*25 -> 128 -> ReLU   [the 128-d FEATURE layer]
          -> dropout 0.5 -> fc 128 -> 10
      Adam, cross-entropy, shuffling by a numpy Generator(seed); torch.manual_seed(seed) and
      deterministic algorithms, so the same seed gives the same weights on the same machine.
      Prints the test accuracy (10,000 test images) and the training time, and saves to --out
      a dict with the state_dict, the architecture, the accuracy, and the test-set feature
      statistics: mean (128,) and covariance (128, 128) of the feature layer over the 10,000
      test images, float64 (covariance with the 1/(n-1) normalisation, as in FID).

  python3 scripts/mnist_score.py score --classifier runs/mnist-classifier.pt \
          SAMPLES.npy [MORE.npy ...] [--json out.json] [--reference-test 1000] [--data DIR]
      Each SAMPLES.npy holds float32 samples shaped (N, 1, 28, 28) in [-1, 1]; values
      outside are clipped (the share of clipped values is reported). Only little-endian
      float32 ('<f4'), C-order .npy files are accepted (read with allow_pickle=False); any
      other dtype, byte order, Fortran order, shape or non-finite value is a clear error.
      For each file it reports
          n                 number of samples
          confident_share   share of samples whose max softmax probability >= 0.9
          mean_max_prob     mean over samples of the max softmax probability
          class_hist        counts of the argmax classes 0..9 (list of 10)
          fd                Frechet distance between the samples' 128-d features and the
                            saved test-set statistics
      plus the same rows for reference sets of real digits ("real data scores this"):
      the first N test digits and the first N training digits, N = --reference-test
      (default 1000; 0 disables). FD is biased upward at small N (it is not comparable
      across sample sizes), so compare a sample file against the reference row of the
      same N. Note the real test rows are a subset of the 10,000 images the statistics
      were taken from, so they score slightly lower than independent real digits would;
      the training rows are independent of the statistics (but were seen in training).
      --json writes {"classifier": ..., "reference": [...], "samples": [...]}.

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1^{1/2} S2 S1^{1/2})), computed in
float64 with symmetric eigendecompositions only (no scipy): S1^{1/2} from eigh(S1), then the
trace of the square root of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2} as the sum of the
square roots of its eigenvalues; tiny negative eigenvalues (round-off) are clamped to 0.
"""

import argparse
import ast
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_DIM = 128
CONFIDENT = 0.9
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- IDX reading

def _open_idx(data_dir, stem):
    """Returns the raw bytes of `stem` in data_dir, preferring `stem.gz` then `stem`."""
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw = f.read()
            if raw[:2] == b"\x1f\x8b":
                try:
                    raw = gzip.decompress(raw)
                except OSError as e:
                    sys.exit(f"error: {path}: bad gzip data ({e})")
            return path, raw
    sys.exit(f"error: neither {stem}.gz nor {stem} found in {data_dir}")


def read_idx_images(data_dir, stem):
    """Reads an IDX3 u8 image file -> uint8 array (n, 28, 28)."""
    path, raw = _open_idx(data_dir, stem)
    if len(raw) < 16:
        sys.exit(f"error: {path}: too short for an IDX3 header ({len(raw)} bytes)")
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4").astype(np.int64)
    if magic != 2051:
        sys.exit(f"error: {path}: bad magic {magic} (expected 2051 for u8 images, 3 dims)")
    if (rows, cols) != (28, 28):
        sys.exit(f"error: {path}: images are {rows}x{cols}, expected 28x28")
    if len(raw) != 16 + n * rows * cols:
        sys.exit(f"error: {path}: {len(raw)} bytes, expected 16 + {n}*{rows}*{cols} = "
                 f"{16 + n * rows * cols}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(data_dir, stem):
    """Reads an IDX1 u8 label file -> uint8 array (n,), checking labels are 0..9."""
    path, raw = _open_idx(data_dir, stem)
    if len(raw) < 8:
        sys.exit(f"error: {path}: too short for an IDX1 header ({len(raw)} bytes)")
    magic, n = np.frombuffer(raw[:8], dtype=">u4").astype(np.int64)
    if magic != 2049:
        sys.exit(f"error: {path}: bad magic {magic} (expected 2049 for u8 labels, 1 dim)")
    if len(raw) != 8 + n:
        sys.exit(f"error: {path}: {len(raw)} bytes, expected 8 + {n} = {8 + n}")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if labels.size and labels.max() > 9:
        sys.exit(f"error: {path}: label {labels.max()} out of range 0..9")
    return labels


def load_mnist(data_dir, split):
    """split 'train' or 'test' -> (images float32 (n,1,28,28) in [-1,1], labels int64 (n,))."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx_images(data_dir, f"{prefix}-images-idx3-ubyte")
    labels = read_idx_labels(data_dir, f"{prefix}-labels-idx1-ubyte")
    if len(images) != len(labels):
        sys.exit(f"error: {data_dir}: {split} has {len(images)} images but {len(labels)} labels")
    x = (images.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


# ----------------------------------------------------------------------------- .npy reading

def read_npy_header(path):
    """Parses a .npy header (format 1.0, 2.0 or 3.0) -> (shape, fortran_order, numpy dtype).
    Exits with a clear error on a missing file or a malformed header."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 10 or head[:6] != b"\x93NUMPY":
                sys.exit(f"error: {path}: not a .npy file (bad magic)")
            major, minor = head[6], head[7]
            if major == 1:
                hlen, start, enc = int.from_bytes(head[8:10], "little"), 10, "latin1"
            elif major in (2, 3):
                if len(head) < 12:
                    sys.exit(f"error: {path}: truncated .npy header")
                hlen, start = int.from_bytes(head[8:12], "little"), 12
                enc = "latin1" if major == 2 else "utf8"
            else:
                sys.exit(f"error: {path}: unsupported .npy format version {major}.{minor}")
            if hlen > 1 << 20:
                sys.exit(f"error: {path}: implausible .npy header length {hlen}")
            f.seek(start)
            text = f.read(hlen)
    except FileNotFoundError:
        sys.exit(f"error: {path}: no such file")
    except OSError as e:
        sys.exit(f"error: {path}: cannot read ({e})")
    try:
        d = ast.literal_eval(text.decode(enc))
        if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
            raise ValueError("header is not a dict with keys descr, fortran_order, shape")
        shape = tuple(d["shape"])
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"bad shape {d['shape']!r}")
        dtype = np.dtype(d["descr"]) if isinstance(d["descr"], str) else None
        if dtype is None:
            raise ValueError(f"structured dtype {d['descr']!r}")
    except (ValueError, SyntaxError, TypeError, UnicodeDecodeError) as e:
        sys.exit(f"error: {path}: malformed .npy header ({e})")
    return shape, bool(d["fortran_order"]), dtype


def load_samples(path):
    """Loads (N, 1, 28, 28) little-endian float32 C-order samples; exits with a clear error
    on anything else. Returns (clipped float32 array, share of values that were clipped)."""
    shape, fortran, dtype = read_npy_header(path)
    if dtype.str != "<f4":
        sys.exit(f"error: {path}: dtype {dtype.str!r} ({dtype}); only little-endian float32 "
                 f"'<f4' is accepted (convert with a.astype('<f4'))")
    if fortran:
        sys.exit(f"error: {path}: Fortran-order array; only C order is accepted "
                 f"(save np.ascontiguousarray(a))")
    if len(shape) != 4 or tuple(shape[1:]) != (1, 28, 28):
        sys.exit(f"error: {path}: shape {tuple(shape)}, expected (N, 1, 28, 28)")
    if shape[0] < 2:
        sys.exit(f"error: {path}: {shape[0]} samples; at least 2 are needed for a covariance")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        sys.exit(f"error: {path}: cannot load the data ({e})")
    if x.dtype.str != "<f4" or x.shape != tuple(shape) or not x.flags.c_contiguous:
        sys.exit(f"error: {path}: loaded array ({x.dtype.str}, {x.shape}) does not match "
                 f"its header")
    if not np.isfinite(x).all():
        sys.exit(f"error: {path}: {int((~np.isfinite(x)).sum())} non-finite values")
    clipped = float(np.mean((x < -1.0) | (x > 1.0)))
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False), clipped


# ----------------------------------------------------------------------------- model

class Net(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3)
        self.conv2 = nn.Conv2d(w, 2 * w, 3)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3)
        self.fc1 = nn.Linear(4 * w * 5 * 5, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.drop_conv = nn.Dropout(0.25)
        self.drop_fc = nn.Dropout(0.5)

    def features(self, x):
        """x (B,1,28,28) in [-1,1] -> (B,128) post-ReLU penultimate activations."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.drop_conv(x)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = self.drop_conv(x)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.drop_fc(self.features(x)))


@torch.no_grad()
def run_model(model, x, batch=500):
    """x float32 numpy (n,1,28,28) -> (features float64 (n,128), probs float64 (n,10))."""
    model.eval()
    feats, probs = [], []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch])
        f = model.features(xb)
        p = F.softmax(model.fc2(f), dim=1)
        feats.append(f.double().numpy())
        probs.append(p.double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


# ----------------------------------------------------------------------------- statistics

def feature_stats(feats):
    """feats (n, d) -> (mean (d,), covariance (d, d) with 1/(n-1)), float64."""
    feats = np.asarray(feats, dtype=np.float64)
    mu = feats.mean(axis=0)
    sigma = np.cov(feats, rowvar=False)
    return mu, sigma


def _sym_sqrt(a):
    """Square root of a symmetric PSD matrix via eigh (negative eigenvalues clamped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2):
    """|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1^{1/2} S2 S1^{1/2})), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    r = _sym_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def score_array(model, x, ref_mu, ref_sigma):
    feats, probs = run_model(model, x)
    maxp = probs.max(axis=1)
    cls = probs.argmax(axis=1)
    mu, sigma = feature_stats(feats)
    return {
        "n": int(len(x)),
        "confident_share": float(np.mean(maxp >= CONFIDENT)),
        "mean_max_prob": float(maxp.mean()),
        "class_hist": np.bincount(cls, minlength=10).astype(int).tolist(),
        "fd": frechet_distance(mu, sigma, ref_mu, ref_sigma),
    }


# ----------------------------------------------------------------------------- commands

def set_threads():
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def cmd_train(args):
    set_threads()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    xtr, ytr = load_mnist(args.data, "train")
    xte, yte = load_mnist(args.data, "test")
    print(f"data: {len(xtr)} train, {len(xte)} test images from {args.data}", flush=True)

    model = Net(args.width)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xtr)))
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm), args.batch):
            idx = perm[i:i + args.batch]
            xb, yb = xtr_t[idx], ytr_t[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / total:.4f}, "
              f"train acc {correct / total:.4f}, {time.time() - t0:.1f}s", flush=True)
    train_time = time.time() - t0

    feats, probs = run_model(model, xte)
    acc = float((probs.argmax(1) == yte).mean())
    mu, sigma = feature_stats(feats)
    print(f"test accuracy {acc * 100:.2f}% ({int(round(acc * len(yte)))}/{len(yte)}); "
          f"training time {train_time:.1f}s", flush=True)
    if acc <= 0.985:
        print("warning: test accuracy <= 98.5%; consider more --epochs", file=sys.stderr)

    out = {
        "format_version": FORMAT_VERSION,
        "arch": {"name": "mnist_score.Net", "width": args.width, "feature_dim": FEATURE_DIM},
        "state_dict": model.state_dict(),
        "test_accuracy": acc,
        "test_feature_mean": torch.from_numpy(mu),          # float64 (128,)
        "test_feature_cov": torch.from_numpy(sigma),        # float64 (128, 128)
        "test_feature_n": int(len(xte)),
        "input_range": [-1.0, 1.0],
        "train": {"epochs": args.epochs, "seed": args.seed, "batch": args.batch,
                  "lr": args.lr, "seconds": train_time,
                  "data": os.path.abspath(args.data)},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    torch.save(out, tmp)
    os.replace(tmp, args.out)
    print(f"saved {args.out}")


def load_classifier(path):
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        sys.exit(f"error: {path}: no such file (train it with `mnist_score.py train`)")
    if not isinstance(ck, dict) or ck.get("format_version") != FORMAT_VERSION:
        sys.exit(f"error: {path}: not a mnist_score.py classifier file")
    model = Net(ck["arch"]["width"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    mu = ck["test_feature_mean"].double().numpy()
    sigma = ck["test_feature_cov"].double().numpy()
    return ck, model, mu, sigma


def _fmt_row(name, r, extra=""):
    return (f"{name:<40} n={r['n']:<6d} conf>=0.9 {r['confident_share']:.4f}  "
            f"mean_maxp {r['mean_max_prob']:.4f}  FD {r['fd']:10.4f}{extra}\n"
            f"{'':<40} class_hist {r['class_hist']}")


def cmd_score(args):
    set_threads()
    ck, model, ref_mu, ref_sigma = load_classifier(args.classifier)
    print(f"classifier {args.classifier}: test accuracy {ck['test_accuracy'] * 100:.2f}%, "
          f"FD reference = features of {ck['test_feature_n']} MNIST test images")

    reference = []
    n_ref = args.reference_test
    if n_ref:
        data = args.data or ck["train"]["data"]
        for split in ("test", "train"):
            x, _ = load_mnist(data, split)
            if n_ref > len(x):
                sys.exit(f"error: --reference-test {n_ref} > {len(x)} {split} images")
            r = score_array(model, x[:n_ref], ref_mu, ref_sigma)
            r["name"] = f"real {split}[:{n_ref}]"
            reference.append(r)
        print("reference (real data scores this):")
        for r in reference:
            print(_fmt_row(r["name"], r))

    samples = []
    if args.samples:
        print("samples:")
    for path in args.samples:
        x, clipped = load_samples(path)
        r = score_array(model, x, ref_mu, ref_sigma)
        r["file"] = path
        r["clipped_share"] = clipped
        samples.append(r)
        extra = f"  clipped {clipped:.4f}" if clipped else ""
        note = "" if r["n"] > FEATURE_DIM else f"  (n <= {FEATURE_DIM}: FD is unreliable)"
        print(_fmt_row(os.path.basename(path), r, extra + note))
        if n_ref and r["n"] != n_ref:
            print(f"{'':<40} note: n={r['n']} differs from the reference N={n_ref}; "
                  f"FD depends on n (use --reference-test {r['n']})")

    if args.json:
        out = {
            "classifier": os.path.abspath(args.classifier),
            "classifier_test_accuracy": ck["test_accuracy"],
            "confident_threshold": CONFIDENT,
            "reference": reference,
            "samples": samples,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the classifier and save test-set feature stats")
    t.add_argument("--data", default="datasets/mnist", help="directory of the MNIST IDX files")
    t.add_argument("--out", default="runs/mnist-classifier.pt")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--width", type=int, default=32, help="channels of conv1 (then 2x, 4x)")
    s = sub.add_parser("score", help="score .npy sample files")
    s.add_argument("samples", nargs="*", metavar="SAMPLES.npy")
    s.add_argument("--classifier", default="runs/mnist-classifier.pt")
    s.add_argument("--json", help="write the results as JSON to this file")
    s.add_argument("--reference-test", type=int, default=1000, metavar="N",
                   help="also score the first N real test and N training digits (0: off)")
    s.add_argument("--data", help="MNIST directory for the reference rows "
                                  "(default: the one the classifier was trained on)")
    args = p.parse_args(argv)
    if args.cmd == "train":
        if args.epochs < 1 or args.batch < 1 or args.width < 1:
            p.error("--epochs, --batch and --width must be >= 1")
        cmd_train(args)
    else:
        if args.reference_test < 0:
            p.error("--reference-test must be >= 0")
        if not args.samples and not args.reference_test:
            p.error("nothing to score: give SAMPLES.npy files or --reference-test N")
        cmd_score(args)


if __name__ == "__main__":
    main()
