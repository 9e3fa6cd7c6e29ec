#!/usr/bin/env bash
# ESC-50, the SSAST recipe, five-fold cross-validation: fine-tune one model per fold, then report mean +- std.
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
ensure_lists ESC50_ROOT "$DATA/labels.csv" -- "$PYTHON" "$REPO/finetune/esc50/prepare.py" --root "${ESC50_ROOT:-}" --out "$DATA"
for k in $FOLDS; do
  [ -f "$DATA/fold${k}_train.json" ] || die "$DATA/fold${k}_train.json not found; run finetune/esc50/prepare.py"
  finetune_run "$REPO/configs/finetune/esc50_${TOKENS}.yaml" "$RUNS/${TOKENS}-fold${k}" \
    "data.train=[$DATA/fold${k}_train.json]" "data.valid=[$DATA/fold${k}_eval.json]" "data.label_csv=$DATA/labels.csv" \
    "${INIT_ARGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
done
[ "${DRY_RUN:-0}" = 1 ] && exit 0
# each fold's accuracy: the final model on that fold's held-out clips (metrics.json "final")
"$PYTHON" - "$RUNS" "$TOKENS" $FOLDS <<'PY'
import json, statistics, sys
from pathlib import Path

runs, tokens, folds = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
acc = {}
for k in folds:
    path = runs / f"{tokens}-fold{k}" / "metrics.json"
    acc[k] = json.loads(path.read_text())["final"]["accuracy"]
    print(f"fold {k}: accuracy {100 * acc[k]:.2f}%")
mean = statistics.fmean(acc.values())
std = statistics.pstdev(acc.values())  # over the folds run (population std, as for a fixed set of 5 folds)
print(f"ESC-50 {tokens}: {100 * mean:.2f} +- {100 * std:.2f}% over {len(acc)} folds")
summary = {"tokens": tokens, "folds": acc, "mean": mean, "std": std}
(runs / f"{tokens}-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PY
