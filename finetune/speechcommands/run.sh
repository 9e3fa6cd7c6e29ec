#!/usr/bin/env bash
# Speech Commands V2 (35 words), the SSAST recipe; the final model is scored on the publisher's test list.
#   SC_ROOT=/data/speech_commands_v0.02 finetune/speechcommands/run.sh runs/pretrain-frame_base/final frame
# Environment: SC_ROOT (prepares the lists), DATA (default data/speechcommands), RUNS (default runs/speechcommands),
# PYTHON. Further arguments are config overrides.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_finetune_args "$@"
DATA="${DATA:-data/speechcommands}"
RUNS="${RUNS:-runs/speechcommands}"
ensure_lists SC_ROOT "$DATA/train.json" -- "$PYTHON" "$REPO/finetune/speechcommands/prepare.py" --root "${SC_ROOT:-}" --out "$DATA"
finetune_run "$REPO/configs/finetune/speechcommands_${TOKENS}.yaml" "$RUNS/$TOKENS" \
  "data.train=[$DATA/train.json]" "data.valid=[$DATA/valid.json]" "data.test=[$DATA/test.json]" \
  "data.label_csv=$DATA/labels.csv" "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
