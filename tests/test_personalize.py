"""Personalization after federated training: the trade-off a user reads off the summary."""

import pytest

from rayfed.experiment import run_experiment

PERSONALIZE = ["runtime.executor=local", "personalize.enabled=true", "personalize.local_epochs=4",
               "personalize.optimizer.name=adam", "personalize.optimizer.lr=0.02"]


def test_alpha_zero_is_the_global_prompt_and_alpha_one_fits_local_data_better(tiny_config):
    cfg = tiny_config(*PERSONALIZE, "personalize.alphas=[0,0.5,1]")
    summary = run_experiment(cfg, loggers=[])
    p = summary["personalization"]
    # alpha 0 is the global prompt: the same numbers as the final evaluation.
    assert p["alpha_0"]["global"]["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-5)
    assert p["alpha_0"]["local"]["loss"] == pytest.approx(summary["final_local"]["eval/local/loss_mean"], rel=1e-5)
    # Fine-tuning on its own data lowers each client's own loss, more so the further alpha goes.
    assert p["alpha_1"]["local"]["loss"] < p["alpha_0.5"]["local"]["loss"] < p["alpha_0"]["local"]["loss"]


def test_l2_toward_the_global_prompt_keeps_the_personalized_prompt_closer_to_it(tiny_config, tmp_path):
    results = {}
    for strength in (0.0, 50.0):
        cfg = tiny_config(*PERSONALIZE, "personalize.alphas=[1]", "personalize.optimizer.name=sgd",
                          "personalize.optimizer.lr=0.01", f"personalize.l2_strength={strength}",
                          f"output_dir={tmp_path / str(strength)}")
        results[strength] = run_experiment(cfg, loggers=[])
    free = results[0.0]["personalization"]["alpha_1"]
    pulled = results[50.0]["personalization"]["alpha_1"]
    global_prompt = results[0.0]["final"]
    # With a strong pull the personalized prompt stays near the global one: its global loss
    # moves less than the unregularized one's, and it gains less on local data.
    assert abs(pulled["global"]["loss"] - global_prompt["loss"]) < abs(free["global"]["loss"] - global_prompt["loss"])
    assert pulled["local"]["loss"] > free["local"]["loss"]
