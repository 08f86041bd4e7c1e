"""No Llama-only assumptions: tiny random models of four architectures, built offline from their
configs (Llama; GPT-2 with learned absolute positions; Qwen2; Gemma 3 with sliding-window layers
shorter than the sequences and scaled embeddings), each trained and scored through rayfed's own
paths. A prompt lowers the loss; rayfed's fused, pooled greedy decoding gives, example for
example, the tokens of the PEFT model's ``generate`` on the exported adapter (uncached: see
docs/outputs.md) and of rayfed's plain decoder; the adapter gives rayfed's logits."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel

import rayfed.local.evaluation as local
from rayfed.config import OptimizerConfig
from rayfed.data.formatting import tokenize
from rayfed.local.evaluation import evaluate_many, generate
from rayfed.local.loss import per_example_loss
from rayfed.local.training import train_prompt
from rayfed.model.prompt_model import build_prompt_model, load_backbone
from rayfed.outputs.adapter import save_adapter
from rayfed.settings import ModelSettings
from rayfed.types import Example

SIZES = {"initializer_range": 0.2, "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 2}
CONFIGS = {
    "llama": lambda v: transformers.LlamaConfig(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, **SIZES),
    "gpt2": lambda v: transformers.GPT2Config(vocab_size=v, n_embd=64, n_layer=2, n_head=4, n_positions=512, **SIZES),
    "qwen2": lambda v: transformers.Qwen2Config(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, **SIZES),
    "gemma3": lambda v: transformers.Gemma3TextConfig(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], **SIZES),
}
EXAMPLES = [Example("t", "c", "Copy the words and go on.", "alpha beta " * i, "alpha beta gamma delta")
            for i in range(1, 7)]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def arch_dir(request, tmp_path_factory) -> tuple[str, Path]:
    """A random model of the architecture, saved with rayfed's character tokenizer."""
    _, tokenizer = load_backbone("tiny-llama")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param](len(tokenizer)))
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return request.param, directory


