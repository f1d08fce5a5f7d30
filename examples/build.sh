#!/usr/bin/env bash
# Build the example flow image (Prefect 1.4.1 + examples/flows + register.py).
#
#   examples/build.sh                      # tag local-agent-example-flow:1.4.1
#   TAG=registry.example.com/flows:1 examples/build.sh [extra docker build args]
#
# Online (default): FROM python:3.12-slim, pip installs from PyPI inside the build.
# Offline (OFFLINE=1, or automatically when the image local/python:3.11-slim exists): wheels are built on the
# host into wheels/ (host Python minor version must match the base image's) and installed with --no-index.
# Only examples/ and wheels/ are sent to the daemon (a tar context), never .venv or .cache.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${TAG:-local-agent-example-flow:1.4.1}"
OFFLINE="${OFFLINE:-auto}"
if [[ "$OFFLINE" == auto ]]; then
  OFFLINE=0
  [[ -n "$(docker images -q local/python:3.11-slim 2>/dev/null)" ]] && OFFLINE=1
fi

args=(--force-rm -f examples/Dockerfile -t "$TAG")
if [[ "$OFFLINE" == 1 ]]; then
  "${PYTHON:-python3}" -m pip wheel --quiet --disable-pip-version-check -w wheels "prefect==1.4.1" "marshmallow<4"
  args+=(--build-arg "PYTHON_IMAGE=${PYTHON_IMAGE:-local/python:3.11-slim}"
         --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels)
elif [[ -n "${PYTHON_IMAGE:-}" ]]; then
  args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
fi

tar --exclude=__pycache__ --exclude='*.pyc' -c examples wheels | docker build "${args[@]}" "$@" -
echo "built $TAG" >&2
