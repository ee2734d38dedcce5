#!/usr/bin/env bash
# Downloads TU graph-classification datasets (Morris et al., TUDataset) into
# ${DEQ_DATA_DIR:-datasets}/<NAME>, the layout `ignn::tu` and configs/ignn/tu-mutag.toml read.
# Usage: datasets/fetch_tu.sh MUTAG PTC_MR PROTEINS NCI1. Needs internet, curl and unzip.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 NAME [NAME ...]" >&2; exit 2; }
root="${DEQ_DATA_DIR:-$(dirname "$0")}"
for name in "$@"; do
  tmp=$(mktemp -d)
  curl -fL --retry 3 -o "$tmp/$name.zip" "https://www.chrsmrrs.com/graphkerneldatasets/$name.zip"
  unzip -q "$tmp/$name.zip" -d "$tmp"
  mkdir -p "$root/$name"
  mv "$tmp/$name/"*.txt "$root/$name/"
  rm -rf "$tmp"
  echo "$name in $root/$name"
done
