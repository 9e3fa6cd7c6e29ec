# Shared by the pretrain launch scripts (sourced, not run): arguments, config, run directory, resume.
#   usage of a launcher: SCRIPT patch|frame [tiny|small|base] [key=value overrides...]
# Environment: PYTHON (default python), RUN_DIR (default runs/pretrain-TOKENS_SIZE, what the fine-tuning configs'
# model.init expects), REPO (the checkout; default: the folder above this file), DRY_RUN=1 prints the command only.
set -euo pipefail

REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
PYTHON="${PYTHON:-python}"

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# Sets TOKENS, SIZE, CONFIG, RUN_DIR and the array EXTRA (the overrides) from the script's arguments.
parse_pretrain_args() {
  [ $# -ge 1 ] || die "usage: $(basename "$0") patch|frame [tiny|small|base] [key=value ...]"
  TOKENS="$1"; shift
  case "$TOKENS" in patch|frame) ;; *) die "tokens must be patch or frame, got '$TOKENS'" ;; esac
  SIZE=base
  if [ $# -ge 1 ] && [[ "$1" != *=* ]]; then SIZE="$1"; shift; fi
  case "$SIZE" in tiny|small|base) ;; *) die "size must be tiny, small or base, got '$SIZE'" ;; esac
  CONFIG="$REPO/configs/pretrain/${TOKENS}_${SIZE}.yaml"
  [ -f "$CONFIG" ] || die "$CONFIG: config not found"
  RUN_DIR="${RUN_DIR:-runs/pretrain-${TOKENS}_${SIZE}}"
  EXTRA=("$@")
}

# The `ssast pretrain` arguments: config, run directory, and the rerun policy: --resume RUN_DIR when the run
# already has a checkpoint; else --resume auto, which starts the run, starts again a start of this same run that
# died before its first checkpoint (nothing to resume, nothing to lose), refuses a folder holding another run, and
# lets a worker group that torchrun restarts mid-run resume the checkpoints written since.
pretrain_args() {
  PRETRAIN_ARGS=(pretrain -c "$CONFIG" "train.run_dir=$RUN_DIR")
  if [ -e "$RUN_DIR/last" ]; then
    echo "$(basename "$0"): $RUN_DIR has a checkpoint: resuming" >&2
    PRETRAIN_ARGS+=(--resume "$RUN_DIR")
  else
    PRETRAIN_ARGS+=(--resume auto)
  fi
  PRETRAIN_ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")
}

# Run (or with DRY_RUN=1 print) a command.
launch() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
