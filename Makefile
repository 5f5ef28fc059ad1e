# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel of torch 2.13 is what this project is tested with; GPU users install torch for their CUDA instead.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# DeepSpeed compiles its ops lazily; DS_BUILD_OPS=0 keeps the install a pure-Python one.
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation "deepspeed>=0.16,<0.20"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The whole job on the tiny preset: generate, build, an SFT base, CST and DPO arms, export, eval (base/DPO/CST side
# by side). A second `make demo` skips what is complete; an interrupted one resumes.
demo: $(STAMP)
	$(VENV)/bin/cst pipeline configs/tiny-cpu.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check cst_dist tests benchmarks

clean:
	rm -rf $(VENV) runs
