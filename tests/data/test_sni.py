"""Super-NaturalInstructions loading from a task directory and from JSONL (invented data)."""

from __future__ import annotations

import json

import pytest

from rayfed.data.sni import load_sni
from rayfed.data.sources import cap_per_task
from rayfed.types import Example


def write_task(directory, stem, definition, categories, outputs):
    instances = [{"id": f"{stem}-{i}", "input": f" question {i} ", "output": out} for i, out in enumerate(outputs)]
    data = {"Definition": definition, "Categories": categories, "Instances": instances}
    (directory / f"{stem}.json").write_text(json.dumps(data))


@pytest.fixture
def sni_dir(tmp_path):
    write_task(tmp_path, "task001_toy_answering", ["Answer the toy question.", "Be brief."],
               ["Question Answering", "Toys"], [["yes", "sure"], ["no"], []])
    write_task(tmp_path, "task002_toy_typing", ["Give the type."], ["Classification"], [["a"], ["b"], ["c"]])
    (tmp_path / "README.md").write_text("not a task")
    return tmp_path


def test_directory_of_task_files(sni_dir):
    examples = load_sni(sni_dir)
    assert examples[0] == Example("task001_toy_answering", "Question Answering",
                                  "Answer the toy question.\n\nBe brief.", "question 0", "yes")
    assert [ex.task for ex in examples] == ["task001_toy_answering"] * 2 + ["task002_toy_typing"] * 3
    assert {ex.category for ex in examples[2:]} == {"Classification"}


def test_directory_cap_per_task(sni_dir):
    examples = cap_per_task(load_sni(sni_dir), 1)
    assert [(ex.task, ex.target) for ex in examples] == [("task001_toy_answering", "yes"), ("task002_toy_typing", "a")]


def test_jsonl_file(tmp_path):
    rows = [{"task": t, "category": "c", "instruction": "Do it.", "input": str(i), "target": "x"}
            for i, t in enumerate(["t1", "t1", "t2"])]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_sni(path) == [Example(**r) for r in rows]
    assert [ex.task for ex in cap_per_task(load_sni(path), 1)] == ["t1", "t2"]


def test_jsonl_bad_line_names_line_and_key(tmp_path):
    path = tmp_path / "data.jsonl"
    good = {"task": "t", "category": "c", "instruction": "i", "input": "x", "target": "y"}
    bad = {k: v for k, v in good.items() if k != "target"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"data\.jsonl:2: missing key 'target'"):
        load_sni(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"data\.jsonl:2: invalid JSON"):
        load_sni(path)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_sni(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no SNI task files"):
        load_sni(tmp_path)


def test_malformed_task_file_names_the_file(tmp_path):
    (tmp_path / "task003_broken.json").write_text(json.dumps({"Categories": ["c"], "Instances": []}))
    with pytest.raises(ValueError, match="task003_broken.json.*Definition"):
        load_sni(tmp_path)
