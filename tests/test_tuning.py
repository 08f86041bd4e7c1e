"""``rayfed tune`` on a 2-CPU Ray cluster with the tiny model: both kinds of trial, results,
the Pareto set, a search that cannot fit, and resuming an interrupted search."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayfed.config import ConfigError, load_config, to_yaml
from rayfed.errors import UserError
from rayfed.names import OBJECTIVES
from rayfed.outputs.search_dir import SearchExistsError, open_search_dir
from rayfed.tuning import run_search

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
TINY_SEARCH = ROOT / "configs" / "tune" / "tiny.yaml"


def interruptible() -> None:
    """``preexec_fn`` for a subprocess this test interrupts: a shell that runs the suite in the
    background (nohup, ``&``, some CI runners) passes SIGINT on as ignored, and Python then never
    raises KeyboardInterrupt; restore the default, as a terminal has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_personalize_search_shares_local_prompts_and_writes_the_pareto_set(ray_session, tmp_path):
    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path}"])
    summary = run_search(cfg)
    rows = rows_of(tmp_path / "results.csv")
    assert len(rows) == 8 and all(r["status"] == "done" and r["epoch"] == "2" for r in rows)
    assert {(r["personalize.l2_strength"], r["personalize.interp_ratios"]) for r in rows} == {
        (str(l2), str(ratio)) for l2 in (0.0, 0.1, 1.0, 10.0) for ratio in (0.5, 1.0)}
    # Trials that differ only in the ratio trained their local prompts once: 4 l2 strengths, 4 files.
    assert len(list((tmp_path / "local_prompts").glob("*.safetensors"))) == 4
    pareto = rows_of(tmp_path / "pareto.csv")
    assert pareto and {r["trial_id"] for r in pareto} == {r["trial_id"] for r in rows if r["pareto"] == "1"}
    # No Pareto trial is beaten on both validation scores by any trial.
    for p in pareto:
        assert not any(float(r["local_val_rouge_l"]) > float(p["local_val_rouge_l"])
                       and float(r["global_val_rouge_l"]) > float(p["global_val_rouge_l"]) for r in rows)
    assert summary["reference"] is not None and summary["selected"] is not None
    # The noise-aware front: every means-Pareto trial, plus those whose intervals overlap it; a
    # trial off it has another whose local and global intervals both lie wholly above its own.
    def bounds(r):
        return [float(r[f"{split}_rouge_l_change{s}"]) for split in ("local_val", "global_val")
                for s in ("_low", "_high")]
    for r in rows:
        beaten = any(b[0] > bounds(r)[1] and b[2] > bounds(r)[3] for b in map(bounds, rows))
        assert r["pareto_reliable"] == ("0" if beaten else "1")
        assert r["pareto"] == "0" or r["pareto_reliable"] == "1"
    # Each trial's change from the shared un-personalized prompt, with its paired 95% interval.
    for r in rows:
        for split in ("local_val", "global_val"):
            low, change, high = (float(r[f"{split}_rouge_l_change{s}"]) for s in ("_low", "", "_high"))
            assert low <= change + 1e-12 <= high + 2e-12
    # The choice reads the intervals: one trial whose gain is beyond the noise, or none and the
    # global prompt kept, saying why (a 2-layer random model's gains are noise).
    chosen = summary["selected"]
    assert sum(r["selected"] == "1" for r in rows) == (0 if chosen["kept_global_prompt"] else 1)
    assert not chosen["kept_global_prompt"] or "surest local change was trial" in chosen["reason"]
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert (tmp_path / "tune").is_dir()  # Tune's own experiment directory, for Tuner.restore
    # Each trial's curves are in the search's own directory, never in the run it personalizes.
    assert {p.parent.name for p in (tmp_path / "trials").glob("*/personalization.jsonl")} == {
        r["trial_id"] for r in rows}
    assert not (tmp_path / "base" / "personalize").exists()


def test_a_personalize_search_on_a_users_run_writes_nothing_into_it(ray_session, tmp_path):
    """``tune.base_run``: the trials read the user's run and write only into the search's own
    directory, so ``rayfed plot RUN`` and ``rayfed compare`` of the run show no trial, and
    ``--overwrite`` of the search removes every trial's files."""
    from rayfed.config import SpaceParam
    from rayfed.experiment import run_experiment

    run = tmp_path / "run"
    run_experiment(load_config(TINY_SEARCH, [f"output_dir={run}", "personalize.enabled=false"]), loggers=[])
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    out = tmp_path / "search"
    cfg = load_config(TINY_SEARCH, [f"output_dir={out}", f"tune.base_run={run}", "personalize.local_epochs=1"])
    cfg.tune.space = {"personalize.l2_strength": SpaceParam("grid", [0.0, 1.0])}
    run_search(cfg)
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert not (out / "base").exists()
    trials = {r["trial_id"] for r in rows_of(out / "results.csv")}
    assert len(trials) == 2 and {p.parent.name for p in (out / "trials").glob("*/summary.json")} == trials
    run_search(cfg, overwrite=True)  # the same search again, from scratch
    assert {p.parent.name for p in (out / "trials").glob("*/summary.json")} == {
        r["trial_id"] for r in rows_of(out / "results.csv")}


