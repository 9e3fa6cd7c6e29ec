#!/usr/bin/env bash
# VoxCeleb1 speaker identification (1251 speakers), scored on the publisher's identification test split.
# Frame models are the default recipe (configs/finetune/voxceleb1_frame.yaml); patch uses the same with 16x16 tokens.
#   VOXCELEB1_ROOT=/data/voxceleb1 finetune/voxceleb1/run.sh runs/pretrain-frame_base/final frame
# Environment: VOXCELEB1_ROOT (prepares the lists), DATA (default data/voxceleb1), RUNS (default runs/voxceleb1),
# PYTHON. Further arguments are config overrides.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/voxceleb1}"
RUNS="${RUNS:-runs/voxceleb1}"
ensure_lists VOXCELEB1_ROOT "$DATA/train.json" -- "$PYTHON" "$REPO/finetune/voxceleb1/prepare.py" \
  --root "${VOXCELEB1_ROOT:-}" --out "$DATA"
SHAPE=("${FRAME_SHAPE[@]}")
[ "$TOKENS" = patch ] && SHAPE=("${PATCH_SHAPE[@]}")
finetune_run "$REPO/configs/finetune/voxceleb1_frame.yaml" "$RUNS/$TOKENS" "${SHAPE[@]}" \
  "data.train=[$DATA/train.json]" "data.valid=[$DATA/valid.json]" "data.test=[$DATA/test.json]" \
  "data.label_csv=$DATA/labels.csv" "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
