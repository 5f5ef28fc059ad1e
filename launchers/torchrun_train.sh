#!/usr/bin/env bash
# Launch `cst train` with torchrun on one node or many.
#   single node:  launchers/torchrun_train.sh configs/mistral-7b.yaml [key=value ...]
#   multi-node:   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<host of rank 0> launchers/torchrun_train.sh CONFIG ...
# GPUS_PER_NODE defaults to the visible GPUs (1 process on a CPU-only host); MASTER_PORT defaults to 29500.
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

exec python -m torch.distributed.run \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m cst_dist.cli train "$CONFIG" "$@"
