"""Evaluation: teacher-forced loss, exact match and ROUGE-L of greedy generations.

:func:`evaluate` scores one prompt on one dataset; :func:`evaluate_many` scores many (dataset,
prompt) pairs in pooled passes with the same numbers. :func:`generate` is the plain greedy
decoder they are checked against (benchmarks/eval_speed.py, tests/local/test_evaluation.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from rayfed.data.formatting import TokenizedExample, collate_generate
from rayfed.errors import RayfedWarning
from rayfed.local.lengths import call_overhead_tokens, length_groups
from rayfed.local.loss import per_example_loss
from rayfed.metrics import exact_match, rouge_l
from rayfed.model.prompt_model import LORA, PromptModel
from rayfed.types import EvalSums


def evaluate(model: PromptModel, data: list[TokenizedExample], prompt: torch.Tensor, *,
             batch_size: int, max_new_tokens: int) -> EvalSums:
    """Teacher-forced loss plus exact match and ROUGE-L of greedy generations, as sums.

    The numbers are those of :func:`per_example_loss` plus :func:`generate` on length-sorted
    batches of ``batch_size`` (each batch generating up to its longest target), computed with
    less work (see :func:`evaluate_many`, which this is for one prompt on one dataset).

    Args:
        model: The prompt model (its own prompt is not used or changed).
        data: Tokenized examples, each with a non-empty source and target.
        prompt: The soft prompt to evaluate, ``[num_virtual_tokens, hidden]``.
        batch_size: Examples per batch; fixes each example's generation limit, as in
            :func:`generate`, and bounds the rows of one forward pass.
        max_new_tokens: Upper bound on generated tokens per example.

    Returns:
        Sums over ``data`` of the loss, exact match and ROUGE-L, and the example count.

    Raises:
        ValueError: If an example has no source or no target tokens.
    """
    return evaluate_many(model, [(data, prompt)], batch_size=batch_size, max_new_tokens=max_new_tokens)[0]


def evaluate_many(model: PromptModel, jobs: Sequence[tuple[Sequence[TokenizedExample], torch.Tensor]], *,
                  batch_size: int, max_new_tokens: int, ids: Sequence[Sequence[int]] | None = None) -> list[EvalSums]:
    """:func:`evaluate` of many (dataset, prompt) pairs at once: every pair's numbers as if it
    were evaluated alone, its rows pooled with the others' so that passes are full. Each pair's
    ``EvalSums.examples`` holds its examples' own scores in the dataset's order, under ``ids[j]``
    (default: the positions ``0, 1, ...`` in the dataset).

    Less work than loss + generate per batch: one forward per example serves both the loss and
    the start of generation, each prompt's states are computed once per chunk of rows, greedy
    tokens that the teacher-forced pass already predicted are not decoded again, and rows of
    similar length from every pair (a client's splits, its prompts, other clients) share passes.
    A pair's examples are length-sorted and cut into batches of ``batch_size`` on their own, so
    each example's generation limit is what :func:`evaluate` gives it alone.
    """
    for data, _ in jobs:
        if any(not ex.source_ids or not ex.target_ids for ex in data):
            raise ValueError("evaluate needs a non-empty source and target in every example")
    rows: list[TokenizedExample] = []
    limits: list[int] = []
    owners: list[int] = []
    positions: list[int] = []  # each row's position in its pair's dataset
    for j, (data, _) in enumerate(jobs):
        by_length = sorted(range(len(data)), key=lambda i: (len(data[i].source_ids), len(data[i].target_ids)))
        # Each example may generate up to the longest target of its batch, exactly as generate().
        for start in range(0, len(data), batch_size):
            batch = [data[i] for i in by_length[start:start + batch_size]]
            limits += [min(max_new_tokens, max(len(b.target_ids) for b in batch))] * len(batch)
            rows += batch
            owners += [j] * len(batch)
            positions += by_length[start:start + batch_size]
    # Length-sorted rows waste little compute on padding; the sums do not depend on order.
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].source_ids), len(rows[i].target_ids)))
    totals = [EvalSums() for _ in jobs]
    scores: list[dict[int, tuple[float, float, float]]] = [{} for _ in jobs]
    # Whole batches decode together: a decode step reads every weight once however many rows it
    # has, so fewer, fuller steps are cheaper. The bound keeps the KV cache's memory modest.
    chunk = max(1, _DECODE_ROWS // batch_size) * batch_size
    n_virtual = jobs[0][1].shape[0] if jobs else 0
    past_window = any(_past_sliding_window(model, n_virtual + len(r.source_ids) + limit)
                      for r, limit in zip(rows, limits))
    if past_window:
        _note_sliding_window(model)
    # LoRA changes every token's states, so no prompt states are shared: its rows take the plain
    # path too (loss and generate per group of rows, each row with its own adapter).
    exact = past_window or model.method == LORA
    with torch.inference_mode():
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            if exact:  # a sliding window counts cache slots (no gaps in a row); LoRA has no prompt states
                losses, predictions = _score_and_generate_unpadded(
                    model, [rows[i] for i in part], [limits[i] for i in part],
                    torch.stack([jobs[owners[i]][1] for i in part]), max_group_rows=batch_size,
                    unpadded=past_window)
            else:
                used = sorted({owners[i] for i in part})  # the prompts this chunk needs, once each
                # Each prompt's keys and values alone, once per prompt, not per row: every row starts
                # with its prompt at positions 0..V-1, which causal attention keeps independent of
                # what follows (a prefix is those states already).
                states = model.adapter_states(torch.stack([jobs[j][1] for j in used]))
                slot = {j: k for k, j in enumerate(used)}
                losses, predictions = _score_and_generate(
                    model, [rows[i] for i in part], [limits[i] for i in part], states,
                    torch.tensor([slot[owners[i]] for i in part]), max_group_rows=batch_size)
            for i, loss, prediction in zip(part, losses.tolist(), predictions):
                target = rows[i].target_text
                em, rouge = exact_match(prediction, target), rouge_l(prediction, target)
                totals[owners[i]] = totals[owners[i]] + EvalSums(1, loss, em, rouge)
                scores[owners[i]][positions[i]] = (loss, em, rouge)
    names = ids if ids is not None else [range(len(data)) for data, _ in jobs]
    return [replace(total, examples=tuple((int(names[j][p]), *scores[j][p]) for p in range(len(jobs[j][0]))))
            for j, total in enumerate(totals)]


@torch.no_grad()
def generate(model: PromptModel, batch: list[TokenizedExample], max_new_tokens: int,
             prompts: torch.Tensor | None = None) -> list[str]:
    """Greedy continuations with a KV cache, bounded by the longest target in the batch.

    Sources are left-padded; position ids count only real tokens, so every row sees the same
    positions it was trained at (prompt, then its own tokens), whatever the padding (under
    full attention: a sliding window counts cache slots, pads included). ``prompts``
    (``[rows, virtual, hidden]``) gives each row its own prompt; by default the model's.
    """
    inputs = collate_generate(batch, model.pad_id)
    limit = min(max_new_tokens, max(len(b.target_ids) for b in batch))
    backbone = model.backbone
    first = model.backbone_inputs(inputs["input_ids"], inputs["attention_mask"], prompts)
    mask = first["attention_mask"]
    n_rows, fed = mask.shape[0], (first.get("inputs_embeds", first.get("input_ids"))).shape[1]  # type: ignore[union-attr]
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -fed:]
    out = backbone(**first, position_ids=positions, use_cache=True, logits_to_keep=1)
    eos = model.tokenizer.eos_token_id
    done = torch.zeros(n_rows, dtype=torch.bool, device=mask.device)
    generated = []
    for step in range(limit):
        next_ids = out.logits[:, -1].argmax(-1).masked_fill(done, eos)
        generated.append(next_ids)
        done |= next_ids == eos
        if bool(done.all()) or step == limit - 1:
            break
        mask = torch.cat([mask, mask.new_ones(n_rows, 1)], 1)
        positions = positions[:, -1:] + 1
        out = backbone(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                       cache=out.cache, use_cache=True)
    texts = model.tokenizer.batch_decode(torch.stack(generated, 1), skip_special_tokens=True)
    return [t.strip() for t in texts]


# --- Fused evaluation -------------------------------------------------------------------------
# evaluate() gets the numbers of per_example_loss() + generate() from one forward per example
# over [soft prompt | left-padded source | right-padded target]. Position ids count real tokens
# only, so every real token sits at the position both reference functions give it: the prompt at
# 0..V-1, then the source, then the target. Causal attention means the source states do not see
# the target, so they are the states generate() prefills, and the target positions give the
# teacher-forced logits of the loss.

# Rows decoded together in one evaluate() chunk (rounded down to whole batches, at least one).
_DECODE_ROWS = 64


@dataclass
class _Continuation:
    """Rows whose greedy generation must go on token by token, with their KV cache.

    Attributes:
        rows: Index of each row in the chunk, ``[n]``.
        layers: Keys and values per layer, ``[n, kv_heads, width, head_dim]`` each.
        mask: Which cached columns a row attends to, ``[n, width]`` (gaps are fine: the
            positions are explicit).
        next_ids: The last greedy token of each row, the next input, ``[n]``.
        positions: The position of that token, ``[n]``.
    """

    rows: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    next_ids: torch.Tensor
    positions: torch.Tensor


def _teacher_forced(model: PromptModel, rows: list[TokenizedExample], limits: list[int],
                    prompt_states: list[tuple[torch.Tensor, torch.Tensor]], prompt_of: torch.Tensor,
                    ) -> tuple[torch.Tensor, list[list[int]], _Continuation]:
    """One forward over the rows' sources and targets: their losses, the greedy tokens it already
    determines, and the state to continue generating from.

    Greedy token ``j`` is the argmax at target position ``j`` (teacher forcing) as long as greedy
    tokens ``0..j-1`` equal the target's: the model saw exactly that prefix. So a row's first
    greedy token is always known, and after a trained prompt often its whole answer.

    Returns:
        ``(losses [n], tokens, continuation)``: ``tokens[i]`` are row ``i``'s known greedy tokens
        (cut at EOS and at its limit); the continuation holds every row, finished or not.
    """
    device, n = model.device, len(rows)
    backbone = model.backbone
    n_virtual = prompt_states[0][0].shape[2]
    input_ids, mask, targets, src_width = _source_target_layout(rows, model.pad_id)
    input_ids, targets = input_ids.to(device), targets.to(device)
    mask = torch.cat([torch.ones(n, n_virtual, dtype=torch.long), mask], 1).to(device)
    positions = (mask.cumsum(1) - 1)[:, n_virtual:]
    prompt_of = prompt_of.to(device)  # row -> its prompt's index in prompt_states
    cache = DynamicCache([(k[prompt_of], v[prompt_of]) for k, v in prompt_states])
    hidden = backbone.base_model(inputs_embeds=backbone.get_input_embeddings()(input_ids), attention_mask=mask,
                                 position_ids=positions, cache=cache, use_cache=True).last_hidden_state
    # Target token j is predicted at column src_width - 1 + j; the LM head runs only there.
    rows_idx, cols = (targets != -100).nonzero(as_tuple=True)
    logits = backbone.get_output_embeddings()(hidden[rows_idx, src_width - 1 + cols])
    token_loss = F.cross_entropy(logits.float(), targets[rows_idx, cols], reduction="none")
    sums = torch.zeros(n, device=device).index_add(0, rows_idx, token_loss)
    counts = torch.zeros(n, device=device).index_add(0, rows_idx, torch.ones_like(token_loss))
    predicted = torch.full_like(targets, -1)
    predicted[rows_idx, cols] = logits.argmax(-1)
    # Leading agreement with the target; the last target token's state was not computed, so at
    # most tgt - 1 target tokens are reused.
    agreed = (predicted == targets).long().cumprod(1).sum(1)
    lengths = (targets != -100).sum(1)
    accepted = torch.minimum(agreed, lengths - 1)
    tokens = _known_tokens(predicted.tolist(), accepted.tolist(), limits, model.tokenizer.eos_token_id)
    # Keep the prompt, the sources and the accepted target prefixes; mask what a row did not accept.
    keep = n_virtual + src_width + int(accepted.max())
    cache.crop(keep - cache.get_seq_length())
    mask = mask[:, :keep].clone()
    mask[:, n_virtual + src_width:] = torch.arange(keep - n_virtual - src_width, device=device) < accepted[:, None]
    next_ids = torch.tensor([t[-1] for t in tokens], device=device)
    return sums / counts.clamp(min=1), tokens, _Continuation(
        torch.arange(n, device=device), [(layer.keys, layer.values) for layer in cache.layers], mask, next_ids,
        positions[:, src_width - 1] + 1 + accepted)


def _source_target_layout(rows: list[TokenizedExample], pad_id: int,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(input_ids, mask, targets, source width)`` laid out as [left-padded source | right-padded
    target]: the last source token of every row sits in one column, so a common crop keeps exactly
    the sources. The last target token predicts nothing, so it is not fed."""
    n = len(rows)
    src_width = max(len(r.source_ids) for r in rows)
    tgt_width = max(len(r.target_ids) for r in rows)
    input_ids = torch.full((n, src_width + tgt_width - 1), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    targets = torch.full((n, tgt_width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        src, tgt = len(r.source_ids), len(r.target_ids)
        input_ids[i, src_width - src:src_width] = torch.tensor(r.source_ids)
        input_ids[i, src_width:src_width + tgt - 1] = torch.tensor(r.target_ids[:-1])
        mask[i, src_width - src:src_width + tgt - 1] = 1
        targets[i, :tgt] = torch.tensor(r.target_ids)
    return input_ids, mask, targets, src_width


def _known_tokens(predicted: list[list[int]], accepted: list[int], limits: list[int], eos: int) -> list[list[int]]:
    """Each row's greedy tokens that the teacher-forced pass determined: its accepted target prefix
    and one more, cut at EOS and at its limit."""
    tokens = []
    for known, n_accepted, limit in zip(predicted, accepted, limits):
        out: list[int] = []
        for token in known[:n_accepted + 1]:
            out.append(token)
            if token == eos or len(out) == limit:
                break
        tokens.append(out)
    return tokens


def _select(cont: _Continuation, keep: torch.Tensor, width: int) -> _Continuation:
    """The ``keep`` rows of ``cont``, left-padded with masked columns to ``width``."""
    pad = width - cont.mask.shape[1]

    def widen(x: torch.Tensor, dim: int) -> torch.Tensor:
        x = x[keep]
        if pad == 0:
            return x
        shape = list(x.shape)
        shape[dim] = pad
        return torch.cat([x.new_zeros(shape), x], dim)

    return _Continuation(cont.rows[keep], [(widen(k, 2), widen(v, 2)) for k, v in cont.layers],
                         widen(cont.mask, 1), cont.next_ids[keep], cont.positions[keep])


def _greedy_continue(model: PromptModel, cont: _Continuation, tokens: list[list[int]], limits: list[int]) -> None:
    """Extend ``tokens[row]`` greedily, one token per step, until EOS or the row's limit.

    The same loop as :func:`generate` (attention mask grown by one, positions by one), except
    that a finished row leaves the batch instead of being fed EOS: rows never interact, so the
    others' tokens are unchanged.
    """
    backbone = model.backbone
    eos = model.tokenizer.eos_token_id
    cache = DynamicCache(cont.layers)
    rows, mask, next_ids, positions = cont.rows.tolist(), cont.mask, cont.next_ids, cont.positions
    while rows:
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        out = backbone(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions[:, None],
                       cache=cache, use_cache=True)
        next_ids, positions = out.logits[:, -1].argmax(-1), positions + 1
        live = []
        for i, (row, token) in enumerate(zip(rows, next_ids.tolist())):
            tokens[row].append(token)
            if token != eos and len(tokens[row]) < limits[row]:
                live.append(i)
        if len(live) < len(rows):
            index = torch.tensor(live, dtype=torch.long, device=mask.device)
            cache.batch_select_indices(index)
            rows, mask, next_ids, positions = [rows[i] for i in live], mask[index], next_ids[index], positions[index]


def _score_and_generate(model: PromptModel, rows: list[TokenizedExample], limits: list[int],
                        prompt_states: list[tuple[torch.Tensor, torch.Tensor]], prompt_of: torch.Tensor, *,
                        max_group_rows: int) -> tuple[torch.Tensor, list[str]]:
    """Losses and greedy texts of length-sorted ``rows``, ``rows[i]`` generating up to ``limits[i]``
    tokens after prompt ``prompt_of[i]``: teacher-forced forwards over groups of similar length,
    then one decode of every unfinished row."""
    eos = model.tokenizer.eos_token_id
    widths = [(len(r.source_ids), len(r.target_ids) - 1) for r in rows]  # the last target token is not input
    groups = length_groups(widths, max_group_rows, call_overhead_tokens(model.device))
    losses, tokens, pending = [], [], []
    for start, stop in groups:
        loss, known, cont = _teacher_forced(model, rows[start:stop], limits[start:stop], prompt_states,
                                            prompt_of[start:stop])
        live = [i for i, t in enumerate(known) if t[-1] != eos and len(t) < limits[start + i]]
        losses.append(loss)
        tokens += known
        if live:
            cont.rows += start
            pending.append((cont, torch.tensor(live, dtype=torch.long, device=model.device)))
    if pending:
        width = max(cont.mask.shape[1] for cont, _ in pending)
        parts = [_select(cont, live, width) for cont, live in pending]
        merged = parts[0] if len(parts) == 1 else _Continuation(
            torch.cat([p.rows for p in parts]),
            [(torch.cat([p.layers[i][0] for p in parts]), torch.cat([p.layers[i][1] for p in parts]))
             for i in range(len(parts[0].layers))],
            torch.cat([p.mask for p in parts]), torch.cat([p.next_ids for p in parts]),
            torch.cat([p.positions for p in parts]))
        _greedy_continue(model, merged, tokens, limits)
    texts = model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return torch.cat(losses), [t.strip() for t in texts]


# --- Sliding-window attention (Gemma 3, Mistral): the window counts cache slots, so the pads and
# holes the fused path leaves between a row's tokens would change what it attends to once a row
# is longer than the window. Such rows are scored by per_example_loss (right padding only, after
# the tokens) and decoded by generate() in groups of one source length (no padding at all).

_noted: set[int] = set()


def _sliding_window(model: PromptModel) -> int | None:
    """The backbone's attention window in tokens, or None under full attention in every layer."""
    config = model.backbone.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return None
    return None if getattr(config, "use_sliding_window", True) is False else int(window)


def _past_sliding_window(model: PromptModel, length: int) -> bool:
    window = _sliding_window(model)
    return window is not None and length > window


def _note_sliding_window(model: PromptModel) -> None:
    if id(model) not in _noted:
        _noted.add(id(model))
        warnings.warn(f"rows longer than the backbone's sliding attention window ({_sliding_window(model)} tokens) "
                      f"are scored without the fused evaluation: exact, and slower", RayfedWarning, stacklevel=3)


def _score_and_generate_unpadded(model: PromptModel, rows: list[TokenizedExample], limits: list[int],
                                 prompts: torch.Tensor, *, max_group_rows: int,
                                 unpadded: bool = True) -> tuple[torch.Tensor, list[str]]:
    """:func:`_score_and_generate`'s numbers for any attention and adapter: losses by
    :func:`~rayfed.local.loss.per_example_loss`, texts by :func:`generate` over rows of one limit
    and, ``unpadded`` (a sliding window), one source length (``prompts[i]``: row ``i``'s prompt)."""
    losses = torch.cat([per_example_loss(model, rows[k:k + max_group_rows], prompts[k:k + max_group_rows]).float()
                        for k in range(0, len(rows), max_group_rows)])
    texts = [""] * len(rows)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (row, limit) in enumerate(zip(rows, limits)):
        groups.setdefault((len(row.source_ids) if unpadded else 0, limit), []).append(i)
    for (_, limit), members in groups.items():
        for k in range(0, len(members), max_group_rows):
            part = members[k:k + max_group_rows]
            for i, text in zip(part, generate(model, [rows[i] for i in part], limit, prompts[part])):
                texts[i] = text
    return losses, texts
