#!/usr/bin/env bash
# Your own labelled audio with configs/finetune/custom_template.yaml: prepare the lists (CUSTOM_ROOT = class folders,
# or CUSTOM_CSV = path,label[,split]), compute the fbank normalisation of your training clips once
# (DATA/norm_stats.json, from `ssast stats`), then fine-tune and score the final model on the test list.
#   CUSTOM_ROOT=/data/my_sounds finetune/custom/run.sh runs/pretrain-patch_base/final patch
# Environment: DATA (default data/custom), RUNS (default runs/custom), PYTHON. Further arguments are config overrides
# (e.g. audio.target_length=1024 for 10 s clips).
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/custom}"
RUNS="${RUNS:-runs/custom}"
CONFIG="$REPO/configs/finetune/custom_template.yaml"
if [ -n "${CUSTOM_CSV:-}" ]; then
  "$PYTHON" "$REPO/finetune/custom/prepare.py" --csv "$CUSTOM_CSV" --out "$DATA"
else
  ensure_lists CUSTOM_ROOT "$DATA/train.json" -- "$PYTHON" "$REPO/finetune/custom/prepare.py" --root "${CUSTOM_ROOT:-}" --out "$DATA"
fi
SHAPE=("${PATCH_SHAPE[@]}")
[ "$TOKENS" = frame ] && SHAPE=("${FRAME_SHAPE[@]}")
DATA_ARGS=("data.train=[$DATA/train.json]" "data.label_csv=$DATA/labels.csv")
# an empty split (too few clips) is left out of the run instead of failing it
for split in valid test; do
  if "$PYTHON" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["data"] else 1)' "$DATA/$split.json"; then
    DATA_ARGS+=("data.$split=[$DATA/$split.json]")
  else
    DATA_ARGS+=("data.$split=[]")
  fi
done
if [ ! -f "$DATA/norm_stats.json" ]; then
  echo "computing the fbank mean and std of $DATA/train.json (once; cached in $DATA/norm_stats.json)" >&2
  "$PYTHON" -m ssast stats -c "$CONFIG" "${SHAPE[@]}" "${DATA_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}" \
    > "$DATA/norm_stats.json.tmp"
  mv "$DATA/norm_stats.json.tmp" "$DATA/norm_stats.json"
fi
NORM=($("$PYTHON" -c 'import json, sys; s = json.load(open(sys.argv[1])); print("audio.norm_mean=%r audio.norm_std=%r" % (s["norm_mean"], s["norm_std"]))' "$DATA/norm_stats.json"))
finetune_run "$CONFIG" "$RUNS/$TOKENS" "${SHAPE[@]}" "${DATA_ARGS[@]}" "${NORM[@]}" "${INIT_ARGS[@]}" \
  "${EXTRA[@]+"${EXTRA[@]}"}"
