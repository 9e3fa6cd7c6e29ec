#!/usr/bin/env bash
# One command for a machine with CUDA GPUs: everything this project has only ever checked on CPUs, in at most
# BUDGET seconds (default 450), written to one JSON file (default gpu_check.json):
#   device and driver; the tests that need CUDA; the batched fbank on the GPU against the CPU and torchaudio; a bf16
#   pretraining step that stays finite; the benchmark rows pretrain-onepass, pretrain-visible, finetune-step and
#   inference at Base, batch 24, bf16 (clips/s, fraction of the matmul peak, peak memory); the visible row at Base,
#   batch 8, bf16 with 1 and 8 masks per clip (model.masks_per_clip); the pretraining rows again with torch.compile;
#   a 2-GPU DDP step where there are 2 GPUs.
# Each check runs with its own time limit, cut to what is left of the budget; one that fails, crashes or runs out of
# time is a failed section, the others still run. Exit 0 when every check passed, 1 when one failed, 2 for bad
# arguments, 3 when no CUDA GPU is visible (it then stops at once, in one line).
#   benchmarks/gpu_check.sh [--out FILE] [--budget SECONDS]      (PYTHON=... picks the interpreter)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="gpu_check.json"
BUDGET=450  # seconds for the checks; with start-up and assembly the whole stays under 8 minutes
usage() { echo "usage: $(basename "$0") [--out FILE] [--budget SECONDS]"; }
die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a file name"; OUT="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] || die "--budget needs a number of seconds"; BUDGET="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' ($(usage))" ;;
  esac
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 60 ] || die "--budget must be a whole number of seconds, at least 60"
[ -d "$(dirname "$OUT")" ] || die "--out $OUT: folder $(dirname "$OUT") does not exist"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON: not found"

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "$(basename "$0"): no CUDA GPU is visible to $PYTHON (torch.cuda.is_available() is not True); nothing was run" >&2
  exit 3
fi

PARTS="$(mktemp -d)"
trap 'rm -rf "$PARTS"' EXIT
CHECK="$REPO/benchmarks/gpu_check.py"
START=$SECONDS

# run NAME LIMIT COMMAND...: the command, with LIMIT seconds or what is left of the budget (10 s kept for the end);
# a command that leaves no part behind gets a failed one saying why
run() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - (SECONDS - START) - 10 ))
  [ "$left" -lt "$limit" ] && limit="$left"
  if [ "$limit" -lt 5 ]; then
    printf '{"status": "skipped", "reason": "the %s s budget was spent"}\n' "$BUDGET" > "$PARTS/$name.json"
    echo "$name: skipped (budget spent)" >&2
    return
  fi
  echo "$name (up to $limit s) ..." >&2
  local t0=$SECONDS rc=0
  timeout --kill-after=5 "$limit" "$@" > "$PARTS/$name.log" 2>&1 || rc=$?
  if [ ! -s "$PARTS/$name.json" ]; then
    local why="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="ran past its $limit s"
    "$PYTHON" - "$PARTS/$name.json" "$why" "$PARTS/$name.log" <<'EOF'
import json, sys
tail = open(sys.argv[3], errors="replace").read()[-3000:]
json.dump({"status": "failed", "reason": sys.argv[2], "tail": tail}, open(sys.argv[1], "w"))
EOF
  fi
  echo "$name: $("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$PARTS/$name.json") ($(( SECONDS - t0 )) s)" >&2
}

# rows NAME LIMIT ROWS... [OPTIONS]: benchmark rows at Base, batch 24, bf16, patch tokens, into a section; OPTIONS
# come last, so they override those defaults
rows() {
  local name="$1" limit="$2"; shift 2
  run "$name" "$limit" bash -c 'start=$SECONDS; "$0" "$1" --size base --batch 24 --tokens patch \
      --precision bf16 --device cuda --repeats 5 --warmup 3 --timeout 240 --out "$PARTS_DIR/'"$name"'-results.json" \
      "${@:2}"
      GPU_CHECK_SECONDS=$(( SECONDS - start )) "$0" "$CHECK" rows "$PARTS_DIR/'"$name"'-results.json" \
      "$PARTS_DIR/'"$name"'.json"' "$PYTHON" "$REPO/benchmarks/run.py" "$@"
}

export PARTS_DIR="$PARTS" CHECK
run device 60 "$PYTHON" "$CHECK" device "$PARTS/device.json"
run cuda_tests 120 "$PYTHON" "$CHECK" cuda-tests "$PARTS/cuda_tests.json"
run fbank 60 "$PYTHON" "$CHECK" fbank "$PARTS/fbank.json"
run bf16_step 60 "$PYTHON" "$CHECK" bf16-step "$PARTS/bf16_step.json"
rows rows 120 pretrain-onepass pretrain-visible finetune-step inference
run ddp_step 90 "$PYTHON" "$CHECK" ddp-step "$PARTS/ddp_step.json"
rows rows_k 60 pretrain-visible --batch 8 --masks-per-clip 1 8  # several masks per clip (issue 24)
rows rows_compiled 150 pretrain-onepass pretrain-visible --compile  # last: the longest (compilation) and the least vital

export GPU_CHECK_META="{\"seconds\": $(( SECONDS - START )), \"budget_s\": $BUDGET, \"host\": \"$(hostname)\"}"
"$PYTHON" "$CHECK" assemble "$PARTS" "$OUT"
