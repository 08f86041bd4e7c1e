"""The driver: owns the global prompt and server optimizer; runs one round at a time.

A round reads as a script: sample clients, dispatch local work, aggregate, step the server.
Where the work runs is the executor's business (in-process here, Ray actors in
``ray_backend``), so both give the same numbers. The driver also forms the global/local
interpolations during personalization.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch

from rayfed.algorithms.base import Algorithm
from rayfed.core.availability import who_reports
from rayfed.core.compression import compress
from rayfed.core.interpolation import interpolate
from rayfed.core.sampling import sample_clients
from rayfed.core.server_optimizer import ServerOptimizer
from rayfed.errors import UserError
from rayfed.metrics import summarize_clients
from rayfed.names import DITTO, EVAL, metric_key
from rayfed.personalization.settings import PersonalizeSettings
from rayfed.runtime.machine import machine
from rayfed.runtime.worker import ClientWorker
from rayfed.settings import EvalSettings, RoundSettings
from rayfed.types import ClientUpdate, EvalSums, RoundResult


class NonFiniteError(UserError):
    """A client's training produced a NaN or infinite loss or update."""

def payload_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor's values take on the wire (``numel x element size``): what a round's
    communication counts, without the transport's framing (Ray's or any other)."""
    return tensor.numel() * tensor.element_size()


class Executor(Protocol):
    """Runs client work somewhere and returns plain results; any ``ClientWorker`` method can be
    dispatched, so a new phase adds a worker method, not an executor method."""

    def initial_prompt(self) -> torch.Tensor: ...

    def machines(self) -> list[dict[str, str]]:
        """Where each worker computes (rayfed.runtime.machine.machine), in worker order."""
        ...

    def each(self, method: str, args_by_client: dict[int, tuple]) -> dict[int, Any]:
        """``worker.method(client_id, *args)`` for every client, on the worker hosting it."""
        ...

    def sharded(self, method: str, args: tuple) -> list[Any]:
        """``worker.method(*args, shard, num_shards)`` once on each worker: a split of the work."""
        ...


class InProcessExecutor:
    """Every client in this process, sharing one backbone: for debugging and as the reference."""

    def __init__(self, worker: ClientWorker):
        self.worker = worker

    def initial_prompt(self) -> torch.Tensor:
        return self.worker.initial_prompt()

    def machines(self) -> list[dict[str, str]]:
        return [self.worker.machine()]

    def each(self, method: str, args_by_client: dict[int, tuple]) -> dict[int, Any]:
        return self.worker.each(method, args_by_client)

    def sharded(self, method: str, args: tuple) -> list[Any]:
        return [getattr(self.worker, method)(*args, 0, 1)]


class Driver:
    """Federated training state, the round loop's body, and personalization's interpolation."""

    def __init__(self, settings: RoundSettings, algorithm: Algorithm, executor: Executor):
        self.settings = settings
        self.executor = executor
        self.algorithm = algorithm
        self.server = ServerOptimizer(executor.initial_prompt(), settings.server_optimizer)
        self.client_ids = list(range(settings.num_clients))
        self.local_splits, self.global_splits = settings.local_splits, settings.global_splits
        # Each client's top-k error-feedback residual: what its compressed updates left out so far.
        self.residuals: dict[int, torch.Tensor] = {}
        # Ditto: each client's own prompt, from the first round it was picked in.
        self.personal: dict[int, torch.Tensor] = {}

    def global_prompt(self) -> torch.Tensor:
        return self.server.global_prompt()

    def machines(self) -> dict[str, Any]:
        """Where this driver and each worker compute: ``{"driver": m, "workers": [m, ...]}``."""
        return {"driver": machine(), "workers": self.executor.machines()}

    def state(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs from the driver: the global prompt, the server
        optimizer's state and the clients' error-feedback residuals (``residual/<id>``). Clients
        keep nothing else between rounds, and every seed derives from the round, so this and the
        round index continue the run bit for bit."""
        return {**self.server.state(), **{f"residual/{cid}": r for cid, r in sorted(self.residuals.items())},
                **{f"personal/{cid}": v for cid, v in sorted(self.personal.items())}}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.server.load_state({k: v for k, v in state.items() if not k.startswith(("residual/", "personal/"))})
        for prefix, records in (("residual/", self.residuals), ("personal/", self.personal)):
            records.clear()
            records.update({int(k.removeprefix(prefix)): v.clone() for k, v in state.items() if k.startswith(prefix)})

    def _compressed(self, updates: list[ClientUpdate]) -> tuple[list[ClientUpdate], dict[int, int]]:
        """Each update as the server decodes it after ``communication.compress`` (what the client
        sends, simulated here, where its residual is kept), and the bytes each one took."""
        s, out, sizes = self.settings, [], {}
        for u in updates:
            decoded, residual, sizes[u.client_id] = compress(u.delta, s.compress, residual=self.residuals.get(
                u.client_id), topk_fraction=s.topk_fraction)
            if residual is not None:
                self.residuals[u.client_id] = residual
            out.append(replace(u, delta=decoded))
        return out, sizes

    def splits(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The non-empty ``(local splits, global splits)`` of this run's data."""
        return self.local_splits, self.global_splits

    def run_round(self, round_idx: int) -> RoundResult:
        """Sample, drop the clients that would not report, fit, aggregate, step. Returns the
        round's training metrics and who was sampled, finished and dropped."""
        start = time.perf_counter()
        s = self.settings
        sampled = sample_clients(s.num_clients, s.clients_per_round, s.seed, round_idx)
        finished, dropped = who_reports(sampled, s.availability, s.seed, round_idx)
        quorum = s.availability.min_clients
        updates, sent = [], 0
        if len(finished) >= quorum:
            prompt = self.server.global_prompt()
            sent = len(finished)  # the clients the global prompt went to
            results = self.executor.each("fit", {cid: (prompt, round_idx) for cid in finished})
            # runtime.on_client_failure=drop: the clients of a worker that died are missing.
            dropped.update({cid: "failure" for cid in finished if cid not in results})
            finished, updates = sorted(results), list(results.values())
            if getattr(self.algorithm, "personal", False):  # Ditto: each client's own prompt trains too
                own = self.executor.each("personal_fit", {cid: (self.personal.get(cid, prompt), prompt, round_idx)
                                                          for cid in finished})
                self.personal.update({cid: v for cid, (v, _) in own.items()})
        updates, up = self._compressed(updates)
        clients = {"sampled": sampled, "finished": finished, "dropped": sorted(dropped),
                   "dropped_reasons": {str(c): r for c, r in sorted(dropped.items())}}
        down = payload_bytes(self.server.global_prompt())
        metrics = {"train/sampled": float(len(sampled)), "train/clients": float(len(finished)),
                   "train/dropped": float(len(dropped)), "comm/down_bytes": float(sent * down),
                   "comm/up_bytes": float(sum(up.values()))}
        if len(finished) < quorum:  # below quorum: the global prompt stays as it is
            metrics.update({"train/skipped": 1.0, "time/round_s": time.perf_counter() - start})
            return RoundResult(round_idx, metrics, {}, clients)
        for u in updates:  # stop before a NaN reaches the global prompt; the last checkpoint stays good
            if not (math.isfinite(u.train_loss) and bool(torch.isfinite(u.delta).all())):
                raise NonFiniteError(
                    f"round {round_idx}, client {u.client_id}: the training loss is {u.train_loss} and the update "
                    f"is {'finite' if bool(torch.isfinite(u.delta).all()) else 'not finite'}; lower "
                    f"algorithm.client_optimizer.lr ({self.settings.client_lr})")
        pseudo_gradient = self.algorithm.aggregate(updates)
        self.server.step(pseudo_gradient)
        weights = sum(u.num_examples for u in updates)
        metrics.update({
            "train/loss": sum(u.train_loss * u.num_examples for u in updates) / weights,
            "train/update_norm": float(pseudo_gradient.norm()),
            "time/round_s": time.perf_counter() - start,
        })
        per_client = {u.client_id: {"train/loss": u.train_loss, "comm/down_bytes": float(down),
                                    "comm/up_bytes": float(up[u.client_id])} for u in updates}
        return RoundResult(round_idx, metrics, per_client, clients)

    def evaluate(self, round_idx: int) -> RoundResult:
        """The global prompt on the global sets and, if enabled, on every client's own splits."""
        start = time.perf_counter()
        prompt = self.server.global_prompt()
        metrics: dict[str, float] = {}
        examples: list[tuple] = []
        for split in self.global_splits:
            sums = self.evaluate_global(prompt, split, self.settings.eval)
            metrics.update({metric_key(split, k, phase=EVAL): v for k, v in sums.means().items()})
            examples += [(-1, split, round_idx, 1.0, *ex) for ex in sums.examples]
        per_client: dict[int, dict[str, float]] = {}
        if self.settings.evaluate_clients:
            scores = self.evaluate_clients({cid: {"global": prompt} for cid in self.client_ids}, self.local_splits,
                                           self.settings.eval)
            per_client = {cid: {metric_key(split, k, phase=EVAL): v for split, sums in s["global"].items()
                                for k, v in sums.means().items()} for cid, s in scores.items()}
            examples += [(cid, split, round_idx, 1.0, *ex) for cid, s in sorted(scores.items())
                         for split, sums in s["global"].items() for ex in sums.examples]
            for split in self.local_splits:
                metrics.update(summarize_clients(per_client, f"{EVAL}/{split}"))
        personal: tuple[tuple, ...] = ()
        if getattr(self.algorithm, "personal", False) and self.settings.evaluate_clients:  # eval.local
            ditto, personal = self._evaluate_personal(prompt, round_idx)
            metrics.update(ditto)
        metrics["time/eval_s"] = time.perf_counter() - start
        return RoundResult(round_idx, metrics, per_client, examples=tuple(examples), ditto_examples=personal)

    def _evaluate_personal(self, global_prompt: torch.Tensor, round_idx: int) -> tuple[dict[str, float], tuple]:
        """Ditto's personal prompts (the global one for a client not picked yet) on every client's
        own splits and the global sets (whole, or each client's ``eval.ditto_global_examples``):
        ``ditto/{split}/{metric}_{stat}`` over clients, and every scored example as a row
        (client_id, split, round, 1.0, example_id, loss, exact_match, rouge_l)."""
        splits = (*self.local_splits, *self.global_splits)
        scores = self.evaluate_clients({cid: {"own": self.personal.get(cid, global_prompt)} for cid in self.client_ids},
                                       splits, self.settings.eval, self.settings.ditto_global_examples)
        per_client = {cid: {metric_key(split, k, phase=DITTO): v for split, sums in s["own"].items()
                            for k, v in sums.means().items()} for cid, s in scores.items()}
        out: dict[str, float] = {}
        for split in splits:
            out.update(summarize_clients(per_client, f"{DITTO}/{split}"))
        rows = tuple((cid, split, round_idx, 1.0, *ex) for cid, s in sorted(scores.items())
                     for split, sums in s["own"].items() for ex in sums.examples)
        return out, rows

    def evaluate_global(self, prompt: torch.Tensor, split: str, evaluation: EvalSettings) -> EvalSums:
        """One prompt on a whole global set, its pieces spread over the workers."""
        pieces: dict[int, EvalSums] = {}
        for part in self.executor.sharded("evaluate_global", (prompt, split, evaluation)):
            pieces.update(part)
        return sum((pieces[i] for i in sorted(pieces)), EvalSums())

    def evaluate_clients(self, prompts: dict[int, dict[Any, torch.Tensor]], splits: Sequence[str],
                         evaluation: EvalSettings, global_subsample: int | None = None,
                         ) -> dict[int, dict[Any, dict[str, EvalSums]]]:
        """Each client scores its own prompts (keyed by any label) on the given splits."""
        return self.executor.each("evaluate_client", {cid: (p, tuple(splits), evaluation, global_subsample)
                                                      for cid, p in prompts.items()})

    def prompt_tokens(self, prompts: dict[int, dict[str, torch.Tensor]], k: int) -> dict[int, dict[str, list]]:
        """Each client's worker reads the nearest vocabulary tokens of the prompts given for it."""
        return self.executor.each("prompt_tokens", {cid: (p, k) for cid, p in prompts.items()})

    def personalize_train(self, global_prompt: torch.Tensor, settings: PersonalizeSettings,
                          ) -> dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]]:
        """Every client fine-tunes ``global_prompt``: its local prompt and train loss per epoch."""
        return self.executor.each("personalize", {cid: (global_prompt, settings) for cid in self.client_ids})

    def personalize_evaluate(self, global_prompt: torch.Tensor, local_prompts: dict[int, torch.Tensor],
                             ratios: Sequence[float], splits: Sequence[str], evaluation: EvalSettings,
                             global_subsample: int | None) -> dict[int, dict[float, dict[str, EvalSums]]]:
        """Score ``(1 - r) * global + r * local`` for every client and ratio ``r`` on ``splits``."""
        prompts = {cid: {r: interpolate(global_prompt, local, r) for r in ratios}
                   for cid, local in local_prompts.items()}
        return self.evaluate_clients(prompts, splits, evaluation, global_subsample)
