#!/usr/bin/env bash
# Launch `cst train` with the DeepSpeed launcher.
#   single node:  launchers/deepspeed_train.sh configs/mistral-7b.yaml [key=value ...]
#   multi-node:   HOSTFILE=hostfile launchers/deepspeed_train.sh CONFIG ...   (hostfile lines: "host slots=8"; the
#                 launcher reaches the other hosts over passwordless ssh, as DeepSpeed's multi-node docs describe)
# GPUS_PER_NODE limits the processes per host; MASTER_PORT defaults to 29500.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [key=value ...]}
shift
ARGS=(--master_port "${MASTER_PORT:-29500}")
if [ -n "${HOSTFILE:-}" ]; then
  ARGS+=(--hostfile "$HOSTFILE")
fi
if [ -n "${GPUS_PER_NODE:-}" ]; then
  ARGS+=(--num_gpus "$GPUS_PER_NODE")
fi
# --no_local_rank: ranks read LOCAL_RANK from the environment, as under torchrun.
exec deepspeed "${ARGS[@]}" --no_local_rank --module cst_dist.cli train "$CONFIG" "$@"
