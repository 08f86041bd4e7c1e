"""A client worker: holds client shards and a resident frozen backbone; runs local work.

Plain Python: the Ray backend wraps it as an actor (one client per actor by default); the
in-process executor uses one worker for every client. Only prompts, counts and metrics go in
and out; the model never leaves.
"""

from __future__ import annotations

import torch

from rayfed.algorithms import build_algorithm
from rayfed.config import ExperimentConfig
from rayfed.core.sampling import derive_seed
from rayfed.data.formatting import TokenizedExample, tokenize
from rayfed.data.partition import ClientData
from rayfed.local import evaluate, steps_for, train_prompt
from rayfed.model import build_prompt_model
from rayfed.types import ClientUpdate, EvalSums, Example


class ClientWorker:
    """Local training and evaluation for the clients it hosts.

    Args:
        cfg: The experiment config.
        shards: The clients this worker hosts.
        global_test: The global test set (each worker evaluates a slice of it).
        torch_threads: Threads for torch in this process (None: leave torch's default).
    """

    def __init__(self, cfg: ExperimentConfig, shards: list[ClientData], global_test: list[Example],
                 torch_threads: int | None = None):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        use_gpu = cfg.runtime.num_gpus_per_client > 0 and torch.cuda.is_available()
        self.cfg = cfg
        self.model = build_prompt_model(cfg.model, "cuda" if use_gpu else "cpu", seed=cfg.seed)
        self.algorithm = build_algorithm(cfg.algorithm)
        self.train = {c.client_id: self._tokenize(c.train) for c in shards}
        self.test = {c.client_id: self._tokenize(c.test) for c in shards}
        self.global_test = self._tokenize(global_test)

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

    def personalize(self, client_id: int, global_prompt: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Fine-tune the global prompt on the client's train split (with the l2 pull toward it,
        if configured); return the local prompt and its mean training loss."""
        z = self.cfg.personalize
        train = self.train[client_id]
        return train_prompt(
            self.model, train, global_prompt, optimizer=z.optimizer,
            num_steps=steps_for(len(train), z.batch_size, None, z.local_epochs), batch_size=z.batch_size,
            seed=derive_seed(self.cfg.seed, "personalize", client_id),
            l2_reference=global_prompt if z.l2_strength > 0 else None, l2_strength=z.l2_strength)

    def evaluate_personalized(self, client_id: int, prompt: torch.Tensor) -> tuple[EvalSums, EvalSums]:
        """A client's own prompt on its test split (personalization) and on the whole global
        test set (robustness)."""
        return self._evaluate(self.test[client_id], prompt), self._evaluate(self.global_test, prompt)

    def evaluate_local(self, client_id: int, prompt: torch.Tensor) -> EvalSums:
        return self._evaluate(self.test[client_id], prompt)

    def evaluate_global(self, prompt: torch.Tensor, shard: int, num_shards: int) -> EvalSums:
        """Evaluate every ``num_shards``-th global test example starting at ``shard``."""
        return self._evaluate(self.global_test[shard::num_shards], prompt)

    def _evaluate(self, data: list[TokenizedExample], prompt: torch.Tensor) -> EvalSums:
        e = self.cfg.eval
        return evaluate(self.model, data, prompt, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens)
