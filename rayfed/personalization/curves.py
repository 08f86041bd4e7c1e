"""Personalization as curves: each client fine-tunes the global prompt; every evaluated epoch
and interpolation ratio is scored on the client's own splits and on the global sets.

Plain functions over a driver (in-process or a Ray actor, the same methods): the driver forms
the interpolations, workers train and score. The un-personalized global prompt (epoch 0, and
ratio 0 at every epoch) is scored once and reused, since it is the same prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rayfed.core.bootstrap import bootstrap_crossed, bootstrap_mean
from rayfed.core.selection import select_reliable
from rayfed.metrics import summarize_clients
from rayfed.names import GLOBAL_SPLITS, METRICS
from rayfed.personalization.settings import PersonalizeSettings
from rayfed.settings import EvalSettings
from rayfed.types import EvalSums

Trained = dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]]  # client -> (prompts, losses) by epoch
Scores = dict[int, dict[str, EvalSums]]  # client -> split -> sums


@dataclass
class PersonalizationResult:
    """Per-client records, the curve over clients, the un-personalized reference, the choice."""

    records: list[dict[str, Any]] = field(default_factory=list)  # one per (client, epoch, ratio, split)
    examples: list[tuple] = field(default_factory=list)  # one per scored example (rayfed.outputs.scores)
    curve: list[dict[str, Any]] = field(default_factory=list)  # one per (epoch, ratio): mean/p10/min
    reference: dict[str, float] = field(default_factory=dict)  # the global prompt, same keys
    selected: dict[str, Any] | None = None


EpochCallback = Callable[[int, list[dict[str, Any]]], None]


def personalize(driver: Any, global_prompt: torch.Tensor, settings: PersonalizeSettings, trained: Trained,
                evaluation: EvalSettings, *, reference: Scores | None = None,
                on_epoch: EpochCallback | None = None) -> PersonalizationResult:
    """Score each evaluated epoch of the trained local prompts (``driver.personalize_train``) as
    ``evaluation`` says; ``on_epoch(epoch, curve_rows)`` sees each epoch's rows as soon as they
    exist. ``reference``: the global prompt's scores (``score_reference``), if already known."""
    local_splits, global_splits = scored_splits(driver, settings.validation)
    subsample = settings.global_eval_examples
    client_ids = sorted(trained)
    ref = reference if reference is not None else score_reference(driver, global_prompt, client_ids, subsample,
                                                                  evaluation, settings.validation)

    result = PersonalizationResult()
    for epoch in settings.eval_epochs():
        moved = [r for r in settings.interp_ratios if r > 0] if epoch > 0 else []
        local = {cid: trained[cid][0][epoch] for cid in client_ids}
        scores = driver.personalize_evaluate(global_prompt, local, moved, local_splits + global_splits, evaluation,
                                             subsample) if moved else {}
        rows = []
        for ratio in settings.interp_ratios:
            per_client = {cid: scores[cid][ratio] if ratio in moved else ref[cid] for cid in client_ids}
            result.records += [_record(cid, epoch, ratio, split, sums)
                               for cid, by_split in per_client.items() for split, sums in by_split.items()]
            result.examples += [(cid, split, epoch, ratio, *example) for cid, by_split in per_client.items()
                                for split, sums in by_split.items() for example in sums.examples]
            rows.append({"epoch": epoch, "interp_ratio": ratio, **_over_clients(per_client),
                         **intervals(per_client, ref)})
        if epoch > 0:
            result.records += [{"client_id": cid, "epoch": epoch, "interp_ratio": None, "split": "train",
                                "loss": trained[cid][1][epoch], **prompt_shift(trained[cid][0][epoch], global_prompt)}
                               for cid in client_ids]
        result.curve += rows
        if on_epoch is not None:
            on_epoch(epoch, rows)
    result.reference = {**_over_clients(ref), **intervals(ref)}
    result.selected = select_reliable(result.curve, settings.global_tolerance, metric=settings.metric)
    return result


def prompt_shift(local: torch.Tensor, global_prompt: torch.Tensor) -> dict[str, float]:
    """How far personalization moved a prompt: ``prompt_shift``, the mean L2 distance of its rows
    (one per virtual token) from the global prompt's, and ``prompt_shift_relative``, that over the
    global prompt's mean row norm. A step of fixed size is a smaller relative shift on a larger prompt."""
    local, global_prompt = local.float(), global_prompt.float()
    shift = (local - global_prompt).norm(dim=-1).mean().item()
    scale = max(global_prompt.norm(dim=-1).mean().item(), 1e-12)
    return {"prompt_shift": shift, "prompt_shift_relative": shift / scale}


