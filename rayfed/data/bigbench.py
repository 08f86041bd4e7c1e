"""Real multi-task text: a curated set of short tasks from the BIG-bench source archive on PyPI.

``bigbench==1.0.0`` is published only as a 358 MB source archive. We ``pip download`` it (never
``pip install``: that pulls TensorFlow, T5 and more), stream the tar once and keep only the
curated ``benchmark_tasks/<task>[/<subtask>]/task.json`` files, converted to :class:`Example`.
The package is Apache-2.0, but every task file carries a canary string asking that the data stay
out of training corpora, so nothing extracted from it may enter git: the archive and the
extracted files live under ``rayfed.paths.cache_dir()`` (``$RAYFED_CACHE``, else
``~/.cache/rayfed``), in ``bigbench/{archive/,examples.jsonl,manifest.json}``.

Curated list (``CURATED_TASKS``, version ``CURATED_VERSION``): short input/output tasks that a
135M model can be prompt-tuned on, on CPU, grouped into categories (the unit of heterogeneity:
clients get a Dirichlet mixture over categories), each with at least 3 tasks:

- ``arithmetic``: 2-digit addition/subtraction/multiplication, unit addition, object counting.
- ``linguistic_mapping``: plural, past tense, negation, question formation, pronoun replacement.
- ``word_manipulation``: unscrambling, alphabetical sorting, overlapping words of two sentences.
- ``question_answering``: Wikidata facts, periodic table, three Natural-Instructions v1 (NI)
  tasks that answer from one given sentence or fact (QASC, MultiRC, Winogrande).
- ``classification``: intent (7 labels), sentiment (4), FEVER claims (true/false), sports
  plausibility; every label set is named in the instruction or the input.
- ``text_generation``: NI QASC question generation and topic words, NI essential terms.

Left out: tasks with long inputs (NI quoref, drop, ropes, most of multirc: 1-2k characters);
NI yes/no tasks whose majority label covers 85-95% (mctaco 018-021, multirc 050, cosmosqa 022);
NI 046 (question typing) whose multi-label targets are sorted alphabetically, so the first is
often wrong; multiple-choice tasks whose options appear neither in the input nor in the
instruction (social_iqa, goal_step_wikihow, elementary_math_qa), since we generate the target
without listing the choices; tasks that need long reasoning (logical_deduction, chess).

Conversion rules: instruction = ``task_prefix`` if non-empty, else ``description`` (stripped);
NI keeps its whole definition there. Seven entries override it with our own wording because the
source text is not an instruction (``linguistic_mappings`` describes a Python class,
periodic_elements and fact_checker describe the benchmark). ``target`` (a list: its first
element) wins over ``target_scores`` (multiple choice: the highest-scoring option, first on a
tie). Inputs and targets are stripped; examples with an input over 400 characters, a target over
100 characters or an empty target are dropped. Each task's survivors are shuffled with a seeded
``random.Random`` and the first ``MAX_EXAMPLES_PER_TASK`` kept, written in that shuffled order so
that any prefix of a task (e.g. a later per-task cap) is a uniform sample. NI targets keep their
trailing period ("Yes.", "earthquakes.") as in the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from rayfed.errors import UserError
from rayfed.paths import cache_dir
from rayfed.types import Example

REQUIREMENT = "bigbench==1.0.0"
ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
CURATED_VERSION = 1
MAX_EXAMPLES_PER_TASK = 2000
MAX_INPUT_CHARS = 400
MAX_TARGET_CHARS = 100
SHUFFLE_SEED = 0


class CuratedTask(NamedTuple):
    """One curated leaf task.

    Attributes:
        name: ``"ni/<subtask>"`` for Natural-Instructions v1, else ``"bigbench/<task>[/<subtask>]"``.
        category: The task's category.
        instruction: Our own instruction, replacing the source's when that is not one.
    """

    name: str
    category: str
    instruction: str | None = None

    @property
    def member(self) -> str:
        """The task's directory under ``benchmark_tasks/`` in the archive."""
        family, _, rest = self.name.partition("/")
        return f"natural_instructions/{rest}" if family == "ni" else rest


def _t(category: str, *names: str) -> list[CuratedTask]:
    return [CuratedTask(name, category) for name in names]


