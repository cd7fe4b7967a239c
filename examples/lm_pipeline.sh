#!/usr/bin/env bash
# End to end on a language model (docs/lm.md): text -> activations -> Matryoshka and BatchTopK SAEs of the
# same width and L0 -> downstream CE with the SAE spliced in, first-letter absorption, per prefix -> the
# feature browser of both SAEs on the harvested rows (OUT/browser/index.html, docs/browser.md).
#   examples/lm_pipeline.sh [MODEL_DIR] [OUT_DIR]
# Defaults: the shipped tiny model (models/tiny-gpt2) and out/lm-example. The text is the corpus of
# scripts/make_tiny_lm.sh (downloaded with npm into out/lm-corpus when absent): the training split is
# harvested, the held-out split is scored. Any GPT-2 directory (config.json + model.safetensors, e.g. HF
# `gpt2`) works the same; set LAYER, D_SAE, K, TOKENS, TRAIN_TOKENS, EVAL_TOKENS, WORDS to scale it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/tiny-gpt2}
OUT=${2:-out/lm-example}
LAYER=${LAYER:-2}
D_SAE=${D_SAE:-512}
K=${K:-16}
TOKENS=${TOKENS:-1000000}          # rows harvested
TRAIN_TOKENS=${TRAIN_TOKENS:-4000000}
EVAL_TOKENS=${EVAL_TOKENS:-32768}
WORDS=${WORDS:-8000}
MSAE=${MSAE:-./build/msae}
CORPUS=${MSAE_LM_WORK:-out/lm-corpus}
[ -f "$CORPUS/train.txt" ] || scripts/get_lm_corpus.sh "$CORPUS"
mkdir -p "$OUT"
$MSAE harvest --model "$MODEL" --text $(cat "$CORPUS/train.txt") --layer "$LAYER" --site resid_pre --ctx 128 \
  --skip-bos --max-tokens "$TOKENS" --out "$OUT/acts" --overwrite > "$OUT/harvest.json"
for arch in matryoshka batchtopk; do
  $MSAE train --data "$OUT/acts" --arch $arch --d-sae "$D_SAE" --k "$K" --batch 4096 \
    --tokens "$TRAIN_TOKENS" --out "$OUT/$arch" --overwrite > "$OUT/train_$arch.txt"
  $MSAE eval --sae "$OUT/$arch" --model "$MODEL" --text $(cat "$CORPUS/heldout.txt") --layer "$LAYER" \
    --site resid_pre --ctx 128 --max-tokens "$EVAL_TOKENS" --json > "$OUT/ce_$arch.json"
done
$MSAE absorption --sae "$OUT/matryoshka" "$OUT/batchtopk" --model "$MODEL" --layer "$LAYER" --site resid_pre \
  --max-words "$WORDS" > "$OUT/absorption.json"
/usr/bin/python3 examples/lm_table.py "$OUT"
$MSAE browse --sae "$OUT/matryoshka" "$OUT/batchtopk" --acts "$OUT/acts" --model "$MODEL" --out "$OUT/browser" \
  --overwrite > "$OUT/browse.json"
echo "feature browser: $OUT/browser/index.html"
