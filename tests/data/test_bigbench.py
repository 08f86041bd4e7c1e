"""BIG-bench extraction on a tiny invented archive in the real member layout (no network)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from rayfed.data import bigbench
from rayfed.data import prepared as prepared_source
from rayfed.data.bigbench import CuratedTask, extract_tasks, load_bigbench, prepare_bigbench
from rayfed.types import Example

PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks"

TOY_TASKS = {
    "toy_capitals": {
        "name": "toy_capitals", "description": "  Name the capital city.  ",
        "examples": [
            {"input": "Capital of Zorbia: ", "target": "Zorbville"},
            {"input": "Capital of Quendia:", "target": ["Quenport", "Old Quenport"]},
            {"input": "x" * 400, "target": "kept at exactly 400 characters"},
            {"input": "x" * 401, "target": "dropped"},
            {"input": "Capital of Longland:", "target": "y" * 101},
            {"input": "Capital of Nowhere:", "target": ["  "]},
        ],
    },
    "toy_family/toy_choice": {
        "name": "toy_choice", "description": "unused", "task_prefix": "Pick the color of the object.\n\n",
        "examples": [
            {"input": "A ripe plorb is", "target_scores": {"blue": 0, "green": 1, "red": 0.5}},
            {"input": "A wet snib is", "target_scores": {"grey": 0.2, "white": 0.9}},
        ],
    },
    "natural_instructions/subtask999_toy_yes_no": {
        "name": "subtask999_toy_yes_no", "task_prefix": "Definition: Answer yes or no. Prompt: Is it big?",
        "examples": [{"input": f"Thing number {i}", "target": ["Yes." if i % 2 else "No."]} for i in range(10)],
    },
    "toy_unused": {"name": "toy_unused", "description": "never requested", "examples": [{"input": "a", "target": "b"}]},
}
TOY_CURATED = (
    CuratedTask("bigbench/toy_capitals", "question_answering"),
    CuratedTask("bigbench/toy_family/toy_choice", "classification"),
    CuratedTask("ni/subtask999_toy_yes_no", "classification", "Say whether it is big."),
)


def make_archive(directory: Path, tasks: dict = TOY_TASKS) -> Path:
    """A gzipped tar named like the real one, with task.json files at the real member paths."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / bigbench.ARCHIVE_NAME
    with tarfile.open(path, "w:gz") as tar:
        members = {f"{PREFIX}/toy_family/task.json": {"name": "toy_family", "subtasks": []},
                   "bigbench-1.0.0/README.md": "not a task"}
        members.update({f"{PREFIX}/{rel}/task.json": data for rel, data in tasks.items()})
        for name, data in members.items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def by_task(examples: list[Example]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {}
    for ex in examples:
        out.setdefault(ex.task, []).append(ex)
    return out


@pytest.fixture
def prepared(tmp_path) -> Path:
    extract_tasks(make_archive(tmp_path / "src"), bigbench.bigbench_dir(tmp_path), TOY_CURATED, quiet=True)
    return tmp_path


def test_multiple_choice_takes_highest_scored_option(prepared):
    examples = by_task(load_bigbench(prepared))["bigbench/toy_family/toy_choice"]
    assert {ex.input: ex.target for ex in examples} == {"A ripe plorb is": "green", "A wet snib is": "white"}
    assert {ex.instruction for ex in examples} == {"Pick the color of the object."}
    assert {ex.category for ex in examples} == {"classification"}


def test_target_lists_instructions_and_length_filters(prepared):
    tasks = by_task(load_bigbench(prepared))
    capitals = {ex.input: ex.target for ex in tasks["bigbench/toy_capitals"]}
    assert capitals == {"Capital of Zorbia:": "Zorbville", "Capital of Quendia:": "Quenport",
                        "x" * 400: "kept at exactly 400 characters"}
    assert {ex.instruction for ex in tasks["bigbench/toy_capitals"]} == {"Name the capital city."}
    assert {ex.instruction for ex in tasks["ni/subtask999_toy_yes_no"]} == {"Say whether it is big."}
    manifest = json.loads((bigbench.bigbench_dir(prepared) / "manifest.json").read_text())
    stats = manifest["tasks"]["bigbench/toy_capitals"]
    assert (stats["dropped_long_input"], stats["dropped_long_target"], stats["dropped_empty_target"]) == (1, 1, 1)
    assert manifest["categories"] == {"question_answering": 3, "classification": 12}
    assert manifest["total"] == 15 and "bigbench/toy_unused" not in manifest["tasks"]


def test_cap_keeps_a_deterministic_seeded_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared_source, "MAX_EXAMPLES_PER_TASK", 4)
    archive = make_archive(tmp_path / "src")
    extract_tasks(archive, tmp_path / "a", TOY_CURATED, quiet=True)
    extract_tasks(archive, tmp_path / "b", TOY_CURATED, quiet=True)
    assert (tmp_path / "a/examples.jsonl").read_bytes() == (tmp_path / "b/examples.jsonl").read_bytes()
    lines = [json.loads(line) for line in (tmp_path / "a/examples.jsonl").read_text().splitlines()]
    kept = [line["input"] for line in lines if line["task"] == "ni/subtask999_toy_yes_no"]
    assert len(kept) == 4 and len(set(kept)) == 4
    assert kept != [f"Thing number {i}" for i in range(4)]  # a seeded sample, not the first four


