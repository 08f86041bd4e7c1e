from pathlib import Path

import pytest

from rayfed.config import ConfigError, load_config
from rayfed.model.prompt_model import TINY_LLAMA

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_configs_are_shipped():
    assert {"smoke.yaml", "quickstart.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_shipped_config_validates(path):
    from rayfed.tuning import DEFAULT_SPACE, check_space

    if path.parent.name == "study":  # a study file: every run and personalization it implies loads
        from rayfed.study.config import load_study

        load_study(path)
        return
    cfg = load_config(path)
    assert cfg.algorithm.clients_per_round <= cfg.partition.num_clients
    if path.parent.name == "tune":  # every searched value applies to the config
        check_space(cfg, dict(cfg.tune.space) or DEFAULT_SPACE)


@pytest.mark.parametrize("override, message", [
    ("partition.alpha=0.1", "'partition.alpha' was renamed to partition.concentration"),
    ("personalize.alphas=[0.5]", "'personalize.alphas' was renamed to personalize.interp_ratios"),
    ("runtime.num_cpus_per_client=0.5", "'runtime.num_cpus_per_client' was renamed to runtime.num_cpus_per_worker"),
    ("personalize.interp_ratios=[0.5,1.5]", "personalize.interp_ratios"),
    ("personalize.eval_every_epochs=0", "personalize.eval_every_epochs"),
    ("tune.searcher=bayes", "tune.searcher"),
    ("logging.wandb.mode=cloud", "logging.wandb.mode"),
])
def test_renamed_and_new_keys_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_search_space_key_that_does_not_exist_is_named(tmp_path):
    from rayfed.tuning import check_space

    bad = tmp_path / "tune.yaml"
    bad.write_text("tune:\n  space:\n    personalize.l2_strenght: {type: grid, values: [0.1]}\n")
    cfg = load_config(bad)
    with pytest.raises(ConfigError, match=r"tune.space.personalize.l2_strenght.*Did you mean|l2_strenght"):
        check_space(cfg, dict(cfg.tune.space))
    bad.write_text("tune:\n  space:\n    personalize.l2_strength: {type: loguniform, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match=r"tune.space.personalize.l2_strength.low"):
        load_config(bad)


def test_smoke_config_is_tiny_and_synthetic():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    assert cfg.model.name == TINY_LLAMA and cfg.data.source == "synthetic"


def test_overrides_apply():
    cfg = load_config(None, ["algorithm.rounds=7", "name=x"])
    assert cfg.algorithm.rounds == 7 and cfg.output_dir == "outputs/x"


def test_unknown_key_in_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm:\n  roundz: 3\n")
    with pytest.raises(ConfigError, match=r"algorithm\.roundz"):
        load_config(bad)


@pytest.mark.parametrize("override, key", [
    ("algorithm.roundz=3", "algorithm.roundz"),
    ("algorithm.rounds=many", "algorithm.rounds"),
    ("partition.num_clients=2", "algorithm.clients_per_round"),
    ("algorithm.client_optimizer.lr=-0.1", "algorithm.client_optimizer.lr"),
    ("algorithm.client_optimizer.name=lion", "algorithm.client_optimizer.name"),
    ("algorithm.name=scaffold", "algorithm.name"),
    ("partition.concentration=0", "partition.concentration"),
    ("algorithm.local_epochs=2", "algorithm.local_steps"),
    ("runtime.num_cpus_per_worker=0", "runtime.num_cpus_per_worker"),
    ("runtime.num_workers=0", "runtime.num_workers"),
    ("runtime.num_workers=9", "runtime.num_workers"),
    ("runtime.max_batch_rows=0", "runtime.max_batch_rows"),
    ("data.source=sni", "data.path"),
    ("personalize.name=..", "personalize.name"),  # would write over the run's own summary.json
    ("personalize.name=.", "personalize.name"),
    ("personalize.name=a/b", "personalize.name"),
    ("model.peft=ia3", "model.peft"),
    ("model.lora_rank=0", "model.lora_rank"),
    ("model.lora_targets=[]", "model.lora_targets"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["algorithm.rounds"])


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_an_l2_pull_that_sgd_cannot_hold_warns_naming_the_key():
    import warnings

    with pytest.warns(UserWarning, match=r"personalize.l2_strength.*0.316 x 10 = 3.16 >= 2"):
        load_config("configs/smoke.yaml", ["personalize.optimizer.name=sgd", "personalize.optimizer.lr=0.316",
                                           "personalize.l2_strength=10"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stable in (["personalize.l2_strength=1"],  # 0.316: the pull holds
                       ["personalize.l2_strength=10", "personalize.optimizer.momentum=0.9"],  # limit 3.8
                       ["personalize.l2_strength=10", "personalize.optimizer.name=adam"]):  # a normalised step
            load_config("configs/smoke.yaml", ["personalize.optimizer.name=sgd", "personalize.optimizer.lr=0.316",
                                               *stable])


def test_schema_lists_every_registered_algorithm():
    """The schema validates algorithm.name without importing the algorithms; the two lists agree,
    and every name builds its algorithm."""
    from rayfed.algorithms import ALGORITHMS, build_algorithm
    from rayfed.config import ALGORITHM_NAMES

    assert set(ALGORITHM_NAMES) == set(ALGORITHMS)
    for name in ALGORITHM_NAMES:
        assert type(build_algorithm(load_config(None, [f"algorithm.name={name}"]).algorithm)).__name__.lower() == name


def test_every_dependency_floor_is_the_version_the_suite_runs():
    """pyproject.toml's floors for the pinned packages are constraints.txt's pins (torch excepted:
    a range, so GPU users keep their CUDA build); a floor below what is tested would promise an
    untested combination."""
    import re

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    root = Path(__file__).resolve().parents[1]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)", (root / "constraints.txt").read_text(), re.M))
    floors = {}
    for dep in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, floor = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9.]+)", dep).groups()
        floors[name.lower()] = floor
    checked = {name: pin for name, pin in pins.items() if name.lower() in floors and name != "torch"}
    assert len(checked) >= 10
    for name, pin in checked.items():
        floor, tested = floors[name.lower()].split("."), pin.split(".")
        assert tested[:len(floor)] == floor, f"{name}: floor {floors[name.lower()]}, tested {pin}"


def test_a_half_precision_backbone_on_a_cpu_that_emulates_it_warns_naming_the_key(monkeypatch):
    import warnings

    import rayfed.config as config

    monkeypatch.setattr(config, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU, as here
    with pytest.warns(UserWarning, match=r"model.dtype.*bfloat16 on this CPU.*avx512_bf16, amx_bf16.*emulated"):
        load_config("configs/smoke.yaml", ["model.dtype=bfloat16"])
    with pytest.warns(UserWarning, match=r"model.dtype.*float16 on this CPU.*avx512_fp16"):
        load_config("configs/smoke.yaml", ["model.dtype=float16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config("configs/smoke.yaml", ["model.dtype=float32"])
        load_config("configs/smoke.yaml", ["model.dtype=bfloat16", "runtime.num_gpus_per_worker=0.5"])  # a GPU's
        monkeypatch.setattr(config, "cpu_flags", lambda: {"avx2", "avx512_bf16"})  # a CPU that has them
        load_config("configs/smoke.yaml", ["model.dtype=bfloat16"])
        monkeypatch.setattr(config, "cpu_flags", lambda: None)  # flags not listed (not Linux x86): nothing said
        load_config("configs/smoke.yaml", ["model.dtype=bfloat16"])


def test_an_empty_study_file_points_to_a_study_to_start_from(tmp_path):
    from rayfed.study.config import load_study

    (tmp_path / "study.yaml").write_text("")
    with pytest.raises(ConfigError, match="start from configs/study/quick.yaml"):
        load_study(tmp_path / "study.yaml")
    with pytest.raises(ConfigError, match="start from configs/quickstart.yaml"):
        load_config(tmp_path / "study.yaml")