def scored_splits(driver: Any, validation: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The driver's non-empty ``(local, global)`` splits, less the validation ones if not ``validation``."""
    local, global_ = driver.splits()
    return (tuple(n for n in local if validation or not n.endswith("_val")),
            tuple(n for n in global_ if validation or not n.endswith("_val")))


def score_reference(driver: Any, global_prompt: torch.Tensor, client_ids: list[int], subsample: int | None,
                    evaluation: EvalSettings, validation: bool = True) -> Scores:
    """The un-personalized global prompt's scores per client and split: on each client's own
    splits, and on the global sets (scored once for everyone, or on each client's subsample)."""
    local_splits, global_splits = scored_splits(driver, validation)
    ref = {cid: s["ref"] for cid, s in driver.evaluate_clients(
        {cid: {"ref": global_prompt} for cid in client_ids},
        local_splits + (global_splits if subsample else ()), evaluation, subsample).items()}
    if not subsample:
        shared = {split: driver.evaluate_global(global_prompt, split, evaluation) for split in global_splits}
        for cid in client_ids:
            ref[cid].update(shared)
    return ref


def _record(cid: int, epoch: int, ratio: float, split: str, sums: EvalSums) -> dict[str, Any]:
    return {"client_id": cid, "epoch": epoch, "interp_ratio": ratio, "split": split, **sums.means(),
            "count": sums.count}


def _over_clients(per_client: dict[int, dict[str, EvalSums]]) -> dict[str, float]:
    """``{split}/{metric}_{mean,p10,min}`` over clients for every split they were scored on."""
    flat = {cid: {f"{split}/{k}": v for split, sums in s.items() for k, v in sums.means().items()}
            for cid, s in per_client.items()}
    splits = sorted({split for s in per_client.values() for split in s})
    out: dict[str, float] = {}
    for split in splits:
        out.update(summarize_clients(flat, split))
    return out


def intervals(per_client: Scores, reference: Scores | None = None, *, draws: int = 2000) -> dict[str, float]:
    """95% bootstrap intervals of every client-mean score: ``{split}/{metric}_mean_low`` and
    ``_mean_high``; with ``reference`` (the un-personalized prompt's scores of the same examples)
    also the paired change from it, ``{split}/{metric}_change`` with ``_change_low`` and
    ``_change_high``. Clients and their examples are resampled (rayfed.core.bootstrap); examples
    every client shares (a whole global set) are resampled once for all of them."""
    out: dict[str, float] = {}
    for split in sorted({split for s in per_client.values() for split in s}):
        scored = {cid: s[split].examples for cid, s in per_client.items() if split in s and s[split].examples}
        for column, metric in enumerate(METRICS, start=1):
            values = {cid: {e[0]: e[column] for e in examples} for cid, examples in scored.items()}
            shared = split in GLOBAL_SPLITS
            _, out[f"{split}/{metric}_mean_low"], out[f"{split}/{metric}_mean_high"] = _interval(values, draws, shared)
            if reference is not None:
                base = {cid: {e[0]: e[column] for e in reference[cid][split].examples} for cid in scored}
                change = {cid: {i: v - base[cid][i] for i, v in by_id.items()} for cid, by_id in values.items()}
                name = f"{split}/{metric}_change"
                out[name], out[f"{name}_low"], out[f"{name}_high"] = _interval(change, draws, shared)
    return out


def _interval(values: dict[int, dict[int, float]], draws: int, shared: bool) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of the mean over clients of ``values`` (client -> example id ->
    value): crossed when the examples are one set every client scored (``shared``: a global set,
    each client on all of it), nested otherwise. A local split's ids are positions in each client's
    own split, so equal ids there are different examples."""
    ids = [sorted(by_id) for by_id in values.values()]
    if shared and all(i == ids[0] for i in ids):
        return bootstrap_crossed(np.array([[by_id[i] for i in ids[0]] for by_id in values.values()]), draws=draws)
    return bootstrap_mean([[np.array(list(by_id.values())) for by_id in values.values()]], draws=draws)
