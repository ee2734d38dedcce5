#!/usr/bin/env python3
"""Wall-clock to a test accuracy, from `metrics.jsonl` files of `mdeq train` and of
`scripts/train_mdeq_torch.py` (one line per epoch with `test_acc`, `epoch_train_seconds` and
`elapsed_seconds`). Prints a markdown table: per run, the first epoch at or above each target,
the elapsed seconds at its end (training, test passes and data loading so far) and the training
seconds alone, then the final accuracy and total time.

Usage:
    python3 scripts/mdeq_time_to_acc.py --target 0.99 rust=runs/mdeq-mnist-small torch=runs/mdeq-mnist-torch
"""

import argparse
import json
import os
import sys


def load(path):
    f = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    try:
        rows = [json.loads(line) for line in open(f) if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{f}: {e}")
    rows = [r for r in rows if "test_acc" in r]
    if not rows:
        sys.exit(f"{f}: no epoch records with test_acc")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=float, action="append", default=None,
                    help="test accuracy to reach (repeatable; default 0.99)")
    ap.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER_OR_METRICS_FILE")
    args = ap.parse_args()
    targets = args.target or [0.99]
    print("| run | " + " | ".join(f"epoch / elapsed s / train s to {t:.2%}" for t in targets)
          + " | final test acc | epochs | total s |")
    print("|---|" + "---|" * len(targets) + "---|---|---|")
    for spec in args.runs:
        name, _, path = spec.partition("=")
        rows = load(path or name)
        cells = []
        for t in targets:
            train = 0.0
            cell = "not reached"
            for r in rows:
                train += r.get("epoch_train_seconds", 0.0)
                if r["test_acc"] >= t:
                    cell = f"{r['epoch']} / {r['elapsed_seconds']:.0f} / {train:.0f}"
                    break
            cells.append(cell)
        last = rows[-1]
        print(f"| {name} | " + " | ".join(cells)
              + f" | {last['test_acc']:.2%} | {last['epoch']} | {last['elapsed_seconds']:.0f} |")


if __name__ == "__main__":
    main()
