"""Real multi-task text from BIG-bench, for those who have its archive: a curated set of short tasks.

``bigbench==1.0.0`` was published on PyPI only as a 358 MB source archive, and until 2026-12 it
was rayfed's default source. The package indexes this project's machines reach no longer serve its
file (PyPI lists the version with no files; only 0.0.1, code without tasks, downloads), so the
default is now ``rayfed.data.evals``. Where an index still serves it, we ``pip download`` it (never
``pip install``: that pulls TensorFlow, T5 and more); a copy of the archive from elsewhere (a
mirror, an earlier download: the sha256 below identifies it) is taken with
``rayfed data prepare bigbench --archive PATH``. Either way we stream the tar once and keep only
the curated ``benchmark_tasks/<task>[/<subtask>]/task.json`` files, converted to :class:`Example`.
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
tie). Then the rule every built-in source shares (``rayfed.data.prepared.keep_examples``): inputs
over 400 characters, targets over 100 and empty targets dropped, each task shuffled with a seeded
generator and its first 2,000 kept. NI targets keep their trailing period ("Yes.", "earthquakes.")
as in the source.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from rayfed.data.prepared import TaskRows, file_sha256, is_prepared, pip_download, read_prepared, write_curated
from rayfed.errors import UserError
from rayfed.paths import cache_dir
from rayfed.types import Example

REQUIREMENT = "bigbench==1.0.0"
ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
CURATED_VERSION = 1


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


def prepare_bigbench(root: Path | None = None, *, quiet: bool = False, archive: Path | None = None) -> Path:
    """Get the archive (unless present) and extract the curated tasks (unless done).

    Args:
        root: Cache root; defaults to ``rayfed.paths.cache_dir()``.
        quiet: Hide pip's output and the extraction progress bar.
        archive: A copy of ``bigbench-1.0.0.tar.gz`` to take instead of downloading it; its sha256
            must be the published one.

    Returns:
        The ``bigbench`` directory holding ``examples.jsonl`` and ``manifest.json``.
    """
    out = bigbench_dir(root)
    if archive is not None:
        _take_archive(Path(archive).expanduser(), out / "archive")
    elif is_prepared(out, CURATED_VERSION):
        return out
    path = pip_download(
        REQUIREMENT, ARCHIVE_NAME, ARCHIVE_SHA256, out / "archive", binary=False, quiet=quiet,
        unavailable=f"the package index did not serve {REQUIREMENT}'s source archive (PyPI no longer does, as of "
        "2026-12). If you have a copy of bigbench-1.0.0.tar.gz, take it with `rayfed data prepare bigbench "
        "--archive PATH`; otherwise use the default source, data.source=evals.")
    extract_tasks(path, out, CURATED_TASKS, quiet=quiet)
    return out


def _take_archive(source: Path, dest: Path) -> None:
    """Copy a user's archive into the cache after checking it is the published one."""
    if not source.is_file():
        raise UserError(f"--archive {source}: no such file")
    digest = file_sha256(source)
    if digest != ARCHIVE_SHA256:
        raise UserError(f"--archive {source}: sha256 {digest} is not that of {ARCHIVE_NAME} ({ARCHIVE_SHA256})")
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / ARCHIVE_NAME).resolve() != source.resolve():
        tmp = dest / f".{ARCHIVE_NAME}.tmp"
        shutil.copyfile(source, tmp)
        tmp.replace(dest / ARCHIVE_NAME)


def extract_tasks(archive: Path, out_dir: Path, tasks: Sequence[CuratedTask] = CURATED_TASKS,
                  *, quiet: bool = False) -> dict[str, Any]:
    """Stream ``archive`` once and write ``examples.jsonl`` and ``manifest.json`` into ``out_dir``.

    Raises:
        UserError: if a requested task is not in the archive.

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

    def rows(task: CuratedTask) -> TaskRows:
        data = found[task.member]
        instruction = task.instruction or str(data.get("task_prefix") or "").strip() or str(data["description"]).strip()
        return TaskRows(task.name, task.category, task.member, len(data["examples"]),
                        ((instruction, str(ex.get("input", "")), _target(ex)) for ex in data["examples"]))

    return write_curated(out_dir, archive, (rows(t) for t in tasks), curated_version=CURATED_VERSION,
                         source=f"PyPI {REQUIREMENT} source archive (BIG-bench; do not commit: canary)")


def load_bigbench(root: Path | None = None, *, tasks: list[str] | None = None) -> list[Example]:
    """Read the prepared examples, optionally only those of ``tasks`` (curated task names).

    Raises:
        FileNotFoundError: if they were not prepared; the message says how.
        UserError: if ``tasks`` names a task that is not in the file.
    """
    return read_prepared(bigbench_dir(root), tasks, how=f"Run `rayfed data prepare bigbench` to download the "
                         f"{REQUIREMENT} source archive (358 MB) where your package index serves it, or "
                         "`rayfed data prepare bigbench --archive PATH` with a copy of it")


def _target(ex: dict[str, Any]) -> str:
    """``target`` (first element of a list) if given, else the best option of ``target_scores``."""
    target = ex.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if target is None and ex.get("target_scores"):
        scores = ex["target_scores"]
        target = max(scores, key=scores.__getitem__)
    return "" if target is None else str(target).strip()
