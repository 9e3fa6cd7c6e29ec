#!/usr/bin/env bash
# ESC-50, five-fold cross-validation: fine-tune one model per fold, then report the authors' number (the epoch with the
# best accuracy averaged over the folds) beside the final models' mean +- std. The SSAST recipe, or AST's for imagenet:.
#   ESC50_ROOT=/data/ESC-50-master finetune/esc50/run.sh runs/pretrain-patch_base/final patch
#   finetune/esc50/run.sh SSAST-Base-Frame-400.pth frame
#   finetune/esc50/run.sh imagenet:deit_base_distilled_patch16_384.pth patch
#   finetune/esc50/run.sh scratch patch
# Environment: ESC50_ROOT (prepares the lists), DATA (default data/esc50), RUNS (default runs/esc50),
# FOLDS (default "1 2 3 4 5"), PYTHON. Further arguments are config overrides (e.g. data.batch_size=24).
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/esc50}"
RUNS="${RUNS:-runs/esc50}"
FOLDS="${FOLDS:-1 2 3 4 5}"
# ImageNet init is the AST path: AST's own ESC-50 recipe (its settings differ from SSAST's), in runs named ast_imagenet
if [[ "$INIT" == imagenet:* ]]; then
  CONFIG="$REPO/configs/finetune/esc50_ast_imagenet.yaml"; NAME=ast_imagenet
else
  CONFIG="$REPO/configs/finetune/esc50_${TOKENS}.yaml"; NAME="$TOKENS"
fi
ensure_lists ESC50_ROOT "$DATA/labels.csv" -- "$PYTHON" "$REPO/finetune/esc50/prepare.py" --root "${ESC50_ROOT:-}" --out "$DATA"
for k in $FOLDS; do
  [ -f "$DATA/fold${k}_train.json" ] || die "$DATA/fold${k}_train.json not found; run finetune/esc50/prepare.py"
  finetune_run "$CONFIG" "$RUNS/${NAME}-fold${k}" \
    "data.train=[$DATA/fold${k}_train.json]" "data.valid=[$DATA/fold${k}_eval.json]" "data.label_csv=$DATA/labels.csv" \
    "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
done
[ "${DRY_RUN:-0}" = 1 ] && exit 0
# the authors' number (the epoch with the best fold-averaged accuracy) beside the final models' mean +- std
"$PYTHON" "$REPO/finetune/summary.py" esc50 "$RUNS" "$NAME" $FOLDS --out "$RUNS/${NAME}-summary.json"
