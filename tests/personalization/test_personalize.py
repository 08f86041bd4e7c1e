"""Personalization as a phase of its own: curves per epoch, ratio and split, from a finished run."""

import json
from pathlib import Path

import pytest
import torch

from rayfed.cli import main
from rayfed.config import ConfigError
from rayfed.experiment import run_experiment
from rayfed.names import SPLITS
from rayfed.outputs.checkpoint import load_prompt
from rayfed.personalization.cache import load_local_prompts
from rayfed.personalization.phase import personalization_driver, run_personalization

WITH_VAL = ["runtime.executor=local", "partition.val_examples=4", "partition.global_val_examples=8"]
ADAM = ["personalize.local_epochs=3", "personalize.optimizer.name=adam", "personalize.optimizer.lr=0.05"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_overrides):
    """A finished tiny run with validation splits (trained once for the whole module)."""
    from rayfed.config import load_config

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [*tiny_overrides, *WITH_VAL, f"output_dir={out}"])
    return out, run_experiment(cfg, loggers=[])


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "personalization.jsonl").read_text().splitlines()]


def test_curves_have_a_record_per_client_epoch_ratio_and_split(finished_run, tmp_path):
    run_dir, run_summary = finished_run
    summary = run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[0,0.5,1]"], loggers=[],
                                  prompt_cache=tmp_path)
    out = run_dir / "personalize" / summary["name"]
    records = records_of(out)
    scored = {(r["client_id"], r["epoch"], r["interp_ratio"], r["split"]) for r in records if r["split"] != "train"}
    assert scored == {(c, e, a, s) for c in range(4) for e in range(4) for a in (0, 0.5, 1) for s in SPLITS}
    assert {(r["client_id"], r["epoch"]) for r in records if r["split"] == "train"} == {
        (c, e) for c in range(4) for e in (1, 2, 3)}
    assert len(summary["curve"]) == 4 * 3 and summary["selected"] is not None

    # Ratio 0 is the global prompt: at every epoch, exactly the finished run's final scores.
    for r in records:
        if r["interp_ratio"] == 0 and r["split"] == "local_test":
            assert r["loss"] == run_summary["clients"][str(r["client_id"])]["eval/local_test/loss"]
        if r["interp_ratio"] == 0 and r["split"] == "global_test":
            assert r["loss"] == pytest.approx(run_summary["final"]["loss"], rel=1e-6)

    # Ratio 1 is the personalized prompt: rescoring the saved local prompt gives the same numbers.
    from rayfed.config import load_config
    from rayfed.data.partition import global_sets_of
    from rayfed.data.sources import federated_data
    from rayfed.runtime.parts import RunParts
    from rayfed.runtime.worker import ClientWorker
    from rayfed.settings import EvalSettings

    cfg = load_config(run_dir / "config.yaml")
    data = federated_data(cfg)
    parts = RunParts.from_config(cfg)
    worker = ClientWorker(parts.model, parts.worker, parts.algorithm, list(data.clients), global_sets_of(data))
    (cache,) = tmp_path.glob("*.safetensors")
    local = load_local_prompts(cache)[2][0][3]
    rescored = worker.evaluate_client(2, {"p": local}, ("local_test",), EvalSettings.from_config(cfg.eval))["p"][
        "local_test"]
    (record,) = [r for r in records if (r["client_id"], r["epoch"], r["interp_ratio"], r["split"]) ==
                 (2, 3, 1, "local_test")]
    assert record["loss"] == pytest.approx(rescored.means()["loss"], rel=1e-6)
    # ... and personalizing fits each client's own training data better epoch after epoch.
    train = {(r["client_id"], r["epoch"]): r["loss"] for r in records if r["split"] == "train"}
    assert all(train[c, 3] < train[c, 1] for c in range(4))
    # How far the prompt moved: the mean distance of its rows from the global prompt's.
    global_prompt = load_prompt(run_dir / "global_prompt.safetensors")[0]
    (record,) = [r for r in records if (r["client_id"], r["epoch"], r["split"]) == (2, 3, "train")]
    shift = (local - global_prompt).norm(dim=-1).mean().item()
    assert record["prompt_shift"] == pytest.approx(shift, rel=1e-5) and shift > 0
    assert record["prompt_shift_relative"] == pytest.approx(shift / global_prompt.norm(dim=-1).mean().item(),
                                                            rel=1e-5)


