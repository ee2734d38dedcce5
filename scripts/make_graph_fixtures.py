"""Writes the small reader fixtures of crates/ignn/tests/fixtures in the exact published formats:
GraphSAGE (networkx node_link_data JSON + numpy .npy + JSON maps) and TU (comma-separated text).
Run from the repository root: python3 scripts/make_graph_fixtures.py"""
import json
import os

import networkx as nx
import numpy as np
from networkx.readwrite import json_graph

root = "crates/ignn/tests/fixtures"

# GraphSAGE / PPI: three disconnected graphs (train 0-5, val 6-8, test 9-11), 4 features,
# 3 labels, feature rows stored in a permuted order to exercise id_map.
os.makedirs(f"{root}/ppi-mini", exist_ok=True)
G = nx.Graph()
for i in range(12):
    G.add_node(i, val=6 <= i <= 8, test=i >= 9)
G.add_edges_from([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (6, 7), (7, 8), (9, 10), (10, 11), (11, 9)])
data = json_graph.node_link_data(G, edges="links")
with open(f"{root}/ppi-mini/ppi-G.json", "w") as f:
    json.dump(data, f)
perm = [(5 * i + 3) % 12 for i in range(12)]
feats = np.zeros((12, 4), dtype=np.float32)
for i in range(12):
    feats[perm[i]] = [i, i * 0.5, -i, 1.0]
np.save(f"{root}/ppi-mini/ppi-feats.npy", feats)
with open(f"{root}/ppi-mini/ppi-id_map.json", "w") as f:
    json.dump({str(i): perm[i] for i in range(12)}, f)
with open(f"{root}/ppi-mini/ppi-class_map.json", "w") as f:
    json.dump({str(i): [i % 2, int(i % 3 == 0), 1] for i in range(12)}, f)

# TU: 4 graphs (two triangles with graph label 1, two 3-node paths with label -1), node labels
# 0/1/7 and 2 node attributes; undirected edges listed in both directions as in TUDataset.
os.makedirs(f"{root}/tu-mini", exist_ok=True)
edges, indicator, node_labels, attrs = [], [], [], []
graph_labels = [1, -1, 1, -1]
node = 1
for g, label in enumerate(graph_labels, start=1):
    ids = [node, node + 1, node + 2]
    node += 3
    pairs = [(ids[0], ids[1]), (ids[1], ids[2])] + ([(ids[2], ids[0])] if label == 1 else [])
    for a, b in pairs:
        edges += [(a, b), (b, a)]
    for k, v in enumerate(ids):
        indicator.append(g)
        node_labels.append([0, 1, 7][k])
        attrs.append((0.5 * v, -1.0 * k))
with open(f"{root}/tu-mini/MINI_A.txt", "w") as f:
    f.writelines(f"{a}, {b}\n" for a, b in edges)
with open(f"{root}/tu-mini/MINI_graph_indicator.txt", "w") as f:
    f.writelines(f"{g}\n" for g in indicator)
with open(f"{root}/tu-mini/MINI_graph_labels.txt", "w") as f:
    f.writelines(f"{l}\n" for l in graph_labels)
with open(f"{root}/tu-mini/MINI_node_labels.txt", "w") as f:
    f.writelines(f"{l}\n" for l in node_labels)
with open(f"{root}/tu-mini/MINI_node_attributes.txt", "w") as f:
    f.writelines(f"{a}, {b}\n" for a, b in attrs)
