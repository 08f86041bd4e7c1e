"""The per-example loss that local training and FedSGD gradients are made of.

A plain function over a :class:`~rayfed.model.prompt_model.PromptModel` and tokenized examples; no Ray here.
The loss of a batch is the mean over examples of each example's mean target-token
cross-entropy, so a weighted mean over clients (weights = example counts) equals the loss of the
union of their data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayfed.data.formatting import TokenizedExample, collate_train
from rayfed.model.prompt_model import PromptModel


def per_example_loss(model: PromptModel, batch: list[TokenizedExample],
                     prompts: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced loss of each example, ``[len(batch)]``.

    The same computation as PEFT's forward (prompt embeddings prepended, or the prefix's keys and
    values in the cache; mask extended), except that the LM head runs only where a target token is predicted: with a 49k
    vocabulary that saves about a fifth of the compute of a training step. ``prompts``
    (``[len(batch), virtual, width]``) gives each example its own prompt or prefix; by default the model's.
    """
    inputs = collate_train(batch, model.pad_id)
    backbone = model.backbone
    hidden = backbone.base_model(**model.backbone_inputs(inputs["input_ids"], inputs["attention_mask"], prompts),
                                 ).last_hidden_state
    hidden = hidden[:, -inputs["input_ids"].shape[1]:]  # drop the virtual-token positions (prompt tuning)
    # Position t predicts token t + 1: pick the positions whose next token is a target token.
    targets = inputs["labels"][:, 1:].to(model.device)
    n_rows = targets.shape[0]
    rows, cols = (targets != -100).nonzero(as_tuple=True)
    logits = backbone.get_output_embeddings()(hidden[rows, cols])
    token_loss = F.cross_entropy(logits.float(), targets[rows, cols], reduction="none")
    sums = torch.zeros(n_rows, device=token_loss.device).index_add(0, rows, token_loss)
    counts = torch.zeros(n_rows, device=token_loss.device).index_add(0, rows, torch.ones_like(token_loss))
    return sums / counts.clamp(min=1)
