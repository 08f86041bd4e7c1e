"""Local prompt training: one client, or many clients in lockstep, one optimizer step for all of them.

The backbone is frozen and a client owns only its soft prompt, so the clients a worker hosts can
share a forward/backward: each row carries its own client's prompt, and the objective is the sum
of the clients' own objectives (mean loss over the client's batch, plus its l2 pull). A client's
gradient is then exactly its own, and since every prompt is a separate parameter of one
elementwise optimizer (SGD, Adam, AdamW), each is updated as its own optimizer would. A client
with fewer steps than the others stops taking part: its parameter gets no gradient, and torch
optimizers skip a parameter without one (no momentum, no step count, no weight decay).

A step's rows from several clients are sorted by length and run in a few forward passes of
similar length (``rayfed.local.lengths``), then one backward: padding every row to the longest of all
clients' rows would waste a quarter or more of the compute on real task mixes.

One client alone is the ordinary local training path (``train_prompt`` below and
personalization call this with a single job), so batched and per-client training run the same
code and differ only by floating-point rounding in the shared matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rayfed.core.regularization import l2_penalty
from rayfed.data.formatting import TokenizedExample
from rayfed.local.lengths import call_overhead_tokens, length_groups
from rayfed.local.loss import per_example_loss
from rayfed.model.prompt_model import PromptModel
from rayfed.settings import OptimizerSettings


def batches(n: int, batch_size: int, num_steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches for ``num_steps`` steps, walking through fresh permutations epoch by epoch."""
    out, order = [], np.empty(0, dtype=int)
    for _ in range(num_steps):
        if len(order) < min(batch_size, n):
            order = np.concatenate([order, rng.permutation(n)])
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def steps_for(n: int, batch_size: int, local_steps: int | None, local_epochs: int | None) -> int:
    return local_steps if local_steps is not None else int(local_epochs or 1) * math.ceil(n / batch_size)


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerSettings) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


@dataclass(frozen=True)
class PromptJob:
    """One client's local training.

    Attributes:
        data: The client's tokenized training examples.
        init_prompt: The prompt it starts from, ``[virtual, hidden]``.
        plan: Index batches into ``data``, one per step (``batches``).
        keep_steps: Step counts after which to return the prompt (0: the initial prompt).
        l2_reference: The prompt the l2 pull is toward (None: no pull).
    """

    data: Sequence[TokenizedExample]
    init_prompt: torch.Tensor
    plan: Sequence[np.ndarray]
    keep_steps: frozenset[int]
    l2_reference: torch.Tensor | None = None


@dataclass
class JobResult:
    prompts: dict[int, torch.Tensor]  # step count -> detached CPU prompt
    losses: list[float]  # mean batch loss of every step


def groups(jobs: Sequence[PromptJob], max_rows: int | None) -> Iterator[list[int]]:
    """Consecutive job indices whose widest batches together stay within ``max_rows`` rows
    (a job wider than that forms a group alone; None: every job in one group)."""
    if max_rows is None:
        max_rows = sum(max((len(b) for b in job.plan), default=0) for job in jobs)
    group: list[int] = []
    rows = 0
    for i, job in enumerate(jobs):
        width = max((len(b) for b in job.plan), default=0)
        if group and rows + width > max_rows:
            yield group
            group, rows = [], 0
        group.append(i)
        rows += width
    if group:
        yield group


def train_lockstep(model: PromptModel, jobs: Sequence[PromptJob], *, optimizer: OptimizerSettings,
                   l2_strength: float = 0.0, max_rows: int | None = None) -> list[JobResult]:
    """Train every job's prompt; jobs run together in groups of at most ``max_rows`` rows per pass
    (None: all together). Returns each job's kept prompts and per-step losses, in job order."""
    results: list[JobResult | None] = [None] * len(jobs)
    for group in groups(jobs, max_rows):
        for i, result in zip(group, _train_group(model, [jobs[i] for i in group], optimizer, l2_strength)):
            results[i] = result
    return results  # type: ignore[return-value]


