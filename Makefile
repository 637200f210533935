# batchpilot: `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
BATCHPILOT_HOME ?= $(HOME)/.cache/batchpilot
export BATCHPILOT_HOME
# Models load from local files only: no hub downloads, ever.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help install binaries test test-unit lint fmt crds docs cluster cluster-down demo bench pin-images clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The workspace: the root project pulls in the four distributions (contract, runtime,
# operator, local cluster) as editable installs from their folders ([tool.uv.sources]).
DISTRIBUTIONS := contract runtime operator cluster

$(VENV)/.installed: pyproject.toml $(DISTRIBUTIONS:%=%/pyproject.toml)
	@test -x $(PY) || python3 -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(VENV)/bin/pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv: every distribution, editable, and the dev tools (quick when already done)

binaries: ## Build the local cluster's binaries from Go modules (cached in $BATCHPILOT_HOME)
	@bash cluster/build-binaries.sh

cluster: install binaries ## Start the local cluster (control plane, kwok GPU nodes, node agent on 127.0.0.1)
	$(VENV)/bin/batchpilot-cluster up

cluster-down: ## Stop the local cluster and everything it runs (no process left behind)
	@if [ -x $(VENV)/bin/batchpilot-cluster ]; then $(VENV)/bin/batchpilot-cluster down; fi

demo: install binaries ## The main job: local cluster, operator, a real model and emulated GPUs under rising and falling load, live
	$(VENV)/bin/python -m batchpilot_localcluster.demo

test: install binaries ## Run every test layer: unit, model, cluster and e2e
	$(VENV)/bin/pytest

test-unit: install ## Run the tests that need neither the cluster nor a model
	$(VENV)/bin/pytest -m "unit"

lint: install ## ruff, mypy --strict, hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy contract/batchpilot_contract runtime/batchpilot_runtime operator/batchpilot_operator cluster/batchpilot_localcluster bench
	$(VENV)/bin/hadolint runtime/Dockerfile operator/Dockerfile

fmt: install ## Format the code with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## Benchmarks: the runtime against the offline limit, then the loop simulator (bench/README.md)
	$(PY) bench/runtime.py
	$(PY) -m bench.loop.run --check-sweep

crds: install ## Regenerate the BatchedModel CRD (crds/ and the chart) from operator/batchpilot_operator/api/
	$(PY) -m batchpilot_operator.crdgen

docs: install ## Regenerate every generated file: the CRD, and the reference pages in docs/reference/
	$(PY) -m batchpilot_operator.crdgen
	$(PY) -m batchpilot_operator.docgen

pin-images: ## Pin the Dockerfiles' base images by digest (needs docker buildx or crane and a reachable registry)
	$(PY) scripts/pin_base_images.py

clean: ## Remove the virtual environment and caches (not the cluster binaries)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: gpu-bundle gpu-check
GPU_CHECK_ARGS ?=

gpu-bundle: install ## Wheels, tokenizer and MiniLM float16 weights for the GPU check, in .gpu-bundle/ (under 64 MiB with the tree)
	$(PY) -m bench.gpu.bundle

gpu-check: ## The GPU check in one command (bench/gpu/README.md); GPU_CHECK_ARGS=--dry-run runs it on the CPU
	@bash bench/gpu/gpu-check.sh $(GPU_CHECK_ARGS)
