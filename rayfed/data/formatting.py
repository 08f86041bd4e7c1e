"""Turn examples into token ids, one consistent way, and batch them.

Template (plain text, the same for every model)::

    {instruction}

    Input: {input}
    Output: {target}<eos>

The soft prompt is prepended by PEFT in front of all of it. Loss is taken only on the target
tokens and EOS. Sources are truncated from the left (the end of the input is nearest the
answer), targets from the right. A tokenizer that adds a BOS token by default (Gemma's: the
model degrades without it) gets it first in every source, as ``tokenizer(text)`` gives a PEFT
user; one that does not (SmolLM2's) gets none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rayfed.types import Example


def source_text(ex: Example) -> str:
    text = f"{ex.instruction}\n\n" if ex.instruction else ""
    if ex.input:
        text += f"Input: {ex.input}\n"
    return text + "Output:"


@dataclass(frozen=True)
class TokenizedExample:
    source_ids: tuple[int, ...]
    target_ids: tuple[int, ...]  # ends with EOS unless truncated
    target_text: str  # the reference, for exact match and ROUGE-L


def tokenize(examples: tuple[Example, ...] | list[Example], tokenizer, max_source_tokens: int,
             max_target_tokens: int) -> list[TokenizedExample]:
    """Tokenize once per client; training and evaluation reuse the result every round."""
    if not examples:  # a tokenizer given an empty batch fails with an IndexError deep inside
        return []
    sources = tokenizer([source_text(ex) for ex in examples], add_special_tokens=False)["input_ids"]
    targets = tokenizer([" " + ex.target for ex in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    bos = bos_prefix(tokenizer)
    keep = max_source_tokens - len(bos)
    out = []
    for ex, src, tgt in zip(examples, sources, targets):
        out.append(TokenizedExample(tuple(bos + list(src[-keep:] if keep > 0 else [])),
                                    tuple((list(tgt) + [eos])[:max_target_tokens]), ex.target))
    return out


def bos_prefix(tokenizer) -> list[int]:
    """``[bos_token_id]`` if the tokenizer starts its encodings with BOS by default, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def collate_train(batch: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded source+target with labels -100 everywhere but the target tokens."""
    seqs = [list(b.source_ids) + list(b.target_ids) for b in batch]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (b, seq) in enumerate(zip(batch, seqs)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, len(b.source_ids): len(seq)] = torch.tensor(b.target_ids)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_generate(batch: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded sources, so every row's generation starts at the same position."""
    width = max(len(b.source_ids) for b in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b.source_ids)
        input_ids[i, width - n:] = torch.tensor(b.source_ids)
        attention[i, width - n:] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
