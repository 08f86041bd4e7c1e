"""The Python API: the commands' functions from ``import rayfed``, which stays light until used."""

import json
import subprocess
import sys
from pathlib import Path

import rayfed

ROOT = Path(__file__).resolve().parents[1]


def test_import_rayfed_loads_neither_torch_nor_ray():
    code = "import sys, rayfed; rayfed.load_config; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_run_and_its_personalization_from_python(tmp_path):
    cfg = rayfed.load_config(ROOT / "configs" / "smoke.yaml", [f"output_dir={tmp_path}", "runtime.executor=local",
                                                               "algorithm.rounds=2"])
    summary = rayfed.run_experiment(cfg, loggers=[])
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["loss"] < summary["initial"]["loss"]
    curves = rayfed.run_personalization(tmp_path, ["personalize.local_epochs=1", "personalize.name=py"], loggers=[])
    assert json.loads(json.dumps(curves)) == json.loads((tmp_path / "personalize" / "py" / "summary.json").read_text())
    assert [row["epoch"] for row in curves["curve"] if row["interp_ratio"] == 1.0] == [0, 1]


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'run_everything'"):
        rayfed.run_everything  # noqa: B018
