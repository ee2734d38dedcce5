#!/usr/bin/env python3
"""Classical optical-flow baselines on the evaluation pairs, for the table of deq-flow's README.

Every folder under ROOT (default: $DEQ_DATA_DIR/flow) that holds two frames is a case; Sintel-like
folders with `clean/` and `final/` render passes and a shared `gt/` give one case per pass. The
ground truth is the `.flo` file next to the frames or in the sibling `gt/`. AEPE counts every pixel
(RAFT's Sintel protocol). Methods (OpenCV, grey input, THREADS threads):
zero flow, Farneback (pyramid 0.5, 5 levels, window 15, 3 iterations, poly 5 / 1.2),
DIS ultrafast and medium presets, Dual TV-L1 (contrib defaults).

    pip install opencv-contrib-python-headless numpy
    python3 scripts/flow_classical.py [--root DIR] [--json out.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

try:
    import cv2
except ImportError:
    sys.exit("needs OpenCV with contrib: pip install opencv-contrib-python-headless")


def read_flo(path):
    raw = open(path, "rb").read()
    if len(raw) < 12 or np.frombuffer(raw[:4], "<f4")[0] != 202021.25:
        raise SystemExit(f"{path}: not a .flo file")
    w, h = np.frombuffer(raw[4:12], "<i4")
    return np.frombuffer(raw[12:], "<f4").reshape(h, w, 2)


def cases(root):
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        passes = [p for p in ("clean", "final") if os.path.isdir(os.path.join(d, p))]
        if passes:
            gt_dir = os.path.join(d, "gt")
            flo = sorted(f for f in os.listdir(gt_dir) if f.endswith(".flo"))[0]
            for p in passes:
                frames = sorted(f for f in os.listdir(os.path.join(d, p)) if f.lower().endswith((".png", ".jpg")))
                out.append((f"{name}/{p}", os.path.join(d, p, frames[0]), os.path.join(d, p, frames[1]), os.path.join(gt_dir, flo)))
        else:
            files = sorted(os.listdir(d))
            frames = [f for f in files if f.lower().endswith((".png", ".jpg"))]
            flo = [f for f in files if f.endswith(".flo")]
            if len(frames) >= 2 and flo:
                out.append((name, os.path.join(d, frames[0]), os.path.join(d, frames[1]), os.path.join(d, flo[0])))
    return out


def methods():
    dis_fast = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    dis_med = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    return [
        ("zero flow", lambda a, b: np.zeros(a.shape + (2,), np.float32)),
        ("Farneback", lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 3, 5, 1.2, 0)),
        ("DIS ultrafast", lambda a, b: dis_fast.calc(a, b, None)),
        ("DIS medium", lambda a, b: dis_med.calc(a, b, None)),
        ("Dual TV-L1", lambda a, b: tvl1.calc(a, b, None)),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(os.environ.get("DEQ_DATA_DIR", "datasets"), "flow"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    cs = cases(args.root)
    if not cs:
        raise SystemExit(f"{args.root}: no frame pairs with ground truth")
    rows = {}
    for mname, fn in methods():
        per, secs = [], 0.0
        for cname, a, b, gt in cs:
            ia = cv2.imread(a, cv2.IMREAD_GRAYSCALE)
            ib = cv2.imread(b, cv2.IMREAD_GRAYSCALE)
            flow_gt = read_flo(gt)
            t = time.perf_counter()
            flow = fn(ia, ib)
            secs += time.perf_counter() - t
            per.append(float(np.sqrt(((flow - flow_gt) ** 2).sum(-1)).mean()))
        rows[mname] = {"aepe": dict(zip([c[0] for c in cs], per)), "mean": float(np.mean(per)), "seconds": secs}
    names = [c[0] for c in cs]
    print("| method | " + " | ".join(names) + " | mean | seconds (all pairs) |")
    print("|---|" + "---|" * (len(names) + 2))
    for m, r in rows.items():
        print(f"| {m} | " + " | ".join(f"{r['aepe'][n]:.2f}" for n in names) + f" | **{r['mean']:.2f}** | {r['seconds']:.2f} |")
    if args.json:
        json.dump({"opencv": cv2.__version__, "threads": args.threads, "methods": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
