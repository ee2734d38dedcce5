#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the committed fixtures (tests/fixtures/formats, the
crates' test fixtures, configs/). Multi-file formats are joined with the separator of
fuzz/src/lib.rs. Existing corpus files are kept (libFuzzer adds to them).

    python3 scripts/fuzz_seeds.py
"""
import glob, os, shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F = os.path.join(ROOT, "tests/fixtures/formats")
SEP = b"\n\x00\xff==\xff\x00\n"


def files(*patterns):
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join(ROOT, p)))
    return out


def joined(paths):
    return SEP.join(open(p, "rb").read() for p in paths)


SEEDS = {
    "idx": files("tests/fixtures/formats/mnist-*"),
    "cifar": files("tests/fixtures/formats/cifar10.bin"),
    "npy": files("tests/fixtures/formats/*.npy", "crates/ignn/tests/fixtures/ppi-mini/*.npy"),
    "image": files("tests/fixtures/formats/*.png", "tests/fixtures/formats/*.jpg"),
    "safetensors": files("tests/fixtures/formats/checkpoint/*.safetensors", "crates/deq-ddim/tests/fixtures/ddpm-small/cases.safetensors"),
    "checkpoint": files("tests/fixtures/formats/checkpoint/latest.json"),
    "config": files("configs/*/*.toml"),
    "wav": files("tests/fixtures/formats/*.wav"),
    "flo": files("tests/fixtures/formats/*.flo"),
    "pfm": files("tests/fixtures/formats/*.pfm"),
    "kitti": files("tests/fixtures/formats/flow-kitti.png"),
    "tokenizer": files("tests/fixtures/formats/tokenizer.json"),
    "token_cache": files("tests/fixtures/formats/tokens.ids"),
    "corpus": files("tests/fixtures/formats/corpus.txt"),
}
FOLDERS = {
    "planetoid": [os.path.join(F, "planetoid", n) for n in ["meta.txt", "edges.txt", "features.txt", "labels.txt", "split.txt"]],
    "graphsage": [os.path.join(ROOT, "crates/ignn/tests/fixtures/ppi-mini", n) for n in ["ppi-G.json", "ppi-id_map.json", "ppi-class_map.json", "ppi-feats.npy"]],
    "tu": [os.path.join(ROOT, "crates/ignn/tests/fixtures/tu-mini", n) for n in ["MINI_A.txt", "MINI_graph_indicator.txt", "MINI_graph_labels.txt", "MINI_node_labels.txt", "MINI_node_attributes.txt"]],
}

for target, paths in SEEDS.items():
    d = os.path.join(ROOT, "fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    for p in paths:
        shutil.copy(p, os.path.join(d, "seed-" + os.path.basename(os.path.dirname(p)) + "-" + os.path.basename(p)))
    print(f"{target}: {len(paths)} seeds")
for target, paths in FOLDERS.items():
    d = os.path.join(ROOT, "fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "seed-fixture"), "wb").write(joined(paths))
    print(f"{target}: 1 seed ({len(paths)} files joined)")