def _train_group(model: PromptModel, jobs: Sequence[PromptJob], optimizer: OptimizerSettings,
                 l2_strength: float) -> list[JobResult]:
    device = model.device
    params = [torch.nn.Parameter(job.init_prompt.detach().to(device, torch.float32, copy=True)) for job in jobs]
    refs = [job.l2_reference.to(device) if job.l2_reference is not None and l2_strength > 0 else None
            for job in jobs]
    opt = make_optimizer(params, optimizer)
    results = [JobResult({0: job.init_prompt.detach().to("cpu", copy=True)} if 0 in job.keep_steps else {}, [])
               for job in jobs]
    for step in range(max(len(job.plan) for job in jobs)):
        active = [j for j, job in enumerate(jobs) if step < len(job.plan)]
        rows = [[jobs[j].data[i] for i in jobs[j].plan[step]] for j in active]
        prompts = torch.cat([params[j].unsqueeze(0).expand(len(r), -1, -1) for j, r in zip(active, rows)])
        losses = lockstep_losses(model, rows, prompts)
        objective = losses.new_zeros(())
        means = []
        for j, part in zip(active, losses.split([len(r) for r in rows])):
            mean = part.mean()
            means.append(mean)
            objective = objective + mean
            if refs[j] is not None:
                objective = objective + l2_penalty(params[j], refs[j], l2_strength)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        for j, mean in zip(active, torch.stack(means).tolist()):
            results[j].losses.append(mean)
            if step + 1 in jobs[j].keep_steps:
                results[j].prompts[step + 1] = params[j].detach().to("cpu", copy=True)
    return results


def lockstep_losses(model: PromptModel, rows: Sequence[Sequence[TokenizedExample]],
                    prompts: torch.Tensor) -> torch.Tensor:
    """Per-example losses of several clients' rows (flattened in order), ``prompts`` one per row.

    One client's rows are one pass, exactly as in per-client training. The rows of several
    clients are sorted by length and run in groups (``rayfed.local.lengths``), so that no row is padded
    to the longest of every client's; the losses come back in the rows' order.
    """
    flat = [ex for r in rows for ex in r]
    if len(rows) == 1:
        return per_example_loss(model, flat, prompts)
    order = sorted(range(len(flat)), key=lambda i: len(flat[i].source_ids) + len(flat[i].target_ids))
    widths = [(len(flat[i].source_ids) + len(flat[i].target_ids),) for i in order]
    groups = length_groups(widths, len(flat), call_overhead_tokens(model.device))
    if len(groups) == 1:  # e.g. on a GPU, where padding is nearly free and calls are not
        return per_example_loss(model, flat, prompts)
    parts = []
    for start, stop in groups:
        index = order[start:stop]
        rows_prompts = prompts[torch.tensor(index, device=prompts.device)]
        parts.append(per_example_loss(model, [flat[i] for i in index], rows_prompts))
    inverse = torch.empty(len(flat), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(flat))
    return torch.cat(parts)[inverse.to(prompts.device)]


def gradients_lockstep(model: PromptModel, client_batches: Sequence[Sequence[TokenizedExample]],
                       prompts: Sequence[torch.Tensor], max_rows: int | None = None,
                       ) -> list[tuple[torch.Tensor, float]]:
    """Each client's gradient of its mean batch loss at its prompt, and that loss: one pass per
    group of at most ``max_rows`` rows."""
    jobs = [PromptJob(b, p, [np.arange(len(b))], frozenset()) for b, p in zip(client_batches, prompts)]
    out: list[tuple[torch.Tensor, float]] = []
    for group in groups(jobs, max_rows):
        params = [torch.nn.Parameter(prompts[i].detach().to(model.device, torch.float32, copy=True)) for i in group]
        rows = [list(client_batches[i]) for i in group]
        stacked = torch.cat([p.unsqueeze(0).expand(len(r), -1, -1) for p, r in zip(params, rows)])
        losses = lockstep_losses(model, rows, stacked)
        means = [part.mean() for part in losses.split([len(r) for r in rows])]
        torch.stack(means).sum().backward()
        out += [(p.grad.detach().to("cpu", copy=True), m.item()) for p, m in zip(params, means)]
    return out


# --- One client: the ordinary local training path, a lockstep of one ---------------------------


