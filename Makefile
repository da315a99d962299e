# bertserve developer commands. `make demo` and `make test` are the two a newcomer needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= models

.PHONY: install demo serve test lint typecheck pytest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: its CPU build lies on this machine's disk; a plain `torch`
	# would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[export,dev,loadtest]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Until the demo recipe lands: export the packaged MiniLM-L6 backbone with a fresh head and serve it.
demo: install
	$(BIN)/python -m export.minilm_example --repo $(REPO)
	$(BIN)/bertserve serve --repo $(REPO)

serve: install
	$(BIN)/bertserve serve --repo $(REPO)

lint: install
	$(BIN)/ruff check bertserve service export loadtest scripts tests
	$(BIN)/ruff format --check bertserve service export loadtest scripts tests

typecheck: install
	$(BIN)/mypy bertserve service export

pytest: install
	$(BIN)/pytest -q -ra

# Dockerfile, compose, Helm chart and dashboard checks (tools land in .tools/ via deploy/tools/install.sh).
.PHONY: deploy-check
deploy-check: install
	VENV_BIN=$(CURDIR)/$(BIN) deploy/check.sh

test: lint typecheck deploy-check pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
