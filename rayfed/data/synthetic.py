"""Synthetic multi-task text: deterministic from a seed, learnable by a tiny model in seconds.

For tests and as an always-available fallback, never as the default study data. The string
tasks share their inputs and differ only in the instruction, so they interfere under FedAvg;
the two lookup tables map the same keys to different values, so they conflict outright.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rayfed.types import Example

WORDS = ("red", "sun", "map", "cat", "dog", "sky", "tea", "box", "pen", "cup",
         "owl", "fig", "jar", "key", "log", "net", "oak", "pig", "ram", "toy")
TOPICS = {"sport": ("ball", "goal", "team", "race"), "food": ("soup", "bread", "rice", "cake"),
          "music": ("song", "drum", "band", "tune")}
LOOKUP_KEYS = ("zor", "vex", "kip", "lum", "dax", "fen", "gub", "hol")


def _words(rng: np.random.Generator) -> list[str]:
    return [str(w) for w in rng.choice(WORDS, size=int(rng.integers(2, 5)), replace=False)]


def _string_task(fn: Callable[[list[str]], str]) -> Callable[[np.random.Generator], tuple[str, str]]:
    def make(rng: np.random.Generator) -> tuple[str, str]:
        words = _words(rng)
        return " ".join(words), fn(words)
    return make


def _add(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return f"{a} + {b}", str(a + b)


def _subtract(rng: np.random.Generator) -> tuple[str, str]:
    a, b = sorted(int(x) for x in rng.integers(0, 100, size=2))
    return f"{b} - {a}", str(b - a)


def _lookup(offset: int) -> Callable[[np.random.Generator], tuple[str, str]]:
    values = WORDS[offset:] + WORDS[:offset]

    def make(rng: np.random.Generator) -> tuple[str, str]:
        i = int(rng.integers(len(LOOKUP_KEYS)))
        return LOOKUP_KEYS[i], values[i]
    return make


def _topic(rng: np.random.Generator) -> tuple[str, str]:
    label = str(rng.choice(list(TOPICS)))
    words = [str(w) for w in rng.choice(TOPICS[label], size=2, replace=False)] + _words(rng)[:1]
    rng.shuffle(words)
    if rng.random() < 0.05:  # label noise, so the task is not trivially separable
        label = str(rng.choice(list(TOPICS)))
    return " ".join(words), label


def _sequence(rng: np.random.Generator) -> tuple[str, str]:
    start, step = int(rng.integers(0, 20)), int(rng.integers(1, 6))
    return " ".join(str(start + i * step) for i in range(4)), str(start + 4 * step)


# task name -> (category, instruction, generator)
TASKS: dict[str, tuple[str, str, Callable[[np.random.Generator], tuple[str, str]]]] = {
    "copy": ("strings", "Copy the words.", _string_task(" ".join)),
    "reverse_words": ("strings", "Reverse the order of the words.", _string_task(lambda w: " ".join(w[::-1]))),
    "sort_words": ("strings", "Sort the words alphabetically.", _string_task(lambda w: " ".join(sorted(w)))),
    "uppercase": ("strings", "Write the words in capitals.", _string_task(lambda w: " ".join(w).upper())),
    "first_letters": ("strings", "Write the first letter of each word.",
                      _string_task(lambda w: "".join(x[0] for x in w))),
    "count_words": ("strings", "Count the words.", _string_task(lambda w: str(len(w)))),
    "add": ("arithmetic", "Add the numbers.", _add),
    "subtract": ("arithmetic", "Subtract the numbers.", _subtract),
    "next_number": ("arithmetic", "Continue the sequence.", _sequence),
    "lookup_a": ("lookup", "Look up the code in table A.", _lookup(0)),
    "lookup_b": ("lookup", "Look up the code in table B.", _lookup(7)),
    "topic": ("classification", "Name the topic: sport, food or music.", _topic),
}


def generate_synthetic(examples_per_task: int, seed: int, tasks: list[str] | None = None) -> list[Example]:
    """Generate ``examples_per_task`` examples for each task, in a fixed order.

    Args:
        examples_per_task: How many examples each task gets.
        seed: Same seed, byte-identical output.
        tasks: Subset of :data:`TASKS` (None: all).
    """
    names = list(TASKS) if tasks is None else tasks
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown synthetic tasks {unknown}; known: {sorted(TASKS)}")
    out: list[Example] = []
    for name in names:
        category, instruction, make = TASKS[name]
        rng = np.random.default_rng([seed, list(TASKS).index(name)])  # a subset keeps its data
        for _ in range(examples_per_task):
            source, target = make(rng)
            out.append(Example(f"synthetic/{name}", category, instruction, source, target))
    return out