def train_prompt(model: PromptModel, data: Sequence[TokenizedExample], init_prompt: torch.Tensor, *,
                 optimizer: OptimizerSettings, num_steps: int, batch_size: int, seed: int,
                 l2_reference: torch.Tensor | None = None, l2_strength: float = 0.0,
                 ) -> tuple[torch.Tensor, float]:
    """Train the prompt from ``init_prompt`` with a fresh optimizer; return it and the mean loss.

    With ``l2_strength > 0`` the objective adds ``l2_strength / 2 * ||p - l2_reference||^2``.
    """
    [result] = train_lockstep(model, [step_job(data, init_prompt, num_steps, batch_size, seed, l2_reference)],
                              optimizer=optimizer, l2_strength=l2_strength)
    return result.prompts[num_steps], float(np.mean(result.losses))


def step_job(data: Sequence[TokenizedExample], init_prompt: torch.Tensor, num_steps: int, batch_size: int,
             seed: int, l2_reference: torch.Tensor | None = None) -> PromptJob:
    """``num_steps`` steps over fresh permutations drawn from ``seed``; the last prompt kept."""
    plan = batches(len(data), batch_size, num_steps, np.random.default_rng(seed))
    return PromptJob(data, init_prompt, plan, frozenset({num_steps}), l2_reference)


def epoch_job(data: Sequence[TokenizedExample], init_prompt: torch.Tensor, *, epochs: int,
              keep_epochs: Sequence[int], batch_size: int, seed: int) -> PromptJob:
    """``epochs`` passes, keeping the prompt after each epoch in ``keep_epochs``; the l2 pull (if
    any) is toward ``init_prompt``. The batches are those of :func:`step_job` with
    ``epochs * ceil(n / batch_size)`` steps, so the last prompt equals :func:`train_prompt`'s."""
    per_epoch = math.ceil(len(data) / batch_size)
    plan = batches(len(data), batch_size, epochs * per_epoch, np.random.default_rng(seed))
    return PromptJob(data, init_prompt, plan, frozenset(e * per_epoch for e in keep_epochs), init_prompt)


def by_epoch(result: JobResult, job: PromptJob, epochs: int) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """An :func:`epoch_job`'s result as (prompt after each kept epoch, mean loss of every epoch)."""
    per_epoch = len(job.plan) // epochs
    prompts = {step // per_epoch: prompt for step, prompt in result.prompts.items()}
    losses = {e: float(np.mean(result.losses[(e - 1) * per_epoch: e * per_epoch])) for e in range(1, epochs + 1)}
    return prompts, losses


def train_prompt_by_epoch(model: PromptModel, data: Sequence[TokenizedExample], init_prompt: torch.Tensor, *,
                          optimizer: OptimizerSettings, epochs: int, keep_epochs: Sequence[int], batch_size: int,
                          seed: int, l2_strength: float = 0.0) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Train from ``init_prompt`` for ``epochs`` passes with one optimizer (:func:`epoch_job`);
    return the prompt after each epoch in ``keep_epochs`` (0: the initial prompt) and each
    epoch's mean training loss."""
    job = epoch_job(data, init_prompt, epochs=epochs, keep_epochs=keep_epochs, batch_size=batch_size, seed=seed)
    [result] = train_lockstep(model, [job], optimizer=optimizer, l2_strength=l2_strength)
    return by_epoch(result, job, epochs)


def prompt_gradient(model: PromptModel, data: Sequence[TokenizedExample], prompt: torch.Tensor, *,
                    batch_size: int, seed: int) -> tuple[torch.Tensor, float]:
    """Gradient of the loss at ``prompt`` on one batch (the whole split if it fits)."""
    [result] = gradients_lockstep(model, [gradient_batch(data, batch_size, seed)], [prompt])
    return result


def gradient_batch(data: Sequence[TokenizedExample], batch_size: int, seed: int) -> list[TokenizedExample]:
    """FedSGD's one batch: ``batch_size`` examples drawn from ``seed`` (all if they fit)."""
    idx = batches(len(data), min(batch_size, len(data)), 1, np.random.default_rng(seed))[0]
    return [data[i] for i in idx]
