"""How large a study must be: each primary comparison's variance components measured on a
pilot study's per-example scores (rayfed.core.power), applied to a target study's design.

``rayfed study PILOT.yaml --power-for TARGET.yaml`` reads the pilot's finished jobs (its own
``verdicts:`` comparisons, matched to the target's by claim and position) and reports, per
comparison, the components, the effect the target's design can detect at 80% (its ``power``)
with Holm's strictest level (``alpha`` over its family size), and the cheapest design of a
grid that detects the comparison's stated ``effect``. The components are those of a linear
stand-in (the per-example difference of the compared points on the global split); the
standard error is the statistic's own bootstrap one in the pilot, carried to the target's
design by the stand-in's formula. A one-seed pilot cannot measure the seed
component; it is then taken as the client component over the pilot's clients (one seed's mean
varying as one more draw of its clients would), and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayfed.core.power import comparison_power, detectable_effect, smallest_design, standard_error
from rayfed.errors import UserError
from rayfed.study.config import ComparisonConfig, StudyConfig, run_config
from rayfed.study.layout import finished_seeds
from rayfed.study.primary import measure, unit_differences

GRID = [(seeds, clients, examples) for seeds in (3, 5, 8, 10) for clients in (8, 16, 32) for examples in (16, 32, 64)]


def design_of(s: StudyConfig, c: ComparisonConfig) -> tuple[int, int, int]:
    """(seeds, clients, examples per client on the comparison's split) of study ``s``."""
    label = s.personalize.main_algorithm
    cfg = run_config(s, label, s.concentrations[0], s.seeds[0], s.algorithms[label].lrs[0])
    split = c.split if c.kind == "difference" else "global_test"
    if split == "local_test":
        examples = cfg.partition.test_examples
    else:
        examples = s.personalize.set.get("global_eval_examples") or cfg.partition.global_test_examples
    return len(s.seeds), cfg.partition.num_clients, int(examples)


def power_report(pilot: StudyConfig, out: Path, target: StudyConfig) -> dict[str, Any]:
    seeds, lrs = finished_seeds(pilot, out)
    if not any(seeds.values()):
        raise UserError(f"{out} holds no finished seed of the pilot study {pilot.name!r}: run "
                        f"`rayfed study` on it first (its output_dir)")
    if not pilot.verdicts.claims:
        raise UserError(f"the pilot study {pilot.name!r} has no primary comparisons (verdicts:) to measure")
    family = sum(len(v) for v in target.verdicts.claims.values()) * len(
        target.verdicts.concentrations or target.concentrations)
    alpha = target.verdicts.alpha / max(family, 1)
    rows = []
    for claim, comparisons in pilot.verdicts.claims.items():
        aims = target.verdicts.claims.get(claim, [])
        for i, c in enumerate(comparisons):
            aim = aims[i] if i < len(aims) else c
            power = comparison_power(target.verdicts.power, max(len(aims), 1))
            design = design_of(target, aim)
            for key, finished in seeds.items():
                if not finished:
                    continue
                comp = unit_differences(pilot, out, float(key), finished, lrs[key], c)
                assumed = comp.client / comp.pilot_clients if comp.seed is None else None
                # the statistic's own bootstrap se in the pilot, over its linear stand-in's there
                _, replicates, _ = measure(pilot, out, float(key), finished, lrs[key], c, "rouge_l",
                                           pilot.verdicts.draws)
                stand_in = standard_error(comp, comp.pilot_seeds, round(comp.pilot_clients), round(comp.pilot_examples))
                scale = float(replicates.std()) / stand_in if stand_in > 0 else 1.0
                detectable = detectable_effect(comp, *design, alpha, power, seed_variance=assumed, scale=scale)
                best = smallest_design(comp, aim.effect, alpha, GRID, cost=lambda d: d[0] * d[1] * d[2], power=power,
                                       seed_variance=assumed, scale=scale)
                rows.append({"claim": claim, "name": aim.name or c.name, "concentration": key,
                             "components": comp.as_dict(), "seed_component_assumed": assumed is not None,
                             "pilot_standard_error": float(replicates.std()), "scale": scale,
                             "target_design": dict(zip(("seeds", "clients", "examples"), design, strict=True)),
                             "alpha": alpha, "power": power, "detectable_effect": detectable, "effect": aim.effect,
                             "smallest_design": dict(zip(("seeds", "clients", "examples"), best, strict=True))
                             if best else None})
    return {"pilot": pilot.name, "target": target.name, "family_size": family, "rows": rows}


def power_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Power of `{report['target']}`, from the pilot `{report['pilot']}`", "",
             f"Holm's strictest level: alpha / {report['family_size']} primary comparisons. Components are variances "
             "of the per-example paired difference of test ROUGE-L (rayfed.core.power); `*`: the pilot had one seed, "
             "so the seed component is assumed (client component / clients).", "",
             "| claim | comparison | concentration | seed | client | example | target design (S, C, n) | detectable "
             "effect | stated effect | smallest design that detects it (S, C, n) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        c, t, best = r["components"], r["target_design"], r["smallest_design"]
        seed = f"{c['seed']:.2e}" if c["seed"] is not None else "*"
        lines.append(f"| {r['claim']} | {r['name']} | {r['concentration']} | {seed} | {c['client']:.2e} | "
                     f"{c['example']:.2e} | {t['seeds']}, {t['clients']}, {t['examples']} | "
                     f"{r['detectable_effect']:.3f} | {r['effect']:g} | "
                     + (f"{best['seeds']}, {best['clients']}, {best['examples']}" if best else "none in the grid")
                     + " |")
    return "\n".join(lines) + "\n"
