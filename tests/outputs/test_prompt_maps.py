"""What a prompt learned, made visible: nearest vocabulary tokens and drift by hand, the files a
run and its personalization write, and their figures drawn without torch."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rayfed.experiment import run_experiment
from rayfed.local.prompt_map import drift, nearest_tokens
from rayfed.outputs.checkpoint import load_prompt
from rayfed.outputs.prompt_files import PROMPT_MAP, PROMPT_TOKENS


def test_a_virtual_token_on_a_vocabulary_row_reads_as_that_token_and_drift_is_relative():
    table = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    prompt = torch.stack([table[7] * 3.0, table[31], -table[2]])  # scale does not change a cosine
    ids, cosines = nearest_tokens(table, prompt, k=4)
    assert ids[0, 0] == 7 and ids[1, 0] == 31 and ids[2, 0] != 2
    assert torch.allclose(cosines[:2, 0], torch.ones(2), atol=1e-6)
    assert (cosines[:, :-1] >= cosines[:, 1:]).all()  # best first
    global_prompt = torch.tensor([[3.0, 4.0], [0.0, 5.0]])  # mean row norm 5
    assert torch.allclose(drift(global_prompt, global_prompt + torch.tensor([[0.0, 0.0], [6.0, 8.0]])),
                          torch.tensor([0.0, 2.0]))


def test_a_run_and_its_personalization_write_prompt_maps_that_plot_without_torch(tiny_config,
                                                                               plot_without_torch_or_ray):
    cfg = tiny_config("runtime.executor=local", "personalize.enabled=true", "personalize.local_epochs=2")
    run_experiment(cfg, loggers=[])
    out = Path(cfg.output_dir)
    tokens = json.loads((out / PROMPT_TOKENS).read_text())
    prompt, _ = load_prompt(out / "global_prompt.safetensors")
    assert [row["index"] for row in tokens["virtual_tokens"]] == list(range(cfg.model.num_virtual_tokens))
    for row in tokens["virtual_tokens"]:
        assert len(row["nearest"]) == 5 and row["norm"] == round(float(prompt[row["index"]].norm()), 4)
        assert all(-1 <= n["cosine"] <= 1 and isinstance(n["token"], str) for n in row["nearest"])
    personal = out / "personalize" / "default"
    mapped = json.loads((personal / PROMPT_MAP).read_text())
    assert mapped["epoch"] == 2 and sorted(mapped["clients"], key=int) == ["0", "1", "2", "3"]
    assert all(len(c["drift"]) == cfg.model.num_virtual_tokens and min(c["drift"]) > 0
               for c in mapped["clients"].values())  # two epochs of fine-tuning moved every virtual token

    for png in ("prompt_tokens.png", personal.relative_to(out) / "drift.png"):
        (out / png).unlink()
    drawn = plot_without_torch_or_ray(out)
    assert str(out / "prompt_tokens.png") in drawn and str(personal / "drift.png") in drawn
