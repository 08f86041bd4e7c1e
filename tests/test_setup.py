"""scripts/setup.sh's choice of torch build: PyTorch's CPU wheel index where the configured index
would install a CUDA build on a machine without an NVIDIA GPU, the configured index otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from torch_index import CPU_INDEX, index_for  # noqa: E402

PYPI_LINUX = {"install": [{"metadata": {"name": "torch", "version": "2.13.0", "requires_dist": [
    "filelock", 'nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"']}}]}  # PyPI's Linux wheel (measured)
CPU_WHEEL = {"install": [{"metadata": {"name": "torch", "version": "2.13.0+cpu", "requires_dist": ["filelock"]}}]}


def test_a_cuda_build_on_a_machine_without_a_gpu_comes_from_the_cpu_index_instead():
    assert index_for(PYPI_LINUX, has_nvidia_gpu=False) == CPU_INDEX
    assert index_for({"install": [{"metadata": {"name": "torch", "version": "2.13.0+cu128"}}]}, False) == CPU_INDEX
    assert index_for(PYPI_LINUX, has_nvidia_gpu=True) is None  # a GPU machine keeps its CUDA build
    assert index_for(CPU_WHEEL, has_nvidia_gpu=False) is None  # the index serves the CPU build already
    assert index_for({"install": []}, has_nvidia_gpu=False) is None


def test_this_machines_configured_index_is_read_from_pips_own_report():
    """pip's dry-run report of the pinned torch, as setup.sh asks for it, parsed by the script."""
    pin = next(line for line in Path("constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    report = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--no-deps",
                             "--ignore-installed", "--report", "-", pin], capture_output=True, text=True, timeout=300)
    if report.returncode != 0:
        pytest.skip(f"pip cannot resolve {pin} here: {report.stderr.strip()[-200:]}")
    item = json.loads(report.stdout)["install"][0]["metadata"]
    assert item["name"] == "torch" and item["version"].startswith(pin.removeprefix("torch=="))
    chosen = subprocess.run([sys.executable, "scripts/torch_index.py"], input=report.stdout, capture_output=True,
                            text=True, timeout=60)
    cuda = "+cu" in item["version"] or any(r.startswith("nvidia-") for r in item.get("requires_dist") or [])
    assert chosen.stdout.strip() == (CPU_INDEX if cuda and shutil.which("nvidia-smi") is None else "")
