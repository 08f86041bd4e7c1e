"""Many simulated clients on two worker actors: a thousand clients in one run, in seconds."""

import json
from pathlib import Path

import pytest

from rayfed.experiment import run_experiment

pytestmark = pytest.mark.ray


def test_a_thousand_clients_on_two_workers_train_in_one_batched_pass(ray_session, tiny_config):
    cfg = tiny_config(
        "partition.num_clients=1000", "data.max_examples_per_task=450", "partition.train_examples=4",
        "partition.test_examples=1", "algorithm.clients_per_round=100", "algorithm.local_steps=1",
        "algorithm.batch_size=4", "algorithm.rounds=3", "eval.local=false", "eval.eval_every=3",
        "runtime.num_workers=2", "runtime.num_cpus_per_worker=0.5", "runtime.batch_clients=true",
        "runtime.max_batch_rows=128")  # 100 clients x 4 rows: several passes per worker
    summary = run_experiment(cfg, loggers=[])
    assert summary["final"]["loss"] < summary["initial"]["loss"]
    lines = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/clients"] for r in lines if r["event"] == "round" and "train/clients" in r] == [100, 100, 100]
    assert len({r["client_id"] for r in lines if r["event"] == "client"}) > 250  # distinct clients trained