def test_federation_search_reserves_actor_bundles_and_never_hangs(ray_session, tmp_path):
    from rayfed.config import SpaceParam

    node = ray_session.get_runtime_context().get_node_id()
    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path / 'out'}", "runtime.executor=ray",
                                    "runtime.num_cpus_per_worker=0.25", "partition.num_clients=2",
                                    "algorithm.clients_per_round=2", "tune.kind=federation",
                                    "tune.cpus_per_trial=0.25", f"runtime.label_selector={{ray.io/node-id: {node}}}"])
    # One trial: 0.25 (trial) + 0.1 (driver actor) + 2 x 0.25 (client actors) of the 2 CPUs, every
    # bundle and actor on the nodes the label selector admits.
    cfg.tune.space = {"algorithm.client_optimizer.lr": SpaceParam("grid", [0.01, 0.1]),
                      "partition.concentration": SpaceParam("grid", [0.1, 10.0])}
    summary = run_search(cfg)
    rows = rows_of(tmp_path / "out" / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "done" and r["epoch"] == "2" for r in rows)  # last round
    for row in rows:
        assert (tmp_path / "out" / "trials" / row["trial_id"] / "global_prompt.safetensors").is_file()
    assert summary["reference"] is None and "best trial's" in summary["rule"]


def test_a_search_whose_trial_cannot_fit_fails_at_once_naming_the_keys(ray_session, tmp_path):
    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path}", "tune.kind=federation", "runtime.executor=ray",
                                    "runtime.num_cpus_per_worker=0.5"])  # 1 + 0.1 + 4 x 0.5 > 2 CPUs
    started = time.monotonic()
    with pytest.raises(ConfigError, match="runtime.num_cpus_per_worker"):
        run_search(cfg)
    # A label selector no node satisfies: every trial would wait forever.
    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path / 'labels'}", "tune.kind=federation",
                                    "runtime.executor=ray", "runtime.label_selector={cpu-family: epyc}"])
    with pytest.raises(ConfigError, match="runtime.label_selector"):
        run_search(cfg)
    assert time.monotonic() - started < 60


def test_fedavg_fedprox_and_ditto_compared_in_one_federation_search(tmp_path):
    """The baselines through Tune: a federation search over algorithm.name. FedProx at mu 0 reports
    exactly FedAvg's numbers; a Ditto trial is scored by what it deploys, each client's own prompt
    (its run's final ditto/ scores), not by its global prompt."""
    from rayfed.config import SpaceParam

    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path / 'out'}", "tune.kind=federation",
                                    "algorithm.proximal_mu=0.0", "eval.local=true"])
    cfg.tune.space = {"algorithm.name": SpaceParam("grid", ["fedavg", "fedprox", "ditto"])}
    run_search(cfg)
    rows = {r["algorithm.name"]: r for r in rows_of(tmp_path / "out" / "results.csv")}
    assert all(r["status"] == "done" for r in rows.values()) and len(rows) == 3
    assert all(rows["fedprox"][k] == rows["fedavg"][k] for k in OBJECTIVES)
    last = {}  # each trial's last Tune report, with its scores (the tiny model's ROUGE-L is 0; its loss is not)
    for result in (tmp_path / "out" / "tune").glob("*/result.json"):
        report = [json.loads(line) for line in result.read_text().splitlines() if line.strip()][-1]
        last[report["trial_id"]] = report
    fedavg, fedprox, ditto = (last[rows[name]["trial_id"]] for name in ("fedavg", "fedprox", "ditto"))
    assert fedprox["eval/global_test/loss"] == fedavg["eval/global_test/loss"]
    final = json.loads((tmp_path / "out" / "trials" / rows["ditto"]["trial_id"] / "summary.json").read_text())
    assert ditto["ditto/local_test/loss_mean"] == pytest.approx(final["final_ditto"]["ditto/local_test/loss_mean"])
    assert ditto["ditto/local_test/loss_mean"] != ditto["eval/local_test/loss_mean"]  # its own prompts, not the global
    for split in ("local_val", "global_val", "local_test", "global_test"):
        own = final["final_ditto"][f"ditto/{split}/rouge_l_mean"]
        assert float(rows["ditto"][f"{split}_rouge_l"]) == pytest.approx(own)


