"""``rayfed study`` end to end at test size (configs/study/tiny.yaml): every output file, the
verdicts computed from the result files (edited results change them), continuing a stopped
study, and the claim measures on hand-computed values."""

import json
import os
import statistics
from pathlib import Path

import pytest

from rayfed.cli import main
from rayfed.outputs.scores import EXAMPLE_SCORES
from rayfed.study.claims import _part, claim4, hypervolume
from rayfed.study.config import load_study, personalize_jobs
from rayfed.study.layout import run_dir
from rayfed.study.runner import estimate_text

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "study" / "tiny.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["study", str(TINY), f"output_dir={out}"]) == 0
    return load_study(TINY, [f"output_dir={out}"]), out


def jobs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]


def test_every_output_file_is_written(study):
    s, out = study
    for name in ("study.yaml", "study.json", "results.md", "jobs.jsonl", "curves.png", "robustness.png",
                 "frontier.png", "verdicts.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    analysis = json.loads((out / "study.json").read_text())
    assert set(analysis["selected_lrs"]) == {"0.1", "10"}
    # 2 selection runs per level; per seed and level 3 runs + 4 main personalizations + 1 each for the others;
    # the first seed's selected fedavg_sgd runs are selection runs already.
    assert analysis["jobs_finished"] == analysis["jobs_total"] == 2 * 2 + 2 * 2 * (3 + 4 + 2) - 2
    assert len(jobs(out)) == analysis["jobs_total"]
    # Each job says which CPU and which torch kernels computed it (floats differ between CPUs).
    import torch

    assert {j["torch_cpu"] for j in jobs(out)} == {torch.backends.cpu.get_cpu_capability()}
    assert all(j["cpu"] for j in jobs(out))
    for conc in s.concentrations:
        lrs = analysis["selected_lrs"][f"{conc:g}"]
        assert analysis["seeds"][f"{conc:g}"] == s.seeds
        for label in s.algorithms:
            for seed in s.seeds:
                run = run_dir(out, label, conc, lrs[label], seed)
                assert (run / "summary.json").is_file() and (run / "global_prompt.safetensors").is_file()
                for name in personalize_jobs(s, label):
                    assert (run / "personalize" / name / "summary.json").is_file(), (run, name)
    # The selection run of the lr that lost is there too, for the first seed only.
    assert (out / "c0.1" / "fedavg_sgd").is_dir() and len(list((out / "c0.1" / "fedavg_sgd").glob("lr*"))) == 2
    for claim in analysis["claims"].values():
        assert claim["verdict"] in ("reproduced", "contradicted", "inconclusive")
        assert set(claim["by_concentration"]) == {"0.1", "10"}
    # Every pre-registered comparison at both levels, each with ROUGE-L and -loss intervals.
    rows = analysis["primary"]["comparisons"]
    assert len(rows) == analysis["primary"]["family_size"] == 2 * sum(len(c) for c in s.verdicts.claims.values())
    for r in rows:
        for metric in ("rouge_l", "loss"):
            assert r[metric]["low"] <= r[metric]["estimate"] <= r[metric]["high"], r
        assert r["rouge_l"]["verdict"] in ("reproduced", "contradicted", "inconclusive")
    assert "| claim | comparison | concentration | ROUGE-L [95%] |" in (out / "results.md").read_text()


def test_lr_is_selected_on_global_validation(study):
    s, out = study
    analysis = json.loads((out / "study.json").read_text())
    for conc in ("0.1", "10"):
        val = {lr: json.loads((out / f"c{conc}" / "fedavg_sgd" / f"lr{lr:g}" / "seed0" / "summary.json").read_text())
               ["final_val"]["rouge_l"] for lr in s.algorithms["fedavg_sgd"].lrs}
        choice = analysis["lr_choices"][conc]["fedavg_sgd"]
        assert choice["best"] == next(lr for lr, v in val.items() if v == max(val.values()))
        assert choice["default"] == 0.1  # the middle (lower) of the grid [0.1, 0.3]
        assert analysis["selected_lrs"][conc]["fedavg_sgd"] == choice["lr"]
        assert {lr: v["global_val"] for lr, v in analysis["lr_grid"][conc]["fedavg_sgd"].items()} == {
            f"{lr:g}": v for lr, v in val.items()}  # the report's lr table is the runs' own numbers


def test_a_better_mean_replaces_the_default_lr_only_when_it_is_reliably_better(study, tmp_path):
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from rayfed.study.layout import lr_choice

    s, out = study
    copy = tmp_path / "study"
    shutil.copytree(out / "c0.1" / "fedavg_sgd", copy / "c0.1" / "fedavg_sgd")
    better = copy / "c0.1" / "fedavg_sgd" / "lr0.3" / "seed0"
    summary = json.loads((better / "summary.json").read_text())
    summary["final_val"]["rouge_l"] = 0.9  # the best mean, but not on the per-example scores
    (better / "summary.json").write_text(json.dumps(summary))
    kept = lr_choice(s, copy, 0.1, "fedavg_sgd")
    assert (kept["best"], kept["lr"]) == (0.3, 0.1) and "the default is kept" in kept["reason"]
    for lr, value in ((0.3, 1.0), (0.1, 0.0)):  # now every global validation example agrees
        path = copy / "c0.1" / "fedavg_sgd" / f"lr{lr:g}" / "seed0" / EXAMPLE_SCORES
        with safe_open(str(path), framework="np") as f:
            meta, cols = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        cols["rouge_l"][cols["split"] == json.loads(meta["splits"]).index("global_val")] = value
        save_file(cols, str(path), metadata=meta)
    chosen = lr_choice(s, copy, 0.1, "fedavg_sgd")
    assert chosen["lr"] == 0.3 and chosen["difference"] == pytest.approx([1.0, 1.0, 1.0])
    assert "reliably better" in chosen["reason"]


def _rewrite_scores(path: Path, split: str, epoch: int, value: float) -> None:
    """Set every ROUGE-L of ``split`` at ``epoch`` in a per-example score file to ``value``."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="np") as f:
        meta, cols = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    at = (cols["split"] == json.loads(meta["splits"]).index(split)) & (cols["epoch"] == epoch)
    cols["rouge_l"][at] = value
    save_file(cols, str(path), metadata=meta)


def test_verdicts_are_computed_from_the_per_example_scores(study):
    """Rewrite claim 1's primary points (global test ROUGE-L at the last epoch of the two lr
    curves, concentration 0.1) so that the low lr keeps every example and the high lr none: the
    report alone (no job reruns) must find the difference +1 with a tight interval and claim 1
    reproduced; swapped, contradicted. Claim 1 at concentration 10 stays as it was."""
    s, out = study
    lrs = json.loads((out / "study.json").read_text())["selected_lrs"]["0.1"]
    before = len(jobs(out))
    for low_value, expected in ((1.0, "reproduced"), (0.0, "contradicted")):
        for seed in s.seeds:
            run = run_dir(out, "fedavg_adam", 0.1, lrs["fedavg_adam"], seed)
            _rewrite_scores(run / "personalize" / "lr=0.03" / EXAMPLE_SCORES, "global_test", 2, low_value)
            _rewrite_scores(run / "personalize" / "lr=0.3" / EXAMPLE_SCORES, "global_test", 2, 1.0 - low_value)
        assert main(["study", str(TINY), f"output_dir={out}", "--report-only"]) == 0
        analysis = json.loads((out / "study.json").read_text())
        (row,) = [r for r in analysis["primary"]["comparisons"] if r["claim"] == "1" and r["concentration"] == "0.1"]
        sign = 1 if expected == "reproduced" else -1
        assert row["rouge_l"]["estimate"] == pytest.approx(sign * 1.0)
        assert (row["rouge_l"]["low"], row["rouge_l"]["high"]) == pytest.approx((sign * 1.0, sign * 1.0))
        assert row["rouge_l"]["verdict"] == expected
        # claim 1 is decided by both levels; concentration 10 is untouched (all-zero tiny-model scores)
        assert analysis["claims"]["1"]["verdict"] == ("contradicted" if expected == "contradicted" else "inconclusive")
    assert len(jobs(out)) == before


def test_a_stopped_study_continues_with_only_the_missing_jobs(study, capsys):
    s, out = study
    lrs = json.loads((out / "study.json").read_text())["selected_lrs"]["10"]
    missing = run_dir(out, "fedsgd", 10.0, lrs["fedsgd"], 1) / "personalize" / "lr=0.3" / "summary.json"
    missing.unlink()
    before = len(jobs(out))
    assert main(["study", str(TINY), f"output_dir={out}"]) == 0
    new = jobs(out)[before:]
    assert [j["job"] for j in new] == ["c10/fedsgd/lr0.3/seed1/personalize/lr=0.3"]
    # The log numbers distinct jobs and estimates what is left from the recorded job times.
    assert "study: job 38/38: personalize c10/fedsgd/lr0.3/seed1/personalize/lr=0.3; about 0.0 h left" in (
        capsys.readouterr().out)
    assert missing.is_file()


def test_another_study_in_the_same_output_dir_is_refused_naming_what_differs(study, capsys):
    """A finished job is skipped only when it computed what this study would: another study's
    results in the same directory (another model, data or grid) are never counted as its own."""
    s, out = study
    before, jobs_before = (out / "study.yaml").read_text(), len(jobs(out))
    assert main(["study", str(TINY), f"output_dir={out}", "experiment.data.max_examples_per_task=20"]) == 2
    err = capsys.readouterr().err
    assert "data.max_examples_per_task: 24 here, 20 in the study" in err and "its own output_dir" in err, err
    personal = "personalize.local_epochs: 2 here, 3 in the study"
    assert main(["study", str(TINY), f"output_dir={out}", "personalize.epochs=3"]) == 2
    assert personal in capsys.readouterr().err
    assert (out / "study.yaml").read_text() == before and len(jobs(out)) == jobs_before  # nothing touched


def test_the_time_left_is_estimated_per_kind_of_job():
    recorded = [{"kind": "run", "seconds": 100}, {"kind": "resume", "seconds": 300},
                {"kind": "personalize", "seconds": 1000}]
    # 3 runs at (100 + 300) / 2 s and 2 personalizations at 1000 s: 2600 s; with 2 runs at once, half.
    assert estimate_text(recorded, {"run": 3, "personalize": 2}) == "; about 0.7 h left"
    assert estimate_text(recorded, {"run": 3, "personalize": 2}, parallel_runs=2) == "; about 0.4 h left"
    # A kind not recorded yet takes the median of all recorded jobs (here one run, 100 s); none recorded, none.
    assert estimate_text(recorded[:1], {"personalize": 36}) == "; about 1.0 h left"
    # A run that sat suspended for 10 hours moves the runs' median from 200 s to 300 s, not to 3.5 h.
    waited = [*recorded, {"kind": "run", "seconds": 36000}]
    assert estimate_text(waited, {"run": 3, "personalize": 2}) == "; about 0.8 h left"
    assert estimate_text([], {"run": 1}) == ""


def test_bad_study_keys_are_named(tmp_path):
    assert main(["study", str(TINY), "personalize.lrs=[0.01,0.1]"]) == 2
    assert main(["study", str(TINY), "personalize.main_algorithm=scaffold"]) == 2
    assert main(["study", str(TINY), "experiment.partition.num_clientz=3"]) == 2
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2
    assert main(["study", str(TINY), "parallel_runs=0"]) == 2


def test_hypervolume_and_secondary_parts_by_hand():
    assert hypervolume([(2, 1), (1, 2)], (0, 0)) == 3  # [0,2]x[0,1] and [0,1]x[0,2]
    assert hypervolume([(2, 1), (1, 2), (1, 1)], (0, 0)) == 3  # a dominated point adds nothing
    assert hypervolume([(1, 1)], (1, 1)) == 0
    part = _part("a", [0.1, 0.12, 0.11])
    assert part["mean"] == pytest.approx(0.11) and part["std"] == pytest.approx(statistics.stdev([0.1, 0.12, 0.11]))
    assert _part("d", [0.3])["std"] is None


def test_claim4_areas_by_hand_and_a_collapsed_point_only_moves_the_corner():
    s = load_study(TINY)  # lrs 0.3 and 0.03, few_epochs 1, l2 strengths [1], ratios [0.5]
    start = (0.2, 0.2)
    curves = {0.3: [(0, *start), (1, 0.3, 0.1)], 0.03: [(0, *start), (1, 0.25, 0.15)]}
    few = {"l2=0": {1: {1.0: (0.3, 0.1), 0.5: (0.25, 0.18)}}, "l2=1": {1: {1.0: (0.0, 0.0)}}}  # l2 collapsed
    parts, table = claim4(s, [{"curves": curves, "few": few}])
    # Corner (0, 0) from the collapsed point. plain: front (0.3,0.1),(0.25,0.15),(0.2,0.2) ->
    # 0.3*0.1 + 0.25*0.05 + 0.2*0.05 = 0.0525; l2: (0.3,0.1),(0.2,0.2) -> 0.03 + 0.02 = 0.05;
    # interpolation: (0.3,0.1),(0.25,0.18),(0.2,0.2) -> 0.03 + 0.25*0.08 + 0.2*0.02 = 0.054.
    area = table["hypervolume"]
    assert area["plain"]["mean"] == pytest.approx(0.0525)
    assert area["l2"]["mean"] == pytest.approx(0.05) and area["interpolation"]["mean"] == pytest.approx(0.054)
    assert [p["mean"] for p in parts] == pytest.approx([-0.0025, 0.0015])
    # Without the point the global prompt dominates, the corner is (0.2, 0.1): plain 0.05*0.05 = 0.0025,
    # l2 0 (its points sit on the corner's edges), interpolation 0.05*0.08 = 0.004. The verdict's parts
    # stay those of the first corner; this one is reported beside them.
    robust = table["hypervolume, corner without the points the global prompt dominates"]
    assert robust["plain"]["mean"] == pytest.approx(0.0025)
    assert robust["l2"]["mean"] == pytest.approx(0.0) and robust["interpolation"]["mean"] == pytest.approx(0.004)
    assert table["hypervolume, corner without the points the global prompt dominates: minus plain's"][
        "interpolation"]["mean"] == pytest.approx(0.0015)


def test_a_run_worse_than_its_untrained_prompt_is_named_in_the_report(study):
    s, out = study
    lrs = json.loads((out / "study.json").read_text())["selected_lrs"]["10"]
    metrics = run_dir(out, "fedsgd", 10.0, lrs["fedsgd"], 0) / "metrics.jsonl"
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    for event in events:
        if event.get("event") == "round" and event.get("round") == 0:
            event["eval/global_val/rouge_l"] = 0.5  # as if training had lost what the untrained prompt had
    metrics.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert main(["study", str(TINY), f"output_dir={out}", "--report-only"]) == 0
    notes = json.loads((out / "study.json").read_text())["not_trained"]
    assert len(notes) == 1 and notes[0].startswith("fedsgd at concentration 10, seed 0")
    assert notes[0] in (out / "results.md").read_text()


def test_with_wandb_on_the_study_is_one_run_with_its_verdicts_and_figures(study, monkeypatch, tmp_path):
    from tests.outputs.test_wandb_logger import RunLog

    s, out = study
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    try:
        assert main(["study", str(TINY), f"output_dir={out}", "--report-only", "experiment.logging.wandb.enabled=true",
                     "experiment.logging.wandb.mode=offline"]) == 0
    finally:
        import wandb

        wandb.teardown()  # the next test's W&B service re-reads the environment
    (run,) = sorted((out / "wandb").glob("offline-run-*"))
    log = RunLog(run)
    table = log.table("study/comparisons")
    analysis = json.loads((out / "study.json").read_text())
    assert len(table["data"]) == len(analysis["primary"]["comparisons"])
    assert {"study/curves", "study/robustness", "study/frontier"} <= {k for row in log.history for k in row}
    assert log.summary["study/claim1"] == analysis["claims"]["1"]["verdict"]


def test_claim3_reports_each_prompts_norm_and_how_far_personalization_moved_it(study):
    """How far training took each prompt (the scale a fixed personalization step is set against),
    and how far the robustness personalization then moved it: the report reads the local prompts
    from the run's cache; each personalization's own records, written as it ran, must agree."""
    from safetensors.torch import load_file

    s, out = study
    analysis = json.loads((out / "study.json").read_text())
    for conc in ("0.1", "10"):
        lrs = analysis["selected_lrs"][conc]
        table = analysis["claims"]["3"]["by_concentration"][conc]["table"]
        for label in s.algorithms:
            runs = [run_dir(out, label, float(conc), lrs[label], seed) for seed in s.seeds]
            norms = [load_file(str(run / "global_prompt.safetensors"))["global_prompt"].norm(dim=-1).mean().item()
                     for run in runs]
            assert table[label]["prompt row norm"]["mean"] == pytest.approx(statistics.fmean(norms), rel=1e-6)
            for key, column in (("prompt_shift", "row shift (last epoch)"),
                                ("prompt_shift_relative", "row shift / row norm")):
                per_seed = []
                for run in runs:
                    path = run / "personalize" / f"lr={s.personalize.robustness_lr:g}" / "personalization.jsonl"
                    train = [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == "train"]
                    last = max(r["epoch"] for r in train)
                    per_seed.append(statistics.fmean(r[key] for r in train if r["epoch"] == last))
                assert min(per_seed) > 0
                assert table[label][column]["mean"] == pytest.approx(statistics.fmean(per_seed), rel=1e-6)
    assert "prompt row norm" in (out / "results.md").read_text()
    assert "row shift / row norm" in (out / "results.md").read_text()


@pytest.mark.ray
def test_parallel_runs_are_ray_tasks_with_the_same_numbers(ray_session, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)  # a relative output_dir: the Ray tasks run in another directory
    par, seq = Path("parallel"), tmp_path / "sequential"
    # A run that cannot fit the cluster fails before anything runs, naming the key.
    assert main(["study", str(TINY), f"output_dir={par}", "parallel_runs=2", "cpus_per_run=3"]) == 2
    assert "cpus_per_run" in capsys.readouterr().err and not (par / "jobs.jsonl").exists()
    # Seed 0 at concentration 10: 2 selection runs (fedavg_sgd), then the chains of fedavg_sgd (its
    # run is done: 1 personalization), fedavg_adam (run + 4) and fedsgd (run + 1), 2 at a time.
    # Each run's driver and worker actor live in its placement group (2 x (0.5 + 0.1 + 0.25) of the 2 CPUs:
    # an actor left outside would not fit, and the run would stop).
    small = ["seeds=[0]", "concentrations=[10.0]"]
    node = ray_session.get_runtime_context().get_node_id()  # every bundle on the node a label selector admits
    actors = ["experiment.runtime.executor=ray", "experiment.runtime.num_workers=1", "cpus_per_run=0.5",
              f"experiment.runtime.label_selector={{ray.io/node-id: {node}}}"]
    assert main(["study", str(TINY), f"output_dir={par}", *small, *actors, "parallel_runs=2"]) == 0
    recorded = jobs(par)
    assert len(recorded) == len({j["job"] for j in recorded}) == 10
    pids = {j["job"]: j["pid"] for j in recorded}
    assert os.getpid() not in pids.values()  # every job ran in a Ray task, not in this process
    adam = [pid for job, pid in pids.items() if job.startswith("c10/fedavg_adam/")]
    assert len(adam) == 5 and len(set(adam)) == 1  # a chain's jobs run in one task, in order
    # The same study one run after another, here, every client in this process with one torch thread
    # (runtime.torch_threads, as in a worker actor).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["study", str(TINY), f"output_dir={seq}", *small]) == 0
    finally:
        torch.set_num_threads(threads)
    summaries = sorted(par.rglob("summary.json"))
    assert len(summaries) == 10
    for path in summaries:
        mine, theirs = (json.loads(p.read_text()) for p in (path, seq / path.relative_to(par)))
        mine.pop("seconds"), theirs.pop("seconds")
        assert mine == theirs, path


def test_rayfed_plot_on_a_study_needs_neither_torch_nor_ray(study, plot_without_torch_or_ray):
    _, out = study
    assert sorted(Path(p).name for p in plot_without_torch_or_ray(out)) == ["curves.png", "frontier.png",
                                                                          "robustness.png", "verdicts.png"]


def test_frontier_gap_by_hand():
    import numpy as np

    from rayfed.study.primary import frontier_gap

    lb, gb = np.array([0.0, 1.0, 0.4]), np.array([1.0, 0.0, 0.2])
    # b's points are all Pareto points; the frontier runs (0,1) -> (0.4,0.2) -> (1,0) by straight segments
    assert frontier_gap(np.array([0.4]), np.array([0.5]), lb, gb) == pytest.approx(0.3)
    assert frontier_gap(np.array([0.2]), np.array([0.6]), lb, gb) == pytest.approx(0.0)  # on the first segment
    # beyond b's reach the frontier is held flat: compared with b's nearest end
    assert frontier_gap(np.array([2.0, -1.0]), np.array([0.1, 0.5]), lb, gb) == pytest.approx((0.1 + -0.5) / 2)
    # a dominated reference point ((0.4, 0.3), below (0.5, 0.5)) does not lower the frontier
    lb, gb = np.array([0.0, 1.0, 0.5, 0.4]), np.array([1.0, 0.0, 0.5, 0.3])
    assert frontier_gap(np.array([0.4]), np.array([0.6]), lb, gb) == pytest.approx(0.0)


def test_primary_comparisons_that_name_unscored_points_are_refused(tmp_path):
    from omegaconf import OmegaConf

    for bad, key in (({"jobs": ["lr=9"], "epochs": [1]}, "verdicts.claims.1[0].a"),
                     ({"jobs": ["lr=0.3"], "epochs": [5]}, "verdicts.claims.1[0].a"),
                     ({"jobs": ["few,l2=0"], "epochs": [1], "ratios": [0.7]}, "verdicts.claims.1[0].a")):
        cfg = OmegaConf.load(TINY)
        cfg.verdicts.claims["1"][0].a = bad
        path = tmp_path / "bad.yaml"
        OmegaConf.save(cfg, path)
        with pytest.raises(Exception, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_study(path)
    assert main(["validate", str(TINY)]) == 0  # a study file validates as one


def test_a_finished_study_is_a_pilot_for_another_ones_power(study, capsys):
    s, out = study
    quick = ROOT / "configs" / "study" / "quick.yaml"
    assert main(["study", str(TINY), f"output_dir={out}", "--power-for", str(quick)]) == 0
    report = json.loads((out / "power-study-quick.json").read_text())
    assert len(report["rows"]) == 2 * sum(len(c) for c in s.verdicts.claims.values())
    assert report["family_size"] == 2 * sum(len(c) for c in load_study(quick).verdicts.claims.values())
    row = report["rows"][0]
    assert row["target_design"] == {"seeds": 1, "clients": 4, "examples": 16}  # quick: 1 seed, 4 clients, 16 global
    assert row["components"]["pilot_seeds"] == 2 and not row["seed_component_assumed"]
    assert "| claim | comparison | concentration |" in capsys.readouterr().out


def test_a_results_bundle_recomputes_the_report(study, tmp_path):
    """The numbers-only bundle (no checkpoints, no local-prompt caches) gives the same analysis."""
    s, out = study
    bundle = tmp_path / "bundle"
    assert main(["study", str(TINY), f"output_dir={out}", "--bundle", str(bundle)]) == 0
    assert not list(bundle.rglob("checkpoint.safetensors")) and not list(bundle.rglob("prompt_cache"))
    assert main(["study", str(TINY), f"output_dir={out}", "--report-only"]) == 0
    assert main(["study", str(TINY), f"output_dir={bundle}", "--report-only"]) == 0
    original, recomputed = (json.loads((d / "study.json").read_text()) for d in (out, bundle))
    for key in ("primary", "claims", "selected_lrs", "seeds", "lr_grid"):
        assert recomputed[key] == original[key], key
    assert (bundle / "results.md").read_text() == (out / "results.md").read_text()


def test_a_study_moved_by_its_bundle_continues_on_the_next_machine_to_the_same_results(study, tmp_path):
    """A bundle made before the study finished (here: a seed-1 run with its personalizations, and
    one personalization of a seed-0 run, not yet done) is copied to a new machine as the study's
    output_dir: rerunning runs only the missing jobs, from the bundle's prompts (no checkpoints,
    no prompt caches), and the report equals the one from the whole bundle. (The jobs left out are
    ones no other test of this module edits.)"""
    import shutil

    s, out = study
    whole, bundle = tmp_path / "whole", tmp_path / "moved"
    assert main(["study", str(TINY), f"output_dir={out}", "--bundle", str(whole)]) == 0
    shutil.copytree(whole, bundle)
    assert main(["study", str(TINY), f"output_dir={whole}", "--report-only"]) == 0
    lrs = json.loads((out / "study.json").read_text())["selected_lrs"]
    unfinished_run = run_dir(bundle, "fedavg_sgd", 10.0, lrs["10"]["fedavg_sgd"], 1)
    shutil.rmtree(unfinished_run)
    seed0 = run_dir(bundle, "fedavg_sgd", 0.1, lrs["0.1"]["fedavg_sgd"], 0)
    name = next(iter(personalize_jobs(s, "fedavg_sgd")))
    (seed0 / "personalize" / name / "summary.json").unlink()  # as a personalization cut off mid-way
    # Until it is finished, the study's report gives intervals and no verdict.
    assert main(["study", str(TINY), f"output_dir={bundle}", "--report-only"]) == 0
    interim = json.loads((bundle / "study.json").read_text())
    assert interim["jobs_finished"] < interim["jobs_total"]
    assert {c["verdict"] for c in interim["claims"].values()} == {"interim"}
    rows = [r for r in interim["primary"]["comparisons"] if r["primary"]]
    assert rows and all(r["rouge_l"]["verdict"] == "interim" and r["rouge_l"]["low"] <= r["rouge_l"]["high"]
                        for r in rows)
    assert "**Interim: no verdict until every job is in.**" in (bundle / "results.md").read_text()
    before = len(jobs(bundle))
    assert main(["study", str(TINY), f"output_dir={bundle}"]) == 0
    rerun = sorted(j["job"] for j in jobs(bundle)[before:])
    expected = [unfinished_run, *(unfinished_run / "personalize" / n for n in personalize_jobs(s, "fedavg_sgd")),
                seed0 / "personalize" / name]
    assert rerun == sorted(str(path.relative_to(bundle)) for path in expected)
    for path in expected:  # every rerun job's per-example scores, bit for bit
        assert (path / EXAMPLE_SCORES).read_bytes() == (whole / path.relative_to(bundle) / EXAMPLE_SCORES).read_bytes()
    original, continued = (json.loads((d / "study.json").read_text()) for d in (whole, bundle))
    for key in ("primary", "claims", "selected_lrs", "seeds", "lr_grid"):
        assert continued[key] == original[key], key


def test_power_needs_a_finished_pilot(tmp_path, capsys):
    quick = ROOT / "configs" / "study" / "quick.yaml"
    assert main(["study", str(TINY), f"output_dir={tmp_path}", "--power-for", str(quick)]) == 2
    assert "holds no finished seed of the pilot study 'study-tiny'" in capsys.readouterr().err


BASELINES = ROOT / "configs" / "study" / "tiny-baselines.yaml"


def test_a_post_hoc_study_adds_fedprox_and_ditto_beside_fine_tuning_on_the_same_examples(study, tmp_path):
    """tiny-baselines.yaml extends tiny.yaml with a FedProx and a Ditto arm: run into a copy of the
    finished study it adds only their jobs, and its shown comparisons (never voted) put Ditto's own
    prompts beside FedAvg(Adam) fine-tuned on the same clients and examples, as computed by hand
    from the score files."""
    import shutil

    import numpy as np

    from rayfed.outputs.scores import DITTO_SCORES, EXAMPLE_SCORES, load_example_scores

    s, out = study
    post = tmp_path / "baselines"
    shutil.copytree(out, post)
    before = len(jobs(post))
    assert main(["study", str(BASELINES), f"output_dir={post}"]) == 0
    added = [j["job"] for j in jobs(post)[before:]]
    assert sorted({j.split("/")[1] for j in added}) == ["ditto", "fedprox"]
    assert len(added) == 2 * 2 * 2 * 2  # per arm, level and seed: the run and its robustness personalization
    analysis = json.loads((post / "study.json").read_text())
    original = json.loads((out / "study.json").read_text())
    assert analysis["primary"]["comparisons"] == original["primary"]["comparisons"]  # the claims are untouched
    rows = analysis["comparisons"]
    assert [(r["name"], r["concentration"]) for r in rows] == [
        (c.name, f"{conc:g}") for c in load_study(BASELINES).comparisons for conc in s.concentrations]
    for r in rows:
        for metric in ("rouge_l", "loss"):
            assert r[metric]["low"] <= r[metric]["estimate"] <= r[metric]["high"], r
        assert "verdict" not in r["rouge_l"] and not r["primary"]
    assert "Other comparisons (`comparisons:`" in (post / "results.md").read_text()

    # By hand: Ditto's own prompts (round 2) minus FedAvg(Adam) fine-tuned (lr 0.3, epoch 2), global
    # test loss, on the examples each client's personalization was scored on; mean over examples,
    # then clients, then seeds.
    lrs = analysis["selected_lrs"]["10"]
    per_seed = []
    for seed in s.seeds:
        ditto = load_example_scores(run_dir(post, "ditto", 10.0, lrs["ditto"], seed) / DITTO_SCORES)
        fine = load_example_scores(run_dir(post, "fedavg_adam", 10.0, lrs["fedavg_adam"], seed) / "personalize"
                                   / "lr=0.3" / EXAMPLE_SCORES)

        def table(cols, epoch):
            at = (cols["split"] == "global_test") & (cols["epoch"] == epoch) & np.isclose(cols["interp_ratio"], 1.0)
            return {(int(c), int(e)): float(v) for c, e, v in
                    zip(cols["client_id"][at], cols["example_id"][at], cols["loss"][at], strict=True)}

        own, tuned = table(ditto, 2), table(fine, 2)
        assert set(tuned) == set(own)  # eval.ditto_global_examples: the personalizations' examples
        clients = sorted({c for c, _ in tuned})
        per_seed.append(np.mean([np.mean([tuned[k] - own[k] for k in tuned if k[0] == c]) for c in clients]))
    row = rows[3]  # the second comparison (Ditto, global test) at the second level
    assert row["concentration"] == "10" and row["name"].startswith("Ditto")
    assert row["loss"]["estimate"] == pytest.approx(float(np.mean(per_seed)))  # -loss: own minus tuned


def test_extends_and_ditto_points_are_checked_naming_the_key(tmp_path):
    from omegaconf import OmegaConf

    missing = tmp_path / "missing.yaml"
    missing.write_text("extends: nowhere.yaml\nname: x\n")
    with pytest.raises(Exception, match=r"key 'extends': no study file"):
        load_study(missing)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\nname: x\n")
    with pytest.raises(Exception, match=r"key 'extends': loop.yaml extends back"):
        load_study(loop)
    for algorithm, pts, match in (
            ("fedavg_adam", {"jobs": ["@ditto"], "epochs": [2]}, "reads a Ditto run's own prompts"),
            ("ditto", {"jobs": ["@ditto"], "epochs": [1]}, "epochs are the rounds its run evaluates"),
            ("ditto", {"jobs": ["@ditto"], "epochs": [2], "ratios": [0.5]}, "its ratio 1.0")):
        cfg = OmegaConf.load(BASELINES)
        cfg.comparisons[0].a = {**pts, "algorithm": algorithm}
        path = tmp_path / "bad.yaml"
        OmegaConf.save(cfg, path)
        (tmp_path / "tiny.yaml").write_text((ROOT / "configs" / "study" / "tiny.yaml").read_text())  # its base
        with pytest.raises(Exception, match=r"comparisons\[0\]\.a.*" + match):
            load_study(path)


def test_points_scored_on_more_examples_are_compared_on_the_shared_ones():
    """A Ditto prompt scored on a whole global set beside a personalization scored on each client's
    share of it: the comparison reads the share; a point missing any of it is refused."""
    from rayfed.errors import UserError
    from rayfed.study.primary import _aligned

    share = {(0, 1): 0.5, (0, 3): 1.0, (1, 2): 0.0}
    whole = {**share, (0, 2): 9.0, (1, 1): 9.0}
    values, sizes = _aligned([whole, share], "here")
    assert sizes == [2, 1] and values[0].tolist() == values[1].tolist() == [[0.5, 1.0], [0.0, 0.0]]
    with pytest.raises(UserError, match="not scored on the same examples"):
        _aligned([whole, {**share, (2, 7): 1.0}], "here")


def test_a_study_that_ran_on_several_cpus_says_how_much_ran_on_each(study, tmp_path):
    """A study moved between machines mixes CPUs whose float rounding differs: the report counts
    each CPU's jobs and hours from jobs.jsonl (lines written before CPUs were recorded say so)."""
    s, out = study
    moved = tmp_path / "moved"
    assert main(["study", str(TINY), f"output_dir={out}", "--bundle", str(moved)]) == 0
    lines = jobs(moved)
    for job in lines[:3]:
        job.pop("cpu"), job.pop("torch_cpu")
    for job in lines[3:5]:
        job.update(cpu="AMD EPYC", torch_cpu="AVX2", seconds=1800.0)
    (moved / "jobs.jsonl").write_text("".join(json.dumps(job) + "\n" for job in lines))
    assert main(["study", str(TINY), f"output_dir={moved}", "--report-only"]) == 0
    machines = json.loads((moved / "study.json").read_text())["machines"]
    assert machines["not recorded"]["jobs"] == 3
    assert machines["AMD EPYC (AVX2)"] == {"jobs": 2, "seconds": 3600.0}
    assert sum(m["jobs"] for m in machines.values()) == len(lines)
    report = (moved / "results.md").read_text()
    assert "| AMD EPYC (AVX2) | 2 | 1.00 |" in report and "| not recorded | 3 |" in report
    # One kind of CPU: no table.
    assert "| CPU | jobs | hours |" not in (out / "results.md").read_text()
