"""A client worker: holds the shards of many clients and one resident frozen backbone.

Plain Python: the Ray backend wraps it as an actor (``runtime.num_workers`` of them, each
hosting the clients ``rayfed.runtime.placement`` assigns it); the in-process executor uses one
worker for every client. Only prompts, counts and metrics go in and out; the model never
leaves. Every method that concerns one client takes its id first, and :meth:`ClientWorker.each`
runs one of them for many clients in one call, so executors dispatch them all the same way.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rayfed.algorithms.base import Algorithm
from rayfed.core.sampling import derive_seed
from rayfed.data.formatting import TokenizedExample, tokenize
from rayfed.data.partition import ClientData
from rayfed.errors import UserError
from rayfed.local.evaluation import evaluate_many
from rayfed.local.prompt_map import nearest_tokens
from rayfed.local.training import by_epoch, epoch_job, train_lockstep
from rayfed.model.prompt_model import PROMPT_TUNING, build_prompt_model
from rayfed.names import GLOBAL_SPLITS
from rayfed.personalization.settings import PersonalizeSettings
from rayfed.runtime.machine import machine
from rayfed.settings import EvalSettings, ModelSettings, WorkerSettings
from rayfed.types import ClientUpdate, EvalSums, Example


def require_cuda(client_ids: list[int]) -> None:
    """Stop a worker that was given a GPU share but whose torch sees no CUDA device, naming it
    and the key, instead of training on the CPU in silence.

    Raises:
        UserError: no CUDA device visible to this process.
    """
    if torch.cuda.is_available():
        return
    why = ("this torch is a CPU build (torch.version.cuda is None)" if torch.version.cuda is None else
           f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no device "
           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}: a driver missing, or no GPU here)")
    hosted = f"clients {client_ids[0]}-{client_ids[-1]}" if len(client_ids) > 1 else f"client {client_ids[0]}"
    raise UserError(f"the worker hosting {hosted} on {socket.gethostname()} was given a GPU share "
                    f"(runtime.num_gpus_per_worker > 0) but finds no CUDA: {why}. Install a CUDA build of torch on "
                    f"the GPU nodes, or set runtime.num_gpus_per_worker=0 to train on CPUs")


class ClientWorker:
    """Local training and evaluation for the clients it hosts.

    Args:
        model: The backbone and the soft prompt's initialization.
        settings: Seed, tokenization limits, evaluation and batching settings.
        algorithm: The federated algorithm (what a client computes in a round).
        shards: The clients this worker hosts.
        global_sets: The global evaluation sets by split (``global_test``, ``global_val``).
        torch_threads: Threads for torch in this process (None: leave torch's default).
    """

    def __init__(self, model: ModelSettings, settings: WorkerSettings, algorithm: Algorithm,
                 shards: list[ClientData], global_sets: dict[str, list[Example]], torch_threads: int | None = None):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if settings.use_gpu:
            require_cuda([c.client_id for c in shards])
        self.settings = settings
        self.model = build_prompt_model(model, "cuda" if settings.use_gpu else "cpu", seed=settings.seed)
        self.algorithm = algorithm
        self.train = {c.client_id: self._tokenize(c.train) for c in shards}
        self.local = {"local_val": {c.client_id: self._tokenize(c.val) for c in shards},
                      "local_test": {c.client_id: self._tokenize(c.test) for c in shards}}
        self.global_sets = {split: self._tokenize(examples) for split, examples in global_sets.items()}
        # Told how many clients each call of `each` has finished (rayfed.runtime.progress).
        self.on_clients_done: Callable[[int], None] | None = None

    def _tokenize(self, examples) -> list[TokenizedExample]:
        s = self.settings
        return tokenize(examples, self.model.tokenizer, s.max_source_tokens, s.max_target_tokens)

    def each(self, method: str, args_by_client: dict[int, tuple]) -> dict[int, Any]:
        """``self.method(client_id, *args)`` for each hosted client, ids ascending: one call per
        worker per phase, however many clients it hosts. With ``batch_clients`` set the
        methods that have a batched twin (``_many_<method>``) run every client in lockstep."""
        args_by_client = dict(sorted(args_by_client.items()))
        many = getattr(self, f"_many_{method}", None)
        report = self.on_clients_done or (lambda n: None)
        if many is not None and self.settings.batch_clients and len(args_by_client) > 1:
            results = many(args_by_client)  # in lockstep: all finish together
            report(len(results))
            return results
        results = {}
        for cid, args in args_by_client.items():
            results[cid] = getattr(self, method)(cid, *args)
            report(1)
        return results

    def ready(self) -> list[int]:
        """The client ids hosted here (also a cheap readiness probe)."""
        return sorted(self.train)

    def device_stats(self) -> dict[str, Any]:
        """Where this worker's backbone lives, its process id, and on a GPU the memory it has used (MiB)."""
        device = self.model.device
        stats: dict[str, Any] = {"device": str(device), "clients": len(self.train), "pid": os.getpid()}
        if device.type == "cuda":
            stats.update(gpu=torch.cuda.get_device_name(device),
                         max_allocated_mib=torch.cuda.max_memory_allocated(device) / 2**20,
                         reserved_mib=torch.cuda.memory_reserved(device) / 2**20)
        return stats

    def machine(self) -> dict[str, str]:
        """This worker's process and device (rayfed.runtime.machine)."""
        return machine(self.model.device)

    def initial_prompt(self) -> torch.Tensor:
        return self.model.get_prompt()

    def fit(self, client_id: int, global_prompt: torch.Tensor, round_idx: int) -> ClientUpdate:
        """One round of local work for ``client_id`` starting from ``global_prompt``."""
        return self._many_fit({client_id: (global_prompt, round_idx)})[client_id]

    def _many_fit(self, args_by_client: dict[int, tuple[torch.Tensor, int]]) -> dict[int, ClientUpdate]:
        ids = list(args_by_client)
        updates = self.algorithm.client_updates(
            self.model, [self.train[cid] for cid in ids], [args_by_client[cid][0] for cid in ids],
            [derive_seed(self.settings.seed, "client", args_by_client[cid][1], cid) for cid in ids],
            self.settings.max_batch_rows)
        return {cid: ClientUpdate(cid, delta, len(self.train[cid]), loss) for cid, (delta, loss) in zip(ids, updates)}

    def prompt_tokens(self, client_id: int, prompts: dict[str, torch.Tensor], k: int) -> dict[str, list[list[dict]]]:
        """Each prompt's virtual tokens' ``k`` nearest vocabulary tokens (rayfed.local.prompt_map), by
        label: ``[{"id", "token", "cosine"}, ...]`` per virtual token, best first. Any worker
        holds the vocabulary; the one hosting ``client_id`` answers. A prefix's virtual tokens are
        keys and values, not input embeddings: they have no nearest tokens (empty lists)."""
        if self.model.method != PROMPT_TUNING:
            return {label: [[] for _ in range(prompt.shape[0])] for label, prompt in prompts.items()}
        table = self.model.backbone.get_input_embeddings().weight.detach()
        out = {}
        for label, prompt in prompts.items():
            ids, cosines = nearest_tokens(table, prompt.to(table.device), k)
            out[label] = [[{"id": int(i), "token": self.model.tokenizer.decode([int(i)]), "cosine": round(float(c), 4)}
                           for i, c in zip(row_ids, row_cos)] for row_ids, row_cos in zip(ids.cpu(), cosines.cpu())]
        return out

    def personal_fit(self, client_id: int, personal: torch.Tensor, global_prompt: torch.Tensor,
                     round_idx: int) -> tuple[torch.Tensor, float]:
        """Ditto: one round of training of the client's own prompt (``personal``), pulled toward
        ``global_prompt``; its new value and mean loss."""
        return self._many_personal_fit({client_id: (personal, global_prompt, round_idx)})[client_id]

    def _many_personal_fit(self, args_by_client: dict[int, tuple[torch.Tensor, torch.Tensor, int]],
                           ) -> dict[int, tuple[torch.Tensor, float]]:
        ids = list(args_by_client)
        results = self.algorithm.personal_updates(  # type: ignore[attr-defined] - Ditto's
            self.model, [self.train[cid] for cid in ids], [args_by_client[cid][0] for cid in ids],
            [args_by_client[cid][1] for cid in ids],
            [derive_seed(self.settings.seed, "personal", args_by_client[cid][2], cid) for cid in ids],
            self.settings.max_batch_rows)
        return dict(zip(ids, results))

    def personalize(self, client_id: int, global_prompt: torch.Tensor, settings: PersonalizeSettings,
                    ) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
        """Fine-tune the global prompt on the client's train split (with the l2 pull toward it, if
        set). Returns the local prompt after each evaluated epoch and the mean train loss of each
        epoch; the batches depend only on (seed, client), not on which settings are searched."""
        return self._many_personalize({client_id: (global_prompt, settings)})[client_id]

    def _many_personalize(self, args_by_client: dict[int, tuple[torch.Tensor, PersonalizeSettings]],
                          ) -> dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]]:
        z = next(iter(args_by_client.values()))[1]
        if any(s != z for _, s in args_by_client.values()):  # one optimizer per lockstep; not so in a phase
            return {cid: self._many_personalize({cid: args})[cid] for cid, args in args_by_client.items()}
        jobs = {cid: epoch_job(self.train[cid], prompt, epochs=z.epochs, keep_epochs=z.eval_epochs(),
                               batch_size=z.batch_size, seed=derive_seed(self.settings.seed, "personalize", cid))
                for cid, (prompt, _) in args_by_client.items()}
        results = train_lockstep(self.model, list(jobs.values()), optimizer=z.optimizer, l2_strength=z.l2_strength,
                                 max_rows=self.settings.max_batch_rows)
        return {cid: by_epoch(result, job, z.epochs) for (cid, job), result in zip(jobs.items(), results)}

    def evaluate_client(self, client_id: int, prompts: dict[Any, torch.Tensor], splits: tuple[str, ...],
                        evaluation: EvalSettings, global_subsample: int | None = None,
                        ) -> dict[Any, dict[str, EvalSums]]:
        """Score each of a client's prompts (keyed by any label) on the given splits: its own
        ``local_val``/``local_test`` and the ``global_val``/``global_test`` sets, the latter on a
        seeded per-client subsample of ``global_subsample`` examples if set. Every (prompt,
        split) pair shares the evaluation passes."""
        return self._many_evaluate_client({client_id: (prompts, splits, evaluation, global_subsample)})[client_id]

    def _many_evaluate_client(self, args_by_client: dict[int, tuple[dict[Any, torch.Tensor], tuple[str, ...],
                                                                      EvalSettings, int | None]],
                              ) -> dict[int, dict[Any, dict[str, EvalSums]]]:
        e = next(iter(args_by_client.values()))[2]
        if any(args[2] != e for args in args_by_client.values()):  # one pooled pass per setting; not so in a phase
            return {cid: self._many_evaluate_client({cid: args})[cid] for cid, args in args_by_client.items()}
        keys, jobs, ids = [], [], []
        for cid, (prompts, splits, _, subsample) in args_by_client.items():
            data = {split: self._client_split(cid, split, subsample) for split in splits}
            for key, prompt in prompts.items():
                for split in splits:
                    if data[split][0]:
                        keys.append((cid, key, split))
                        jobs.append((data[split][0], prompt))
                        ids.append(data[split][1])
        sums = evaluate_many(self.model, jobs, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens, ids=ids)
        out: dict[int, dict[Any, dict[str, EvalSums]]] = {
            cid: {key: {} for key in prompts} for cid, (prompts, *_) in args_by_client.items()}
        for (cid, key, split), result in zip(keys, sums):
            out[cid][key][split] = result
        return out

    def evaluate_global(self, prompt: torch.Tensor, split: str, evaluation: EvalSettings, shard: int,
                        num_shards: int) -> dict[int, EvalSums]:
        """Evaluate pieces ``shard, shard + num_shards, ...`` of a global set, by piece index.

        A piece is ``evaluation.batch_size`` consecutive examples whatever the number of workers,
        so each piece's numbers, and their sum in piece order, do not depend on how many share them.
        """
        data, e = self.global_sets[split], evaluation

        def piece_of(piece: int) -> EvalSums:
            span = range(piece * e.batch_size, min((piece + 1) * e.batch_size, len(data)))
            return evaluate_many(self.model, [([data[i] for i in span], prompt)], batch_size=e.batch_size,
                                 max_new_tokens=e.max_new_tokens, ids=[span])[0]

        return {piece: piece_of(piece) for piece in range(shard, -(-len(data) // e.batch_size), num_shards)}

    def _client_split(self, client_id: int, split: str, global_subsample: int | None,
                      ) -> tuple[list[TokenizedExample], list[int]]:
        """A client's examples of ``split`` and their ids (positions in the split): its own split,
        or the global set, whole or the client's seeded subsample of it."""
        if split in self.local:
            own = self.local[split][client_id]
            return own, list(range(len(own)))
        full = self.global_sets[split]
        if global_subsample is None or global_subsample >= len(full):
            return full, list(range(len(full)))
        rng = np.random.default_rng(derive_seed(self.settings.seed, "subsample", client_id, GLOBAL_SPLITS.index(split)))
        chosen = [int(i) for i in sorted(rng.choice(len(full), size=global_subsample, replace=False))]
        return [full[i] for i in chosen], chosen