def test_a_ditto_round_is_ranked_by_its_clients_own_prompts():
    from rayfed.tuning import _round_row

    event = {"eval/local_val/rouge_l_mean": 0.1, "eval/global_val/rouge_l": 0.2, "eval/local_test/rouge_l_mean": 0.1,
             "eval/global_test/rouge_l": 0.2}
    assert _round_row(event)["local_val/rouge_l_mean"] == 0.1
    ditto = {**event, **{f"ditto/{s}/rouge_l_mean": v for s, v in
                         (("local_val", 0.5), ("global_val", 0.15), ("local_test", 0.45), ("global_test", 0.14))}}
    assert _round_row(ditto) == {"local_val/rouge_l_mean": 0.5, "global_val/rouge_l_mean": 0.15,
                                 "local_test/rouge_l_mean": 0.45, "global_test/rouge_l_mean": 0.14}


def test_a_search_directory_is_never_taken_from_a_run_and_overwrite_clears_only_the_search(tmp_path):
    run = tmp_path / "run"  # a finished `rayfed run`: its config.yaml must not be replaced by a search's
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (run / "config.yaml").write_text("name: a-run\n")
    with pytest.raises(UserError, match="holds a run"):
        run_search(load_config(TINY_SEARCH, [f"output_dir={run}"]))
    assert (run / "config.yaml").read_text() == "name: a-run\n"

    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path / 'search'}"])
    out = tmp_path / "search"  # what a search leaves, and a file of the user's beside it
    for name in ("tune", "base", "trials", "local_prompts"):
        (out / name).mkdir(parents=True)
    (out / "results.csv").write_text("trial_id\n")
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "notes.txt").write_text("mine")
    open_search_dir(cfg, out, resume=True, overwrite=False)  # the same settings resume
    faster = load_config(TINY_SEARCH, [f"output_dir={out}", "tune.max_concurrent_trials=1", "runtime.torch_threads=2"])
    open_search_dir(faster, out, resume=True, overwrite=False)  # where and how the trials run may change
    with pytest.raises(UserError, match="name: 'tune-tiny' there, 'other' now"):
        open_search_dir(load_config(TINY_SEARCH, [f"output_dir={out}", "name=other"]), out, resume=True,
                        overwrite=False)
    open_search_dir(cfg, out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_interrupted_search_resumes_where_it_stopped(tmp_path):
    search = tmp_path / "search.yaml"  # the tiny search with four trials
    search.write_text(TINY_SEARCH.read_text().replace("values: [0.0, 0.1, 1.0, 10.0]", "values: [0.0, 1.0]"))
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "rayfed.cli", "tune", str(search), f"output_dir={out}",
           "tune.max_concurrent_trials=1"]
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=interruptible, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(finished_trials(out)) < 1:  # interrupt after the first of the four trials
            assert proc.poll() is None and time.monotonic() < deadline, "search ended before it was interrupted"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Tune saves its state and exits
        while "--resume" not in stderr.read_text() and proc.poll() is None:  # rayfed's line: it is stopping
            time.sleep(0.05)
        for _ in range(6):  # and an impatient user presses it again while Ray shuts down
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.2)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and not (out / "results.csv").exists()
    # One line, and no traceback from a clean-up cut short (a second Ctrl-C used to break Ray's
    # shutdown with one, or end in SIGSEGV).
    printed = stderr.read_text()
    assert "Traceback" not in printed, printed[-3000:]
    last = printed.strip().splitlines()[-1]
    assert last.startswith("rayfed: the search stopped after ") and "rayfed tune CONFIG --resume" in last, last
    before = finished_trials(out)
    # The interrupted search's directory is its own: a fresh start there, or a resume with other
    # settings, is refused before anything is written (its finished trials and base run would
    # otherwise pass for the new search's).
    saved = (out / "config.yaml").read_text()
    with pytest.raises(SearchExistsError, match="--resume"):
        run_search(load_config(search, [f"output_dir={out}"]))
    with pytest.raises(UserError, match=r"partition.concentration: 0.5 there, 10.0 now"):
        run_search(load_config(search, [f"output_dir={out}", "partition.concentration=10.0"]), resume=True)
    assert (out / "config.yaml").read_text() == saved and finished_trials(out) == before

    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = rows_of(out / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    after = finished_trials(out)
    # The trials finished before the interrupt were kept, not run again.
    assert all(after[name] == lines for name, lines in before.items())


def finished_trials(out: Path) -> dict[str, int]:
    """Trial directory -> reports in its result.json, for trials that reported their last epoch."""
    done = {}
    for result in (out / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and lines[-1].get("epoch") == 2:
            done[result.parent.name] = len(lines)
    return done


def test_an_interrupted_federation_search_resumes_to_the_uninterrupted_results(tmp_path):
    """Ctrl-C while a whole-run trial is between checkpoints: on --resume the trial continues from
    its own checkpoint (no RunExistsError), and every trial ends exactly where an uninterrupted run
    of its config ends: the same prompt bits and the same per-round numbers."""
    import torch

    from rayfed.experiment import run_experiment
    from rayfed.outputs.checkpoint import load_prompt

    rounds = 12
    search = tmp_path / "search.yaml"
    text = TINY_SEARCH.read_text().replace("rounds: 2", f"rounds: {rounds}").replace("kind: personalize",
                                                                                   "kind: federation")
    space = "  space:\n    algorithm.client_optimizer.lr: {type: grid, values: [0.01, 0.1]}\n"
    text = text.split("  space:")[0] + space + "  max_concurrent_trials: 1\n  cpus_per_trial: 1.0\n"
    search.write_text(text + "checkpoint: {every: 1}\n")
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "rayfed.cli", "tune", str(search), f"output_dir={out}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=interruptible, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(2 <= n < rounds for n in rounds_logged(out).values()):  # a trial past its 2nd checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, "search ended before it was interrupted"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and not (out / "results.csv").exists()
    assert any(n < rounds for n in rounds_logged(out).values()), "the trial finished before the interrupt"

    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(out / "results.csv")
    assert len(rows) == 2 and all(r["status"] == "done" and r["epoch"] == str(rounds) for r in rows)
    for row in rows:
        trial = out / "trials" / row["trial_id"]
        reference = tmp_path / "reference" / row["trial_id"]
        # As the trial ran: one torch thread (Ray gives a 1-CPU trial process OMP_NUM_THREADS=1); with
        # this process's threads, float sums may differ in the last bits on some CPUs.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_experiment(load_config(trial / "config.yaml", [f"output_dir={reference}"]), loggers=[])
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(load_prompt(trial / "global_prompt.safetensors")[0],
                           load_prompt(reference / "global_prompt.safetensors")[0])
        assert round_numbers(trial) == round_numbers(reference)
        assert float(row["global_val_rouge_l"]) == round_numbers(reference)[-1]["eval/global_val/rouge_l"]


def rounds_logged(out: Path) -> dict[str, int]:
    """Federation trial -> the rounds its metrics.jsonl holds."""
    found = {}
    for metrics in (out / "trials").glob("*/metrics.jsonl"):
        lines = [line for line in metrics.read_text().splitlines() if line.endswith("}")]
        found[metrics.parent.name] = sum(json.loads(line).get("event") == "round" for line in lines)
    return found


def round_numbers(run: Path) -> list[dict]:
    """A run's round events without their timings."""
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in e.items() if "seconds" not in k and "time" not in k}
            for e in events if e.get("event") == "round"]


