"""Simulated availability: seeded dropouts and stragglers past a deadline leave rounds, logged."""

import json
from pathlib import Path

import torch

from rayfed.config import AvailabilityConfig
from rayfed.core.availability import client_speed, who_reports
from rayfed.experiment import run_experiment
from rayfed.outputs.checkpoint import load_prompt


def test_dropouts_are_seeded_per_round_and_stragglers_are_the_slow_clients():
    sampled = list(range(200))
    cfg = AvailabilityConfig(dropout=0.3)
    finished, dropped = who_reports(sampled, cfg, seed=0, round_idx=1)
    assert (finished, dropped) == who_reports(sampled, cfg, seed=0, round_idx=1)  # reproducible
    assert 40 < len(dropped) < 80 and set(dropped.values()) == {"dropout"}
    assert who_reports(sampled, cfg, seed=0, round_idx=2)[1] != dropped  # a new draw each round
    slow = AvailabilityConfig(speed_sigma=0.5, deadline=1.5)
    finished, dropped = who_reports(sampled, slow, seed=0, round_idx=1)
    assert all(1 / client_speed(0, c, 0.5) > 1.5 for c in dropped)
    assert all(1 / client_speed(0, c, 0.5) <= 1.5 for c in finished)
    assert dropped and who_reports(sampled, slow, seed=0, round_idx=9)[1] == dropped  # slow clients stay slow


def test_a_run_with_dropouts_equals_a_run_that_sampled_only_the_survivors(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("runtime.executor=local", "partition.num_clients=8", "algorithm.clients_per_round=6",
                      "algorithm.rounds=3", "availability.dropout=0.4", "availability.speed_sigma=0.6",
                      "availability.deadline=1.6", f"output_dir={tmp_path / 'dropouts'}")
    run_experiment(cfg, loggers=[])
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round" and "sampled" in e]
    assert len(rounds) == 3 and sum(len(r["dropped"]) for r in rounds) > 0
    for r in rounds:
        assert sorted(r["finished"] + r["dropped"]) == r["sampled"]
        assert r["train/clients"] == len(r["finished"])
        trained = {e["client_id"] for e in events
                   if e["event"] == "client" and e["round"] == r["round"] and "train/loss" in e}
        assert trained == set(r["finished"])

    import rayfed.runtime.driver as driver_module  # the same rounds, sampling only who finished
    survivors = {r["round"]: r["finished"] for r in rounds}
    monkeypatch.setattr(driver_module, "sample_clients", lambda n, k, seed, round_idx: survivors[round_idx])
    plain = tiny_config("runtime.executor=local", "partition.num_clients=8", "algorithm.clients_per_round=6",
                        "algorithm.rounds=3", f"output_dir={tmp_path / 'plain'}")
    run_experiment(plain, loggers=[])
    a = load_prompt(Path(cfg.output_dir) / "global_prompt.safetensors")[0]
    b = load_prompt(Path(plain.output_dir) / "global_prompt.safetensors")[0]
    assert torch.equal(a, b)


def test_a_round_below_the_quorum_keeps_the_global_prompt(tiny_config):
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=2", "availability.dropout=0.9",
                      "availability.min_clients=4")
    summary = run_experiment(cfg, loggers=[])
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e["event"] == "round" and e.get("train/skipped")]
    assert len(skipped) == 2 and all(e["train/clients"] < 4 for e in skipped)  # seeded: both rounds
    assert summary["final"]["loss"] == summary["initial"]["loss"]  # no round trained: the initial prompt
