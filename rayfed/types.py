"""Small frozen records that cross module and process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Example:
    """One instruction-following example; every data source produces this schema.

    Attributes:
        task: Leaf task name, e.g. ``"evals/sarcasm"``.
        category: Task category; the unit of heterogeneity across clients.
        instruction: Natural-language instruction shared by the task's examples.
        input: The example's input text (may be empty).
        target: The reference output.
        site: The site (client) a record of one's own data belongs to (``data.source: sites``);
            empty for the built-in sources, whose clients are drawn by ``partition.scheme``.
    """

    task: str
    category: str
    instruction: str
    input: str
    target: str
    site: str = ""


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back after local work in one round: a prompt-sized tensor and counts.

    Attributes:
        client_id: The client that produced it.
        delta: FedAvg: ``global_prompt - local_prompt``; FedSGD: the batch gradient. Either way
            the server treats the weighted mean as a pseudo-gradient.
        num_examples: Aggregation weight (training examples the client holds).
        train_loss: Mean training loss over the client's local steps.
    """

    client_id: int
    delta: torch.Tensor
    num_examples: int
    train_loss: float


@dataclass(frozen=True)
class EvalSums:
    """Additive evaluation statistics, so shards evaluated in different processes can be merged.

    Attributes:
        count: Examples scored.
        loss, exact_match, rouge_l: Their sums.
        examples: Each example's ``(example_id, loss, exact_match, rouge_l)``, in the order of the
            data scored. An id is the example's position in its split: in the client's own split,
            or in the whole global set (also when a client scores a subsample of it), so two
            prompts scored on the same examples pair up by id. Adding sums concatenates them.
    """

    count: int = 0
    loss: float = 0.0
    exact_match: float = 0.0
    rouge_l: float = 0.0
    examples: tuple[tuple[int, float, float, float], ...] = ()

    def __add__(self, other: EvalSums) -> EvalSums:
        return EvalSums(
            self.count + other.count,
            self.loss + other.loss,
            self.exact_match + other.exact_match,
            self.rouge_l + other.rouge_l,
            self.examples + other.examples,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSums:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples)."""
        return cls(d["count"], d["loss"], d["exact_match"], d["rouge_l"],
                   tuple((int(i), *map(float, rest)) for i, *rest in d.get("examples", ())))

    def means(self) -> dict[str, float]:
        """Per-example means under the metric names used everywhere: loss, exact_match, rouge_l."""
        n = max(self.count, 1)
        return {"loss": self.loss / n, "exact_match": self.exact_match / n, "rouge_l": self.rouge_l / n}


@dataclass(frozen=True)
class RoundResult:
    """What the driver reports for one round; the orchestrator logs it."""

    round_idx: int
    metrics: dict[str, float] = field(default_factory=dict)
    client_metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # per client id
    # Training rounds: the sampled, finished and dropped client ids (and why each was dropped).
    clients: dict[str, Any] = field(default_factory=dict)
    # Evaluation rounds: every scored example, (client_id (-1: a global set), split, round, 1.0,
    # example_id, loss, exact_match, rouge_l), as rayfed.outputs.scores writes them.
    examples: tuple[tuple[int, str, int, float, int, float, float, float], ...] = ()
    # Ditto (with eval.local): each client's own prompt on its splits and the global sets, as rows of
    # the same form (rayfed.outputs.scores.DITTO_SCORES).
    ditto_examples: tuple[tuple[int, str, int, float, int, float, float, float], ...] = ()
