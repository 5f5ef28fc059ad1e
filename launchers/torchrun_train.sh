#!/usr/bin/env bash
# Launch `cst train` with torchrun on one node or many.
#   single node:  launchers/torchrun_train.sh configs/mistral-7b.yaml [key=value ...]
#   multi-node:   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<host of rank 0> launchers/torchrun_train.sh CONFIG ...
#   c10d rendezvous (what slurm/train.sbatch uses): RDZV_ID=<job id> as well; MASTER_ADDR:MASTER_PORT is then the
#                 rendezvous endpoint, hosted by node rank 0, and a node that never joins fails the start after
#                 RDZV_JOIN_TIMEOUT seconds (default 600) instead of waiting forever.
# GPUS_PER_NODE defaults to the visible GPUs (1 process on a CPU-only host); MASTER_PORT defaults to 29500;
# PYTHON (default: the checkout's .venv/bin/python, else python on PATH) is the interpreter that runs torchrun.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [key=value ...]}
shift
if command -v nvidia-smi >/dev/null 2>&1; then
  DEFAULT_GPUS=$(nvidia-smi --list-gpus | wc -l)
else
  DEFAULT_GPUS=1
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-$DEFAULT_GPUS}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # PYTHON: an interpreter that imports cst_dist and torch

if [[ -n "${RDZV_ID:-}" ]]; then
  # NODE_RANK 0 hosts the rendezvous store (no guessing from host names, which may all look local); ranks are then
  # handed out by the rendezvous, so torchrun takes no --node_rank (it would ignore it, with a warning).
  RENDEZVOUS=(--rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID"
              --rdzv_conf "is_host=$([[ "$NODE_RANK" == 0 ]] && echo 1 || echo 0),join_timeout=${RDZV_JOIN_TIMEOUT:-600}")
else
  RENDEZVOUS=(--node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --max_restarts 0 "${RENDEZVOUS[@]}" \
  -m cst_dist.cli train "$CONFIG" "$@"
