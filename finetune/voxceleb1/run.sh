#!/usr/bin/env bash
# VoxCeleb1 speaker identification (1251 speakers), scored on the publisher's identification test split.
# The default recipe is the authors' SUPERB setup (configs/finetune/voxceleb1_frame.yaml); patch uses the same with
# 16x16 tokens at stride 10, as theirs did. RECIPE=ssast_style runs our SSAST-style alternative instead
# (voxceleb1_frame_ssast_style.yaml) into RUNS/TOKENS_ssast_style.
#   VOXCELEB1_ROOT=/data/voxceleb1 finetune/voxceleb1/run.sh runs/pretrain-frame_base/final frame
# Environment: VOXCELEB1_ROOT (prepares the lists), DATA (default data/voxceleb1), RUNS (default runs/voxceleb1),
# RECIPE (superb or ssast_style, default superb), PYTHON. Further arguments are config overrides.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/voxceleb1}"
RUNS="${RUNS:-runs/voxceleb1}"
ensure_lists VOXCELEB1_ROOT "$DATA/train.json" -- "$PYTHON" "$REPO/finetune/voxceleb1/prepare.py" \
  --root "${VOXCELEB1_ROOT:-}" --out "$DATA"
case "${RECIPE:-superb}" in
  superb) CONFIG=voxceleb1_frame.yaml; RUN="$RUNS/$TOKENS" ;;
  ssast_style) CONFIG=voxceleb1_frame_ssast_style.yaml; RUN="$RUNS/${TOKENS}_ssast_style" ;;
  *) die "RECIPE must be superb or ssast_style, got '$RECIPE'" ;;
esac
SHAPE=("${FRAME_SHAPE[@]}")
[ "$TOKENS" = patch ] && SHAPE=("${PATCH_SHAPE[@]}")
finetune_run "$REPO/configs/finetune/$CONFIG" "$RUN" "${SHAPE[@]}" \
  "data.train=[$DATA/train.json]" "data.valid=[$DATA/valid.json]" "data.test=[$DATA/test.json]" \
  "data.label_csv=$DATA/labels.csv" "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
