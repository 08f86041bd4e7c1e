"""A built-in source prepared once into the cache: a registry archive fetched with ``pip download``
(sha256-checked), its curated tasks converted by one rule and written as ``examples.jsonl`` beside
a ``manifest.json`` that records where every example came from.

Both built-in sources (``rayfed.data.evals``, the default, and ``rayfed.data.bigbench``) share it,
so their filters, their seeded per-task sample and their crash-safe writes are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from rayfed.errors import UserError
from rayfed.types import Example

MAX_EXAMPLES_PER_TASK = 2000
MAX_INPUT_CHARS = 400
MAX_TARGET_CHARS = 100
SHUFFLE_SEED = 0
FILTERS = {"max_input_chars": MAX_INPUT_CHARS, "max_target_chars": MAX_TARGET_CHARS, "drop_empty_target": True,
           "max_examples_per_task": MAX_EXAMPLES_PER_TASK,
           "selection": f"random.Random(f'{SHUFFLE_SEED}/{{task}}').shuffle, then the first N"}


class SourceUnavailableError(UserError, RuntimeError):
    """The package index did not serve a built-in source's archive; the message says what to do."""


def pip_download(requirement: str, filename: str, sha256: str, dest: Path, *, binary: bool, quiet: bool,
                 unavailable: str) -> Path:
    """``pip download`` one distribution file into ``dest`` (atomically) and check its sha256.

    Args:
        requirement: e.g. ``"evals==3.0.1.post1"``.
        filename: The file pip saves, e.g. the wheel's name.
        sha256: Its expected digest: another file under the same name is refused.
        dest: The directory to keep it in; a file already there is used as it is.
        binary: Download the wheel (``True``) or the source archive (``False``).
        quiet: Hide pip's output.
        unavailable: What to tell the user when the index does not serve it.

    Raises:
        SourceUnavailableError: pip could not get it from the configured index.
    """
    path = dest / filename
    if path.exists():
        return path
    tmp = dest.parent / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]  # an sdist's metadata build
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-d", str(tmp), requirement]
    try:
        subprocess.run(cmd + (["--quiet"] if quiet else []), check=True)
        digest = file_sha256(tmp / filename)
        if digest != sha256:
            raise UserError(f"{filename}: sha256 {digest} != expected {sha256}")
        dest.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / filename, path)
    except subprocess.CalledProcessError as err:
        raise SourceUnavailableError(f"`{' '.join(cmd)}` failed (exit {err.returncode}): {unavailable}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_prepared(out_dir: Path, curated_version: int) -> bool:
    """Whether ``out_dir`` holds a finished extraction of this curated version."""
    manifest = out_dir / "manifest.json"
    return (out_dir / "examples.jsonl").exists() and manifest.exists() \
        and json.loads(manifest.read_text()).get("curated_version") == curated_version


def keep_examples(task: str, category: str, rows: Iterable[tuple[str, str, str]],
                  stats: Counter[str]) -> list[Example]:
    """The rule every built-in source applies to one task's ``(instruction, input, target)`` rows.

    All three are stripped; a row with an empty target, an input over
    ``MAX_INPUT_CHARS`` or a target over ``MAX_TARGET_CHARS`` is dropped (counted in ``stats``);
    the survivors are shuffled with a generator seeded by the task's name and the first
    ``MAX_EXAMPLES_PER_TASK`` kept, in that order, so that any prefix of a task (a later per-task
    cap) is a uniform sample of it.
    """
    kept = []
    for instruction, text, target in rows:
        instruction, text, target = instruction.strip(), text.strip(), target.strip()
        if not target:
            stats["dropped_empty_target"] += 1
        elif len(text) > MAX_INPUT_CHARS:
            stats["dropped_long_input"] += 1
        elif len(target) > MAX_TARGET_CHARS:
            stats["dropped_long_target"] += 1
        else:
            kept.append(Example(task, category, instruction, text, target))
    random.Random(f"{SHUFFLE_SEED}/{task}").shuffle(kept)
    kept = kept[:MAX_EXAMPLES_PER_TASK]
    stats["kept"] = len(kept)
    return kept


class TaskRows(NamedTuple):
    """One curated task's source rows, before the shared rule."""

    name: str
    category: str
    member: str  # where in the archive it came from
    source_examples: int
    rows: Iterable[tuple[str, str, str]]  # (instruction, input, target)
    dropped: dict[str, int] | None = None  # rows the source's own reader left out, by reason


def write_curated(out_dir: Path, archive: Path, tasks: Iterable[TaskRows], *, source: str, curated_version: int,
                  filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply :func:`keep_examples` to every task and write the examples and the manifest (the
    archive's name, sha256 and size, the rule, and every task's counts) into ``out_dir``.

    Returns:
        The manifest.
    """
    examples: list[Example] = []
    task_stats: dict[str, dict[str, Any]] = {}
    categories: Counter[str] = Counter()
    for task in tasks:
        stats: Counter[str] = Counter(source_examples=task.source_examples, **(task.dropped or {}))
        examples += keep_examples(task.name, task.category, task.rows, stats)
        task_stats[task.name] = {"category": task.category, "member": task.member, **stats}
        categories[task.category] += stats["kept"]
    manifest = {
        "source": source,
        "archive": {"filename": archive.name, "sha256": file_sha256(archive), "bytes": archive.stat().st_size},
        "curated_version": curated_version,
        "filters": {**FILTERS, **(filters or {})},
        "categories": dict(categories),
        "tasks": task_stats,
    }
    write_prepared(out_dir, examples, manifest)
    return manifest


def write_prepared(out_dir: Path, examples: list[Example], manifest: dict[str, Any]) -> None:
    """Write ``examples.jsonl`` then ``manifest.json``, each to a temporary name and renamed, so a
    crash never leaves files that look prepared."""
    lines = [json.dumps({k: v for k, v in asdict(ex).items() if k != "site"}, ensure_ascii=False) + "\n"
             for ex in examples]  # the cache's schema predates Example.site
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # the manifest marks a finished extraction
    _write_atomic(out_dir / "examples.jsonl", "".join(lines))
    _write_atomic(out_dir / "manifest.json", json.dumps({**manifest, "total": len(lines)}, indent=2) + "\n")


def read_prepared(out_dir: Path, tasks: list[str] | None, *, how: str) -> list[Example]:
    """The prepared examples of ``out_dir``, optionally only those of ``tasks``.

    Raises:
        FileNotFoundError: ``examples.jsonl`` is missing; the message says ``how`` to prepare it.
        UserError: ``tasks`` names a task that is not in the file.
    """
    path = out_dir / "examples.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found. {how} (the cache root is $RAYFED_CACHE, default ~/.cache/rayfed).")
    with open(path, encoding="utf-8") as f:
        examples = [Example(**json.loads(line)) for line in f if line.strip()]
    if tasks is None:
        return examples
    unknown = sorted(set(tasks) - {ex.task for ex in examples})
    if unknown:
        raise UserError(f"key 'data.tasks': unknown tasks {unknown} "
                        f"(the prepared tasks are listed in {out_dir}/manifest.json)")
    wanted = set(tasks)
    return [ex for ex in examples if ex.task in wanted]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
