# Shared by the finetune/*/run.sh scripts (sourced, not run): arguments, init, token shapes, one fine-tuning run.
#   usage of a run script: run.sh INIT patch|frame [key=value overrides...]
#   INIT: an SSAST checkpoint (our run's final/ folder, or the authors' .pth), imagenet:FILE (a DeiT state dict,
#         patch models only: the AST path), or scratch.
# Environment: PYTHON (default python), DATA (the lists' folder), RUNS (where runs go), DRY_RUN=1 prints commands.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
# the overlapping shapes of the SSAST fine-tuning recipes
PATCH_SHAPE=(model.fshape=16 model.tshape=16 model.fstride=10 model.tstride=10)
FRAME_SHAPE=(model.fshape=128 model.tshape=2 model.fstride=128 model.tstride=1)

die() { echo "$(basename "$(dirname "$0")")/$(basename "$0"): error: $*" >&2; exit 2; }

# Sets INIT, TOKENS, INIT_ARGS (model.init and, for ImageNet, AST's pooling) and EXTRA (the overrides).
parse_finetune_args() {
  [ $# -ge 2 ] || die "usage: $0 INIT patch|frame [key=value ...]   (INIT: checkpoint dir or .pth, imagenet:FILE, scratch)"
  INIT="$1"; TOKENS="$2"; shift 2
  case "$TOKENS" in patch|frame) ;; *) die "tokens must be patch or frame, got '$TOKENS'" ;; esac
  case "$INIT" in
    scratch) INIT_ARGS=(model.init=scratch) ;;
    imagenet:*)
      [ "$TOKENS" = patch ] || die "ImageNet DeiT weights have 16x16 patches: use patch tokens with $INIT"
      [ -f "${INIT#imagenet:}" ] || [[ "$INIT" == imagenet:timm* ]] || die "${INIT#imagenet:}: weights file not found"
      INIT_ARGS=("model.init=$INIT" model.pooling=cls) ;;  # AST pools the cls and distillation tokens
    *)
      [ -e "$INIT" ] || die "init $INIT: not found; give a checkpoint folder (e.g. runs/pretrain-${TOKENS}_base/final), an authors' .pth, imagenet:FILE or scratch"
      INIT_ARGS=("model.init=$INIT") ;;
  esac
  EXTRA=("$@")
}

# Require the lists, or run the prepare command given after "--" when they are missing or ROOT_VAR is set.
#   ensure_lists "ESC50_ROOT" "$DATA/fold1_train.json" -- "$PYTHON" prepare.py --root ... --out "$DATA"
ensure_lists() {
  local root_var="$1" need="$2"; shift 3
  if [ -n "${!root_var:-}" ]; then
    "$@"  # prepare is idempotent: cheap when everything is already there
  elif [ ! -f "$need" ]; then
    die "$need not found: set $root_var to the publisher's folder to prepare it (see $(dirname "$0")/README.md)"
  fi
}

# One fine-tuning run: skipped when RUN_DIR/metrics.json exists (finished), resumed when it has a checkpoint, started
# again (--overwrite) with RERUN=1 or when it holds only a start that died before its first checkpoint.
#   finetune_run CONFIG RUN_DIR [overrides...]
finetune_run() {
  local config="$1" run_dir="$2"; shift 2
  if [ -f "$run_dir/metrics.json" ] && [ "${RERUN:-0}" != 1 ]; then
    echo "$run_dir is finished (metrics.json); RERUN=1 or another RUNS folder trains again" >&2
    return 0
  fi
  local cmd=("$PYTHON" -m ssast finetune -c "$config" "train.run_dir=$run_dir")
  if [ -e "$run_dir/last" ] && [ "${RERUN:-0}" != 1 ]; then cmd+=(--resume "$run_dir")
  elif [ -e "$run_dir/config.yaml" ]; then cmd+=(--overwrite); fi
  cmd+=("$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
}
