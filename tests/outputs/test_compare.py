"""``rayfed compare``: prompts of runs and personalizations paired on the same clients and examples
(hand-made score files), and the crossed bootstrap it uses on global sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayfed.cli import main
from rayfed.core.bootstrap import bootstrap_crossed, paired_crossed
from rayfed.errors import UserError
from rayfed.outputs.compare import by_client, compare, load_source
from rayfed.outputs.scores import DITTO_SCORES, EXAMPLE_SCORES, save_example_scores

LOCAL = {0: [0.0, 1.0], 1: [1.0, 1.0, 0.0]}  # client -> its local_test scores (ids 0..n-1)
GLOBAL = [0.5, 0.0, 1.0, 0.5]  # the global prompt on the global test set, scored once


def rows(client, split, epoch, ratio, values):
    return [(client, split, epoch, ratio, i, 1.0 - v, float(v == 1.0), v) for i, v in enumerate(values)]


@pytest.fixture
def dirs(tmp_path):
    """A run (global prompt at rounds 0 and 2; Ditto's own prompts) and a personalization of it."""
    run = tmp_path / "run"
    run.mkdir()
    save_example_scores(run / EXAMPLE_SCORES, [
        *rows(-1, "global_test", 0, 1.0, [0.0] * 4), *rows(0, "local_test", 0, 1.0, [0.0, 0.0]),
        *rows(1, "local_test", 0, 1.0, [0.0] * 3),
        *rows(-1, "global_test", 2, 1.0, GLOBAL),
        *(r for c, v in LOCAL.items() for r in rows(c, "local_test", 2, 1.0, v))])
    save_example_scores(run / DITTO_SCORES, [
        *rows(0, "local_test", 2, 1.0, [1.0, 1.0]), *rows(1, "local_test", 2, 1.0, [1.0, 1.0, 1.0]),
        *rows(0, "global_test", 2, 1.0, [0.0] * 4), *rows(1, "global_test", 2, 1.0, [0.5] * 4)])
    pers = run / "personalize" / "ft"
    pers.mkdir(parents=True)
    (pers / "personalization.jsonl").write_text("")
    table = []
    for epoch, ratio, local, glob in ((0, 0.0, LOCAL, GLOBAL), (0, 1.0, LOCAL, GLOBAL),
                                      (3, 1.0, {0: [1.0, 1.0], 1: [1.0, 1.0, 1.0]}, [0.0] * 4),
                                      (3, 0.5, {0: [1.0, 0.0], 1: [1.0, 1.0, 1.0]}, [0.5, 0.0, 1.0, 0.0])):
        for c in (0, 1):
            table += rows(c, "local_test", epoch, ratio, local[c]) + rows(c, "global_test", epoch, ratio, glob)
    save_example_scores(pers / EXAMPLE_SCORES, table)
    (pers / "summary.json").write_text(json.dumps({
        "selected": {"epoch": 3, "interp_ratio": 0.5},
        "per_client": {"clients": {"0": {"epoch": 0, "interp_ratio": 0.0}, "1": {"epoch": 3, "interp_ratio": 1.0}}}}))
    return run, pers


def means(result):
    return [(round(r["local_test"][0], 6), round(r["global_test"][0], 6)) for r in result["rows"]]


def test_sources_pair_up_on_the_same_clients_and_examples(dirs):
    run, pers = dirs
    specs = [str(run), f"{run}@round=0", f"{run}@ditto", f"{pers}@3,1.0", f"{pers}@selected", f"{pers}@per_client",
             f"{pers}@0,1.0"]
    result = compare([load_source(s, "rouge_l") for s in specs])
    # local: the mean over clients of each client's mean; global: the global prompt's set is every client's
    assert means(result) == [
        (round((0.5 + 2 / 3) / 2, 6), 0.5),  # the run's last round
        (0.0, 0.0),  # round 0
        (1.0, 0.25),  # Ditto: client 0 at 0 on the global set, client 1 at 0.5
        (1.0, 0.0),
        (round((0.5 + 1.0) / 2, 6), 0.375),
        (round((0.5 + 1.0) / 2, 6), 0.25),  # client 0 keeps the global prompt, client 1 takes epoch 3
        (round((0.5 + 2 / 3) / 2, 6), 0.5),  # epoch 0 is the global prompt, at any ratio
    ]
    ditto = result["rows"][2]
    assert ditto["local_test_change"][0] == pytest.approx(1.0 - (0.5 + 2 / 3) / 2)
    assert ditto["local_test_change"][1] <= ditto["local_test_change"][0] <= ditto["local_test_change"][2]
    same = result["rows"][6]  # the global prompt again: its paired change is exactly zero on every draw
    assert same["local_test_change"] == [0.0, 0.0, 0.0] and same["global_test_change"] == [0.0, 0.0, 0.0]


def test_sources_that_cannot_pair_are_refused_naming_them(dirs, tmp_path):
    run, pers = dirs
    other = tmp_path / "other"
    other.mkdir()
    save_example_scores(other / EXAMPLE_SCORES, [*rows(-1, "global_test", 1, 1.0, GLOBAL),
                                                 *rows(0, "local_test", 1, 1.0, [1.0]),
                                                 *rows(1, "local_test", 1, 1.0, [1.0, 1.0, 1.0])])
    with pytest.raises(UserError, match=r"other: client 0's local_test examples are not the first source's"):
        compare([load_source(str(run), "rouge_l"), load_source(str(other), "rouge_l")])
    with pytest.raises(UserError, match="not a Ditto run"):
        load_source(f"{other}@ditto", "rouge_l")
    with pytest.raises(UserError, match="'@selected', '@per_client' or '@EPOCH,RATIO'"):
        load_source(f"{pers}@best", "rouge_l")
    with pytest.raises(UserError, match="client 0 has no scores at epoch 5"):
        load_source(f"{pers}@5,1.0", "rouge_l")
    with pytest.raises(UserError, match="no example_scores.safetensors"):
        load_source(str(tmp_path), "rouge_l")
    with pytest.raises(UserError, match="names no round"):
        load_source(f"{run}@round=last", "rouge_l")
    summary = json.loads((pers / "summary.json").read_text())
    (pers / "summary.json").write_text(json.dumps({**summary, "selected": None, "curve": [{"epoch": 3}]}))
    with pytest.raises(UserError, match=r"made no selection \(personalize.validation=false\).*@3,1.0"):
        load_source(str(pers), "rouge_l")


def test_the_command_prints_the_table_and_writes_json_without_torch(dirs, tmp_path, without_torch_or_ray):
    run, pers = dirs
    done = without_torch_or_ray("compare", str(run), f"{pers}@3,1.0", "--json", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "local_test change" in out and "(reference)" in out and "2 clients" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["metric"] == "rouge_l" and saved["rows"][1]["global_test_change"][0] == pytest.approx(-0.5)
    assert main(["compare", str(run), f"{pers}@best"]) == 2


def test_each_clients_change_stands_on_its_own_examples(dirs, tmp_path, without_torch_or_ray):
    """--by-client: which site a prompt helps and which it costs, each from that client's own examples."""
    run, pers = dirs
    result = by_client([load_source(s, "rouge_l") for s in (str(run), f"{pers}@3,0.5", f"{pers}@per_client")],
                       ("local_test", "global_test"))
    label, half, own = str(run), f"{pers}@3,0.5", f"{pers}@per_client"
    local, glob = result["local_test"], result["global_test"]
    assert local[0][label][0] == pytest.approx(0.5) and local[1][label][0] == pytest.approx(2 / 3)
    # client 0: [1, 0] against [0, 1]; client 1: [1, 1, 1] against [1, 1, 0]
    assert local[0][half][0] == pytest.approx(0.0) and local[1][half][0] == pytest.approx(1 / 3)
    assert local[0][own] == [0.0, 0.0, 0.0]  # client 0 kept the global prompt: no change on any draw
    assert glob[1][own][0] == pytest.approx(0.0 - 0.5)  # client 1 took epoch 3: 0 on the global set, against 0.5
    for row in (*local.values(), *glob.values()):
        assert all(low <= mean <= high for mean, low, high in row.values())
    done = without_torch_or_ray("compare", str(run), f"{pers}@per_client", "--by-client", "--json",
                                str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    assert "each client alone" in done.stdout and "-0.500 [" in done.stdout
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["by_client"]["global_test"]["1"][own][0] == pytest.approx(-0.5)


def test_paired_crossed_matches_the_one_point_bootstrap_and_pairs_its_points():
    rng = np.random.default_rng(3)
    a = rng.random((5, 7))
    b = a + rng.normal(0, 0.01, a.shape)
    reps = paired_crossed(np.stack([a, b]), draws=1000, seed=4)
    mean, low, high = bootstrap_crossed(a, draws=1000, seed=4)
    assert np.percentile(reps[:, 0], [2.5, 97.5]) == pytest.approx([low, high])
    assert reps[:, 0].mean() == pytest.approx(mean, abs=0.02)
    spread = np.percentile(reps[:, 1] - reps[:, 0], [2.5, 97.5])
    assert spread[1] - spread[0] < 0.1 * (high - low)  # paired: the shared difficulty cancels


def test_sources_computed_on_different_kinds_of_machine_are_named(dirs, tmp_path, without_torch_or_ray):
    """Each source's summary.json says where it computed; a comparison across kinds of machine says
    that part of a difference can be float rounding, which its intervals do not cover."""
    run, pers = dirs
    xeon = {"host": "a", "cpu": "Intel Xeon", "torch_cpu": "AVX512", "torch": "2.13.0", "device": "cpu"}
    epyc = {**xeon, "host": "b", "cpu": "AMD EPYC", "torch_cpu": "AVX2"}
    (run / "summary.json").write_text(json.dumps({"machines": {"driver": xeon, "workers": [xeon, xeon]}}))
    summary = json.loads((pers / "summary.json").read_text())
    (pers / "summary.json").write_text(json.dumps({**summary, "machines": {"driver": xeon, "workers": [xeon]}}))
    same = without_torch_or_ray("compare", str(run), f"{pers}@3,1.0")
    assert same.returncode == 0, same.stderr
    assert "kinds of machine" not in same.stdout  # hosts differ, kinds do not
    (pers / "summary.json").write_text(json.dumps({**summary, "machines": {"driver": xeon, "workers": [epyc]}}))
    done = without_torch_or_ray("compare", str(run), f"{pers}@3,1.0", "--json", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    assert f"computed on 2 kinds of machine ({run}: Intel Xeon (AVX512), torch 2.13.0; {pers}@3,1.0: AMD EPYC " \
           "(AVX2), torch 2.13.0)" in done.stdout
    assert "AMD EPYC" in json.loads((tmp_path / "c.json").read_text())["machines_note"]