CURATED_TASKS: tuple[CuratedTask, ...] = (
    *_t("arithmetic", "bigbench/arithmetic/2_digit_addition", "bigbench/arithmetic/2_digit_subtraction",
        "bigbench/arithmetic/2_digit_multiplication", "bigbench/unit_conversion/unit_addition_same",
        "bigbench/object_counting"),
    CuratedTask("bigbench/linguistic_mappings/plural_json", "linguistic_mapping",
                "Give the plural of the English noun."),
    CuratedTask("bigbench/linguistic_mappings/past_tense_json", "linguistic_mapping",
                "Give the past tense of the English verb."),
    CuratedTask("bigbench/linguistic_mappings/sentence_negation_json", "linguistic_mapping",
                "Negate the sentence."),
    CuratedTask("bigbench/linguistic_mappings/question_formation_json", "linguistic_mapping",
                "Turn the statement into a yes/no question."),
    CuratedTask("bigbench/linguistic_mappings/pronoun_replacement_json", "linguistic_mapping",
                "Rewrite the sentence, replacing a repeated name with the right pronoun."),
    *_t("word_manipulation", "bigbench/word_unscrambling", "bigbench/word_sorting",
        "ni/subtask039_qasc_find_overlapping_words"),
    *_t("question_answering", "bigbench/qa_wikidata", "ni/subtask033_winogrande_answer_generation",
        "ni/subtask041_qasc_answer_generation", "ni/subtask051_multirc_correct_answer_single_sentence"),
    CuratedTask("bigbench/periodic_elements/subtask_1", "question_answering",
                "Name the chemical element that the question describes."),
    *_t("classification", "bigbench/intent_recognition", "bigbench/multiemo/all_sentence_en",
        "bigbench/sports_understanding"),
    CuratedTask("bigbench/fact_checker/fever", "classification", "Decide whether the claim is true or false."),
    *_t("text_generation", "ni/subtask036_qasc_topic_word_to_generate_related_fact",
        "ni/subtask040_qasc_question_generation", "ni/subtask044_essential_terms_identifying_essential_words"),
)


def bigbench_dir(root: Path | None = None) -> Path:
    """Where the archive and the prepared files live: ``<root or cache_dir()>/bigbench``."""
    return Path(root if root is not None else cache_dir()) / "bigbench"


def prepare_bigbench(root: Path | None = None, *, quiet: bool = False) -> Path:
    """Download the archive (unless present) and extract the curated tasks (unless done).

    Args:
        root: Cache root; defaults to ``rayfed.paths.cache_dir()``.
        quiet: Hide pip's output and the extraction progress bar.

    Returns:
        The ``bigbench`` directory holding ``examples.jsonl`` and ``manifest.json``.
    """
    out = bigbench_dir(root)
    manifest = out / "manifest.json"
    if (out / "examples.jsonl").exists() and manifest.exists() \
            and json.loads(manifest.read_text()).get("curated_version") == CURATED_VERSION:
        return out
    archive = download_archive(out / "archive", quiet=quiet)
    extract_tasks(archive, out, CURATED_TASKS, quiet=quiet)
    return out