def test_trials_that_differ_only_in_the_ratio_share_the_local_prompts(finished_run, tmp_path):
    run_dir, _ = finished_run
    first = run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[1]"], loggers=[], prompt_cache=tmp_path)
    second = run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[0.5,1]"], loggers=[],
                                 prompt_cache=tmp_path)
    assert not first["local_prompts_reused"] and second["local_prompts_reused"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    row = {r["epoch"]: r for r in first["curve"]}
    # The same prompts; scored beside the ratio-0.5 prompts their passes are shared, so the
    # numbers agree to rounding.
    assert all(row[r["epoch"]]["local_val/loss_mean"] == pytest.approx(r["local_val/loss_mean"], rel=1e-6)
               for r in second["curve"] if r["interp_ratio"] == 1)


def test_a_very_large_l2_strength_keeps_the_prompt_at_the_global_one(finished_run, tmp_path):
    run_dir, _ = finished_run
    global_prompt = load_prompt(run_dir / "global_prompt.safetensors")[0]
    distance, curves, shifts = {}, {}, {}
    # With lr x strength = 1 each SGD step lands at global - lr x gradient: as the strength grows
    # (and the lr shrinks with it) the personalized prompt cannot leave the global one.
    for strength, lr in ((0.0, 0.1), (1e6, 1e-6)):
        overrides = ["personalize.local_epochs=2", f"personalize.optimizer.lr={lr}", "personalize.interp_ratios=[0,1]",
                     f"personalize.l2_strength={strength}", f"personalize.name=l2_{strength:g}"]
        summary = run_personalization(run_dir, overrides, loggers=[], prompt_cache=tmp_path / str(strength))
        (cache,) = (tmp_path / str(strength)).glob("*.safetensors")
        distance[strength] = max(float((p[0][2] - global_prompt).norm()) for p in load_local_prompts(cache).values())
        curves[strength] = {r["interp_ratio"]: r for r in summary["curve"] if r["epoch"] == 2}
        shifts[strength] = max(r["prompt_shift"] for r in records_of(run_dir / "personalize" / summary["name"])
                               if r["split"] == "train")
    assert distance[1e6] < 1e-4 * distance[0.0]
    assert shifts[1e6] < 1e-4 * shifts[0.0]
    pulled = curves[1e6]
    assert pulled[1]["local_test/loss_mean"] == pytest.approx(pulled[0]["local_test/loss_mean"], rel=1e-4)
    assert pulled[1]["global_test/loss_mean"] == pytest.approx(pulled[0]["global_test/loss_mean"], rel=1e-4)


def test_selection_reads_validation_and_never_test(finished_run):
    from rayfed.core.selection import select_best

    reference = {"local_val/rouge_l_mean": 0.2, "global_val/rouge_l_mean": 0.3}
    rows = [{"local_val/rouge_l_mean": 0.25, "global_val/rouge_l_mean": 0.295, "local_test/rouge_l_mean": 0.1},
            {"local_val/rouge_l_mean": 0.40, "global_val/rouge_l_mean": 0.20, "local_test/rouge_l_mean": 0.9},
            {"local_val/rouge_l_mean": 0.24, "global_val/rouge_l_mean": 0.31, "local_test/rouge_l_mean": 0.8}]
    # The second row has the best local scores but loses too much global; the best test score
    # (third row) plays no part: the first row wins on validation within the 0.01 tolerance.
    assert select_best(rows, reference, 0.01)["local_test/rouge_l_mean"] == 0.1
    assert select_best(rows, reference, 0.2)["local_test/rouge_l_mean"] == 0.9


def test_personalize_cli_writes_under_the_run_and_refuses_to_change_what_was_trained(finished_run, capsys):
    run_dir, _ = finished_run
    assert main(["personalize", str(run_dir), "personalize.local_epochs=1", "personalize.interp_ratios=[0.5,1]",
                 "runtime.executor=local"]) == 0
    out = run_dir / "personalize" / "local_epochs=1,interp_ratios=_0.5,1_"  # a safe directory name
    assert {"summary.json", "personalization.jsonl", "config.yaml", "curves.png"} <= {p.name for p in out.iterdir()}
    assert "selected on validation" in capsys.readouterr().out
    assert main(["personalize", str(run_dir), "model.num_virtual_tokens=9"]) == 2
    assert "key 'model.num_virtual_tokens'" in capsys.readouterr().err
    assert main(["personalize", str(run_dir / "nope")]) == 2
    assert "is not a finished rayfed run: config.yaml is missing" in capsys.readouterr().err


def test_personalize_on_the_loss_chooses_and_reports_by_the_loss(finished_run, capsys):
    """``personalize.metric=loss``: both rules read the loss (a fall beyond the noise), the console
    table and the per-client policies show it, and the local prompts trained for ROUGE-L's rule are
    reused (the metric only chooses among the scored settings)."""
    run_dir, _ = finished_run
    common = ["personalize.local_epochs=2", "personalize.optimizer.name=adam", "personalize.optimizer.lr=0.05",
              "personalize.interp_ratios=[1.0]", "runtime.executor=local", "personalize.selection=per_client",
              "personalize.global_tolerance=0.5"]
    assert main(["personalize", str(run_dir), *common, "personalize.name=by_rouge"]) == 0
    assert main(["personalize", str(run_dir), *common, "personalize.metric=loss", "personalize.name=by_loss"]) == 0
    printed = capsys.readouterr().out
    assert "personalization 'by_loss' (loss, mean over clients)" in printed
    summary = json.loads((run_dir / "personalize" / "by_loss" / "summary.json").read_text())
    assert summary["local_prompts_reused"] and summary["settings"]["metric"] == "loss"
    # Only the rule differs: the scores are by_rouge's, read back instead of scored again.
    by_rouge = json.loads((run_dir / "personalize" / "by_rouge" / "summary.json").read_text())
    assert summary["scores_from"] == "by_rouge" and "scores_from" not in by_rouge
    assert summary["curve"] == by_rouge["curve"] and summary["reference"] == by_rouge["reference"]
    for name in ("personalization.jsonl",):
        assert (run_dir / "personalize" / "by_loss" / name).read_text() == (
            run_dir / "personalize" / "by_rouge" / name).read_text()
    assert "every score read from" in printed
    # Scored another way (generations cut at 3 tokens): scored again.
    assert main(["personalize", str(run_dir), *common, "personalize.metric=loss", "eval.max_new_tokens=3",
                 "personalize.name=by_loss_short"]) == 0
    assert "scores_from" not in json.loads((run_dir / "personalize" / "by_loss_short" / "summary.json").read_text())
    assert "local_val/loss_change_high < 0" in summary["selected"]["rule"]
    assert "global_val loss change never rises above 0.5" in summary["per_client"]["rule"]
    assert set(summary["per_client"]["policies"]["per_client"]) == {"local_test/loss_mean", "local_test/loss_change",
                                                                    "global_test/loss_mean", "global_test/loss_change"}
    # 4 validation examples per client cannot tell the tiny model's small loss changes from noise
    # (hand-made rows test the choice itself): the reason speaks of the loss.
    if summary["selected"]["kept_global_prompt"]:
        assert "no setting's local loss falls reliably" in summary["selected"]["reason"]


def test_an_unfinished_run_is_refused(finished_run, tmp_path):
    import shutil

    from rayfed.outputs.checkpoint import save_prompt

    run_dir, _ = finished_run
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("personalize"))
    save_prompt(partial / "global_prompt.safetensors", torch.zeros(4, 64), {"round": "1"})
    with pytest.raises(ConfigError, match="stopped at round 1 of 2"):
        run_personalization(partial, [], loggers=[])


