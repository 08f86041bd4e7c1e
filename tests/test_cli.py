from rayfed.cli import main


def test_bad_override_exits_2_and_names_the_key(capsys):
    assert main(["validate", "configs/smoke.yaml", "algorithm.roundz=3"]) == 2
    assert "algorithm.roundz" in capsys.readouterr().err


def test_validate_prints_the_resolved_config(capsys):
    assert main(["validate", "configs/smoke.yaml", "algorithm.rounds=9"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 9" in out and "output_dir: outputs/smoke" in out


def test_partition_prints_histogram_and_heterogeneity(capsys):
    assert main(["partition", "configs/smoke.yaml"]) == 0
    out = capsys.readouterr().out
    assert "heterogeneity" in out and "strings" in out
