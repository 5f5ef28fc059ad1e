#!/usr/bin/env bash
# One command for a GPU machine: cst-dist in bf16, packed (varlen FlashAttention, torch's own kernel, or flash-attn
# where installed) against padded, and TRL's best setting, on a 1.1B Llama shape (TinyLlama-1.1B's: hidden 2048,
# 22 layers, MLP 5632, 32 heads / 4 KV heads) with random weights built from config: nothing is downloaded. Prints
# real tokens/s, MFU (model FLOPs over the bf16 matrix-product peak measured in the same run) and peak GPU memory;
# writes benchmarks/results/gpu_throughput.json. Extra options go to trainer_throughput.py, e.g. --steps 20.
#   benchmarks/gpu_throughput.sh [OPTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this benchmark needs a GPU")'
exec "$PY" benchmarks/trainer_throughput.py --device cuda \
  --hidden-size 2048 --layers 22 --intermediate-size 5632 --heads 32 --kv-heads 4 --vocab-size 32000 \
  --variants trl-precomputed,cst,cst-padded --steps 10 --repeats 3 --threads 8 \
  --out benchmarks/results/gpu_throughput.json "$@"
