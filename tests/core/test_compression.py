"""Compressed client updates: each method's decoded values and bytes by hand, top-k's error
feedback losing nothing over rounds, and compressed runs that still train, count their bytes and
resume bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rayfed.core.compression import compress
from rayfed.experiment import run_experiment


def test_each_method_decodes_what_it_sent_and_counts_its_bytes():
    x = torch.tensor([[0.5, -1.27, 0.003], [2.54, -0.001, 0.1]])
    assert torch.equal(compress(x, "none")[0], x) and compress(x, "none")[2] == 6 * 4
    decoded, _, size = compress(x, "fp16")
    assert torch.equal(decoded, x.half().float()) and size == 6 * 2
    decoded, _, size = compress(x, "int8")  # scale 2.54 / 127 = 0.02: 0.5 -> 25 steps, -1.27 -> -63.5 -> -64 (even)
    assert size == 6 + 4
    assert torch.allclose(decoded, torch.tensor([[25, -64, 0], [127, 0, 5]]) * 0.02, atol=1e-6)
    assert (decoded - x).abs().max() <= 0.02 / 2 + 1e-6
    decoded, residual, size = compress(x, "topk", topk_fraction=0.5)  # 3 of 6 values, 8 bytes each
    assert size == 3 * 8
    assert torch.equal(decoded, torch.tensor([[0.5, -1.27, 0.0], [2.54, 0.0, 0.0]]))
    assert torch.equal(residual, x - decoded)


def test_top_k_error_feedback_delivers_every_update_eventually():
    """What the server received over T rounds plus what the client still holds is the sum of
    the client's updates: error feedback delays values, never drops them."""
    gen = torch.Generator().manual_seed(0)
    updates = [torch.randn(4, 16, generator=gen) for _ in range(12)]
    residual, received = None, torch.zeros(4, 16)
    for update in updates:
        decoded, residual, size = compress(update, "topk", residual=residual, topk_fraction=0.1)
        assert size == math.ceil(0.1 * 64) * 8 and int((decoded != 0).sum()) == 7
        received += decoded
    assert torch.allclose(received + residual, torch.stack(updates).sum(0), atol=1e-5)


@pytest.mark.parametrize("method,per_client", [("fp16", 4 * 64 * 2), ("int8", 4 * 64 + 4), ("topk", 26 * 8)])
def test_a_compressed_run_trains_and_counts_the_compressed_bytes(tiny_config, method, per_client):
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=3", "eval.local=false",
                      f"communication.compress={method}")
    summary = run_experiment(cfg, loggers=[])
    assert summary["final"]["loss"] < summary["initial"]["loss"] - 0.3
    rounds = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    rounds = [e for e in rounds if e["event"] == "round" and e["round"] > 0]
    assert all(e["comm/up_bytes"] == len(e["finished"]) * per_client for e in rounds)
    assert all(e["comm/down_bytes"] == len(e["finished"]) * 4 * 64 * 4 for e in rounds)  # the prompt goes down whole


def test_an_unknown_compression_is_refused_naming_the_key(tiny_config):
    from rayfed.config import ConfigError

    with pytest.raises(ConfigError, match="communication.compress"):
        tiny_config("communication.compress=zip")
    with pytest.raises(ConfigError, match="communication.topk_fraction"):
        tiny_config("communication.topk_fraction=0")
