"""A client worker: holds client shards and a resident frozen backbone; runs local work.

Plain Python: the Ray backend wraps it as an actor (one client per actor by default); the
in-process executor uses one worker for every client. Only prompts, counts and metrics go in
and out; the model never leaves. Every method that concerns one client takes its id first, so
executors can dispatch any of them the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from rayfed.algorithms import build_algorithm
from rayfed.config import ExperimentConfig
from rayfed.core.sampling import derive_seed
from rayfed.data.formatting import TokenizedExample, tokenize
from rayfed.data.partition import ClientData
from rayfed.local import evaluate
from rayfed.metrics import GLOBAL_SPLITS
from rayfed.model import build_prompt_model
from rayfed.personalization import PersonalizeSettings, train_prompt_by_epoch
from rayfed.types import ClientUpdate, EvalSums, Example


class ClientWorker:
    """Local training and evaluation for the clients it hosts.

    Args:
        cfg: The experiment config.
        shards: The clients this worker hosts.
        global_sets: The global evaluation sets by split (``global_test``, ``global_val``).
        torch_threads: Threads for torch in this process (None: leave torch's default).
    """

    def __init__(self, cfg: ExperimentConfig, shards: list[ClientData], global_sets: dict[str, list[Example]],
                 torch_threads: int | None = None):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        use_gpu = cfg.runtime.num_gpus_per_client > 0 and torch.cuda.is_available()
        self.cfg = cfg
        self.model = build_prompt_model(cfg.model, "cuda" if use_gpu else "cpu", seed=cfg.seed)
        self.algorithm = build_algorithm(cfg.algorithm)
        self.train = {c.client_id: self._tokenize(c.train) for c in shards}
        self.local = {"local_val": {c.client_id: self._tokenize(c.val) for c in shards},
                      "local_test": {c.client_id: self._tokenize(c.test) for c in shards}}
        self.global_sets = {split: self._tokenize(examples) for split, examples in global_sets.items()}

    def _tokenize(self, examples) -> list[TokenizedExample]:
        d = self.cfg.data
        return tokenize(examples, self.model.tokenizer, d.max_source_tokens, d.max_target_tokens)

    def ready(self) -> list[int]:
        """The client ids hosted here (also a cheap readiness probe)."""
        return sorted(self.train)

    def initial_prompt(self) -> torch.Tensor:
        return self.model.get_prompt()

    def fit(self, client_id: int, global_prompt: torch.Tensor, round_idx: int) -> ClientUpdate:
        """One round of local work for ``client_id`` starting from ``global_prompt``."""
        seed = derive_seed(self.cfg.seed, "client", round_idx, client_id)
        delta, loss = self.algorithm.client_update(self.model, self.train[client_id], global_prompt, seed)
        return ClientUpdate(client_id, delta, len(self.train[client_id]), loss)

    def personalize(self, client_id: int, global_prompt: torch.Tensor, settings: PersonalizeSettings,
                    ) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
        """Fine-tune the global prompt on the client's train split (with the l2 pull toward it, if
        set). Returns the local prompt after each evaluated epoch and the mean train loss of each
        epoch; the batches depend only on (seed, client), not on which settings are searched."""
        return train_prompt_by_epoch(
            self.model, self.train[client_id], global_prompt, optimizer=settings.optimizer,
            epochs=settings.epochs, keep_epochs=settings.eval_epochs(), batch_size=settings.batch_size,
            seed=derive_seed(self.cfg.seed, "personalize", client_id), l2_strength=settings.l2_strength)

    def evaluate_client(self, client_id: int, prompts: dict[str, torch.Tensor], splits: tuple[str, ...],
                        global_subsample: int | None = None) -> dict[str, dict[str, EvalSums]]:
        """Score each of a client's prompts (keyed by any label) on the given splits: its own
        ``local_val``/``local_test`` and the ``global_val``/``global_test`` sets, the latter on a
        seeded per-client subsample of ``global_subsample`` examples if set."""
        data = {split: self._client_split(client_id, split, global_subsample) for split in splits}
        return {key: {split: self._evaluate(data[split], prompt) for split in splits if data[split]}
                for key, prompt in prompts.items()}

    def evaluate_global(self, prompt: torch.Tensor, split: str, shard: int, num_shards: int) -> EvalSums:
        """Evaluate every ``num_shards``-th example of a global set starting at ``shard``."""
        return self._evaluate(self.global_sets[split][shard::num_shards], prompt)

    def _client_split(self, client_id: int, split: str, global_subsample: int | None) -> list[TokenizedExample]:
        if split in self.local:
            return self.local[split][client_id]
        full = self.global_sets[split]
        if global_subsample is None or global_subsample >= len(full):
            return full
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "subsample", client_id, GLOBAL_SPLITS.index(split)))
        return [full[i] for i in sorted(rng.choice(len(full), size=global_subsample, replace=False))]

    def _evaluate(self, data: list[TokenizedExample], prompt: torch.Tensor) -> EvalSums:
        e = self.cfg.eval
        return evaluate(self.model, data, prompt, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens)