def test_by_epoch_training_ends_where_one_shot_training_does(tiny_config):
    from rayfed.config import OptimizerConfig
    from rayfed.data.formatting import tokenize
    from rayfed.data.sources import federated_data
    from rayfed.local.training import train_prompt, train_prompt_by_epoch
    from rayfed.model.prompt_model import build_prompt_model

    cfg = tiny_config()
    model = build_prompt_model(cfg.model)
    data = tokenize(federated_data(cfg).clients[0].train, model.tokenizer, 64, 16)
    start = model.get_prompt()
    opt = OptimizerConfig("adam", 0.05)
    by_epoch, losses = train_prompt_by_epoch(model, data, start, optimizer=opt, epochs=3, keep_epochs=[0, 2, 3],
                                             batch_size=6, seed=7, l2_strength=0.5)
    one_shot, _ = train_prompt(model, data, start, optimizer=opt, num_steps=3 * 3, batch_size=6, seed=7,
                               l2_reference=start, l2_strength=0.5)
    assert sorted(by_epoch) == [0, 2, 3] and sorted(losses) == [1, 2, 3]
    assert torch.equal(by_epoch[0], start) and torch.equal(by_epoch[3], one_shot)


def test_personalization_reports_progress_with_an_estimate_on_the_console(finished_run):
    import io

    from rayfed.outputs.loggers import ConsoleLogger

    run_dir, _ = finished_run
    stream = io.StringIO()
    run_personalization(run_dir, [*ADAM, "personalize.name=progress"], loggers=[ConsoleLogger(3, stream)])
    lines = stream.getvalue().splitlines()
    status = [line for line in lines if line.startswith("personalize: ")]
    assert "fine-tune the global prompt for 3 epoch(s)" in status[0]
    assert "trained in" in status[1] and "the global prompt scored in" in status[2]
    assert [line.split(";")[0] for line in status[3:]] == [f"personalize: epoch {e}/3 scored" for e in (1, 2, 3)]
    assert status[-1].endswith("about 0.0 min left")
    assert not [line for line in (run_dir / "personalize" / "progress").glob("*.jsonl")
                if "status" in line.read_text()]  # progress lines stay on the console


