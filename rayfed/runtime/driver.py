"""The driver: owns the global prompt and server optimizer; runs one round at a time.

A round reads as a script: sample clients, dispatch local work, aggregate, step the server.
Where the work runs is the executor's business (in-process here, Ray actors in
``ray_backend``), so both give the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import torch

from rayfed.algorithms import build_algorithm
from rayfed.config import ExperimentConfig
from rayfed.core.interpolation import interpolate
from rayfed.core.sampling import sample_clients
from rayfed.core.server_optimizer import ServerOptimizer
from rayfed.metrics import distribution
from rayfed.runtime.worker import ClientWorker
from rayfed.types import ClientUpdate, EvalSums, RoundResult


class Executor(Protocol):
    """Runs client work somewhere and returns plain results."""

    def initial_prompt(self) -> torch.Tensor: ...
    def fit(self, client_ids: Sequence[int], prompt: torch.Tensor, round_idx: int) -> list[ClientUpdate]: ...
    def evaluate_global(self, prompt: torch.Tensor) -> EvalSums: ...
    def evaluate_local(self, client_ids: Sequence[int], prompt: torch.Tensor) -> dict[int, EvalSums]: ...
    def personalize(self, client_ids: Sequence[int], prompt: torch.Tensor) -> dict[int, tuple[torch.Tensor, float]]: ...
    def evaluate_personalized(self, prompts: dict[int, torch.Tensor]) -> dict[int, tuple[EvalSums, EvalSums]]: ...


class InProcessExecutor:
    """Every client in this process, sharing one backbone: for debugging and as the reference."""

    def __init__(self, worker: ClientWorker):
        self.worker = worker

    def initial_prompt(self) -> torch.Tensor:
        return self.worker.initial_prompt()

    def fit(self, client_ids: Sequence[int], prompt: torch.Tensor, round_idx: int) -> list[ClientUpdate]:
        return [self.worker.fit(cid, prompt, round_idx) for cid in client_ids]

    def evaluate_global(self, prompt: torch.Tensor) -> EvalSums:
        return self.worker.evaluate_global(prompt, 0, 1)

    def evaluate_local(self, client_ids: Sequence[int], prompt: torch.Tensor) -> dict[int, EvalSums]:
        return {cid: self.worker.evaluate_local(cid, prompt) for cid in client_ids}

    def personalize(self, client_ids: Sequence[int], prompt: torch.Tensor) -> dict[int, tuple[torch.Tensor, float]]:
        return {cid: self.worker.personalize(cid, prompt) for cid in client_ids}

    def evaluate_personalized(self, prompts: dict[int, torch.Tensor]) -> dict[int, tuple[EvalSums, EvalSums]]:
        return {cid: self.worker.evaluate_personalized(cid, p) for cid, p in prompts.items()}


class Driver:
    """Federated training state and the round loop's body."""

    def __init__(self, cfg: ExperimentConfig, executor: Executor):
        self.cfg = cfg
        self.executor = executor
        self.algorithm = build_algorithm(cfg.algorithm)
        self.server = ServerOptimizer(executor.initial_prompt(), cfg.algorithm.server_optimizer)

    def global_prompt(self) -> torch.Tensor:
        return self.server.global_prompt()

    def run_round(self, round_idx: int) -> RoundResult:
        """Sample, fit, aggregate, step. Returns the round's training metrics."""
        start = time.perf_counter()
        p, a = self.cfg.partition, self.cfg.algorithm
        client_ids = sample_clients(p.num_clients, a.clients_per_round, self.cfg.seed, round_idx)
        updates = self.executor.fit(client_ids, self.server.global_prompt(), round_idx)
        pseudo_gradient = self.algorithm.aggregate(updates)
        self.server.step(pseudo_gradient)
        weights = sum(u.num_examples for u in updates)
        metrics = {
            "train/loss": sum(u.train_loss * u.num_examples for u in updates) / weights,
            "train/clients": float(len(updates)),
            "train/update_norm": float(pseudo_gradient.norm()),
            "time/round_s": time.perf_counter() - start,
        }
        return RoundResult(round_idx, metrics, {u.client_id: {"train/loss": u.train_loss} for u in updates})

    def evaluate(self, round_idx: int) -> RoundResult:
        """The global prompt on the global test set and, if enabled, on every client's test split."""
        start = time.perf_counter()
        prompt = self.server.global_prompt()
        metrics = {f"eval/global/{k}": v for k, v in self.executor.evaluate_global(prompt).means().items()}
        per_client: dict[int, dict[str, float]] = {}
        if self.cfg.eval.local:
            local = self.executor.evaluate_local(range(self.cfg.partition.num_clients), prompt)
            per_client = {cid: {f"eval/local/{k}": v for k, v in s.means().items()}
                          for cid, s in sorted(local.items())}
            metrics.update(summarize_clients(per_client, "eval/local"))
        metrics["time/eval_s"] = time.perf_counter() - start
        return RoundResult(round_idx, metrics, per_client)

    def personalize(self, round_idx: int) -> RoundResult:
        """Every client personalizes the global prompt; each interpolation ratio alpha is scored
        on the client's own test split (``local``) and on the global test set (``global``)."""
        start = time.perf_counter()
        global_prompt = self.server.global_prompt()
        client_ids = range(self.cfg.partition.num_clients)
        trained = self.executor.personalize(client_ids, global_prompt)
        metrics = {"personalize/train_loss": sum(loss for _, loss in trained.values()) / len(trained)}
        per_client: dict[int, dict[str, float]] = {cid: {} for cid in trained}
        for alpha in self.cfg.personalize.alphas:
            prompts = {cid: interpolate(global_prompt, local, alpha) for cid, (local, _) in trained.items()}
            for cid, (own, robust) in self.executor.evaluate_personalized(prompts).items():
                for split, sums in (("local", own), ("global", robust)):
                    per_client[cid].update({f"{alpha_key(alpha)}/{split}/{k}": v for k, v in sums.means().items()})
            for split in ("local", "global"):
                metrics.update(summarize_clients(per_client, f"{alpha_key(alpha)}/{split}"))
        metrics["time/personalize_s"] = time.perf_counter() - start
        return RoundResult(round_idx, metrics, per_client)


def summarize_clients(per_client: dict[int, dict[str, float]], prefix: str) -> dict[str, float]:
    """Mean, p10 and worst over clients of ``{prefix}/{loss,exact_match,rouge_l}``."""
    out: dict[str, float] = {}
    for name in ("loss", "exact_match", "rouge_l"):
        key = f"{prefix}/{name}"
        out.update(distribution([m[key] for m in per_client.values()], key))
    return out


def alpha_key(alpha: float) -> str:
    """Metric prefix of an interpolation ratio, e.g. ``personalize/alpha_0.5``."""
    return f"personalize/alpha_{alpha:g}"
