"""Per-client selection on hand-made scores: a client takes the setting its own validation data
supports (never the one its test data would), and keeps the global prompt when the winner is
noise or costs the global mix; the policies are scored on test against always-global."""

from __future__ import annotations

import pytest

from rayfed.personalization.per_client import per_client_selection

N = 16
SPLITS = ("local_val", "global_val", "local_test", "global_test")


def rows(client: int, setting: tuple[int, float], split: str, shift) -> list[tuple]:
    """N examples of ``split`` for ``client`` at ``setting``: base score 0.4 plus ``shift(i)``."""
    return [(client, split, *setting, i, 1.0, 0.0, 0.4 + shift(i)) for i in range(N)]


def federation_of(changes: dict[int, dict[tuple[int, float], dict[str, object]]]) -> list[tuple]:
    out = []
    for client, by_setting in changes.items():
        for setting in [(0, 0.0), (0, 1.0), (1, 0.0), (2, 0.0), (1, 1.0), (2, 1.0)]:
            for split in SPLITS:
                shift = by_setting.get(setting, {}).get(split, 0.0)
                out += rows(client, setting, split, shift if callable(shift) else (lambda i, s=shift: s))
    return out


EXAMPLES = federation_of({
    # Client 0: (1, 1.0) gains on validation every time; (2, 1.0) gains less there but most on test.
    0: {(1, 1.0): {"local_val": 0.3, "local_test": 0.2}, (2, 1.0): {"local_val": 0.1, "local_test": 0.5}},
    # Client 1: the validation "gain" is noise, +-0.3 in turn.
    1: {(1, 1.0): {"local_val": lambda i: 0.3 if i % 2 else -0.3},
        (2, 1.0): {"local_val": lambda i: 0.3 if i % 2 == 0 else -0.29}},
    # Client 2: a sure local gain that costs the global mix 0.2.
    2: {(1, 1.0): {"local_val": 0.4, "global_val": -0.2, "global_test": -0.2}},
})


def test_each_client_chooses_on_its_own_validation_and_falls_back_on_noise_or_a_global_cost():
    result = per_client_selection(EXAMPLES, tolerance=0.01, federation={"epoch": 2, "interp_ratio": 1.0})
    chosen = {int(c): ch for c, ch in result["clients"].items()}
    assert (chosen[0]["epoch"], chosen[0]["interp_ratio"], chosen[0]["kept_global_prompt"]) == (1, 1.0, False)
    assert chosen[0]["local_val_gain"][0] == pytest.approx(0.3) and chosen[0]["local_val_gain"][1] > 0
    assert chosen[1]["kept_global_prompt"] and chosen[2]["kept_global_prompt"]
    assert result["fallbacks"] == 2

    policies = result["policies"]
    assert policies["always_global"]["local_test/rouge_l_change"] == [0.0, 0.0, 0.0]
    # per client: client 0 gains 0.2 on its test, the others keep the global prompt: 0.2 / 3 over clients
    assert policies["per_client"]["local_test/rouge_l_change"][0] == pytest.approx(0.2 / 3)
    assert policies["per_client"]["global_test/rouge_l_change"][0] == pytest.approx(0.0)
    # the federation-wide (2, 1.0) and always-local give client 0 its best test gain but cost client 2 nothing here
    assert policies["federation"]["local_test/rouge_l_change"][0] == pytest.approx(0.5 / 3)
    assert policies["always_local"]["local_test/rouge_l_change"][0] == pytest.approx(0.5 / 3)

    size = result["validation_size"]
    assert size["examples_per_client"] == N
    # Clients 0 and 2 gain the same on every example: no example more is needed. Client 1's best
    # mean gain (0.005 under +-0.3 noise) would need thousands.
    assert size["needed_by_client"][0] == 0 and size["needed_by_client"][2] == 0
    assert size["needed_by_client"][1] > 100 * N


def test_a_noisy_gain_says_how_many_validation_examples_it_would_need():
    examples = federation_of({0: {(1, 1.0): {"local_val": lambda i: 0.05 + (0.4 if i % 2 else -0.4)}}})
    result = per_client_selection(examples, tolerance=0.01, federation=None)
    assert result["clients"]["0"]["kept_global_prompt"]
    [needed] = result["validation_size"]["needed_by_client"]
    assert needed > 4 * N  # a 0.05 gain under +-0.4 noise: far more than 16 examples


def test_on_the_loss_each_client_chooses_by_its_fall():
    """``personalize.metric=loss``: the same clients told by their losses (each ROUGE-L shift a fall
    of the loss) choose the same way; the test changes are the loss's own."""
    mirrored = [(*r[:5], 1.0 - (r[7] - 0.4), 0.0, 0.4) for r in EXAMPLES]
    result = per_client_selection(mirrored, tolerance=0.01, federation={"epoch": 2, "interp_ratio": 1.0},
                                  metric="loss")
    chosen = {int(c): ch for c, ch in result["clients"].items()}
    assert (chosen[0]["epoch"], chosen[0]["interp_ratio"], chosen[0]["kept_global_prompt"]) == (1, 1.0, False)
    assert chosen[0]["local_val_gain"][0] == pytest.approx(0.3) and chosen[0]["local_val_gain"][1] > 0
    assert chosen[1]["kept_global_prompt"] and chosen[2]["kept_global_prompt"]  # noise; a global loss rise of 0.2
    assert result["policies"]["per_client"]["local_test/loss_change"][0] == pytest.approx(-0.2 / 3)
    assert "loss" in result["rule"] and "rises above 0.01" in result["rule"]
    # The ROUGE-L rule on the same files sees no change at all, and keeps the global prompt everywhere.
    assert per_client_selection(mirrored, tolerance=0.01, federation=None)["fallbacks"] == 3
