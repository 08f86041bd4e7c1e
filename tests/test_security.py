"""Security defaults: no pickle on any load path, no remote code unless asked, no secret in any
output file."""

import os
import re
from pathlib import Path

import pytest
import torch

from rayfed.experiment import run_experiment
from rayfed.model.prompt_model import _tiny_llama, load_backbone

ROOT = Path(__file__).resolve().parents[1]


def test_pickled_weights_are_refused_with_a_way_out(tmp_path):
    model, tokenizer = _tiny_llama()
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle
    with pytest.raises(ValueError, match="never loads pickled weights"):
        load_backbone(str(tmp_path))


def test_remote_code_runs_only_when_the_config_says_so(tmp_path, monkeypatch, tiny_config):
    import transformers

    model, tokenizer = _tiny_llama()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    assert tiny_config().model.trust_remote_code is False
    load_backbone(str(tmp_path))
    load_backbone(str(tmp_path), trust_remote_code=True)
    assert seen == [False, True]


def test_no_load_path_unpickles():
    """torch.load and pickle are not used anywhere in the package (safetensors and JSON only)."""
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "rayfed").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"torch\.load\(|^\s*import (cloud)?pickle|^\s*from (cloud)?pickle", line)]
    assert not offenders


def test_secrets_from_the_environment_never_reach_an_output_file(tiny_config, monkeypatch):
    secret = "sk-rayfed-test-" + os.urandom(8).hex()
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=1", "logging.wandb.enabled=true",
                      "logging.wandb.mode=offline")
    run_experiment(cfg, loggers=[])
    files = [p for p in Path(cfg.output_dir).rglob("*") if p.is_file()]
    assert any(p.name.endswith(".wandb") for p in files)  # the W&B run was written
    assert not [p for p in files if secret.encode() in p.read_bytes()]
