"""The staged rollout on hand-made scores: the pilot chooses only a setting its validation data
supports, later stages follow, a site whose data drifts is rolled back by the guard (and only it),
and a rollout on noise never leaves the global prompt."""

from __future__ import annotations

import json

from rayfed.personalization.rollout import RolloutSettings, final_choices, plan_rollout, stage_sites

N = 24
SPLITS = ("local_val", "global_val", "local_test", "global_test")
GLOBAL, LOCAL = (0, 0.0), (1, 1.0)


def federation(clients: int, shift) -> list[tuple]:
    """Per-example rows: every split at the global prompt (epoch 0) and at one personalized setting,
    scores 0.4 for the global prompt and ``0.4 + shift(client, split, i)`` personalized."""
    rows = []
    for c in range(clients):
        for split in SPLITS:
            for i in range(N):
                rows.append((c, split, *GLOBAL, i, 1.0, 0.0, 0.4))
                rows.append((c, split, *LOCAL, i, 1.0, 0.0, 0.4 + shift(c, split, i)))
    return rows


def helps_locally(c: int, split: str, i: int) -> float:
    """Personalizing gains 0.3 on a site's own data and costs nothing on the global mix, except on
    site 5's global test examples (where its data drifts to)."""
    if split.startswith("local"):
        return 0.3
    return -0.4 if c == 5 and split == "global_test" else 0.0


def test_stages_are_a_seeded_pilot_then_growing_stages_covering_every_site_once():
    stages = stage_sites(range(10), pilot_sites=2, growth=2.0, seed=0)
    assert [len(s) for s in stages] == [2, 4, 4]
    assert sorted(c for s in stages for c in s) == list(range(10))
    assert stage_sites(range(10), 2, 2.0, seed=0) == stages
    assert stage_sites(range(10), 2, 2.0, seed=1) != stages
    assert [len(s) for s in stage_sites(range(5), 1, 1.0, seed=0)] == [1, 1, 1, 1, 1]


def test_a_drifting_site_is_rolled_back_and_the_others_keep_their_prompt():
    settings = RolloutSettings(pilot_sites=2, growth=2.0, margin=0.05, drift_sites=(5,), drift_stage=1, seed=0)
    plan = plan_rollout(federation(8, helps_locally), settings)
    assert all(s["choice"]["kept_global_prompt"] is False for s in plan["stages"])
    assert all((s["choice"]["epoch"], s["choice"]["interp_ratio"]) == LOCAL for s in plan["stages"])
    site5 = plan["sites"]["5"]
    assert site5["rolled_back_at"] == max(1, site5["stage"]) and site5["final"] == "global"
    assert plan["rollbacks"] == 1
    assert all(s["final"] == "personalized" for c, s in plan["sites"].items() if c != "5")
    rollbacks = [e for e in plan["events"] if e["action"] == "rollback"]
    assert [(e["site"], e["stage"]) for e in rollbacks] == [(5, site5["rolled_back_at"])]
    check = next(e for e in plan["events"] if e["action"] == "check" and e["site"] == 5 and e["rolled_back"])
    assert check["split"] == "global_test" and check["change"][0] < -0.05
    # No check after the rollback: the site serves the global prompt from then on.
    assert not [e for e in plan["events"] if e["action"] == "check" and e["site"] == 5
                and e["stage"] > site5["rolled_back_at"]]
    assert final_choices(plan)[5]["kept_global_prompt"] and not final_choices(plan)[0]["kept_global_prompt"]
    outcome = plan["outcome"]
    if site5["rolled_back_at"] < len(plan["stages"]) - 1:  # the guard saved later windows of site 5
        assert outcome["with_guard/rouge_l_change"][0] > outcome["without_guard/rouge_l_change"][0]


def test_without_drift_the_guard_rolls_nothing_back():
    plan = plan_rollout(federation(8, helps_locally), RolloutSettings(seed=0))
    assert plan["rollbacks"] == 0
    assert plan["outcome"]["with_guard/rouge_l_change"] == plan["outcome"]["without_guard/rouge_l_change"]
    low = plan["outcome"]["with_guard/rouge_l_change"][1]
    assert low > 0.2  # every served window gained 0.3