def test_a_trial_that_did_not_finish_is_never_ranked_or_selected(tmp_path):
    """An errored trial's partial scores (here: the best of all) and a trial stopped before its last
    round stay in results.csv, marked, but off the Pareto set and never selected; the search says it
    is incomplete when a trial failed."""
    from rayfed.tuning import write_results

    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path}", "tune.kind=federation"])
    params = ["algorithm.client_optimizer.lr"]

    def trial(trial_id, lr, last_round, local, global_, error=None):
        metrics = {"trial_id": trial_id, "round": last_round, "local_val_rouge_l": local,
                   "global_val_rouge_l": global_, "local_test_rouge_l": local, "global_test_rouge_l": global_}
        return metrics, {"grid": {params[0]: lr}}, error

    summary = write_results(cfg, tmp_path, params, [
        trial("a", 0.01, 2, 0.30, 0.30), trial("b", 0.1, 2, 0.20, 0.40),
        trial("c", 1.0, 1, 0.90, 0.90, error="RunExistsError"), trial("d", 3.0, 1, 0.80, 0.80)])
    rows = {r["trial_id"]: r for r in rows_of(tmp_path / "results.csv")}
    assert {k: r["status"] for k, r in rows.items()} == {"a": "done", "b": "done", "c": "error", "d": "stopped"}
    assert {k for k, r in rows.items() if r["pareto"] == "1"} == {"a", "b"}
    assert summary["selected"]["trial_id"] in {"a", "b"} and rows["c"]["selected"] == rows["d"]["selected"] == "0"
    assert summary["complete"] is False and summary["failed"] == ["c"]


