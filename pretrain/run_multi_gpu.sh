#!/usr/bin/env bash
# SSAST pretraining on the GPUs of one machine with torchrun (DDP). data.batch_size is per GPU: the paper's batch of
# 24 on 4 GPUs is data.batch_size=6 (or keep 24 per GPU and scale optim.lr; see pretrain/README.md).
#   NGPU=4 pretrain/run_multi_gpu.sh patch base data.batch_size=6
# NGPU defaults to every visible GPU. Re-running continues the run from its last checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
parse_pretrain_args "$@"
pretrain_args
if [ -z "${NGPU:-}" ]; then
  NGPU="$(nvidia-smi -L 2>/dev/null | wc -l)"
  [ "$NGPU" -ge 1 ] || die "no GPU found by nvidia-smi; set NGPU"
fi
# python -m torch.distributed.run is torchrun, taken from the same environment as PYTHON
launch "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m ssast "${PRETRAIN_ARGS[@]}"
