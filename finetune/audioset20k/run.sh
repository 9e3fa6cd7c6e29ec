#!/usr/bin/env bash
# AudioSet-20K (balanced train, scored on the eval set by mAP), the SSAST recipe, or AST's own for imagenet: (warm-up
# on). Frame models use the same recipe with 128x2 tokens at time stride 1. The train list is the PSLA label-enhanced
# one when prepare.py --enhanced-list wrote it (balanced_train_enhanced.json, what the authors train on), else the
# official labels (balanced_train.json).
#   AUDIOSET_ROOT=/data/audioset/audio AUDIOSET_CSV_DIR=/data/audioset/meta \
#     finetune/audioset20k/run.sh runs/pretrain-patch_base/final patch
# Environment: AUDIOSET_ROOT, AUDIOSET_CSV_DIR (default AUDIOSET_ROOT) prepare the lists, AUDIOSET_ENHANCED_LIST (the
# PSLA balanced_train_data_type1_2_mean.json) adds the label-enhanced one; DATA (default
# data/audioset), RUNS (default runs/audioset20k), PYTHON. Further arguments are config overrides.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/audioset}"
RUNS="${RUNS:-runs/audioset20k}"
ENHANCED=()
[ -n "${AUDIOSET_ENHANCED_LIST:-}" ] && ENHANCED=(--enhanced-list "$AUDIOSET_ENHANCED_LIST")
ensure_lists AUDIOSET_ROOT "$DATA/balanced_train.json" -- "$PYTHON" "$REPO/finetune/audioset20k/prepare.py" \
  --root "${AUDIOSET_ROOT:-}" --csv-dir "${AUDIOSET_CSV_DIR:-${AUDIOSET_ROOT:-}}" --out "$DATA" "${ENHANCED[@]+"${ENHANCED[@]}"}"
SHAPE=("${PATCH_SHAPE[@]}")
[ "$TOKENS" = frame ] && SHAPE=("${FRAME_SHAPE[@]}")
CONFIG="$REPO/configs/finetune/audioset20k_patch.yaml"; NAME="$TOKENS"
if [[ "$INIT" == imagenet:* ]]; then  # the AST path: AST's own balanced-set recipe, in a run named ast_imagenet
  CONFIG="$REPO/configs/finetune/audioset20k_ast_imagenet.yaml"; NAME=ast_imagenet
fi
TRAIN="$DATA/balanced_train.json"
[ -f "$DATA/balanced_train_enhanced.json" ] && TRAIN="$DATA/balanced_train_enhanced.json"
echo "audioset20k: training on $TRAIN" >&2
finetune_run "$CONFIG" "$RUNS/$NAME" "${SHAPE[@]}" \
  "data.train=[$TRAIN]" "data.test=[$DATA/eval.json]" \
  "data.label_csv=$DATA/class_labels_indices.csv" "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
