#!/usr/bin/env bash
# Downloads the GraphSAGE PPI release (Hamilton et al. 2017; 24 graphs, 56944 nodes, 50
# features, 121 labels) into ${DEQ_DATA_DIR:-datasets}/ppi, the layout `configs/ignn/ppi.toml`
# reads (ppi-G.json, ppi-feats.npy, ppi-id_map.json, ppi-class_map.json). Needs internet,
# curl and unzip. Not committed: about 600 MB unpacked.
set -euo pipefail
dest="${DEQ_DATA_DIR:-$(dirname "$0")}/ppi"
mkdir -p "$dest"
tmp=$(mktemp -d)
curl -fL --retry 3 -o "$tmp/ppi.zip" "http://snap.stanford.edu/graphsage/ppi.zip"
unzip -q "$tmp/ppi.zip" -d "$tmp"
for f in ppi-G.json ppi-feats.npy ppi-id_map.json ppi-class_map.json; do
  mv "$tmp/ppi/$f" "$dest/$f"
done
rm -rf "$tmp"
echo "PPI in $dest"
