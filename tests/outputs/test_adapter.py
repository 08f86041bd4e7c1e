"""A trained prompt leaves rayfed as a PEFT adapter: ``PeftModel.from_pretrained`` on the base
model the adapter names loads it and gives rayfed's own logits and greedy tokens; a run writes
its global prompt and each site's selected personalized prompt that way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rayfed.data.formatting import tokenize
from rayfed.experiment import run_experiment
from rayfed.local.evaluation import generate
from rayfed.model.prompt_model import build_prompt_model, load_backbone
from rayfed.outputs.adapter import ADAPTER_DIR, SITE_ADAPTERS, TEMPLATE_FILE, save_adapter
from rayfed.outputs.checkpoint import load_prompt
from rayfed.settings import ModelSettings
from rayfed.types import Example


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """rayfed's tiny random Llama saved as a Hugging Face directory (what a user's base would be)."""
    backbone, tokenizer = load_backbone("tiny-llama")
    directory = tmp_path_factory.mktemp("tiny-base")
    backbone.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def peft_load(adapter: Path) -> PeftModel:
    """What a PEFT user does with the directory: load the base it names, then the adapter."""
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()


EXAMPLES = [Example("t", "c", "Copy the word.", "alpha beta", "alpha beta gamma"),
            Example("t", "c", "Reverse it.", "xyz", "zyx and more"),
            Example("t", "c", "", "a b c d e f", "g h")]


def test_a_saved_prompt_loads_in_peft_with_rayfeds_logits_and_greedy_tokens(tmp_path, tiny_base):
    settings = ModelSettings(str(tiny_base), 4, "random", "")
    model = build_prompt_model(settings)
    prompt = 0.5 * torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    model.set_prompt(prompt)
    save_adapter(tmp_path / "adapter", prompt, settings, max_source_tokens=64, max_target_tokens=8)
    assert json.loads((tmp_path / "adapter" / TEMPLATE_FILE).read_text())["max_source_tokens"] == 64
    theirs_model = peft_load(tmp_path / "adapter")
    assert torch.equal(theirs_model.prompt_encoder["default"].embedding.weight.detach(), prompt)

    with torch.no_grad():
        for example in tokenize(EXAMPLES, model.tokenizer, 64, 8):
            ids = torch.tensor([example.source_ids])
            mask = torch.ones_like(ids)
            embeds, prompted_mask = model.prompted_inputs(ids, mask)
            ours = model.peft.get_base_model()(inputs_embeds=embeds, attention_mask=prompted_mask).logits
            theirs = theirs_model(input_ids=ids, attention_mask=mask).logits
            assert theirs.shape == ours.shape
            assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()

            # use_cache=False: PEFT 0.21's cached generate of a prompt-tuning model leaves its own
            # uncached greedy path after a few tokens (the docs' "Serving an adapter"); rayfed's
            # decoder is the uncached one, with a cache.
            limit = len(example.target_ids)
            tokens = theirs_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=limit, do_sample=False,
                                           eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.pad_id,
                                           use_cache=False)
            text = model.tokenizer.decode(tokens[0, ids.shape[1]:], skip_special_tokens=True).strip()
            assert generate(model, [example], limit) == [text]


def test_a_run_writes_its_global_prompt_and_each_sites_selected_prompt_as_peft_adapters(tmp_path, tiny_config,
                                                                                          tiny_base):
    cfg = tiny_config(f"model.name={tiny_base}", "partition.val_examples=4", "partition.global_val_examples=8",
                      "personalize.enabled=true", "personalize.local_epochs=2", "runtime.executor=local")
    summary = run_experiment(cfg)
    out = Path(cfg.output_dir)

    global_prompt, _ = load_prompt(out / "global_prompt.safetensors")
    loaded = peft_load(out / ADAPTER_DIR)
    assert torch.equal(loaded.prompt_encoder["default"].embedding.weight.detach(), global_prompt)
    assert json.loads((out / ADAPTER_DIR / TEMPLATE_FILE).read_text())["round"] == cfg.algorithm.rounds

    # A run directory from before adapters: `rayfed export` writes one from its files.
    import shutil

    from rayfed.cli import main

    shutil.rmtree(out / ADAPTER_DIR)
    assert main(["export", str(out), "--to", str(tmp_path / "exported")]) == 0
    exported = peft_load(tmp_path / "exported").prompt_encoder["default"].embedding.weight.detach()
    assert torch.equal(exported, global_prompt)

    selected = summary["personalization"]["selected"]
    sites = out / "personalize" / "default" / SITE_ADAPTERS
    assert sorted(p.name for p in sites.iterdir()) == [f"client_{c}" for c in range(cfg.partition.num_clients)]
    for site in sites.iterdir():
        source = json.loads((site / TEMPLATE_FILE).read_text())
        assert (source["epoch"], source["interp_ratio"]) == (selected.get("epoch", 0), selected.get("interp_ratio", 0))
        weights = peft_load(site).prompt_encoder["default"].embedding.weight.detach()
        kept = selected["kept_global_prompt"] or source["interp_ratio"] == 0 or source["epoch"] == 0
        assert torch.equal(weights, global_prompt) == kept

    # personalize.selection=per_client: each site's adapter follows its own choice.
    from rayfed.personalization.phase import run_personalization

    personal = run_personalization(out, ["personalize.selection=per_client", "personalize.name=own",
                                         "personalize.local_epochs=2"], loggers=[])
    own = personal["per_client"]["clients"]
    assert set(own) == {str(c) for c in range(cfg.partition.num_clients)}
    for cid, choice in own.items():
        source = json.loads((out / "personalize" / "own" / SITE_ADAPTERS / f"client_{cid}" / TEMPLATE_FILE).read_text())
        assert (source["epoch"], source["interp_ratio"]) == (choice["epoch"], choice["interp_ratio"])


def test_each_sites_adapter_is_its_local_prompt_interpolated_at_the_selected_setting(tmp_path, tiny_config, tiny_base):
    from rayfed.personalization.phase import save_site_adapters

    cfg = tiny_config(f"model.name={tiny_base}")
    gen = torch.Generator().manual_seed(1)
    global_prompt = torch.randn(4, 64, generator=gen)
    trained = {c: ({1: torch.randn(4, 64, generator=gen), 2: torch.randn(4, 64, generator=gen)}, {1: 1.0, 2: 0.5})
               for c in (0, 1)}
    save_site_adapters(tmp_path, cfg, global_prompt, trained,
                       dict.fromkeys(trained, {"epoch": 2, "interp_ratio": 0.25, "kept_global_prompt": False}))
    for c in (0, 1):
        weights = peft_load(tmp_path / f"client_{c}").prompt_encoder["default"].embedding.weight.detach()
        assert torch.allclose(weights, 0.75 * global_prompt + 0.25 * trained[c][0][2], atol=1e-6)