def test_a_text_initialized_prompt_is_pefts_on_every_architecture(arch_dir):
    """PEFT's TEXT init embeds the text through the model's embedding layer, which on Gemma scales
    the table by sqrt(hidden): rayfed's prompt starts where PEFT's does, not 8x (here) smaller."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    arch, directory = arch_dir
    ours = build_prompt_model(ModelSettings(str(directory), 6, "text", "Copy the words."))
    base = transformers.AutoModelForCausalLM.from_pretrained(directory)
    theirs = get_peft_model(base, PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=6, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text="Copy the words.", tokenizer_name_or_path=str(directory)))
    torch.testing.assert_close(ours.get_prompt(), theirs.prompt_encoder["default"].embedding.weight.detach(),
                               rtol=0, atol=0)
    if arch == "gemma3":  # the case this guards: a scaled embedding layer (sqrt(64))
        assert float(base.get_input_embeddings().embed_scale) == 8.0


def test_a_prompt_trains_and_decodes_as_peft_on_every_architecture(arch_dir, tmp_path, monkeypatch):
    arch, directory = arch_dir
    settings = ModelSettings(str(directory), 4, "random", "")
    model = build_prompt_model(settings)
    data = tokenize(EXAMPLES, model.tokenizer, 64, 10)
    assert max(len(ex.source_ids) for ex in data) > 16  # past Gemma 3's sliding window
    start = model.get_prompt()
    trained, _ = train_prompt(model, data, start, optimizer=OptimizerConfig("adam", 0.05), num_steps=20, batch_size=4,
                              seed=0)
    with torch.no_grad():
        losses = []
        for prompt in (start, trained):
            model.set_prompt(prompt)
            losses.append(float(per_example_loss(model, data).mean()))
    assert losses[1] < losses[0], (arch, losses)

    fused: list[str] = []
    paths: list[str] = []
    def spying(name: str):
        real = getattr(local, name)

        def spy(*args, **kwargs):
            result = real(*args, **kwargs)
            fused.extend(result[1])
            paths.append(name)
            return result
        return spy

    for name in ("_score_and_generate", "_score_and_generate_unpadded"):
        monkeypatch.setattr(local, name, spying(name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_many(model, [(data, trained)], batch_size=16, max_new_tokens=10)  # pooled: rows of many lengths
    # Past Gemma 3's window the fused path (pads and holes between a row's tokens) would change
    # what a padded row attends to: those rows take the unpadded path, with a note.
    assert set(paths) == {"_score_and_generate_unpadded" if arch == "gemma3" else "_score_and_generate"}
    assert any("sliding attention window" in str(w.message) for w in caught) == (arch == "gemma3")
    save_adapter(tmp_path / "adapter", trained, settings, max_source_tokens=64, max_target_tokens=10)
    theirs = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(directory),
                                       str(tmp_path / "adapter")).eval()
    model.set_prompt(trained)
    order = sorted(range(len(data)), key=lambda i: (len(data[i].source_ids), len(data[i].target_ids)))
    for text, i in zip(fused, order, strict=True):
        ids = torch.tensor([data[i].source_ids])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            tokens = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                     use_cache=False, eos_token_id=2, pad_token_id=0)
            embeds, prompted = model.prompted_inputs(ids, mask)
            ours = model.peft.get_base_model()(inputs_embeds=embeds, attention_mask=prompted).logits
            assert torch.allclose(theirs(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-5), arch
        peft_text = model.tokenizer.decode(tokens[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert text == peft_text == generate(model, [data[i]], 10)[0], (arch, i)


def test_a_prefix_trains_and_decodes_as_peft_on_every_architecture(arch_dir, tmp_path):
    """model.peft=prefix_tuning: the prefix starts as the initial prompt's keys and values (the
    same losses), training lowers the loss, and the exported PEFT prefix adapter gives rayfed's
    logits and the fused decoder's tokens."""
    arch, directory = arch_dir
    prompt_settings = ModelSettings(str(directory), 4, "random", "")
    settings = ModelSettings(str(directory), 4, "random", "", peft="prefix_tuning")
    model = build_prompt_model(settings)
    data = tokenize(EXAMPLES, model.tokenizer, 64, 10)
    with torch.no_grad():
        start_loss = per_example_loss(model, data)
        assert torch.allclose(start_loss, per_example_loss(build_prompt_model(prompt_settings), data), atol=1e-5)
    trained, _ = train_prompt(model, data, model.get_prompt(), optimizer=OptimizerConfig("adam", 0.05), num_steps=20,
                              batch_size=4, seed=0)
    model.set_prompt(trained)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(per_example_loss(model, data).mean()) < float(start_loss.mean()), arch
        scored = evaluate_many(model, [(data, trained)], batch_size=16, max_new_tokens=10)[0]
    save_adapter(tmp_path / "adapter", trained, settings, max_source_tokens=64, max_target_tokens=10)
    theirs = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(directory),
                                       str(tmp_path / "adapter")).eval()
    for example in data:
        ids = torch.tensor([example.source_ids])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ours = model.peft.get_base_model()(**model.backbone_inputs(ids, mask)).logits
            assert torch.allclose(theirs(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-5), arch
            tokens = ids
            for _ in range(10):  # greedy on PEFT's own forward, uncached (PEFT's generate under prefix
                # tuning gave other tokens than its own forward here; not yet investigated)
                step = theirs(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits[:, -1].argmax(-1)
                tokens = torch.cat([tokens, step[:, None]], 1)
                if int(step) == 2:
                    break
        peft_text = model.tokenizer.decode(tokens[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert peft_text == generate(model, [example], 10)[0], arch
    rouge = sum(s[3] for s in scored.examples) / len(data)
    plain = [generate(model, [ex], 10)[0] for ex in data]
    from rayfed.metrics import rouge_l
    assert abs(rouge - sum(rouge_l(p, ex.target_text) for p, ex in zip(plain, data)) / len(data)) < 1e-9, arch


def test_a_lora_trains_and_decodes_as_peft_on_every_architecture(arch_dir, tmp_path, monkeypatch):
    """model.peft=lora on PEFT's default targets of each architecture (GPT-2's fused c_attn
    included): it starts as the backbone itself, training lowers the loss, the exported PEFT LoRA
    adapter gives rayfed's logits, and PEFT's own generate gives the evaluation's tokens."""
    arch, directory = arch_dir
    settings = ModelSettings(str(directory), 4, "random", "", peft="lora", lora_rank=4, lora_alpha=8.0)
    model = build_prompt_model(settings)
    data = tokenize(EXAMPLES, model.tokenizer, 64, 10)
    plain = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.tensor([data[0].source_ids])
    with torch.no_grad():
        assert torch.allclose(model.backbone(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-6)
        start_loss = float(per_example_loss(model, data).mean())
    trained, _ = train_prompt(model, data, model.get_prompt(), optimizer=OptimizerConfig("adam", 0.02), num_steps=20,
                              batch_size=4, seed=0)
    model.set_prompt(trained)
    with torch.no_grad():
        assert float(per_example_loss(model, data).mean()) < start_loss, arch
    texts: dict[int, str] = {}  # the trained adapter's text of each example
    real = local._score_and_generate_unpadded

    def spy(model, rows, limits, prompts, **kwargs):
        result = real(model, rows, limits, prompts, **kwargs)
        for row, prompt, text in zip(rows, prompts, result[1]):
            if torch.equal(prompt, trained):
                texts[next(i for i, ex in enumerate(data) if ex is row)] = text
        return result
    monkeypatch.setattr(local, "_score_and_generate_unpadded", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Pooled with the untrained adapter: rows of two adapters share passes.
        evaluate_many(model, [(data, trained), (data, model.get_prompt() * 0)], batch_size=16, max_new_tokens=10)
    save_adapter(tmp_path / "adapter", trained, settings, max_source_tokens=64, max_target_tokens=10)
    theirs = PeftModel.from_pretrained(plain, str(tmp_path / "adapter")).eval()
    assert sorted(texts) == list(range(len(data)))
    for i, text in texts.items():
        ids = torch.tensor([data[i].source_ids])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ours = model.backbone(**model.backbone_inputs(ids, mask)).logits
            assert torch.allclose(theirs(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-5), arch
            tokens = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                     eos_token_id=2, pad_token_id=0)
        peft_text = model.tokenizer.decode(tokens[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert text == peft_text == generate(model, [data[i]], 10)[0], (arch, i)


def test_lora_targets_that_match_no_linear_layer_are_named():
    from rayfed.errors import UserError

    for targets, message in ((["k_projj"], "no layer of the backbone matches"), (["self_attn"], "not a linear layer")):
        with pytest.raises(UserError, match=rf"model\.lora_targets.*{message}"):
            build_prompt_model(ModelSettings("tiny-llama", 4, "random", "", peft="lora", lora_targets=targets))