def test_without_validation_only_test_splits_are_scored_with_the_same_numbers(finished_run, tmp_path):
    """personalize.validation=false (what the study uses): half the scoring, the test scores
    unchanged, and no selection (nothing to select on)."""
    run_dir, _ = finished_run
    both = run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[0.5,1]", "personalize.name=both"],
                               loggers=[], prompt_cache=tmp_path)
    test_only = run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[0.5,1]",
                                              "personalize.validation=false", "personalize.name=test_only"],
                                    loggers=[], prompt_cache=tmp_path)
    assert test_only["local_prompts_reused"]  # scoring differs, training does not
    assert {r["split"] for r in records_of(run_dir / "personalize" / "test_only")} == {
        "local_test", "global_test", "train"}
    assert test_only["selected"] is None and both["selected"] is not None
    for a, b in zip(both["curve"], test_only["curve"], strict=True):
        # Rows are pooled differently without the validation splits: rounding, not results, may differ
        # (abs: a change from the global prompt can be near 0).
        assert {k: v for k, v in a.items() if "_val/" not in k} == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_personalizations_on_one_shared_driver_equal_each_on_its_own(finished_run):
    """What the study does for a run's personalizations: one set of workers for all of them. How a
    personalization scores (eval.*) comes with each call, so it may differ too."""
    run_dir, _ = finished_run
    settings = {"shared_plain": [*ADAM], "shared_l2": [*ADAM, "personalize.l2_strength=0.5"],
                "shared_eval": [*ADAM, "eval.batch_size=2", "eval.max_new_tokens=3"]}
    alone = {name: run_personalization(run_dir, [*o, f"personalize.name={name}"], loggers=[])
             for name, o in settings.items()}
    with personalization_driver(run_dir) as driver:
        shared = {name: run_personalization(run_dir, [*o, f"personalize.name={name}"], loggers=[], driver=driver)
                  for name, o in settings.items()}
        with pytest.raises(ConfigError, match="key 'runtime.max_batch_rows'"):  # the workers were built without it
            run_personalization(run_dir, ["runtime.max_batch_rows=2"], loggers=[], driver=driver)
    for name in settings:
        assert shared[name]["curve"] == alone[name]["curve"]  # bit for bit
    assert shared["shared_plain"]["curve"] != shared["shared_l2"]["curve"]
    assert shared["shared_plain"]["curve"] != shared["shared_eval"]["curve"]  # generations cut at 3 tokens


def global_prompt_rows(cols: dict, epoch: int) -> list[tuple]:
    """The ratio-0 (global prompt) rows of one epoch, as sorted tuples of their keys and scores."""
    rows = (cols["interp_ratio"] == 0) & (cols["epoch"] == epoch)
    return sorted(zip(*(cols[k][rows] for k in ("client_id", "split", "example_id", "loss", "rouge_l")), strict=True))


