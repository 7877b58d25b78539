#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when they are missing:
# a C++ toolchain for llama-server, python3-venv, and a real OCI registry (CNCF distribution,
# with htpasswd for its Basic-auth variant) for the registry tests, Prometheus, and Chromium.
set -euo pipefail

need=()
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# A real Prometheus (and promtool) for the observability tests.
command -v promtool >/dev/null || need+=(prometheus)
# A real browser for the CORS and API-key tests.
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
