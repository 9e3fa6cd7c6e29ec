#!/usr/bin/env bash
# SSAST pretraining on one GPU (or the CPU, for a smoke test), with the paper's settings from configs/pretrain/.
#   pretrain/run_single_gpu.sh patch base                 # SSAST-Base-Patch-400 on AudioSet + LibriSpeech shards
#   pretrain/run_single_gpu.sh frame tiny data.batch_size=60 optim.accum_steps=2
# Re-running continues the run from its last checkpoint. See pretrain/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
parse_pretrain_args "$@"
pretrain_args
launch "$PYTHON" -m ssast "${PRETRAIN_ARGS[@]}"