def test_every_scored_example_is_kept_and_its_means_are_the_records(finished_run, tmp_path):
    """example_scores.safetensors holds each scored example under an id that pairs it across
    prompts: the records are its means, a client's global subsample ids index the global set,
    and the global prompt (ratio 0, and the reference read back from the cache) scores the same
    examples identically at every epoch."""
    from rayfed.outputs.scores import EXAMPLE_SCORES, load_example_scores

    run_dir, _ = finished_run
    for name in ("examples", "examples_cached"):  # the second reads the global prompt's scores from the cache
        run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[0,1]", "personalize.global_eval_examples=6",
                                      f"personalize.name={name}"], loggers=[], prompt_cache=tmp_path)
        out = run_dir / "personalize" / name
        cols = load_example_scores(out / EXAMPLE_SCORES)
        for r in (r for r in records_of(out) if r["split"] != "train"):
            rows = ((cols["client_id"] == r["client_id"]) & (cols["split"] == r["split"])
                    & (cols["epoch"] == r["epoch"]) & (cols["interp_ratio"] == r["interp_ratio"]))
            assert rows.sum() == r["count"]
            assert len(set(cols["example_id"][rows])) == r["count"]
            for metric in ("loss", "exact_match", "rouge_l"):
                assert cols[metric][rows].mean() == pytest.approx(r[metric], rel=1e-9, abs=1e-12)
        global_ids = {c: set(cols["example_id"][(cols["client_id"] == c) & (cols["split"] == "global_test")])
                      for c in range(4)}
        assert all(len(ids) == 6 and max(ids) < 16 for ids in global_ids.values())  # 16 global test examples
        assert len({frozenset(ids) for ids in global_ids.values()}) > 1  # each client its own seeded subsample
        assert all(global_prompt_rows(cols, e) == global_prompt_rows(cols, 0) for e in range(1, 4))
        if name == "examples":
            first = cols
    assert all((first[k] == cols[k]).all() for k in first)  # the cached reference gives the same file


def test_every_curve_point_carries_95_intervals_paired_with_the_global_prompt(finished_run):
    run_dir, _ = finished_run
    summary = run_personalization(run_dir, [*ADAM, "personalize.interp_ratios=[0,1]", "personalize.name=intervals"],
                                  loggers=[])
    for row in summary["curve"]:
        for split in SPLITS:
            for metric in ("loss", "rouge_l"):
                key = f"{split}/{metric}"
                assert row[f"{key}_mean_low"] <= row[f"{key}_mean"] + 1e-12 <= row[f"{key}_mean_high"] + 2e-12
                # every client scores the same examples before and after: the change is the difference of means
                assert row[f"{key}_change"] == pytest.approx(row[f"{key}_mean"] - summary["reference"][f"{key}_mean"],
                                                             abs=1e-9)
                assert row[f"{key}_change_low"] <= row[f"{key}_change"] + 1e-12 <= row[f"{key}_change_high"] + 2e-12
                if row["interp_ratio"] == 0 or row["epoch"] == 0:  # the global prompt itself: no change at all
                    assert row[f"{key}_change_low"] == row[f"{key}_change_high"] == 0
    trained = [r for r in summary["curve"] if r["epoch"] == 3 and r["interp_ratio"] == 1][0]
    assert trained["local_test/loss_change_high"] > trained["local_test/loss_change_low"]  # a moved prompt: a spread


def test_intervals_tell_a_real_change_from_noise():
    from rayfed.personalization.curves import intervals
    from rayfed.types import EvalSums

    rng = torch.Generator().manual_seed(0)

    def scores(values: torch.Tensor) -> EvalSums:
        return EvalSums(len(values), float(values.sum()), 0.0, 0.0,
                        tuple((i, float(v), 0.0, 0.0) for i, v in enumerate(values)))

    base = {c: torch.rand(16, generator=rng) for c in range(8)}
    reference = {c: {"local_test": scores(v)} for c, v in base.items()}
    better = {c: {"local_test": scores(v - 0.2)} for c, v in base.items()}  # every example's loss 0.2 lower
    noisy = {c: {"local_test": scores(v + 0.3 * (torch.rand(16, generator=rng) - 0.5))} for c, v in base.items()}
    real, noise = intervals(better, reference, draws=500), intervals(noisy, reference, draws=500)
    assert real["local_test/loss_change_high"] < 0 and real["local_test/loss_change"] == pytest.approx(-0.2)
    assert noise["local_test/loss_change_low"] < 0 < noise["local_test/loss_change_high"]


def test_a_local_splits_examples_are_each_clients_own_and_a_global_sets_are_shared():
    """Every client's local test split has ids 0..n-1, but client 0's example 3 is not client 1's:
    its interval resamples each client's own examples (nested); a global set every client scored is
    resampled once for all of them (crossed)."""
    import numpy as np

    from rayfed.core.bootstrap import bootstrap_crossed, bootstrap_mean
    from rayfed.personalization.curves import intervals
    from rayfed.types import EvalSums

    rng = np.random.default_rng(1)
    values = rng.random((6, 10))

    def scores(row) -> EvalSums:
        return EvalSums(len(row), float(row.sum()), 0.0, 0.0, tuple((i, float(v), 0.0, 0.0) for i, v in enumerate(row)))

    out = intervals({c: {"local_test": scores(values[c]), "global_test": scores(values[c])} for c in range(6)},
                    draws=500)
    _, low, high = bootstrap_mean([list(values)], draws=500)
    assert (out["local_test/loss_mean_low"], out["local_test/loss_mean_high"]) == (low, high)
    _, low, high = bootstrap_crossed(values, draws=500)
    assert (out["global_test/loss_mean_low"], out["global_test/loss_mean_high"]) == (low, high)