def test_missing_task_in_archive_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no_such_task"):
        extract_tasks(make_archive(tmp_path), tmp_path / "out", [CuratedTask("bigbench/no_such_task", "qa")],
                      quiet=True)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_load_filters_tasks_and_rejects_unknown(prepared):
    examples = load_bigbench(prepared, tasks=["bigbench/toy_capitals"])
    assert {ex.task for ex in examples} == {"bigbench/toy_capitals"} and len(examples) == 3
    with pytest.raises(ValueError, match="bigbench/typo"):
        load_bigbench(prepared, tasks=["bigbench/typo"])


def test_missing_cache_error_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_bigbench(tmp_path)
    message = str(err.value)
    assert "rayfed data prepare bigbench --archive PATH" in message and "$RAYFED_CACHE" in message
    assert str(tmp_path / "bigbench" / "examples.jsonl") in message


def test_load_uses_rayfed_cache_by_default(prepared, monkeypatch):
    monkeypatch.setenv("RAYFED_CACHE", str(prepared))
    assert len(load_bigbench()) == 15


def no_pip(*args, **kwargs):
    raise AssertionError("pip must not run")


def test_prepare_uses_present_archive_and_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "CURATED_TASKS", TOY_CURATED)
    monkeypatch.setattr(subprocess, "run", no_pip)
    make_archive(tmp_path / "bigbench" / "archive")
    out = prepare_bigbench(tmp_path, quiet=True)
    assert out == tmp_path / "bigbench" and len(load_bigbench(tmp_path)) == 15
    monkeypatch.setattr(bigbench, "extract_tasks", no_pip)
    assert prepare_bigbench(tmp_path, quiet=True) == out  # second call: nothing to do

    (out / "manifest.json").unlink()  # as after a crash between the two renames
    calls = []
    monkeypatch.setattr(bigbench, "extract_tasks", lambda *args, **kwargs: calls.append(args))
    prepare_bigbench(tmp_path, quiet=True)
    assert len(calls) == 1


def fake_pip(content: bytes):
    def run(cmd, check):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and bigbench.REQUIREMENT in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / bigbench.ARCHIVE_NAME).write_bytes(content)
    return run


def test_download_checks_sha256_and_moves_into_place(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", fake_pip(b"tampered"))
    monkeypatch.setattr(bigbench, "CURATED_TASKS", TOY_CURATED)
    with pytest.raises(ValueError, match="sha256"):
        prepare_bigbench(tmp_path, quiet=True)
    assert [p.name for p in (tmp_path / "bigbench").iterdir()] == []  # no half archive, no temporary folder

    monkeypatch.setattr(subprocess, "run", fake_pip(b"genuine"))
    monkeypatch.setattr(bigbench, "ARCHIVE_SHA256", hashlib.sha256(b"genuine").hexdigest())
    monkeypatch.setattr(bigbench, "extract_tasks", lambda *args, **kwargs: None)
    prepare_bigbench(tmp_path, quiet=True)
    assert (tmp_path / "bigbench" / "archive" / bigbench.ARCHIVE_NAME).read_bytes() == b"genuine"
    assert [p.name for p in (tmp_path / "bigbench").iterdir()] == ["archive"]


def test_an_index_that_no_longer_serves_the_archive_says_what_to_do(tmp_path, monkeypatch):
    def refused(cmd, check):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", refused)
    with pytest.raises(prepared_source.SourceUnavailableError) as err:
        prepare_bigbench(tmp_path, quiet=True)
    message = str(err.value)
    assert "rayfed data prepare bigbench --archive PATH" in message and "data.source=evals" in message


def test_a_copy_of_the_archive_is_taken_only_if_it_is_the_published_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "CURATED_TASKS", TOY_CURATED)
    monkeypatch.setattr(subprocess, "run", no_pip)
    copy = make_archive(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="is not that of bigbench-1.0.0.tar.gz"):
        prepare_bigbench(tmp_path / "cache", quiet=True, archive=copy)
    assert not (tmp_path / "cache" / "bigbench" / "archive" / bigbench.ARCHIVE_NAME).exists()
    with pytest.raises(ValueError, match="no such file"):
        prepare_bigbench(tmp_path / "cache", quiet=True, archive=tmp_path / "nowhere.tar.gz")

    monkeypatch.setattr(bigbench, "ARCHIVE_SHA256", hashlib.sha256(copy.read_bytes()).hexdigest())
    out = prepare_bigbench(tmp_path / "cache", quiet=True, archive=copy)
    assert len(load_bigbench(tmp_path / "cache")) == 15 and out == tmp_path / "cache" / "bigbench"