def test_a_personalize_search_selects_on_the_loss_when_asked(tmp_path):
    """``personalize.metric=loss``: the search's choice reads each trial's paired loss change (a
    fall beyond the noise), where ROUGE-L's intervals may see nothing; results.csv carries both."""
    from rayfed.tuning import write_results

    params = ["personalize.l2_strength"]

    def trial(trial_id, l2, loss_change, loss_interval, rouge_interval):
        metrics = {"trial_id": trial_id, "epoch": 2, "reference/local_val_rouge_l": 0.3,
                   "local_val_rouge_l": 0.31, "global_val_rouge_l": 0.3, "local_test_rouge_l": 0.3,
                   "global_test_rouge_l": 0.3}
        for split, change, interval in (("local_val", loss_change, loss_interval),
                                        ("global_val", -0.02, (-0.05, 0.005))):
            metrics[f"personalize/{split}/loss_mean"] = 2.0 + change
            metrics[f"personalize/{split}/loss_change"] = change
            metrics[f"personalize/{split}/loss_change_low"], metrics[f"personalize/{split}/loss_change_high"] = interval
            metrics[f"personalize/{split}/rouge_l_change"] = 0.01
            (metrics[f"personalize/{split}/rouge_l_change_low"],
             metrics[f"personalize/{split}/rouge_l_change_high"]) = rouge_interval
        return metrics, {"grid": {params[0]: l2}}, None

    trials = [trial("a", 0.0, -0.30, (-0.45, -0.15), (-0.05, 0.07)),  # a sure fall of the loss
              trial("b", 1.0, -0.05, (-0.20, 0.10), (-0.04, 0.06))]  # noise on both
    by_rouge = write_results(load_config(TINY_SEARCH, [f"output_dir={tmp_path}"]), tmp_path, params, trials)
    assert by_rouge["selected"]["kept_global_prompt"]
    by_loss = write_results(load_config(TINY_SEARCH, [f"output_dir={tmp_path}", "personalize.metric=loss"]),
                            tmp_path, params, trials)
    assert by_loss["selected"]["trial_id"] == "a" and not by_loss["selected"]["kept_global_prompt"]
    assert "local_val_loss_change_high < 0" in by_loss["rule"]
    rows = {r["trial_id"]: r for r in rows_of(tmp_path / "results.csv")}
    assert float(rows["a"]["local_val_loss_change_high"]) == -0.15 and rows["a"]["selected"] == "1"


def test_a_personalize_search_cut_off_while_training_its_base_continues_it(tmp_path):
    """The search's own base run, stopped between checkpoints, is continued on the next attempt
    (it stopped with "base already holds a run") and ends on the uninterrupted run's prompt."""
    import torch

    from rayfed.experiment import run_experiment
    from rayfed.outputs.checkpoint import load_prompt
    from rayfed.tuning import _shared, prepare_base_run

    class StopAtRound2:
        def log(self, event):
            if event.get("event") == "round" and event["round"] == 2:
                raise KeyboardInterrupt

        def close(self):
            pass

    cfg = load_config(TINY_SEARCH, [f"output_dir={tmp_path / 'search'}", "algorithm.rounds=3"])
    base = tmp_path / "search" / "base"
    base_cfg = load_config(TINY_SEARCH, [f"output_dir={base}", "algorithm.rounds=3", "logging.wandb.enabled=false"])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(replace_base(_shared(base_cfg)), loggers=[StopAtRound2()])
    assert (base / "checkpoint.safetensors").is_file() and not (base / "summary.json").exists()

    _, run_cfg, prompt = prepare_base_run(cfg, tmp_path / "search")
    reference = load_config(TINY_SEARCH, [f"output_dir={tmp_path / 'reference'}", "algorithm.rounds=3"])
    run_experiment(replace_base(_shared(reference)), loggers=[])
    assert run_cfg.algorithm.rounds == 3
    assert torch.equal(prompt, load_prompt(tmp_path / "reference" / "global_prompt.safetensors")[0])


def replace_base(cfg):
    """A search's base run config, as prepare_base_run builds it."""
    from rayfed.config import replace_keys

    return replace_keys(cfg, {"personalize.enabled": False, "logging.wandb.enabled": False})