def test_the_reliable_rule_passes_over_a_noisy_winner_and_otherwise_keeps_the_global_prompt():
    from rayfed.core.selection import select_reliable

    def row(epoch: int, ratio: float, local: float, gain: float, gain_low: float, global_low: float) -> dict:
        return {"epoch": epoch, "interp_ratio": ratio, "local_val/rouge_l_mean": local, "global_val/rouge_l_mean": 0.3,
                "local_val/rouge_l_change": gain, "local_val/rouge_l_change_low": gain_low,
                "local_val/rouge_l_change_high": 2 * gain - gain_low, "global_val/rouge_l_change": global_low / 2,
                "global_val/rouge_l_change_low": global_low, "global_val/rouge_l_change_high": 0.0}

    start = row(0, 1.0, 0.20, 0.0, 0.0, 0.0)
    noisy = row(1, 1.0, 0.40, 0.20, -0.05, -0.005)  # the best local score, but its gain may be noise
    sure = row(2, 0.5, 0.28, 0.08, 0.02, -0.004)  # a smaller gain beyond the noise, global within tolerance
    harmful = row(3, 1.0, 0.35, 0.15, 0.05, -0.08)  # a sure gain that may cost too much global score
    chosen = select_reliable([start, noisy, sure, harmful], 0.01)
    assert (chosen["epoch"], chosen["interp_ratio"], chosen["kept_global_prompt"]) == (2, 0.5, False)
    assert select_reliable([start, noisy, sure, harmful], 0.1)["epoch"] == 3  # a looser tolerance admits it
    kept = select_reliable([start, noisy, harmful], 0.01)
    assert kept["kept_global_prompt"] and (kept["epoch"], kept["interp_ratio"]) == (0, 0.0)
    assert "epoch 3, ratio 1: +0.1500 [+0.0500, +0.2500]" in kept["reason"]
    # Every gain may be noise: the reason names the surest personalized setting, never the global
    # prompt's own rows (a gain of exactly 0 on every draw).
    at_ratio_0 = row(1, 0.0, 0.20, 0.0, 0.0, 0.0)
    kept = select_reliable([start, at_ratio_0, noisy], 0.01)
    assert kept["kept_global_prompt"] and "surest local change was epoch 1, ratio 1: +0.2000 [-0.0500" in kept["reason"]
    assert select_reliable([{"epoch": 0, "local_val/rouge_l_mean": 0.2}], 0.01) is None  # no intervals: no rule

    # personalize.metric=loss: lower is better, so a gain is a fall whose interval lies wholly
    # below 0, and the tolerance bounds the global loss's rise. The same settings told by their
    # losses (each ROUGE-L change mirrored) are chosen the same way.
    def as_loss(r: dict) -> dict:
        out = {"epoch": r["epoch"], "interp_ratio": r["interp_ratio"]}
        for split in ("local_val", "global_val"):
            out[f"{split}/loss_mean"] = 3.0 - r[f"{split}/rouge_l_mean"]
            out[f"{split}/loss_change"] = -r[f"{split}/rouge_l_change"]
            out[f"{split}/loss_change_low"] = -r[f"{split}/rouge_l_change_high"]
            out[f"{split}/loss_change_high"] = -r[f"{split}/rouge_l_change_low"]
        return out

    rows = [as_loss(r) for r in (start, noisy, sure, harmful)]
    chosen = select_reliable(rows, 0.01, metric="loss")
    assert (chosen["epoch"], chosen["interp_ratio"], chosen["kept_global_prompt"]) == (2, 0.5, False)
    assert "local_val/loss_change_high < 0" in chosen["rule"] and "min local_val/loss_mean" in chosen["rule"]
    assert select_reliable(rows, 0.1, metric="loss")["epoch"] == 3
    kept = select_reliable([as_loss(r) for r in (start, noisy, harmful)], 0.01, metric="loss")
    assert kept["kept_global_prompt"] and "epoch 3, ratio 1: -0.1500 [-0.2500, -0.0500]" in kept["reason"]
    assert select_reliable(rows, 0.01) is None  # ROUGE-L asked of rows that hold only losses


