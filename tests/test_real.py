"""One real round: SmolLM2-135M on the curated evals tasks, a handful of examples per client.

Skipped with a reason when the caches are absent; ``scripts/setup.sh`` prepares both.
"""

import math
from pathlib import Path

import pytest
import torch

from rayfed.config import load_config
from rayfed.experiment import run_experiment
from rayfed.model.prompt_model import build_prompt_model
from rayfed.outputs.checkpoint import load_prompt
from rayfed.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]
HAVE_MODEL = (cache_dir() / "models" / "smollm2-135m").is_dir()
HAVE_DATA = (cache_dir() / "evals" / "manifest.json").is_file()

pytestmark = [
    pytest.mark.real_model, pytest.mark.real_data,
    pytest.mark.skipif(not HAVE_MODEL, reason="SmolLM2 cache absent: run `rayfed model prepare`"),
    pytest.mark.skipif(not HAVE_DATA, reason="evals cache absent: run `rayfed data prepare`"),
]


def test_one_real_round_changes_the_prompt_with_finite_metrics(tmp_path):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "runtime.executor=local", f"output_dir={tmp_path}", "partition.num_clients=2",
        "algorithm.clients_per_round=2", "algorithm.rounds=1", "algorithm.local_steps=1",
        "algorithm.batch_size=2", "partition.train_examples=2", "partition.test_examples=2",
        "partition.global_test_examples=4", "data.max_source_tokens=48", "eval.max_new_tokens=4",
    ])
    summary = run_experiment(cfg, loggers=[])
    prompt, _ = load_prompt(tmp_path / "global_prompt.safetensors")
    initial_prompt = build_prompt_model(cfg.model, seed=cfg.seed).get_prompt()
    for stage in ("initial", "final"):
        assert all(math.isfinite(v) for v in summary[stage].values())
        assert 0.0 <= summary[stage]["rouge_l"] <= 1.0
    assert prompt.shape == (20, 576)
    assert not torch.allclose(prompt, initial_prompt)

    # The run's adapter loads with PEFT's own API on the base it names, with rayfed's logits.
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    ours = build_prompt_model(cfg.model, seed=cfg.seed)
    ours.set_prompt(prompt)
    ids = ours.tokenizer("Translate to French.\n\nInput: good morning\nOutput:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        embeds, mask = ours.prompted_inputs(ids, torch.ones_like(ids))
        expected = ours.peft.get_base_model()(inputs_embeds=embeds, attention_mask=mask).logits
        got = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
