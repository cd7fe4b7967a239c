#!/usr/bin/env bash
# Trains the tiny GPT-2-architecture model of models/tiny-gpt2 from scratch (docs/lm.md), in one command:
#   scripts/make_tiny_lm.sh [OUT_DIR] [extra flags for scripts/train_tiny_lm.py, e.g. --minutes 60]
# Needs npm + node (the corpus and the reference tokenizer are npm packages, scripts/get_lm_corpus.sh)
# and Debian's python3-torch.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/tiny-gpt2}
shift || true
WORK=${MSAE_LM_WORK:-out/lm-corpus}
scripts/get_lm_corpus.sh "$WORK"
nice -n 10 /usr/bin/python3 scripts/train_tiny_lm.py --train "$WORK/train.bin" --heldout "$WORK/heldout.bin" \
  --out "$OUT" --n-embd 64 --n-head 4 --n-layer 4 --min-count 8 "$@"