def test_the_reliable_pareto_set_keeps_what_the_noise_cannot_rank():
    from rayfed.core.selection import pareto_mask, reliable_pareto_mask

    # (local_low, local_high, global_low, global_high) of three settings' changes
    clear_winner, loser, overlapping = (0.10, 0.20, 0.00, 0.05), (0.00, 0.05, -0.10, -0.02), (0.04, 0.12, -0.03, 0.02)
    assert reliable_pareto_mask([clear_winner, loser, overlapping]) == [True, False, True]
    means = [((a + b) / 2, (c + d) / 2) for a, b, c, d in (clear_winner, loser, overlapping)]
    assert pareto_mask(means) == [True, False, False]  # the means alone would drop the overlapping one


def test_a_personalization_with_other_settings_never_replaces_one_of_the_same_name(finished_run, capsys):
    """`rayfed personalize RUN eval.max_new_tokens=2` silently replaced the earlier `default`;
    the same settings again may rerun it."""
    run_dir, _ = finished_run
    args = ["personalize", str(run_dir), "personalize.name=kept", "personalize.local_epochs=1",
            "runtime.executor=local"]
    assert main(args) == 0
    kept = run_dir / "personalize" / "kept"
    before = (kept / "summary.json").read_text()
    assert main([*args, "eval.max_new_tokens=2"]) == 2
    err = capsys.readouterr().err
    assert "key 'personalize.name'" in err and "eval.max_new_tokens: 8 -> 2" in err
    assert (kept / "summary.json").read_text() == before
    assert main(args) == 0  # the same settings: rerun in place


