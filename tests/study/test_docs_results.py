"""The committed results bundles recompute the tables docs/study.md (and the BIG-bench record,
docs/study-bigbench.md) show from them: every block
between ``<!-- generated: ... -->`` and ``<!-- end generated -->`` equals what ``rayfed study
--report-only`` / ``--power-for`` compute from ``docs/results/``, each bundle read with the study
file it ran (kept beside it), so a later edit of ``configs/study/`` cannot change a record."""

import json
import re
import shutil
from pathlib import Path

import pytest

from rayfed.cli import main
from rayfed.study.report import comparison_table

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "study.md"
BIGBENCH_DOC = ROOT / "docs" / "study-bigbench.md"
QUICK_BUNDLE = ROOT / "docs" / "results" / "study-quick"  # the pilot on the evals tasks
FULL_BUNDLE = ROOT / "docs" / "results" / "study-full"  # the full study on the evals tasks
BIGBENCH = ROOT / "docs" / "results" / "bigbench"  # the BIG-bench pilot and the unfinished full study on it


NUMBER = re.compile(r"[-+]?\d+(?:\.(\d+))?(?:e[-+]\d+)?")


def same_table(computed: str, shown: str) -> None:
    """The doc's table is the computed one to the last digit it prints (a bootstrap p-value to
    0.01): the same numbers on another CPU differ in float rounding (AVX2 and AVX-512 sum in other
    orders), which moves a replicate across a threshold now and then, never a verdict or a word."""
    assert len(computed.splitlines()) == len(shown.splitlines()), (computed, shown)
    header = computed.splitlines()[0].split("|")
    for ours, theirs in zip(computed.splitlines(), shown.splitlines(), strict=True):
        for column, (a, b) in enumerate(zip(ours.split("|"), theirs.split("|"), strict=True)):
            assert NUMBER.sub("#", a) == NUMBER.sub("#", b), (ours, theirs)
            for x, y in zip(NUMBER.finditer(a), NUMBER.finditer(b), strict=True):
                if header[column].strip() == "p (Holm)":
                    tolerance = 0.01
                elif y.group(1) is None and "e" not in y.group(0):
                    tolerance = 0.0  # a count (seeds, clients, examples)
                else:
                    exponent = int(y.group(0).split("e")[1]) if "e" in y.group(0) else 0
                    tolerance = 1.01 * 10.0 ** (exponent - len(y.group(1) or ""))
                assert abs(float(x.group(0)) - float(y.group(0))) <= tolerance, (header[column], ours, theirs)


def generated(name: str, doc: Path = DOC) -> str:
    match = re.search(rf"<!-- generated: {re.escape(name)} -->\n(.*?)\n<!-- end generated -->", doc.read_text(),
                      re.DOTALL)
    assert match, f"{doc.relative_to(ROOT)} has no generated block {name!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "study-quick"
    shutil.copytree(QUICK_BUNDLE, out)  # the report writes beside the bundle's files
    quick = ROOT / "configs" / "study" / "quick.yaml"
    assert main(["study", str(quick), f"output_dir={out}", "--report-only"]) == 0
    assert main(["study", str(quick), f"output_dir={out}", "--power-for", str(ROOT / "configs/study/full.yaml")]) == 0
    return out


def test_the_pilots_comparison_table_is_recomputed_from_its_bundle(quick):
    analysis = json.loads((quick / "study.json").read_text())
    same_table("\n".join(comparison_table(analysis["primary"]["comparisons"])),
               generated("comparisons docs/results/study-quick"))


def test_the_full_studys_power_table_is_recomputed_from_the_pilot(quick):
    table = [line for line in (quick / "power-study-full.md").read_text().splitlines() if line.startswith("|")]
    same_table("\n".join(table), generated("power study-full from docs/results/study-quick"))


def test_the_pilot_rerun_on_another_machine_is_recomputed_from_its_bundle(tmp_path):
    out = tmp_path / "study-quick-rerun"
    shutil.copytree(ROOT / "docs" / "results" / "study-quick-rerun", out)
    assert main(["study", str(ROOT / "configs" / "study" / "quick.yaml"), f"output_dir={out}", "--report-only"]) == 0
    analysis = json.loads((out / "study.json").read_text())
    same_table("\n".join(comparison_table(analysis["primary"]["comparisons"])),
               generated("comparisons docs/results/study-quick-rerun"))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "study-full"
    shutil.copytree(FULL_BUNDLE, out)
    study = out / "study.yaml"  # the file it ran, registered before its runs
    assert main(["study", str(study), f"output_dir={out}", "--report-only"]) == 0
    assert main(["study", str(study), f"output_dir={out}", "--power-for", str(ROOT / "configs/study/full.yaml")]) == 0
    return out


def test_the_full_studys_comparison_table_is_recomputed_from_its_bundle(full):
    analysis = json.loads((full / "study.json").read_text())
    assert analysis["jobs_finished"] == analysis["jobs_total"]  # final: verdicts, not interim
    same_table("\n".join(comparison_table(analysis["primary"]["comparisons"])),
               generated("comparisons docs/results/study-full"))


def test_what_a_next_study_needs_is_recomputed_from_the_full_studys_bundle(full):
    table = [line for line in (full / "power-study-full.md").read_text().splitlines() if line.startswith("|")]
    same_table("\n".join(table), generated("power study-full from docs/results/study-full"))


@pytest.fixture(scope="module")
def bigbench_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "study-quick"
    shutil.copytree(BIGBENCH / "study-quick", out)  # the report writes beside the bundle's files
    quick = BIGBENCH / "quick.yaml"
    assert main(["study", str(quick), f"output_dir={out}", "--report-only"]) == 0
    assert main(["study", str(quick), f"output_dir={out}", "--power-for", str(BIGBENCH / "full.yaml")]) == 0
    return out


def test_the_bigbench_pilots_comparison_table_is_recomputed_from_its_bundle(bigbench_quick):
    analysis = json.loads((bigbench_quick / "study.json").read_text())
    same_table("\n".join(comparison_table(analysis["primary"]["comparisons"])),
               generated("comparisons docs/results/bigbench/study-quick", BIGBENCH_DOC))


def test_the_bigbench_full_studys_power_table_is_recomputed_from_its_pilot(bigbench_quick):
    table = [line for line in (bigbench_quick / "power-study-full.md").read_text().splitlines() if line.startswith("|")]
    same_table("\n".join(table), generated("power study-full from docs/results/bigbench/study-quick", BIGBENCH_DOC))


def test_the_doc_counts_the_full_studys_finished_jobs_as_its_bundle_does():
    """docs/study.md says how many of the full study's jobs its committed bundle holds; the bundle,
    read with the study file it runs (kept beside it), finishes that many."""
    from rayfed.study.config import load_study
    from rayfed.study.runner import progress

    bundle = ROOT / "docs" / "results" / "study-full"
    said = re.search(r"(\d+) of (\d+) on \d{4}-\d\d-\d\d", DOC.read_text())
    assert said, "docs/study.md does not say how many of the full study's jobs are in its bundle"
    s = load_study(bundle / "study.yaml", [f"output_dir={bundle}"])
    assert progress(s, bundle) == (int(said.group(1)), int(said.group(2)))
