#!/usr/bin/env bash
# AudioSet-20K (balanced train, scored on the eval set by mAP), the SSAST recipe. Frame models use the same recipe
# with 128x2 tokens at time stride 1.
#   AUDIOSET_ROOT=/data/audioset/audio AUDIOSET_CSV_DIR=/data/audioset/meta \
#     finetune/audioset20k/run.sh runs/pretrain-patch_base/final patch
# Environment: AUDIOSET_ROOT, AUDIOSET_CSV_DIR (default AUDIOSET_ROOT) prepare the lists; DATA (default
# data/audioset), RUNS (default runs/audioset20k), PYTHON. Further arguments are config overrides.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/audioset}"
RUNS="${RUNS:-runs/audioset20k}"
ensure_lists AUDIOSET_ROOT "$DATA/balanced_train.json" -- "$PYTHON" "$REPO/finetune/audioset20k/prepare.py" \
  --root "${AUDIOSET_ROOT:-}" --csv-dir "${AUDIOSET_CSV_DIR:-${AUDIOSET_ROOT:-}}" --out "$DATA"
SHAPE=("${PATCH_SHAPE[@]}")
[ "$TOKENS" = frame ] && SHAPE=("${FRAME_SHAPE[@]}")
finetune_run "$REPO/configs/finetune/audioset20k_patch.yaml" "$RUNS/$TOKENS" "${SHAPE[@]}" \
  "data.train=[$DATA/balanced_train.json]" "data.test=[$DATA/eval.json]" \
  "data.label_csv=$DATA/class_labels_indices.csv" "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
