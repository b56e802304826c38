# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench gpu-sim clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: it is the CPU build on disk; unpinned it would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/dreamgen run examples/prompts.jsonl --out out --job-id demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/generation.py --config shapes --docs 24

# The GPU machine's CPU simulation: scripts/gpu_run.sh in its package set must stop cleanly at "no CUDA".
gpu-sim:
	bash scripts/gpu_simulate.sh

clean:
	rm -rf $(VENV) out