def download_archive(dest: Path, *, quiet: bool = False) -> Path:
    """``pip download`` the source archive into ``dest`` (atomically) and check its sha256."""
    path = dest / ARCHIVE_NAME
    if path.exists():
        return path
    tmp = dest.parent / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # pip builds the sdist's metadata in an isolated env, fetching setuptools itself.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(tmp), REQUIREMENT]
    try:
        subprocess.run(cmd + (["--quiet"] if quiet else []), check=True)
        digest = _sha256(tmp / ARCHIVE_NAME)
        if digest != ARCHIVE_SHA256:
            raise RuntimeError(f"{ARCHIVE_NAME}: sha256 {digest} != expected {ARCHIVE_SHA256}")
        dest.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / ARCHIVE_NAME, path)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {err.returncode}); is PyPI reachable?") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def extract_tasks(archive: Path, out_dir: Path, tasks: Sequence[CuratedTask] = CURATED_TASKS,
                  *, quiet: bool = False) -> dict[str, Any]:
    """Stream ``archive`` once and write ``examples.jsonl`` and ``manifest.json`` into ``out_dir``.

    Both files are written to temporary names and renamed, the manifest last, so a crash never
    leaves files that look prepared.

    Raises:
        ValueError: if a requested task is not in the archive.

    Returns:
        The manifest.
    """
    wanted = {t.member: t for t in tasks}
    found: dict[str, dict[str, Any]] = {}
    with (open(archive, "rb") as raw,
          tqdm.wrapattr(raw, "read", total=archive.stat().st_size, desc="extract", disable=quiet) as stream,
          tarfile.open(fileobj=stream, mode="r|gz") as tar):
        for member in tar:
            rel = member.name.partition("/benchmark_tasks/")[2].removesuffix("/task.json")
            if member.isfile() and member.name.endswith("/task.json") and rel in wanted:
                found[rel] = json.load(tar.extractfile(member))
                if len(found) == len(wanted):
                    break
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise UserError(f"{archive.name} lacks benchmark_tasks/{{{', '.join(missing)}}}/task.json")

    lines: list[str] = []
    task_stats: dict[str, dict[str, Any]] = {}
    categories: Counter[str] = Counter()
    for task in tasks:
        examples, stats = _convert(task, found[task.member])
        lines += [json.dumps({k: v for k, v in asdict(ex).items() if k != "site"}, ensure_ascii=False) + "\n"
                  for ex in examples]  # the cache's schema predates Example.site
        task_stats[task.name] = {"category": task.category, "member": task.member, **stats}
        categories[task.category] += stats["kept"]
    manifest = {
        "source": f"PyPI {REQUIREMENT} source archive (BIG-bench; do not commit: canary)",
        "archive": {"filename": archive.name, "sha256": _sha256(archive), "bytes": archive.stat().st_size},
        "curated_version": CURATED_VERSION,
        "filters": {"max_input_chars": MAX_INPUT_CHARS, "max_target_chars": MAX_TARGET_CHARS,
                    "drop_empty_target": True, "max_examples_per_task": MAX_EXAMPLES_PER_TASK,
                    "selection": f"random.Random(f'{SHUFFLE_SEED}/{{task}}').shuffle, then the first N"},
        "total": len(lines),
        "categories": dict(categories),
        "tasks": task_stats,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # the manifest marks a finished extraction
    _write_atomic(out_dir / "examples.jsonl", "".join(lines))
    _write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_bigbench(root: Path | None = None, *, tasks: list[str] | None = None) -> list[Example]:
    """Read the prepared examples, optionally only those of ``tasks`` (curated task names).

    Raises:
        FileNotFoundError: if ``examples.jsonl`` is missing; the message says how to prepare it.
        ValueError: if ``tasks`` names a task that is not in the file.
    """
    path = bigbench_dir(root) / "examples.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"BIG-bench examples not found at {path}. Run `rayfed data prepare` to download the "
            f"{REQUIREMENT} source archive from PyPI (358 MB) and extract the curated tasks there "
            "(the cache root is $RAYFED_CACHE, default ~/.cache/rayfed).")
    with open(path, encoding="utf-8") as f:
        examples = [Example(**json.loads(line)) for line in f if line.strip()]
    if tasks is None:
        return examples
    unknown = sorted(set(tasks) - {ex.task for ex in examples})
    if unknown:
        raise UserError(f"unknown BIG-bench tasks {unknown}; see rayfed.data.bigbench.CURATED_TASKS")
    wanted = set(tasks)
    return [ex for ex in examples if ex.task in wanted]


def _convert(task: CuratedTask, data: dict[str, Any]) -> tuple[list[Example], dict[str, int]]:
    instruction = task.instruction or str(data.get("task_prefix") or "").strip() or str(data["description"]).strip()
    stats = Counter(source_examples=len(data["examples"]))
    kept = []
    for ex in data["examples"]:
        text, target = str(ex.get("input", "")).strip(), _target(ex)
        if not target:
            stats["dropped_empty_target"] += 1
        elif len(text) > MAX_INPUT_CHARS:
            stats["dropped_long_input"] += 1
        elif len(target) > MAX_TARGET_CHARS:
            stats["dropped_long_target"] += 1
        else:
            kept.append(Example(task.name, task.category, instruction, text, target))
    random.Random(f"{SHUFFLE_SEED}/{task.name}").shuffle(kept)
    kept = kept[:MAX_EXAMPLES_PER_TASK]
    stats["kept"] = len(kept)
    return kept, dict(stats)


def _target(ex: dict[str, Any]) -> str:
    """``target`` (first element of a list) if given, else the best option of ``target_scores``."""
    target = ex.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if target is None and ex.get("target_scores"):
        scores = ex["target_scores"]
        target = max(scores, key=scores.__getitem__)
    return "" if target is None else str(target).strip()


def _sha256(path: Path) -> str:
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
