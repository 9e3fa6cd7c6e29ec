#!/usr/bin/env bash
# Speech Commands V2 (35 words), the SSAST recipe, or AST's own for imagenet: (warm-up off). As the authors report it: the model that was best on the validation
# list (best/) scored on the publisher's test list; beside it, the final model on the test list.
#   SC_ROOT=/data/speech_commands_v0.02 finetune/speechcommands/run.sh runs/pretrain-frame_base/final frame
# Environment: SC_ROOT (prepares the lists), DATA (default data/speechcommands), RUNS (default runs/speechcommands),
# PYTHON. Further arguments are config overrides.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/speechcommands}"
RUNS="${RUNS:-runs/speechcommands}"
NAME="$TOKENS"
CONFIG="$REPO/configs/finetune/speechcommands_${TOKENS}.yaml"
# ImageNet init is the AST path: AST's own Speech Commands recipe (no warm-up, 16x16 patches), in a run named ast_imagenet
if [[ "$INIT" == imagenet:* ]]; then
  CONFIG="$REPO/configs/finetune/speechcommands_ast_imagenet.yaml"; NAME=ast_imagenet
fi
RUN="$RUNS/$NAME"
ensure_lists SC_ROOT "$DATA/train.json" -- "$PYTHON" "$REPO/finetune/speechcommands/prepare.py" --root "${SC_ROOT:-}" --out "$DATA"
finetune_run "$CONFIG" "$RUN" \
  "data.train=[$DATA/train.json]" "data.valid=[$DATA/valid.json]" "data.test=[$DATA/test.json]" \
  "data.label_csv=$DATA/labels.csv" "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
# the best-on-validation model on the test list, once per finished training (again when metrics.json is newer)
BEST_TEST="$RUN/best_test.json"
EVAL=("$PYTHON" -m ssast evaluate "$RUN/best" -c "$RUN/config.yaml" "data.test=[$DATA/test.json]" --out "$BEST_TEST.tmp")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${EVAL[@]}"; echo; exit 0; fi
if [ ! -f "$BEST_TEST" ] || [ "$RUN/metrics.json" -nt "$BEST_TEST" ]; then
  "${EVAL[@]}" > /dev/null
  mv "$BEST_TEST.tmp" "$BEST_TEST"
fi
"$PYTHON" "$REPO/finetune/summary.py" speechcommands "$RUN" "$BEST_TEST" --out "$RUNS/${NAME}-summary.json"
