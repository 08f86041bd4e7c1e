"""``rayfed compare``: prompts from different runs and personalizations scored on the same clients
and examples, side by side, with paired 95% intervals for each mean and each difference from the
first (rayfed.core.bootstrap). Read from the per-example score files alone (numpy, no torch).

A source is a directory and, after ``@``, which of its prompts:

- a run directory: its global prompt at the last evaluated round (``@round=N``: at round N);
  ``@ditto``: a Ditto run's clients' own prompts;
- a personalization directory (``RUN/personalize/NAME``): ``@selected`` (the default: the setting
  its selection rule chose for the federation), ``@per_client`` (each client's own choice, the
  global prompt where it kept it) or ``@E,R`` (epoch E, interpolation ratio R for every client).

Every source must hold the same clients and, per client and split, the same example ids: runs of
one data config and seed do. A global prompt scored once on a global set counts as every client's
score there, so it pairs with personalized prompts that each client scored on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rayfed.errors import UserError
from rayfed.names import GLOBAL_SPLITS
from rayfed.outputs.scores import DITTO_SCORES, EXAMPLE_SCORES, load_example_scores
from rayfed.runtime.machine import kinds_line

COMPARE_SPLITS = ("local_test", "global_test")
Scores = dict[str, dict[int, dict[int, float]]]  # split -> client -> example id -> score


@dataclass(frozen=True)
class Source:
    """One compared prompt: its label (as given) and its scores by split, client and example."""

    label: str
    scores: Scores
    machines: str = ""  # the kinds of machine its workers computed on (rayfed.runtime.machine), "" if not recorded


def load_source(spec: str, metric: str) -> Source:
    """The scores ``spec`` (``DIR[@WHICH]``) names; see the module docstring.

    Raises:
        UserError: the directory holds no score file, or ``WHICH`` does not fit it.
    """
    path_text, _, which = spec.partition("@")
    path = Path(path_text).expanduser()
    source = _load(path, which, metric, spec)
    summary = path / "summary.json"
    recorded = json.loads(summary.read_text()).get("machines") if summary.is_file() else None
    return replace(source, machines=kinds_line(recorded))


def machines_note(sources: list[Source]) -> str | None:
    """A note when the sources were computed on different kinds of machine: float rounding then
    differs between them, and training can grow that into part of a difference, which the
    intervals (over clients and examples) do not cover."""
    kinds = {s.machines for s in sources if s.machines}
    if len(kinds) < 2:
        return None
    where = "; ".join(f"{s.label}: {s.machines}" for s in sources if s.machines)
    return (f"note: these sources were computed on {len(kinds)} kinds of machine ({where}); float rounding differs "
            "between them, so part of a difference can come from the machine, which these intervals do not cover "
            "(seeds do: docs/reliability.md)")


def _load(path: Path, which: str, metric: str, spec: str) -> Source:
    if (path / "personalization.jsonl").is_file():
        return Source(spec, _personalization(path, which or "selected", metric, spec))
    if not (path / EXAMPLE_SCORES).is_file():
        raise UserError(f"{spec}: no {EXAMPLE_SCORES} in {path} (a run or a personalization directory, written "
                        f"by rayfed run or rayfed personalize)")
    if which == "ditto":
        if not (path / DITTO_SCORES).is_file():
            raise UserError(f"{spec}: no {DITTO_SCORES}: not a Ditto run, or one run with eval.local=false")
        return Source(spec, _run(load_example_scores(path / DITTO_SCORES), None, metric, spec))
    round_idx = None
    if which:
        if not which.startswith("round="):
            raise UserError(f"{spec}: a run's prompt is '@round=N' or '@ditto', not '@{which}'")
        try:
            round_idx = int(which.removeprefix("round="))
        except ValueError:
            raise UserError(f"{spec}: '@{which}' names no round (e.g. @round=3)") from None
    return Source(spec, _run(load_example_scores(path / EXAMPLE_SCORES), round_idx, metric, spec))


def _run(columns: dict[str, np.ndarray], round_idx: int | None, metric: str, spec: str) -> Scores:
    """A run's rows at one round; a global set scored once (client -1) is every client's."""
    at = columns["epoch"] == (int(columns["epoch"].max()) if round_idx is None else round_idx)
    if not at.any():
        raise UserError(f"{spec}: no scores at round {round_idx}")
    scores = _collect(columns, at, metric)
    shared = {split: by_client.pop(-1) for split, by_client in scores.items() if -1 in by_client}
    clients = sorted({c for by_client in scores.values() for c in by_client})
    if shared and not clients:
        raise UserError(f"{spec}: only the global sets were scored (eval.local=false): no client to compare on")
    for split, examples in shared.items():
        scores[split] = {c: examples for c in clients}
    return scores


def _personalization(path: Path, which: str, metric: str, spec: str) -> Scores:
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        raise UserError(f"{spec}: the personalization in {path} has not finished (no summary.json)")
    summary = json.loads(summary_file.read_text())
    columns = load_example_scores(path / EXAMPLE_SCORES)
    clients = sorted(set(columns["client_id"].tolist()))
    if which in ("selected", "per_client") and not summary.get(which):
        raise UserError(f"{spec}: this personalization made no selection (personalize.validation=false); name a "
                        f"setting instead, e.g. @{summary['curve'][-1]['epoch']},1.0" if summary.get("curve")
                        else f"{spec}: this personalization made no selection; name a setting, e.g. @4,1.0")
    if which == "selected":
        setting = summary["selected"]
        choice = {c: (int(setting["epoch"]), float(setting["interp_ratio"])) for c in clients}
    elif which == "per_client":
        chosen = summary["per_client"]["clients"]
        choice = {c: (int(chosen[str(c)]["epoch"]), float(chosen[str(c)]["interp_ratio"])) for c in clients}
    else:
        try:
            epoch, ratio = which.split(",")
            choice = {c: (int(epoch), float(ratio)) for c in clients}
        except ValueError:
            raise UserError(f"{spec}: a personalization's prompt is '@selected', '@per_client' or '@EPOCH,RATIO' "
                            f"(e.g. @4,1.0), not '@{which}'") from None
    scores: Scores = {}
    for client, (epoch, ratio) in choice.items():
        at = (columns["client_id"] == client) & (columns["epoch"] == epoch)
        if epoch == 0 and at.any():  # at epoch 0 every ratio is the global prompt; one stands for it
            ratio = float(columns["interp_ratio"][at].min())
        at &= np.isclose(columns["interp_ratio"], ratio)
        if not at.any():
            raise UserError(f"{spec}: client {client} has no scores at epoch {epoch}, ratio {ratio:g}")
        for split, by_client in _collect(columns, at, metric).items():
            scores.setdefault(split, {}).update(by_client)
    return scores


def _collect(columns: dict[str, np.ndarray], at: np.ndarray, metric: str) -> Scores:
    out: Scores = {}
    for split, client, example, value in zip(columns["split"][at], columns["client_id"][at].tolist(),
                                             columns["example_id"][at].tolist(), columns[metric][at].tolist(),
                                             strict=True):
        out.setdefault(str(split), {}).setdefault(int(client), {})[int(example)] = float(value)
    return out


def compare(sources: list[Source], splits: tuple[str, ...] = COMPARE_SPLITS, draws: int = 4000,
            seed: int = 0) -> dict[str, Any]:
    """Each source's mean per split and its difference from the first source's, each with a 95%
    interval from one paired bootstrap over clients and their examples (every source resampled on
    the same draws, all splits on the same clients).

    Raises:
        UserError: a source lacks a split, or its clients or example ids differ from the first's.
    """
    reference = sources[0]
    clients = _clients_of(reference, splits)
    means, replicates = {}, {}
    for split in splits:
        ids = {c: sorted(reference.scores[split][c]) for c in clients}
        for source in sources[1:]:
            _check_units(source, split, ids)
        means[split], replicates[split] = _replicates(sources, split, clients, ids, draws, seed)
    rows = []
    for p, source in enumerate(sources):
        row: dict[str, Any] = {"source": source.label}
        for split in splits:
            row[split] = _interval(means[split][p], replicates[split][:, p])
            if p:
                row[f"{split}_change"] = _interval(means[split][p] - means[split][0],
                                                   replicates[split][:, p] - replicates[split][:, 0])
        rows.append(row)
    return {"reference": reference.label, "clients": clients, "splits": list(splits), "rows": rows,
            "interval": "95% paired bootstrap: clients, then each client's own examples (local splits); clients "
                        "and the shared examples drawn independently (global sets)"}


def by_client(sources: list[Source], splits: tuple[str, ...] = COMPARE_SPLITS, draws: int = 4000,
              seed: int = 0) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Each client on its own: per split, the first source's mean and every other source's change
    from it, each with a 95% interval over that client's examples (paired by example). Which site
    a personalization helps, and which it costs the federation's tasks; each interval stands
    alone (no correction over the clients).

    Raises:
        UserError: as :func:`compare`.
    """
    from rayfed.core.bootstrap import bootstrap_mean

    reference = sources[0]
    clients = _clients_of(reference, splits)
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    for split in splits:
        ids = {c: sorted(reference.scores[split][c]) for c in clients}
        for source in sources[1:]:
            _check_units(source, split, ids)
        out[split] = {}
        for c in clients:
            base = np.array([reference.scores[split][c][i] for i in ids[c]])
            row = {reference.label: list(bootstrap_mean([[base]], draws=draws, seed=seed))}
            for source in sources[1:]:
                mine = np.array([source.scores[split][c][i] for i in ids[c]])
                row[source.label] = list(bootstrap_mean([[mine - base]], draws=draws, seed=seed))
            out[split][c] = row
    return out


