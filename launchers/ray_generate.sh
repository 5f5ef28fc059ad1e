#!/usr/bin/env bash
# Launch `cst generate` (self-critique pairs) on Ray: one model replica per GPU of the cluster, CPU actors without GPUs.
#   a running cluster:  RAY_ADDRESS=<head>:6379 launchers/ray_generate.sh configs/mistral-7b.yaml [key=value ...]
#                       (started beforehand: `ray start --head` on one node, `ray start --address=<head>:6379` on
#                       the others, as the Slurm script does); this script starts nothing, the driver joins it.
#   this machine only:  launchers/ray_generate.sh configs/tiny-cpu.yaml   (a local Ray instance, stopped at the end)
# Rerunning the same command resumes: finished shards in <run_dir>/pairs are skipped.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [key=value ...]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # PYTHON: an interpreter that imports cst_dist and torch

if [[ -n "${RAY_ADDRESS:-}" ]]; then
  echo "ray_generate: joining the Ray cluster at RAY_ADDRESS=${RAY_ADDRESS}" >&2
else
  echo "ray_generate: RAY_ADDRESS is not set; cst generate starts a local Ray instance" >&2
fi
exec "$PYTHON" -m cst_dist.cli generate "$CONFIG" "$@"