def test_on_noise_every_stage_stays_on_the_global_prompt():
    """Personalized scores that differ from the global prompt's by +-0.3 in turn: no gain the
    pilot can trust, so no site is ever served a personalized prompt."""
    plan = plan_rollout(federation(8, lambda c, split, i: 0.3 if (i + c) % 2 else -0.3), RolloutSettings(seed=0))
    assert all(s["choice"]["kept_global_prompt"] for s in plan["stages"])
    assert {e["action"] for e in plan["events"]} == {"stay_global"}
    assert all(s["final"] == "global" for s in plan["sites"].values())
    assert plan["outcome"] == {"deployed_sites": 0}


def test_a_setting_that_costs_the_global_mix_is_not_rolled_out():
    """A sure local gain that loses 0.2 on the global validation mix (tolerance 0.01)."""
    plan = plan_rollout(federation(6, lambda c, split, i: 0.3 if split.startswith("local") else -0.2),
                        RolloutSettings(seed=0))
    assert all(s["choice"]["kept_global_prompt"] for s in plan["stages"])


def test_the_loss_metric_counts_a_fall_as_a_gain():
    """With rollout.metric=loss the scores are losses: personalizing lowers a site's own loss by 0.3."""
    rows = [(*r[:5], 4.0 - (r[7] - 0.4), r[6], r[7]) for r in federation(6, helps_locally)]
    plan = plan_rollout(rows, RolloutSettings(seed=0, metric="loss"))
    assert not plan["stages"][0]["choice"]["kept_global_prompt"]
    assert plan["rollbacks"] == 0
    assert plan["outcome"]["with_guard/loss_change"][0] > 0.2  # signed: higher is better


def test_sites_left_on_the_global_prompt_get_the_first_setting_a_later_stage_supports():
    """The pilot's validation data cannot support anything (its gain is noise), so the pilot and
    stage 1 stay on the global prompt; stage 2's support (pilot + stage 1, where the gain is real)
    can, and every waiting site is deployed with stage 2's."""
    stages = stage_sites(range(8), 2, 2.0, seed=0)
    pilot = set(stages[0])
    plan = plan_rollout(federation(8, lambda c, split, i: (0.3 if (i + c) % 2 else -0.3) if c in pilot else 0.3),
                        RolloutSettings(seed=0, tolerance=0.5))
    assert [s["choice"]["kept_global_prompt"] for s in plan["stages"]] == [True, True, False]
    assert plan["stages"][2]["also_deployed"] == sorted([*stages[0], *stages[1]])
    assert all(plan["sites"][str(c)]["deployed_at"] == 2 for s in stages for c in s)


def test_the_printed_rollout_names_each_site_of_ones_own_data(tmp_path, capsys):
    """A run on one's own data (`data.source=sites`) prints sites by name beside their client ids."""
    from rayfed.outputs.report import print_rollout

    settings = RolloutSettings(pilot_sites=2, growth=2.0, margin=0.05, drift_sites=(5,), drift_stage=1, seed=0)
    plan = plan_rollout(federation(8, helps_locally), settings)
    summary = {"name": "staged", "settings": {"metric": "rouge_l"}, "seconds": 1.0,
               **{k: v for k, v in plan.items() if k != "events"}}
    (tmp_path / "summary.json").write_text(json.dumps({"sites": {str(c): f"clinic-{c}" for c in range(8)}}))
    print_rollout(summary, tmp_path)
    printed = capsys.readouterr().out
    assert "guard site 5 (clinic-5) on " in printed and "-> rolled back" in printed
    pilot = plan["stages"][0]["sites"]
    assert f"stage 0: sites [{', '.join(f'{c} (clinic-{c})' for c in pilot)}]" in printed
    (tmp_path / "summary.json").write_text(json.dumps({}))  # a Dirichlet federation: ids only
    print_rollout(summary, tmp_path)
    assert f"stage 0: sites {pilot} <- " in capsys.readouterr().out