def test_two_personalizations_of_one_name_at_once_the_second_stops_and_the_first_finishes(finished_run):
    """They used to leave a mixed directory (one's config.yaml, the other's summary) and both exit 0."""
    import os
    import subprocess
    import sys
    import time

    run_dir, _ = finished_run
    out = run_dir / "personalize" / "twice"
    args = [sys.executable, "-m", "rayfed.cli", "personalize", str(run_dir), "personalize.name=twice",
            "runtime.executor=local"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.Popen([*args, "personalize.local_epochs=8"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "config.yaml").exists():  # written under the lock
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the first personalization never started writing"
        time.sleep(0.05)
    second = subprocess.run([*args, "personalize.local_epochs=8"], env=env, capture_output=True, text=True)
    assert second.returncode == 2, second.stdout + second.stderr
    assert "another rayfed process is writing to" in second.stderr and "key 'personalize.name'" in second.stderr
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert json.loads((out / "summary.json").read_text())["settings"]["epochs"] == 8


def test_rollout_cli_writes_its_stages_adapters_and_figure_and_reuses_the_personalization(finished_run, capsys):
    """`rayfed rollout RUN`: personalizes once (the local prompts kept), every site in exactly one
    stage, the events in rollout.jsonl match the summary, each site's adapter is its final prompt
    (the global one where it stayed or was rolled back); a second rollout with other guard
    settings reads the same personalization instead of training again."""
    from safetensors.torch import load_file

    run_dir, _ = finished_run
    args = ["rollout", str(run_dir), "personalize.name=for_rollout", "personalize.local_epochs=1",
            "runtime.executor=local", "rollout.pilot_sites=2", "rollout.drift_sites=[1]"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "stage 0: sites" in printed and "rollback(s); results in" in printed
    out = run_dir / "rollout" / "pilot_sites=2,drift_sites=_1_"
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["personalization_reused"]
    assert {"rollout.jsonl", "rollout.png", "config.yaml"} <= {p.name for p in out.iterdir()}
    assert sorted(c for s in summary["stages"] for c in s["sites"]) == list(range(4))
    events = [json.loads(line) for line in (out / "rollout.jsonl").read_text().splitlines()]
    assert sum(e["action"] == "rollback" for e in events) == summary["rollbacks"]
    global_prompt = load_prompt(run_dir / "global_prompt.safetensors")[0]
    for cid, site in summary["sites"].items():
        adapter = out / "adapters" / f"client_{cid}"
        weights = next(iter(load_file(adapter / "adapter_model.safetensors").values()))
        source = json.loads((adapter / "rayfed_template.json").read_text())
        assert source["kept_global_prompt"] == (site["final"] == "global")
        if site["final"] == "global":
            assert torch.equal(weights, global_prompt)
    assert main([*args, "rollout.margin=0.5", "rollout.name=wide"]) == 0
    again = json.loads((run_dir / "rollout" / "wide" / "summary.json").read_text())
    assert again["personalization_reused"] and again["stages"][0]["sites"] == summary["stages"][0]["sites"]
    # A looser selection tolerance chooses among the same scores: still read, not trained again.
    assert main([*args, "personalize.global_tolerance=0.5", "rollout.name=loose"]) == 0
    loose = json.loads((run_dir / "rollout" / "loose" / "summary.json").read_text())
    assert loose["personalization_reused"] and loose["settings"]["tolerance"] == 0.5
    assert main(["rollout", str(run_dir), "rollout.pilot_sites=9"]) == 2
    assert "key 'rollout.pilot_sites'" in capsys.readouterr().err
    # A rollout after `rayfed personalize` with the same settings reads it: nothing trains again.
    same = ["personalize.name=first", "personalize.local_epochs=2", "runtime.executor=local"]
    assert main(["personalize", str(run_dir), *same]) == 0
    assert main(["rollout", str(run_dir), *same, "rollout.name=after"]) == 0
    assert json.loads((run_dir / "rollout" / "after" / "summary.json").read_text())["personalization_reused"]


def test_a_lora_run_personalizes_with_the_l2_pull_and_interpolation_on_every_tensor(tmp_path, tiny_overrides):
    """model.peft=lora through personalization: the l2 pull holds every layer's A and B at the
    global adapter, ratio 0.5 is the elementwise mix of the flat tensors, and each selected site
    adapter is a PEFT LoRA directory."""
    from rayfed.config import load_config
    from rayfed.data.partition import global_sets_of
    from rayfed.data.sources import federated_data
    from rayfed.runtime.parts import RunParts
    from rayfed.runtime.worker import ClientWorker
    from rayfed.settings import EvalSettings

    run_dir = tmp_path / "run"
    cfg = load_config(None, [*tiny_overrides, *WITH_VAL, "model.peft=lora", "model.lora_rank=2",
                             f"output_dir={run_dir}"])
    run_summary = run_experiment(cfg, loggers=[])
    global_adapter = load_prompt(run_dir / "global_prompt.safetensors")[0]
    assert global_adapter.shape == (1, 2 * (2 * (64 + 64) + 2 * (64 + 32)))  # 2 layers, rank 2: q 64->64, v 64->32
    moved = {}
    for strength, lr in ((0.0, 0.05), (1e6, 1e-6)):
        run_personalization(
            run_dir, ["personalize.local_epochs=1", "personalize.optimizer.name=sgd", f"personalize.optimizer.lr={lr}",
                      "personalize.interp_ratios=[0,0.5]", f"personalize.l2_strength={strength}",
                      f"personalize.name=l2_{strength:g}"], loggers=[], prompt_cache=tmp_path / str(strength))
        (cache,) = (tmp_path / str(strength)).glob("*.safetensors")
        local = load_local_prompts(cache)
        moved[strength] = max(float((p[0][1] - global_adapter).norm()) for p in local.values())
    assert moved[1e6] < 1e-4 * moved[0.0]
    out = run_dir / "personalize" / "l2_0"
    records = records_of(out)
    for r in records:
        if r["interp_ratio"] == 0 and r["split"] == "local_test":
            assert r["loss"] == run_summary["clients"][str(r["client_id"])]["eval/local_test/loss"]
    parts, data = RunParts.from_config(cfg), federated_data(cfg)
    worker = ClientWorker(parts.model, parts.worker, parts.algorithm, list(data.clients), global_sets_of(data))
    (cache,) = (tmp_path / "0.0").glob("*.safetensors")
    mixed = 0.5 * global_adapter + 0.5 * load_local_prompts(cache)[1][0][1]
    rescored = worker.evaluate_client(1, {"p": mixed}, ("local_test",), EvalSettings.from_config(cfg.eval))["p"][
        "local_test"]
    (record,) = [r for r in records if (r["client_id"], r["epoch"], r["interp_ratio"], r["split"]) ==
                 (1, 1, 0.5, "local_test")]
    assert record["loss"] == pytest.approx(rescored.means()["loss"], rel=1e-6)
    configs = [json.loads(p.read_text()) for p in (out / "adapters").glob("client_*/adapter_config.json")]
    assert len(configs) == 4 and {c["peft_type"] for c in configs} == {"LORA"}
    assert {c["r"] for c in configs} == {2}
    assert {frozenset(c["target_modules"]) for c in configs} == {frozenset({"q_proj", "v_proj"})}  # PEFT saves a set