def format_by_client(result: dict[str, dict[int, dict[str, list[float]]]], metric: str) -> str:
    """:func:`by_client` as one text table per split: a row per client."""
    blocks = []
    for split, rows in result.items():
        labels = list(next(iter(rows.values())))
        head = ["client", f"{labels[0]} {split} {metric}", *(f"{label} change" for label in labels[1:])]
        lines = [[str(c), _cell(row[labels[0]]), *(_cell(row[label], signed=True) for label in labels[1:])]
                 for c, row in rows.items()]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        blocks.append("\n".join([fmt.format(*head), *(fmt.format(*cells) for cells in lines)]))
    return "\n\n".join(blocks) + ("\n\neach client alone: 95% bootstrap over its own examples, paired by example; "
                                   "no correction over the clients")


def _replicates(sources: list[Source], split: str, clients: list[int], ids: dict[int, list[int]], draws: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(means [points], replicates [draws, points])`` of one split: a global set's examples are
    every client's (crossed), a local split's are each client's own (nested)."""
    from rayfed.core.bootstrap import Split, paired_crossed, paired_replicates

    width = max(len(v) for v in ids.values())
    values = np.zeros((len(sources), len(clients), width))
    for p, source in enumerate(sources):
        for j, c in enumerate(clients):
            values[p, j, :len(ids[c])] = [source.scores[split][c][i] for i in ids[c]]
    if split in GLOBAL_SPLITS and all(v == ids[clients[0]] for v in ids.values()):
        return values.mean(axis=(1, 2)), paired_crossed(values, draws=draws, seed=seed)
    packed = Split(values[:, None], np.array([[len(ids[c]) for c in clients]]))
    return packed.means(), paired_replicates({split: packed}, draws=draws, seed=seed)[split]


def _clients_of(reference: Source, splits: tuple[str, ...]) -> list[int]:
    for split in splits:
        if split not in reference.scores:
            raise UserError(f"{reference.label}: no {split} scores (it has {', '.join(sorted(reference.scores))})")
    clients = sorted(reference.scores[splits[0]])
    for split in splits[1:]:
        if sorted(reference.scores[split]) != clients:
            raise UserError(f"{reference.label}: its {splits[0]} and {split} scores cover different clients")
    return clients


def _check_units(source: Source, split: str, ids: dict[int, list[int]]) -> None:
    mine = source.scores.get(split)
    if mine is None:
        raise UserError(f"{source.label}: no {split} scores, so it cannot be paired with the first source")
    if sorted(mine) != sorted(ids):
        raise UserError(f"{source.label}: its {split} clients ({sorted(mine)}) are not the first source's "
                        f"({sorted(ids)}): compare prompts of one federation (the same data config and seed)")
    for client, wanted in ids.items():
        if sorted(mine[client]) != wanted:
            raise UserError(f"{source.label}: client {client}'s {split} examples are not the first source's: "
                            f"compare prompts of one federation (the same data config and seed)")


def _interval(estimate: float, replicates: np.ndarray) -> list[float]:
    low, high = np.percentile(replicates, [2.5, 97.5])
    return [float(estimate), float(low), float(high)]


def format_table(result: dict[str, Any], metric: str) -> str:
    """The comparison as a text table: each split's mean [95%] and change from the first source."""
    head = ["source"] + [f"{s} {metric}" for s in result["splits"]] + [f"{s} change" for s in result["splits"]]
    lines = []
    for row in result["rows"]:
        cells = [row["source"]] + [_cell(row[s]) for s in result["splits"]]
        cells += [_cell(row[f"{s}_change"], signed=True) if f"{s}_change" in row else "(reference)"
                  for s in result["splits"]]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*cells) for cells in lines),
                      f"\n{len(result['clients'])} clients; {result['interval']}"])


def _cell(value: list[float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(value[0])} [{f.format(value[1])}, {f.format(value[2])}]"

