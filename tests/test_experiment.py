"""The orchestrator end to end, in-process: what a user sees in output_dir."""

import json
from pathlib import Path

import torch

from rayfed.experiment import run_experiment
from rayfed.outputs.checkpoint import load_prompt


def test_in_process_run_lowers_global_loss_and_writes_outputs(tiny_config):
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=3")
    summary = run_experiment(cfg, loggers=[])
    out = Path(cfg.output_dir)
    assert summary["final"]["loss"] < summary["initial"]["loss"]
    assert json.loads((out / "summary.json").read_text())["final"] == summary["final"]
    assert set(summary["initial"]) == {"loss", "exact_match", "rouge_l"}
    assert "algorithm:" in (out / "config.yaml").read_text()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [0, 1, 2, 3]
    assert "eval/global_test/rouge_l" in rounds[-1] and "eval/local_test/rouge_l_p10" in rounds[-1]
    assert "eval/global_val/rouge_l" not in rounds[-1]  # the tiny config has no validation sets
    assert (out / "rounds.png").stat().st_size > 0
    assert {e["client_id"] for e in events if e["event"] == "client"} == {0, 1, 2, 3}
    prompt, meta = load_prompt(out / "global_prompt.safetensors")
    assert prompt.shape == (cfg.model.num_virtual_tokens, 64) and meta["round"] == "3"


def test_same_config_and_seed_give_the_same_prompt(tiny_config, tmp_path):
    prompts = []
    for i in range(2):
        cfg = tiny_config("runtime.executor=local", "eval.local=false", f"output_dir={tmp_path / str(i)}")
        run_experiment(cfg, loggers=[])
        prompts.append(load_prompt(Path(cfg.output_dir) / "global_prompt.safetensors")[0])
    assert torch.equal(prompts[0], prompts[1])


def test_fedsgd_and_adam_server_run(tiny_config):
    cfg = tiny_config("runtime.executor=local", "algorithm.name=fedsgd", "algorithm.rounds=3",
                      "algorithm.server_optimizer.name=adam", "algorithm.server_optimizer.lr=0.1",
                      "eval.local=false")
    summary = run_experiment(cfg, loggers=[])
    assert summary["final"]["loss"] < summary["initial"]["loss"]


class CrashAt:
    """A logger that fails at a given round, standing in for a crash mid-run."""

    def __init__(self, round_idx):
        self.round_idx = round_idx

    def log(self, event):
        if event.get("event") == "round" and event["round"] == self.round_idx:
            raise RuntimeError("simulated crash")

    def close(self):
        pass


def test_a_crash_mid_run_leaves_the_last_prompt_and_metrics_usable(tiny_config):
    import pytest

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=4", "eval.local=false")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg, loggers=[CrashAt(3)])
    out = Path(cfg.output_dir)
    prompt, meta = load_prompt(out / "global_prompt.safetensors")
    assert meta["round"] == "2" and torch.isfinite(prompt).all()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines if '"round"' in line][-1] == 2
    assert not (out / "summary.json").exists()


def test_communication_is_counted_per_client_per_round_and_in_total(tiny_config):
    """Each client a round dispatches to receives the global prompt (4 virtual tokens x 64 x 4
    bytes = 1 KiB) and each that reports sends back an update of the same size; clients the
    availability model drops before dispatch cost nothing."""
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=4", "algorithm.clients_per_round=3",
                      "availability.dropout=0.4", "eval.eval_every=4")
    summary = run_experiment(cfg, loggers=[])
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round" and e["round"] > 0]
    prompt_bytes = 4 * 64 * 4
    assert summary["communication"]["prompt_bytes"] == prompt_bytes
    down = up = 0
    for r in rounds:
        reported = len(r["finished"])
        assert r["comm/down_bytes"] == r["comm/up_bytes"] == reported * prompt_bytes
        down, up = down + r["comm/down_bytes"], up + r["comm/up_bytes"]
        assert (r["comm/down_bytes_total"], r["comm/up_bytes_total"]) == (down, up)
        clients = [e for e in events if e["event"] == "client" and e["round"] == r["round"] and "train/loss" in e]
        assert sorted(e["client_id"] for e in clients) == r["finished"]
        assert all(e["comm/up_bytes"] == e["comm/down_bytes"] == prompt_bytes for e in clients)
    assert any(r["train/dropped"] for r in rounds)  # the dropout did drop someone
    assert (summary["communication"]["down_bytes"], summary["communication"]["up_bytes"]) == (down, up)


def test_the_console_says_what_the_first_evaluation_scores_before_it_starts(tiny_config):
    """Round 0 is the longest silence of a run (every global and local example scored): a line
    says what is being scored before it starts."""
    import io

    from rayfed.outputs.loggers import ConsoleLogger

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=1")
    stream = io.StringIO()
    run_experiment(cfg, loggers=[ConsoleLogger(cfg.algorithm.rounds, stream)])
    lines = stream.getvalue().splitlines()
    assert lines[0] == "round 0: scoring the untrained prompt (16 global examples; 16 of the 4 clients' own)"
    assert lines[1].startswith("round   0/1")
