# bertserve developer commands. `make demo` and `make test` are the two a newcomer needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= models

.PHONY: install demo demo-build demo-eval serve test lint typecheck importlint pytest clean bench loadtest package-tree

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

# The demo: fine-tune `sentiment` and `ner` from the packaged MiniLM-L6-H384 (offline), export them and
# the MiniLM's own sentence embeddings (`embed`)
# into $(REPO) unless they are already built from the current recipe (models/demo/), print example
# curl calls, then serve all three on 127.0.0.1:8000.
DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 8000

demo-build: install
	$(BIN)/python models/demo/build.py --repo $(REPO) --host $(DEMO_HOST) --port $(DEMO_PORT)

demo: demo-build
	$(BIN)/bertserve serve --repo $(REPO) --model sentiment --model ner --model embed --host $(DEMO_HOST) --port $(DEMO_PORT)

# Held-out figures, SST-2 dev accuracy and WNUT-17 PER/LOC F1 (with ../shared/data) of the built demo.
demo-eval: install
	$(BIN)/python scripts/evaluate_demo.py --repo $(REPO)

serve: install
	$(BIN)/bertserve serve --repo $(REPO)

lint: install
	$(BIN)/ruff check bertserve service export loadtest scripts tests
	$(BIN)/ruff format --check bertserve service export loadtest scripts tests

# The installed package maps service/ and export/ under bertserve (pyproject's package-dir). mypy and
# import-linter read folders, not import hooks, so they run over .build/tree: the same files, linked
# under their package names (rebuilt every time, so new modules count at once).
package-tree:
	rm -rf .build/tree && mkdir -p .build/tree/bertserve
	cp -rs $(CURDIR)/bertserve/. .build/tree/bertserve/
	cp -rs $(CURDIR)/service .build/tree/bertserve/service
	cp -rs $(CURDIR)/export .build/tree/bertserve/export
	find .build/tree -name __pycache__ -prune -exec rm -rf {} +

typecheck: install package-tree
	$(BIN)/mypy .build/tree/bertserve loadtest

# Contracts in pyproject.toml [tool.importlinter]: serving never imports export/training/torch, the
# runtime imports neither serving nor HTTP, HTTP stays in bertserve.service.api, nothing imports upward.
importlint: install package-tree
	cd .build/tree && PYTHONPATH=$(CURDIR)/.build/tree $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

pytest: install
	$(BIN)/pytest -q -ra

# Manual and bounded: ~70 % of measured capacity for SOAK_MINUTES against a service it starts on
# loopback (the repository's classification model, else the fake backend); prints RSS, threads, fds
# and p99 per interval, the RSS trend and a verdict. Not part of `make test`.
SOAK_MINUTES ?= 30
.PHONY: soak
soak: install
	$(BIN)/python -m loadtest.soak --minutes $(SOAK_MINUTES) --repo $(REPO)

# The GPU path in one run (needs an NVIDIA GPU and onnxruntime-gpu; under 8 minutes on an H100/H200,
# nothing downloaded): detect, export BERT-base-sized and MiniLM models with --fp16, parity CPU vs
# CUDA fp32/fp16 vs TensorRT fp16, raw and service throughput, one table (loadtest/gpu_check.py).
# Without a GPU it stops at once and says what is missing. Not part of `make test`.
.PHONY: gpu-check
gpu-check: install
	$(BIN)/python -m loadtest.gpu_check

# The same check for a GPU machine without a package registry that takes files in small parts:
# onnxruntime-gpu cut to one GPU architecture, the missing dependencies, the bertserve wheel and
# the MiniLM weights, in parts under .gpu-bundle/ with the commands to run there (scripts/gpu_bundle.py).
.PHONY: gpu-bundle
gpu-bundle: install
	$(BIN)/python scripts/gpu_bundle.py

# Dockerfile, compose, Helm chart and dashboard checks (tools land in .tools/ via deploy/tools/install.sh).
.PHONY: deploy-check
deploy-check: install
	VENV_BIN=$(CURDIR)/$(BIN) deploy/check.sh

# The CPU images built and run, and deploy/compose.yaml brought up, on a real engine (podman, installed by
# deploy/tools/install-engine.sh). ~15 min on a fresh machine, a few with podman's layer cache warm.
# BERTSERVE_SKIP_IMAGE_CHECK=1 skips it on a developer's machine (never in CI).
.PHONY: image-check
image-check: install
	VENV_BIN=$(CURDIR)/$(BIN) deploy/tools/image-check.sh

test: lint typecheck importlint deploy-check pytest image-check

# --- benchmarks and load tests (loadtest/, docs/benchmarks.md) ------------------------------------
# `make bench`: raw backend vs service vs a naive server, backends/precisions, the max rate at the
# p95 SLO; results/<time>/ gets summary.json, report.md and plots. BENCH_ARGS=--quick while developing.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m loadtest.bench --repo $(REPO) $(BENCH_ARGS)

# `make bench-protocols`: the same model over native REST, v2 REST and v2 gRPC (Open Inference Protocol),
# 64 clients, every answer checked, mean batch per phase (builds the MiniLM example if MODEL is absent).
PROTOCOL_ARGS ?= --clients 64 --seconds 15
.PHONY: bench-protocols
bench-protocols: install
	$(BIN)/python -m loadtest.protocols --repo $(REPO) --model $(CLASSIFY_MODEL) --build-fallback $(PROTOCOL_ARGS)

# `make loadtest`: Locust headless against a server you started (loopback only), CSV + HTML reports
# under results/locust-<time>/. RATE=0 is a closed loop; RATE=N holds N requests/s over USERS users.
HOST ?= http://127.0.0.1:8000
USERS ?= 32
SPAWN_RATE ?= 16
RATE ?= 0
DURATION ?= 60s
TASK_MIX ?= classify=3,ner=1
INPUTS ?= 1
CLASSIFY_MODEL ?= sentiment
NER_MODEL ?= ner
loadtest: install
	$(BIN)/python -m loadtest.run_locust --host $(HOST) --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--rate $(RATE) --duration $(DURATION) --task-mix $(TASK_MIX) --inputs $(INPUTS) \
		--classify-model $(CLASSIFY_MODEL) --ner-model $(NER_MODEL)

clean:
	rm -rf $(VENV) .build .mypy_cache .ruff_cache .pytest_cache
