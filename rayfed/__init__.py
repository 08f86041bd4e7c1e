"""rayfed: federated prompt tuning of language models, simulated on Ray.

The Python API is what the commands call, importable without loading torch or Ray until used::

    import pathlib

    import rayfed

    cfg = rayfed.load_config("configs/smoke.yaml", ["output_dir=outputs/smoke-py"])
    summary = rayfed.run_experiment(cfg)                 # rayfed run
    curves = rayfed.run_personalization("outputs/smoke-py", ["personalize.optimizer.lr=0.1"])
    search = rayfed.run_search(rayfed.load_config("configs/tune/tiny.yaml"))  # rayfed tune
    study = rayfed.load_study("configs/study/tiny.yaml")
    rayfed.run_study(study, pathlib.Path(study.output_dir))  # rayfed study (then write_report)

Each returns what the command writes as ``summary.json`` / ``search.json``; docs/api.md has more.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "rayfed.config",
    "run_experiment": "rayfed.experiment",
    "resume_experiment": "rayfed.experiment",
    "run_personalization": "rayfed.personalization.phase",
    "run_rollout": "rayfed.personalization.rollout_phase",
    "run_search": "rayfed.tuning",
    "load_study": "rayfed.study.config",
    "run_study": "rayfed.study.runner",
    "write_report": "rayfed.study.report",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rayfed' has no attribute {name!r}")
