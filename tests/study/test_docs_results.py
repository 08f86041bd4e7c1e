"""The committed results bundles recompute the tables docs/study.md shows from them: every block
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
QUICK_BUNDLE = ROOT / "docs" / "results" / "study-quick"  # the pilot on the evals tasks
BIGBENCH = ROOT / "docs" / "results" / "bigbench"  # the BIG-bench pilot and the unfinished full study on it


def generated(name: str) -> str:
    match = re.search(rf"<!-- generated: {re.escape(name)} -->\n(.*?)\n<!-- end generated -->", DOC.read_text(),
                      re.DOTALL)
    assert match, f"docs/study.md has no generated block {name!r}"
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
    assert "\n".join(comparison_table(analysis["primary"]["comparisons"])) == generated(
        "comparisons docs/results/study-quick")


def test_the_full_studys_power_table_is_recomputed_from_the_pilot(quick):
    table = [line for line in (quick / "power-study-full.md").read_text().splitlines() if line.startswith("|")]
    assert "\n".join(table) == generated("power study-full from docs/results/study-quick")


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
    assert "\n".join(comparison_table(analysis["primary"]["comparisons"])) == generated(
        "comparisons docs/results/bigbench/study-quick")


def test_the_bigbench_full_studys_power_table_is_recomputed_from_its_pilot(bigbench_quick):
    table = [line for line in (bigbench_quick / "power-study-full.md").read_text().splitlines() if line.startswith("|")]
    assert "\n".join(table) == generated("power study-full from docs/results/bigbench/study-quick")
